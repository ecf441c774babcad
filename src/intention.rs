//! Intentions: canonical encoding, blake3 hash, Ed25519 signature with a domain prefix,
//! verification and size limits. The exact received bytes are stored and hashed.

use bytes::Bytes;
use prost::Message;

use crate::fs::op::{Op, OpBody, OpError};
use crate::hlc::Hlc;
use crate::identity::{Identity, PublicKey};
use crate::ids::{Hash, StoreId};
use crate::proto::fs as pfs;
use crate::proto::intention as pb;

/// Most encoded op-batch bytes one intention may carry.
pub const MAX_INTENTION_OPS_BYTES: usize = 4 * 1024 * 1024;
/// Most causal deps one intention may name.
pub(crate) const MAX_DEPS: usize = 64;
/// Most encoded bytes of a signed intention (ops plus envelope).
pub(crate) const MAX_INTENTION_BYTES: usize = MAX_INTENTION_OPS_BYTES + 64 * 1024;
/// Prefix signed before the intention hash, so the signature means nothing elsewhere.
pub(crate) const SIGNING_DOMAIN: &[u8] = b"lattice-mount intention v1\0";
/// Field number of `IntentionBody.deps` in proto/intention.proto.
const DEPS_FIELD: u32 = 6;

/// Why an intention was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntentionError {
    /// The bytes are not a well-formed signed intention.
    #[error("malformed intention: {0}")]
    Malformed(String),
    /// A size limit was exceeded.
    #[error("intention too large: {what} is {got}, limit {limit}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// The signature does not verify against the author key.
    #[error("intention signature does not verify")]
    BadSignature,
    /// An op inside is invalid.
    #[error("invalid op: {0}")]
    Op(#[from] OpError),
}

/// A verified intention: the signed bytes exactly as received, and their decoded form.
#[derive(Clone, Debug)]
pub struct Intention {
    /// blake3 of the signed body bytes.
    pub hash: Hash,
    /// The encoded `SignedIntention`, exactly as signed and received.
    pub bytes: Bytes,
    /// Author key.
    pub author: PublicKey,
    /// The greatest clock of the ops.
    pub hlc: Hlc,
    /// The store.
    pub store_id: StoreId,
    /// The author's previous intention in this store.
    pub prev: Option<Hash>,
    /// Sorted store heads the author had seen.
    pub deps: Vec<Hash>,
    /// The decoded ops.
    pub ops: Vec<Op>,
}

impl Intention {
    /// Validates every op ([`Op::validate`], the check [`Intention::decode`] applies),
    /// then encodes, hashes and signs a new intention.
    pub fn create(
        identity: &Identity,
        store_id: StoreId,
        prev: Option<Hash>,
        mut deps: Vec<Hash>,
        ops: Vec<Op>,
    ) -> Result<Self, IntentionError> {
        for op in &ops {
            op.validate()?;
        }
        check_alone(&ops)?;
        deps.sort();
        deps.dedup();
        let hlc = ops.iter().map(|o| o.hlc).max().unwrap_or_default();
        let batch = pfs::OpBatch {
            ops: ops.iter().map(Op::to_proto).collect(),
        };
        let body = pb::IntentionBody {
            author: Bytes::copy_from_slice(&identity.public().0),
            hlc_wall_ms: hlc.wall_ms,
            hlc_counter: hlc.counter,
            store_id: Bytes::copy_from_slice(&store_id.0),
            prev: prev
                .map(|h| Bytes::copy_from_slice(&h.0))
                .unwrap_or_default(),
            deps: deps.iter().map(|h| Bytes::copy_from_slice(&h.0)).collect(),
            ops: batch.encode_to_vec().into(),
        };
        check_limits(&body)?;
        let body_bytes = body.encode_to_vec();
        let hash = Hash::of(&body_bytes);
        let signature = identity.sign(&signing_message(&hash));
        let signed = pb::SignedIntention {
            body: body_bytes.into(),
            signature: Bytes::copy_from_slice(&signature),
        };
        Ok(Self {
            hash,
            bytes: signed.encode_to_vec().into(),
            author: identity.public(),
            hlc,
            store_id,
            prev,
            deps,
            ops,
        })
    }

