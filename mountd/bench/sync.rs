//! `lattice-bench sync`: how long until work done on node A is readable on node B, and
//! what a 1-byte edit costs on the wire, for two lattice daemons and, in the same run, two
//! Syncthing instances (when installed); then the same with three devices (the swarm
//! rows): a large file reaching two others at once, and a tree reaching a new member.
//! Everything runs on loopback inside a private network namespace, so the loopback
//! counters count this benchmark's traffic alone.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use iroh::endpoint::presets;
use iroh::{Endpoint, RelayMode};

use crate::harness::{
    pseudo_random, wait_for, wait_until, which, Busy, Node, Syncthing, SHARED, WAIT,
};
use crate::scale::{tree_complete, write_tree, LONG_WAIT};

/// Small files copied in the first workload.
const SMALL_FILES: usize = 1_000;
/// Size of each small file.
const SMALL_SIZE: usize = 4096;
/// Size of the large file.
const BIG_SIZE: usize = 256 << 20;
/// Size of each write call while writing the large file.
const WRITE_BLOCK: usize = 1 << 20;
/// Quiet time before and after the edit, so the byte count holds the edit's traffic only.
const SETTLE: Duration = Duration::from_secs(2);
/// Files of the tree that reaches a new member in the swarm rows.
const TREE_FILES: usize = 100_000;

/// What one system achieved with three devices.
struct Swarm {
    /// From the first write of the large file on A until B and C both read it back.
    big: Duration,
    /// Core-seconds the machine was busy meanwhile.
    big_cpu: f64,
    /// From starting C, a new member, until it shows the tree A and B hold.
    tree: Duration,
}

/// What one system achieved on the three workloads.
struct Measured {
    small: Duration,
    big: Duration,
    edit: Duration,
    /// Core-seconds the machine was busy during `small`, `big` and `edit`.
    cpu: [f64; 3],
    /// Bytes sent over loopback during the edit, both directions, IP packets.
    edit_wire: Option<u64>,
    /// Bytes the system itself counted on its connections during the edit.
    edit_own: Option<u64>,
}

/// One table row: a value per system (syncthing, lattice), lower is better.
struct Row {
    name: &'static str,
    unit: &'static str,
    values: [Option<f64>; 2],
}

