//! The peer book: addresses of peers learned from tokens and members, remembered across
//! restarts in `DATA_DIR/peers`, fed to the endpoint's address lookup; when each peer was
//! last heard from; and weak handles of open connections so a revoked peer can be cut off.
//!
//! Only members are written here (the gate keeps strangers out of it, and the sync
//! protocol learns addresses only from members), so it grows with membership, not with
//! whoever connects; a key's connection list is dropped once all of them have closed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iroh::address_lookup::MemoryLookup;
use iroh::endpoint::WeakConnectionHandle;
use iroh::{EndpointAddr, EndpointId, TransportAddr};
use parking_lot::Mutex;

use crate::identity::{hex, unhex, PublicKey};

/// A peer with an open connection heard from within this window counts as online
/// (longer than the longest anti-entropy interval, so an idle peer stays online; a dead
/// one drops out when QUIC's idle timeout closes its connection).
pub(crate) const ONLINE_WINDOW: Duration = Duration::from_secs(45);
/// Most addresses remembered per peer (newest kept).
const MAX_ADDRS: usize = 8;

/// Known addresses, liveness and connections of peers.
#[derive(Debug)]
pub(crate) struct PeerBook {
    path: PathBuf,
    lookup: MemoryLookup,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    addrs: BTreeMap<PublicKey, BTreeSet<SocketAddr>>,
    seen: HashMap<PublicKey, Instant>,
    conns: HashMap<PublicKey, Vec<(Vec<u8>, WeakConnectionHandle)>>,
}

/// What the peer book knows of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerState {
    /// Remembered direct addresses.
    pub addrs: Vec<SocketAddr>,
    /// Time since it was last heard from, if ever since this node started.
    pub last_seen: Option<Duration>,
    /// Heard from within [`ONLINE_WINDOW`] and a connection is open.
    pub online: bool,
}

impl PeerBook {
    /// Loads the book from `data_dir/peers` (a missing file is an empty book; a bad line
    /// is skipped with a warning) and publishes its addresses to `lookup`.
    pub(crate) fn load(data_dir: &Path, lookup: MemoryLookup) -> PeerBook {
        let path = data_dir.join("peers");
        let mut addrs: BTreeMap<PublicKey, BTreeSet<SocketAddr>> = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    match parse_line(line) {
                        Some((key, list)) => addrs.entry(key).or_default().extend(list),
                        None => tracing::warn!("{}: skipping bad line {line:?}", path.display()),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot read {}: {e}", path.display()),
        }
        for (key, list) in &addrs {
            lookup.add_endpoint_info(endpoint_addr(key, list.iter().copied()));
        }
        PeerBook {
            path,
            lookup,
            inner: Mutex::new(Inner {
                addrs,
                ..Inner::default()
            }),
        }
    }

    /// Remembers `addrs` for `key` (persisted when new) and publishes them for dialing.
    pub(crate) fn learn(&self, key: PublicKey, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut inner = self.inner.lock();
        let known = inner.addrs.entry(key).or_default();
        let before = known.len();
        let mut added = Vec::new();
        for a in addrs {
            if known.len() >= MAX_ADDRS && !known.contains(&a) {
                continue;
            }
            if known.insert(a) {
                added.push(a);
            }
        }
        if known.len() == before {
            return;
        }
        self.lookup.add_endpoint_info(endpoint_addr(&key, added));
        let text: String = inner
            .addrs
            .iter()
            .map(|(k, list)| format_line(k, list))
            .collect();
        drop(inner);
        if let Err(e) = write_atomic(&self.path, text.as_bytes()) {
            tracing::warn!("cannot save {}: {e}", self.path.display());
        }
    }

    /// The dialable address of `key`: its id plus every remembered address.
    pub(crate) fn addr(&self, key: &PublicKey) -> EndpointAddr {
        let inner = self.inner.lock();
        let list = inner.addrs.get(key).into_iter().flatten().copied();
        endpoint_addr(key, list)
    }

