//! Errors of the content store.

use crate::ids::Hash;

/// A content store operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CasError {
    /// The iroh-blobs store could not be opened at the given directory.
    #[error("cannot open blob store: {0}")]
    Open(String),
    /// A request to the iroh-blobs store failed (I/O inside the store, or its actor is gone).
    #[error("blob store request failed: {0}")]
    Blobs(#[from] iroh_blobs::api::Error),
    /// A local file could not be read, written or synced.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A blob that content refers to is absent or incomplete in the local store, and
    /// did not arrive while the read waited for it (`waited` is zero without a fetcher).
    #[error("blob {hash} is not available locally (waited {waited:?} for a fetch)")]
    Absent {
        /// The blob.
        hash: Hash,
        /// How long the read waited for it.
        waited: std::time::Duration,
    },
    /// A manifest names a chunk longer than [`MAX_CHUNK_BYTES`](super::MAX_CHUNK_BYTES)
    /// (`manifest` is `None` while one is being written).
    #[error("a chunk of {size} bytes exceeds the limit of {limit}", limit = super::MAX_CHUNK_BYTES)]
    ChunkTooLarge {
        /// The manifest naming it.
        manifest: Option<Hash>,
        /// The chunk's claimed length.
        size: u64,
    },
    /// The chunk lengths of a manifest add up to more than a u64 holds.
    #[error("the chunk sizes of a manifest overflow")]
    SizeOverflow {
        /// The manifest (`None` while one is being written).
        manifest: Option<Hash>,
    },
    /// A blob is longer than any manifest or chunk may be, so it is not read into memory.
    #[error("blob {hash} of {size} bytes exceeds the limit of {limit}", limit = super::store::MAX_BLOB_READ)]
    BlobTooLarge {
        /// The blob.
        hash: Hash,
        /// Its length.
        size: u64,
    },
    /// The blob collector did not finish a requested run in time (it stops for good on
    /// its first error; the log says why).
    #[error("blob garbage collection did not finish within {0:?}")]
    GcStalled(std::time::Duration),
    /// A blob is present but does not hold what its reference says (bad manifest, wrong size).
    #[error("blob {hash} is corrupt: {reason}")]
    Corrupt {
        /// The blob.
        hash: Hash,
        /// What is wrong with it.
        reason: String,
    },
}

impl CasError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> CasError {
        move |source| CasError::Io { what, source }
    }
}
