//! Fuzz tests of the wire frame (`wire::read_frame`) and of every peer-protocol message
//! as its receiver takes it apart: a `Request` as `net/serve.rs` and `sync::replica`
//! check it, a `Response` as `sync::replica` and `net/client.rs` do, a `Gossip` message
//! as `sync::replica` does. The receivers run these checks between network awaits; `receive_*` below strings the same calls
//! together (ids and hashes sized, `Want` capped, intentions decoded and verified,
//! negentropy frames stepped) without a network. Patch answers are in `cas.rs`.

use bytes::Bytes;
use negentropy::NegentropyStorageVector;
use proptest::prelude::*;
use prost::Message;

use super::ops::{intention_bytes, name};
use super::{config, framed, hostile, hostile_frames, ready, within, Budget, PROTOBUF_PER_BYTE};
use crate::ids::{Hash, StoreId};
use crate::intention::Intention;
use crate::net::{GOSSIP_MAX, MAX_FRAME};
use crate::proto::peer::{self as pb, gossip, request, response};
use crate::sync::frontier::Attestation;
use crate::sync::reconcile::{Session, FRAME_LIMIT};
use crate::sync::replica::{announced, AHEAD_MAX, MAX_WANT};
use crate::wire::{read_frame, FrameError};

/// One received message with everything in it decoded: the message and the payloads
/// its receiver decodes next (ids, intentions, negentropy frames) a few times its
/// bytes, plus the frame buffer of the announced size and a negentropy reply.
const MESSAGE: Budget = Budget {
    per_byte: PROTOBUF_PER_BYTE,
    fixed: 2 * FRAME_LIMIT,
};

fn bytes(n: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), n).prop_map(Bytes::from)
}

fn intentions() -> impl Strategy<Value = Vec<Bytes>> {
    prop::collection::vec(intention_bytes().prop_map(Bytes::from), 0..3)
}

/// The opening frame of a reconciliation over an empty set.
fn opening() -> Bytes {
    let mut s = Session::initiator(empty_storage(), FRAME_LIMIT).expect("valid limit");
    s.initiate().expect("a vector storage does not fail").into()
}

fn empty_storage() -> NegentropyStorageVector {
    let mut v = NegentropyStorageVector::new();
    v.seal().expect("a storage seals once");
    v
}

/// A valid attestation: distinct 32-byte authors.
fn attestation() -> impl Strategy<Value = pb::Attestation> {
    let vector =
        prop::collection::btree_map(prop::array::uniform32(any::<u8>()), any::<u64>(), 0..6);
    (vector, any::<u64>(), any::<u32>()).prop_map(|(vector, floor_wall_ms, floor_counter)| {
        pb::Attestation {
            vector: vector
                .into_iter()
                .map(|(author, len)| pb::ChainLen {
                    author: Bytes::copy_from_slice(&author),
                    len,
                })
                .collect(),
            floor_wall_ms,
            floor_counter,
        }
    })
}

fn request() -> impl Strategy<Value = pb::Request> {
    let kind = prop_oneof![
        (bytes(32), name()).prop_map(|(secret, display_name)| request::Kind::Redeem(pb::Redeem {
            secret,
            display_name
        })),
        any::<u64>().prop_map(|from| request::Kind::Bootstrap(pb::Bootstrap { from })),
        Just(request::Kind::Reconcile(pb::Frame { frame: opening() })),
        prop::collection::vec(bytes(32), 0..8)
            .prop_map(|hashes| request::Kind::Want(pb::Want { hashes })),
        intentions().prop_map(|intentions| request::Kind::Push(pb::Intentions { intentions })),
        (bytes(32), bytes(32))
            .prop_map(|(chunk, base)| request::Kind::Patch(pb::Patch { chunk, base })),
        Just(request::Kind::AskSecret(pb::AskSecret {})),
        attestation().prop_map(request::Kind::Attest),
    ];
    let addrs = prop::collection::vec(
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[0-9]{1,5}",
        0..3,
    );
    (bytes(16), addrs, kind).prop_map(|(store_id, addrs, kind)| pb::Request {
        store_id,
        addrs,
        kind: Some(kind),
    })
}