    /// The clock and hash of signed intention bytes, parsed without verifying anything:
    /// for ordering and bookkeeping of bytes that [`Intention::decode`] will still check.
    pub fn peek(bytes: &Bytes) -> Option<(Hlc, Hash)> {
        let signed = pb::SignedIntention::decode(bytes.clone()).ok()?;
        check_deps_on_wire(&signed.body).ok()?;
        let body = pb::IntentionBody::decode(signed.body.clone()).ok()?;
        let hlc = Hlc {
            wall_ms: body.hlc_wall_ms,
            counter: body.hlc_counter,
        };
        Some((hlc, Hash::of(&signed.body)))
    }

    /// Decodes and verifies received bytes: limits, signature, then every op.
    pub fn decode(bytes: Bytes) -> Result<Self, IntentionError> {
        if bytes.len() > MAX_INTENTION_BYTES {
            return Err(IntentionError::TooLarge {
                what: "intention bytes",
                got: bytes.len(),
                limit: MAX_INTENTION_BYTES,
            });
        }
        let signed = pb::SignedIntention::decode(bytes.clone())
            .map_err(|e| IntentionError::Malformed(e.to_string()))?;
        check_deps_on_wire(&signed.body)?;
        let body = pb::IntentionBody::decode(signed.body.clone())
            .map_err(|e| IntentionError::Malformed(e.to_string()))?;
        check_limits(&body)?;
        let author = PublicKey(fixed(&body.author, "author")?);
        let store_id = StoreId(fixed(&body.store_id, "store_id")?);
        let prev = if body.prev.is_empty() {
            None
        } else {
            Some(Hash(fixed(&body.prev, "prev")?))
        };
        let deps = body
            .deps
            .iter()
            .map(|d| fixed(d, "dep").map(Hash))
            .collect::<Result<Vec<_>, _>>()?;
        if deps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(IntentionError::Malformed(
                "deps not sorted and unique".into(),
            ));
        }
        let hash = Hash::of(&signed.body);
        let signature: [u8; 64] = fixed(&signed.signature, "signature")?;
        if !author.verify(&signing_message(&hash), &signature) {
            return Err(IntentionError::BadSignature);
        }
        let ops = decode_ops(body.ops.clone())?;
        check_alone(&ops)?;
        let hlc = Hlc {
            wall_ms: body.hlc_wall_ms,
            counter: body.hlc_counter,
        };
        if ops.iter().map(|o| o.hlc).max().unwrap_or_default() != hlc {
            return Err(IntentionError::Malformed(
                "intention clock is not the greatest op clock".into(),
            ));
        }
        Ok(Self {
            hash,
            bytes,
            author,
            hlc,
            store_id,
            prev,
            deps,
            ops,
        })
    }
}

/// Refuses a `Snapshot` op that shares its intention: the snapshot is that intention's
/// causal past, so nothing else may be in it (and the store finds it by its clock).
fn check_alone(ops: &[Op]) -> Result<(), IntentionError> {
    let snapshot = ops
        .iter()
        .any(|op| matches!(op.body, OpBody::Snapshot { .. }));
    if snapshot && ops.len() > 1 {
        return Err(IntentionError::Malformed(
            "a snapshot is not the only op of its intention".into(),
        ));
    }
    Ok(())
}

/// An intention this node stored after [`Intention::decode`] accepted it, parsed again
/// without checking the signature (scans of the whole store, such as content
/// collection's, would spend most of their time on it).
pub(crate) struct Stored {
    /// Its author.
    pub author: PublicKey,
    /// The author's previous intention.
    pub prev: Option<Hash>,
    /// The heads its author had seen.
    pub deps: Vec<Hash>,
    /// Its ops, validated again.
    pub ops: Vec<Op>,
}