/// Runs the benchmark and prints the table.
pub fn run() -> Result<()> {
    let private = private_netns()?;
    let shm = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let small: Vec<Vec<u8>> = (0..SMALL_FILES)
        .map(|i| pseudo_random(SMALL_SIZE, i as u64 + 1))
        .collect();
    let big = pseudo_random(BIG_SIZE, 0xb16);
    let data = Workload {
        small: &small,
        big,
        lo: private,
    };

    let syncthing = if which("syncthing") {
        eprintln!("measuring syncthing");
        Some(measure_syncthing(shm, &data))
    } else {
        eprintln!("syncthing not installed: no reference column (apt-get install syncthing)");
        None
    };
    eprintln!("measuring lattice");
    let lattice = measure_lattice(shm, &data);
    eprintln!("measuring one QUIC stream");
    let stream = one_stream(&data.big);
    let syncthing_swarm = which("syncthing").then(|| {
        eprintln!("measuring a swarm of three syncthing instances");
        measure_syncthing_swarm(shm, &data.big)
    });
    eprintln!("measuring a swarm of three lattice nodes");
    let lattice_swarm = measure_lattice_swarm(shm, &data.big);

    let both = [measured(&syncthing), lattice.as_ref().ok()];
    let swarms = [measured(&syncthing_swarm), lattice_swarm.as_ref().ok()];
    let swarm_secs = |f: fn(&Swarm) -> Duration| swarms.map(|m| m.map(|m| f(m).as_secs_f64()));
    let secs = |f: fn(&Measured) -> Duration| both.map(|m| m.map(|m| f(m).as_secs_f64()));
    let cpu = |i: usize| both.map(|m| m.map(|m| m.cpu[i]));
    let mut rows: Vec<Row> = [
        (
            "1,000 × 4 KiB files written on A, readable on B",
            "s",
            secs(|m| m.small),
        ),
        (
            "256 MiB file written on A, readable on B",
            "s",
            secs(|m| m.big),
        ),
        (
            "1-byte pwrite in its middle, readable on B",
            "s",
            secs(|m| m.edit),
        ),
        (
            "1-byte edit: bytes on the wire",
            "KB",
            both.map(|m| m.and_then(|m| m.edit_wire).map(|b| b as f64 / 1e3)),
        ),
        (
            "swarm of 3: 256 MiB file written on A, readable on B and C",
            "s",
            swarm_secs(|m| m.big),
        ),
        (
            "swarm of 3: 100,000-file tree on A and B, readable on C joining",
            "s",
            swarm_secs(|m| m.tree),
        ),
        (
            "one QUIC stream on loopback, 256 MiB (iroh alone: no store, no files)",
            "s",
            [None, stream.as_ref().ok().map(|s| s.0.as_secs_f64())],
        ),
        ("CPU: 1,000 × 4 KiB files", "core-s", cpu(0)),
        ("CPU: 256 MiB file", "core-s", cpu(1)),
        ("CPU: 1-byte pwrite", "core-s", cpu(2)),
        (
            "CPU: swarm of 3, 256 MiB file",
            "core-s",
            swarms.map(|m| m.map(|m| m.big_cpu)),
        ),
        (
            "CPU: one QUIC stream, 256 MiB",
            "core-s",
            [None, stream.as_ref().ok().map(|s| s.1)],
        ),
    ]
    .into_iter()
    .map(|(name, unit, values)| Row { name, unit, values })
    .collect();
    rows.extend(negentropy_rows());
    print_table(&rows);
    if let Some(own) = measured(&syncthing).and_then(|m| m.edit_own) {
        println!(
            "Syncthing's own connection counters for the edit: {:.1} KB.",
            own as f64 / 1e3
        );
    }
    println!(
        "CPU: time all {} cores of the machine spent busy during the row (from /proc/stat; \
         cores × seconds is the ceiling).",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{}",
        if private {
            "Bytes on the wire: loopback tx bytes of a private network namespace (both \
             directions, IP headers included) from just before the edit to 2 s after B read it."
        } else {
            "Bytes on the wire: n/a (no private network namespace; needs root)."
        }
    );

    let errors = [
        ("syncthing", syncthing.and_then(|r| r.err())),
        ("lattice", lattice.err()),
        ("one QUIC stream", stream.err()),
        ("syncthing swarm", syncthing_swarm.and_then(|r| r.err())),
        ("lattice swarm", lattice_swarm.err()),
    ];
    let mut failed = false;
    for (name, e) in errors {
        if let Some(e) = e {
            eprintln!("{name} failed: {e:#}");
            failed = true;
        }
    }
    if failed {
        bail!("some measurements failed");
    }
    Ok(())
}

/// The measurements of a system that was run and succeeded.
fn measured<T>(r: &Option<Result<T>>) -> Option<&T> {
    r.as_ref().and_then(|r| r.as_ref().ok())
}

/// The reconciliation rows: negentropy rounds and bytes for 1,000,000 vs 1,000,000 + 10
/// intentions over the redb index (Syncthing has no counterpart).
fn negentropy_rows() -> Vec<Row> {
    let (rounds, bytes) = match crate::reconcile::plus_ten(1_000_000) {
        Ok((r, b)) => (Some(f64::from(r)), Some(b as f64 / 1e3)),
        Err(e) => {
            eprintln!("reconcile measurement failed: {e:#}");
            (None, None)
        }
    };
    vec![
        Row {
            name: "reconcile 1,000,000 vs 1,000,000 + 10 intentions: rounds",
            unit: "rounds",
            values: [None, rounds],
        },
        Row {
            name: "reconcile 1,000,000 vs 1,000,000 + 10 intentions: bytes",
            unit: "KB",
            values: [None, bytes],
        },
    ]
}

/// Prints the rows as a markdown table with the lattice / syncthing ratio.
fn print_table(rows: &[Row]) {
    println!("| workload | unit | syncthing | lattice | lattice / syncthing |");
    println!("|---|---|---|---|---|");
    let cell = |v: Option<f64>, digits: usize| v.map_or("n/a".into(), |v| format!("{v:.digits$}"));
    for row in rows {
        let digits = if row.unit == "rounds" { 0 } else { 2 };
        let ratio = match row.values {
            [Some(s), Some(l)] if s > 0.0 => Some(l / s),
            _ => None,
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            row.name,
            row.unit,
            cell(row.values[0], digits),
            cell(row.values[1], digits),
            cell(ratio, 2)
        );
    }
    println!(
        "\n(lower is better everywhere; a ratio below 1 means lattice is faster or sends less)"
    );
}

