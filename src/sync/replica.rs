//! The replication protocol of one store as a state machine (sans IO).
//!
//! (Transitional: the public types are final, the body follows.)

use bytes::Bytes;

use crate::fs::op::{Content, FileId};
use crate::identity::PublicKey;
use crate::proto::peer::{self as pb, request, response};
use crate::store::Store;
use crate::sync::Refusal;

/// Milliseconds on the driver's clock: Unix ms in production (the same clock decides
/// invite expiry), virtual in the simulator.
pub type Millis = u64;

/// One conversation: a bidirectional stream, opened by one side. The opener's replica
/// picks its ids; on the acceptor side the driver does, and keys them by `(peer, Conv)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conv(pub u64);

/// A `sync` the user asked for; answered by [`Action::Synced`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket(pub u64);

/// Local settings of a replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    /// No network activity: no gossip, no rounds, every request refused.
    pub paused: bool,
    /// Fetch the blobs of every file as soon as it changes.
    pub eager: bool,
}

/// What happened, as the driver tells it.
#[derive(Debug)]
pub enum Event {
    /// Local intentions sealed and durable (from `StoreEvent::Sealed`).
    Sealed(Vec<Bytes>),
    /// Intentions were applied; the files they changed (`None`: unknown, e.g. lagged).
    Applied(Option<Vec<FileId>>),
    /// The gossip subscription is up (after [`Action::Subscribe`]), or failed/ended.
    GossipUp(bool),
    /// A gossip neighbour came up.
    NeighborUp(PublicKey),
    /// A gossip message delivered by neighbour `from` (member check is the replica's).
    Gossip {
        /// The delivering neighbour.
        from: PublicKey,
        /// One encoded `pb::Gossip`.
        message: Bytes,
    },
    /// Acceptor side: a request on conversation `conv` opened by `from`. Transport
    /// limits (frame size, stranger budgets, first-frame timeout) were the driver's.
    Request {
        /// The opener.
        from: PublicKey,
        /// Its conversation.
        conv: Conv,
        /// The request.
        request: pb::Request,
    },
    /// Acceptor side: a `Reply { last: false }` on `conv` of `to` was written; the
    /// replica may go on (a bootstrap sends its next batch).
    Drained {
        /// The opener.
        to: PublicKey,
        /// Its conversation.
        conv: Conv,
    },
    /// Acceptor side: the opener finished or dropped conversation `conv`.
    Closed {
        /// The opener.
        from: PublicKey,
        /// Its conversation.
        conv: Conv,
    },
    /// Opener side: the answer on `conv`, or why there is none.
    Answer {
        /// The conversation.
        conv: Conv,
        /// The answer.
        answer: Result<response::Kind, Failure>,
    },
    /// The time of the last [`Action::WakeAt`] has come.
    Wake,
    /// A blob fetch ordered by [`Action::Fetch`] ended (`all`: it was
    /// [`FetchOrder::All`]; `ok`: it left nothing missing).
    Fetched {
        /// The order was [`FetchOrder::All`].
        all: bool,
        /// Nothing it was to fetch is missing.
        ok: bool,
    },
    /// The user asked for a sync pass now.
    Sync(Ticket),
    /// New local settings.
    Settings(Mode),
}

/// Why an opener-side conversation got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer could not be reached, or the stream or a frame failed (worth one redial).
    Transport(String),
    /// The peer refused, with a typed code.
    Refused(Refusal),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transport(why) => f.write_str(why),
            Failure::Refused(r) => write!(f, "refused: {}", r.text),
        }
    }
}

