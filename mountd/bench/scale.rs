//! `lattice-bench scale [--files N] [--quick]`: the targets of issue 9 (bounded state).
//! Builds a tree of N files (default 100,000: 100 dirs of 1,000, one file in ten with a
//! line of content) through the mount of a real daemon and measures its memory (VmRSS),
//! data dir (du), restart, the create time of the tree's last files against a fresh
//! store's first (written alternately, on a second node), the disk a 64 MiB file's overwrites
//! leave (then after `retention 0` and `gc` when the binary has them), and a second node
//! cloning the store; beside Syncthing indexing the same tree in the same run when it is
//! installed. Prints one table: value, reference, ratio, target and pass mark.

use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::harness::{
    json_field, lattice_cli, pseudo_random, wait_for, wait_until, which, Node, Startup, Syncthing,
    SHARED,
};

/// Files in the tree by default (the 100 dirs x 1,000 files).
const DEFAULT_FILES: usize = 100_000;
/// Files in the tree with `--quick`: a run under two minutes.
const QUICK_FILES: usize = 5_000;
/// Files per directory.
const FILES_PER_DIR: usize = 1_000;
/// One file in this many gets a line of content (10,000 of 100,000); the rest are empty.
const WITH_CONTENT_EVERY: usize = 10;
/// Files in the early and the late window whose create times are compared.
const TIMED_FILES: usize = 1_000;
/// Files written at a time, alternating between the tree's last window and a fresh
/// store's first.
const TIMED_BLOCK: usize = 100;
/// Size of the large file written over and over.
const BIG_SIZE: usize = 64 << 20;
/// Times the large file is overwritten after it is first written.
const BIG_OVERWRITES: u64 = 10;
/// Size of each write call while writing the large file.
const WRITE_BLOCK: usize = 1 << 20;
/// Quiet time before a memory or disk reading: past the store's snapshot interval (5 s)
/// and durable commit interval (1 s), so the reading sees the state at rest.
const SETTLE: Duration = Duration::from_secs(6);
/// Longest wait for Syncthing's scan of the tree or for a clone to complete.
pub(crate) const LONG_WAIT: Duration = Duration::from_secs(30 * 60);
/// File count above which the million-file memory target applies.
const MILLION_FROM: usize = 1_000_000;
/// RSS above an empty daemon allowed with 100,000 files (issue 9), in MB.
const RSS_BUDGET_MB: f64 = 64.0;
/// RSS allowed with 1,000,000 files (issue 9), in MB.
const RSS_BUDGET_MILLION_MB: f64 = 150.0;
/// Longest restart allowed at 100,000 files (issue 9), in seconds.
const MAX_RESTART_S: f64 = 2.0;
/// Restarts timed after each phase: the medians are compared (the first restart after
/// writes also pays the kernel's eviction of its cached inodes, and the first `status`
/// of a start moves by ±50 ms), the slowest is held to [`MAX_RESTART_S`].
const RESTARTS: usize = 3;
/// Longest clone allowed of the 1,000,000-file store (issue 9), in seconds.
const MAX_CLONE_S: f64 = 60.0;
/// Bytes per MB in the table.
const MB: f64 = 1e6;

/// Runs the benchmark with `args` (`--files N`, `--quick`) and prints the table.
pub fn run(args: &[String]) -> Result<()> {
    let files = parse(args)?;
    let shm = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let syncthing = if which("syncthing") {
        eprintln!("syncthing: indexing {files} files");
        let r = measure_syncthing(shm, files);
        if let Err(e) = &r {
            eprintln!("syncthing failed: {e:#}");
        }
        r.ok()
    } else {
        eprintln!("syncthing not installed: no reference column (apt-get install syncthing)");
        None
    };
    eprintln!("lattice: {files} files");
    let lattice = measure_lattice(shm, files)?;
    // Syncthing idled through the lattice part: its memory at rest, minutes after the scan.
    let scan = match syncthing {
        Some((mut scan, st)) => {
            scan.rss_at_rest = rss(st.pid(0))?;
            Some(scan)
        }
        None => None,
    };
    print_table(files, &lattice, scan.as_ref());
    Ok(())
}

