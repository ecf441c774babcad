//! Fuzz tests of the intention decoders: `Intention::decode` and `Intention::peek` on
//! whole signed intentions, signed bodies whose fields or op batch are hostile (so the
//! decoder gets past the signature), and `Op::from_proto` on single ops.

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;

use super::ops::{intention, intention_bytes, op};
use super::{config, hostile, within, Budget, PROTOBUF_PER_BYTE};
use crate::fs::op::Op;
use crate::identity::Identity;
use crate::ids::Hash;
use crate::intention::{Intention, IntentionError, SIGNING_DOMAIN};
use crate::proto::fs as pfs;
use crate::proto::intention as pb;

/// `Intention::decode` and `peek`: decoded ops take a few times their encoding. Deps
/// are counted on the wire, so the body holds nothing per byte (a refused body of
/// 100,000 empty deps, 200 KB: 24 bytes, was 6.3 MB), but one op's repeated field is
/// still decoded whole (`SetMeta.xattr_set`: a 64-byte `Xattr` per two wire bytes, 96
/// per byte as the vector grows). Measured over 256 cases per test: hostile op batches
/// up to 74 bytes per input byte above `fixed`, hostile bodies 20 (28 before deps were
/// counted on the wire); so the per-byte part stays [`PROTOBUF_PER_BYTE`].
const INTENTION: Budget = Budget {
    per_byte: PROTOBUF_PER_BYTE,
    fixed: 16 * 1024,
};

/// `Intention::decode` and `peek` refusing a body by a count taken on the wire: an error
/// message, nothing per input byte.
const REFUSED_ON_THE_WIRE: Budget = Budget {
    per_byte: 0,
    fixed: 4 * 1024,
};

/// `Op::from_proto` after `proto::fs::Op::decode`.
const OP: Budget = Budget {
    per_byte: PROTOBUF_PER_BYTE,
    fixed: 4 * 1024,
};

/// Signs arbitrary body bytes as `Intention::create` signs a valid body.
fn sign(seed: [u8; 32], body: Vec<u8>) -> Vec<u8> {
    let id = Identity::from_seed(seed);
    let hash = Hash::of(&body);
    let signature = id.sign(&[SIGNING_DOMAIN, &hash.0].concat());
    pb::SignedIntention {
        body: body.into(),
        signature: Bytes::copy_from_slice(&signature),
    }
    .encode_to_vec()
}

/// The body of a valid intention, its op batch, and the seed of its author.
fn parts() -> impl Strategy<Value = (pb::IntentionBody, [u8; 32])> {
    (any::<[u8; 32]>(), intention()).prop_map(|(seed, i)| {
        let signed = pb::SignedIntention::decode(i.bytes).expect("created bytes decode");
        let mut body = pb::IntentionBody::decode(signed.body).expect("created body decodes");
        body.author = Bytes::copy_from_slice(&Identity::from_seed(seed).public().0);
        (body, seed)
    })
}

/// Signed intentions whose body bytes are hostile: the signature verifies, so every
/// check after it runs on the edited fields.
fn signed_hostile_body() -> impl Strategy<Value = Vec<u8>> {
    parts().prop_flat_map(|(body, seed)| {
        hostile(Just(body.encode_to_vec())).prop_map(move |b| sign(seed, b))
    })
}

/// Signed intentions whose op batch is hostile and whose envelope is valid.
fn signed_hostile_ops() -> impl Strategy<Value = Vec<u8>> {
    parts().prop_flat_map(|(body, seed)| {
        hostile(Just(body.ops.to_vec())).prop_map(move |ops| {
            let body = pb::IntentionBody {
                ops: ops.into(),
                ..body.clone()
            };
            sign(seed, body.encode_to_vec())
        })
    })
}

/// Decodes `bytes` within budget; whatever it accepts is consistent with `peek`.
fn decode_checked(bytes: Vec<u8>) -> Result<Result<Intention, IntentionError>, TestCaseError> {
    let bytes = Bytes::from(bytes);
    let peeked = within(INTENTION, &bytes, || Intention::peek(&bytes))?;
    let decoded = within(INTENTION, &bytes, || Intention::decode(bytes.clone()))?;
    if let Ok(i) = &decoded {
        prop_assert_eq!(peeked, Some((i.hlc, i.hash)));
        prop_assert_eq!(&i.bytes, &bytes);
    }
    Ok(decoded)
}