/// Which blobs to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOrder {
    /// The blobs of these files; `changes` pairs files' previous content pieces with
    /// their new ones, so changed chunks can be patched from the chunks they replace.
    Files {
        /// Files whose blobs to fetch.
        files: Vec<FileId>,
        /// (pieces before, pieces now) of changed files.
        changes: Vec<(Vec<Content>, Vec<Content>)>,
    },
    /// The blobs of every file.
    All,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Opener side: send `request` on `conv` to `peer`, opening the stream on first use.
    Send {
        /// The conversation.
        conv: Conv,
        /// Its peer.
        peer: PublicKey,
        /// The request.
        request: request::Kind,
    },
    /// Opener side: this replica is done with `conv`; finish the stream.
    Finish(Conv),
    /// Acceptor side: answer `conv` of `to`; `last`: end the stream after it. A
    /// `Redeemed` answer lists members with empty addresses: the driver fills in the
    /// ones its address book knows (its own for this node) and drops the rest.
    Reply {
        /// The opener.
        to: PublicKey,
        /// Its conversation.
        conv: Conv,
        /// The answer.
        response: response::Kind,
        /// End the stream after it.
        last: bool,
    },
    /// Acceptor side: refuse and end `conv` of `to`.
    Refuse {
        /// The opener.
        to: PublicKey,
        /// Its conversation.
        conv: Conv,
        /// Why.
        refusal: Refusal,
    },
    /// Subscribe to the store's gossip topic (derived from `secret`), bootstrapping from
    /// `peers`; the driver answers with [`Event::GossipUp`].
    Subscribe {
        /// The gossip secret.
        secret: [u8; 32],
        /// Members to join through.
        peers: Vec<PublicKey>,
    },
    /// Drop the gossip subscription (paused).
    Unsubscribe,
    /// Broadcast one encoded `pb::Gossip` on the topic.
    Broadcast(Bytes),
    /// Ask the gossip layer to dial these members again.
    JoinPeers(Vec<PublicKey>),
    /// Keep this gossip secret (adopted from a member) where the driver keeps secrets.
    SaveSecret([u8; 32]),
    /// Remember these addresses for a member that sent them with a request.
    Learn {
        /// The member.
        peer: PublicKey,
        /// Its addresses as it sent them.
        addrs: Vec<String>,
    },
    /// Fetch blobs.
    Fetch(FetchOrder),
    /// Close connections to revoked `key`.
    CutOff(PublicKey),
    /// Forget the cached connection to `peer` (the next Send dials afresh).
    Redial(PublicKey),
    /// Call `handle(Event::Wake, ..)` at this time (only the latest `WakeAt` counts).
    WakeAt(Millis),
    /// The answer to `Event::Sync(ticket)`.
    Synced(Ticket, SyncReport),
}

/// What one reconciliation round with one peer moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Negentropy round trips.
    pub rounds: u32,
    /// Negentropy bytes sent plus received.
    pub reconcile_bytes: u64,
    /// Intentions pulled and applied (or parked).
    pub pulled: u64,
    /// Intentions pushed.
    pub pushed: u64,
}

/// What a sync pass did for a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The store is paused: nothing was done.
    pub paused: bool,
    /// Members reconciled with.
    pub peers: u32,
    /// Members that could not be reached, with why.
    pub failed: Vec<(PublicKey, String)>,
    /// Totals over the rounds.
    pub total: RoundReport,
}

/// The replication protocol of one store.
pub struct Replica {
    store: Store,
    me: PublicKey,
    mode: Mode,
}

impl Replica {
    /// A replica of `store` for node `me`, with the gossip secret if known, at `now`.
    /// Returns its first actions (subscribe or ask a member for the secret, first pass).
    pub fn new(
        store: Store,
        me: PublicKey,
        secret: Option<[u8; 32]>,
        mode: Mode,
        now: Millis,
    ) -> (Replica, Vec<Action>) {
        let _ = (secret, now);
        (Replica { store, me, mode }, Vec::new())
    }

    /// Feeds one event; returns what the driver must do, in order.
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Action> {
        let _ = (event, now, &self.store, self.me, self.mode);
        Vec::new()
    }

    /// Local intentions sealed but not yet confirmed sent to any member.
    pub fn unsent(&self) -> u64 {
        0
    }

    /// Failed blob fetches since the last complete one (0: nothing known missing).
    pub fn missing(&self) -> u64 {
        0
    }
}