/// The file count the arguments ask for.
fn parse(args: &[String]) -> Result<usize> {
    let mut files = DEFAULT_FILES;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => files = QUICK_FILES,
            "--files" => {
                files = it
                    .next()
                    .ok_or_else(|| anyhow!("--files needs a number"))?
                    .parse()
                    .context("--files")?;
            }
            other => bail!("scale: unknown argument {other:?} (--files N, --quick)"),
        }
    }
    if files < 2 * TIMED_FILES {
        bail!("--files must be at least {}", 2 * TIMED_FILES);
    }
    Ok(files)
}

/// Path of file `i` of the tree under `root`.
fn tree_path(root: &Path, i: usize) -> PathBuf {
    root.join(format!("d{:04}", i / FILES_PER_DIR))
        .join(format!("f{:04}", i % FILES_PER_DIR))
}

/// Writes the tree of `files` files under `root`.
pub(crate) fn write_tree(root: &Path, files: usize) -> Result<()> {
    write_files(root, 0..files).map(drop)
}

/// Whether `root` shows exactly the tree of `files` files (hidden names aside), every
/// file with its content.
pub(crate) fn tree_complete(root: &Path, files: usize) -> Result<bool> {
    let dirs = files.div_ceil(FILES_PER_DIR);
    for d in 0..dirs {
        let Ok(entries) = fs::read_dir(root.join(format!("d{d:04}"))) else {
            return Ok(false);
        };
        let visible = entries
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count();
        if visible != FILES_PER_DIR.min(files - d * FILES_PER_DIR) {
            return Ok(false);
        }
    }
    for i in 0..files {
        let path = tree_path(root, i);
        let same = if i % WITH_CONTENT_EVERY == 0 {
            fs::read(&path).is_ok_and(|c| c == format!("line {i}\n").as_bytes())
        } else {
            fs::metadata(&path).is_ok_and(|m| m.len() == 0)
        };
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes files `range` of the tree under `root` (with their directories); returns how
/// long each file's create and write took.
fn write_files(root: &Path, range: Range<usize>) -> Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(range.len());
    for i in range {
        if i % FILES_PER_DIR == 0 {
            fs::create_dir(root.join(format!("d{:04}", i / FILES_PER_DIR)))?;
        }
        let path = tree_path(root, i);
        let t = Instant::now();
        let mut f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        if i % WITH_CONTENT_EVERY == 0 {
            writeln!(f, "line {i}")?;
        }
        drop(f);
        took.push(t.elapsed());
    }
    Ok(took)
}

/// Create times of the last [`TIMED_FILES`] files of the tree and of the first ones of a
/// fresh store.
struct Windows {
    /// The tree's last files, per file.
    last: Vec<Duration>,
    /// A fresh store's first files (on a second node), per file.
    fresh: Vec<Duration>,
    /// Wall time of the tree's last files.
    last_wall: Duration,
}

/// Writes the tree's last [`TIMED_FILES`] files under `store` in blocks of
/// [`TIMED_BLOCK`], each after a block of the first files of a fresh store on a second
/// node: both windows are measured on the machine as it is at that moment, so a slower
/// or busier spell of the machine falls on both.
fn write_last_beside_fresh(base: &Path, store: &Path, files: usize) -> Result<Windows> {
    let r = Node::up(base, "fresh")?;
    r.run(&["create", SHARED])?;
    let fresh = r.mnt.join(SHARED);
    wait_until("store directory in the fresh mount", || Ok(fresh.is_dir()))?;
    std::thread::sleep(SETTLE);
    let mut w = Windows {
        last: Vec::with_capacity(TIMED_FILES),
        fresh: Vec::with_capacity(TIMED_FILES),
        last_wall: Duration::ZERO,
    };
    for k in (0..TIMED_FILES).step_by(TIMED_BLOCK) {
        w.fresh.extend(write_files(&fresh, k..k + TIMED_BLOCK)?);
        let from = files - TIMED_FILES + k;
        let t = Instant::now();
        w.last.extend(write_files(store, from..from + TIMED_BLOCK)?);
        w.last_wall += t.elapsed();
    }
    let blocks: Vec<String> = w
        .fresh
        .chunks(TIMED_BLOCK)
        .zip(w.last.chunks(TIMED_BLOCK))
        .map(|(f, l)| format!("{:.0}/{:.0}", mean_us(f), mean_us(l)))
        .collect();
    eprintln!(
        "  create blocks of {TIMED_BLOCK}, fresh/last µs per file: {}",
        blocks.join(" ")
    );
    r.down()?;
    Ok(w)
}

/// Resident memory of process `pid` in bytes (VmRSS).
fn rss(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// Disk space used under `path` (allocated blocks, as `du` counts them).
fn du(path: &Path) -> Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            total += du(&entry?.path())?;
        }
    }
    Ok(total)
}

