//! The daemon's lifecycle through the real binary: `up`, client commands, `down`.
//! Needs FUSE (`/dev/fuse`); skipped with a note where it is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the daemon may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn lattice(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lattice-mount"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("LATTICE_HOME")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A running `lattice-mount up`, killed if the test fails before `down`.
struct Daemon {
    child: Child,
    data_dir: PathBuf,
    mountpoint: PathBuf,
}

impl Daemon {
    fn start(root: &Path) -> Daemon {
        let data_dir = root.join("data");
        let mountpoint = root.join("mnt");
        let child = Command::new(env!("CARGO_BIN_EXE_lattice-mount"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("up")
            .arg(&mountpoint)
            .args(["--name", "test-node"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child,
            data_dir,
            mountpoint,
        };
        let start = Instant::now();
        loop {
            let out = lattice(&daemon.data_dir, &["status", "--json"]);
            if out.status.success() {
                return daemon;
            }
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("daemon exited early with {status}");
            }
            assert!(start.elapsed() < START_TIMEOUT, "daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn up_serves_create_and_status_and_down_unmounts_and_exits_0() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: no /dev/fuse");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(tmp.path());
    let mountpoint = daemon.mountpoint.canonicalize().unwrap();

    let created = stdout(&lattice(&daemon.data_dir, &["create", "docs"]));
    assert!(created.starts_with("created store docs ("), "{created}");
    let dup = lattice(&daemon.data_dir, &["create", "docs"]);
    assert_eq!(dup.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&dup.stderr),
        "lattice-mount: a store named \"docs\" already exists\n"
    );

    let json = stdout(&lattice(&daemon.data_dir, &["status", "--json"]));
    assert!(json.contains("\"display_name\":\"test-node\""), "{json}");
    assert!(
        json.contains(&format!("\"mountpoint\":\"{}\"", mountpoint.display())),
        "{json}"
    );
    assert!(json.contains("\"stores\":[{\"name\":\"docs\""), "{json}");
    let human = stdout(&lattice(&daemon.data_dir, &["status"]));
    assert!(human.lines().any(|l| l.starts_with("docs ")), "{human}");

    let second = lattice(
        &daemon.data_dir,
        &["up", tmp.path().join("other").to_str().unwrap()],
    );
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    let outside = lattice(&daemon.data_dir, &["history", tmp.path().to_str().unwrap()]);
    assert_eq!(outside.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&outside.stderr).contains("is not inside the mount"));
    let unknown = lattice(
        &daemon.data_dir,
        &["history", mountpoint.join("music/a").to_str().unwrap()],
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&unknown.stderr),
        "lattice-mount: no store named \"music\"\n"
    );
    let history = stdout(&lattice(
        &daemon.data_dir,
        &[
            "history",
            "--json",
            mountpoint.join("docs").to_str().unwrap(),
        ],
    ));
    assert!(
        history.starts_with("{\"path\":\"/docs\",\"entries\":["),
        "{history}"
    );

    stdout(&lattice(&daemon.data_dir, &["down"]));
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!daemon.data_dir.join("control.sock").exists());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&format!(" {} ", mountpoint.display())));
    let after = lattice(&daemon.data_dir, &["status"]);
    assert_eq!(after.status.code(), Some(3));
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: no /dev/fuse");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(tmp.path());
    // SAFETY: kill(2) on the child's pid, which we have not yet waited for.
    let rc = unsafe { libc::kill(daemon.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!daemon.data_dir.join("control.sock").exists());
}