fn response() -> impl Strategy<Value = pb::Response> {
    let peers = prop::collection::vec(
        (bytes(32), prop::collection::vec("[0-9.:]{1,21}", 0..3))
            .prop_map(|(id, addrs)| pb::PeerAddrs { id, addrs }),
        0..3,
    );
    let kind = prop_oneof![
        (any::<i32>(), "[ -~]{0,80}")
            .prop_map(|(code, text)| response::Kind::Refusal(pb::Refusal { code, text })),
        (bytes(32), name(), peers, any::<u64>(), bytes(32)).prop_map(
            |(founder, store_name, peers, witness_len, topic_secret)| {
                response::Kind::Redeemed(pb::Redeemed {
                    founder,
                    store_name,
                    peers,
                    witness_len,
                    topic_secret,
                })
            }
        ),
        bytes(32).prop_map(|secret| response::Kind::TopicSecret(pb::TopicSecret { secret })),
        (
            intentions(),
            any::<u64>(),
            any::<u64>(),
            prop::option::of(attestation())
        )
            .prop_map(|(intentions, next, len, attested)| {
                response::Kind::Batch(pb::WitnessBatch {
                    intentions,
                    next,
                    len,
                    attested,
                })
            }),
        Just(response::Kind::Reconcile(pb::Frame { frame: opening() })),
        intentions()
            .prop_map(|intentions| response::Kind::Intentions(pb::Intentions { intentions })),
        (any::<u32>(), any::<u32>()).prop_map(|(applied, refused)| {
            response::Kind::Pushed(pb::Pushed { applied, refused })
        }),
        attestation().prop_map(response::Kind::Attested),
    ];
    kind.prop_map(|kind| pb::Response { kind: Some(kind) })
}

fn gossip() -> impl Strategy<Value = pb::Gossip> {
    prop_oneof![
        intention_bytes().prop_map(|b| gossip::Kind::Intention(b.into())),
        bytes(32).prop_map(gossip::Kind::Hash),
        prop::collection::vec(bytes(32), 1..=AHEAD_MAX)
            .prop_map(|chunks| gossip::Kind::Ahead(pb::Ahead { chunks })),
    ]
    .prop_map(|kind| pb::Gossip { kind: Some(kind) })
}

/// The bytes of each intention, decoded and verified as the apply pipeline does first;
/// how many verified.
fn verify_all(list: Vec<Bytes>) -> usize {
    list.into_iter()
        .filter(|b| Intention::peek(b).is_some())
        .filter_map(|b| Intention::decode(b).ok())
        .count()
}

/// What `serve.rs` checks and decodes in a request before it touches a store.
fn receive_request(input: &[u8]) -> Result<usize, String> {
    let mut reader = input;
    let request: pb::Request = ready(read_frame(&mut reader, MAX_FRAME))
        .map_err(|e: FrameError| e.to_string())?
        .ok_or("clean end")?;
    let hash = |b: &[u8]| Hash::from_slice(b).ok_or("hash is not 32 bytes");
    let _store = StoreId(request.store_id[..].try_into().map_err(|_| "store id")?);
    let addrs = request
        .addrs
        .iter()
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok());
    let addrs = addrs.count();
    Ok(addrs
        + match request.kind.ok_or("empty request")? {
            request::Kind::Redeem(r) => <[u8; 32]>::try_from(&r.secret[..])
                .map_err(|_| "secret")?
                .len(),
            request::Kind::Bootstrap(b) => b.from as usize & 1,
            request::Kind::Reconcile(f) => {
                let mut s =
                    Session::responder(empty_storage(), FRAME_LIMIT).map_err(|e| e.to_string())?;
                s.step(&f.frame)
                    .map_err(|e| e.to_string())?
                    .reply
                    .map_or(0, |r| r.len())
            }
            request::Kind::Want(w) if w.hashes.len() > MAX_WANT => {
                return Err("want too long".into())
            }
            request::Kind::Want(w) => w
                .hashes
                .iter()
                .map(|h| hash(h))
                .collect::<Result<Vec<_>, _>>()?
                .len(),
            request::Kind::Push(p) => verify_all(p.intentions),
            request::Kind::Patch(p) => hash(&p.chunk).and(hash(&p.base)).map(|_| 2)?,
            request::Kind::AskSecret(_) => 0,
            request::Kind::Attest(a) => Attestation::try_from(a)
                .map_err(|e| e.to_string())?
                .vector
                .len(),
        })
}

