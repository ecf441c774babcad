//! Fuzz tests of the content-store decoders: manifest blobs (`Manifest::decode`, fed
//! by peers through blob fetches) and patch answers (`proto::peer::Blocks`, decoded and
//! applied to a local base chunk by `cas::patch::apply` as `net::client::patch_chunk` does).

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;

use super::{config, hostile, within, Budget, PROTOBUF_PER_BYTE};
use crate::cas::manifest::Manifest;
use crate::cas::patch;
use crate::cas::MAX_CHUNK_BYTES;
use crate::ids::Hash;
use crate::proto::peer as pb;

/// `Manifest::decode`: the chunk list takes a few times its encoding.
const MANIFEST: Budget = Budget {
    per_byte: PROTOBUF_PER_BYTE,
    fixed: 4 * 1024,
};

/// A patch answer: the rebuilt chunk (its size is checked against the manifest's chunk
/// length first) plus a few times the answer's bytes.
const PATCH: Budget = Budget {
    per_byte: PROTOBUF_PER_BYTE,
    fixed: 4 * 1024,
};

fn chunks() -> impl Strategy<Value = Vec<(Hash, u64)>> {
    prop::collection::vec(
        (any::<[u8; 32]>().prop_map(Hash), 1..=MAX_CHUNK_BYTES),
        0..40,
    )
}

fn total(chunks: &[(Hash, u64)]) -> u64 {
    chunks.iter().map(|(_, s)| s).sum()
}

/// A base chunk and an edited version of it: some blocks changed, maybe resized.
fn base_and_new() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        0usize..6 * patch::PATCH_BLOCK,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        -1000isize..1000,
    )
        .prop_map(|(len, edits, grow)| {
            let base: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut new = base.clone();
            new.resize(len.saturating_add_signed(grow), 3);
            for (at, b) in edits {
                if !new.is_empty() {
                    let p = at.index(new.len());
                    new[p] ^= b | 1;
                }
            }
            (base, new)
        })
}

/// The patch answer a serving peer sends for `new` over `base`, if one is worth it.
fn answer(base: &[u8], new: &[u8]) -> Vec<u8> {
    let blocks = patch::diff(base, new).unwrap_or_default();
    pb::Blocks {
        size: new.len() as u64,
        blocks: blocks
            .into_iter()
            .map(|(offset, data)| pb::Block { offset, data })
            .collect(),
    }
    .encode_to_vec()
}

/// What `patch_chunk` does with an answer for a chunk of `len` bytes: decode it, check
/// its size, rebuild over `base`.
fn receive_patch(base: &[u8], len: u64, answer: &[u8]) -> Option<Vec<u8>> {
    let got = pb::Blocks::decode(answer).ok()?;
    if got.size != len {
        return None;
    }
    let blocks: Vec<(u64, Bytes)> = got.blocks.into_iter().map(|b| (b.offset, b.data)).collect();
    patch::apply(base, got.size, &blocks)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_valid_manifest_decodes_to_its_chunks(c in chunks()) {
        let m = Manifest::new(c.clone()).expect("generated chunks are within the limit");
        let bytes = m.encode();
        let back = within(MANIFEST, &bytes, || Manifest::decode(Hash::ZERO, &bytes, total(&c)))?;
        prop_assert_eq!(back.expect("an encoded manifest decodes"), m);
    }

    #[test]
    fn edited_or_random_manifests_are_refused_or_describe_exactly_their_size(
        (bytes, size) in (hostile(chunks().prop_map(|c| {
            Manifest::new(c).expect("generated chunks are within the limit").encode()
        })), 0u64..1 << 26)
    ) {
        let decoded = within(MANIFEST, &bytes, || Manifest::decode(Hash::ZERO, &bytes, size))?;
        if let Ok(m) = decoded {
            prop_assert_eq!(m.size(), size);
            prop_assert!(m.chunks().all(|(_, _, len)| len > 0));
            prop_assert_eq!(m.chunks().map(|(_, _, len)| len).sum::<u64>(), size);
        }
    }

    #[test]
    fn a_valid_patch_answer_rebuilds_the_new_chunk((base, new) in base_and_new()) {
        let bytes = answer(&base, &new);
        let budget = Budget { fixed: PATCH.fixed + 2 * new.len(), ..PATCH };
        let rebuilt = within(budget, &bytes, || receive_patch(&base, new.len() as u64, &bytes))?;
        if patch::diff(&base, &new).is_some() {
            prop_assert_eq!(rebuilt, Some(new));
        }
    }

    #[test]
    fn edited_or_random_patch_answers_are_refused_or_rebuild_a_chunk_of_the_asked_size(
        ((base, new), bytes) in base_and_new().prop_flat_map(|(base, new)| {
            let valid = answer(&base, &new);
            (Just((base, new)), hostile(Just(valid)))
        })
    ) {
        let len = new.len() as u64;
        let budget = Budget { fixed: PATCH.fixed + 2 * new.len(), ..PATCH };
        let rebuilt = within(budget, &bytes, || receive_patch(&base, len, &bytes))?;
        if let Some(r) = rebuilt {
            prop_assert_eq!(r.len() as u64, len);
        }
    }
}