/// Mean of `d` in microseconds.
fn mean_us(d: &[Duration]) -> f64 {
    d.iter().map(Duration::as_secs_f64).sum::<f64>() / d.len().max(1) as f64 * 1e6
}

/// What Syncthing costs once it has indexed the tree.
struct SyncthingScan {
    /// Time from start to the folder idle with every file indexed.
    scan: Duration,
    /// Its RSS 6 s after the scan.
    rss: u64,
    /// Its RSS at the end of the run, having idled through the lattice part.
    rss_at_rest: u64,
    /// Size of its index database.
    index: u64,
}

/// Syncthing's scan of the tree; the instance is returned still running, idle.
fn measure_syncthing(shm: &str, files: usize) -> Result<(SyncthingScan, Syncthing)> {
    let st = Syncthing::start(shm, 1, |dir| write_tree(dir, files))?;
    let t = Instant::now();
    st.wait_in_sync(files as u64, LONG_WAIT)?;
    let scan = t.elapsed();
    std::thread::sleep(SETTLE);
    let home = &st.homes[0];
    let index = fs::read_dir(home)?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("index-"))
        .map_or_else(|| home.clone(), |e| e.path());
    let scan = SyncthingScan {
        scan,
        rss: rss(st.pid(0))?,
        rss_at_rest: 0,
        index: du(&index)?,
    };
    Ok((scan, st))
}

/// One restart: `down`, `up`, then the first `ls -l` of the store root and of a directory.
struct Restart {
    down: Duration,
    up: Duration,
    startup: Startup,
    ls_root: Duration,
    ls_dir: Duration,
}

impl Restart {
    fn total(&self) -> f64 {
        (self.down + self.up + self.ls_root + self.ls_dir).as_secs_f64()
    }
}

/// The restarts after one phase, in order.
struct Restarts(Vec<Restart>);

impl Restarts {
    /// The median total time.
    fn median(&self) -> f64 {
        let mut t: Vec<f64> = self.0.iter().map(Restart::total).collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    }

    /// The slowest total time.
    fn slowest(&self) -> f64 {
        self.0.iter().map(Restart::total).fold(0.0, f64::max)
    }
}

/// A second node joining and cloning the store.
struct Cloned {
    took: Duration,
    rss_a: u64,
    rss_b: u64,
}

/// The data dir growth of the large file's overwrites.
struct Big {
    growth: u64,
    /// After `retention 0` and `gc`; None when the binary has no such commands.
    after_gc: Option<u64>,
}

/// Everything measured on lattice.
struct Lattice {
    empty_rss: u64,
    tree_rss: u64,
    overwritten_rss: u64,
    overwrites: usize,
    tree_du: u64,
    overwritten_du: u64,
    build: Duration,
    /// The tree's first files, at the start of the run.
    early_us: f64,
    /// A fresh store's first files, alongside the tree's last.
    fresh_us: f64,
    last_us: f64,
    restart_tree: Restarts,
    restart_history: Restarts,
    clone: Result<Cloned>,
    big: Result<Big>,
}

