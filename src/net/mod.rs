//! The network layer: one iroh [`Endpoint`] keyed by the node identity and a [`Router`]
//! serving three ALPNs — the lattice sync protocol ([`SYNC_ALPN`], `proto/peer.proto`),
//! iroh-gossip and iroh-blobs — plus, per store, the driver of its `sync::replica`
//! (which decides what is gossiped, reconciled, pulled, pushed and fetched, and when).
//!
//! Admission, per store on every path. An endpoint hook (`gate`) refuses gossip and
//! blob connections from peers that are not a member of any of this node's stores, and
//! gossip from keys revoked from any of them; the replica of the named store checks
//! membership on every sync request (only `Redeem` is open to non-members); blob requests
//! are checked per hash against the blobs owned by the stores the requester belongs to.
//! Each store's gossip topic derives from a secret only members hold (`topic`), and a
//! gossip message is acted on only if its neighbour is a member of that store. This node
//! opens streams about a store only to current members of it.
//!
//! Resources before membership. A stranger gets a few connections (`gate`), two
//! streams on each, a first frame of at most [`MAX_STRANGER_FRAME`] that must arrive
//! within the first-frame timeout, and no entry in the peer book. A member gets at most
//! [`MAX_STREAMS_PER_CONN`] streams per connection and [`MAX_PEER_BYTES`] of request
//! bodies in flight. Frame bodies are read as they arrive, never allocated up front.
//!
//! Everything here runs on the daemon's tokio runtime, except each replica, which runs
//! on a thread of its own (its store calls block); other store and content-store calls
//! go through `spawn_blocking`.

mod blobs;
mod client;
mod error;
mod gate;
pub(crate) mod peers;
mod progress;
mod replica;
mod seen;
pub(crate) mod serve;
pub(crate) mod settings;
mod topic;
mod wake;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use iroh::address_lookup::MemoryLookup;
use iroh::endpoint::presets;
use iroh::protocol::Router;
use iroh::{Endpoint, RelayMode, RelayUrl, SecretKey};
use iroh_blobs::api::downloader::Downloader;
use iroh_blobs::BlobsProtocol;
use iroh_gossip::net::Gossip;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::fs::op::Role;
use crate::identity::PublicKey;
use crate::ids::StoreId;
use crate::node::Node;
use crate::store::Store;
use peers::PeerBook;
use replica::ReplicaHandle;
use settings::{FetchMode, Settings};

pub(crate) use crate::sync::replica::GOSSIP_MAX;
pub use crate::sync::replica::{RoundReport, SyncReport, MAX_RECONCILE_DIFF, MAX_WANT};
pub use client::{JoinProgress, Revoked};
pub use error::{DialError, NetError, StreamError, Violation};

/// ALPN of the lattice sync protocol; the suffix is its version (2: refusals carry a code).
pub const SYNC_ALPN: &[u8] = b"lattice/sync/2";
/// Largest sync protocol frame (a maximal intention plus framing fits).
pub const MAX_FRAME: usize = 8 * 1024 * 1024;
/// How long a dial or a request to a peer may take before it counts as failed.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest first frame of a peer that is a member of no store here: a `Redeem` (a
/// secret and a display name) fits many times over.
pub const MAX_STRANGER_FRAME: usize = 16 * 1024;
/// Default time a stream's first frame (and a stranger's first stream) may take to
/// arrive; honest openers send theirs at once.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Sync streams served at once per connection of a member (each holds at most one
/// frame, so this and [`MAX_PEER_BYTES`] bound what a member costs).
pub const MAX_STREAMS_PER_CONN: usize = 16;
/// Sync streams served at once per connection of a stranger (redeem, then bootstrap).
pub const MAX_STRANGER_STREAMS: usize = 2;
/// Bytes of request bodies being read or answered at once for one peer, over all its
/// connections: four maximal frames.
pub const MAX_PEER_BYTES: usize = 4 * MAX_FRAME;

