//! What the benchmarks share: lattice daemons (`Node`) and Syncthing instances started as
//! real processes on loopback, bounded waits, and the small parsers and probes they need.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Longest wait for any one thing (a start, a connection, a workload) before giving up.
pub(crate) const WAIT: Duration = Duration::from_secs(120);
/// Interval between two looks at a condition being waited for.
pub(crate) const POLL: Duration = Duration::from_millis(20);
/// Name of the shared store (lattice) and folder id (Syncthing).
pub(crate) const SHARED: &str = "bench";
/// API key of the Syncthing instances' REST interface.
const API_KEY: &str = "lattice-bench-sync";
/// Longest wait for a daemon to exit after `down` before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// Interval between two looks at a daemon starting or stopping: fine, since restarts
/// are timed and a coarser poll would round them up by as much as the poll.
const TIMED_POLL: Duration = Duration::from_millis(1);

/// A reading of the time every core of the machine spent busy (every process and the
/// kernel, interrupts included, time stolen by a hypervisor not), from `/proc/stat`.
#[derive(Clone, Copy)]
pub(crate) struct Busy(f64);

impl Busy {
    /// The reading now.
    pub(crate) fn now() -> Result<Busy> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat.lines().next().unwrap_or_default();
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing /proc/stat: {line}"))?;
        let [user, nice, system, _idle, _iowait, irq, softirq, ..] = ticks[..] else {
            bail!("too few fields in /proc/stat: {line}");
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Ok(Busy(
            (user + nice + system + irq + softirq) as f64 / hz.max(1) as f64,
        ))
    }

    /// Core-seconds of busy time since this reading.
    pub(crate) fn since(self) -> Result<f64> {
        Ok(Busy::now()?.0 - self.0)
    }
}

/// Polls `done` every POLL until it holds; fails after WAIT.
pub(crate) fn wait_until(what: &str, done: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_for(what, WAIT, done)
}

/// Polls `done` every POLL until it holds; fails after `limit`.
pub(crate) fn wait_for(
    what: &str,
    limit: Duration,
    done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    poll_until(what, limit, POLL, done)
}

/// Polls `done` every `poll` until it holds; fails after `limit`.
fn poll_until(
    what: &str,
    limit: Duration,
    poll: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not done within {} s", limit.as_secs());
        }
        std::thread::sleep(poll);
    }
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed so nothing deduplicates.
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
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

/// Whether `cmd` is on the PATH.
pub(crate) fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The last lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let log = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Syncthing instances sharing one folder, each connected to every other; killed when dropped.
pub(crate) struct Syncthing {
    children: Vec<Child>,
    gui: Vec<u16>,
    ids: Vec<String>,
    /// Each instance's folder.
    pub dirs: Vec<PathBuf>,
    /// Each instance's home (configuration and index database).
    pub homes: Vec<PathBuf>,
    logs: Vec<PathBuf>,
    _tmp: tempfile::TempDir,
}

