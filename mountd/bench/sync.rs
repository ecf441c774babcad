//! `lattice-bench sync`: how long until work done on node A is readable on node B, and
//! what a 1-byte edit costs on the wire, for two lattice daemons and, in the same run, two
//! Syncthing instances (when installed). Everything runs on loopback inside a private
//! network namespace, so the loopback counters count this benchmark's traffic alone.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Small files copied in the first workload.
const SMALL_FILES: usize = 1_000;
/// Size of each small file.
const SMALL_SIZE: usize = 4096;
/// Size of the large file.
const BIG_SIZE: usize = 256 << 20;
/// Size of each write call while writing the large file.
const WRITE_BLOCK: usize = 1 << 20;
/// Longest wait for any one thing (a start, a connection, a workload) before giving up.
const WAIT: Duration = Duration::from_secs(120);
/// Interval between two looks at B's files.
const POLL: Duration = Duration::from_millis(20);
/// Quiet time before and after the edit, so the byte count holds the edit's traffic only.
const SETTLE: Duration = Duration::from_secs(2);
/// Name of the shared store (lattice) and folder id (Syncthing).
const SHARED: &str = "bench";
/// API key of both Syncthing instances' REST interface.
const API_KEY: &str = "lattice-bench-sync";

/// What one system achieved on the three workloads.
struct Measured {
    small: Duration,
    big: Duration,
    edit: Duration,
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

    let both = [measured(&syncthing), lattice.as_ref().ok()];
    let secs = |f: fn(&Measured) -> Duration| both.map(|m| m.map(|m| f(m).as_secs_f64()));
    let mut rows = vec![
        Row {
            name: "1,000 × 4 KiB files written on A, readable on B",
            unit: "s",
            values: secs(|m| m.small),
        },
        Row {
            name: "256 MiB file written on A, readable on B",
            unit: "s",
            values: secs(|m| m.big),
        },
        Row {
            name: "1-byte pwrite in its middle, readable on B",
            unit: "s",
            values: secs(|m| m.edit),
        },
        Row {
            name: "1-byte edit: bytes on the wire",
            unit: "KB",
            values: both.map(|m| m.and_then(|m| m.edit_wire).map(|b| b as f64 / 1e3)),
        },
    ];
    rows.extend(negentropy_rows());
    print_table(&rows);
    if let Some(own) = measured(&syncthing).and_then(|m| m.edit_own) {
        println!(
            "Syncthing's own connection counters for the edit: {:.1} KB.",
            own as f64 / 1e3
        );
    }
    println!(
        "{}",
        if private {
            "Bytes on the wire: loopback tx bytes of a private network namespace (both \
             directions, IP headers included) from just before the edit to 2 s after B read it."
        } else {
            "Bytes on the wire: n/a (no private network namespace; needs root)."
        }
    );