fn measure_lattice(shm: &str, files: usize) -> Result<Lattice> {
    let tmp = tempfile::Builder::new()
        .prefix("lattice-bench-scale")
        .tempdir_in(shm)?;
    let base = tmp.path();
    let a = Node::up(base, "a")?;
    a.run(&["create", SHARED])?;
    let store = a.mnt.join(SHARED);
    wait_until("store directory in the mount", || Ok(store.is_dir()))?;
    std::thread::sleep(SETTLE);
    let empty_rss = rss(a.pid())?;

    let t = Instant::now();
    let early = write_files(&store, 0..files - TIMED_FILES)?;
    let head = t.elapsed();
    let windows = write_last_beside_fresh(base, &store, files)?;
    let build = head + windows.last_wall;
    eprintln!("  tree written: {:.1} s", build.as_secs_f64());
    std::thread::sleep(SETTLE);
    let tree_rss = rss(a.pid())?;
    let tree_du = du(&a.data)?;

    let (a, restart_tree) = restarts(a, base, files)?;
    eprintln!(
        "  restarts after the tree: {:.2} s (median)",
        restart_tree.median()
    );

    let overwrites = files / 2;
    let t = Instant::now();
    for k in 0..overwrites {
        fs::write(
            tree_path(&a.mnt.join(SHARED), k),
            format!("overwrite {k}\n"),
        )?;
    }
    eprintln!(
        "  {overwrites} overwrites: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(SETTLE);
    let overwritten_rss = rss(a.pid())?;
    let overwritten_du = du(&a.data)?;
    let (a, restart_history) = restarts(a, base, files)?;
    eprintln!(
        "  restarts after the overwrites: {:.2} s (median)",
        restart_history.median()
    );

    let clone = clone(&a, base);
    if let Err(e) = &clone {
        eprintln!("  clone failed: {e:#}");
    }
    let big = big_file(&a);
    if let Err(e) = &big {
        eprintln!("  large file step failed: {e:#}");
    }
    a.down()?;
    Ok(Lattice {
        empty_rss,
        tree_rss,
        overwritten_rss,
        overwrites,
        tree_du,
        overwritten_du,
        build,
        early_us: mean_us(&early[..TIMED_FILES]),
        fresh_us: mean_us(&windows.fresh),
        last_us: mean_us(&windows.last),
        restart_tree,
        restart_history,
        clone,
        big,
    })
}

/// [`RESTARTS`] restarts of `node`, one after the other.
fn restarts(mut node: Node, base: &Path, files: usize) -> Result<(Node, Restarts)> {
    let mut all = Vec::with_capacity(RESTARTS);
    for _ in 0..RESTARTS {
        let (next, r) = restart(node, base, files)?;
        node = next;
        all.push(r);
    }
    Ok((node, Restarts(all)))
}

/// Stops `node` and starts it again on the same data dir, then lists the store root and
/// its first directory (`ls -l`: every entry stat'ed), checking what they hold.
fn restart(node: Node, base: &Path, files: usize) -> Result<(Node, Restart)> {
    let t = Instant::now();
    node.down()?;
    let down = t.elapsed();
    let t = Instant::now();
    let node = Node::up(base, "a")?;
    let up = t.elapsed();
    let startup = node.startup;
    let root = node.mnt.join(SHARED);
    let t = Instant::now();
    let dirs = ls_l(&root)?;
    let ls_root = t.elapsed();
    let t = Instant::now();
    let first = ls_l(&root.join("d0000"))?;
    let ls_dir = t.elapsed();
    let want_dirs = files.div_ceil(FILES_PER_DIR);
    if dirs != want_dirs || first != files.min(FILES_PER_DIR) {
        bail!("after restart: {dirs} dirs (want {want_dirs}), {first} files in d0000");
    }
    Ok((
        node,
        Restart {
            down,
            up,
            startup,
            ls_root,
            ls_dir,
        },
    ))
}

/// Lists `dir` and stats every entry, as `ls -l` does; returns the entry count.
fn ls_l(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        fs::symlink_metadata(entry?.path())?;
        n += 1;
    }
    Ok(n)
}