    /// Remembered addresses of `key`.
    pub(crate) fn addrs(&self, key: &PublicKey) -> Vec<SocketAddr> {
        let inner = self.inner.lock();
        inner
            .addrs
            .get(key)
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    /// Marks `key` as heard from now.
    pub(crate) fn seen(&self, key: PublicKey) {
        self.inner.lock().seen.insert(key, Instant::now());
    }

    /// Keeps a weak handle of a connection to `key` over `alpn`, for
    /// [`PeerBook::disconnect`] and liveness, unless `key` already has `cap` open
    /// connections; false if refused. A connection already kept is not counted twice.
    pub(crate) fn connected(
        &self,
        key: PublicKey,
        alpn: &[u8],
        conn: WeakConnectionHandle,
        cap: usize,
    ) -> bool {
        let mut inner = self.inner.lock();
        let list = inner.conns.entry(key).or_default();
        list.retain(|(_, c)| is_open(c));
        let id = conn.upgrade().map(|c| c.stable_id());
        if list
            .iter()
            .any(|(_, c)| c.upgrade().map(|c| c.stable_id()) == id)
        {
            return true;
        }
        if list.len() >= cap {
            return false;
        }
        list.push((alpn.to_vec(), conn));
        inner.seen.insert(key, Instant::now());
        true
    }

    /// Closes every open connection to `key` (over `alpn` only, when given); returns how
    /// many were closed.
    pub(crate) fn disconnect(&self, key: &PublicKey, alpn: Option<&[u8]>, reason: &str) -> usize {
        let mut inner = self.inner.lock();
        let list = inner.conns.remove(key).unwrap_or_default();
        let (cut, kept): (Vec<_>, Vec<_>) = list
            .into_iter()
            .partition(|(a, _)| alpn.is_none_or(|want| a == want));
        if !kept.is_empty() {
            inner.conns.insert(*key, kept);
        }
        drop(inner);
        let mut closed = 0;
        for conn in cut.iter().filter_map(|(_, c)| c.upgrade()) {
            if conn.close_reason().is_none() {
                conn.close(1u32.into(), reason.as_bytes());
                closed += 1;
            }
        }
        closed
    }

    /// What is known of `key`.
    pub(crate) fn state(&self, key: &PublicKey) -> PeerState {
        let inner = self.inner.lock();
        let last_seen = inner.seen.get(key).map(|t| t.elapsed());
        let open = inner
            .conns
            .get(key)
            .is_some_and(|list| list.iter().any(|(_, c)| is_open(c)));
        PeerState {
            addrs: inner
                .addrs
                .get(key)
                .into_iter()
                .flatten()
                .copied()
                .collect(),
            last_seen,
            online: open && last_seen.is_some_and(|d| d < ONLINE_WINDOW),
        }
    }
}

/// Whether the connection of `handle` is still open.
pub(crate) fn is_open(handle: &WeakConnectionHandle) -> bool {
    handle.upgrade().is_some_and(|c| c.close_reason().is_none())
}

/// The iroh endpoint id of a node key (the same Ed25519 key).
pub(crate) fn endpoint_id(key: &PublicKey) -> Option<EndpointId> {
    EndpointId::from_bytes(&key.0).ok()
}

/// The node key of an iroh endpoint id.
pub(crate) fn node_key(id: &EndpointId) -> PublicKey {
    PublicKey(*id.as_bytes())
}

fn endpoint_addr(key: &PublicKey, addrs: impl IntoIterator<Item = SocketAddr>) -> EndpointAddr {
    let id = endpoint_id(key).unwrap_or_else(|| {
        // Keys in the book come from verified members and tokens; an invalid point
        // cannot be dialed anyway, so it gets an address no one answers.
        EndpointId::from_bytes(&[0; 32]).expect("the zero point decodes")
    });
    EndpointAddr::from_parts(id, addrs.into_iter().map(TransportAddr::Ip))
}

fn format_line(key: &PublicKey, addrs: &BTreeSet<SocketAddr>) -> String {
    let mut line = hex(&key.0);
    for a in addrs {
        line.push(' ');
        line.push_str(&a.to_string());
    }
    line.push('\n');
    line
}

fn parse_line(line: &str) -> Option<(PublicKey, Vec<SocketAddr>)> {
    let mut words = line.split_whitespace();
    let key: [u8; 32] = unhex(words.next()?)?.try_into().ok()?;
    let addrs = words.map(|w| w.parse().ok()).collect::<Option<Vec<_>>>()?;
    Some((PublicKey(key), addrs))
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_addresses_survive_a_reload_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::identity::Identity::generate().public();
        let book = PeerBook::load(dir.path(), MemoryLookup::new());
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "[::1]:4001".parse().unwrap();
        book.learn(key, [a]);
        book.learn(key, [a, b]);
        let mut text = std::fs::read_to_string(dir.path().join("peers")).unwrap();
        text.push_str("zz not-a-key\n");
        std::fs::write(dir.path().join("peers"), text).unwrap();
        let lookup = MemoryLookup::new();
        let again = PeerBook::load(dir.path(), lookup.clone());
        assert_eq!(again.addrs(&key), vec![a, b]);
        let info = lookup
            .get_endpoint_info(endpoint_id(&key).unwrap())
            .unwrap();
        assert_eq!(info.ip_addrs().count(), 2);
        assert!(!again.state(&key).online, "no connection, not online");
    }
}
