//! Store tests of `Leave` and `DeleteStore`: who may author them, what a malformed or
//! forged one changes (nothing), what they do to membership, writes and admission.

use crate::fs::op::{OpBody, Role};
use crate::fs::FsError;
use crate::identity::Identity;
use crate::store::error::{LeaveError, StoreError};
use crate::store::member_tests::{by, grant, ids, op, outcome, replica};
use crate::store::tests::create;

/// A genesis by `admin` granting `writer` and `reader` their roles.
fn genesis(admin: &Identity, writer: &Identity, reader: &Identity) -> crate::intention::Intention {
    by(
        admin,
        None,
        &[],
        vec![
            op(10, grant(admin.public(), Role::Admin)),
            op(11, grant(writer.public(), Role::Writer)),
            op(12, grant(reader.public(), Role::Reader)),
        ],
    )
}

#[test]
fn a_reader_may_leave_and_is_then_cut_at_its_leave_like_a_revoked_member() {
    let [admin, writer, reader] = <[Identity; 3]>::try_from(ids(3)).ok().unwrap();
    let g = genesis(&admin, &writer, &reader);
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &admin, Identity::generate());
    store.apply_remote(g.bytes.clone()).unwrap();
    let leave = by(
        &reader,
        None,
        &[&g],
        vec![op(20, OpBody::Leave { upto: 1 })],
    );
    store.apply_remote(leave.bytes.clone()).unwrap();
    store.read(|s| {
        assert!(s.member(&reader.public()).is_none());
        assert!(s.has_left(&reader.public()));
        assert_eq!(s.revocation_cut(&reader.public()), Some(1));
        assert_eq!(s.left_members()[0].role, Role::Reader);
    });
    let after = by(
        &reader,
        Some(&leave),
        &[&leave],
        vec![op(30, OpBody::Leave { upto: 2 })],
    );
    assert!(matches!(
        store.apply_remote(after.bytes.clone()),
        Err(StoreError::Revoked {
            seq: 2,
            upto: 1,
            ..
        })
    ));
}

#[test]
fn a_malformed_leave_is_refused_and_changes_nothing() {
    let [admin, writer, reader] = <[Identity; 3]>::try_from(ids(3)).ok().unwrap();
    let g = genesis(&admin, &writer, &reader);
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &admin, Identity::generate());
    store.apply_remote(g.bytes.clone()).unwrap();
    let before = outcome(&store);
    // A leave naming another seq than its own, and one sharing its intention.
    let wrong_seq = by(
        &writer,
        None,
        &[&g],
        vec![op(20, OpBody::Leave { upto: 5 })],
    );
    let not_alone = by(
        &writer,
        None,
        &[&g],
        vec![op(21, create("x")), op(22, OpBody::Leave { upto: 1 })],
    );
    for bad in [&wrong_seq, &not_alone] {
        assert!(matches!(
            store.apply_remote(bad.bytes.clone()),
            Err(StoreError::BadLeave { seq: 1, .. })
        ));
    }
    // A reader's leave carrying a write is not a leave: the reader may not write.
    let sneaky = by(
        &reader,
        None,
        &[&g],
        vec![op(23, create("r")), op(24, OpBody::Leave { upto: 1 })],
    );
    assert!(store.apply_remote(sneaky.bytes.clone()).is_err());
    // A stranger's leave: not a member, nothing to leave.
    let stranger = by(
        &Identity::generate(),
        None,
        &[&g],
        vec![op(25, OpBody::Leave { upto: 1 })],
    );
    assert!(matches!(
        store.apply_remote(stranger.bytes.clone()),
        Err(StoreError::NotMember(_))
    ));
    // A forged leave: a valid one whose signature no longer matches its bytes.
    let good = by(
        &writer,
        None,
        &[&g],
        vec![op(26, OpBody::Leave { upto: 1 })],
    );
    let mut forged = good.bytes.to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(store.apply_remote(forged.into()).is_err());
    assert_eq!(outcome(&store), before, "nothing stored");
    assert!(store.digest().unwrap().refused.is_empty());
    assert!(store.read(|s| s.member(&writer.public()).is_some()));
}

#[test]
fn only_an_admin_deletes_and_a_deleted_store_is_read_only_and_admits_nothing() {
    let [admin, writer, reader] = <[Identity; 3]>::try_from(ids(3)).ok().unwrap();
    let g = genesis(&admin, &writer, &reader);
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &admin, writer.clone());
    store.apply_remote(g.bytes.clone()).unwrap();
    let before = outcome(&store);
    assert!(matches!(store.delete(), Err(LeaveError::NotAdmin)));
    for who in [&writer, &reader] {
        let fake = by(who, None, &[&g], vec![op(20, OpBody::DeleteStore)]);
        assert!(store.apply_remote(fake.bytes.clone()).is_err());
    }
    assert_eq!(
        outcome(&store),
        before,
        "a writer's or reader's delete changes nothing"
    );
    assert!(!store.is_deleted());

    let a1 = by(&admin, Some(&g), &[&g], vec![op(30, create("kept"))]);
    let delete = by(&admin, Some(&a1), &[&a1], vec![op(31, OpBody::DeleteStore)]);
    let late = by(
        &reader,
        None,
        &[&g],
        vec![op(32, OpBody::Leave { upto: 1 })],
    );
    store.apply_remote(a1.bytes.clone()).unwrap();
    store.apply_remote(delete.bytes.clone()).unwrap();
    assert!(store.is_deleted());
    assert!(matches!(
        store.write(|tx| Ok(tx.push(create("after"))?)),
        Err(FsError::ReadOnly)
    ));
    assert!(matches!(
        store.apply_remote(late.bytes.clone()),
        Err(StoreError::Deleted)
    ));
    assert!(
        store.is_refused(&late.hash),
        "recorded, so not fetched again"
    );
    assert!(store.read(|s| s.member(&reader.public()).is_some()));
}

#[test]
fn a_local_leave_is_sealed_alone_at_its_seq_after_the_ops_pushed_before_it() {
    let [admin, writer, reader] = <[Identity; 3]>::try_from(ids(3)).ok().unwrap();
    let g = genesis(&admin, &writer, &reader);
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &admin, writer.clone());
    store.apply_remote(g.bytes.clone()).unwrap();
    store.write(|tx| Ok(tx.push(create("a"))?)).unwrap();
    store.leave().unwrap();
    assert!(store.read(|s| s.has_left(&writer.public())));
    assert_eq!(store.read(|s| s.revocation_cut(&writer.public())), Some(2));
    assert!(matches!(
        store.write(|tx| Ok(tx.push(create("b"))?)),
        Err(FsError::ReadOnly)
    ));
    // Every intention replays on another replica, the leave admitted by rule 7.
    let batch = store.witness(1, usize::MAX).unwrap();
    let tmp2 = tempfile::tempdir().unwrap();
    let other = replica(tmp2.path(), &admin, Identity::generate());
    for o in other.apply_remote_many(batch.intentions) {
        o.unwrap();
    }
    assert_eq!(
        other.read(|s| s.canonical_dump()),
        store.read(|s| s.canonical_dump())
    );
    assert!(matches!(store.leave(), Ok(())), "leaving again is a no-op");
}
