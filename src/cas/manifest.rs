//! Manifest blobs: the ordered chunk list of one large content version.

use bytes::Bytes;
use prost::Message;

use crate::ids::Hash;
use crate::proto::fs as pb;

use super::chunker::MAX_CHUNK_BYTES;
use super::CasError;

/// Longest manifest blob, written or read: about 1.6 million chunks, a file of at least
/// 400 GiB (1.6 TiB at the average chunk), so reading one costs at most this much memory.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

/// A decoded, validated manifest with each chunk's start offset.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// Chunk addresses, in content order.
    hashes: Vec<Hash>,
    /// `starts[i]` is the content offset of chunk `i`; `starts[len]` is the total size.
    starts: Vec<u64>,
}

impl Manifest {
    /// A manifest of `chunks` (address, length) in order; each chunk is at most
    /// [`MAX_CHUNK_BYTES`] long and their sum fits a u64.
    pub(crate) fn new(chunks: impl IntoIterator<Item = (Hash, u64)>) -> Result<Self, CasError> {
        Self::checked(None, chunks)
    }

    /// Builds a manifest (`hash` when it was received), refusing chunks that are empty
    /// or longer than [`MAX_CHUNK_BYTES`] and lengths that overflow.
    fn checked(
        hash: Option<Hash>,
        chunks: impl IntoIterator<Item = (Hash, u64)>,
    ) -> Result<Self, CasError> {
        let chunks = chunks.into_iter();
        let mut hashes = Vec::with_capacity(chunks.size_hint().0);
        let mut starts = Vec::with_capacity(chunks.size_hint().0 + 1);
        starts.push(0);
        let mut end = 0u64;
        for (chunk, size) in chunks {
            if size > MAX_CHUNK_BYTES {
                return Err(CasError::ChunkTooLarge {
                    manifest: hash,
                    size,
                });
            }
            if size == 0 {
                return Err(CasError::Corrupt {
                    hash: hash.unwrap_or(chunk),
                    reason: "empty chunk".into(),
                });
            }
            end = end
                .checked_add(size)
                .ok_or(CasError::SizeOverflow { manifest: hash })?;
            hashes.push(chunk);
            starts.push(end);
        }
        Ok(Manifest { hashes, starts })
    }

    /// Parses the blob `hash` holding `bytes`, which must describe exactly `size` bytes
    /// in chunks of at most [`MAX_CHUNK_BYTES`].
    pub(crate) fn decode(hash: Hash, bytes: &[u8], size: u64) -> Result<Self, CasError> {
        let corrupt = |reason: String| CasError::Corrupt { hash, reason };
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(CasError::BlobTooLarge {
                hash,
                size: bytes.len() as u64,
            });
        }
        let pb = pb::Manifest::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
        let chunks = pb
            .chunks
            .into_iter()
            .map(|c| {
                let h = Hash::from_slice(&c.hash)
                    .ok_or_else(|| corrupt("chunk hash is not 32 bytes".into()))?;
                Ok((h, c.size))
            })
            .collect::<Result<Vec<_>, CasError>>()?;
        let manifest = Self::checked(Some(hash), chunks)?;
        if manifest.size() != size {
            return Err(corrupt(format!(
                "chunks hold {} bytes, content is {size}",
                manifest.size()
            )));
        }
        Ok(manifest)
    }

    /// The prost encoding stored as the manifest blob (see [`MAX_MANIFEST_BYTES`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding of a manifest of `chunks` (address, claimed length), unchecked.
    fn encoded(chunks: &[(Hash, u64)]) -> Vec<u8> {
        pb::Manifest {
            chunks: chunks
                .iter()
                .map(|(h, size)| pb::Chunk {
                    hash: Bytes::copy_from_slice(&h.0),
                    size: *size,
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_manifest_claiming_a_two_to_the_forty_byte_chunk_is_refused() {
        let bytes = encoded(&[(Hash::of(b"small"), 1 << 40)]);
        let err = Manifest::decode(Hash::of(&bytes), &bytes, 1 << 40).unwrap_err();
        assert!(
            matches!(err, CasError::ChunkTooLarge { size, manifest: Some(_) } if size == 1 << 40),
            "{err}"
        );
    }

    #[test]
    fn a_chunk_one_byte_over_the_limit_is_refused_and_one_at_it_is_kept() {
        let over = encoded(&[(Hash::of(b"a"), MAX_CHUNK_BYTES + 1)]);
        let err = Manifest::decode(Hash::of(&over), &over, MAX_CHUNK_BYTES + 1).unwrap_err();
        assert!(matches!(err, CasError::ChunkTooLarge { .. }), "{err}");
        let at = encoded(&[(Hash::of(b"a"), MAX_CHUNK_BYTES), (Hash::of(b"b"), 1)]);
        let m = Manifest::decode(Hash::of(&at), &at, MAX_CHUNK_BYTES + 1).unwrap();
        assert_eq!(m.size(), MAX_CHUNK_BYTES + 1);
    }

    #[test]
    fn chunk_sizes_summing_past_u64_are_refused() {
        let bytes = encoded(&[(Hash::of(b"a"), u64::MAX), (Hash::of(b"b"), 2)]);
        let err = Manifest::decode(Hash::of(&bytes), &bytes, 1).unwrap_err();
        assert!(
            matches!(
                err,
                CasError::ChunkTooLarge { .. } | CasError::SizeOverflow { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_manifest_with_a_chunk_over_the_limit_is_not_written() {
        let err = Manifest::new([(Hash::of(b"a"), MAX_CHUNK_BYTES + 1)]).unwrap_err();
        assert!(
            matches!(err, CasError::ChunkTooLarge { manifest: None, .. }),
            "{err}"
        );
        let m = Manifest::new([(Hash::of(b"a"), MAX_CHUNK_BYTES)]).unwrap();
        let again = Manifest::decode(Hash::of(b"m"), &m.encode(), MAX_CHUNK_BYTES).unwrap();
        assert_eq!(again, m);
    }
}
