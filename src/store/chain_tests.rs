//! Store tests of the admission rules that no key can route around: one chain per
//! author (forks are equivocation), revocation on every chain, the clock order and
//! skew rules, and per-author floating quotas.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use negentropy::NegentropyStorageBase;
use proptest::prelude::*;

use super::member_tests::{by, grant, ids, op, outcome, replica, ID};
use crate::fs::op::{OpBody, Role};
use crate::hlc::{now_ms, Hlc};
use crate::identity::{Identity, PublicKey};
use crate::ids::{Hash, OpId};
use crate::intention::Intention;
use crate::store::apply::MAX_FLOATING_STRANGERS;
use crate::store::error::StoreError;
use crate::store::members::Equivocator;
use crate::store::tests::{clock, create};
use crate::store::{ApplyOutcome, Store, MAX_CLOCK_SKEW_MS, MAX_FLOATING_PER_STRANGER};

fn revoke(key: PublicKey, upto: u64) -> OpBody {
    OpBody::RevokeMember { key, upto }
}

/// An admin `a`, a writer `w`, and the genesis `g` in which `a` grants both roles.
fn admin_and_writer() -> (Identity, Identity, Intention) {
    let [a, w] = <[Identity; 2]>::try_from(ids(2)).ok().unwrap();
    let g = by(
        &a,
        None,
        &[],
        vec![
            op(10, grant(a.public(), Role::Admin)),
            op(11, grant(w.public(), Role::Writer)),
        ],
    );
    (a, w, g)
}

fn has(store: &Store, name: &str) -> bool {
    store.read(|s| s.lookup(OpId::ROOT, name).is_ok())
}

/// The hashes in a store's reconciliation index: what reconciliation offers peers.
fn index_set(store: &Store) -> BTreeSet<Hash> {
    let view = store.reconcile_view().unwrap();
    (0..view.size().unwrap())
        .map(|i| Hash(*view.get_item(i).unwrap().unwrap().id.as_bytes()))
        .collect()
}

/// What a reconciliation pass does: `to` gets what `from` indexes and it lacks, in
/// HLC order, then the predecessors its floating intentions wait for.
fn sync(from: &Store, to: &Store) {
    let want: Vec<Hash> = index_set(from)
        .difference(&index_set(to))
        .copied()
        .collect();
    let mut got = from.get(want, usize::MAX).unwrap();
    got.sort_by_cached_key(Intention::peek);
    for b in got {
        drop(to.apply_remote(b));
    }
    loop {
        let missing = to.missing(64).unwrap();
        let got = from.get(missing, usize::MAX).unwrap();
        if got.is_empty() {
            break;
        }
        for b in got {
            drop(to.apply_remote(b));
        }
    }
}

/// Admin `a` grants writers `w` and `v`; `w` writes `w1`, then forks after it with
/// `wa` and `wb`, which even reuse one op id; `wa2` follows `wa`, and `v1` builds on
/// `wa`.
struct Fork {
    a: Identity,
    w: PublicKey,
    all: Vec<Intention>,
    kept: Vec<Hash>,
    evidence: [Hash; 2],
}

fn fork() -> Fork {
    let [a, w, v] = <[Identity; 3]>::try_from(ids(3)).ok().unwrap();
    let g = by(
        &a,
        None,
        &[],
        vec![
            op(10, OpBody::SetStoreName("s".into())),
            op(11, grant(a.public(), Role::Admin)),
            op(12, grant(w.public(), Role::Writer)),
            op(13, grant(v.public(), Role::Writer)),
        ],
    );
    let w1 = by(&w, None, &[&g], vec![op(20, create("w1"))]);
    let wa = by(&w, Some(&w1), &[&w1], vec![op(21, create("a"))]);
    let wb = by(&w, Some(&w1), &[&w1], vec![op(21, create("b"))]);
    let wa2 = by(&w, Some(&wa), &[&wa], vec![op(22, create("a2"))]);
    let v1 = by(&v, None, &[&wa], vec![op(23, create("v1"))]);
    let mut evidence = [wa.hash, wb.hash];
    evidence.sort();
    Fork {
        w: w.public(),
        kept: vec![g.hash, w1.hash, v1.hash],
        evidence,
        a,
        all: vec![g, w1, wa, wb, wa2, v1],
    }
}