/// Found by `signed_intentions_with_hostile_op_batches_are_refused_or_consistent`:
/// `Intention::decode` decoded the whole op batch before checking any op, holding a
/// 160-byte struct per two-byte empty entry (over 600 MiB for a 4 MiB batch).
#[test]
fn an_op_batch_of_empty_entries_is_refused_without_an_op_in_memory_per_entry() {
    let seed = [1; 32];
    let body = pb::IntentionBody {
        author: Bytes::copy_from_slice(&Identity::from_seed(seed).public().0),
        store_id: Bytes::from_static(&[7; 16]),
        ops: [0x0a, 0x00].repeat(100_000).into(),
        ..Default::default()
    };
    let bytes = sign(seed, body.encode_to_vec());
    let (decoded, peak) = super::alloc::peak_bytes(|| Intention::decode(bytes.clone().into()));
    assert!(
        matches!(
            decoded,
            Err(IntentionError::Op(crate::fs::op::OpError::Empty))
        ),
        "{decoded:?}"
    );
    assert!(
        peak <= INTENTION.limit(bytes.len()),
        "{peak} bytes for {}",
        bytes.len()
    );
}

/// `Intention::decode` decoded the whole body before counting its deps, holding a
/// 32-byte `Bytes` per two-byte empty entry (48 while the vector grew) before the
/// signature was checked.
#[test]
fn a_body_of_empty_deps_is_refused_as_too_large_without_a_dep_in_memory_per_entry() {
    let seed = [1; 32];
    let body = pb::IntentionBody {
        author: Bytes::copy_from_slice(&Identity::from_seed(seed).public().0),
        store_id: Bytes::from_static(&[7; 16]),
        deps: vec![Bytes::new(); 100_000],
        ..Default::default()
    };
    let bytes = Bytes::from(sign(seed, body.encode_to_vec()));
    let limit = REFUSED_ON_THE_WIRE.limit(bytes.len());
    let (decoded, peak) = super::alloc::peak_bytes(|| Intention::decode(bytes.clone()));
    assert!(
        matches!(
            decoded,
            Err(IntentionError::TooLarge {
                what: "deps",
                got: 100_000,
                ..
            })
        ),
        "{decoded:?}"
    );
    assert!(
        peak <= limit,
        "decode held {peak} bytes for {}",
        bytes.len()
    );
    let (peeked, peak) = super::alloc::peak_bytes(|| Intention::peek(&bytes));
    assert_eq!(peeked, None);
    assert!(peak <= limit, "peek held {peak} bytes for {}", bytes.len());
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_valid_intention_decodes_to_what_was_signed(i in intention()) {
        let d = decode_checked(i.bytes.to_vec())?.expect("a created intention decodes");
        prop_assert_eq!(d.hash, i.hash);
        prop_assert_eq!(d.author, i.author);
        prop_assert_eq!(d.prev, i.prev);
        prop_assert_eq!(&d.deps, &i.deps);
        prop_assert_eq!(&d.ops, &i.ops);
    }

    #[test]
    fn edited_or_random_intention_bytes_are_refused_or_consistent(
        bytes in hostile(intention_bytes())
    ) {
        decode_checked(bytes)?.ok();
    }

    #[test]
    fn signed_intentions_with_hostile_bodies_are_refused_or_consistent(
        bytes in signed_hostile_body()
    ) {
        decode_checked(bytes)?.ok();
    }

    #[test]
    fn signed_intentions_with_hostile_op_batches_are_refused_or_consistent(
        bytes in signed_hostile_ops()
    ) {
        if let Ok(i) = decode_checked(bytes)? {
            let batch = pfs::OpBatch {
                ops: i.ops.iter().map(Op::to_proto).collect(),
            };
            prop_assert!(batch.encoded_len() <= crate::intention::MAX_INTENTION_OPS_BYTES);
        }
    }

    #[test]
    fn a_valid_op_round_trips_through_its_encoding(o in op()) {
        let bytes = o.to_proto().encode_to_vec();
        let back = within(OP, &bytes, || {
            pfs::Op::decode(bytes.as_slice()).map(Op::from_proto)
        })?;
        prop_assert_eq!(back, Ok(Ok(o)));
    }

    #[test]
    fn edited_or_random_op_encodings_are_refused_or_round_trip(
        bytes in hostile(op().prop_map(|o| o.to_proto().encode_to_vec()))
    ) {
        let decoded = within(OP, &bytes, || {
            pfs::Op::decode(bytes.as_slice()).map(Op::from_proto)
        })?;
        if let Ok(Ok(o)) = decoded {
            let again = Op::from_proto(o.to_proto());
            prop_assert_eq!(again, Ok(o));
        }
    }
}