/// Store `SHARED`'s intentions and files in one `status --json` of `node` (each
/// `status` counts the tree).
fn store_counts(node: &Node) -> Result<(u64, u64)> {
    let status = node.run(&["status", "--json"])?;
    let at = status
        .find(&format!("\"name\":\"{SHARED}\""))
        .ok_or_else(|| anyhow!("no store {SHARED} in status"))?;
    let count = |key: &str| -> Result<u64> {
        Ok(json_field(&status[at..], key)
            .ok_or_else(|| anyhow!("no {key} in status"))?
            .parse()?)
    };
    Ok((count("intentions")?, count("files")?))
}

/// Starts node b, joins the store from `a` and waits until b holds every intention and
/// file; b is stopped again afterwards.
fn clone(a: &Node, base: &Path) -> Result<Cloned> {
    let b = Node::up(base, "b")?;
    let (intentions, files) = store_counts(a)?;
    let t = Instant::now();
    b.join(a, SHARED)?;
    wait_for("the clone on node b", LONG_WAIT, || {
        Ok(store_counts(&b).is_ok_and(|(i, f)| i >= intentions && f == files))
    })?;
    let took = t.elapsed();
    // Like every memory reading here, after the quiet that lets the last commit, page
    // write and background measurement finish.
    std::thread::sleep(SETTLE);
    let r = Cloned {
        took,
        rss_a: rss(a.pid())?,
        rss_b: rss(b.pid())?,
    };
    eprintln!("  clone: {:.1} s", took.as_secs_f64());
    b.down()?;
    Ok(r)
}

/// Whether `lattice-mount` lists subcommand `name` in its help.
fn has_command(data: &Path, name: &str) -> Result<bool> {
    let out = lattice_cli(data).arg("--help").output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name)))
}

/// Writes a 64 MiB file and overwrites it BIG_OVERWRITES times with distinct content;
/// the data dir's growth, then again after `retention 0` and `gc` when available.
fn big_file(a: &Node) -> Result<Big> {
    let path = a.mnt.join(SHARED).join("big.bin");
    let before = du(&a.data)?;
    for v in 0..=BIG_OVERWRITES {
        let content = pseudo_random(BIG_SIZE, 0xb16 + v);
        let mut f = File::create(&path)?;
        for block in content.chunks(WRITE_BLOCK) {
            f.write_all(block)?;
        }
    }
    std::thread::sleep(SETTLE);
    let growth = du(&a.data)?.saturating_sub(before);
    eprintln!("  large file: data dir +{:.0} MB", growth as f64 / MB);
    let after_gc = if has_command(&a.data, "retention")? && has_command(&a.data, "gc")? {
        a.run(&["retention", SHARED, "0"])?;
        let freed = a.run(&["gc", SHARED])?;
        eprintln!("  gc: {}", freed.trim());
        std::thread::sleep(SETTLE);
        Some(du(&a.data)?.saturating_sub(before))
    } else {
        None
    };
    Ok(Big { growth, after_gc })
}

/// One table row.
struct Row {
    name: String,
    unit: &'static str,
    lattice: Option<f64>,
    reference: Option<f64>,
    /// What the ratio is of, and its value.
    ratio: Option<f64>,
    target: String,
    pass: Option<bool>,
}

impl Row {
    fn new(name: impl Into<String>, unit: &'static str, lattice: Option<f64>) -> Row {
        Row {
            name: name.into(),
            unit,
            lattice,
            reference: None,
            ratio: None,
            target: String::new(),
            pass: None,
        }
    }

    /// Sets the reference and the ratio lattice / reference.
    fn reference(mut self, r: Option<f64>) -> Row {
        self.reference = r;
        self.ratio = match (self.lattice, r) {
            (Some(l), Some(r)) if r > 0.0 => Some(l / r),
            _ => None,
        };
        self
    }

