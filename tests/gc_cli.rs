//! `retention`, `horizon` and `gc` end to end: real daemons, files written through the
//! FUSE mount, the CLI over the control socket, and both settings replicated to a member.

mod common;

use std::time::{Duration, Instant};

use common::{fuse_available, ok, random_bytes, within, Daemon};

/// How long the admin's setting may take to reach another member.
const SETTLE: Duration = Duration::from_secs(60);

/// Files deleted by the sweep test: more than the 2,048 rows one sweep takes.
const DELETED: usize = 2_500;

/// The bytes a `gc` line "STORE: freed N blobs, M bytes" reports for `store`.
fn freed_bytes(out: &str, store: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{store}: freed ")))
        .unwrap_or_else(|| panic!("no line for {store} in {out:?}"));
    line.rsplit(", ")
        .next()
        .and_then(|b| b.strip_suffix(" bytes"))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("unparsable {line:?}"))
}

/// The reclaimable bytes `status` shows for `store`.
fn reclaimable(status: &str, store: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{store}: content ")))
        .unwrap_or_else(|| panic!("no space line for {store} in {status:?}"));
    line.rsplit(", ")
        .next()
        .and_then(|b| b.strip_suffix(" bytes reclaimable"))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("unparsable {line:?}"))
}

/// `status` once every store's content space is measured for what it holds now: the
/// daemon measures in the background and shows the last figures meanwhile.
fn measured_status(d: &Daemon) -> String {
    for _ in 0..300 {
        let status = ok(d.run(&["status"]));
        if !status.contains("measuring again") && !status.contains("being measured") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the content space was not measured within 30 s");
}

#[test]
fn retention_zero_and_gc_through_the_cli_free_every_old_version_of_an_overwritten_file() {
    if !fuse_available() {
        return;
    }
    let d = Daemon::start();
    ok(d.run(&["create", "docs"]));
    assert_eq!(
        ok(d.run(&["retention", "docs"])).trim(),
        "docs keeps old versions 30 days"
    );
    assert_eq!(
        ok(d.run(&["retention", "docs", "0"])).trim(),
        "docs keeps old versions 0 days"
    );
    let len = 3 * 1024 * 1024;
    // Seeds are odd: `random_bytes` gives 2k and 2k+1 the same bytes.
    for seed in [1, 3, 5, 7] {
        std::fs::write(d.path("docs/big"), random_bytes(len, seed)).unwrap();
    }
    // Puts younger than the grace are kept whether named or not.
    std::thread::sleep(lattice_mount::PUT_GRACE + Duration::from_secs(1));
    let before = measured_status(&d);
    assert!(reclaimable(&before, "docs") >= 3 * len as u64, "{before}");
    let out = ok(d.run(&["gc", "docs"]));
    let freed = freed_bytes(&out, "docs");
    eprintln!("gc after 4 versions of {len} bytes: {out}");
    assert!(freed >= 3 * len as u64, "{out}");
    assert_eq!(
        std::fs::read(d.path("docs/big")).unwrap(),
        random_bytes(len, 7)
    );
    let status = ok(d.run(&["status"]));
    assert!(
        status.contains("bytes retained history (0 days), 0 bytes reclaimable"),
        "{status}"
    );
    assert_eq!(reclaimable(&status, "docs"), 0);
    let again = ok(d.run(&["gc"]));
    assert!(again.contains("freed 0 blobs, 0 bytes in total"), "{again}");
    let missing = d.run(&["gc", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no store named \"nope\""));
}

#[test]
fn deleted_files_past_retention_are_swept_from_the_store_and_stay_swept_after_a_restart() {
    if !fuse_available() {
        return;
    }
    let mut d = Daemon::start();
    ok(d.run(&["create", "docs"]));
    std::fs::create_dir_all(d.path("docs/old/sub")).unwrap();
    // More than one sweep batch.
    for n in 0..DELETED {
        std::fs::write(d.path(&format!("docs/old/sub/f{n}")), n.to_string()).unwrap();
    }
    std::fs::write(d.path("docs/kept.txt"), b"kept").unwrap();
    d.sh("rm -r docs/old");
    let docs = d.path("docs");
    let deleted = |d: &Daemon| ok(d.run(&["history", "--deleted", docs.to_str().unwrap()]));
    let listed = deleted(&d);
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.starts_with("docs/old/"))
            .count(),
        DELETED,
        "kept 30 days"
    );
    ok(d.run(&["retention", "docs", "0"]));
    // The single member settles its own removals at its next commits.
    within(Duration::from_secs(30), "the deleted files swept", || {
        !deleted(&d).contains("docs/old")
    });
    d.down();
    d.up();
    assert!(!deleted(&d).contains("docs/old"), "swept for good");
    assert_eq!(std::fs::read(d.path("docs/kept.txt")).unwrap(), b"kept");
    let names: Vec<String> = std::fs::read_dir(d.path("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["kept.txt".to_string()]);
}

/// The one line a refused command printed on stderr.
fn refused(out: std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn a_writer_is_refused_setting_changes_and_sees_the_admins_replicate() {
    if !fuse_available() {
        return;
    }
    let admin = Daemon::start_named("alice");
    let writer = Daemon::start_named("bob");
    ok(admin.run(&["create", "team"]));
    let token = ok(admin.run(&["invite", "team"]));
    ok(writer.run(&["join", token.trim()]));
    for setting in ["retention", "horizon"] {
        let err = refused(writer.run(&[setting, "team", "5"]));
        assert!(
            err.contains(&format!(
                "only an admin of team may set its {setting}; this node is a writer"
            )),
            "{err}"
        );
    }
    assert_eq!(
        ok(admin.run(&["horizon", "team"])).trim(),
        "team waits 90 days for a silent member before purging history without it"
    );
    for bad in ["0", "3651"] {
        let err = refused(admin.run(&["horizon", "team", bad]));
        assert!(err.contains("horizon must be 1 to 3650 days"), "{err}");
    }
    ok(admin.run(&["retention", "team", "7"]));
    assert_eq!(
        ok(admin.run(&["horizon", "team", "14"])).trim(),
        "team waits 14 days for a silent member before purging history without it"
    );
    let status = ok(admin.run(&["status"]));
    assert!(
        status.contains("; a member silent 14 days stops counting"),
        "{status}"
    );
    let json = ok(admin.run(&["status", "--json"]));
    assert!(
        json.contains(r#""retention_days":7,"horizon_days":14"#),
        "{json}"
    );
    let start = Instant::now();
    while !(ok(writer.run(&["retention", "team"])).contains("7 days")
        && ok(writer.run(&["horizon", "team"])).contains("14 days"))
    {
        assert!(start.elapsed() < SETTLE, "the settings did not replicate");
        std::thread::sleep(Duration::from_millis(100));
    }
}