/// Parses stored intention bytes (see [`Stored`]).
pub(crate) fn stored(bytes: Bytes) -> Result<Stored, IntentionError> {
    let signed =
        pb::SignedIntention::decode(bytes).map_err(|e| IntentionError::Malformed(e.to_string()))?;
    let body = pb::IntentionBody::decode(signed.body)
        .map_err(|e| IntentionError::Malformed(e.to_string()))?;
    let hash = |b: &Bytes, what| fixed(b, what).map(Hash);
    Ok(Stored {
        author: PublicKey(fixed(&body.author, "author")?),
        prev: (!body.prev.is_empty())
            .then(|| hash(&body.prev, "prev"))
            .transpose()?,
        deps: body
            .deps
            .iter()
            .map(|d| hash(d, "dep"))
            .collect::<Result<_, _>>()?,
        ops: decode_ops(body.ops)?,
    })
}

/// Decodes an encoded `proto::fs::OpBatch` one op at a time, each checked before the
/// next is read. Decoding the whole batch first would hold a 160-byte
/// `proto::fs::Op` per entry, and an empty entry is two bytes on the wire: a batch of
/// 4 MiB would take over 600 MiB before the first op is refused.
fn decode_ops(mut buf: Bytes) -> Result<Vec<Op>, IntentionError> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    /// Field number of `OpBatch.ops`.
    const OPS_FIELD: u32 = 1;
    let malformed = |e: prost::DecodeError| IntentionError::Malformed(e.to_string());
    let mut ops = Vec::new();
    while !buf.is_empty() {
        let (field, wire) = decode_key(&mut buf).map_err(malformed)?;
        if field != OPS_FIELD {
            skip_field(wire, field, &mut buf, DecodeContext::default()).map_err(malformed)?;
            continue;
        }
        if wire != WireType::LengthDelimited {
            return Err(IntentionError::Malformed(
                "op batch entry is not a message".into(),
            ));
        }
        let len = decode_varint(&mut buf).map_err(malformed)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= buf.len())
            .ok_or_else(|| IntentionError::Malformed("op batch entry runs past its end".into()))?;
        let op = pfs::Op::decode(buf.split_to(len)).map_err(malformed)?;
        ops.push(Op::from_proto(op)?);
    }
    Ok(ops)
}

/// Refuses an encoded `IntentionBody` naming more than [`MAX_DEPS`] deps, counted on
/// the wire before prost decodes it: prost holds a 32-byte `Bytes` per entry (48 while
/// the vector grows), and an empty entry is two bytes on the wire, so a body of empty
/// deps would take 24 times its size before the limit or the signature is checked.
fn check_deps_on_wire(body: &[u8]) -> Result<(), IntentionError> {
    let got = count_field(body, DEPS_FIELD)?;
    if got > MAX_DEPS {
        return Err(IntentionError::TooLarge {
            what: "deps",
            got,
            limit: MAX_DEPS,
        });
    }
    Ok(())
}

/// How many times field `field` occurs in the encoded message `buf`, walking its
/// keys and skipping values without decoding or allocating them.
fn count_field(mut buf: &[u8], field: u32) -> Result<usize, IntentionError> {
    use prost::encoding::{decode_key, skip_field, DecodeContext};
    let malformed = |e: prost::DecodeError| IntentionError::Malformed(e.to_string());
    let mut count = 0;
    while !buf.is_empty() {
        let (number, wire) = decode_key(&mut buf).map_err(malformed)?;
        count += usize::from(number == field);
        skip_field(wire, number, &mut buf, DecodeContext::default()).map_err(malformed)?;
    }
    Ok(count)
}

/// The bytes an intention's Ed25519 signature covers: [`SIGNING_DOMAIN`], then the
/// intention hash (blake3 of the body bytes).
pub fn signing_message(hash: &Hash) -> Vec<u8> {
    [SIGNING_DOMAIN, &hash.0].concat()
}

/// The body and signature of signed intention bytes, unverified: what a third party
/// needs to check them (blake3 of the body is the hash; the signature covers
/// [`signing_message`] of it). `None` when the bytes do not parse.
pub fn signed_parts(bytes: &Bytes) -> Option<(Bytes, Bytes)> {
    let signed = pb::SignedIntention::decode(bytes.clone()).ok()?;
    Some((signed.body, signed.signature))
}

