//! `lattice-bench local`: filesystem throughput of a lattice mount, measured in the same
//! run against a native tmpfs directory and (when `bindfs` is installed) a libfuse
//! passthrough over that tmpfs. Prints each result and the mount's ratio to each reference.
//! `lattice-bench sync`: see `sync.rs`. `lattice-bench sim`: see `sim.rs`.
//! `lattice-bench scale`: see `scale.rs`.

mod harness;
mod scale;
mod sim;
mod sync;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use harness::{which, Busy};

mod reconcile;

/// Bytes written and read sequentially.
const SEQ_BYTES: u64 = 1 << 30;
/// Size of each sequential write or read call.
const SEQ_BLOCK: usize = 1 << 20;
/// Number of 4 KiB random reads.
const RANDOM_READS: usize = 50_000;
/// Files created, stat'ed and unlinked.
const FILES: usize = 10_000;

struct Row {
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    values: Vec<Option<f64>>,
    /// Core-seconds the machine was busy during each measurement of `values`.
    cpu: Vec<f64>,
}

impl Row {
    /// A row with no measurements yet.
    fn new(name: &'static str, unit: &'static str, higher_is_better: bool) -> Row {
        Row {
            name,
            unit,
            higher_is_better,
            values: vec![],
            cpu: vec![],
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    harness::report_daemon()?;
    match args.first().map(String::as_str) {
        Some("local") => local(),
        Some("sync") => sync::run(),
        Some("reconcile") => reconcile::run(&args[1..]),
        Some("sim") => sim::run(&args[1..]),
        Some("scale") => scale::run(&args[1..]),
        _ => bail!(
            "usage: cargo run --release --features bench --bin lattice-bench -- \
             local | sync | reconcile [ITEMS] | sim --seeds N [--nodes M] | \
             scale [--files N] [--quick]"
        ),
    }
}

/// The local filesystem benchmark.
fn local() -> Result<()> {
    let base = tempfile::Builder::new()
        .prefix("lattice-bench")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })?;
    let native = base.path().join("native");
    fs::create_dir(&native)?;

    let mut targets: Vec<(&str, PathBuf)> = vec![("tmpfs", native.clone())];
    // bindfs as shipped (page-sized writes) and with direct_io (large writes, no page cache).
    let mut bindfs_mounts = Vec::new();
    if which("bindfs") {
        for (name, opts) in [
            ("bindfs", &[][..]),
            ("bindfs-dio", &["-o", "direct_io"][..]),
        ] {
            let src = base.path().join(format!("{name}-src"));
            let dir = base.path().join(name);
            fs::create_dir(&src)?;
            fs::create_dir(&dir)?;
            if Command::new("bindfs")
                .args(opts)
                .arg(&src)
                .arg(&dir)
                .status()?
                .success()
            {
                targets.push((name, dir.clone()));
                bindfs_mounts.push(Unmount(dir));
            }
        }
    } else {
        eprintln!(
            "bindfs not installed: no libfuse passthrough reference (apt-get install bindfs)"
        );
    }

    let data = base.path().join("lattice-data");
    let mnt = base.path().join("lattice-mnt");
    let daemon = Daemon::start(&data, &mnt)?;
    fs::create_dir(mnt.join("bench")).context("creating a store in the mount")?;
    // `measure` writes its local-only rows under `local/`, which this keeps off the store.
    fs::write(mnt.join("bench").join(".latticeignore"), "local/\n")?;
    targets.push(("lattice", mnt.join("bench")));

    let mut rows = vec![
        Row::new("seq write 1 GiB", "MB/s", true),
        Row::new("seq read 1 GiB, cold", "MB/s", true),
        Row::new("seq write 1 GiB, local-only", "MB/s", true),
        Row::new("seq read 1 GiB, cold, local-only", "MB/s", true),
        Row::new("random 4 KiB reads", "ops/s", true),
        Row::new("create 10,000 files", "ops/s", true),
        Row::new("stat 10,000 files", "ops/s", true),
        Row::new("ls -l 10,000 entries", "ms", false),
        Row::new("unlink 10,000 files", "ops/s", true),
    ];
    for (name, dir) in &targets {
        eprintln!("measuring {name} at {}", dir.display());
        let r = measure(dir).with_context(|| format!("measuring {name}"))?;
        for (row, (v, cpu)) in rows.iter_mut().zip(r) {
            row.values.push(Some(v));
            row.cpu.push(cpu);
        }
    }
    let passthrough = daemon.passthrough();
    drop(daemon);
    drop(bindfs_mounts);