/// The data both systems are given, made once.
struct Workload<'a> {
    small: &'a [Vec<u8>],
    big: Vec<u8>,
    /// Whether loopback counters are ours alone (private network namespace).
    lo: bool,
}

/// Runs the three workloads from `a` to `b`; `own_bytes` reads the system's own byte count.
fn run_workloads(
    w: &Workload,
    a: &Path,
    b: &Path,
    own_bytes: &dyn Fn() -> Result<Option<u64>>,
) -> Result<Measured> {
    let (t, c) = (Instant::now(), Busy::now()?);
    let dir = a.join("small");
    fs::create_dir(&dir)?;
    for (i, content) in w.small.iter().enumerate() {
        fs::write(dir.join(small_name(i)), content)?;
    }
    wait_until("1,000 files readable on B", || {
        small_files_match(&b.join("small"), w.small)
    })?;
    let (small, small_cpu) = (t.elapsed(), c.since()?);
    eprintln!("  1,000 files: {:.2} s", small.as_secs_f64());

    let (t, c) = (Instant::now(), Busy::now()?);
    let mut f = File::create(a.join("big.bin"))?;
    for block in w.big.chunks(WRITE_BLOCK) {
        f.write_all(block)?;
    }
    drop(f);
    wait_until("256 MiB file readable on B", || {
        same_content(&b.join("big.bin"), &w.big)
    })?;
    let (big, big_cpu) = (t.elapsed(), c.since()?);
    eprintln!("  256 MiB: {:.2} s", big.as_secs_f64());

    let mut edited = w.big.clone();
    let mid = BIG_SIZE / 2;
    edited[mid] ^= 0xff;
    std::thread::sleep(SETTLE);
    let own0 = own_bytes()?;
    let wire0 = w.lo.then(loopback_tx_bytes).transpose()?;
    let (t, c) = (Instant::now(), Busy::now()?);
    let f = OpenOptions::new().write(true).open(a.join("big.bin"))?;
    f.write_all_at(&edited[mid..mid + 1], mid as u64)?;
    drop(f);
    wait_until("1-byte edit readable on B", || {
        same_content(&b.join("big.bin"), &edited)
    })?;
    let (edit, edit_cpu) = (t.elapsed(), c.since()?);
    std::thread::sleep(SETTLE);
    let wire1 = w.lo.then(loopback_tx_bytes).transpose()?;
    let own1 = own_bytes()?;
    eprintln!("  edit: {:.2} s", edit.as_secs_f64());
    Ok(Measured {
        small,
        big,
        edit,
        cpu: [small_cpu, big_cpu, edit_cpu],
        edit_wire: wire0.zip(wire1).map(|(x, y)| y - x),
        edit_own: own0.zip(own1).map(|(x, y)| y - x),
    })
}

/// Time and busy core-seconds for `data` to cross one QUIC stream between two iroh
/// endpoints on loopback, with nothing stored or hashed: what the transport alone costs.
fn one_stream(data: &[u8]) -> Result<(Duration, f64)> {
    const ALPN: &[u8] = b"lattice-bench/stream";
    let data = Bytes::copy_from_slice(data);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let bind = || async {
            Endpoint::builder(presets::Minimal)
                .relay_mode(RelayMode::Disabled)
                .alpns(vec![ALPN.to_vec()])
                .bind_addr(SocketAddr::from(([127, 0, 0, 1], 0)))?
                .bind()
                .await
                .map_err(anyhow::Error::from)
        };
        let (a, b) = (bind().await?, bind().await?);
        let to = b.addr();
        let receiver = tokio::spawn(async move {
            let incoming = b.accept().await.context("endpoint closed")?;
            let conn = incoming.accept()?.await?;
            let mut recv = conn.accept_uni().await?;
            let mut got = 0;
            while let Some(chunk) = recv.read_chunk(usize::MAX).await? {
                got += chunk.len();
            }
            b.close().await;
            anyhow::Ok(got)
        });
        let conn = a.connect(to, ALPN).await?;
        let (t, c) = (Instant::now(), Busy::now()?);
        let mut send = conn.open_uni().await?;
        for at in (0..data.len()).step_by(WRITE_BLOCK) {
            send.write_chunk(data.slice(at..data.len().min(at + WRITE_BLOCK)))
                .await?;
        }
        send.finish()?;
        let got = receiver.await??;
        let took = (t.elapsed(), c.since()?);
        a.close().await;
        if got != data.len() {
            bail!("one stream carried {got} of {} bytes", data.len());
        }
        eprintln!("  one stream, 256 MiB: {:.2} s", took.0.as_secs_f64());
        Ok(took)
    })
}

