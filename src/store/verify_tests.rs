//! Tests of `Store::verify` on real stores: a clean chain verifies back to the genesis,
//! and altered bytes, a forged signature, a non-member's intention and a missing
//! predecessor are each reported with their reason (the last as purged when it lies
//! below the frontier).

use bytes::Bytes;
use redb::ReadableTable;

use crate::cas::Content;
use crate::fs::op::{Op, OpBody, Role};
use crate::hlc::Hlc;
use crate::identity::Identity;
use crate::ids::{Hash, OpId, StoreId};
use crate::intention::{Intention, IntentionError};
use crate::store::error::StoreError;
use crate::store::tables::Tables;
use crate::store::tests::{clock, create};
use crate::store::verify::{prove, Authority, VerifyFailure};
use crate::store::Store;

const ID: StoreId = StoreId([21; 16]);

/// A store founded by `admin`, who grants `writer` and creates `a`; `writer` then
/// writes `a` and appends to its write, in one intention named `Some` in the answer
/// with the three content ops (create, write, append).
struct Fixture {
    _tmp: tempfile::TempDir,
    store: Store,
    admin: Identity,
    writer: Identity,
    ops: Vec<OpId>,
    written_by_writer: Hash,
}

fn now(counter: u32) -> Hlc {
    Hlc {
        wall_ms: crate::hlc::now_ms(),
        counter,
    }
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let admin = Identity::generate();
    let writer = Identity::generate();
    let store = Store::create(tmp.path(), ID, admin.clone(), clock(), "s", "admin").unwrap();
    let file = store
        .write(|tx| {
            tx.push(OpBody::SetMember {
                key: writer.public(),
                role: Role::Writer,
                display_name: "writer".into(),
                invite: None,
            })?;
            Ok(tx.push(create("a"))?)
        })
        .unwrap();
    store.flush().unwrap();
    // A head the writer names that no content op needs (see the purge test).
    store.write(|tx| Ok(tx.push(create("b"))?)).unwrap();
    store.flush().unwrap();
    let heads: Vec<Hash> = store.digest().unwrap().heads.into_iter().collect();
    let write = Op {
        hlc: now(0),
        body: OpBody::Write {
            file,
            supersedes: vec![file],
            content: Content::Inline(Bytes::from_static(b"written")),
            mtime_ns: 1,
        },
    };
    let write_id = write.id(writer.public());
    let append = Op {
        hlc: now(1),
        body: OpBody::Append {
            file,
            group: write_id,
            supersedes: vec![write_id],
            data: Content::Inline(Bytes::from_static(b" and appended")),
            mtime_ns: 2,
        },
    };
    let append_id = append.id(writer.public());
    let i = Intention::create(&writer, ID, None, heads, vec![write, append]).unwrap();
    store.apply_remote(i.bytes.clone()).unwrap();
    store.flush().unwrap();
    Fixture {
        _tmp: tmp,
        store,
        admin,
        writer,
        ops: vec![file, write_id, append_id],
        written_by_writer: i.hash,
    }
}

/// Runs `f` on the store's tables in a write transaction it commits.
fn edit(store: &Store, f: impl FnOnce(&mut Tables<'_>)) {
    let db = store.handle.shared.index.db().unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = Tables::open(&txn).unwrap();
        f(&mut t);
    }
    txn.commit().unwrap();
}

/// The stored bytes of `hash` with `f` applied.
fn alter(store: &Store, hash: Hash, f: impl FnOnce(&mut Vec<u8>)) {
    edit(store, |t| {
        let mut bytes = t.intentions.get(hash.0).unwrap().unwrap().value().to_vec();
        f(&mut bytes);
        t.intentions.insert(hash.0, Bytes::from(bytes)).unwrap();
    });
}

#[test]
fn a_clean_chain_verifies_back_to_the_genesis_through_the_grants() {
    let f = fixture();
    let proof = f.store.verify(f.ops.clone()).unwrap();
    assert!(proof.verified(), "{:?}", proof.failures);
    assert_eq!(proof.founder, f.admin.public());
    let genesis = proof
        .genesis
        .expect("the authority chain reaches the genesis");
    assert_eq!(proof.purged_below, None);
    assert_eq!(
        proof.holders.iter().map(|(op, _)| *op).collect::<Vec<_>>(),
        f.ops
    );
    assert_eq!(proof.holders[1].1, Some(f.written_by_writer));
    assert_eq!(proof.holders[2].1, Some(f.written_by_writer));
    let checked = |h: Hash| proof.intentions.iter().find(|i| i.hash == h).unwrap();
    let by_writer = checked(f.written_by_writer);
    assert_eq!(by_writer.author, f.writer.public());
    assert_eq!(by_writer.seq, 1);
    assert_eq!(by_writer.links_held, by_writer.deps.len());
    let Some(Authority::Granted {
        role: Role::Writer,
        grant,
        by,
    }) = by_writer.authority.clone()
    else {
        panic!(
            "the writer's authority is its grant: {:?}",
            by_writer.authority
        );
    };
    assert_eq!(grant.author, f.admin.public());
    // The admin's grant holds by the admin's own grant in the genesis.
    let granting = checked(by);
    assert_eq!(granting.author, f.admin.public());
    assert!(matches!(
        granting.authority,
        Some(Authority::Granted { role: Role::Admin, by, .. }) if by == genesis
    ));
    assert_eq!(checked(genesis).authority, Some(Authority::Genesis));
}

