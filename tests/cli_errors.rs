//! The `lattice-mount` binary's error paths that need no daemon and no FUSE mount:
//! exit codes and the one-line error format.

mod common;

use std::process::{Command, Output};

use common::lattice;

fn stderr_line(out: &Output) -> String {
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got {stderr:?}");
    lines[0].to_string()
}

#[test]
fn client_commands_without_a_daemon_exit_3_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["down"],
        &["create", "docs"],
        &["history", "/tmp/x"],
        &["conflicts"],
        &["resolve", "/tmp/x", "--keep", "mine"],
        &["watch"],
        &["watch", "/tmp/x", "--json"],
    ] {
        let out = lattice(&data_dir, args);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        assert_eq!(
            stderr_line(&out),
            format!(
                "lattice-mount: no daemon running for data dir {} (start one with `lattice-mount up`)",
                data_dir.display()
            ),
            "{args:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(!data_dir.exists(), "clients must not create the data dir");
}

#[test]
fn a_stale_socket_file_without_a_daemon_counts_as_no_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(tmp.path().join("control.sock"));
    drop(listener.unwrap());
    let out = lattice(tmp.path(), &["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr_line(&out).starts_with("lattice-mount: no daemon running"));
}

#[test]
fn bad_arguments_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["frobnicate"][..],
        &[],
        &["create"],
        &["history"],
        &["status", "--bogus"],
        &["up", "/a", "/b"],
        &["resolve", "/a"],
        &["resolve", "/a", "--keep", "nope"],
        &["resolve", "/a", "--keep", "abc"],
        &["conflicts", "a", "b"],
    ] {
        let out = lattice(tmp.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn the_data_dir_comes_from_lattice_home_when_no_flag_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lattice-mount"))
        .arg("status")
        .env("LATTICE_HOME", tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr_line(&out).contains(&tmp.path().display().to_string()));
}

#[test]
fn up_on_a_mountpoint_that_is_a_file_fails_with_one_line_and_leaves_no_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let data_dir = tmp.path().join("data");
    let out = lattice(&data_dir, &["up", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_line(&out),
        format!(
            "lattice-mount: mountpoint {} is not a directory",
            file.display()
        )
    );
    assert!(!data_dir.join("control.sock").exists());
}

#[test]
fn up_on_a_busy_mountpoint_is_refused_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = lattice(tmp.path(), &["up", "/proc"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_line(&out),
        "lattice-mount: /proc is already a mount point (unmount it or choose another mountpoint)"
    );
}

#[test]
fn display_names_with_a_newline_a_slash_or_over_255_bytes_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let long = "x".repeat(300);
    for args in [
        &["up", "--name", "two\nlines"][..],
        &["up", "--name", "a/b"],
        &["join", "lm1abc", "--name", &long],
        &["join", "lm1abc", "--name", "two\nlines"],
    ] {
        let out = lattice(&data_dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("invalid display name"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!data_dir.exists(), "nothing may start with an invalid name");
}
