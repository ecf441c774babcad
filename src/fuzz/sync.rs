//! Fuzz tests of the sync-layer decoders: invite tokens (`InviteToken::decode`, text a
//! stranger may paste) and negentropy frames (`Session::step` on both sides, the frames
//! a peer sends during reconciliation).

use std::net::SocketAddr;

use negentropy::{Id, NegentropyStorageVector};
use proptest::prelude::*;
use prost::Message;

use super::{apply_edits, config, edit, hostile, within, Budget, PROTOBUF_PER_BYTE};
use crate::fs::op::{role_to_proto, Role, MAX_LABEL_BYTES};
use crate::identity::PublicKey;
use crate::ids::StoreId;
use crate::proto::sync as pb;
use crate::sync::invite::{InviteToken, MAX_TOKEN_ADDRS, PREFIX};
use crate::sync::reconcile::{Session, FRAME_LIMIT};

/// `InviteToken::decode`: the payload and its fields, a few times the text.
const TOKEN: Budget = Budget {
    per_byte: PROTOBUF_PER_BYTE,
    fixed: 4 * 1024,
};

/// `Session::step`: the peer's ids and our reply (itself capped by the frame limit).
const FRAME: Budget = Budget {
    per_byte: PROTOBUF_PER_BYTE,
    fixed: 2 * FRAME_LIMIT,
};

fn token() -> impl Strategy<Value = InviteToken> {
    let addr = (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port)));
    (
        any::<[u8; 16]>(),
        any::<[u8; 32]>(),
        prop::collection::vec(addr, 0..=MAX_TOKEN_ADDRS),
        any::<[u8; 32]>(),
        prop_oneof![Just(Role::Admin), Just(Role::Writer), Just(Role::Reader)],
        any::<u64>(),
        "[a-z0-9 ._-]{0,64}",
    )
        .prop_map(
            |(store, inviter, addrs, secret, role, expires_ms, store_name)| InviteToken {
                store: StoreId(store),
                inviter: PublicKey(inviter),
                addrs,
                secret,
                role,
                expires_ms,
                store_name,
            },
        )
}

/// Token text around `payload` with the right checksum, written independently of
/// `invite.rs` (RFC 4648 lowercase base32, no padding; 4 bytes of blake3).
fn text_of(payload: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = payload.to_vec();
    bytes.extend_from_slice(&blake3::hash(payload).as_bytes()[..4]);
    let bits: Vec<bool> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1))
        .collect();
    let mut text = PREFIX.to_string();
    for group in bits.chunks(5) {
        let v = group
            .iter()
            .chain(std::iter::repeat(&false))
            .take(5)
            .fold(0usize, |acc, &bit| acc << 1 | usize::from(bit));
        text.push(char::from(ALPHABET[v]));
    }
    text
}

fn payload(t: &InviteToken) -> Vec<u8> {
    pb::InviteToken {
        store_id: t.store.0.to_vec().into(),
        inviter: t.inviter.0.to_vec().into(),
        addrs: t.addrs.iter().map(|a| a.to_string()).collect(),
        secret: t.secret.to_vec().into(),
        role: role_to_proto(t.role) as i32,
        expires_ms: t.expires_ms,
        store_name: t.store_name.clone(),
    }
    .encode_to_vec()
}

fn decode_token(
    text: &str,
) -> Result<Result<InviteToken, crate::sync::invite::TokenError>, TestCaseError> {
    let decoded = within(TOKEN, text.as_bytes(), || InviteToken::decode(text))?;
    if let Ok(t) = &decoded {
        prop_assert!(t.addrs.len() <= MAX_TOKEN_ADDRS);
        prop_assert!(t.store_name.len() <= MAX_LABEL_BYTES);
        prop_assert_eq!(&InviteToken::decode(&t.encode()), &Ok(t.clone()));
    }
    Ok(decoded)
}

/// Up to 300 reconciliation items over a few milliseconds.
type Items = std::collections::BTreeSet<(u64, [u8; 32])>;

fn items() -> impl Strategy<Value = Items> {
    prop::collection::btree_set((0u64..64, any::<[u8; 32]>()), 0..300)
}

/// A sealed negentropy storage of `items`.
fn storage(items: &Items) -> NegentropyStorageVector {
    let mut v = NegentropyStorageVector::new();
    for (ms, id) in items {
        v.insert(*ms, Id::from_byte_array(*id))
            .expect("an unsealed storage takes items");
    }
    v.seal().expect("a storage seals once");
    v
}

/// The initiator's and the responder's items and the frames of their first round:
/// the opening frame and the responder's answer to it.
fn first_round() -> impl Strategy<Value = (Items, Items, Vec<u8>, Vec<u8>)> {
    (items(), items()).prop_map(|(ours, theirs)| {
        let mut initiator =
            Session::initiator(storage(&ours), FRAME_LIMIT).expect("the default limit is valid");
        let opening = initiator
            .initiate()
            .expect("a vector storage does not fail");
        let mut responder =
            Session::responder(storage(&theirs), FRAME_LIMIT).expect("the default limit is valid");
        let answer = responder.step(&opening).expect("a valid frame is answered");
        let answer = answer.reply.expect("a responder always replies");
        (ours, theirs, opening, answer)
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_valid_token_decodes_to_itself(t in token()) {
        prop_assert_eq!(decode_token(&t.encode())?, Ok(t));
    }

    #[test]
    fn edited_or_random_token_text_is_refused_or_decodes_to_a_valid_token(
        text in hostile(token().prop_map(|t| t.encode().into_bytes()))
    ) {
        decode_token(&String::from_utf8_lossy(&text))?.ok();
    }

    #[test]
    fn edited_token_payloads_with_a_right_checksum_are_refused_or_valid(
        (bytes, edits) in (token().prop_map(|t| payload(&t)), prop::collection::vec(edit(), 1..5))
    ) {
        decode_token(&text_of(&apply_edits(bytes, &edits)))?.ok();
    }

    #[test]
    fn edited_or_random_opening_frames_are_answered_or_refused(
        (theirs, frame) in first_round().prop_flat_map(|(_, theirs, opening, _)| {
            (Just(theirs), hostile(Just(opening)))
        })
    ) {
        let mut responder = Session::responder(storage(&theirs), FRAME_LIMIT).expect("valid limit");
        let step = within(FRAME, &frame, || responder.step(&frame))?;
        if let Ok(step) = step {
            let reply = step.reply.expect("a responder always replies");
            prop_assert!(reply.len() <= FRAME_LIMIT);
            prop_assert!(step.have.is_empty() && step.need.is_empty());
        }
    }

    #[test]
    fn edited_or_random_answers_are_taken_or_refused_by_the_initiator(
        (ours, frame) in first_round().prop_flat_map(|(ours, _, _, answer)| {
            (Just(ours), hostile(Just(answer)))
        })
    ) {
        let mut initiator = Session::initiator(storage(&ours), FRAME_LIMIT).expect("valid limit");
        initiator.initiate().expect("a vector storage does not fail");
        let step = within(FRAME, &frame, || initiator.step(&frame))?;
        if let Ok(step) = step {
            prop_assert!(step.reply.is_none_or(|r| r.len() <= FRAME_LIMIT));
            prop_assert!(step.need.len() <= frame.len() / 32);
        }
    }
}
