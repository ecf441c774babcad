//! Reconciliation tests (`sync::reconcile` over this layer's index): sessions over bare
//! indexes and real stores, the index view against the crate's in-memory storage,
//! refused frames, snapshot consistency.

use std::collections::BTreeSet;
use std::sync::Arc;

use negentropy::{Bound, Id, NegentropyStorageBase, NegentropyStorageVector};
use parking_lot::Mutex;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::fs::op::Op;
use crate::hlc::{Clock, Hlc};
use crate::identity::Identity;
use crate::ids::{Hash, StoreId};
use crate::intention::Intention;
use crate::store::index::MAX_BLOCK_ITEMS;
use crate::store::{BareIndex, IndexView, Store};
use crate::sync::reconcile::{ReconcileError, ReconcileStorage, Session, Stats, FRAME_LIMIT};

type Items = BTreeSet<(u64, Hash)>;

fn random_items(rng: &mut StdRng, n: usize) -> Items {
    let mut items = Items::new();
    while items.len() < n {
        // Several items per millisecond, as in a busy store.
        let ms = 1_700_000_000_000 + rng.random_range(0..n as u64 / 3 + 1);
        items.insert((ms, Hash(rng.random())));
    }
    items
}

fn bare(items: &Items) -> (tempfile::TempDir, BareIndex) {
    let dir = tempfile::tempdir().unwrap();
    let index = BareIndex::create(&dir.path().join("index.redb")).unwrap();
    index.insert(items.iter().copied()).unwrap();
    (dir, index)
}

fn vector(items: &Items) -> NegentropyStorageVector {
    let mut v = NegentropyStorageVector::new();
    for (ms, h) in items {
        v.insert(*ms, Id::from_byte_array(h.0)).unwrap();
    }
    v.seal().unwrap();
    v
}

/// What an initiator learned, and the counters of both sides.
struct Outcome {
    have: BTreeSet<Hash>,
    need: BTreeSet<Hash>,
    ours: Stats,
    theirs: Stats,
}

/// Runs a whole session between two storages, checking every frame against `limit`.
fn reconcile<A: ReconcileStorage, B: ReconcileStorage>(a: A, b: B, limit: usize) -> Outcome {
    let mut ours = Session::initiator(a, limit).unwrap();
    let mut theirs = Session::responder(b, limit).unwrap();
    let (mut have, mut need) = (BTreeSet::new(), BTreeSet::new());
    let mut frame = ours.initiate().unwrap();
    loop {
        assert!(limit == 0 || frame.len() <= limit, "frame over the limit");
        let reply = theirs.step(&frame).unwrap().reply.unwrap();
        assert!(limit == 0 || reply.len() <= limit, "reply over the limit");
        let step = ours.step(&reply).unwrap();
        have.extend(step.have);
        need.extend(step.need);
        match step.reply {
            Some(next) => frame = next,
            None => break,
        }
        assert!(ours.stats().rounds < 100_000, "session does not end");
    }
    assert!(ours.is_done());
    Outcome {
        have,
        need,
        ours: ours.stats(),
        theirs: theirs.stats(),
    }
}

fn hashes(items: &Items) -> BTreeSet<Hash> {
    items.iter().map(|(_, h)| *h).collect()
}

#[test]
fn identical_sets_finish_in_one_round_with_no_difference() {
    let items = random_items(&mut StdRng::seed_from_u64(1), 10_000);
    let (_d1, a) = bare(&items);
    let (_d2, b) = bare(&items);
    let out = reconcile(a.view().unwrap(), b.view().unwrap(), FRAME_LIMIT);
    assert!(out.have.is_empty() && out.need.is_empty());
    assert_eq!(out.ours.rounds, 1);
    assert_eq!(out.ours.bytes_sent, out.theirs.bytes_received);
    assert_eq!(out.ours.bytes_received, out.theirs.bytes_sent);
}

#[test]
fn an_empty_side_needs_everything_and_a_full_side_has_everything() {
    let items = random_items(&mut StdRng::seed_from_u64(2), 20_000);
    let (_d1, full) = bare(&items);
    let (_d2, empty) = bare(&Items::new());
    let out = reconcile(empty.view().unwrap(), full.view().unwrap(), FRAME_LIMIT);
    assert_eq!((out.have, out.need), (BTreeSet::new(), hashes(&items)));
    let out = reconcile(full.view().unwrap(), empty.view().unwrap(), FRAME_LIMIT);
    assert_eq!((out.have, out.need), (hashes(&items), BTreeSet::new()));
}

