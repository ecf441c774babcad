//! `lattice-bench reconcile [ITEMS]`: negentropy reconciliation cost over the redb
//! index view, measured in the same run against the crate's in-memory
//! `NegentropyStorageVector` holding the same items. Two cases, ITEMS (default
//! 1,000,000) against ITEMS + 10 and against ITEMS - 100,000, at several frame limits;
//! prints rounds, bytes each way, wall time and the view's time ratio to the vector.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use lattice_mount::{BareIndex, Hash, ReconcileStorage, Session};
use negentropy::{Id, NegentropyStorageVector};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Default number of items on the initiator's side.
const ITEMS: usize = 1_000_000;
/// Frame limits measured; 0 is unbounded.
const LIMITS: [usize; 5] = [0, 16 << 10, 60 << 10, 256 << 10, 1 << 20];

type Items = Vec<(u64, Hash)>;

/// One finished session: what it cost and how many differences it found.
struct Run {
    rounds: u32,
    sent: u64,
    received: u64,
    secs: f64,
    diffs: usize,
}

/// Runs `lattice-bench reconcile`.
pub fn run(args: &[String]) -> Result<()> {
    let n = match args.first() {
        Some(a) => a.parse().context("ITEMS must be a number")?,
        None => ITEMS,
    };
    let (ours, plus) = item_sets(n);
    let minus: Items = plus[..n - n / 10].to_vec();

    let dir = tempfile::Builder::new()
        .prefix("lattice-bench-reconcile")
        .tempdir()?;
    let index = |name: &str, items: &Items| -> Result<(BareIndex, NegentropyStorageVector)> {
        let t = Instant::now();
        let idx = BareIndex::create(&dir.path().join(name))?;
        idx.insert(items.iter().copied())?;
        let mut v = NegentropyStorageVector::with_capacity(items.len());
        for (ms, h) in items {
            v.insert(*ms, Id::from_byte_array(h.0))?;
        }
        v.seal()?;
        eprintln!(
            "built {name}: {} items in {:.1} s",
            items.len(),
            t.elapsed().as_secs_f64()
        );
        Ok((idx, v))
    };
    let a = index("a.redb", &ours)?;
    let cases = [
        (format!("{n} vs {n}+10"), index("plus.redb", &plus)?, 10),
        (
            format!("{n} vs {n}-{}", n / 10),
            index("minus.redb", &minus)?,
            n / 10,
        ),
    ];

    println!(
        "| case | frame limit | rounds | bytes out | bytes in | redb view s | vector s | ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, b, diffs) in &cases {
        for limit in LIMITS {
            let view = session(a.0.view()?, b.0.view()?, limit)?;
            let vector = session(a.1.clone(), b.1.clone(), limit)?;
            ensure!(
                view.diffs == *diffs && vector.diffs == *diffs,
                "wrong difference"
            );
            ensure!(view.rounds == vector.rounds && view.sent == vector.sent);
            let shown = match limit {
                0 => "unbounded".to_owned(),
                l => format!("{} KiB", l >> 10),
            };
            println!(
                "| {name} | {shown} | {} | {} | {} | {:.3} | {:.3} | {:.1} |",
                view.rounds,
                view.sent,
                view.received,
                view.secs,
                vector.secs,
                view.secs / vector.secs
            );
        }
    }
    Ok(())
}

/// `n` random items and the same plus 10 more (both shuffled alike).
fn item_sets(n: usize) -> (Items, Items) {
    let mut rng = StdRng::seed_from_u64(0x6e65_6765);
    let start = 1_700_000_000_000u64;
    // About four intentions per millisecond, a busy store's pace.
    let mut plus: Items = (0..n + 10)
        .map(|i| (start + i as u64 / 4, Hash(rng.random())))
        .collect();
    plus.shuffle(&mut rng);
    (plus[..n].to_vec(), plus)
}

/// Rounds and bytes (both ways) to reconcile `n` against `n + 10` items over redb
/// index views at the protocol's `FRAME_LIMIT`.
pub fn plus_ten(n: usize) -> Result<(u32, u64)> {
    let (ours, plus) = item_sets(n);
    let dir = tempfile::Builder::new()
        .prefix("lattice-bench-reconcile")
        .tempdir()?;
    let a = BareIndex::create(&dir.path().join("a.redb"))?;
    a.insert(ours)?;
    let b = BareIndex::create(&dir.path().join("b.redb"))?;
    b.insert(plus)?;
    let run = session(a.view()?, b.view()?, lattice_mount::FRAME_LIMIT)?;
    ensure!(run.diffs == 10, "wrong difference");
    Ok((run.rounds, run.sent + run.received))
}

/// Reconciles initiator `a` with responder `b` in one thread.
fn session<S: ReconcileStorage>(a: S, b: S, limit: usize) -> Result<Run> {
    let t = Instant::now();
    let mut ours = Session::initiator(a, limit)?;
    let mut theirs = Session::responder(b, limit)?;
    let mut diffs = BTreeSet::new();
    let mut frame = ours.initiate()?;
    loop {
        let reply = theirs.step(&frame)?.reply.context("responder ended")?;
        let step = ours.step(&reply)?;
        diffs.extend(step.have.into_iter().chain(step.need));
        match step.reply {
            Some(next) => frame = next,
            None => break,
        }
    }
    let stats = ours.stats();
    Ok(Run {
        rounds: stats.rounds,
        sent: stats.bytes_sent,
        received: stats.bytes_received,
        secs: t.elapsed().as_secs_f64(),
        diffs: diffs.len(),
    })
}