/// File name of small file `i`.
fn small_name(i: usize) -> String {
    format!("f{i:04}")
}

/// Whether `dir` holds exactly the small files (hidden temp files aside) with their content.
fn small_files_match(dir: &Path, expected: &[Vec<u8>]) -> Result<bool> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(false);
    };
    let visible = entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    if visible != expected.len() {
        return Ok(false);
    }
    for (i, content) in expected.iter().enumerate() {
        if fs::read(dir.join(small_name(i))).ok().as_ref() != Some(content) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `path` holds exactly `expected`: size and a few samples first, then every byte.
fn same_content(path: &Path, expected: &[u8]) -> Result<bool> {
    let Ok(f) = File::open(path) else {
        return Ok(false);
    };
    if f.metadata()?.len() != expected.len() as u64 {
        return Ok(false);
    }
    let mut buf = vec![0u8; WRITE_BLOCK];
    let sample = 4096.min(expected.len());
    for at in [0, expected.len() / 2 - sample / 2, expected.len() - sample] {
        if f.read_exact_at(&mut buf[..sample], at as u64).is_err()
            || buf[..sample] != expected[at..at + sample]
        {
            return Ok(false);
        }
    }
    let mut f = f;
    for want in expected.chunks(WRITE_BLOCK) {
        let got = &mut buf[..want.len()];
        if f.read_exact(got).is_err() || got != want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Moves this process into a new network namespace with loopback up, so loopback counters
/// count only this benchmark; false (with a warning) where that is not permitted.
fn private_netns() -> Result<bool> {
    // SAFETY: unshare(2) with a flag constant; it only changes this process's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "no private network namespace ({}): bytes on the wire not measured",
            std::io::Error::last_os_error()
        );
        return Ok(false);
    }
    loopback_up().context("bringing up loopback in the private network namespace")?;
    Ok(true)
}

/// Sets the IFF_UP flag of `lo` in the current network namespace.
fn loopback_up() -> std::io::Result<()> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `fd` is an open socket and `req` a valid ifreq naming `lo`; the kernel writes
    // the flags into the union, which is then read as flags.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Bytes transmitted on `lo` so far in this network namespace.
fn loopback_tx_bytes() -> Result<u64> {
    let dev = fs::read_to_string("/proc/net/dev")?;
    let line = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:"))
        .ok_or_else(|| anyhow!("no lo in /proc/net/dev"))?;
    let tx = line
        .split_whitespace()
        .nth(8)
        .ok_or_else(|| anyhow!("short lo line in /proc/net/dev"))?;
    Ok(tx.parse()?)
}

fn measure_syncthing(shm: &str, w: &Workload) -> Result<Measured> {
    let st = Syncthing::start(shm, 2, |_| Ok(()))?;
    st.wait_in_sync(0, WAIT)?;
    run_workloads(w, &st.dirs[0], &st.dirs[1], &|| st.bytes_total(0).map(Some))
}

fn measure_lattice(shm: &str, w: &Workload) -> Result<Measured> {
    let tmp = tempfile::Builder::new()
        .prefix("lattice-bench-sync")
        .tempdir_in(shm)?;
    let a = Node::up(tmp.path(), "a")?;
    let b = Node::up(tmp.path(), "b")?;
    a.run(&["create", SHARED])?;
    b.join(&a, SHARED)?;
    let (da, db) = (a.mnt.join(SHARED), b.mnt.join(SHARED));
    wait_until("store directory on B", || Ok(db.is_dir()))?;
    run_workloads(w, &da, &db, &|| Ok(None))
}

/// Times until `big`, written on `a`, reads back identical on every one of `others`;
/// the time and the core-seconds the machine was busy meanwhile.
fn big_to_all(big: &[u8], a: &Path, others: &[&Path]) -> Result<(Duration, f64)> {
    let (t, c) = (Instant::now(), Busy::now()?);
    let mut f = File::create(a.join("big.bin"))?;
    for block in big.chunks(WRITE_BLOCK) {
        f.write_all(block)?;
    }
    drop(f);
    let mut pending: Vec<&Path> = others.to_vec();
    wait_until("256 MiB file readable on every other node", || {
        let mut still = Vec::with_capacity(pending.len());
        for dir in &pending {
            if !same_content(&dir.join("big.bin"), big)? {
                still.push(*dir);
            }
        }
        pending = still;
        Ok(pending.is_empty())
    })?;
    let took = t.elapsed();
    eprintln!("  swarm, 256 MiB: {:.2} s", took.as_secs_f64());
    Ok((took, c.since()?))
}

/// Times from `start` until `dir` shows the whole tree.
fn tree_reaches(start: Instant, dir: &Path) -> Result<Duration> {
    wait_for("the tree on the new member", LONG_WAIT, || {
        tree_complete(dir, TREE_FILES)
    })?;
    let took = start.elapsed();
    eprintln!("  swarm, tree to a new member: {:.2} s", took.as_secs_f64());
    Ok(took)
}

/// Syncthing with three instances: the large file from A to B and C; then, on three
/// new instances, the tree held by A and B reaching C when C starts.
fn measure_syncthing_swarm(shm: &str, big: &[u8]) -> Result<Swarm> {
    let st = Syncthing::start(shm, 3, |_| Ok(()))?;
    st.wait_in_sync(0, WAIT)?;
    let (big, big_cpu) = big_to_all(big, &st.dirs[0], &[&st.dirs[1], &st.dirs[2]])?;
    drop(st);

    let mut st = Syncthing::prepare(shm, 3, |dir| write_tree(dir, TREE_FILES))?;
    st.launch()?;
    st.launch()?;
    st.wait_in_sync(TREE_FILES as u64, LONG_WAIT)?;
    let t = Instant::now();
    st.launch()?;
    let tree = tree_reaches(t, &st.dirs[2])?;
    Ok(Swarm { big, big_cpu, tree })
}

/// Lattice with three nodes: the large file from A to B and C (members of one store, so
/// each may fetch from both others); then the tree, written on A and cloned by B,
/// reaching C from starting its daemon through `join`.
fn measure_lattice_swarm(shm: &str, big: &[u8]) -> Result<Swarm> {
    let tmp = tempfile::Builder::new()
        .prefix("lattice-bench-swarm")
        .tempdir_in(shm)?;
    let a = Node::up(tmp.path(), "a")?;
    a.run(&["create", SHARED])?;
    let nodes = [Node::up(tmp.path(), "b")?, Node::up(tmp.path(), "c")?];
    for n in &nodes {
        n.join(&a, SHARED)?;
    }
    let dirs: Vec<PathBuf> = nodes.iter().map(|n| n.mnt.join(SHARED)).collect();
    wait_until("store directory on B and C", || {
        Ok(dirs.iter().all(|d| d.is_dir()))
    })?;
    let (big, big_cpu) = big_to_all(big, &a.mnt.join(SHARED), &[&dirs[0], &dirs[1]])?;
    drop(nodes);
    a.down()?;

    let tmp = tempfile::Builder::new()
        .prefix("lattice-bench-swarm")
        .tempdir_in(shm)?;
    let a = Node::up(tmp.path(), "a")?;
    a.run(&["create", SHARED])?;
    let da = a.mnt.join(SHARED);
    wait_until("store directory on A", || Ok(da.is_dir()))?;
    write_tree(&da, TREE_FILES)?;
    let b = Node::up(tmp.path(), "b")?;
    b.join(&a, SHARED)?;
    wait_for("the tree on B", LONG_WAIT, || {
        tree_complete(&b.mnt.join(SHARED), TREE_FILES)
    })?;
    let t = Instant::now();
    let c = Node::up(tmp.path(), "c")?;
    c.join(&a, SHARED)?;
    let tree = tree_reaches(t, &c.mnt.join(SHARED))?;
    Ok(Swarm { big, big_cpu, tree })
}
