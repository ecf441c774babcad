//! Errors of the store layer.

use std::path::PathBuf;

use crate::fs::FsError;
use crate::identity::PublicKey;
use crate::intention::{IntentionError, StoreId};

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
    /// The author is not a current member with role Admin or Writer.
    #[error("author {0:?} may not write to this store")]
    NotMember(PublicKey),
    /// Too many intentions are waiting for missing predecessors.
    #[error("too many floating intentions (limit {0})")]
    FloatingFull(u64),
    /// `create` found a store already at this path.
    #[error("a store already exists at {0}")]
    AlreadyExists(PathBuf),
    /// `open` found no store at this path.
    #[error("no store at {0}")]
    Missing(PathBuf),
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
    /// The store was shut down.
    #[error("store is shut down")]
    Closed,
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