fn check_limits(body: &pb::IntentionBody) -> Result<(), IntentionError> {
    if body.ops.len() > MAX_INTENTION_OPS_BYTES {
        return Err(IntentionError::TooLarge {
            what: "ops bytes",
            got: body.ops.len(),
            limit: MAX_INTENTION_OPS_BYTES,
        });
    }
    if body.deps.len() > MAX_DEPS {
        return Err(IntentionError::TooLarge {
            what: "deps",
            got: body.deps.len(),
            limit: MAX_DEPS,
        });
    }
    Ok(())
}

fn fixed<const N: usize>(b: &[u8], what: &str) -> Result<[u8; N], IntentionError> {
    b.try_into().map_err(|_| {
        IntentionError::Malformed(format!("{what} must be {N} bytes, got {}", b.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::Content;
    use crate::fs::op::OpBody;
    use crate::ids::OpId;

    fn op(wall_ms: u64, name: &str) -> Op {
        Op {
            hlc: Hlc {
                wall_ms,
                counter: 0,
            },
            body: OpBody::Create(crate::fs::op::Create {
                parent: OpId::ROOT,
                name: name.into(),
                kind: crate::fs::op::Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                mtime_ns: 0,
                content: Content::Inline(Bytes::from_static(b"hi")),
            }),
        }
    }

    fn sample() -> (Identity, Intention) {
        let id = Identity::generate();
        let i = Intention::create(&id, StoreId([7; 16]), None, vec![], vec![op(5, "a")]).unwrap();
        (id, i)
    }

    #[test]
    fn deps_are_counted_on_the_wire_up_to_the_limit_and_a_cut_body_is_malformed() {
        let body = |deps: usize| {
            pb::IntentionBody {
                hlc_wall_ms: 300,
                deps: vec![Bytes::new(); deps],
                ops: Bytes::from_static(b"xyz"),
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert_eq!(count_field(&body(3), DEPS_FIELD).unwrap(), 3);
        assert!(check_deps_on_wire(&body(MAX_DEPS)).is_ok());
        assert!(matches!(
            check_deps_on_wire(&body(MAX_DEPS + 1)),
            Err(IntentionError::TooLarge { what: "deps", .. })
        ));
        let cut = body(3);
        assert!(matches!(
            check_deps_on_wire(&cut[..cut.len() - 1]),
            Err(IntentionError::Malformed(_))
        ));
    }

    #[test]
    fn peek_finds_the_hash_and_clock_that_decode_verifies() {
        let (_, i) = sample();
        assert_eq!(Intention::peek(&i.bytes), Some((i.hlc, i.hash)));
        assert_ne!(
            i.hash,
            Hash::of(&i.bytes),
            "the hash covers the body, not the envelope"
        );
        assert_eq!(Intention::peek(&Bytes::from_static(&[0xff, 0xff])), None);
    }

    #[test]
    fn created_intention_decodes_to_the_same_hash_and_ops() {
        let (id, i) = sample();
        let d = Intention::decode(i.bytes.clone()).unwrap();
        assert_eq!(d.hash, i.hash);
        assert_eq!(d.author, id.public());
        assert_eq!(d.ops, i.ops);
        assert_eq!(d.hlc.wall_ms, 5);
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let (_, i) = sample();
        for pos in 0..i.bytes.len() {
            let mut b = i.bytes.to_vec();
            b[pos] ^= 0x40;
            if let Ok(d) = Intention::decode(b.into()) {
                // Only an encoding-neutral flip could decode; it must then be the same intention.
                assert_eq!(
                    d.hash, i.hash,
                    "byte {pos} changed the content but verified"
                );
            }
        }
    }

    #[test]
    fn signature_from_another_key_is_refused() {
        let (_, i) = sample();
        let mut signed = pb::SignedIntention::decode(i.bytes.clone()).unwrap();
        let other = Identity::generate();
        let hash = Hash::of(&signed.body);
        signed.signature = Bytes::copy_from_slice(&other.sign(&signing_message(&hash)));
        assert!(matches!(
            Intention::decode(signed.encode_to_vec().into()),
            Err(IntentionError::BadSignature)
        ));
    }

    #[test]
    fn signature_without_the_domain_prefix_is_refused() {
        let (id, i) = sample();
        let mut signed = pb::SignedIntention::decode(i.bytes.clone()).unwrap();
        signed.signature = Bytes::copy_from_slice(&id.sign(&Hash::of(&signed.body).0));
        assert!(matches!(
            Intention::decode(signed.encode_to_vec().into()),
            Err(IntentionError::BadSignature)
        ));
    }

    #[test]
    fn too_many_deps_are_refused_on_create_and_decode() {
        let id = Identity::generate();
        let deps: Vec<Hash> = (0..=MAX_DEPS as u8).map(|i| Hash([i; 32])).collect();
        assert!(matches!(
            Intention::create(&id, StoreId([1; 16]), None, deps, vec![op(1, "a")]),
            Err(IntentionError::TooLarge { what: "deps", .. })
        ));
    }

    #[test]
    fn a_node_refuses_to_sign_an_op_that_decoding_would_refuse() {
        let id = Identity::generate();
        let member = |display_name: String| Op {
            hlc: Hlc {
                wall_ms: 1,
                counter: 0,
            },
            body: crate::fs::op::OpBody::SetMember {
                key: id.public(),
                role: crate::fs::op::Role::Writer,
                display_name,
                invite: None,
            },
        };
        let dismiss = Op {
            hlc: Hlc {
                wall_ms: 1,
                counter: 0,
            },
            body: crate::fs::op::OpBody::Dismiss {
                file: OpId::ROOT,
                supersedes: vec![OpId::ROOT; crate::fs::op::MAX_SUPERSEDES + 1],
            },
        };
        for bad in [
            member("x".repeat(300)),
            member("line\nbreak".into()),
            member("a/b".into()),
            op(1, "a/b"),
            dismiss,
        ] {
            assert!(
                matches!(
                    Intention::create(&id, StoreId([1; 16]), None, vec![], vec![bad.clone()]),
                    Err(IntentionError::Op(_))
                ),
                "{bad:?} was signed"
            );
        }
        let fine = Intention::create(
            &id,
            StoreId([1; 16]),
            None,
            vec![],
            vec![member("Zoë's laptop".into())],
        )
        .unwrap();
        assert_eq!(Intention::decode(fine.bytes.clone()).unwrap().ops, fine.ops);
    }

    #[test]
    fn oversized_bytes_are_refused_before_parsing() {
        let big = Bytes::from(vec![0u8; MAX_INTENTION_BYTES + 1]);
        assert!(matches!(
            Intention::decode(big),
            Err(IntentionError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for g in [&b""[..], b"\xff\xff\xff", b"\x0a\x05hello"] {
            assert!(Intention::decode(Bytes::copy_from_slice(g)).is_err());
        }
    }

    #[test]
    fn a_snapshot_sharing_its_intention_is_neither_signed_nor_accepted() {
        let id = Identity::generate();
        let snapshot = Op {
            hlc: Hlc {
                wall_ms: 9,
                counter: 0,
            },
            body: OpBody::Snapshot { label: "v1".into() },
        };
        let both = vec![op(5, "a"), snapshot.clone()];
        assert!(matches!(
            Intention::create(&id, StoreId([7; 16]), None, vec![], both.clone()),
            Err(IntentionError::Malformed(_))
        ));
        let body = pb::IntentionBody {
            author: Bytes::copy_from_slice(&id.public().0),
            hlc_wall_ms: 9,
            store_id: Bytes::copy_from_slice(&[7; 16]),
            ops: pfs::OpBatch {
                ops: both.iter().map(Op::to_proto).collect(),
            }
            .encode_to_vec()
            .into(),
            ..Default::default()
        }
        .encode_to_vec();
        let hash = Hash::of(&body);
        let signed = pb::SignedIntention {
            signature: Bytes::copy_from_slice(&id.sign(&signing_message(&hash))),
            body: body.into(),
        };
        assert!(matches!(
            Intention::decode(signed.encode_to_vec().into()),
            Err(IntentionError::Malformed(m)) if m.contains("snapshot")
        ));
        let alone = Intention::create(&id, StoreId([7; 16]), None, vec![], vec![snapshot]).unwrap();
        assert_eq!(
            Intention::decode(alone.bytes.clone()).unwrap().ops,
            alone.ops
        );
    }
}
