//! Replicated ignore rules end to end: two real daemons with real FUSE mounts on
//! loopback. Names the rules match stay on the node that made them (shown there, counted
//! by `status`, never signed or sent); `.latticeignore` itself replicates.

mod common;

use std::time::Duration;

use common::{fuse_available, ok, within, Daemon};

/// How long a change on one node may take to be visible on the other.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);

/// Polls `f` until it holds or `VISIBLE_WITHIN` passes.
fn eventually(what: &str, f: impl FnMut() -> bool) {
    within(VISIBLE_WITHIN, what, f);
}

/// Alice creates store `team` and Bob joins it; `None` where FUSE tests cannot run.
fn pair() -> Option<(Daemon, Daemon)> {
    if !fuse_available() {
        return None;
    }
    let a = Daemon::start_named("alice");
    let b = Daemon::start_named("bob");
    ok(a.run(&["create", "team"]));
    let token = ok(a.run(&["invite", "team"]));
    ok(b.run(&["join", token.trim()]));
    for d in [&a, &b] {
        d.assert_mounted();
    }
    Some((a, b))
}

/// The sorted names in `team/` (or `team/DIR`) on `d`, dot files included.
fn names(d: &Daemon, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.path(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn read(d: &Daemon, rel: &str) -> Option<String> {
    std::fs::read_to_string(d.path(rel)).ok()
}

/// Writes `marker` on `from` and waits until `to` has it: everything `from` would have
/// sent before it has arrived by then.
fn barrier(from: &Daemon, to: &Daemon, marker: &str) {
    std::fs::write(from.path(marker), marker).unwrap();
    eventually(marker, || read(to, marker).as_deref() == Some(marker));
}

#[test]
fn the_default_rules_keep_editor_temporaries_local_without_any_latticeignore() {
    let Some((a, b)) = pair() else {
        return;
    };
    let temporaries = [
        ".x.txt.swp",
        "4913",
        "x.txt~",
        ".#x.txt",
        "~$report.docx",
        ".~lock.a.odt#",
    ];
    for t in temporaries {
        std::fs::write(a.path(&format!("team/{t}")), "temp").unwrap();
    }
    barrier(&a, &b, "team/marker");
    let mut want: Vec<String> = temporaries.iter().map(|t| t.to_string()).collect();
    want.push("marker".into());
    want.sort();
    assert_eq!(
        names(&a, "team"),
        want,
        "alice sees her local files beside the rest"
    );
    assert_eq!(names(&b, "team"), ["marker"], "bob never sees them");
    assert_eq!(read(&a, "team/4913").as_deref(), Some("temp"));
    let status = ok(a.run(&["status"]));
    assert!(
        status.contains("team: 6 local files (24 bytes) kept on this node by ignore rules"),
        "{status}"
    );
    let json = ok(a.run(&["status", "--json"]));
    assert!(json.contains(r#""local":{"files":6,"bytes":24}"#), "{json}");
    assert!(!ok(b.run(&["status"])).contains("local files"));

    // Local files outlive a restart with the modes their user gave them.
    use std::os::unix::fs::PermissionsExt;
    let perm = |d: &Daemon| {
        let m = std::fs::metadata(d.path("team/4913")).unwrap();
        m.permissions().mode() & 0o777
    };
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
        .unwrap();
    assert_eq!(perm(&a), 0o666 & !umask, "created with the caller's mode");
    std::fs::set_permissions(a.path("team/4913"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut a = a;
    a.down();
    a.up();
    assert_eq!(read(&a, "team/4913").as_deref(), Some("temp"));
    assert_eq!(perm(&a), 0o640);

    // Removing a local file removes it, and only it; a second removal finds nothing.
    std::fs::remove_file(a.path("team/4913")).unwrap();
    let err = std::fs::remove_file(a.path("team/4913")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    want.retain(|n| n != "4913");
    assert_eq!(names(&a, "team"), want);
    assert_eq!(read(&b, "team/marker").as_deref(), Some("team/marker"));
}

#[test]
fn saving_in_vim_ships_only_the_final_file() {
    let Some((a, b)) = pair() else {
        return;
    };
    std::fs::write(a.path("team/x.txt"), "v1\n").unwrap();
    eventually("first version", || {
        read(&b, "team/x.txt").as_deref() == Some("v1\n")
    });
    // Real vim, with its swap file and its default write strategy (the `4913` probe,
    // then a rename or a copy of the original as backup).
    let out = std::process::Command::new("vim")
        .args(["-u", "NONE", "-i", "NONE", "-N", "-es"])
        .args(["-c", "set swapfile writebackup backupcopy=auto"])
        .args(["-c", "%s/v1/v2/", "-c", "wq", "x.txt"])
        .current_dir(a.path("team"))
        .output()
        .unwrap();
    assert!(out.status.success(), "vim: {out:?}");
    assert_eq!(read(&a, "team/x.txt").as_deref(), Some("v2\n"));
    eventually("saved version", || {
        read(&b, "team/x.txt").as_deref() == Some("v2\n")
    });
    barrier(&a, &b, "team/marker");
    assert_eq!(names(&b, "team"), ["marker", "x.txt"]);
    assert_eq!(
        names(&a, "team"),
        ["marker", "x.txt"],
        "vim removed its temporaries"
    );
    // Nothing vim made on the side ever reached bob, not even as a deleted file.
    let deleted = ok(b.run(&["history", "--deleted", b.path("team").to_str().unwrap()]));
    assert_eq!(deleted.trim(), "no deleted files");
}

#[test]
fn a_latticeignore_line_added_on_one_node_keeps_matching_files_local_everywhere() {
    let Some((a, b)) = pair() else {
        return;
    };
    std::fs::write(a.path("team/old.log"), "before the rule\n").unwrap();
    std::fs::create_dir(a.path("team/src")).unwrap();
    eventually("old.log", || read(&b, "team/old.log").is_some());
    // `!NAME` lifts a default rule.
    std::fs::write(a.path("team/.latticeignore"), "*.log\n!keep.swp\n").unwrap();
    std::fs::write(a.path("team/src/.latticeignore"), "*.o\n").unwrap();
    eventually("the rules", || {
        read(&b, "team/src/.latticeignore").is_some()
    });

    std::fs::write(a.path("team/a.log"), "alice's log\n").unwrap();
    std::fs::write(a.path("team/src/m.o"), "object\n").unwrap();
    std::fs::write(a.path("team/m.o"), "above the rule's directory\n").unwrap();
    std::fs::write(b.path("team/b.log"), "bob's log\n").unwrap();
    std::fs::write(a.path("team/keep.swp"), "shared\n").unwrap();
    // An already replicated file that the rule now matches stays replicated.
    std::fs::write(a.path("team/old.log"), "after the rule\n").unwrap();
    barrier(&a, &b, "team/marker-a");
    barrier(&b, &a, "team/marker-b");
    eventually("old.log edited", || {
        read(&b, "team/old.log").as_deref() == Some("after the rule\n")
    });
    assert_eq!(
        names(&a, "team"),
        [
            ".latticeignore",
            "a.log",
            "keep.swp",
            "m.o",
            "marker-a",
            "marker-b",
            "old.log",
            "src"
        ]
    );
    assert_eq!(
        names(&b, "team"),
        [
            ".latticeignore",
            "b.log",
            "keep.swp",
            "m.o",
            "marker-a",
            "marker-b",
            "old.log",
            "src"
        ]
    );
    assert_eq!(names(&a, "team/src"), [".latticeignore", "m.o"]);
    assert_eq!(names(&b, "team/src"), [".latticeignore"]);
    assert!(ok(a.run(&["status"])).contains("team: 2 local files"));
    assert!(ok(b.run(&["status"])).contains("team: 1 local files"));

    // Removing the rule does not send what it kept: a local file stays local.
    std::fs::write(a.path("team/.latticeignore"), "").unwrap();
    eventually("rule removed", || {
        read(&b, "team/.latticeignore").as_deref() == Some("")
    });
    std::fs::write(a.path("team/c.log"), "replicated again\n").unwrap();
    eventually("c.log", || read(&b, "team/c.log").is_some());
    assert!(!b.path("team/a.log").exists());
}

#[test]
fn a_rename_across_the_boundary_creates_or_deletes_the_replicated_file() {
    let Some((a, b)) = pair() else {
        return;
    };
    // Local to replicated: a signed create with the content, visible at once.
    a.sh("printf draft > team/notes.swp && mv team/notes.swp team/notes.txt && cat team/notes.txt >/dev/null");
    eventually("notes.txt", || {
        read(&b, "team/notes.txt").as_deref() == Some("draft")
    });
    assert_eq!(names(&a, "team"), ["notes.txt"]);
    // Local over an existing replicated file: a new version of that file.
    a.sh("printf final > team/.notes.swp && mv team/.notes.swp team/notes.txt");
    eventually("notes.txt v2", || {
        read(&b, "team/notes.txt").as_deref() == Some("final")
    });
    let history = ok(b.run(&["history", b.path("team/notes.txt").to_str().unwrap()]));
    assert!(
        history.lines().count() >= 2,
        "one file, two versions: {history}"
    );
    // Replicated to an ignored name: a delete there, a local file here.
    a.sh("mv team/notes.txt team/kept.swp && test \"$(cat team/kept.swp)\" = final");
    eventually("notes.txt gone", || !b.path("team/notes.txt").exists());
    barrier(&a, &b, "team/marker");
    assert_eq!(names(&a, "team"), ["kept.swp", "marker"]);
    assert_eq!(names(&b, "team"), ["marker"]);
    // A local directory is refused across the boundary (EXDEV), so mv copies it.
    a.sh("mkdir team/tmp.swp && echo inner > team/tmp.swp/f && mv team/tmp.swp team/tree");
    eventually("tree/f", || {
        read(&b, "team/tree/f").as_deref() == Some("inner\n")
    });
    assert!(!a.path("team/tmp.swp").exists());
    // A local rename stays local, and `rm` removes it.
    a.sh("mv team/kept.swp team/other.swp && rm team/other.swp");
    assert_eq!(names(&a, "team"), ["marker", "tree"]);
    // A replicated directory holding only local entries is not empty.
    a.sh("touch team/tree/f.swp && rm team/tree/f");
    let rmdir = std::fs::remove_dir(a.path("team/tree"));
    assert_eq!(common::errno_of(rmdir), libc::ENOTEMPTY);
    a.sh("rm -r team/tree");
    eventually("tree removed", || !b.path("team/tree").exists());
}

#[test]
fn a_malformed_latticeignore_line_is_reported_and_the_others_apply() {
    let Some((a, b)) = pair() else {
        return;
    };
    std::fs::write(a.path("team/.latticeignore"), "[z-a\n*.tmp\n").unwrap();
    std::fs::write(a.path("team/x.tmp"), "scratch").unwrap();
    barrier(&a, &b, "team/marker");
    assert!(!b.path("team/x.tmp").exists());
    assert!(a.path("team/x.tmp").exists());
    let status = ok(a.run(&["status"]));
    assert!(
        status.contains("team: .latticeignore line skipped: line 1:"),
        "{status}"
    );
    a.assert_mounted();
}

/// One node with store `team` whose `build/` is local-only, started with `up_args`;
/// `None` where FUSE tests cannot run.
fn single_with_local_build(up_args: &[&str]) -> Option<Daemon> {
    if !fuse_available() {
        return None;
    }
    let d = Daemon::start_with("solo", up_args);
    ok(d.run(&["create", "team"]));
    d.assert_mounted();
    std::fs::write(d.path("team/.latticeignore"), "build/\n").unwrap();
    std::fs::create_dir(d.path("team/build")).unwrap();
    Some(d)
}

/// The real file behind the local-only `team/build/NAME` in `d`'s data dir.
fn backing_of(d: &Daemon, name: &str) -> std::path::PathBuf {
    let stores = d.data.join("stores");
    for store in std::fs::read_dir(&stores).unwrap() {
        let local = store.unwrap().path().join("local");
        for anchor in std::fs::read_dir(&local).into_iter().flatten() {
            let p = anchor.unwrap().path().join("build").join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "no backing file for build/{name} under {}",
        stores.display()
    );
}

/// The `passthrough` line of `d`'s status.
fn passthrough_line(d: &Daemon) -> String {
    let status = ok(d.run(&["status"]));
    let line = status.lines().find(|l| l.starts_with("passthrough "));
    line.unwrap_or_else(|| panic!("no passthrough line in {status}"))
        .to_string()
}

/// Whether the running kernel is older than FUSE passthrough (Linux 6.9).
fn kernel_predates_passthrough() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>());
    let (major, minor) = (v.next(), v.next());
    matches!((major, minor), (Some(Ok(a)), Some(Ok(b))) if (a, b) < (6, 9))
}

/// Writes, appends to, truncates and reads back `team/build/out.bin` through the mount
/// with a second handle open on it at once, and checks every read against the bytes
/// the real file holds.
fn local_file_reads_back_exactly(d: &Daemon) {
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    let path = d.path("team/build/out.bin");
    let mut w = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    w.write_all(&[b'a'; 8192]).unwrap();
    let reader = std::fs::File::open(&path).expect("a second open of a file already open");
    let mut got = [0u8; 8192];
    reader.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(got, [b'a'; 8192]);
    let mut appender = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    appender.write_all(b"tail").unwrap();
    drop(appender);
    w.set_len(8190).unwrap();
    drop(w);
    let mut all = Vec::new();
    reader.try_clone().unwrap().read_to_end(&mut all).unwrap();
    assert_eq!(
        all, [b'a'; 8190],
        "the truncate took the appended tail away"
    );
    drop(reader);
    assert_eq!(std::fs::read(backing_of(d, "out.bin")).unwrap(), all);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8190);
    assert_eq!(
        std::os::unix::fs::MetadataExt::blksize(&std::fs::metadata(&path).unwrap()),
        1 << 20,
        "a local-only file asks for whole requests too"
    );
    std::fs::write(&path, "again").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "again");
}

#[test]
fn the_kernel_reads_and_writes_local_only_files_directly_where_it_may() {
    use std::os::unix::fs::FileExt;
    let Some(d) = single_with_local_build(&[]) else {
        return;
    };
    local_file_reads_back_exactly(&d);
    let line = passthrough_line(&d);
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(line.contains("CAP_SYS_ADMIN"), "{line}");
        return;
    }
    if kernel_predates_passthrough() {
        assert!(line.contains("no FUSE passthrough"), "{line}");
        return;
    }
    assert!(line.starts_with("passthrough on:"), "{line}");
    // A page the kernel wrote through its cache would still show the old bytes after
    // the real file changed under it; a passed-through handle reads the real file.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.path("team/build/out.bin"))
        .unwrap();
    f.write_all_at(&[b'a'; 4096], 0).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(backing_of(&d, "out.bin"))
        .unwrap()
        .write_all_at(&[b'b'; 4096], 0)
        .unwrap();
    let mut got = [0u8; 4096];
    f.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(got, [b'b'; 4096], "the read went to the real file");
}

#[test]
fn with_no_passthrough_local_only_files_are_served_by_the_daemon() {
    let Some(d) = single_with_local_build(&["--no-passthrough"]) else {
        return;
    };
    local_file_reads_back_exactly(&d);
    let line = passthrough_line(&d);
    assert!(
        line.starts_with("passthrough off (--no-passthrough)"),
        "{line}"
    );
    let json = ok(d.run(&["status", "--json"]));
    assert!(
        json.contains(r#""passthrough":"off (--no-passthrough)"#),
        "{json}"
    );
}

#[test]
fn a_file_renamed_across_the_boundary_while_open_opens_again_under_its_new_name() {
    use std::io::{Read, Write};
    let Some(d) = single_with_local_build(&[]) else {
        return;
    };
    // Local to replicated while a handle (passed through, where the kernel may) is open.
    let mut w = std::fs::File::create(d.path("team/build/report.tmp")).unwrap();
    w.write_all(b"draft one").unwrap();
    std::fs::rename(d.path("team/build/report.tmp"), d.path("team/report.txt")).unwrap();
    let mut got = String::new();
    std::fs::File::open(d.path("team/report.txt"))
        .expect("an open of the renamed file while the old handle is open")
        .read_to_string(&mut got)
        .unwrap();
    assert_eq!(got, "draft one");
    drop(w);
    std::fs::write(d.path("team/report.txt"), "draft two").unwrap();
    assert_eq!(read(&d, "team/report.txt").as_deref(), Some("draft two"));

    // Replicated to local while a handle is open.
    let r = std::fs::File::open(d.path("team/report.txt")).unwrap();
    std::fs::rename(d.path("team/report.txt"), d.path("team/build/old.txt")).unwrap();
    let mut again = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.path("team/build/old.txt"))
        .expect("an open of the local file while the replicated handle is open");
    let mut got = String::new();
    again.read_to_string(&mut got).unwrap();
    assert_eq!(got, "draft two");
    again.write_all(b", kept here").unwrap();
    drop((r, again));
    assert_eq!(
        read(&d, "team/build/old.txt").as_deref(),
        Some("draft two, kept here")
    );
    assert_eq!(names(&d, "team"), [".latticeignore", "build"]);
}
