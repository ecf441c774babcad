//! `lattice-bench sim --seeds N [--nodes M] [--from S] [--jobs J]`: runs the
//! deterministic simulator (`lattice_mount::sim`) on seeds S..S+N on J threads and
//! prints the seeds that failed (each replays alone with `SEED=n cargo test sim`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lattice_mount::sim::{run as simulate, Config, Outcome};

/// Seeds run when `--seeds` is not given.
const DEFAULT_SEEDS: u64 = 1000;

/// Parses the flags, runs the seeds, prints the failures; fails if any seed failed.
pub fn run(args: &[String]) -> Result<()> {
    let mut seeds = DEFAULT_SEEDS;
    let mut from = 0;
    let mut nodes = None;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n: u64 = value
            .parse()
            .with_context(|| format!("{flag} {value}: not a number"))?;
        match flag.as_str() {
            "--seeds" => seeds = n,
            "--from" => from = n,
            "--nodes" => nodes = Some(n as usize),
            "--jobs" => jobs = n.max(1) as usize,
            _ => bail!("usage: lattice-bench sim --seeds N [--nodes M] [--from S] [--jobs J]"),
        }
    }
    let next = Arc::new(AtomicU64::new(from));
    let end = from + seeds;
    let failed: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let started = Instant::now();
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, failed) = (next.clone(), failed.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= end {
                    return;
                }
                let outcome = simulate(&Config::new(seed, nodes));
                let line = outcome.to_string();
                println!("{}", line.lines().next().unwrap_or_default());
                if !outcome.passed() {
                    failed
                        .lock()
                        .expect("no worker panics while holding the list")
                        .push(outcome);
                }
            })
        })
        .collect();
    for w in workers {
        if w.join().is_err() {
            bail!("a simulator thread panicked");
        }
    }
    let mut failed = std::mem::take(&mut *failed.lock().expect("the workers are done"));
    failed.sort_by_key(|o| o.config.seed);
    for o in &failed {
        println!("\n{o}");
    }
    let seeds_failed: Vec<u64> = failed.iter().map(|o| o.config.seed).collect();
    println!(
        "\n{seeds} seeds in {:.1} s: {} failed {seeds_failed:?}",
        started.elapsed().as_secs_f64(),
        seeds_failed.len()
    );
    if !seeds_failed.is_empty() {
        bail!("failing seeds: {seeds_failed:?}");
    }
    Ok(())
}