    let names: Vec<&str> = targets.iter().map(|t| t.0).collect();
    print!("| benchmark | unit |");
    for n in &names {
        print!(" {n} |");
    }
    for n in &names[..names.len() - 1] {
        print!(" lattice / {n} |");
    }
    println!();
    println!("|{}", "---|".repeat(2 + names.len() * 2 - 1));
    for row in &rows {
        print!("| {} | {} |", row.name, row.unit);
        for v in &row.values {
            print!(" {} |", v.map_or("-".into(), |v| format!("{v:.0}")));
        }
        let ours = row.values.last().copied().flatten();
        for v in &row.values[..row.values.len() - 1] {
            let ratio = match (ours, v) {
                (Some(o), Some(r)) if row.higher_is_better => format!("{:.2}", o / r),
                (Some(o), Some(r)) => format!("{:.2}", r / o),
                _ => "-".into(),
            };
            print!(" {ratio} |");
        }
        println!();
    }
    println!("\n(ratio > 1 means lattice is faster; for ls -l the ratio is reference time / lattice time)");
    println!(
        "\nCPU: core-seconds all {} cores of the machine spent busy during each row (from \
         /proc/stat; every process and the kernel)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    print!("| benchmark |");
    for n in &names {
        print!(" {n} |");
    }
    println!();
    println!("|{}", "---|".repeat(1 + names.len()));
    for row in &rows {
        print!("| {} |", row.name);
        for c in &row.cpu {
            print!(" {c:.2} |");
        }
        println!();
    }
    println!("lattice's local-only rows ran with passthrough {passthrough}");
    Ok(())
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// A row's value and the core-seconds the machine was busy while it was measured.
type Measured = (f64, f64);

/// Runs every workload in `dir`; returns the row values in order.
fn measure(dir: &Path) -> Result<Vec<Measured>> {
    let big = dir.join("big.bin");
    let (write, read, f) = write_and_read(&big)?;
    let mut buf = [0u8; 4096];
    let blocks = SEQ_BYTES / 4096;
    let (t, c) = (Instant::now(), Busy::now()?);
    for i in 0..RANDOM_READS as u64 {
        let b = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % blocks;
        f.read_exact_at(&mut buf, b * 4096)?;
    }
    let random = (RANDOM_READS as f64 / secs(t), c.since()?);
    drop(f);
    fs::remove_file(&big)?;

    // Under `local/`, which the lattice store's ignore rules keep on this node.
    let local = dir.join("local");
    fs::create_dir(&local)?;
    let (local_write, local_read, _) = write_and_read(&local.join("big.bin"))?;
    fs::remove_dir_all(&local)?;

    let many = dir.join("many");
    fs::create_dir(&many)?;
    let names: Vec<PathBuf> = (0..FILES).map(|i| many.join(format!("f{i:05}"))).collect();
    let (t, c) = (Instant::now(), Busy::now()?);
    for n in &names {
        OpenOptions::new().write(true).create_new(true).open(n)?;
    }
    let create = (FILES as f64 / secs(t), c.since()?);
    let (t, c) = (Instant::now(), Busy::now()?);
    for n in &names {
        fs::metadata(n)?;
    }
    let stat = (FILES as f64 / secs(t), c.since()?);
    let (t, c) = (Instant::now(), Busy::now()?);
    let out = Command::new("ls")
        .arg("-l")
        .arg(&many)
        .stdout(Stdio::piped())
        .output()?;
    let ls_ms = (secs(t) * 1000.0, c.since()?);
    let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
    if lines != FILES + 1 {
        bail!("ls -l listed {lines} lines, expected {}", FILES + 1);
    }
    let (t, c) = (Instant::now(), Busy::now()?);
    for n in &names {
        fs::remove_file(n)?;
    }
    let unlink = (FILES as f64 / secs(t), c.since()?);
    fs::remove_dir(&many)?;
    Ok(vec![
        write,
        read,
        local_write,
        local_read,
        random,
        create,
        stat,
        ls_ms,
        unlink,
    ])
}

/// Writes `SEQ_BYTES` to a new file at `path`, then reads it whole after dropping the
/// kernel's page cache; both rates in MB/s with the core-seconds the machine was busy
/// meanwhile, and the file, open.
fn write_and_read(path: &Path) -> Result<(Measured, Measured, File)> {
    let mut block = vec![0u8; SEQ_BLOCK];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let (t, c) = (Instant::now(), Busy::now()?);
    let mut f = File::create(path)?;
    for i in 0..SEQ_BYTES / SEQ_BLOCK as u64 {
        // Vary each block so content-addressed storage cannot deduplicate the file away.
        block[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&block)?;
    }
    drop(f);
    let write = (SEQ_BYTES as f64 / 1e6 / secs(t), c.since()?);

    // Cold read: drop the kernel's page cache first (root only; tmpfs keeps its pages,
    // FUSE mounts lose theirs), so the mount's own read path is what is measured.
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    let (t, c) = (Instant::now(), Busy::now()?);
    let mut f = File::open(path)?;
    let mut total = 0u64;
    loop {
        let n = f.read(&mut block)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    if total != SEQ_BYTES {
        bail!("read {total} bytes, expected {SEQ_BYTES}");
    }
    Ok((write, (SEQ_BYTES as f64 / 1e6 / secs(t), c.since()?), f))
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
    }
}

struct Daemon {
    child: Child,
    data: PathBuf,
    mnt: PathBuf,
}

impl Daemon {
    /// The daemon's passthrough mode, as its `status` says it.
    fn passthrough(&self) -> String {
        let status = harness::lattice_cli(&self.data)
            .arg("status")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("passthrough "))
            .unwrap_or("unknown (status gave no passthrough line)")
            .to_string()
    }

    fn start(data: &Path, mnt: &Path) -> Result<Daemon> {
        let child = harness::lattice_cli(data)
            .args(["up", "--relay", "disabled", "--bind", "127.0.0.1:0"])
            .arg(mnt)
            .stdin(Stdio::null())
            .spawn()
            .context("starting lattice-mount")?;
        let d = Daemon {
            child,
            data: data.to_owned(),
            mnt: mnt.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if harness::is_lattice_mount(mnt) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("lattice-mount did not mount within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = harness::lattice_cli(&self.data).arg("down").status();
        let _ = self.child.wait();
        if harness::is_lattice_mount(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .status();
        }
    }
}