#[test]
fn disjoint_sets_exchange_everything() {
    let mut rng = StdRng::seed_from_u64(3);
    let a = random_items(&mut rng, 5_000);
    let b = random_items(&mut rng, 7_000);
    let (_d1, ia) = bare(&a);
    let (_d2, ib) = bare(&b);
    for limit in [0, 4096, FRAME_LIMIT] {
        let out = reconcile(ia.view().unwrap(), ib.view().unwrap(), limit);
        assert_eq!(
            (&out.have, &out.need),
            (&hashes(&a), &hashes(&b)),
            "limit {limit}"
        );
    }
}

#[test]
fn a_frame_over_the_limit_is_refused_before_decoding() {
    let (_d, index) = bare(&random_items(&mut StdRng::seed_from_u64(4), 100));
    let mut responder = Session::responder(index.view().unwrap(), 4096).unwrap();
    let err = responder.step(&vec![0xff; 4097]).unwrap_err();
    assert!(matches!(
        err,
        ReconcileError::FrameTooLarge {
            len: 4097,
            limit: 4096
        }
    ));
    assert_eq!(responder.stats(), Stats::default());
    assert!(matches!(
        Session::responder(index.view().unwrap(), 4095),
        Err(ReconcileError::LimitTooSmall(4095))
    ));
}