    let mut failed = false;
    for (name, r) in [("syncthing", syncthing), ("lattice", Some(lattice))] {
        if let Some(Err(e)) = r {
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
fn measured(r: &Option<Result<Measured>>) -> Option<&Measured> {
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
    let t = Instant::now();
    let dir = a.join("small");
    fs::create_dir(&dir)?;
    for (i, content) in w.small.iter().enumerate() {
        fs::write(dir.join(small_name(i)), content)?;
    }
    wait_until("1,000 files readable on B", || {
        small_files_match(&b.join("small"), w.small)
    })?;
    let small = t.elapsed();
    eprintln!("  1,000 files: {:.2} s", small.as_secs_f64());

    let t = Instant::now();
    let mut f = File::create(a.join("big.bin"))?;
    for block in w.big.chunks(WRITE_BLOCK) {
        f.write_all(block)?;
    }
    drop(f);
    wait_until("256 MiB file readable on B", || {
        same_content(&b.join("big.bin"), &w.big)
    })?;
    let big = t.elapsed();
    eprintln!("  256 MiB: {:.2} s", big.as_secs_f64());

    let mut edited = w.big.clone();
    let mid = BIG_SIZE / 2;
    edited[mid] ^= 0xff;
    std::thread::sleep(SETTLE);
    let own0 = own_bytes()?;
    let wire0 = w.lo.then(loopback_tx_bytes).transpose()?;
    let t = Instant::now();
    let f = OpenOptions::new().write(true).open(a.join("big.bin"))?;
    f.write_all_at(&edited[mid..mid + 1], mid as u64)?;
    drop(f);
    wait_until("1-byte edit readable on B", || {
        same_content(&b.join("big.bin"), &edited)
    })?;
    let edit = t.elapsed();
    std::thread::sleep(SETTLE);
    let wire1 = w.lo.then(loopback_tx_bytes).transpose()?;
    let own1 = own_bytes()?;
    eprintln!("  edit: {:.2} s", edit.as_secs_f64());
    Ok(Measured {
        small,
        big,
        edit,
        edit_wire: wire0.zip(wire1).map(|(x, y)| y - x),
        edit_own: own0.zip(own1).map(|(x, y)| y - x),
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

/// Polls `done` every POLL until it holds; fails after WAIT.
fn wait_until(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not done within {} s", WAIT.as_secs());
        }
        std::thread::sleep(POLL);
    }
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed so nothing deduplicates.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
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

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let log = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Two Syncthing instances sharing one folder; killed when dropped.
struct Syncthing {
    children: Vec<Child>,
    gui: [u16; 2],
    ids: [String; 2],
    dirs: [PathBuf; 2],
    logs: [PathBuf; 2],
    _tmp: tempfile::TempDir,
}

fn measure_syncthing(shm: &str, w: &Workload) -> Result<Measured> {
    let st = Syncthing::start(shm)?;
    run_workloads(w, &st.dirs[0], &st.dirs[1], &|| st.bytes_total(0).map(Some))
}

impl Syncthing {
    /// Generates keys, writes both configurations, starts both and waits until they are
    /// connected and the folder is idle on both.
    fn start(shm: &str) -> Result<Syncthing> {
        let tmp = tempfile::Builder::new()
            .prefix("lattice-bench-syncthing")
            .tempdir_in(shm)?;
        let homes = ["a", "b"].map(|n| tmp.path().join(format!("home-{n}")));
        let dirs = ["a", "b"].map(|n| tmp.path().join(format!("folder-{n}")));
        let logs = ["a", "b"].map(|n| tmp.path().join(format!("syncthing-{n}.log")));
        let mut ids = [String::new(), String::new()];
        let mut version = String::new();
        for (i, home) in homes.iter().enumerate() {
            fs::create_dir_all(dirs[i].join(".stfolder"))?;
            let out = Command::new("syncthing")
                .args(["generate", "--no-default-folder", "--home"])
                .arg(home)
                .output()?;
            if !out.status.success() {
                bail!(
                    "syncthing generate failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let generated = fs::read_to_string(home.join("config.xml"))?;
            version = xml_attr(&generated, "<configuration", "version")?;
            ids[i] = xml_attr(&generated, "<device", "id")?;
        }
        let listen = [free_port()?, free_port()?];
        let gui = [free_port()?, free_port()?];
        for (i, home) in homes.iter().enumerate() {
            fs::write(
                home.join("config.xml"),
                config_xml(&version, &ids, &listen, i, gui[i], &dirs[i]),
            )?;
        }
        let mut st = Syncthing {
            children: vec![],
            gui,
            ids,
            dirs,
            logs,
            _tmp: tmp,
        };
        for (home, log) in homes.iter().zip(&st.logs) {
            let child = Command::new("syncthing")
                .args([
                    "serve",
                    "--no-browser",
                    "--no-restart",
                    "--no-upgrade",
                    "--home",
                ])
                .arg(home)
                .env("STNODEFAULTFOLDER", "1")
                // Run as the process we spawn, without a monitor parent, so killing it is final.
                .env("STMONITORED", "yes")
                .stdin(Stdio::null())
                .stdout(File::create(log)?)
                .stderr(Stdio::from(File::options().append(true).open(log)?))
                .spawn()
                .context("starting syncthing")?;
            st.children.push(child);
        }
        st.wait("REST interface up", |st, i| {
            Ok(st.get(i, "/rest/system/ping").is_ok())
        })?;
        st.wait("connected to the other instance", |st, i| {
            let body = st.get(i, "/rest/system/connections")?;
            let peer = &st.ids[1 - i];
            Ok(body
                .find(&format!("\"{peer}\""))
                .and_then(|at| json_field(&body[at..], "connected"))
                == Some("true"))
        })?;
        st.wait("folder idle and in sync", |st, i| {
            let status = st.get(i, &format!("/rest/db/status?folder={SHARED}"))?;
            let peer = &st.ids[1 - i];
            let completion = st.get(
                i,
                &format!("/rest/db/completion?folder={SHARED}&device={peer}"),
            )?;
            Ok(json_field(&status, "state") == Some("idle")
                && json_field(&completion, "completion") == Some("100"))
        })?;
        Ok(st)
    }

    /// Waits until `ready` holds for both instances, bounded by WAIT.
    fn wait(&self, what: &str, ready: impl Fn(&Self, usize) -> Result<bool>) -> Result<()> {
        wait_until(&format!("syncthing {what}"), || {
            Ok((0..2).all(|i| ready(self, i).unwrap_or(false)))
        })
        .with_context(|| {
            format!(
                "last log lines of A:\n{}\nof B:\n{}",
                log_tail(&self.logs[0]),
                log_tail(&self.logs[1])
            )
        })
    }

    /// Bytes instance `i` has sent and received on all its connections.
    fn bytes_total(&self, i: usize) -> Result<u64> {
        let body = self.get(i, "/rest/system/connections")?;
        let total = &body[body
            .find("\"total\"")
            .ok_or_else(|| anyhow!("no total in /rest/system/connections"))?..];
        let field = |k| -> Result<u64> {
            json_field(total, k)
                .ok_or_else(|| anyhow!("no {k} in /rest/system/connections"))?
                .parse()
                .with_context(|| format!("parsing {k}"))
        };
        Ok(field("inBytesTotal")? + field("outBytesTotal")?)
    }

    /// GET on instance `i`'s REST interface; the body of a 200 response.
    fn get(&self, i: usize, path: &str) -> Result<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.gui[i]));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        // HTTP/1.0: the server closes the connection after one response, never chunks.
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n\r\n"
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("malformed HTTP response to {path}"))?;
        if !head.starts_with("HTTP/1.") || head.split(' ').nth(1) != Some("200") {
            bail!("{path}: {}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_owned())
    }
}

impl Drop for Syncthing {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Syncthing configuration of instance `me`: loopback only, every discovery, relay, NAT,
/// reporting and upgrade feature off, the other instance at a fixed address, and the
/// shared folder watched for changes (1 s aggregation, hourly full rescan as by default).
fn config_xml(
    version: &str,
    ids: &[String; 2],
    listen: &[u16; 2],
    me: usize,
    gui: u16,
    dir: &Path,
) -> String {
    let devices: String = (0..2)
        .map(|i| {
            format!(
                "<device id=\"{}\" name=\"{}\" compression=\"metadata\">\
                 <address>tcp://127.0.0.1:{}</address></device>\n",
                ids[i],
                ["a", "b"][i],
                listen[i]
            )
        })
        .collect();
    format!(
        r#"<configuration version="{version}">
<folder id="{SHARED}" label="{SHARED}" path="{path}" type="sendreceive" rescanIntervalS="3600" fsWatcherEnabled="true" fsWatcherDelayS="1">
<device id="{a}"></device><device id="{b}"></device>
</folder>
{devices}<gui enabled="true" tls="false"><address>127.0.0.1:{gui}</address><apikey>{API_KEY}</apikey></gui>
<options>
<listenAddress>tcp://127.0.0.1:{port}</listenAddress>
<globalAnnounceEnabled>false</globalAnnounceEnabled>
<localAnnounceEnabled>false</localAnnounceEnabled>
<relaysEnabled>false</relaysEnabled>
<natEnabled>false</natEnabled>
<startBrowser>false</startBrowser>
<urAccepted>-1</urAccepted>
<autoUpgradeIntervalH>0</autoUpgradeIntervalH>
<crashReportingEnabled>false</crashReportingEnabled>
<setLowPriority>false</setLowPriority>
</options>
</configuration>
"#,
        path = dir.display(),
        a = ids[0],
        b = ids[1],
        port = listen[me],
    )
}

/// The value of attribute `attr` in the first `tag` element of `xml`.
fn xml_attr(xml: &str, tag: &str, attr: &str) -> Result<String> {
    let rest = &xml[xml
        .find(tag)
        .ok_or_else(|| anyhow!("no {tag} in config.xml"))?..];
    let key = format!(" {attr}=\"");
    let start = rest
        .find(&key)
        .ok_or_else(|| anyhow!("no {attr} on {tag}"))?
        + key.len();
    let len = rest[start..]
        .find('"')
        .ok_or_else(|| anyhow!("unterminated {attr}"))?;
    Ok(rest[start..start + len].to_owned())
}

/// The raw scalar value of the first `"key": value` in `json` (quotes stripped); enough
/// for the flat objects read from Syncthing's REST interface.
fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\"");
    let mut from = 0;
    while let Some(at) = json[from..].find(&pattern) {
        let after = json[from + at + pattern.len()..].trim_start();
        if let Some(value) = after.strip_prefix(':') {
            let value = value.trim_start();
            let end = value.find([',', '}', '\n']).unwrap_or(value.len());
            return Some(value[..end].trim().trim_matches('"'));
        }
        from += at + pattern.len();
    }
    None
}

/// One lattice daemon with its own data dir and mountpoint; stopped and unmounted on drop.
struct Node {
    data: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    child: Child,
}

fn measure_lattice(shm: &str, w: &Workload) -> Result<Measured> {
    let tmp = tempfile::Builder::new()
        .prefix("lattice-bench-sync")
        .tempdir_in(shm)?;
    let a = Node::up(tmp.path(), "a")?;
    let b = Node::up(tmp.path(), "b")?;
    a.run(&["create", SHARED])?;
    let invite = a.run(&["invite", SHARED])?;
    let token = invite
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| anyhow!("invite printed no token"))?
        .trim()
        .to_owned();
    let joined = b.run(&["join", &token])?;
    if !joined.contains(&format!("joined store {SHARED}")) {
        bail!("join printed {joined:?}");
    }
    let (da, db) = (a.mnt.join(SHARED), b.mnt.join(SHARED));
    wait_until("store directory on B", || Ok(db.is_dir()))?;
    run_workloads(w, &da, &db, &|| Ok(None))
}

impl Node {
    /// Starts `lattice-mount up` on loopback and waits for its mount and control socket.
    fn up(base: &Path, name: &str) -> Result<Node> {
        let data = base.join(format!("data-{name}"));
        let mnt = base.join(format!("mnt-{name}"));
        let log = base.join(format!("lattice-{name}.log"));
        fs::create_dir_all(&mnt)?;
        let child = lattice_cli(&data)
            .arg("up")
            .arg(&mnt)
            .args([
                "--relay",
                "disabled",
                "--bind",
                "127.0.0.1:0",
                "--name",
                name,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting lattice-mount")?;
        let mut node = Node {
            data,
            mnt,
            log,
            child,
        };
        wait_until(&format!("lattice node {name} mounted"), || {
            if let Some(status) = node.child.try_wait()? {
                bail!("daemon exited with {status}: {}", log_tail(&node.log));
            }
            Ok(is_lattice_mount(&node.mnt) && node.run(&["status"]).is_ok())
        })?;
        Ok(node)
    }

    /// Runs a CLI subcommand against this node, bounded by WAIT; its stdout on success.
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = bounded(lattice_cli(&self.data).args(args))?;
        if !out.status.success() {
            bail!(
                "lattice-mount {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// The lattice CLI next to this executable, with data dir `data`.
fn lattice_cli(data: &Path) -> Command {
    let exe = std::env::current_exe()
        .map(|e| e.with_file_name("lattice-mount"))
        .unwrap_or_else(|_| "lattice-mount".into());
    let mut c = Command::new(exe);
    c.arg("--data-dir").arg(data).env_remove("LATTICE_HOME");
    c
}

/// Runs `cmd` to completion with captured output, killing it after WAIT.
fn bounded(cmd: &mut Command) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + WAIT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?}: no answer within {} s", WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// What `findmnt` reports for `path` ("FSTYPE SOURCE"), if it is a mountpoint.
fn findmnt(path: &Path) -> Option<String> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE", "--mountpoint"])
        .arg(path)
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!s.is_empty()).then_some(s)
}

fn is_mounted(path: &Path) -> bool {
    findmnt(path).is_some()
}

/// Whether a lattice FUSE mount sits at `path`.
pub(crate) fn is_lattice_mount(path: &Path) -> bool {
    findmnt(path).is_some_and(|s| s.starts_with("fuse") && s.ends_with(" lattice"))
}
