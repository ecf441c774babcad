//! The simulator's seeds: `SEED=n cargo test sim` replays run `n` alone (`NODES=m`
//! overrides its node count); otherwise every seed of [`SEEDS`] runs, then every seed
//! that ever failed (`regressions.txt`).

use crate::sim::{run, Config, Outcome};

/// Seeds `cargo test` runs (plus the regressions), in two tests that run in parallel.
const SEEDS: u64 = 160;

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
        if outcome.new_failure() {
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

#[test]
fn sim_replays_a_seed_exactly() {
    let seed = env_u64("SEED").unwrap_or(7);
    let a = run(&Config::new(seed, None));
    let b = run(&Config::new(seed, None));
    assert_eq!(a.nodes, b.nodes);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.acked, b.acked);
}