/// Which relay servers the endpoint uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relay {
    /// The default public relays (and DNS address lookup).
    Default,
    /// No relays and no internet lookup services: remembered direct addresses and
    /// local network discovery only.
    Disabled,
    /// One custom relay server.
    Url(RelayUrl),
}

impl std::str::FromStr for Relay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Relay::Default),
            "disabled" => Ok(Relay::Disabled),
            url => url
                .parse()
                .map(Relay::Url)
                .map_err(|e| format!("invalid relay {url:?} (default, disabled or a URL): {e}")),
        }
    }
}

/// How the endpoint is set up.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Relay servers.
    pub relay: Relay,
    /// Local address to bind (default: any port on all interfaces).
    pub bind: Option<SocketAddr>,
}

/// A member of a store as `peers` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The member's key.
    pub key: PublicKey,
    /// Its display name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// This node itself.
    pub me: bool,
    /// Reachable now.
    pub online: bool,
    /// When it was last heard from (Unix ms), remembered across restarts.
    pub last_seen: Option<u64>,
    /// Remembered direct addresses.
    pub addrs: Vec<SocketAddr>,
    /// It left the store (its own `Leave`): no longer a member.
    pub left: bool,
}

/// Network state of one store as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreNet {
    /// Network activity is stopped.
    pub paused: bool,
    /// How blobs are fetched.
    pub fetch: FetchMode,
    /// Members online now, not counting this node.
    pub online: usize,
    /// Members other than this node.
    pub members: usize,
    /// Local intentions no peer has confirmed yet.
    pub unsent: u64,
    /// Content current versions reference that is not local yet.
    pub to_fetch: crate::cas::Progress,
}

/// The running network layer. Cheap to clone.
#[derive(Clone)]
pub struct Net {
    shared: Arc<Shared>,
}