/// What `sync::replica` and `client.rs` check and decode in an answer.
fn receive_response(input: &[u8]) -> Result<usize, String> {
    let mut reader = input;
    let response: pb::Response = ready(read_frame(&mut reader, MAX_FRAME))
        .map_err(|e: FrameError| e.to_string())?
        .ok_or("clean end")?;
    Ok(match response.kind.ok_or("empty answer")? {
        response::Kind::Refusal(r) => crate::sync::Refusal::from(r).text.len(),
        response::Kind::Redeemed(r) => {
            <[u8; 32]>::try_from(&r.founder[..]).map_err(|_| "founder")?;
            <[u8; 32]>::try_from(&r.topic_secret[..]).map_err(|_| "topic secret")?;
            let ids = r.peers.iter().filter(|p| p.id.len() == 32);
            ids.flat_map(|p| {
                p.addrs
                    .iter()
                    .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
            })
            .count()
        }
        response::Kind::Batch(b) => {
            let attested = b.attested.map(Attestation::try_from).transpose();
            verify_all(b.intentions)
                + attested
                    .map_err(|e| e.to_string())?
                    .map_or(0, |a| a.vector.len())
        }
        response::Kind::Reconcile(f) => {
            let mut s =
                Session::initiator(empty_storage(), FRAME_LIMIT).map_err(|e| e.to_string())?;
            s.initiate().map_err(|e| e.to_string())?;
            s.step(&f.frame).map_err(|e| e.to_string())?.need.len()
        }
        response::Kind::Intentions(list) => verify_all(list.intentions),
        response::Kind::Pushed(p) => p.applied as usize,
        response::Kind::Blocks(b) => b.blocks.len(),
        response::Kind::TopicSecret(t) => <[u8; 32]>::try_from(&t.secret[..])
            .map_err(|_| "topic secret")?
            .len(),
        response::Kind::Attested(a) => Attestation::try_from(a)
            .map_err(|e| e.to_string())?
            .vector
            .len(),
    })
}

/// What `sync::replica` decodes in a gossip message (at most `GOSSIP_MAX` bytes).
fn receive_gossip(input: &[u8]) -> Result<usize, String> {
    if input.len() > GOSSIP_MAX {
        return Err("over the gossip limit".into());
    }
    let g = pb::Gossip::decode(input).map_err(|e| e.to_string())?;
    match g.kind {
        Some(gossip::Kind::Intention(b)) => Ok(verify_all(vec![b])),
        Some(gossip::Kind::Hash(h)) => Hash::from_slice(&h).map(|_| 1).ok_or("hash".into()),
        Some(gossip::Kind::Ahead(a)) => announced(&a)
            .map(|chunks| chunks.len())
            .ok_or("announcement".into()),
        None => Ok(0),
    }
}

/// The budget of a framed message: [`MESSAGE`] plus the buffer of its announced size.
fn framed_budget(input: &[u8]) -> Budget {
    let announced = input.get(..4).map_or(0, |h| {
        u32::from_be_bytes(h.try_into().expect("four bytes")) as usize
    });
    Budget {
        fixed: MESSAGE.fixed + announced.min(MAX_FRAME),
        ..MESSAGE
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_requests_pass_the_receivers_checks(r in request()) {
        let bytes = framed(r.encode_to_vec());
        let got = within(framed_budget(&bytes), &bytes, || receive_request(&bytes))?;
        prop_assert!(got.is_ok(), "{:?}", got);
    }

    #[test]
    fn edited_or_random_requests_are_refused_or_taken_apart(bytes in hostile_frames(request().prop_map(|r| r.encode_to_vec()))) {
        within(framed_budget(&bytes), &bytes, || receive_request(&bytes))?.ok();
    }

    #[test]
    fn valid_responses_pass_the_receivers_checks(r in response()) {
        let bytes = framed(r.encode_to_vec());
        let got = within(framed_budget(&bytes), &bytes, || receive_response(&bytes))?;
        prop_assert!(got.is_ok(), "{:?}", got);
    }

    #[test]
    fn edited_or_random_responses_are_refused_or_taken_apart(bytes in hostile_frames(response().prop_map(|r| r.encode_to_vec()))) {
        within(framed_budget(&bytes), &bytes, || receive_response(&bytes))?.ok();
    }

    #[test]
    fn valid_gossip_is_taken_apart(g in gossip()) {
        let bytes = g.encode_to_vec();
        let got = within(MESSAGE, &bytes, || receive_gossip(&bytes))?;
        prop_assert!(matches!(got, Ok(n) if n >= 1), "{:?}", got);
    }

    #[test]
    fn edited_or_random_gossip_is_refused_or_taken_apart(bytes in hostile(gossip().prop_map(|g| g.encode_to_vec()))) {
        within(MESSAGE, &bytes, || receive_gossip(&bytes))?.ok();
    }
}
