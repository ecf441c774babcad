//! The endpoint hook that admits connections, incoming and outgoing, right after the
//! handshake (when the remote key and ALPN are known).
//!
//! - A member of one of this node's unpaused stores gets at most [`MAX_CONNS_PER_PEER`]
//!   open connections; they are recorded in the peer book (liveness, cutting off).
//! - Gossip is admitted only from a member of some store here that is revoked from none
//!   here: a gossip connection carries every topic, so a key revoked from one store must
//!   not keep a way into that store's topic through another store it still shares.
//! - Blobs are admitted from any member; each request is checked per store and hash.
//! - A stranger (member of no store here) may only speak the sync protocol, where it can
//!   redeem an invite. It is not remembered: its connections are counted in a small table
//!   that forgets them once closed, at most [`MAX_STRANGER_CONNS_PER_KEY`] per key and
//!   [`MAX_STRANGER_CONNS`] in all, and the sync handler closes them when they stay silent
//!   past the first-frame timeout.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use iroh::endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks, WeakConnectionHandle};
use parking_lot::Mutex;

use crate::identity::PublicKey;
use crate::net::peers::{is_open, node_key};
use crate::net::{Shared, SYNC_ALPN};

/// QUIC application close code sent to refused or revoked peers.
pub(crate) const CLOSE_REFUSED: u32 = 403;
/// QUIC application close code sent to a peer over one of its limits.
pub(crate) const CLOSE_LIMIT: u32 = 429;
/// Open connections one member may have with this node, both directions and all ALPNs
/// (sync, gossip and blobs each way is six; the rest absorbs simultaneous dials).
pub(crate) const MAX_CONNS_PER_PEER: usize = 16;
/// Open connections one stranger key may have: redeeming needs one.
pub(crate) const MAX_STRANGER_CONNS_PER_KEY: usize = 2;
/// Open connections of all strangers together (keys cost nothing to make).
pub(crate) const MAX_STRANGER_CONNS: usize = 64;

/// The admission hook; holds the network state weakly (the endpoint owns the hook).
#[derive(Clone, Debug, Default)]
pub(crate) struct Gate {
    shared: Arc<OnceLock<Weak<Shared>>>,
    strangers: Arc<Strangers>,
}

impl Gate {
    /// A gate that admits nothing until [`Gate::attach`] is called.
    pub(crate) fn new() -> Gate {
        Gate::default()
    }

    /// Connects the gate to the network state it consults.
    pub(crate) fn attach(&self, shared: Weak<Shared>) {
        let _ = self.shared.set(shared);
    }

    /// Why `conn` from `key` is refused, if it is.
    fn refusal(&self, shared: &Shared, key: PublicKey, conn: &Connection) -> Option<Refusal> {
        let member = !shared.stores_of(&key).is_empty();
        let alpn = conn.alpn();
        if !member {
            if alpn != SYNC_ALPN {
                return Some(Refusal::NotMember);
            }
            return (!self.strangers.admit(key, conn.weak_handle())).then_some(Refusal::Limit);
        }
        if alpn == iroh_gossip::ALPN && shared.revoked_anywhere(&key) {
            return Some(Refusal::Revoked);
        }
        (!shared
            .peers
            .connected(key, alpn, conn.weak_handle(), MAX_CONNS_PER_PEER))
        .then_some(Refusal::Limit)
    }
}

/// Why the gate refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    NotMember,
    Revoked,
    Limit,
}

impl Refusal {
    fn outcome(self) -> AfterHandshakeOutcome {
        let (code, reason): (u32, &[u8]) = match self {
            Refusal::NotMember => (CLOSE_REFUSED, b"not a member"),
            Refusal::Revoked => (CLOSE_REFUSED, b"revoked"),
            Refusal::Limit => (CLOSE_LIMIT, b"too many connections"),
        };
        AfterHandshakeOutcome::Reject {
            error_code: code.into(),
            reason: reason.to_vec(),
        }
    }
}

impl EndpointHooks for Gate {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        let Some(shared) = self.shared.get().and_then(Weak::upgrade) else {
            return AfterHandshakeOutcome::Reject {
                error_code: CLOSE_REFUSED.into(),
                reason: b"starting up".to_vec(),
            };
        };
        let key = node_key(&conn.remote_id());
        match self.refusal(&shared, key, conn) {
            None => AfterHandshakeOutcome::Accept,
            Some(why) => {
                tracing::info!(peer = %key.short(), alpn = ?String::from_utf8_lossy(conn.alpn()), ?why, "refused a connection");
                why.outcome()
            }
        }
    }
}

/// Open connections of strangers, forgotten as soon as they close.
#[derive(Debug, Default)]
struct Strangers {
    conns: Mutex<HashMap<PublicKey, Vec<WeakConnectionHandle>>>,
}

impl Strangers {
    /// Counts `conn` of stranger `key` unless that puts the key or all strangers over
    /// their limit.
    fn admit(&self, key: PublicKey, conn: WeakConnectionHandle) -> bool {
        let mut conns = self.conns.lock();
        conns.retain(|_, list| {
            list.retain(is_open);
            !list.is_empty()
        });
        let total: usize = conns.values().map(Vec::len).sum();
        let mine = conns.get(&key).map_or(0, Vec::len);
        if total >= MAX_STRANGER_CONNS || mine >= MAX_STRANGER_CONNS_PER_KEY {
            return false;
        }
        conns.entry(key).or_default().push(conn);
        true
    }
}
