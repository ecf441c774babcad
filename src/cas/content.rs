//! File content as ops name it: inline bytes, or a manifest blob of chunks in this
//! content store.

use bytes::Bytes;

use crate::ids::Hash;

/// Content up to this many bytes travels inline in the intention.
pub const INLINE_MAX: usize = 16 * 1024;

/// File content of one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Bytes carried in the intention (at most [`INLINE_MAX`]).
    Inline(Bytes),
    /// A manifest blob listing chunks in the content store.
    Manifest {
        /// blake3 hash of the manifest blob.
        hash: Hash,
        /// Total content length.
        size: u64,
    },
}

impl Content {
    /// Empty content.
    pub fn empty() -> Self {
        Content::Inline(Bytes::new())
    }

    /// Content length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Inline(b) => b.len() as u64,
            Content::Manifest { size, .. } => *size,
        }
    }

    /// True for zero-length content.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when it names a manifest blob (content kept in the content store).
    pub fn is_manifest(&self) -> bool {
        matches!(self, Content::Manifest { .. })
    }
}
