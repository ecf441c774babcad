//! Strategies for valid domain values: ops of every kind and signed intentions holding
//! them. Fields stay well inside every limit, so a valid value's encoding decodes back.

use bytes::Bytes;
use proptest::prelude::*;

use crate::cas::Content;
use crate::fs::op::{Create, Kind, Op, OpBody, Role, SetMeta};
use crate::hlc::Hlc;
use crate::identity::{Identity, PublicKey};
use crate::ids::{Hash, OpId, StoreId};
use crate::intention::Intention;

/// Authors of ops in a history: keys `[k; 32]` for `k < AUTHORS`.
pub(crate) const AUTHORS: u8 = 2;

/// A clock: mostly one of a few early ones (so ops of a history name each other),
/// else any from the first millisecond to a few centuries from now.
pub(crate) fn hlc() -> impl Strategy<Value = Hlc> {
    prop_oneof![
        2 => (1u64..6, 0u32..2).prop_map(|(wall_ms, counter)| Hlc { wall_ms, counter }),
        1 => (1u64..1 << 45, any::<u32>()).prop_map(|(wall_ms, counter)| Hlc { wall_ms, counter }),
    ]
}

/// A key (not necessarily a curve point: ops only name keys), mostly a history author.
pub(crate) fn key() -> impl Strategy<Value = PublicKey> {
    prop_oneof![
        2 => (0..AUTHORS).prop_map(|k| PublicKey([k; 32])),
        1 => any::<[u8; 32]>().prop_map(PublicKey),
    ]
}

/// An op id, sometimes the root.
pub(crate) fn op_id() -> impl Strategy<Value = OpId> {
    prop_oneof![
        1 => Just(OpId::ROOT),
        4 => (hlc(), key()).prop_map(|(hlc, author)| OpId { hlc, author }),
    ]
}

fn ids() -> impl Strategy<Value = Vec<OpId>> {
    prop::collection::vec(op_id(), 0..6)
}

/// A valid file name.
pub(crate) fn name() -> impl Strategy<Value = String> {
    "[a-z0-9_-][a-z0-9._ -]{0,30}"
}

/// A valid display or store name.
fn label() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9_-]{0,31}"
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| Content::Inline(b.into())),
        (any::<[u8; 32]>(), 1u64..1 << 40).prop_map(|(h, size)| Content::Manifest {
            hash: Hash(h),
            size
        }),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Admin), Just(Role::Writer), Just(Role::Reader)]
}

fn create() -> impl Strategy<Value = OpBody> {
    let kind = prop_oneof![Just(Kind::File), Just(Kind::Dir), Just(Kind::Fifo)];
    (op_id(), name(), kind, 0u32..0o777, any::<u16>(), content()).prop_map(
        |(parent, name, kind, mode, uid, content)| {
            OpBody::Create(Create {
                parent,
                name,
                kind,
                mode,
                uid: u32::from(uid),
                gid: u32::from(uid),
                rdev: 0,
                mtime_ns: 1_000_000,
                content: if kind == Kind::File {
                    content
                } else {
                    Content::empty()
                },
            })
        },
    )
}

fn xattr_name() -> impl Strategy<Value = Bytes> {
    "user\\.[a-z]{1,12}".prop_map(|n| Bytes::from(n.into_bytes()))
}

fn set_meta() -> impl Strategy<Value = OpBody> {
    let xattr = (
        xattr_name(),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(Bytes::from),
    );
    (
        op_id(),
        prop::option::of(0u32..0o777),
        prop::option::of(any::<i64>()),
        prop::collection::vec(xattr, 0..3),
        prop::collection::vec(xattr_name(), 0..3),
    )
        .prop_map(|(file, mode, mtime_ns, xattr_set, xattr_remove)| {
            OpBody::SetMeta(SetMeta {
                file,
                mode,
                mtime_ns,
                xattr_set,
                xattr_remove,
                ..SetMeta::default()
            })
        })
}

/// An op body of any kind, file ops and system ops alike.
pub(crate) fn body() -> impl Strategy<Value = OpBody> {
    prop_oneof![
        create(),
        (op_id(), op_id(), name()).prop_map(|(file, parent, name)| OpBody::Link {
            file,
            parent,
            name
        }),
        (op_id(), op_id(), name()).prop_map(|(entry, parent, name)| OpBody::Move {
            entry,
            parent,
            name
        }),
        (op_id(), ids()).prop_map(|(entry, seen_content)| OpBody::Remove {
            entry,
            seen_content
        }),
        (op_id(), ids(), content()).prop_map(|(file, supersedes, content)| OpBody::Write {
            file,
            supersedes,
            content,
            mtime_ns: 7,
        }),
        (op_id(), op_id(), ids(), content()).prop_map(|(file, group, supersedes, data)| {
            OpBody::Append {
                file,
                group,
                supersedes,
                data,
                mtime_ns: 7,
            }
        }),
        (op_id(), ids()).prop_map(|(file, supersedes)| OpBody::Dismiss { file, supersedes }),
        set_meta(),
        name().prop_map(OpBody::SetStoreName),
        (key(), role(), label(), prop::option::of(any::<[u8; 32]>())).prop_map(
            |(key, role, display_name, invite)| OpBody::SetMember {
                key,
                role,
                display_name,
                invite
            }
        ),
        (key(), any::<u64>()).prop_map(|(key, upto)| OpBody::RevokeMember { key, upto }),
        (any::<[u8; 32]>(), role(), any::<u64>()).prop_map(|(id, role, expires_ms)| {
            OpBody::Invite {
                id,
                role,
                expires_ms,
            }
        }),
        any::<[u8; 32]>().prop_map(|id| OpBody::RevokeInvite { id }),
        (0..=crate::fs::op::MAX_RETENTION_DAYS).prop_map(|days| OpBody::SetRetention { days }),
        (crate::fs::op::MIN_HORIZON_DAYS..=crate::fs::op::MAX_HORIZON_DAYS)
            .prop_map(|days| OpBody::SetHorizon { days }),
        (1..u64::MAX).prop_map(|upto| OpBody::Leave { upto }),
        Just(OpBody::DeleteStore),
    ]
}

/// A valid op.
pub(crate) fn op() -> impl Strategy<Value = Op> {
    (hlc(), body()).prop_map(|(hlc, body)| Op { hlc, body })
}

/// A signed intention of 1..6 random ops by a key from a 32-byte seed.
pub(crate) fn intention() -> impl Strategy<Value = Intention> {
    (
        any::<[u8; 32]>(),
        any::<[u8; 16]>(),
        prop::option::of(any::<[u8; 32]>()),
        prop::collection::vec(any::<[u8; 32]>(), 0..4),
        prop::collection::vec(op(), 1..6),
    )
        .prop_map(|(seed, store, prev, deps, ops)| {
            Intention::create(
                &Identity::from_seed(seed),
                StoreId(store),
                prev.map(Hash),
                deps.into_iter().map(Hash).collect(),
                ops,
            )
            .expect("generated ops stay within every limit")
        })
}

/// The bytes of a valid signed intention.
pub(crate) fn intention_bytes() -> impl Strategy<Value = Vec<u8>> {
    intention().prop_map(|i| i.bytes.to_vec())
}