impl Syncthing {
    /// Generates keys, writes the configurations, lets `fill` write the first instance's
    /// folder, starts every instance and waits until its REST interface is up and it is
    /// connected to every other.
    pub(crate) fn start(
        shm: &str,
        n: usize,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Syncthing> {
        let mut st = Syncthing::prepare(shm, n, fill)?;
        for _ in 0..n {
            st.launch()?;
        }
        Ok(st)
    }

    /// Generates keys, writes the configurations of `n` instances that know each other
    /// and lets `fill` write the first instance's folder; starts none.
    pub(crate) fn prepare(
        shm: &str,
        n: usize,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Syncthing> {
        let tmp = tempfile::Builder::new()
            .prefix("lattice-bench-syncthing")
            .tempdir_in(shm)?;
        let names: Vec<char> = ('a'..).take(n).collect();
        let homes: Vec<PathBuf> = names
            .iter()
            .map(|c| tmp.path().join(format!("home-{c}")))
            .collect();
        let dirs: Vec<PathBuf> = names
            .iter()
            .map(|c| tmp.path().join(format!("folder-{c}")))
            .collect();
        let logs: Vec<PathBuf> = names
            .iter()
            .map(|c| tmp.path().join(format!("syncthing-{c}.log")))
            .collect();
        let mut ids = Vec::with_capacity(n);
        let mut version = String::new();
        for (home, dir) in homes.iter().zip(&dirs) {
            fs::create_dir_all(dir.join(".stfolder"))?;
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
            ids.push(xml_attr(&generated, "<device", "id")?);
        }
        let listen = (0..n).map(|_| free_port()).collect::<Result<Vec<_>>>()?;
        let gui = (0..n).map(|_| free_port()).collect::<Result<Vec<_>>>()?;
        for (i, home) in homes.iter().enumerate() {
            fs::write(
                home.join("config.xml"),
                config_xml(&version, &ids, &listen, i, gui[i], &dirs[i]),
            )?;
        }
        if let Some(first) = dirs.first() {
            fill(first)?;
        }
        Ok(Syncthing {
            children: vec![],
            gui,
            ids,
            dirs,
            homes,
            logs,
            _tmp: tmp,
        })
    }

    /// Starts the next instance not started yet and waits until every started one has
    /// its REST interface up and is connected to every other started one.
    pub(crate) fn launch(&mut self) -> Result<()> {
        let i = self.children.len();
        let (Some(home), Some(log)) = (self.homes.get(i), self.logs.get(i)) else {
            bail!("every syncthing instance is already running");
        };
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
        self.children.push(child);
        self.wait("REST interface up", WAIT, |st, i| {
            Ok(st.get(i, "/rest/system/ping").is_ok())
        })?;
        self.wait("connected to every other instance", WAIT, |st, i| {
            let body = st.get(i, "/rest/system/connections")?;
            Ok(st.peers(i).all(|peer| {
                body.find(&format!("\"{peer}\""))
                    .and_then(|at| json_field(&body[at..], "connected"))
                    == Some("true")
            }))
        })
    }

    /// The device ids of every started instance but `i`.
    fn peers(&self, i: usize) -> impl Iterator<Item = &String> {
        self.ids
            .iter()
            .take(self.children.len())
            .enumerate()
            .filter(move |(j, _)| *j != i)
            .map(|(_, id)| id)
    }

    /// Waits until the folder is idle on every started instance, holds at least `files`
    /// files there, and every started instance has all of every other's, bounded by
    /// `limit`.
    pub(crate) fn wait_in_sync(&self, files: u64, limit: Duration) -> Result<()> {
        self.wait("folder idle and in sync", limit, |st, i| {
            let status = st.get(i, &format!("/rest/db/status?folder={SHARED}"))?;
            let local = json_field(&status, "localFiles").and_then(|v| v.parse::<u64>().ok());
            for peer in st.peers(i) {
                let completion = st.get(
                    i,
                    &format!("/rest/db/completion?folder={SHARED}&device={peer}"),
                )?;
                if json_field(&completion, "completion") != Some("100") {
                    return Ok(false);
                }
            }
            Ok(json_field(&status, "state") == Some("idle") && local >= Some(files))
        })
    }

    /// Waits until `ready` holds for every instance, bounded by `limit`.
    fn wait(
        &self,
        what: &str,
        limit: Duration,
        ready: impl Fn(&Self, usize) -> Result<bool>,
    ) -> Result<()> {
        wait_for(&format!("syncthing {what}"), limit, || {
            Ok((0..self.children.len()).all(|i| ready(self, i).unwrap_or(false)))
        })
        .with_context(|| {
            let tails: Vec<String> = self
                .logs
                .iter()
                .map(|l| format!("last log lines of {}:\n{}", l.display(), log_tail(l)))
                .collect();
            tails.join("\n")
        })
    }

    /// Process id of instance `i`.
    pub(crate) fn pid(&self, i: usize) -> u32 {
        self.children[i].id()
    }

    /// Bytes instance `i` has sent and received on all its connections.
    pub(crate) fn bytes_total(&self, i: usize) -> Result<u64> {
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
/// reporting and upgrade feature off, the other instances at fixed addresses, and the
/// shared folder watched for changes (1 s aggregation, hourly full rescan as by default).
fn config_xml(
    version: &str,
    ids: &[String],
    listen: &[u16],
    me: usize,
    gui: u16,
    dir: &Path,
) -> String {
    let folder_devices: String = ids
        .iter()
        .map(|id| format!("<device id=\"{id}\"></device>"))
        .collect();
    let devices: String = (0..ids.len())
        .map(|i| {
            format!(
                "<device id=\"{}\" name=\"{}\" compression=\"metadata\">\
                 <address>tcp://127.0.0.1:{}</address></device>\n",
                ids[i],
                char::from(b'a' + i as u8),
                listen[i]
            )
        })
        .collect();
    format!(
        r#"<configuration version="{version}">
<folder id="{SHARED}" label="{SHARED}" path="{path}" type="sendreceive" rescanIntervalS="3600" fsWatcherEnabled="true" fsWatcherDelayS="1">
{folder_devices}
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
pub(crate) fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
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
pub(crate) struct Node {
    /// Its data dir.
    pub data: PathBuf,
    /// Its mountpoint.
    pub mnt: PathBuf,
    /// How long its start took.
    pub startup: Startup,
    log: PathBuf,
    child: Child,
}

/// The phases of a daemon's start, each timed from the end of the one before.
#[derive(Clone, Copy)]
pub(crate) struct Startup {
    /// From spawning the process until its FUSE mount shows in `findmnt`.
    pub mount: Duration,
    /// From then until `status` answers over the control socket.
    pub status: Duration,
}

impl Node {
    /// Starts `lattice-mount up` on loopback and waits for its mount and control socket.
    pub(crate) fn up(base: &Path, name: &str) -> Result<Node> {
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
        let started = Instant::now();
        let mut node = Node {
            data,
            mnt,
            startup: Startup {
                mount: Duration::ZERO,
                status: Duration::ZERO,
            },
            log,
            child,
        };
        node.wait_running(&format!("lattice node {name} mounted"), |n| {
            Ok(is_lattice_mount(&n.mnt))
        })?;
        node.startup.mount = started.elapsed();
        node.wait_running(&format!("lattice node {name} answering"), |n| {
            Ok(n.run(&["status"]).is_ok())
        })?;
        node.startup.status = started.elapsed() - node.startup.mount;
        Ok(node)
    }

    /// Waits until `done` holds, failing at once if the daemon exits.
    fn wait_running(
        &mut self,
        what: &str,
        mut done: impl FnMut(&Node) -> Result<bool>,
    ) -> Result<()> {
        poll_until(what, WAIT, TIMED_POLL, || {
            if let Some(status) = self.child.try_wait()? {
                bail!("daemon exited with {status}: {}", log_tail(&self.log));
            }
            done(self)
        })
    }

    /// Runs a CLI subcommand against this node, bounded by WAIT; its stdout on success.
    pub(crate) fn run(&self, args: &[&str]) -> Result<String> {
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

    /// Joins `store` of node `admin` with a token `admin` issues; returns once `join`
    /// reports success.
    pub(crate) fn join(&self, admin: &Node, store: &str) -> Result<()> {
        let invite = admin.run(&["invite", store])?;
        let token = invite
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .ok_or_else(|| anyhow!("invite printed no token"))?
            .trim()
            .to_owned();
        let joined = self.run(&["join", &token])?;
        if !joined.contains(&format!("joined store {store}")) {
            bail!("join printed {joined:?}");
        }
        Ok(())
    }

    /// Process id of the daemon.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the daemon with `down` and waits until it has exited; fails (and kills it)
    /// if it is still running after STOP_WAIT.
    pub(crate) fn down(mut self) -> Result<()> {
        self.stop()
    }

    /// See [`Node::down`]; the mount is gone afterwards either way.
    fn stop(&mut self) -> Result<()> {
        let asked = self.run(&["down"]);
        let deadline = Instant::now() + STOP_WAIT;
        let mut result = Ok(());
        while !matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                result = Err(anyhow!(
                    "daemon still running {} s after down ({:?}), killed",
                    STOP_WAIT.as_secs(),
                    asked.err()
                ));
                break;
            }
            std::thread::sleep(TIMED_POLL);
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
        result
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Says which `lattice-mount` binary the run measures and when it was built:
/// `cargo run --bin lattice-bench` builds only the bench, so a daemon left from an
/// older build would otherwise be measured unnoticed.
pub(crate) fn report_daemon() -> Result<()> {
    let daemon = std::env::current_exe()?.with_file_name("lattice-mount");
    let built = fs::metadata(&daemon)
        .and_then(|m| m.modified())
        .with_context(|| {
            format!(
                "{} is missing: build it with `cargo build --release --features bench --bins`",
                daemon.display()
            )
        })?;
    let age = built.elapsed().unwrap_or_default().as_secs();
    eprintln!(
        "measuring {}, built {age} s ago (`cargo build --release --features bench --bins` rebuilds it)",
        daemon.display()
    );
    Ok(())
}

/// The lattice CLI next to this executable, with data dir `data`.
pub(crate) fn lattice_cli(data: &Path) -> Command {
    let exe = std::env::current_exe()
        .map(|e| e.with_file_name("lattice-mount"))
        .unwrap_or_else(|_| "lattice-mount".into());
    let mut c = Command::new(exe);
    c.arg("--data-dir").arg(data).env_remove("LATTICE_HOME");
    c
}

/// Runs `cmd` to completion with captured output, killing it after WAIT.
pub(crate) fn bounded(cmd: &mut Command) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read while it runs: a command writing more than a pipe holds would block on it.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?}: no answer within {} s", WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let joined = |h: std::thread::JoinHandle<Vec<u8>>| {
        h.join()
            .map_err(|_| anyhow!("reading the output of {cmd:?} panicked"))
    };
    Ok(Output {
        status,
        stdout: joined(stdout)?,
        stderr: joined(stderr)?,
    })
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error ends the output early; the exit status still says how it went.
            let _ = pipe.read_to_end(&mut out);
        }
        out
    })
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

/// Whether anything is mounted at `path`.
fn is_mounted(path: &Path) -> bool {
    findmnt(path).is_some()
}

/// Whether a lattice FUSE mount sits at `path`.
pub(crate) fn is_lattice_mount(path: &Path) -> bool {
    findmnt(path).is_some_and(|s| s.starts_with("fuse") && s.ends_with(" lattice"))
}
