//! Store tests of membership: authority, revocation cuts and voiding, invites.

use std::path::Path;
use std::sync::{Arc, Barrier};

use proptest::prelude::*;

use crate::fs::op::{Op, OpBody, Role};
use crate::fs::{FsError, InviteStatus};
use crate::hlc::{now_ms, Hlc};
use crate::identity::{Identity, PublicKey};
use crate::ids::{Hash, OpId, StoreId};
use crate::intention::Intention;
use crate::store::error::{InviteError, StoreError};
use crate::store::tests::{clock, create};
use crate::store::{invite_id, ApplyOutcome, Store};

pub(super) const ID: StoreId = StoreId([12; 16]);

pub(super) fn op(wall_ms: u64, body: OpBody) -> Op {
    Op {
        hlc: Hlc {
            wall_ms,
            counter: 0,
        },
        body,
    }
}

pub(super) fn grant(key: PublicKey, role: Role) -> OpBody {
    OpBody::SetMember {
        key,
        role,
        display_name: "m".into(),
        invite: None,
    }
}

pub(super) fn by(
    who: &Identity,
    prev: Option<&Intention>,
    deps: &[&Intention],
    ops: Vec<Op>,
) -> Intention {
    let mut deps: Vec<Hash> = deps.iter().map(|i| i.hash).collect();
    deps.sort();
    Intention::create(who, ID, prev.map(|p| p.hash), deps, ops).unwrap()
}

pub(super) fn ids(n: u8) -> Vec<Identity> {
    (1..=n).map(|i| Identity::from_seed([i; 32])).collect()
}

pub(super) fn replica(dir: &Path, founder: &Identity, me: Identity) -> Store {
    Store::join(dir, ID, founder.public(), me, clock()).unwrap()
}

/// The visible outcome a replica reached: dump, applied set, heads.
pub(super) fn outcome(store: &Store) -> (String, Vec<Hash>, Vec<Hash>) {
    let d = store.digest().unwrap();
    assert!(d.floating.is_empty());
    (
        store.read(|s| s.canonical_dump()),
        d.intentions.into_iter().collect(),
        d.heads.into_iter().collect(),
    )
}

#[test]
fn system_ops_from_non_admins_and_intentions_from_readers_are_refused_whole() {
    let [admin, writer, reader] = <[Identity; 3]>::try_from(ids(3)).ok().unwrap();
    let g = by(
        &admin,
        None,
        &[],
        vec![
            op(10, grant(admin.public(), Role::Admin)),
            op(11, grant(writer.public(), Role::Writer)),
            op(12, grant(reader.public(), Role::Reader)),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &admin, Identity::generate());
    store.apply_remote(g.bytes.clone()).unwrap();
    let before = outcome(&store);
    let sneaky = by(
        &writer,
        None,
        &[&g],
        vec![
            op(20, create("ok")),
            op(21, grant(writer.public(), Role::Admin)),
        ],
    );
    let rename = by(
        &writer,
        None,
        &[&g],
        vec![op(22, OpBody::SetStoreName("mine".into()))],
    );
    let by_reader = by(&reader, None, &[&g], vec![op(23, create("r"))]);
    assert!(
        matches!(store.apply_remote(sneaky.bytes.clone()), Err(StoreError::NotAdmin(k)) if k == writer.public())
    );
    assert!(matches!(
        store.apply_remote(rename.bytes.clone()),
        Err(StoreError::NotAdmin(_))
    ));
    assert!(
        matches!(store.apply_remote(by_reader.bytes.clone()), Err(StoreError::NotMember(k)) if k == reader.public())
    );
    assert_eq!(outcome(&store), before, "nothing stored");
    assert!(store.digest().unwrap().refused.is_empty());
    assert!(!store.is_refused(&sneaky.hash));
}

#[test]
fn an_intention_whose_prev_is_by_another_author_is_refused() {
    let [admin, writer] = <[Identity; 2]>::try_from(ids(2)).ok().unwrap();
    let g = by(
        &admin,
        None,
        &[],
        vec![
            op(10, grant(admin.public(), Role::Admin)),
            op(11, grant(writer.public(), Role::Writer)),
        ],
    );
    let a1 = by(&admin, Some(&g), &[&g], vec![op(20, create("a"))]);
    let stolen = by(&writer, Some(&a1), &[&a1], vec![op(21, create("w"))]);
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &admin, Identity::generate());
    store.apply_remote(g.bytes.clone()).unwrap();
    store.apply_remote(a1.bytes.clone()).unwrap();
    assert!(matches!(
        store.apply_remote(stolen.bytes.clone()),
        Err(StoreError::ForeignPrev { hash }) if hash == stolen.hash
    ));
    assert_eq!(store.stats().intentions, 2);
}

