//! The endpoint hook that admits connections: every connection is recorded in the peer
//! book (for liveness and for cutting off a revoked peer); gossip and blob connections
//! from a peer that is a member of none of this node's unpaused stores are refused
//! right after the handshake. The sync ALPN stays open: a joiner redeems its invite
//! there before it is a member, and the sync protocol checks each stream itself.

use std::sync::{Arc, OnceLock, Weak};

use iroh::endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks};

use crate::net::peers::node_key;
use crate::net::{Shared, SYNC_ALPN};

/// QUIC application close code sent to refused or revoked peers.
pub const CLOSE_REFUSED: u32 = 403;

/// The admission hook; holds the network state weakly (the endpoint owns the hook).
#[derive(Clone, Debug, Default)]
pub struct Gate {
    shared: Arc<OnceLock<Weak<Shared>>>,
}

impl Gate {
    /// A gate that admits nothing but sync streams until [`Gate::attach`] is called.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Connects the gate to the network state it consults.
    pub fn attach(&self, shared: Weak<Shared>) {
        let _ = self.shared.set(shared);
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
        if conn.alpn() != SYNC_ALPN && shared.stores_of(&key).is_empty() {
            tracing::info!(peer = %key.short(), alpn = ?String::from_utf8_lossy(conn.alpn()), "refused a non-member");
            return AfterHandshakeOutcome::Reject {
                error_code: CLOSE_REFUSED.into(),
                reason: b"not a member".to_vec(),
            };
        }
        shared.peers.connected(key, conn.weak_handle());
        AfterHandshakeOutcome::Accept
    }
}