#[test]
fn altered_bytes_and_a_broken_signature_are_reported_with_their_reason() {
    let f = fixture();
    let h = f.written_by_writer;
    let original = {
        let db = f.store.handle.shared.index.db().unwrap();
        let txn = redb::ReadableDatabase::begin_read(&*db).unwrap();
        let t = txn.open_table(crate::store::tables::INTENTIONS).unwrap();
        t.get(h.0).unwrap().unwrap().value().to_vec()
    };
    // The signature is the envelope's last field: its last byte changes no hash.
    alter(&f.store, h, |b| *b.last_mut().unwrap() ^= 1);
    let proof = f.store.verify(f.ops.clone()).unwrap();
    assert!(!proof.verified());
    assert!(
        proof.failures.iter().any(|e| matches!(
            e,
            VerifyFailure::Invalid { hash, error: IntentionError::BadSignature } if *hash == h
        )),
        "{:?}",
        proof.failures
    );
    assert_eq!(
        proof.failures[0].to_string(),
        format!("intention {h}: intention signature does not verify")
    );
    // A byte of an inline content inside the body: the hash changes.
    alter(&f.store, h, |b| {
        *b = original.clone();
        let at = b.windows(7).position(|w| w == b"written").unwrap();
        b[at] = b'W';
    });
    let proof = f.store.verify(f.ops.clone()).unwrap();
    let [VerifyFailure::Altered { hash, recomputed }] = proof.failures.as_slice() else {
        panic!("{:?}", proof.failures);
    };
    assert_eq!(*hash, h);
    assert_ne!(*recomputed, h);
    // Verifying wrote nothing: the store still serves the altered bytes as stored.
    assert_ne!(f.store.get(vec![h], usize::MAX).unwrap(), vec![original]);
    f.store.shutdown().unwrap();
}

#[test]
fn an_intention_signed_by_a_non_member_is_reported_as_such() {
    let f = fixture();
    let stranger = Identity::generate();
    let op = Op {
        hlc: now(0),
        body: create("forged"),
    };
    let op_id = op.id(stranger.public());
    let i = Intention::create(&stranger, ID, None, vec![], vec![op]).unwrap();
    edit(&f.store, |t| {
        t.intentions.insert(i.hash.0, &i.bytes).unwrap();
        t.add_chain(&stranger.public(), 1, &i.hash).unwrap();
        t.add_hlc(&i.hash, i.hlc).unwrap();
    });
    let proof = f.store.verify(vec![f.ops[1], op_id]).unwrap();
    let [VerifyFailure::Unauthorised {
        hash,
        error: StoreError::NotMember(key),
    }] = proof.failures.as_slice()
    else {
        panic!("{:?}", proof.failures);
    };
    assert_eq!((*hash, *key), (i.hash, stranger.public()));
    let checked = proof.intentions.iter().find(|c| c.hash == i.hash).unwrap();
    assert_eq!(checked.authority, None);
    assert!(proof.failures[0]
        .to_string()
        .contains("may not write to this store"));
}

#[test]
fn a_missing_predecessor_fails_unless_it_lies_below_the_frontier() {
    let f = fixture();
    let deps = f
        .store
        .verify(f.ops.clone())
        .unwrap()
        .intentions
        .iter()
        .find(|i| i.hash == f.written_by_writer)
        .unwrap()
        .deps
        .clone();
    let [gone] = deps.as_slice() else {
        panic!("the writer named one head: {deps:?}");
    };
    edit(&f.store, |t| {
        t.intentions.remove(gone.0).unwrap();
    });
    let proof = f.store.verify(f.ops.clone()).unwrap();
    let [VerifyFailure::MissingLink { hash, missing }] = proof.failures.as_slice() else {
        panic!("{:?}", proof.failures);
    };
    assert_eq!((*hash, *missing), (f.written_by_writer, *gone));
    // With the frontier past it, the same gap is history purged there, not a failure.
    let below = Hlc {
        wall_ms: u64::MAX,
        counter: 0,
    };
    let db = f.store.handle.shared.index.db().unwrap();
    let txn = db.begin_write().unwrap();
    let proof = {
        let t = Tables::open(&txn).unwrap();
        f.store
            .read(|s| prove(&t, s, f.admin.public(), Some(below), &f.ops))
            .unwrap()
    };
    txn.abort().unwrap();
    assert!(proof.verified(), "{:?}", proof.failures);
    assert_eq!(proof.purged_below, Some(below));
}

#[test]
fn an_op_no_stored_intention_carries_is_reported() {
    let f = fixture();
    let unknown = OpId {
        hlc: now(0),
        author: Identity::generate().public(),
    };
    let proof = f.store.verify(vec![unknown]).unwrap();
    assert!(matches!(proof.failures.as_slice(), [VerifyFailure::NotHeld(op)] if *op == unknown));
    assert_eq!(proof.holders, vec![(unknown, None)]);
}