#[test]
fn a_reader_cannot_write_locally() {
    let [admin] = <[Identity; 1]>::try_from(ids(1)).ok().unwrap();
    let me = Identity::generate();
    let g = by(
        &admin,
        None,
        &[],
        vec![
            op(10, grant(admin.public(), Role::Admin)),
            op(11, grant(me.public(), Role::Reader)),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &admin, me);
    store.apply_remote(g.bytes.clone()).unwrap();
    let r = store.write(|tx| Ok(tx.push(create("x"))?));
    assert_eq!(r, Err(FsError::ReadOnly));
    assert!(matches!(
        store.create_invite(Role::Writer, u64::MAX),
        Err(InviteError::NotAdmin)
    ));
}

/// A history where admin A revokes admin X after seeing only X's first intention,
/// concurrently with X's second (which grants Y) and third, a writer W building on X's
/// second, and Y writing under X's grant.
struct Revocation {
    a: Identity,
    all: Vec<Intention>,
    kept: Vec<Hash>,
    void: Vec<Hash>,
    w1: Hash,
}

fn revocation() -> Revocation {
    let [a, x, w, y] = <[Identity; 4]>::try_from(ids(4)).ok().unwrap();
    let g = by(
        &a,
        None,
        &[],
        vec![
            op(10, OpBody::SetStoreName("s".into())),
            op(11, grant(a.public(), Role::Admin)),
            op(12, grant(x.public(), Role::Admin)),
            op(13, grant(w.public(), Role::Writer)),
        ],
    );
    let x1 = by(&x, None, &[&g], vec![op(20, create("x1"))]);
    let x2 = by(
        &x,
        Some(&x1),
        &[&x1],
        vec![
            op(21, create("x2")),
            op(22, grant(y.public(), Role::Writer)),
        ],
    );
    let x3 = by(&x, Some(&x2), &[&x2], vec![op(23, create("x3"))]);
    let r = by(
        &a,
        Some(&g),
        &[&x1],
        vec![op(
            24,
            OpBody::RevokeMember {
                key: x.public(),
                upto: 1,
            },
        )],
    );
    let w1 = by(&w, None, &[&x2], vec![op(25, create("w1"))]);
    let y1 = by(&y, None, &[&x2], vec![op(26, create("y1"))]);
    Revocation {
        kept: vec![g.hash, x1.hash, r.hash, w1.hash],
        void: vec![x2.hash, x3.hash],
        w1: w1.hash,
        a,
        all: vec![g, x1, x2, x3, r, w1, y1],
    }
}

#[test]
fn a_revoked_authors_post_cut_intention_is_refused_and_recorded_and_dependents_apply() {
    let h = revocation();
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &h.a, Identity::generate());
    let [g, x1, x2, x3, r, w1, y1] = <[Intention; 7]>::try_from(h.all).ok().unwrap();
    for i in [&g, &x1, &r] {
        assert!(matches!(
            store.apply_remote(i.bytes.clone()),
            Ok(ApplyOutcome::Applied { .. })
        ));
    }
    assert!(matches!(
        store.apply_remote(x2.bytes.clone()),
        Err(StoreError::Revoked {
            seq: 2,
            upto: 1,
            ..
        })
    ));
    assert!(store.is_refused(&x2.hash));
    assert_eq!(
        store.apply_remote(x2.bytes.clone()).unwrap(),
        ApplyOutcome::Duplicate
    );
    assert!(matches!(
        store.apply_remote(w1.bytes.clone()),
        Ok(ApplyOutcome::Applied { woken: 0 })
    ));
    assert!(matches!(
        store.apply_remote(x3.bytes.clone()),
        Err(StoreError::Revoked { seq: 3, .. })
    ));
    assert!(matches!(
        store.apply_remote(y1.bytes.clone()),
        Err(StoreError::NotMember(_))
    ));
    let d = store.digest().unwrap();
    assert_eq!(d.intentions, h.kept.iter().copied().collect());
    assert_eq!(d.refused, h.void.iter().copied().collect());
    assert!(store.read(|s| s.lookup(OpId::ROOT, "w1").is_ok()));
    assert!(store.read(|s| s.lookup(OpId::ROOT, "x2").is_err()));
    assert!(d.heads.contains(&h.w1));
}

