//! Shared harness for end-to-end tests: real daemons, real FUSE mounts, shell tools.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The stdout of a command that must have succeeded (its stderr in the failure).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it holds or `limit` passes; returns how long it took.
pub fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether FUSE tests can run here; under `CI=true` a missing FUSE is a failure.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && (unsafe { libc::geteuid() } == 0 || which("fusermount3"));
    if !ok && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but FUSE is unavailable (/dev/fuse or fusermount3 missing)");
    }
    if !ok {
        eprintln!("skipping: FUSE unavailable on this machine");
    }
    ok
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What `findmnt` reports for `path` ("FSTYPE SOURCE"), if it is a mountpoint.
pub fn fstype(path: &Path) -> Option<String> {
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

/// Whether `path` is a live lattice FUSE mount.
pub fn is_lattice_mount(path: &Path) -> bool {
    fstype(path).is_some_and(|s| s.starts_with("fuse") && s.ends_with(" lattice"))
}

/// The CLI with data dir `data`, untouched by the caller's environment.
pub fn cli(data: &Path) -> Command {
    cli_in(data, None)
}

/// [`cli`], run in the network namespace `netns` (`ip netns` name) when given.
pub fn cli_in(data: &Path, netns: Option<&str>) -> Command {
    let bin = env!("CARGO_BIN_EXE_lattice-mount");
    let mut c = match netns {
        None => Command::new(bin),
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(bin);
            c
        }
    };
    c.arg("--data-dir")
        .arg(data)
        .env_remove("LATTICE_HOME")
        .env_remove("RUST_LOG");
    c
}

/// Runs the CLI with data dir `data` and returns its output.
pub fn lattice(data: &Path, args: &[&str]) -> Output {
    cli(data).args(args).output().unwrap()
}

/// One daemon with its own data dir and mountpoint, stopped and unmounted on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub mnt: PathBuf,
    pub name: String,
    /// More options for `up`.
    pub up_args: Vec<String>,
    /// The network namespace the daemon runs in (on all its interfaces), if not the
    /// test's own (on loopback).
    pub netns: Option<String>,
    child: Option<Child>,
}

impl Daemon {
    /// Starts a daemon in a fresh temp dir and waits until it is mounted.
    pub fn start() -> Daemon {
        Daemon::start_named("e2e")
    }

    /// Starts a daemon with display name `name` (networking on loopback only, no relays).
    pub fn start_named(name: &str) -> Daemon {
        Daemon::start_with(name, &[])
    }

    /// Starts a daemon named `name` whose `up` also gets `up_args`.
    pub fn start_with(name: &str, up_args: &[&str]) -> Daemon {
        Daemon::start_in(name, up_args, None)
    }

    /// [`Daemon::start_with`], in the network namespace `netns` when given.
    pub fn start_in(name: &str, up_args: &[&str], netns: Option<&str>) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("lattice-e2e")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let mnt = dir.path().join("mnt");
        let mut d = Daemon {
            dir,
            data,
            mnt,
            name: name.to_string(),
            up_args: up_args.iter().map(|a| a.to_string()).collect(),
            netns: netns.map(str::to_string),
            child: None,
        };
        d.up();
        d
    }

    /// The CLI with this daemon's data dir.
    pub fn cli(&self) -> Command {
        cli(&self.data)
    }

    /// Runs a CLI subcommand and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        lattice(&self.data, args)
    }

    /// Sends SIGTERM and waits for the daemon to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon not running");
        // SAFETY: kill(2) on our child's pid, which has not been waited for yet.
        assert_eq!(
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        child.wait().unwrap()
    }

    /// Starts the daemon (again) and waits for the mount.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let bind = match self.netns {
            Some(_) => "0.0.0.0:0",
            None => "127.0.0.1:0",
        };
        let child = cli_in(&self.data, self.netns.as_deref())
            .args(["up", "--relay", "disabled", "--bind", bind, "--name"])
            .arg(&self.name)
            .args(&self.up_args)
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_lattice_mount(&self.mnt) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited before mounting: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not mount within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        while !self.run(&["status"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "control socket not up within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts the mount is live (a dead daemon leaves an empty directory behind).
    pub fn assert_mounted(&self) {
        assert!(
            is_lattice_mount(&self.mnt),
            "{} is not a lattice mount any more",
            self.mnt.display()
        );
    }

    /// `lattice-mount down`, then waits for the process to exit.
    pub fn down(&mut self) {
        let out = self.run(&["down"]);
        assert!(out.status.success(), "down failed: {out:?}");
        let mut child = self.child.take().expect("daemon not running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "daemon exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "daemon did not exit after down");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(fstype(&self.mnt), None, "still mounted after down");
    }

    /// Kills the daemon with SIGKILL, leaving its dead mount behind for `up` to clean.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Runs `sh -c script` with the mount as working directory; panics on failure.
    pub fn sh(&self, script: &str) -> String {
        self.assert_mounted();
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&self.mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        lazy_unmount(&self.mnt);
    }
}

/// Detaches whatever is mounted at `path` (a no-op when nothing is).
pub fn lazy_unmount(path: &Path) {
    if fstype(path).is_some() {
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(path)
            .stderr(Stdio::null())
            .status();
        if fstype(path).is_some() {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `c` is a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures replay.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
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

/// The errno of a failed std::io call.
pub fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().unwrap()
}