fn feed(store: &Store, all: &[Intention], order: &[usize]) {
    for k in order {
        drop(store.apply_remote(all[*k].bytes.clone()));
    }
}

#[test]
fn a_fork_is_kept_as_evidence_reported_and_replicas_receiving_the_branches_in_opposite_orders_converge(
) {
    let h = fork();
    let tmp = tempfile::tempdir().unwrap();
    let one = replica(&tmp.path().join("1"), &h.a, Identity::generate());
    let two = replica(&tmp.path().join("2"), &h.a, Identity::generate());
    feed(&one, &h.all, &[0, 1, 2, 4, 5, 3]);
    feed(&two, &h.all, &[0, 1, 3, 2, 4, 5]);
    assert_eq!(outcome(&one), outcome(&two));
    let (_, applied, _) = outcome(&one);
    assert_eq!(applied, {
        let mut k = h.kept.clone();
        k.sort();
        k
    });
    for s in [&one, &two] {
        assert!(has(s, "w1") && has(s, "v1"));
        assert!(!has(s, "a") && !has(s, "b") && !has(s, "a2"));
        assert_eq!(
            s.equivocators().unwrap(),
            vec![Equivocator {
                key: h.w,
                seq: 2,
                evidence: h.evidence,
            }]
        );
        let index = index_set(s);
        assert!(
            h.evidence.iter().all(|e| index.contains(e)),
            "evidence is offered"
        );
        assert!(s.is_refused(&h.evidence[0]) && s.is_refused(&h.evidence[1]));
    }
    assert_eq!(index_set(&one), index_set(&two));
    // The equivocator's later intentions are refused, on any chain.
    let w = Identity::from_seed([2; 32]);
    let root = by(&w, None, &[&h.all[5]], vec![op(30, create("again"))]);
    assert!(matches!(
        one.apply_remote(root.bytes.clone()),
        Err(StoreError::Equivocation { .. })
    ));
    let next = by(&w, Some(&h.all[1]), &[&h.all[5]], vec![op(31, create("c"))]);
    assert!(matches!(
        one.apply_remote(next.bytes.clone()),
        Err(StoreError::Equivocation { .. })
    ));
    assert!(!has(&one, "again") && !has(&one, "c"));
}

#[test]
fn fork_evidence_reaches_a_replica_that_saw_one_branch_and_it_reaches_the_same_verdict() {
    let h = fork();
    let tmp = tempfile::tempdir().unwrap();
    let one = replica(&tmp.path().join("1"), &h.a, Identity::generate());
    let two = replica(&tmp.path().join("2"), &h.a, Identity::generate());
    feed(&one, &h.all, &[0, 1, 2, 4, 5]);
    feed(&two, &h.all, &[0, 1, 3]);
    assert!(one.equivocators().unwrap().is_empty());
    assert!(has(&one, "a2"), "one branch alone is no proof");
    sync(&two, &one);
    sync(&one, &two);
    assert_eq!(outcome(&one), outcome(&two));
    assert_eq!(one.equivocators().unwrap(), two.equivocators().unwrap());
    assert_eq!(index_set(&one), index_set(&two), "reconciliation is done");
    assert!(!has(&two, "b") && !has(&one, "a2"));
}