#[test]
fn malformed_frames_are_refused_with_an_error() {
    let items = random_items(&mut StdRng::seed_from_u64(5), 1_000);
    let (_d, index) = bare(&items);
    let valid = Session::initiator(index.view().unwrap(), 0)
        .unwrap()
        .initiate()
        .unwrap();
    let mut bad_mode = vec![0x61, 0x00, 0x00, 0x07];
    bad_mode.extend([0; 16]);
    let long_id = [0x61, 0x01, 0x21];
    for frame in [
        &[][..],
        &[0x10][..],
        &valid[..valid.len() - 5],
        &bad_mode[..],
        &long_id[..],
    ] {
        let mut responder = Session::responder(index.view().unwrap(), FRAME_LIMIT).unwrap();
        assert!(
            matches!(responder.step(frame), Err(ReconcileError::Malformed(_))),
            "{frame:02x?} accepted"
        );
    }
    let mut initiator = Session::initiator(index.view().unwrap(), FRAME_LIMIT).unwrap();
    assert!(matches!(
        initiator.step(&valid),
        Err(ReconcileError::Misuse(_))
    ));
    initiator.initiate().unwrap();
    assert!(matches!(
        initiator.initiate(),
        Err(ReconcileError::Misuse(_))
    ));
    assert!(matches!(
        initiator.step(&[0x61, 0x00, 0x02, 0x05]),
        Err(ReconcileError::Malformed(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_frames_never_panic_a_session(frame in prop::collection::vec(any::<u8>(), 0..600)) {
        let (_d, index) = bare(&random_items(&mut StdRng::seed_from_u64(6), 300));
        let mut responder = Session::responder(index.view().unwrap(), FRAME_LIMIT).unwrap();
        let _ = responder.step(&frame);
        let mut framed = vec![0x61];
        framed.extend(&frame);
        let _ = responder.step(&framed);
        let mut initiator = Session::initiator(index.view().unwrap(), FRAME_LIMIT).unwrap();
        initiator.initiate().unwrap();
        let _ = initiator.step(&framed);
    }
}

#[test]
fn a_view_stays_consistent_while_items_are_inserted_after_it() {
    let mut rng = StdRng::seed_from_u64(7);
    let before = random_items(&mut rng, 9_000);
    let (_d1, index) = bare(&before);
    let view = index.view().unwrap();
    // Enough later items to split the blocks the view was taken with, many times over.
    let after = random_items(&mut rng, 6 * MAX_BLOCK_ITEMS);
    index.insert(after.iter().copied()).unwrap();
    index.remove(before.iter().take(500).copied()).unwrap();
    assert_eq!(view.len(), before.len() as u64);
    assert_same_storage(&view, &vector(&before));
    let (_d2, reference) = bare(&before);
    let out = reconcile(view, reference.view().unwrap(), FRAME_LIMIT);
    assert!(out.have.is_empty() && out.need.is_empty());

    let mut now = before.clone();
    now.extend(after.iter().copied());
    for item in before.iter().take(500) {
        now.remove(item);
    }
    assert_same_storage(&index.view().unwrap(), &vector(&now));
}

/// Checks that `view` answers every storage call as the crate's vector does.
fn assert_same_storage(view: &IndexView, reference: &NegentropyStorageVector) {
    let n = reference.size().unwrap();
    assert_eq!(view.size().unwrap(), n);
    let mut rng = StdRng::seed_from_u64(n as u64);
    let mut probes: Vec<usize> = (0..200).map(|_| rng.random_range(0..=n)).collect();
    probes.extend([0, n.saturating_sub(1), n]);
    for &i in &probes {
        assert_eq!(
            view.get_item(i).unwrap(),
            reference.get_item(i).unwrap(),
            "item {i}"
        );
        let j = rng.random_range(i..=n);
        assert_eq!(
            *view.fingerprint(i, j).unwrap(),
            *reference.fingerprint(i, j).unwrap(),
            "fingerprint {i}..{j}"
        );
        let mut seen = Vec::new();
        view.iterate(i, j, &mut |item, at| {
            seen.push((item, at));
            Ok(seen.len() < 50)
        })
        .unwrap();
        let mut expected = Vec::new();
        reference
            .iterate(i, j, &mut |item, at| {
                expected.push((item, at));
                Ok(expected.len() < 50)
            })
            .unwrap();
        assert_eq!(seen, expected, "iterate {i}..{j}");
        let probe = reference
            .get_item(i)
            .unwrap()
            .unwrap_or_else(|| negentropy::Item::with_timestamp(u64::MAX));
        let mut bounds = vec![
            Bound::from_item(&probe),
            Bound::with_timestamp(probe.timestamp),
        ];
        bounds.push(Bound::with_timestamp_and_id(probe.timestamp, &probe.id[..1]).unwrap());
        for bound in bounds {
            let (lo, hi) = (i / 2, (i + n).div_ceil(2));
            assert_eq!(
                view.find_lower_bound(lo, hi, &bound),
                reference.find_lower_bound(lo, hi, &bound),
                "lower bound of {bound:?} in {lo}..{hi}"
            );
        }
    }
    assert_eq!(view.digest(), *reference.fingerprint(0, n).unwrap());
    assert!(view.iterate(n, n + 1, &mut |_, _| Ok(true)).is_err());
}

#[test]
fn the_summary_follows_inserts_splits_and_removes() {
    let mut rng = StdRng::seed_from_u64(8);
    let (_d, index) = bare(&Items::new());
    let mut model = Items::new();
    assert_same_storage(&index.view().unwrap(), &vector(&model));
    for round in 0..6 {
        let add = random_items(&mut rng, 3_000 * (round + 1));
        index.insert(add.iter().copied()).unwrap();
        model.extend(add);
        let gone: Vec<_> = model
            .iter()
            .filter(|_| rng.random_bool(0.3))
            .copied()
            .collect();
        index.remove(gone.iter().copied()).unwrap();
        for g in &gone {
            model.remove(g);
        }
        assert_same_storage(&index.view().unwrap(), &vector(&model));
    }
    index.remove(model.iter().copied()).unwrap();
    assert!(index.view().unwrap().is_empty());
    assert_same_storage(&index.view().unwrap(), &vector(&Items::new()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4))]

    #[test]
    fn two_indexes_of_100k_converge_to_their_symmetric_difference(
        seed in any::<u64>(),
        only_a in 0usize..=1000,
        only_b in 0usize..=1000,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut all: Vec<_> = random_items(&mut rng, 100_000 + only_a + only_b)
            .into_iter()
            .collect();
        all.shuffle(&mut rng);
        let a_only: Items = all[..only_a].iter().copied().collect();
        let b_only: Items = all[only_a..only_a + only_b].iter().copied().collect();
        let a: Items = all.iter().filter(|i| !b_only.contains(i)).copied().collect();
        let b: Items = all.iter().filter(|i| !a_only.contains(i)).copied().collect();
        let (_d1, ia) = bare(&a);
        let (_d2, ib) = bare(&b);
        let out = reconcile(ia.view().unwrap(), ib.view().unwrap(), FRAME_LIMIT);
        eprintln!(
            "100k vs 100k, {} only here, {} only there: {} rounds, {} B sent, {} B received",
            only_a, only_b, out.ours.rounds, out.ours.bytes_sent, out.ours.bytes_received
        );
        prop_assert_eq!(out.have, hashes(&a_only));
        prop_assert_eq!(out.need, hashes(&b_only));
    }
}

fn create_op(hlc: Hlc, name: &str) -> Op {
    Op {
        hlc,
        body: crate::store::tests::create(name),
    }
}

/// A genesis admitting two writers, then one chain of `n` intentions per writer.
fn two_chains(n: usize) -> (StoreId, Identity, Intention, [Vec<Intention>; 2]) {
    let id = StoreId([7; 16]);
    let authors = [Identity::from_seed([1; 32]), Identity::from_seed([2; 32])];
    let mut wall = 1_000;
    let mut tick = || {
        wall += 1;
        Hlc {
            wall_ms: wall,
            counter: 0,
        }
    };
    let ops = crate::store::tests::grants(&authors, &mut tick);
    let genesis = Intention::create(&authors[0], id, None, vec![], ops).unwrap();
    let chains = std::array::from_fn(|k| {
        let mut chain: Vec<Intention> = Vec::new();
        for j in 0..n {
            // The founder's chain goes on from its genesis: a second root would be
            // equivocation.
            let first = (k == 0).then_some(genesis.hash);
            let prev = chain.last().map(|i| i.hash).or(first);
            let deps = vec![prev.unwrap_or(genesis.hash)];
            let op = create_op(tick(), &format!("a{k}-{j}"));
            chain.push(Intention::create(&authors[k], id, prev, deps, vec![op]).unwrap());
        }
        chain
    });
    let [founder, _] = authors;
    (id, founder, genesis, chains)
}

#[test]
fn stores_reconcile_the_intentions_they_applied() {
    let (id, founder, genesis, [x, y]) = two_chains(300);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let open = |k: usize| {
        let clock = Arc::new(Mutex::new(Clock::new(Hlc::ZERO)));
        let me = Identity::from_seed([10 + k as u8; 32]);
        Store::join(dirs[k].path(), id, founder.public(), me, clock).unwrap()
    };
    let (a, b) = (open(0), open(1));
    let apply = |s: &Store, items: &[Intention]| {
        for i in items {
            s.apply_remote(i.bytes.clone()).unwrap();
        }
    };
    apply(&a, std::slice::from_ref(&genesis));
    apply(&b, std::slice::from_ref(&genesis));
    apply(&a, &x);
    apply(&a, &y[..200]);
    apply(&b, &y);
    apply(&b, &x[..100]);
    let view = a.reconcile_view().unwrap();
    assert_eq!(view.len(), 1 + 300 + 200);
    let out = reconcile(view, b.reconcile_view().unwrap(), FRAME_LIMIT);
    let hashes = |items: &[Intention]| items.iter().map(|i| i.hash).collect::<BTreeSet<_>>();
    assert_eq!(out.have, hashes(&x[100..]));
    assert_eq!(out.need, hashes(&y[200..]));

    // Reopening rebuilds the summary with one scan of the index table.
    a.shutdown().unwrap();
    drop(a);
    let clock = Arc::new(Mutex::new(Clock::new(Hlc::ZERO)));
    let a = Store::open(dirs[0].path(), Identity::from_seed([10; 32]), clock).unwrap();
    apply(&a, &y[200..]);
    apply(&b, &x[100..]);
    let out = reconcile(
        a.reconcile_view().unwrap(),
        b.reconcile_view().unwrap(),
        FRAME_LIMIT,
    );
    assert!(out.have.is_empty() && out.need.is_empty());
    assert_eq!(
        a.reconcile_view().unwrap().digest(),
        b.reconcile_view().unwrap().digest()
    );
}
