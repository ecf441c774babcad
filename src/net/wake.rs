//! Syncing promptly when the network comes back, and finding members on the local
//! network. Local network discovery (`iroh-mdns-address-lookup`) is one more address
//! lookup of the endpoint beside the peer book, in every relay mode: a member that
//! moved to another address or port on the same network is found without a relay or
//! a new token. A watcher task wakes every store's replica for an immediate pass
//! (`Event::NetworkChanged`) when an interface or route changes, the machine resumes
//! from sleep (`netwatch`'s monitor), this endpoint's direct addresses change, or local
//! discovery finds a member or sees its addresses change (that member's stores only).
//! Changes arriving within [`NETWORK_SETTLE`] of each other cost one wake.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use iroh::{Endpoint, Watcher};
use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};
use n0_future::StreamExt;

use crate::identity::PublicKey;
use crate::net::peers::node_key;
use crate::net::Shared;

/// How long after a network change the replicas are woken: links and addresses settle
/// together (an interface up, then its address, then a route), and one pass covers all.
pub(crate) const NETWORK_SETTLE: Duration = Duration::from_millis(500);
/// The service name this node announces on the local network under (distinct from
/// other iroh applications', so they do not look each other up).
const LOCAL_SERVICE: &str = "lattice-mount";

/// Starts local network discovery on `endpoint`; `None` (with one line in the log)
/// where the network allows no multicast socket.
pub(crate) fn local_discovery(endpoint: &Endpoint) -> Option<MdnsAddressLookup> {
    let built = MdnsAddressLookup::builder()
        .service_name(LOCAL_SERVICE)
        .build(endpoint.id());
    let mdns = match built {
        Ok(m) => m,
        Err(e) => {
            tracing::info!("local network discovery is off: {e}");
            return None;
        }
    };
    match endpoint.address_lookup() {
        Ok(services) => services.add(mdns.clone()),
        Err(e) => {
            tracing::info!("local network discovery is off: {e}");
            return None;
        }
    }
    Some(mdns)
}

/// What woke the watcher.
enum Change {
    /// The whole network: every store.
    Network,
    /// A member found or moved on the local network: its stores.
    Member(PublicKey),
}

/// Spawns the watcher; it ends with the network layer.
pub(crate) fn spawn(shared: Weak<Shared>, endpoint: Endpoint, mdns: Option<MdnsAddressLookup>) {
    tokio::spawn(async move {
        let monitor = match netwatch::netmon::Monitor::new().await {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::info!("network changes are not watched: {e}");
                None
            }
        };
        let mut interfaces = monitor.as_ref().map(|m| m.interface_state());
        let mut last_state = interfaces.as_mut().map(|w| w.get());
        let mut addrs = endpoint.watch_addr();
        let mut last_addrs = direct(&addrs.get());
        let mut found = match &mdns {
            Some(m) => Some(m.subscribe().await),
            None => None,
        };
        let mut whole = false;
        let mut members: BTreeSet<PublicKey> = BTreeSet::new();
        loop {
            let pending = whole || !members.is_empty();
            let change = tokio::select! {
                state = async { interfaces.as_mut()?.updated().await.ok() }, if interfaces.is_some() => {
                    let Some(state) = state else {
                        interfaces = None;
                        continue;
                    };
                    let major = last_state.as_ref().is_none_or(|old| {
                        state.is_major_change(old) || state.last_unsuspend != old.last_unsuspend
                    });
                    last_state = Some(state);
                    major.then_some(Change::Network)
                }
                addr = addrs.updated() => {
                    let Ok(addr) = addr else { return };
                    let now = direct(&addr);
                    let moved = now != last_addrs;
                    last_addrs = now;
                    moved.then_some(Change::Network)
                }
                event = async { found.as_mut()?.next().await }, if found.is_some() => match event {
                    Some(DiscoveryEvent::Discovered { endpoint_info, .. }) => {
                        Some(Change::Member(node_key(&endpoint_info.endpoint_id)))
                    }
                    Some(_) => None,
                    None => {
                        found = None;
                        None
                    }
                },
                () = tokio::time::sleep(NETWORK_SETTLE), if pending => {
                    let Some(shared) = shared.upgrade() else { return };
                    if whole {
                        tracing::info!("the network changed: syncing every store now");
                        shared.network_changed(None);
                    } else {
                        for key in &members {
                            shared.network_changed(Some(key));
                        }
                    }
                    whole = false;
                    members.clear();
                    continue;
                }
            };
            match change {
                Some(Change::Network) => whole = true,
                Some(Change::Member(key)) => {
                    members.insert(key);
                }
                None => {}
            }
            if shared.strong_count() == 0 {
                return;
            }
        }
    });
}

/// The direct addresses of an endpoint address, in order.
fn direct(addr: &iroh::EndpointAddr) -> BTreeSet<SocketAddr> {
    addr.ip_addrs().copied().collect()
}