#[test]
fn a_verdict_and_its_evidence_survive_a_restart() {
    let h = fork();
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let store = replica(tmp.path(), &h.a, me.clone());
    feed(&store, &h.all, &[0, 1, 2, 4, 5, 3]);
    let before = (
        outcome(&store),
        store.equivocators().unwrap(),
        index_set(&store),
    );
    store.shutdown().unwrap();
    drop(store);
    let reopened = Store::open(tmp.path(), me, clock()).unwrap();
    assert_eq!(
        (
            outcome(&reopened),
            reopened.equivocators().unwrap(),
            index_set(&reopened)
        ),
        before
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn replicas_receiving_a_fork_in_any_order_converge(
        order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let h = fork();
        let tmp = tempfile::tempdir().unwrap();
        let reference = replica(&tmp.path().join("ref"), &h.a, Identity::generate());
        feed(&reference, &h.all, &[0, 1, 2, 3, 4, 5]);
        let store = replica(&tmp.path().join("r"), &h.a, Identity::generate());
        feed(&store, &h.all, &order);
        prop_assert_eq!(outcome(&store), outcome(&reference));
        prop_assert_eq!(index_set(&store), index_set(&reference));
        prop_assert_eq!(store.equivocators().unwrap(), reference.equivocators().unwrap());
    }
}

/// Admin `a` grants admin `x` and writer `w`; each writes one intention; `a` then
/// revokes both after those.
struct Revoked {
    a: Identity,
    x: Identity,
    w: Identity,
    g: Intention,
    x1: Intention,
    w1: Intention,
    r: Intention,
}

fn revoked() -> Revoked {
    let [a, x, w] = <[Identity; 3]>::try_from(ids(3)).ok().unwrap();
    let g = by(
        &a,
        None,
        &[],
        vec![
            op(10, grant(a.public(), Role::Admin)),
            op(11, grant(x.public(), Role::Admin)),
            op(12, grant(w.public(), Role::Writer)),
        ],
    );
    let x1 = by(&x, None, &[&g], vec![op(20, create("x1"))]);
    let w1 = by(&w, None, &[&g], vec![op(21, create("w1"))]);
    let r = by(
        &a,
        Some(&g),
        &[&x1, &w1],
        vec![op(22, revoke(x.public(), 1)), op(23, revoke(w.public(), 1))],
    );
    Revoked {
        a,
        x,
        w,
        g,
        x1,
        w1,
        r,
    }
}

fn revoked_store(dir: &std::path::Path, h: &Revoked) -> Store {
    let store = replica(dir, &h.a, Identity::generate());
    for i in [&h.g, &h.x1, &h.w1, &h.r] {
        store.apply_remote(i.bytes.clone()).unwrap();
    }
    store
}

#[test]
fn a_revoked_writer_restarting_its_chain_is_refused() {
    let h = revoked();
    let tmp = tempfile::tempdir().unwrap();
    let store = revoked_store(tmp.path(), &h);
    let restart = by(&h.w, None, &[&h.r], vec![op(30, create("restart"))]);
    let after = by(
        &h.w,
        Some(&restart),
        &[&restart],
        vec![op(31, create("after"))],
    );
    assert!(matches!(
        store.apply_remote(restart.bytes.clone()),
        Err(StoreError::Equivocation { seq: 1, .. })
    ));
    assert!(store.apply_remote(after.bytes.clone()).is_err());
    assert!(!has(&store, "restart") && !has(&store, "after"));
    assert_eq!(store.equivocators().unwrap()[0].key, h.w.public());
}

#[test]
fn a_revoked_writer_forking_from_an_old_intention_is_refused() {
    let (a, w, g) = admin_and_writer();
    let w1 = by(&w, None, &[&g], vec![op(20, create("w1"))]);
    let w2 = by(&w, Some(&w1), &[&w1], vec![op(21, create("w2"))]);
    let w3 = by(&w, Some(&w2), &[&w2], vec![op(22, create("w3"))]);
    let r = by(&a, Some(&g), &[&w3], vec![op(23, revoke(w.public(), 3))]);
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &a, Identity::generate());
    for i in [&g, &w1, &w2, &w3, &r] {
        store.apply_remote(i.bytes.clone()).unwrap();
    }
    let fork = by(&w, Some(&w1), &[&r], vec![op(30, create("late"))]);
    assert!(matches!(
        store.apply_remote(fork.bytes.clone()),
        Err(StoreError::Equivocation { seq: 2, .. })
    ));
    assert!(!has(&store, "late"));
    assert!(has(&store, "w1"));
    assert!(!has(&store, "w2"), "the fork voids both branches");
}

#[test]
fn a_revoked_admin_cannot_grant_admin() {
    let h = revoked();
    let tmp = tempfile::tempdir().unwrap();
    let store = revoked_store(tmp.path(), &h);
    let y = Identity::from_seed([9; 32]);
    let extend = by(
        &h.x,
        Some(&h.x1),
        &[&h.r],
        vec![op(30, grant(y.public(), Role::Admin))],
    );
    let restart = by(
        &h.x,
        None,
        &[&h.r],
        vec![op(31, grant(y.public(), Role::Admin))],
    );
    assert!(matches!(
        store.apply_remote(extend.bytes.clone()),
        Err(StoreError::Revoked { .. })
    ));
    assert!(matches!(
        store.apply_remote(restart.bytes.clone()),
        Err(StoreError::Equivocation { .. })
    ));
    let by_y = by(&y, None, &[&h.r], vec![op(32, create("y"))]);
    assert!(matches!(
        store.apply_remote(by_y.bytes.clone()),
        Err(StoreError::NotMember(_))
    ));
    assert!(store.read(|s| s.member(&y.public()).is_none()));
}