#[test]
fn a_late_revocation_voids_applied_intentions_and_a_restart_keeps_the_rebuilt_projection() {
    let h = revocation();
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let store = replica(tmp.path(), &h.a, me.clone());
    let r = h.all[4].hash;
    for i in h.all.iter().filter(|i| i.hash != r) {
        store.apply_remote(i.bytes.clone()).unwrap();
    }
    assert!(store.read(|s| s.lookup(OpId::ROOT, "y1").is_ok()));
    let mut events = store.subscribe();
    store.apply_remote(h.all[4].bytes.clone()).unwrap();
    let d = store.digest().unwrap();
    assert_eq!(d.intentions, h.kept.iter().copied().collect());
    assert_eq!(d.witness_len, 7, "voided entries stay in the witness log");
    assert!(h.void.iter().all(|v| store.is_refused(v)));
    for name in ["x2", "x3", "y1"] {
        assert!(
            store.read(|s| s.lookup(OpId::ROOT, name).is_err()),
            "{name}"
        );
    }
    assert!(matches!(
        events.try_recv().unwrap(),
        crate::store::StoreEvent::Applied { files, .. } if files.len() >= 3
    ));
    let before = outcome(&store);
    assert!(store.history(OpId::ROOT).is_ok());
    store.shutdown().unwrap();
    let reopened = Store::open(tmp.path(), me, clock()).unwrap();
    assert_eq!(outcome(&reopened), before);
    for i in &h.all {
        assert!(!matches!(
            reopened.apply_remote(i.bytes.clone()),
            Ok(ApplyOutcome::Applied { .. })
        ));
    }
    assert_eq!(outcome(&reopened), before);
}