/// State shared by the router's handlers and the replica tasks.
pub(crate) struct Shared {
    pub node: Node,
    pub endpoint: Endpoint,
    pub gossip: Gossip,
    pub downloader: Downloader,
    pub peers: PeerBook,
    pub replicas: Mutex<HashMap<StoreId, ReplicaHandle>>,
    pub router: Mutex<Option<Router>>,
    /// Outgoing sync connections kept for reuse, per peer.
    pub conns: Mutex<HashMap<PublicKey, iroh::endpoint::Connection>>,
    /// Joining stores whose bootstrap is being resumed.
    pub resuming: Mutex<std::collections::HashSet<StoreId>>,
    /// Each store's local settings, as last loaded or saved.
    pub settings: Mutex<HashMap<StoreId, Settings>>,
    /// Blobs being fetched for waiting reads.
    pub read_fetches: Mutex<std::collections::HashSet<iroh_blobs::Hash>>,
    /// Chunks rebuilt from patches instead of fetched whole, since start.
    pub patched: std::sync::atomic::AtomicU64,
    /// Bytes of the blobs downloaded whole, since start.
    pub fetched: std::sync::atomic::AtomicU64,
    /// Blob requests this node refused, since start.
    pub refused_blobs: std::sync::atomic::AtomicU64,
    /// Ids of acceptor-side conversations (sync streams served), unique per node.
    pub next_conv: std::sync::atomic::AtomicU64,
    /// How long a stream's first frame may take (default [`FIRST_FRAME_TIMEOUT`]).
    pub first_frame_timeout: Mutex<Duration>,
    /// Per peer with open sync connections: its budget of request bytes in flight.
    pub budgets: Mutex<HashMap<PublicKey, Weak<tokio::sync::Semaphore>>>,
    /// Sync streams being served now, over all peers.
    pub serving: std::sync::atomic::AtomicUsize,
    /// Each store's gossip secret, once loaded or created.
    pub secrets: Mutex<HashMap<StoreId, [u8; 32]>>,
    /// Each store's members' last-seen times, remembered across restarts.
    pub last_seen: seen::LastSeen,
    /// Each store's content still to fetch (`progress`).
    pub backlogs: Mutex<HashMap<StoreId, Arc<Mutex<crate::cas::Backlog>>>>,
    /// Content changes being fetched, whose changed chunks a read patches too.
    pub due_patches: Mutex<blobs::DuePatches>,
    /// Blobs being patched or downloaded now (`blobs::in_turn`).
    pub turns: blobs::Turns,
    /// Chunks members announced ahead of their files, being fetched.
    pub ahead: blobs::Ahead,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Net {
    /// Binds the endpoint, starts the router and a replica task for every store, and
    /// resumes interrupted joins.
    pub async fn start(node: Node, config: NetConfig) -> Result<Net, NetError> {
        let lookup = MemoryLookup::new();
        let peers = PeerBook::load(node.data_dir(), lookup.clone());
        let seed = node.identity().seed();
        let gate = gate::Gate::new();
        let builder = || {
            let b = match &config.relay {
                Relay::Default => Endpoint::builder(presets::N0),
                Relay::Disabled => {
                    Endpoint::builder(presets::Minimal).relay_mode(RelayMode::Disabled)
                }
                Relay::Url(url) => {
                    Endpoint::builder(presets::Minimal).relay_mode(RelayMode::custom([url.clone()]))
                }
            };
            b.secret_key(SecretKey::from_bytes(&seed))
                .address_lookup(lookup.clone())
                .hooks(gate.clone())
        };
        let port_file = node.data_dir().join("port");
        let saved: Option<u16> = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let endpoint = bind(builder, config.bind, saved).await?;
        if let Some(port) = endpoint.bound_sockets().first().map(SocketAddr::port) {
            if saved != Some(port) {
                if let Err(e) = peers::write_atomic(&port_file, format!("{port}\n").as_bytes()) {
                    tracing::warn!("cannot save {}: {e}", port_file.display());
                }
            }
        }
        let gossip = Gossip::builder()
            .max_message_size(GOSSIP_MAX)
            .spawn(endpoint.clone());
        let blob_store = node.cas().blobs();
        let downloader = Downloader::new(&blob_store, &endpoint);
        let shared = Arc::new(Shared {
            node,
            endpoint: endpoint.clone(),
            gossip: gossip.clone(),
            downloader,
            peers,
            replicas: Mutex::new(HashMap::new()),
            router: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            resuming: Mutex::new(std::collections::HashSet::new()),
            settings: Mutex::new(HashMap::new()),
            read_fetches: Mutex::new(std::collections::HashSet::new()),
            patched: std::sync::atomic::AtomicU64::new(0),
            fetched: std::sync::atomic::AtomicU64::new(0),
            refused_blobs: std::sync::atomic::AtomicU64::new(0),
            next_conv: std::sync::atomic::AtomicU64::new(1),
            first_frame_timeout: Mutex::new(FIRST_FRAME_TIMEOUT),
            budgets: Mutex::new(HashMap::new()),
            serving: std::sync::atomic::AtomicUsize::new(0),
            secrets: Mutex::new(HashMap::new()),
            backlogs: Mutex::new(HashMap::new()),
            due_patches: Mutex::new(blobs::DuePatches::default()),
            turns: Mutex::new(HashMap::new()),
            ahead: blobs::Ahead::default(),
            last_seen: seen::LastSeen::default(),
        });
        gate.attach(Arc::downgrade(&shared));
        let events = blobs::provider_events(Arc::downgrade(&shared));
        let router = Router::builder(endpoint)
            .accept(SYNC_ALPN, serve::SyncProtocol::new(Arc::downgrade(&shared)))
            .accept(iroh_gossip::ALPN, gossip)
            .accept(
                iroh_blobs::ALPN,
                blobs::BlobsHandler(BlobsProtocol::new(&blob_store, Some(events))),
            )
            .spawn();
        *shared.router.lock() = Some(router);
        let mdns = wake::local_discovery(&shared.endpoint);
        wake::spawn(Arc::downgrade(&shared), shared.endpoint.clone(), mdns);
        let net = Net { shared };
        net.install_hooks();
        net.spawn_supervisor();
        tracing::info!(
            id = %net.shared.endpoint.id(),
            addrs = ?net.shared.endpoint.bound_sockets(),
            "network endpoint up"
        );
        Ok(net)
    }

    /// This node's direct addresses, as put in invite tokens.
    pub fn direct_addrs(&self) -> Vec<SocketAddr> {
        self.shared.direct_addrs()
    }

    /// Creates an invite to store `name` and returns its one-line token.
    pub async fn invite(
        &self,
        name: &str,
        role: Role,
        expires_in: Duration,
    ) -> Result<String, NetError> {
        client::invite(&self.shared, name, role, expires_in).await
    }

    /// Redeems `token`, bootstraps the store from the inviter (reporting progress), and
    /// makes it visible; resumes an interrupted bootstrap of the same store.
    pub async fn join(
        &self,
        token: &str,
        display_name: Option<&str>,
        progress: mpsc::UnboundedSender<JoinProgress>,
    ) -> Result<String, NetError> {
        let store = client::join(&self.shared, token, display_name, progress).await?;
        self.shared.ensure_replicas();
        Ok(crate::node::store_name(&store))
    }

    /// Reconciles store `name` with every member now.
    pub async fn sync(&self, name: &str) -> Result<SyncReport, NetError> {
        self.shared.replica(name)?.sync().await
    }

    /// Pauses (`paused`) or resumes network activity of store `name`, or of every store.
    pub fn set_paused(&self, name: Option<&str>, paused: bool) -> Result<Vec<String>, NetError> {
        let stores = match name {
            Some(n) => vec![self.shared.store(n)?],
            None => self.shared.node.stores(),
        };
        let mut names = Vec::new();
        for store in stores {
            self.shared.update_settings(&store, |s| s.paused = paused)?;
            names.push(crate::node::store_name(&store));
        }
        Ok(names)
    }

    /// Sets how store `name` fetches blobs.
    pub fn set_fetch_mode(&self, name: &str, mode: FetchMode) -> Result<(), NetError> {
        let store = self.shared.store(name)?;
        self.shared.update_settings(&store, |s| s.fetch = mode)
    }

    /// How many changed chunks were rebuilt from patches (a base chunk plus the blocks
    /// that differ) instead of fetched whole, since start.
    pub fn patched_chunks(&self) -> u64 {
        self.shared
            .patched
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of the blobs downloaded whole (not patched), since start.
    pub fn fetched_bytes(&self) -> u64 {
        self.shared
            .fetched
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Blob requests this node refused (from a non-member, or for a blob no store of the
    /// asker owns here), since start.
    pub fn refused_blob_requests(&self) -> u64 {
        self.shared
            .refused_blobs
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets how long a stream's first frame, and a stranger's first stream, may take to
    /// arrive (default [`FIRST_FRAME_TIMEOUT`]).
    pub fn set_first_frame_timeout(&self, timeout: Duration) {
        *self.shared.first_frame_timeout.lock() = timeout;
    }

    /// Sync streams this node is serving now, over all peers.
    pub fn serving_streams(&self) -> usize {
        self.shared
            .serving
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The members of store `name` with their liveness.
    pub fn peers(&self, name: &str) -> Result<Vec<PeerInfo>, NetError> {
        let store = self.shared.store(name)?;
        Ok(self.shared.peer_infos(&store))
    }

    /// Revokes, in store `name`, an invite token or a member (key hex prefix or display
    /// name), which is disconnected.
    pub async fn revoke(&self, name: &str, target: &str) -> Result<Revoked, NetError> {
        client::revoke(&self.shared, name, target).await
    }

    /// Stops the replica of `store` (left or deleted here), before the node removes it.
    pub async fn forget(&self, store: &Store) {
        let handle = self.shared.replicas.lock().remove(&store.id());
        if let Some(h) = handle {
            h.stop().await;
        }
        self.shared.settings.lock().remove(&store.id());
    }

    /// Network state of `store` for `status`.
    pub fn store_net(&self, store: &Store) -> StoreNet {
        self.shared.store_net(store)
    }

    /// Resolves once the endpoint is connected to a relay; never, with relays disabled.
    pub async fn relay_online(&self) {
        self.shared.endpoint.online().await;
    }

    /// Stops every replica and closes the endpoint.
    pub async fn shutdown(&self) {
        let handles: Vec<ReplicaHandle> = self
            .shared
            .replicas
            .lock()
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in handles {
            h.stop().await;
        }
        let router = self.shared.router.lock().take();
        if let Some(router) = router {
            if let Err(e) = router.shutdown().await {
                tracing::warn!("router shutdown: {e:#}");
            }
        }
        self.shared.endpoint.close().await;
    }

    /// Hooks the content store to the network: absent blobs a read needs are fetched,
    /// chunks stored ahead of a commit are offered to the store's members.
    fn install_hooks(&self) {
        let cas = self.shared.node.cas();
        let weak = Arc::downgrade(&self.shared);
        let rt = tokio::runtime::Handle::current();
        let (fetch_weak, fetch_rt) = (weak.clone(), rt.clone());
        cas.set_fetcher(Arc::new(move |request: crate::cas::FetchRequest| {
            if let Some(shared) = fetch_weak.upgrade() {
                fetch_rt.spawn(async move { blobs::fetch_request(&shared, request).await });
            }
        }));
        cas.set_ahead_hook(Arc::new(move |store, chunks| {
            if let Some(shared) = weak.upgrade() {
                rt.spawn(async move { blobs::offer_ahead(&shared, store, chunks).await });
            }
        }));
    }

    fn spawn_supervisor(&self) {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                if shared.router.lock().is_none() {
                    return;
                }
                shared.ensure_replicas();
                client::resume_joins(&shared);
            }
        });
    }
}

impl Shared {
    /// This endpoint's bound direct addresses, with unspecified IPs replaced by loopback
    /// and the interface addresses iroh reports.
    pub(crate) fn direct_addrs(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self.endpoint.addr().ip_addrs().copied().collect();
        for s in self.endpoint.bound_sockets() {
            let a = match s.ip() {
                ip if ip.is_unspecified() && ip.is_ipv4() => {
                    SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), s.port())
                }
                ip if ip.is_unspecified() => {
                    SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), s.port())
                }
                _ => s,
            };
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    /// This node's key.
    pub(crate) fn me(&self) -> PublicKey {
        self.node.identity().public()
    }

    /// The visible store named `name`.
    pub(crate) fn store(&self, name: &str) -> Result<Store, NetError> {
        self.node
            .store_by_name(name)
            .ok_or_else(|| NetError::UnknownStore(name.to_string()))
    }

    fn replica(&self, name: &str) -> Result<ReplicaHandle, NetError> {
        let store = self.store(name)?;
        self.replicas
            .lock()
            .get(&store.id())
            .cloned()
            .ok_or_else(|| NetError::NoReplica(name.to_string()))
    }

    /// Starts a replica task for every visible store that has none.
    pub(crate) fn ensure_replicas(self: &Arc<Self>) {
        for store in self.node.stores() {
            let mut replicas = self.replicas.lock();
            if replicas.contains_key(&store.id()) {
                continue;
            }
            let handle = replica::spawn(Arc::downgrade(self), store.clone(), self.settings(&store));
            replicas.insert(store.id(), handle);
        }
    }

    /// Members of `store` other than this node, in key order.
    pub(crate) fn other_members(&self, store: &Store) -> Vec<PublicKey> {
        let me = self.me();
        store.read(|s| {
            s.members()
                .into_iter()
                .map(|m| m.key)
                .filter(|k| *k != me)
                .collect()
        })
    }

    fn peer_infos(&self, store: &Store) -> Vec<PeerInfo> {
        let me = self.me();
        let members: Vec<(PublicKey, Role, String, bool)> = store.read(|s| {
            let current = s.members().into_iter().map(|m| (m, false));
            let left = s.left_members().into_iter().map(|m| (m, true));
            current
                .chain(left)
                .map(|(m, left)| (m.key, m.role, m.display_name, left))
                .collect()
        });
        members
            .into_iter()
            .map(|(key, role, name, left)| {
                let st = self.peers.state(&key);
                let now = crate::hlc::now_ms();
                let recent = st
                    .last_seen
                    .map(|d| now.saturating_sub(d.as_millis() as u64));
                let dir = self.node.store_dir(store.id());
                let kept = self.last_seen.get(store.id(), &dir, &key);
                PeerInfo {
                    key,
                    name,
                    role,
                    me: key == me,
                    online: key == me || st.online,
                    last_seen: recent.max(kept),
                    addrs: if key == me {
                        self.direct_addrs()
                    } else {
                        st.addrs
                    },
                    left,
                }
            })
            .collect()
    }

    fn store_net(&self, store: &Store) -> StoreNet {
        let settings = self.settings(store);
        let others = self.other_members(store);
        let online = others.iter().filter(|k| self.peers.state(k).online).count();
        let unsent = self
            .replicas
            .lock()
            .get(&store.id())
            .map_or(0, |h| h.unsent());
        StoreNet {
            paused: settings.paused,
            fetch: settings.fetch,
            online,
            members: others.len(),
            unsent,
            to_fetch: progress::progress(self, store),
        }
    }

    /// The local settings of `store`, read from its file once and kept in memory (they
    /// are consulted on every incoming connection and request).
    pub(crate) fn settings(&self, store: &Store) -> Settings {
        *self
            .settings
            .lock()
            .entry(store.id())
            .or_insert_with(|| Settings::load(&self.node.store_dir(store.id())))
    }

    /// Changes the settings of `store`: saved, kept, and handed to its replica task.
    fn update_settings(
        &self,
        store: &Store,
        change: impl FnOnce(&mut Settings),
    ) -> Result<(), NetError> {
        let dir = self.node.store_dir(store.id());
        let mut settings = self.settings.lock();
        let s = settings
            .entry(store.id())
            .or_insert_with(|| Settings::load(&dir));
        let mut next = *s;
        change(&mut next);
        next.save(&dir).map_err(|source| NetError::Save {
            what: "the store's settings",
            source,
        })?;
        *s = next;
        drop(settings);
        if let Some(h) = self.replicas.lock().get(&store.id()) {
            h.settings(next);
        }
        Ok(())
    }

    /// Wakes the replicas of every store (`None`), or of the stores `key` is a member
    /// of, for a pass now: the network changed.
    pub(crate) fn network_changed(&self, key: Option<&PublicKey>) {
        let stores: Option<Vec<StoreId>> =
            key.map(|k| self.stores_of(k).iter().map(Store::id).collect());
        for (id, h) in self.replicas.lock().iter() {
            if stores.as_ref().is_none_or(|s| s.contains(id)) {
                h.network_changed();
            }
        }
    }

    /// `key` was authenticated on a connection, request or gossip message now.
    pub(crate) fn heard(&self, key: PublicKey) {
        self.peers.seen(key);
        self.last_seen
            .heard(key, crate::hlc::now_ms(), std::time::Instant::now(), || {
                self.stores_of(&key)
                    .iter()
                    .map(|s| (s.id(), self.node.store_dir(s.id())))
                    .collect()
            });
    }

    /// True if `key` is a current member (any role) of `store`.
    pub(crate) fn is_member(&self, store: &Store, key: &PublicKey) -> bool {
        store.read(|s| s.member(key).is_some())
    }

    /// True if `key` is a current member of a visible, unpaused store of this node.
    pub(crate) fn is_member_anywhere(&self, key: &PublicKey) -> bool {
        !self.stores_of(key).is_empty()
    }

    /// True if `key` is revoked from any store of this node.
    pub(crate) fn revoked_anywhere(&self, key: &PublicKey) -> bool {
        self.node
            .stores()
            .iter()
            .any(|s| s.read(|st| st.revocation_cut(key).is_some()))
    }

    /// The gossip secret of `store`: kept in its directory, or created now if this node
    /// founded it; `None` for a member that has not received it yet.
    /// Blocks on file I/O the first time per store.
    pub(crate) fn topic_secret(&self, store: &Store) -> Result<Option<[u8; 32]>, NetError> {
        // Held across load and create, so that two first callers agree on one secret.
        let mut secrets = self.secrets.lock();
        if let Some(secret) = secrets.get(&store.id()) {
            return Ok(Some(*secret));
        }
        let dir = self.node.store_dir(store.id());
        let secret = match topic::load(&dir) {
            Some(secret) => secret,
            None if store.founder() == self.me() => {
                let secret = topic::generate();
                topic::save(&dir, &secret).map_err(|source| NetError::Save {
                    what: "the gossip secret",
                    source,
                })?;
                secret
            }
            None => return Ok(None),
        };
        secrets.insert(store.id(), secret);
        Ok(Some(secret))
    }

    /// Keeps `secret` as the gossip secret of `store` (received from a member).
    pub(crate) fn adopt_topic_secret(
        &self,
        store: &Store,
        secret: [u8; 32],
    ) -> Result<(), NetError> {
        let mut secrets = self.secrets.lock();
        topic::save(&self.node.store_dir(store.id()), &secret).map_err(|source| {
            NetError::Save {
                what: "the gossip secret",
                source,
            }
        })?;
        secrets.insert(store.id(), secret);
        Ok(())
    }

    /// The budget of request bytes in flight of `peer`, shared by its connections.
    pub(crate) fn budget(&self, peer: PublicKey) -> Arc<tokio::sync::Semaphore> {
        let mut budgets = self.budgets.lock();
        budgets.retain(|_, b| b.strong_count() > 0);
        if let Some(b) = budgets.get(&peer).and_then(Weak::upgrade) {
            return b;
        }
        let b = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_BYTES));
        budgets.insert(peer, Arc::downgrade(&b));
        b
    }

    /// Visible, unpaused stores of which `key` is a current member.
    pub(crate) fn stores_of(&self, key: &PublicKey) -> Vec<Store> {
        self.node
            .stores()
            .into_iter()
            .filter(|s| s.read(|st| st.member(key).is_some()))
            .filter(|s| !self.settings(s).paused)
            .collect()
    }
}

/// Binds the endpoint at `bind` (default: all IPv4 interfaces); a port 0 first tries
/// the port used last time, so peers' remembered addresses stay valid across restarts.
async fn bind(
    builder: impl Fn() -> iroh::endpoint::Builder,
    bind: Option<SocketAddr>,
    saved: Option<u16>,
) -> Result<Endpoint, NetError> {
    let wanted = bind.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let attempt = |addr: SocketAddr| {
        let b = builder();
        async move {
            b.bind_addr(addr)
                .map_err(|e| NetError::Bind(format!("{addr}: {e}")))?
                .bind()
                .await
                .map_err(|e| NetError::Bind(format!("{addr}: {e:#}")))
        }
    };
    if let (0, Some(port)) = (wanted.port(), saved) {
        match attempt(SocketAddr::new(wanted.ip(), port)).await {
            Ok(ep) => return Ok(ep),
            Err(e) => tracing::info!("port {port} of last time is taken ({e}); using another"),
        }
    }
    attempt(wanted).await
}

/// Runs blocking work (store, content store) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}