    /// Sets the ratio to one not against the reference column.
    fn ratio(mut self, r: Option<f64>) -> Row {
        self.ratio = r;
        self
    }

    /// Sets the target and whether it is met (None: not measurable in this run).
    fn target(mut self, t: impl Into<String>, pass: Option<bool>) -> Row {
        self.target = t.into();
        self.pass = pass;
        self
    }
}

fn print_table(files: usize, l: &Lattice, st: Option<&SyncthingScan>) {
    let mb = |b: u64| Some(b as f64 / MB);
    let secs = |d: Duration| Some(d.as_secs_f64());
    let budget = if files >= MILLION_FROM {
        RSS_BUDGET_MILLION_MB
    } else {
        RSS_BUDGET_MB
    };
    let above = (l.tree_rss as f64 - l.empty_rss as f64) / MB;
    let tree_vs_st = st.map(|s| l.tree_rss as f64 / s.rss_at_rest as f64);
    let du_vs_st = st.map(|s| l.tree_du as f64 / s.index as f64);
    let growth = l.overwritten_rss as f64 / l.tree_rss as f64;
    let history = l.restart_history.median() / l.restart_tree.median();
    let late = l.last_us / l.fresh_us;
    // The issue sets these targets for the 100,000-file tree: a larger one shows the
    // measurement against them but no verdict.
    let small = files < MILLION_FROM;
    let small_target = |text: &str, pass: Option<bool>| {
        if small {
            (text.to_owned(), pass)
        } else {
            (format!("({text} at 100,000 files)"), None)
        }
    };
    let (rss_vs_st, rss_vs_st_pass) = small_target("≤ 4 × Syncthing", tree_vs_st.map(|r| r <= 4.0));
    let (du, du_pass) = small_target("≤ 3 × Syncthing's index", du_vs_st.map(|r| r <= 3.0));
    let restart = format!("≤ {MAX_RESTART_S} s");
    let (restart_tree, restart_tree_pass) =
        small_target(&restart, Some(l.restart_tree.slowest() <= MAX_RESTART_S));
    let (restart_history, restart_history_pass) = if small {
        (
            format!("{restart}, same as before ±20%"),
            Some(l.restart_history.slowest() <= MAX_RESTART_S && history <= 1.2),
        )
    } else {
        ("same as before ±20%".to_owned(), Some(history <= 1.2))
    };
    let mut rows = vec![
        Row::new(
            format!("tree of {files} files written through the mount"),
            "s",
            secs(l.build),
        )
        .reference(st.map(|s| s.scan.as_secs_f64()))
        .target("(reference: Syncthing's first scan)", None),
        Row::new("daemon RSS, empty", "MB", mb(l.empty_rss)),
        Row::new("daemon RSS with the tree", "MB", mb(l.tree_rss))
            .reference(st.map(|s| s.rss as f64 / MB))
            .target("(reference: Syncthing 6 s after its scan)", None),
        Row::new(
            "daemon RSS with the tree, against Syncthing at rest",
            "MB",
            mb(l.tree_rss),
        )
        .reference(st.map(|s| s.rss_at_rest as f64 / MB))
        .target(rss_vs_st, rss_vs_st_pass),
        Row::new("RSS above the empty daemon", "MB", Some(above))
            .target(format!("≤ {budget:.0} MB"), Some(above <= budget)),
        Row::new(
            format!("RSS after {} overwrites", l.overwrites),
            "MB",
            mb(l.overwritten_rss),
        )
        .ratio(Some(growth))
        .target("within 25% of before", Some((growth - 1.0).abs() <= 0.25)),
        Row::new("data dir with the tree", "MB", mb(l.tree_du))
            .reference(st.map(|s| s.index as f64 / MB))
            .target(du, du_pass),
        Row::new("data dir after the overwrites", "MB", mb(l.overwritten_du))
            .ratio(Some(l.overwritten_du as f64 / l.tree_du as f64)),
        Row::new(
            format!("restart after the tree (down, up, first ls -l; median of {RESTARTS})"),
            "s",
            Some(l.restart_tree.median()),
        )
        .target(restart_tree, restart_tree_pass),
        Row::new(
            "restart after the overwrites (median)",
            "s",
            Some(l.restart_history.median()),
        )
        .ratio(Some(history))
        .target(restart_history, restart_history_pass),
        Row::new(
            "create + write, files 1..1000 at the start",
            "µs/file",
            Some(l.early_us),
        ),
        Row::new(
            "create + write, files 1..1000 of a fresh store",
            "µs/file",
            Some(l.fresh_us),
        )
        .target("(reference: alternating with the last 1000)", None),
        Row::new(
            "create + write, last 1000 files",
            "µs/file",
            Some(l.last_us),
        )
        .ratio(Some(late))
        .target("as fast as a fresh store's first (±20%)", Some(late <= 1.2)),
    ];
    let big_name =
        format!("64 MiB file written, then overwritten {BIG_OVERWRITES} times: data dir growth");
    match &l.big {
        Ok(big) => {
            rows.push(Row::new(big_name, "MB", mb(big.growth)));
            let limit = 2.0 * BIG_SIZE as f64 / MB;
            rows.push(match big.after_gc {
                Some(g) => Row::new("… then retention 0 and gc: growth", "MB", mb(g)).target(
                    format!("≤ {limit:.0} MB (2 × 64 MiB)"),
                    Some(g as f64 / MB <= limit),
                ),
                None => Row::new("… then retention 0 and gc", "MB", None)
                    .target("not available yet (no retention/gc command)", None),
            });
        }
        Err(_) => rows.push(Row::new(big_name, "MB", None).target("failed (see log)", None)),
    }
    match &l.clone {
        Ok(c) => {
            let bound = l.empty_rss as f64 / MB + budget;
            rows.push(
                Row::new("second node joins and clones the store", "s", secs(c.took)).target(
                    format!("≤ {MAX_CLONE_S:.0} s (1,000,000 files)"),
                    Some(c.took.as_secs_f64() <= MAX_CLONE_S),
                ),
            );
            for (who, r) in [("node A", c.rss_a), ("node B", c.rss_b)] {
                rows.push(
                    Row::new(format!("RSS after the clone, {who}"), "MB", mb(r)).target(
                        format!("≤ empty + {budget:.0} MB"),
                        Some(r as f64 / MB <= bound),
                    ),
                );
            }
        }
        Err(_) => rows.push(
            Row::new("second node joins and clones the store", "s", None)
                .target("failed (see log)", None),
        ),
    }

    let cell = |v: Option<f64>, digits: usize| v.map_or("n/a".into(), |v| format!("{v:.digits$}"));
    println!("| measurement | unit | lattice | Syncthing | ratio | target | |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.unit,
            cell(r.lattice, if r.unit == "s" { 2 } else { 1 }),
            cell(r.reference, if r.unit == "s" { 2 } else { 1 }),
            cell(r.ratio, 2),
            r.target,
            match r.pass {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "",
            }
        );
    }
    for (name, rs) in [
        ("after the tree", &l.restart_tree),
        ("after the overwrites", &l.restart_history),
    ] {
        for (k, r) in rs.0.iter().enumerate() {
            println!(
                "Restart {} {name}: {:.2} s: down {:.2} s, up {:.2} s (mounted after {:.3} s, \
                 `status` answered {:.3} s later), first ls -l of the store root {:.3} s, of a \
                 dir {:.3} s.",
                k + 1,
                r.total(),
                r.down.as_secs_f64(),
                r.up.as_secs_f64(),
                r.startup.mount.as_secs_f64(),
                r.startup.status.as_secs_f64(),
                r.ls_root.as_secs_f64(),
                r.ls_dir.as_secs_f64()
            );
        }
    }
    println!(
        "Ratios: lattice / Syncthing where there is a reference; otherwise after / before \
         (RSS, data dir, restart) or the last files / a fresh store's first (create time)."
    );
}
