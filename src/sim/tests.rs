//! The simulator's seeds: `SEED=n cargo test sim` replays run `n` alone (`NODES=m`
//! overrides its node count); otherwise every seed of [`SEEDS`] runs, then every seed
//! that ever failed (`regressions.txt`).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::cas::Content;
use crate::fs::op::{Kind, Role};
use crate::fs::FsError;
use crate::ids::{OpId, StoreId};
use crate::intention::Intention;
use crate::sim::node::Node;
use crate::sim::{run, Config, Outcome};

/// Seeds `cargo test` runs (plus the regressions), in two tests that run in parallel:
/// with them every sim test took 98 s in debug on 2 busy cores (load 4).
const SEEDS: u64 = 300;

/// Seeds that once failed, one per line (`#` starts a comment): kept forever.
const REGRESSIONS: &str = include_str!("regressions.txt");

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `seeds`, prints every outcome, and fails with the failing ones.
fn run_all(seeds: impl IntoIterator<Item = u64>) {
    let nodes = env_u64("NODES").map(|n| n as usize);
    let mut failed: Vec<Outcome> = Vec::new();
    for seed in seeds {
        let outcome = run(&Config::new(seed, nodes));
        println!("{outcome}");
        if !outcome.passed() {
            failed.push(outcome);
        }
    }
    let report: Vec<String> = failed.iter().map(|o| o.to_string()).collect();
    assert!(
        failed.is_empty(),
        "failing seeds {:?}:\n{}",
        failed.iter().map(|o| o.config.seed).collect::<Vec<_>>(),
        report.join("\n")
    );
}

fn regressions() -> Vec<u64> {
    REGRESSIONS
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().expect("regressions.txt holds one seed per line"))
        .collect()
}

/// The seeds of one half of the default run, or the one `SEED`, or `SEEDS` from
/// `SEEDS_FROM`.
fn seeds(half: u64) -> Vec<u64> {
    if let Some(seed) = env_u64("SEED") {
        return if half == 0 { vec![seed] } else { Vec::new() };
    }
    let from = env_u64("SEEDS_FROM").unwrap_or(0);
    let count = env_u64("SEEDS").unwrap_or(SEEDS);
    (from..from + count).filter(|s| s % 2 == half).collect()
}

#[test]
fn sim_even_seeds_converge_without_losing_acknowledged_writes() {
    run_all(seeds(0));
}

#[test]
fn sim_odd_seeds_converge_without_losing_acknowledged_writes() {
    run_all(seeds(1));
}

#[test]
fn sim_seeds_that_once_failed_pass() {
    if env_u64("SEED").is_none() {
        run_all(regressions());
    }
}

/// Seeds `sim_replays_a_seed_exactly` runs twice: both transports, and direct-mode
/// seeds whose syncs are cut short after a few of many pulls, which replayed
/// differently while negentropy's `need` came in `HashSet` order (11, 359).
const REPLAY_SEEDS: [u64; 5] = [7, 8, 10, 11, 359];

#[test]
fn sim_replays_a_seed_exactly() {
    // Both runs share this process, but every `HashMap` and `HashSet` gets its own
    // random keys, so an iteration order that reaches the run shows here too.
    let seeds = env_u64("SEED").map_or(REPLAY_SEEDS.to_vec(), |s| vec![s]);
    for seed in seeds {
        let a = run(&Config::new(seed, None));
        let b = run(&Config::new(seed, None));
        assert!(a == b, "seed {seed} replayed differently:\n{a}\n{b}");
    }
}

/// A node with its store founded in `dir`, on virtual time `now`, `skew` ms off.
fn founded(dir: &std::path::Path, seed: u8, skew: i64, now: &Arc<AtomicU64>) -> Node {
    let mut node = Node::new(
        format!("t{seed}"),
        [seed; 32],
        dir.join(format!("t{seed}")),
        skew,
        now.clone(),
    );
    node.found(StoreId([7; 16]))
        .expect("a fresh dir takes a store");
    node
}

/// Creates file `name` in the root of `node`'s store.
fn create(node: &Node, name: &str) {
    let store = node.store.as_ref().expect("the node is up");
    store
        .write(|tx| {
            let body = tx.state().plan_create(
                OpId::ROOT,
                name,
                Kind::File,
                0o644,
                0,
                0,
                0,
                Content::empty(),
                0,
            )?;
            tx.push(body).map_err(FsError::from)?;
            Ok(())
        })
        .expect("the founder may write");
}

fn has(node: &Node, name: &str) -> bool {
    let store = node.store.as_ref().expect("the node is up");
    store.read(|st| st.lookup(OpId::ROOT, name).is_ok())
}

#[test]
fn a_crash_keeps_what_was_flushed_and_loses_what_was_only_committed() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(0));
    let mut node = founded(dir.path(), 1, 0, &now);
    create(&node, "durable");
    node.store.as_ref().unwrap().flush().unwrap();
    create(&node, "committed");
    // Any request makes the actor seal and commit the queued op, non-durably.
    node.store.as_ref().unwrap().missing(1).unwrap();
    assert!(has(&node, "committed"));
    node.crash();
    node.restart().unwrap();
    assert!(has(&node, "durable"));
    assert!(!has(&node, "committed"));
}

#[test]
fn a_reopened_store_stamps_local_ops_after_the_remote_ones_it_applied() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(0));
    let ahead = founded(dir.path(), 2, 30_000, &now);
    let mut behind = Node::new(
        "b".into(),
        [3; 32],
        dir.path().join("b"),
        -30_000,
        now.clone(),
    );
    let a = ahead.store.as_ref().unwrap();
    let secret = [9; 32];
    a.record_invite(secret, Role::Writer, ahead.wall_ms() + 60_000)
        .unwrap();
    a.redeem_invite(&secret, behind.key, "b", ahead.wall_ms())
        .unwrap();
    create(&ahead, "x");
    a.flush().unwrap();
    let log = a.witness(1, usize::MAX).unwrap().intentions;
    let newest = log
        .iter()
        .filter_map(|b| Intention::peek(b).map(|(hlc, _)| hlc))
        .max()
        .unwrap();
    behind.join(StoreId([7; 16]), ahead.key).unwrap();
    for outcome in behind.store.as_ref().unwrap().apply_remote_many(log) {
        outcome.unwrap();
    }
    behind.store.as_ref().unwrap().flush().unwrap();
    behind.crash();
    behind.restart().unwrap();
    create(&behind, "y");
    behind.store.as_ref().unwrap().flush().unwrap();
    let sealed = behind.sealed();
    let (stamp, _) = Intention::peek(&sealed[0]).unwrap();
    assert!(stamp > newest, "{stamp:?} is not after {newest:?}");
}
