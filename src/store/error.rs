//! Errors of the store layer.

use std::path::PathBuf;

use crate::fs::op::{OpError, Role};
use crate::fs::FsError;
use crate::identity::PublicKey;
use crate::ids::{Hash, StoreId};
use crate::intention::IntentionError;

/// Why a store operation failed or an intention was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The received bytes are not a valid signed intention (malformed, oversized, forged).
    #[error("intention refused: {0}")]
    Intention(#[from] IntentionError),
    /// The intention belongs to another store.
    #[error("intention is for store {got:?}, not {expected:?}")]
    WrongStore {
        /// This store's id.
        expected: StoreId,
        /// The id named by the intention.
        got: StoreId,
    },
    /// The author was never granted the role Admin or Writer.
    #[error("author {0:?} may not write to this store")]
    NotMember(PublicKey),
    /// The intention holds a system op (members, invites, store name) and its author
    /// was never an Admin.
    #[error("author {0:?} is not an admin of this store")]
    NotAdmin(PublicKey),
    /// The intention's `prev` was written by another author.
    #[error("intention {hash} names as prev an intention by another author")]
    ForeignPrev {
        /// The refused intention.
        hash: Hash,
    },
    /// A `Leave` that is not the only op of its intention or names another chain seq.
    #[error("intention {hash} holds a malformed leave (its chain seq is {seq})")]
    BadLeave {
        /// The intention.
        hash: Hash,
        /// Its place in its author's chain.
        seq: u64,
    },
    /// The store was deleted by an admin: it admits no more intentions.
    #[error("the store was deleted by an admin")]
    Deleted,
    /// The author was revoked and the intention lies past the revocation's cut.
    #[error("author {author:?} was revoked after {upto} intentions; this is its #{seq}")]
    Revoked {
        /// The revoked author.
        author: PublicKey,
        /// The intention's place in the author's chain.
        seq: u64,
        /// The revocation's cut.
        upto: u64,
    },
    /// The author signed two intentions at one place of its chain (a second root or a
    /// fork): it is an equivocator, and its intentions from its lowest fork on are void.
    #[error("author {author:?} equivocated: two intentions at its chain seq {seq} or before")]
    Equivocation {
        /// The equivocating author.
        author: PublicKey,
        /// The refused intention's place in the author's chain.
        seq: u64,
    },
    /// The author was demoted before this place in its chain, and its role there does
    /// not cover the intention (it once had a role that would).
    #[error("author {author:?} was demoted before its intention #{seq}")]
    Demoted {
        /// The demoted author.
        author: PublicKey,
        /// The intention's place in the author's chain.
        seq: u64,
    },
    /// An op of the intention is stamped at or before its `prev` or one of its deps.
    #[error("intention {hash} has an op stamped no later than its predecessor {before}")]
    Stale {
        /// The refused intention.
        hash: Hash,
        /// The predecessor stamped at or after it.
        before: Hash,
    },
    /// Too many intentions are waiting for missing predecessors (or for their time).
    #[error("too many floating intentions (limit {0})")]
    FloatingFull(u64),
    /// `create` found a store already at this path.
    #[error("a store already exists at {0}")]
    AlreadyExists(PathBuf),
    /// `open` found no store at this path.
    #[error("no store at {0}")]
    Missing(PathBuf),
    /// The store was written by a newer lattice-mount whose schema this build cannot
    /// read; nothing was changed.
    #[error("written by a newer lattice-mount (schema {found}); this one reads up to {supported}")]
    NewerSchema {
        /// The schema version recorded in the store.
        found: u32,
        /// The newest schema version this build reads.
        supported: u32,
    },
    /// A file or directory operation failed.
    #[error("store i/o at {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The redb database failed.
    #[error("store database: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode or the witness chain does not verify.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The persisted projection snapshot does not decode.
    #[error("projection snapshot: {0}")]
    Snapshot(FsError),
    /// An earlier commit failed, so the projection no longer matches the database;
    /// the store must be reopened.
    #[error("store failed earlier and must be reopened: {0}")]
    Failed(String),
    /// Content the intentions refer to could not be made durable, so neither were they.
    #[error("content could not be made durable: {0}")]
    Unsynced(String),
    /// The store was shut down.
    #[error("store is shut down")]
    Closed,
    /// A snapshot recorded here is not sealed in an intention yet (it is within ms).
    #[error("the snapshot is not sealed yet")]
    NotSealed,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Why an invite, a redemption or a revocation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// No invite with this secret is recorded in the store.
    #[error("unknown invite (not for this store, or not synced yet)")]
    Unknown,
    /// The invite was already redeemed by another key.
    #[error("invite already used by {0:?}")]
    Used(PublicKey),
    /// The invite expired.
    #[error("invite expired at {0} ms")]
    Expired(u64),
    /// An admin withdrew the invite.
    #[error("invite was revoked")]
    Revoked,
    /// This node is not an admin of the store.
    #[error("only an admin may invite, redeem or revoke")]
    NotAdmin,
    /// The joiner's key was revoked from this store; revocations are final.
    #[error("key {0:?} was revoked from this store")]
    JoinerRevoked(PublicKey),
    /// The key to revoke is not a current member.
    #[error("{0:?} is not a member")]
    NotMember(PublicKey),
    /// The joiner is already a member with this role.
    #[error("{0:?} is already a member as {1:?}")]
    AlreadyMember(PublicKey, Role),
    /// The joiner's display name is not a valid label (too long, a control character
    /// or `/`); nothing was written.
    #[error("invalid display name: {0}")]
    DisplayName(OpError),
    /// The membership op is invalid (see `Op::validate`); nothing was written.
    #[error("invalid membership op: {0}")]
    Op(#[from] OpError),
    /// The store failed or is shut down.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why leaving or deleting a store was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaveError {
    /// This node is not a member of the store (it was revoked, or never joined).
    #[error("this node is not a member of the store")]
    NotMember,
    /// Deleting needs the admin role.
    #[error("only an admin may delete a store")]
    NotAdmin,
    /// The op is invalid (see `Op::validate`).
    #[error("invalid op: {0}")]
    Op(#[from] OpError),
    /// The store failed or is shut down.
    #[error(transparent)]
    Store(StoreError),
}
