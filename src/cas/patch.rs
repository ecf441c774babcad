//! Chunk patches: a changed chunk rebuilt from a local base chunk (the chunk at the same
//! place in the file's previous content) plus the blocks of it that differ, so an edit
//! in a large file moves a few blocks over the network instead of a whole chunk.

use bytes::Bytes;

/// Size of the blocks two chunks are compared in.
pub(crate) const PATCH_BLOCK: usize = 16 * 1024;

/// Longest chunk a patch rebuilds or describes: a chunk a manifest may name, so a peer's
/// claimed size never makes the receiver allocate more.
pub(crate) const MAX_PATCH_BYTES: u64 = super::MAX_CHUNK_BYTES;

/// The blocks of `new` that differ from `base` at the same offsets, as (offset, bytes),
/// or `None` when they would be more than half of `new` (a whole fetch is as good) or
/// `new` is longer than [`MAX_PATCH_BYTES`].
pub(crate) fn diff(base: &[u8], new: &[u8]) -> Option<Vec<(u64, Bytes)>> {
    if new.len() as u64 > MAX_PATCH_BYTES {
        return None;
    }
    let mut blocks = Vec::new();
    let mut bytes = 0usize;
    for (i, block) in new.chunks(PATCH_BLOCK).enumerate() {
        let at = i * PATCH_BLOCK;
        if base.get(at..at + block.len()) == Some(block) {
            continue;
        }
        bytes += block.len();
        if bytes > new.len() / 2 {
            return None;
        }
        blocks.push((at as u64, Bytes::copy_from_slice(block)));
    }
    Some(blocks)
}

/// `base` cut or zero-extended to `size`, with `blocks` written over it; `None` if a
/// block reaches past `size` or `size` exceeds [`MAX_PATCH_BYTES`] (checked before
/// anything is allocated).
pub(crate) fn apply(base: &[u8], size: u64, blocks: &[(u64, Bytes)]) -> Option<Vec<u8>> {
    if size > MAX_PATCH_BYTES {
        return None;
    }
    let size = usize::try_from(size).ok()?;
    let mut out = vec![0u8; size];
    let keep = base.len().min(size);
    out[..keep].copy_from_slice(&base[..keep]);
    for (at, data) in blocks {
        let at = usize::try_from(*at).ok()?;
        out.get_mut(at..at.checked_add(data.len())?)?
            .copy_from_slice(data);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_one_byte_edit_is_one_block_and_applies_back() {
        let base = data(1 << 20, 1);
        let mut new = base.clone();
        new[500_000] ^= 0xff;
        let blocks = diff(&base, &new).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].0, (500_000 / PATCH_BLOCK * PATCH_BLOCK) as u64);
        assert_eq!(apply(&base, new.len() as u64, &blocks).unwrap(), new);
    }

    #[test]
    fn growth_shrinkage_and_a_last_partial_block_apply_back() {
        let base = data(100_000, 2);
        for len in [1, 16_384, 70_001, 100_000, 120_000] {
            let mut new = data(len, 2);
            if len > 10 {
                new[len - 3] ^= 1;
            }
            if let Some(blocks) = diff(&base, &new) {
                assert_eq!(apply(&base, len as u64, &blocks).unwrap(), new, "{len}");
            }
        }
    }

    #[test]
    fn mostly_different_chunks_are_not_worth_a_patch() {
        assert!(diff(&data(1 << 20, 1), &data(1 << 20, 9)).is_none());
    }

    #[test]
    fn a_patch_claiming_a_huge_size_is_refused_before_allocating() {
        let blocks = [(0u64, Bytes::from_static(b"abc"))];
        assert!(apply(b"abc", 1 << 40, &blocks).is_none());
        assert!(apply(b"abc", u64::MAX, &blocks).is_none());
        assert!(apply(b"abc", MAX_PATCH_BYTES + 1, &blocks).is_none());
        let whole = apply(b"abc", MAX_PATCH_BYTES, &blocks).unwrap();
        assert_eq!(whole.len() as u64, MAX_PATCH_BYTES);
    }

    #[test]
    fn a_chunk_longer_than_the_limit_is_not_described_as_a_patch() {
        let base = vec![0u8; MAX_PATCH_BYTES as usize + 1];
        let mut new = base.clone();
        new[0] = 1;
        assert!(diff(&base, &new).is_none());
        assert!(diff(&base[1..], &new[1..]).is_some());
    }

    #[test]
    fn blocks_past_the_size_are_refused() {
        let blocks = [(10u64, Bytes::from_static(b"abcdef"))];
        assert!(apply(b"0123456789", 12, &blocks).is_none());
        assert!(apply(b"0123456789", 16, &blocks).is_some());
        assert!(apply(b"", 4, &[(u64::MAX, Bytes::from_static(b"x"))]).is_none());
    }
}