#[test]
fn an_op_stamped_at_or_before_its_deps_or_prev_is_refused_and_changes_nothing() {
    let (a, w, g) = admin_and_writer();
    let w1 = by(&w, None, &[&g], vec![op(20, create("w1"))]);
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &a, Identity::generate());
    store.apply_remote(g.bytes.clone()).unwrap();
    store.apply_remote(w1.bytes.clone()).unwrap();
    let before = outcome(&store);
    let old = by(&w, Some(&w1), &[&w1], vec![op(3, create("old"))]);
    let equal = by(&w, Some(&w1), &[&w1], vec![op(20, create("same id"))]);
    let mixed = by(
        &w,
        Some(&w1),
        &[&w1],
        vec![op(40, create("new")), op(1, create("early"))],
    );
    for i in [&old, &equal, &mixed] {
        assert!(matches!(
            store.apply_remote(i.bytes.clone()),
            Err(StoreError::Stale { hash, before }) if hash == i.hash && before == w1.hash
        ));
        assert!(
            !store.is_refused(&i.hash),
            "not recorded: nothing depends on it"
        );
    }
    assert_eq!(outcome(&store), before);
    assert!(store.equivocators().unwrap().is_empty());
}

#[test]
fn an_op_pushed_before_a_later_stamped_head_arrives_is_sealed_without_naming_it() {
    let [a, w] = <[Identity; 2]>::try_from(ids(2)).ok().unwrap();
    let now = now_ms();
    let g = by(
        &a,
        None,
        &[],
        vec![
            op(now - 10, grant(a.public(), Role::Admin)),
            op(now - 9, grant(w.public(), Role::Writer)),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let me = w.public();
    let store = replica(&tmp.path().join("w"), &a, w);
    store.apply_remote(g.bytes.clone()).unwrap();
    // Stamped ahead of the op below, yet within the skew limit: applied at once.
    let ahead = by(&a, Some(&g), &[&g], vec![op(now + 30_000, create("ahead"))]);
    let (tx, rx) = std::sync::mpsc::channel();
    store
        .write(|t| {
            t.push(create("mine"))?;
            let s = store.clone();
            let bytes = ahead.bytes.clone();
            std::thread::spawn(move || tx.send(s.apply_remote(bytes)).unwrap());
            // The actor takes the apply and waits for this write lock; the op is
            // queued only after, so it is sealed after `ahead` became a head.
            std::thread::sleep(std::time::Duration::from_millis(200));
            Ok(())
        })
        .unwrap();
    assert!(matches!(
        rx.recv().unwrap(),
        Ok(ApplyOutcome::Applied { .. })
    ));
    store.flush().unwrap();
    let sealed: Vec<Intention> = store
        .witness(1, usize::MAX)
        .unwrap()
        .intentions
        .into_iter()
        .map(|b| Intention::decode(b).unwrap())
        .filter(|i| i.author == me)
        .collect();
    assert_eq!(sealed.len(), 1);
    assert_eq!(
        sealed[0].deps,
        vec![g.hash],
        "what the op had seen, not `ahead`"
    );
    let other = replica(&tmp.path().join("o"), &a, Identity::generate());
    sync(&store, &other);
    assert_eq!(outcome(&other), outcome(&store));
    assert!(has(&other, "mine"));
}

/// A wall clock a test moves by hand.
fn manual_wall(store: &Store, start: u64) -> Arc<AtomicU64> {
    let now = Arc::new(AtomicU64::new(start));
    let read = now.clone();
    store.set_wall(Arc::new(move || read.load(Ordering::SeqCst)));
    now
}

#[test]
fn a_far_future_op_waits_and_applies_when_its_time_comes() {
    let (a, w, g) = admin_and_writer();
    let tmp = tempfile::tempdir().unwrap();
    let node_clock = clock();
    let store = Store::join(
        tmp.path(),
        ID,
        a.public(),
        Identity::generate(),
        node_clock.clone(),
    )
    .unwrap();
    let wall = manual_wall(&store, 1_000_000);
    store.apply_remote(g.bytes.clone()).unwrap();
    let stamp = 1_000_000 + MAX_CLOCK_SKEW_MS + 5_000;
    let future = by(&w, None, &[&g], vec![op(stamp, create("future"))]);
    let forever = by(
        &w,
        Some(&future),
        &[&future],
        vec![op(u64::MAX, create("max"))],
    );
    assert_eq!(
        store.apply_remote(future.bytes.clone()).unwrap(),
        ApplyOutcome::Early {
            until_ms: stamp - MAX_CLOCK_SKEW_MS
        }
    );
    assert!(matches!(
        store.apply_remote(forever.bytes.clone()).unwrap(),
        ApplyOutcome::Early { .. }
    ));
    store.flush().unwrap();
    assert!(!has(&store, "future"));
    assert_eq!(store.stats().floating, 2);
    assert!(
        node_clock.lock().last()
            < Hlc {
                wall_ms: stamp,
                counter: 0
            }
    );
    wall.store(stamp - MAX_CLOCK_SKEW_MS, Ordering::SeqCst);
    store.flush().unwrap();
    assert!(has(&store, "future"));
    assert!(!has(&store, "max"), "u64::MAX is never due");
    assert_eq!(store.stats().floating, 1);
}

#[test]
fn a_flood_of_parked_intentions_from_a_stranger_does_not_stop_a_members_out_of_order_intentions() {
    let (a, w, g) = admin_and_writer();
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &a, Identity::generate());
    store.apply_remote(g.bytes.clone()).unwrap();
    let stranger = Identity::from_seed([77; 32]);
    let flood = |who: &Identity, n: u64| {
        for k in 0..n {
            let missing = Hash::of(&k.to_be_bytes());
            let i = Intention::create(who, ID, None, vec![missing], vec![op(100 + k, create("f"))])
                .unwrap();
            assert!(matches!(
                store.apply_remote(i.bytes.clone()),
                Ok(ApplyOutcome::Floating { .. })
            ));
        }
    };
    flood(&stranger, 3 * MAX_FLOATING_PER_STRANGER);
    assert_eq!(
        store.stats().floating,
        MAX_FLOATING_PER_STRANGER,
        "the stranger's oldest were evicted"
    );
    // Many stranger keys together fill only the strangers' pool.
    let pool_keys = MAX_FLOATING_STRANGERS / MAX_FLOATING_PER_STRANGER;
    for s in 1..pool_keys {
        flood(
            &Identity::from_seed([100 + s as u8; 32]),
            MAX_FLOATING_PER_STRANGER,
        );
    }
    let late = Identity::from_seed([99; 32]);
    let refused = Intention::create(
        &late,
        ID,
        None,
        vec![Hash([1; 32])],
        vec![op(9, create("l"))],
    )
    .unwrap();
    assert!(matches!(
        store.apply_remote(refused.bytes.clone()),
        Err(StoreError::FloatingFull(_))
    ));
    // A member's intentions out of order still park and apply.
    let w1 = by(&w, None, &[&g], vec![op(20, create("w1"))]);
    let w2 = by(&w, Some(&w1), &[&w1], vec![op(21, create("w2"))]);
    assert_eq!(
        store.apply_remote(w2.bytes.clone()).unwrap(),
        ApplyOutcome::Floating { missing: w1.hash }
    );
    assert_eq!(
        store.apply_remote(w1.bytes.clone()).unwrap(),
        ApplyOutcome::Applied { woken: 1 }
    );
    assert!(has(&store, "w2"));
    assert_eq!(store.stats().floating, MAX_FLOATING_STRANGERS);
}

#[test]
fn parked_intentions_of_a_revoked_author_are_dropped_and_it_may_park_no_more() {
    let (a, w, g) = admin_and_writer();
    let w1 = by(&w, None, &[&g], vec![op(20, create("w1"))]);
    let w2 = by(&w, Some(&w1), &[&w1], vec![op(21, create("w2"))]);
    let w3 = by(&w, Some(&w2), &[&w2], vec![op(22, create("w3"))]);
    let w4 = by(&w, Some(&w3), &[&w3], vec![op(23, create("w4"))]);
    let r = by(&a, Some(&g), &[&w1], vec![op(24, revoke(w.public(), 1))]);
    let tmp = tempfile::tempdir().unwrap();
    let store = replica(tmp.path(), &a, Identity::generate());
    for i in [&g, &w1, &w2] {
        store.apply_remote(i.bytes.clone()).unwrap();
    }
    assert!(matches!(
        store.apply_remote(w4.bytes.clone()),
        Ok(ApplyOutcome::Floating { .. })
    ));
    assert_eq!(store.stats().floating, 1);
    store.apply_remote(r.bytes.clone()).unwrap();
    store.flush().unwrap();
    assert_eq!(store.stats().floating, 0, "dropped with the verdict");
    assert!(store.digest().unwrap().floating.is_empty());
    // Its place in the chain is known (after the voided w2): refused without waiting.
    let waits = Intention::create(
        &w,
        ID,
        Some(w2.hash),
        vec![w2.hash, Hash([5; 32])],
        vec![op(25, create("w3'"))],
    )
    .unwrap();
    assert!(matches!(
        store.apply_remote(waits.bytes.clone()),
        Err(StoreError::Revoked {
            seq: 3,
            upto: 1,
            ..
        })
    ));
    assert!(store.is_refused(&waits.hash));
    assert_eq!(store.stats().floating, 0);
}

/// Admin `a` grants admin `x`; `x` grants writer `y` in `x1`; `a` then demotes `x` to
/// writer after seeing `x1`, concurrently with `x2`, in which `x` grants writer `z`,
/// and `x3`, a plain write; `y` and `z` each write once.
struct Demotion {
    a: Identity,
    all: Vec<Intention>,
    kept: Vec<Hash>,
}

fn demotion() -> Demotion {
    let [a, x, y, z] = <[Identity; 4]>::try_from(ids(4)).ok().unwrap();
    let g = by(
        &a,
        None,
        &[],
        vec![
            op(10, grant(a.public(), Role::Admin)),
            op(11, grant(x.public(), Role::Admin)),
        ],
    );
    let x1 = by(
        &x,
        None,
        &[&g],
        vec![op(20, grant(y.public(), Role::Writer))],
    );
    let d = by(
        &a,
        Some(&g),
        &[&x1],
        vec![op(21, grant(x.public(), Role::Writer))],
    );
    let x2 = by(
        &x,
        Some(&x1),
        &[&x1],
        vec![op(22, grant(z.public(), Role::Writer))],
    );
    let x3 = by(&x, Some(&x2), &[&x2], vec![op(23, create("x3"))]);
    let y1 = by(&y, None, &[&x1], vec![op(24, create("y1"))]);
    let z1 = by(&z, None, &[&x2], vec![op(25, create("z1"))]);
    Demotion {
        a,
        kept: vec![g.hash, x1.hash, d.hash, x3.hash, y1.hash],
        all: vec![g, x1, d, x2, x3, y1, z1],
    }
}

#[test]
fn a_demotion_takes_the_rights_of_the_members_later_intentions_and_only_those() {
    let h = demotion();
    let tmp = tempfile::tempdir().unwrap();
    let early = replica(&tmp.path().join("e"), &h.a, Identity::generate());
    let late = replica(&tmp.path().join("l"), &h.a, Identity::generate());
    feed(&early, &h.all, &[0, 1, 2, 3, 4, 5, 6]);
    feed(&late, &h.all, &[0, 1, 3, 4, 5, 6, 2]);
    assert_eq!(outcome(&early), outcome(&late));
    let (_, applied, _) = outcome(&late);
    assert_eq!(applied, {
        let mut k = h.kept.clone();
        k.sort();
        k
    });
    for s in [&early, &late] {
        assert!(has(s, "x3") && has(s, "y1"), "a writer still writes");
        assert!(!has(s, "z1"), "the grant after the demotion is void");
        assert!(s.read(|st| st.member(&Identity::from_seed([4; 32]).public()).is_none()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn replicas_receiving_a_demotion_in_any_order_converge(
        order in Just((0..7usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let h = demotion();
        let tmp = tempfile::tempdir().unwrap();
        let reference = replica(&tmp.path().join("ref"), &h.a, Identity::generate());
        feed(&reference, &h.all, &[0, 1, 2, 3, 4, 5, 6]);
        let store = replica(&tmp.path().join("r"), &h.a, Identity::generate());
        feed(&store, &h.all, &order);
        prop_assert_eq!(outcome(&store), outcome(&reference));
    }
}