#[test]
fn a_replica_that_never_saw_voided_intentions_fetches_them_as_predecessors_and_converges() {
    let h = revocation();
    let tmp = tempfile::tempdir().unwrap();
    let old = replica(&tmp.path().join("old"), &h.a, Identity::generate());
    for i in &h.all {
        drop(old.apply_remote(i.bytes.clone()));
    }
    // Reconciliation only offers what is applied; intentions naming a voided one float.
    let fresh = replica(&tmp.path().join("fresh"), &h.a, Identity::generate());
    for i in h.all.iter().filter(|i| h.kept.contains(&i.hash)) {
        fresh.apply_remote(i.bytes.clone()).unwrap();
    }
    let missing = fresh.missing(16).unwrap();
    assert!(
        !missing.is_empty(),
        "something waits for a voided predecessor"
    );
    assert!(missing.iter().all(|m| h.void.contains(m)), "{missing:?}");
    let bytes = old.get(missing.clone(), usize::MAX).unwrap();
    assert_eq!(bytes.len(), missing.len(), "voided bytes are served");
    for b in bytes {
        drop(fresh.apply_remote(b));
    }
    assert!(fresh.missing(16).unwrap().is_empty());
    assert_eq!(outcome(&fresh), outcome(&old));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn replicas_receiving_a_revocation_history_in_any_order_converge(
        order in Just((0..7usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let h = revocation();
        let tmp = tempfile::tempdir().unwrap();
        let reference = replica(&tmp.path().join("ref"), &h.a, Identity::generate());
        for i in &h.all {
            drop(reference.apply_remote(i.bytes.clone()));
        }
        let store = replica(&tmp.path().join("r"), &h.a, Identity::generate());
        for k in &order {
            drop(store.apply_remote(h.all[*k].bytes.clone()));
        }
        let got = outcome(&store);
        prop_assert_eq!(&got, &outcome(&reference));
        prop_assert_eq!(got.1, { let mut k = h.kept.clone(); k.sort(); k });
        // x2 is named by w1, so it is known; x3, needed by nothing, may have been
        // dropped from the floating table with the verdict instead of recorded.
        prop_assert!(store.is_refused(&h.void[0]));
    }
}

#[test]
fn a_local_revocation_cuts_at_the_members_applied_chain_length() {
    let [x] = <[Identity; 1]>::try_from(ids(1)).ok().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let admin = Identity::generate();
    let store = Store::create(tmp.path(), ID, admin.clone(), clock(), "s", "admin").unwrap();
    store
        .write(|tx| Ok(tx.push(grant(x.public(), Role::Writer))?))
        .unwrap();
    store.flush().unwrap();
    let heads: Vec<Hash> = store.digest().unwrap().heads.into_iter().collect();
    let x1 = Intention::create(&x, ID, None, heads, vec![op(now_ms(), create("x1"))]).unwrap();
    let x2 = Intention::create(
        &x,
        ID,
        Some(x1.hash),
        vec![x1.hash],
        vec![op(now_ms() + 1, create("x2"))],
    )
    .unwrap();
    store.apply_remote(x1.bytes.clone()).unwrap();
    assert_eq!(store.revoke_member(x.public()).unwrap(), 1);
    assert!(matches!(
        store.revoke_member(x.public()),
        Err(InviteError::NotMember(_))
    ));
    assert!(matches!(
        store.apply_remote(x2.bytes.clone()),
        Err(StoreError::Revoked {
            seq: 2,
            upto: 1,
            ..
        })
    ));
    store.flush().unwrap();
    assert!(store.members().iter().all(|m| m.key != x.public()));
    assert!(store.read(|s| s.lookup(OpId::ROOT, "x1").is_ok()));
}

fn admin_store(dir: &Path) -> Store {
    Store::create(dir, ID, Identity::generate(), clock(), "s", "admin").unwrap()
}

#[test]
fn an_invite_is_redeemed_once_and_refused_when_used_expired_revoked_or_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let store = admin_store(tmp.path());
    let now = now_ms();
    let secret = store.create_invite(Role::Writer, now + 60_000).unwrap();
    let (joiner, other) = (PublicKey([1; 32]), PublicKey([2; 32]));
    assert_eq!(
        store.redeem_invite(&secret, joiner, "laptop", now).unwrap(),
        Role::Writer
    );
    assert_eq!(
        store.redeem_invite(&secret, joiner, "laptop", now).unwrap(),
        Role::Writer,
        "a retried join by the same key"
    );
    assert!(matches!(
        store.redeem_invite(&secret, other, "x", now),
        Err(InviteError::Used(k)) if k == joiner
    ));
    assert!(store
        .members()
        .iter()
        .any(|m| m.key == joiner && m.role == Role::Writer && m.display_name == "laptop"));

    let expiring = store.create_invite(Role::Reader, now + 10).unwrap();
    assert!(matches!(
        store.redeem_invite(&expiring, other, "x", now + 11),
        Err(InviteError::Expired(_))
    ));
    let withdrawn = store.create_invite(Role::Reader, now + 60_000).unwrap();
    store.revoke_invite(invite_id(&withdrawn)).unwrap();
    assert!(matches!(
        store.redeem_invite(&withdrawn, other, "x", now),
        Err(InviteError::Revoked)
    ));
    assert!(matches!(
        store.redeem_invite(&[9; 32], other, "x", now),
        Err(InviteError::Unknown)
    ));
    assert!(matches!(
        store.revoke_invite(invite_id(&secret)),
        Err(InviteError::Used(_))
    ));

    let statuses: Vec<InviteStatus> = store.invites().iter().map(|i| i.status).collect();
    assert_eq!(statuses.len(), 3);
    assert!(statuses.contains(&InviteStatus::Used(joiner)));
    assert!(statuses.contains(&InviteStatus::Revoked));
    assert!(
        statuses.contains(&InviteStatus::Open),
        "expired only at now + 11"
    );

    store.revoke_member(joiner).unwrap();
    let again = store.create_invite(Role::Writer, now + 60_000).unwrap();
    assert!(matches!(
        store.redeem_invite(&again, joiner, "laptop", now),
        Err(InviteError::JoinerRevoked(_))
    ));
}

#[test]
fn concurrent_redemptions_of_one_invite_resolve_alike_in_any_order() {
    use crate::fs::FsState;
    let admins = ids(2);
    let (a, b) = (admins[0].public(), admins[1].public());
    let (j1, j2) = (PublicKey([1; 32]), PublicKey([2; 32]));
    let id = invite_id(&[4; 32]);
    let redeem = |key| OpBody::SetMember {
        key,
        role: Role::Writer,
        display_name: "j".into(),
        invite: Some(id),
    };
    let invite = (
        a,
        op(
            10,
            OpBody::Invite {
                id,
                role: Role::Writer,
                expires_ms: 100,
            },
        ),
    );
    let ops = [(b, op(30, redeem(j2))), (a, op(20, redeem(j1)))];
    let mut states = Vec::new();
    for order in [[0, 1], [1, 0]] {
        let mut s = FsState::new();
        s.apply(invite.0, &invite.1);
        for k in order {
            s.apply(ops[k].0, &ops[k].1);
        }
        states.push(s);
    }
    for s in &states {
        assert_eq!(s.member(&j1), Some((Role::Writer, "j")));
        assert_eq!(s.member(&j2), None, "the later redemption does not count");
        assert!(s.grants(&j2).is_empty());
        assert_eq!(s.invite(&id, 1_000).unwrap().status, InviteStatus::Used(j1));
    }
    assert_eq!(states[0].canonical_dump(), states[1].canonical_dump());
}

#[test]
fn two_joiners_racing_for_one_invite_exactly_one_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let store = admin_store(tmp.path());
    for round in 0..20u8 {
        let secret = store.create_invite(Role::Writer, u64::MAX).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<Result<Role, InviteError>> = (0..2u8)
            .map(|k| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.redeem_invite(&secret, PublicKey([round * 2 + k + 1; 32]), "j", now_ms())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(InviteError::Used(_)))));
    }
}
