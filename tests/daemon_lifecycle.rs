//! The daemon's lifecycle through the real binary: `up`, client commands, `down`.
//! Needs FUSE (`/dev/fuse`); under `CI=true` a missing FUSE fails the run.

mod common;

use std::process::Output;

use common::{fuse_available, lattice, Daemon};

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn up_serves_create_and_status_and_down_unmounts_and_exits_0() {
    if !fuse_available() {
        return;
    }
    let mut daemon = Daemon::start();
    let tmp = daemon.dir.path().to_owned();
    let mountpoint = daemon.mnt.canonicalize().unwrap();

    let created = stdout(&lattice(&daemon.data, &["create", "docs"]));
    assert!(created.starts_with("created store docs ("), "{created}");
    let dup = lattice(&daemon.data, &["create", "docs"]);
    assert_eq!(dup.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&dup.stderr),
        "lattice-mount: a store named \"docs\" already exists\n"
    );

    let json = stdout(&lattice(&daemon.data, &["status", "--json"]));
    assert!(json.contains("\"display_name\":\"e2e\""), "{json}");
    assert!(
        json.contains(&format!("\"mountpoint\":\"{}\"", mountpoint.display())),
        "{json}"
    );
    assert!(json.contains("\"stores\":[{\"name\":\"docs\""), "{json}");
    let human = stdout(&lattice(&daemon.data, &["status"]));
    assert!(human.lines().any(|l| l.starts_with("docs ")), "{human}");

    let second = lattice(&daemon.data, &["up", tmp.join("other").to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    let outside = lattice(&daemon.data, &["history", tmp.to_str().unwrap()]);
    assert_eq!(outside.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&outside.stderr).contains("is not inside the mount"));
    let unknown = lattice(
        &daemon.data,
        &["history", mountpoint.join("music/a").to_str().unwrap()],
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&unknown.stderr),
        "lattice-mount: no store named \"music\"\n"
    );
    let history = stdout(&lattice(
        &daemon.data,
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

    daemon.down();
    assert!(!daemon.data.join("control.sock").exists());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&format!(" {} ", mountpoint.display())));
    let after = lattice(&daemon.data, &["status"]);
    assert_eq!(after.status.code(), Some(3));
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    if !fuse_available() {
        return;
    }
    let mut daemon = Daemon::start();
    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    assert!(
        !common::is_lattice_mount(&daemon.mnt),
        "still mounted after SIGTERM"
    );
    assert!(!daemon.data.join("control.sock").exists());
}
