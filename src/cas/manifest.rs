//! Manifest blobs: the ordered chunk list of one large content version.

use bytes::Bytes;
use prost::Message;

use crate::intention::Hash;
use crate::proto::fs as pb;

use super::CasError;

/// A decoded, validated manifest with each chunk's start offset.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// Chunk addresses, in content order.
    hashes: Vec<Hash>,
    /// `starts[i]` is the content offset of chunk `i`; `starts[len]` is the total size.
    starts: Vec<u64>,
}

impl Manifest {
    /// A manifest of `chunks` (address, length) in order.
    pub(crate) fn new(chunks: impl IntoIterator<Item = (Hash, u64)>) -> Self {
        let mut hashes = Vec::new();
        let mut starts = vec![0];
        let mut end = 0u64;
        for (hash, size) in chunks {
            end += size;
            hashes.push(hash);
            starts.push(end);
        }
        Manifest { hashes, starts }
    }

    /// Parses the blob `hash` holding `bytes`, which must describe exactly `size` bytes.
    pub(crate) fn decode(hash: Hash, bytes: &[u8], size: u64) -> Result<Self, CasError> {
        let corrupt = |reason: String| CasError::Corrupt { hash, reason };
        let pb = pb::Manifest::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut chunks = Vec::with_capacity(pb.chunks.len());
        let mut total = 0u64;
        for c in pb.chunks {
            let h = Hash::from_slice(&c.hash)
                .ok_or_else(|| corrupt("chunk hash is not 32 bytes".into()))?;
            if c.size == 0 {
                return Err(corrupt("empty chunk".into()));
            }
            total = total
                .checked_add(c.size)
                .ok_or_else(|| corrupt("chunk sizes overflow".into()))?;
            chunks.push((h, c.size));
        }
        if total != size {
            return Err(corrupt(format!(
                "chunks hold {total} bytes, content is {size}"
            )));
        }
        Ok(Manifest::new(chunks))
    }

    /// The prost encoding stored as the manifest blob.
    pub(crate) fn encode(&self) -> Vec<u8> {
        pb::Manifest {
            chunks: self
                .chunks()
                .map(|(hash, _, size)| pb::Chunk {
                    hash: Bytes::copy_from_slice(&hash.0),
                    size,
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Total content length.
    pub(crate) fn size(&self) -> u64 {
        *self
            .starts
            .last()
            .expect("starts holds at least the 0 offset")
    }

    /// Number of chunks.
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Chunks as (address, start offset, length), in order.
    pub(crate) fn chunks(&self) -> impl Iterator<Item = (Hash, u64, u64)> + '_ {
        self.hashes
            .iter()
            .zip(self.starts.windows(2))
            .map(|(h, w)| (*h, w[0], w[1] - w[0]))
    }

    /// Chunks overlapping `[offset, end)`, as (address, start offset, length).
    pub(crate) fn overlapping(
        &self,
        offset: u64,
        end: u64,
    ) -> impl Iterator<Item = (Hash, u64, u64)> + '_ {
        // Index of the chunk holding `offset`: the last start <= offset.
        let first = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let last = self.starts.partition_point(|&s| s < end).min(self.len());
        (first..last).map(|i| {
            let start = self.starts[i];
            (self.hashes[i], start, self.starts[i + 1] - start)
        })
    }
}
