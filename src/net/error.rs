//! Errors of the network layer: what failed, with a typed cause callers and tests can
//! match. Every variant displays as one readable line (the CLI prints it).

use std::time::Duration;

use crate::cas::CasError;
use crate::ids::Hash;
use crate::node::NodeError;
use crate::store::{InviteError, StoreError};
use crate::sync::frontier::AttestError;
use crate::sync::invite::TokenError;
use crate::sync::reconcile::ReconcileError;
use crate::sync::Refusal;
use crate::wire::FrameError;

/// Errors of the network layer, each one readable line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The endpoint could not be bound.
    #[error("cannot bind the network endpoint: {0}")]
    Bind(String),
    /// A peer could not be reached.
    #[error("cannot reach peer {peer}: {cause}")]
    Dial {
        /// The peer's short id.
        peer: String,
        /// Why.
        cause: DialError,
    },
    /// A stream to a peer failed.
    #[error("connection to peer {peer} failed: {cause}")]
    Stream {
        /// The peer's short id.
        peer: String,
        /// Why.
        cause: StreamError,
    },
    /// A peer sent a frame that could not be read.
    #[error("bad frame from peer {peer}: {source}")]
    Frame {
        /// The peer's short id.
        peer: String,
        /// Why.
        source: FrameError,
    },
    /// A peer refused the request, with its reason.
    #[error("peer {peer} refused: {refusal}")]
    Refused {
        /// The peer's short id.
        peer: String,
        /// Its code and one-line reason.
        refusal: Refusal,
    },
    /// A peer answered something the protocol does not allow here.
    #[error("peer {peer} broke the protocol: {violation}")]
    Protocol {
        /// The peer's short id.
        peer: String,
        /// What it did wrong.
        violation: Violation,
    },
    /// A reconciliation with a peer failed: a frame it sent was refused, or the session
    /// went on past [`MAX_ROUNDS`](crate::sync::reconcile::MAX_ROUNDS).
    #[error("reconciliation with peer {peer}: {source}")]
    Reconcile {
        /// The peer's short id.
        peer: String,
        /// Why.
        source: ReconcileError,
    },
    /// The invite token does not decode.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The invite token's expiry has passed.
    #[error("the invite token has expired")]
    TokenExpired,
    /// The invite token is for another store than the one named.
    #[error("that invite token is not for store {0:?}")]
    TokenForOtherStore(String),
    /// This node already has the store the invite token is for.
    #[error("already a member of store {0:?}")]
    AlreadyJoined(String),
    /// Another flow (an earlier `join`, or the resume after a restart) is joining the
    /// store.
    #[error("store {0:?} is already being joined")]
    Joining(String),
    /// Creating or revoking an invite, or revoking a member, was refused locally.
    #[error(transparent)]
    Invite(#[from] InviteError),
    /// No store of this node has this name.
    #[error("no store named {0:?}")]
    UnknownStore(String),
    /// The store is paused.
    #[error("store {0:?} is paused; resume it first")]
    Paused(String),
    /// A peer is not a current member of the store a request is about.
    #[error("peer {peer} is not a member of store {store:?}")]
    NotMember {
        /// The peer's short id.
        peer: String,
        /// The store's name.
        store: String,
    },
    /// No member of the store matches what `revoke` was given.
    #[error("no member of {store:?} matches {target:?}")]
    NoSuchMember {
        /// The store's name.
        store: String,
        /// The key prefix or display name given.
        target: String,
    },
    /// More than one member of the store matches what `revoke` was given.
    #[error("{target:?} matches {count} members of {store:?}; give more of the key")]
    AmbiguousMember {
        /// The store's name.
        store: String,
        /// The key prefix or display name given.
        target: String,
        /// How many members match.
        count: usize,
    },
    /// `revoke` named this node itself.
    #[error("a node cannot revoke itself")]
    RevokeSelf,
    /// The store has no replica task running (it stopped, or never started).
    #[error("store {0:?} has no replica running")]
    NoReplica(String),
    /// Content is missing and no member is online to fetch it from.
    #[error("no member to fetch content from")]
    NoProvider,
    /// Fetching content from members failed; the first failure.
    #[error("fetching content: {0}")]
    Fetch(String),
    /// A local file could not be written.
    #[error("cannot save {what}: {source}")]
    Save {
        /// What was being saved.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The local base of a patch was dropped before the patch was applied.
    #[error("patch base {0:?} is no longer held")]
    PatchBaseGone(Hash),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The local content store failed.
    #[error(transparent)]
    Cas(#[from] CasError),
}

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The peer's key is not a valid endpoint id.
    #[error("not a valid endpoint id")]
    InvalidId,
    /// The peer did not answer in time.
    #[error("no answer within {} s", .0.as_secs())]
    TimedOut(Duration),
    /// The connection attempt failed.
    #[error("{0:#}")]
    Connect(iroh::endpoint::ConnectError),
}

/// Why a stream to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Opening the stream took too long.
    #[error("opening a stream timed out")]
    OpenTimedOut,
    /// The connection refused a new stream (most likely it was closed).
    #[error("cannot open a stream: {0}")]
    Open(iroh::endpoint::ConnectionError),
    /// The peer did not answer in time.
    #[error("no answer within {} s", .0.as_secs())]
    NoAnswer(Duration),
    /// The peer closed the stream before answering.
    #[error("the peer closed the stream")]
    Closed,
}

/// What a peer did that the sync protocol does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// An answer with no kind.
    #[error("empty answer")]
    EmptyAnswer,
    /// An answer of the wrong kind for the request (named).
    #[error("unexpected answer {0}")]
    UnexpectedAnswer(&'static str),
    /// A fixed-size field of an answer has the wrong length.
    #[error("its {field} is not {len} bytes")]
    BadLength {
        /// The field.
        field: &'static str,
        /// Its required length.
        len: usize,
    },
    /// It answered a request for intentions it had offered with none of them.
    #[error("it offered intentions it does not send")]
    Withheld,
    /// It answered a request for intentions with none of those asked for.
    #[error("it sent intentions that were not asked for")]
    Unasked,
    /// Its patch is for a chunk of another size.
    #[error("its patch is for {got} bytes, the chunk has {want}")]
    PatchSize {
        /// The size its patch claims.
        got: u64,
        /// The chunk's size.
        want: u64,
    },
    /// Its patch does not rebuild the chunk asked for.
    #[error("its patch does not rebuild chunk {0:?}")]
    BadPatch(Hash),
    /// The attestation sent with a witness batch does not decode.
    #[error("its witness batch carries a bad attestation: {0}")]
    BadAttestation(AttestError),
}
