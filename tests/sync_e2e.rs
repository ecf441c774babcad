//! End to end with several real daemons on one machine: separate data dirs and FUSE
//! mounts, networking on loopback with relays disabled, driven by the CLI and shell tools.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fuse_available, ok, random_bytes, within, Daemon};

/// How long a change on one node may take to be visible on another.
const VISIBLE_WITHIN: Duration = Duration::from_secs(2);
/// How long a merge after `resume`, or a large transfer, may take.
const SETTLE: Duration = Duration::from_secs(60);

/// A sorted listing of every path under `root` with a checksum of each file's bytes, or
/// `None` when an entry vanished while it was listed (the tree is still converging).
fn tree_sum(root: &Path) -> Option<Vec<String>> {
    let gone = |e: std::io::Error| {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::NotFound,
            "listing {root:?}: {e}"
        );
    };
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(gone).ok()? {
            let p = e.map_err(gone).ok()?.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).map_err(gone).ok()?;
            if meta.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).map_err(gone).ok()?;
                out.push(format!("{rel} {}", blake3::hash(&bytes).to_hex()));
            }
        }
    }
    out.sort();
    Some(out)
}

/// Starts `n` daemons; the first creates store `team` and invites the others.
fn team(names: &[&str]) -> Vec<Daemon> {
    let nodes: Vec<Daemon> = names.iter().map(|n| Daemon::start_named(n)).collect();
    ok(nodes[0].run(&["create", "team"]));
    for d in &nodes[1..] {
        let token = ok(nodes[0].run(&["invite", "team"]));
        let out = ok(d.run(&["join", token.trim()]));
        assert!(out.contains("joined store team"), "{out}");
        assert!(d.path("team").is_dir());
    }
    nodes
}

#[test]
fn changes_on_one_node_show_on_the_others_within_two_seconds() {
    if !fuse_available() {
        return;
    }
    let nodes = team(&["alice", "bob", "carol"]);
    let (a, others) = (&nodes[0], &nodes[1..]);
    let mut worst = Duration::ZERO;
    let mut check = |what: &str, f: &dyn Fn(&Daemon) -> bool| {
        for d in others {
            worst = worst.max(within(VISIBLE_WITHIN, what, || f(d)));
        }
    };
    a.sh("mkdir team/docs && echo one > team/docs/a.txt");
    check("create", &|d| {
        std::fs::read_to_string(d.path("team/docs/a.txt")).is_ok_and(|s| s == "one\n")
    });
    a.sh("echo two > team/docs/a.txt");
    check("edit", &|d| {
        std::fs::read_to_string(d.path("team/docs/a.txt")).is_ok_and(|s| s == "two\n")
    });
    a.sh("echo three >> team/docs/a.txt");
    check("append", &|d| {
        std::fs::read_to_string(d.path("team/docs/a.txt")).is_ok_and(|s| s == "two\nthree\n")
    });
    a.sh("mv team/docs/a.txt team/b.txt");
    check("move", &|d| {
        d.path("team/b.txt").exists() && !d.path("team/docs/a.txt").exists()
    });
    a.sh("rm team/b.txt && rmdir team/docs");
    check("delete", &|d| {
        !d.path("team/b.txt").exists() && !d.path("team/docs").exists()
    });
    // And back the other way, from the last node.
    nodes[2].sh("echo from-carol > team/c.txt");
    within(VISIBLE_WITHIN, "create from carol", || {
        std::fs::read_to_string(a.path("team/c.txt")).is_ok_and(|s| s == "from-carol\n")
    });
    // Directory times (and a file's ctime after link and unlink) come from the ops, so
    // every node shows the same ones.
    a.sh(
        "mkdir team/t && echo x > team/t/x && mv team/t/x team/t/y && ln team/t/y team/y \
          && rm team/t/y && mkdir team/t/sub",
    );
    let times = |d: &Daemon| -> Option<Vec<(i64, i64, i64, i64)>> {
        use std::os::unix::fs::MetadataExt;
        ["team", "team/t", "team/y"]
            .iter()
            .map(|rel| {
                let m = std::fs::metadata(d.path(rel)).ok()?;
                Some((m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
            })
            .collect()
    };
    let mine = times(a).expect("alice's own changes");
    check("directory times", &|d| times(d).as_ref() == Some(&mine));
    eprintln!("slowest change to show up: {worst:?}");
    for d in &nodes {
        d.assert_mounted();
    }
}

#[test]
fn offline_edits_merge_on_resume_into_identical_trees() {
    if !fuse_available() {
        return;
    }
    let nodes = team(&["alice", "bob"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    a.sh("mkdir team/x team/y && echo base > team/doc.txt && echo start > team/chat.log");
    within(SETTLE, "base on bob", || {
        b.path("team/x").is_dir() && b.path("team/chat.log").exists() && b.path("team/y").is_dir()
    });
    within(SETTLE, "base content on bob", || {
        std::fs::read_to_string(b.path("team/doc.txt")).is_ok_and(|s| s == "base\n")
            && std::fs::read_to_string(b.path("team/chat.log")).is_ok_and(|s| s == "start\n")
    });
    ok(a.run(&["pause", "team"]));
    ok(b.run(&["pause", "team"]));
    let status = ok(a.run(&["status"]));
    assert!(status.contains("paused"), "{status}");
    a.sh("echo from-alice > team/doc.txt && echo alice-line >> team/chat.log && mv team/x team/y/");
    b.sh("echo from-bob > team/doc.txt && echo bob-line >> team/chat.log && mv team/y team/x/");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_to_string(b.path("team/doc.txt")).unwrap(),
        "from-bob\n"
    );
    ok(a.run(&["resume", "team"]));
    ok(b.run(&["resume", "team"]));
    within(SETTLE, "identical trees after resume", || {
        let sum = tree_sum(&a.path("team"));
        sum.is_some()
            && sum == tree_sum(&b.path("team"))
            && sum.iter().flatten().any(|l| l.contains("conflict"))
    });
    let listing = tree_sum(&a.path("team")).expect("the trees have settled");
    let names: Vec<&String> = listing.iter().filter(|l| l.contains("doc")).collect();
    assert_eq!(names.len(), 2, "winner plus one conflict copy: {listing:?}");
    let chat = std::fs::read_to_string(a.path("team/chat.log")).unwrap();
    assert!(
        chat.starts_with("start\n") && chat.contains("alice-line\n") && chat.contains("bob-line\n"),
        "{chat:?}"
    );
    // No cycle: exactly one of x, y is at the top, holding the other.
    let top_x = a.path("team/x").is_dir();
    let top_y = a.path("team/y").is_dir();
    assert!(top_x != top_y, "one move wins: {listing:?}");
    assert!(
        a.path("team/x/y").is_dir() || a.path("team/y/x").is_dir(),
        "{listing:?}"
    );
}

#[test]
fn a_large_file_arrives_intact_even_when_the_receiver_is_killed_midway() {
    if !fuse_available() {
        return;
    }
    let mut nodes = team(&["alice", "bob"]);
    let data = random_bytes(256 * 1024 * 1024, 11);
    let start = Instant::now();
    std::fs::write(nodes[0].path("team/big.bin"), &data).unwrap();
    let wrote = start.elapsed();
    // Kill bob as soon as the file's name has arrived, before its content has.
    within(SETTLE, "big.bin listed on bob", || {
        nodes[1].path("team/big.bin").exists()
    });
    nodes[1].kill9();
    nodes[1].up();
    let b = &nodes[1];
    within(SETTLE, "big.bin complete on bob", || {
        std::fs::metadata(b.path("team/big.bin")).is_ok_and(|m| m.len() == data.len() as u64)
    });
    let got = std::fs::read(b.path("team/big.bin")).unwrap();
    assert!(got == data, "256 MiB differ after the transfer");
    eprintln!(
        "write took {wrote:?}; total until readable on bob {:?}",
        start.elapsed()
    );
}

/// Bytes of the files under `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[test]
fn a_large_file_still_being_written_is_already_arriving_on_the_other_node() {
    use std::io::Write;
    if !fuse_available() {
        return;
    }
    let nodes = team(&["alice", "bob"]);
    // Chunks are announced to gossip neighbours: first see a write reach bob at once.
    for i in 0.. {
        assert!(i < 50, "no write of alice reached bob by gossip");
        let name = format!("team/ping-{i}");
        std::fs::write(nodes[0].path(&name), b"ping").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        if nodes[1].path(&name).exists() {
            break;
        }
    }
    let before = dir_bytes(&nodes[1].data);
    let data = random_bytes(48 * 1024 * 1024, 13);
    let mut file = std::fs::File::create(nodes[0].path("team/big.bin")).unwrap();
    for piece in data.chunks(1024 * 1024) {
        file.write_all(piece).unwrap();
    }
    // Still open on alice: the file bob lists is the empty one its creation made, and
    // bob already holds content of it.
    within(SETTLE, "content of the open file on bob", || {
        dir_bytes(&nodes[1].data) >= before + 16 * 1024 * 1024
    });
    assert_eq!(
        std::fs::metadata(nodes[1].path("team/big.bin"))
            .unwrap()
            .len(),
        0
    );
    drop(file);
    let b = &nodes[1];
    within(SETTLE, "big.bin complete on bob", || {
        std::fs::metadata(b.path("team/big.bin")).is_ok_and(|m| m.len() == data.len() as u64)
    });
    assert!(std::fs::read(b.path("team/big.bin")).unwrap() == data);
}

#[test]
fn a_snapshot_is_the_same_read_only_tree_on_every_node_and_keeps_its_content_until_dropped() {
    if !fuse_available() {
        return;
    }
    let nodes = team(&["alice", "bob"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let big = random_bytes(3 << 20, 7);
    std::fs::write(a.path("team/big.bin"), &big).unwrap();
    a.sh("mkdir team/docs && echo one > team/docs/a.txt && ln -s docs/a.txt team/link");
    let before = tree_sum(&a.path("team")).unwrap();
    within(SETTLE, "the tree on bob", || {
        tree_sum(&b.path("team")).as_ref() == Some(&before)
    });

    let out = ok(a.run(&["snapshot", "team", "v1"]));
    assert!(out.contains("recorded snapshot v1 of team"), "{out}");
    a.sh("echo two > team/docs/a.txt && rm team/big.bin && echo new > team/new.txt");
    let snapshot = |d: &Daemon| tree_sum(&d.path("team/.snapshots/v1"));
    assert_eq!(snapshot(a).as_ref(), Some(&before));
    within(SETTLE, "the snapshot on bob, its content fetched", || {
        snapshot(b).as_ref() == Some(&before)
    });
    assert_eq!(
        std::fs::read_link(b.path("team/.snapshots/v1/link")).unwrap(),
        Path::new("docs/a.txt")
    );
    within(VISIBLE_WITHIN, "bob's live tree moves on", || {
        std::fs::read_to_string(b.path("team/new.txt")).is_ok()
    });
    let listed = ok(b.run(&["snapshot", "team"]));
    assert!(
        listed.starts_with("v1\t") && listed.contains("by alice"),
        "{listed}"
    );

    // Read-only, whatever the call.
    let erofs = |r: std::io::Result<()>| {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    };
    erofs(std::fs::write(
        b.path("team/.snapshots/v1/docs/a.txt"),
        b"x",
    ));
    erofs(std::fs::write(
        b.path("team/.snapshots/v1/docs/b.txt"),
        b"x",
    ));
    erofs(std::fs::remove_file(b.path("team/.snapshots/v1/big.bin")));
    erofs(std::fs::create_dir(b.path("team/.snapshots/v2")));
    erofs(std::fs::rename(
        b.path("team/.snapshots/v1/docs"),
        b.path("team/docs2"),
    ));
    let made = std::fs::create_dir(a.path("team/docs/.snapshots"));
    assert!(made.is_ok(), "only the store root's name is reserved");

    // Retention 0 and a collection keep what the snapshot needs ...
    let freed = |d: &Daemon| -> u64 {
        let out = ok(d.run(&["gc", "team"]));
        out.lines()
            .find_map(|l| l.strip_prefix("team: freed "))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|l| l.strip_suffix(" bytes"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{out}"))
    };
    ok(a.run(&["retention", "team", "0"]));
    // Puts younger than the grace are kept whether needed or not.
    std::thread::sleep(lattice_mount::PUT_GRACE + Duration::from_secs(1));
    assert!(freed(a) < big.len() as u64);
    assert_eq!(snapshot(a).as_ref(), Some(&before));
    // ... until it is dropped, on any node, for every node.
    let out = ok(b.run(&["snapshot", "team", "--rm", "v1"]));
    assert!(out.contains("dropped snapshot v1 of team"), "{out}");
    within(VISIBLE_WITHIN, "the snapshot gone on alice", || {
        !a.path("team/.snapshots").exists()
    });
    assert!(freed(a) >= big.len() as u64);
    let err = b.run(&["snapshot", "team", "--rm", "v1"]);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("no snapshot named"),
        "{err:?}"
    );
    for d in &nodes {
        d.assert_mounted();
    }
}

/// Two network namespaces of this test joined by a veth pair (10.77.0.1/24 and
/// 10.77.0.2/24, each its namespace's default route), removed on drop.
struct Lan {
    names: [String; 2],
}

impl Lan {
    fn new() -> Lan {
        let tag = std::process::id() % 100_000;
        let names = [format!("lm{tag}a"), format!("lm{tag}b")];
        let (va, vb) = (format!("lv{tag}a"), format!("lv{tag}b"));
        let lan = Lan { names };
        let [a, b] = &lan.names;
        for args in [
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", a],
            vec!["link", "set", &vb, "netns", b],
            vec!["-n", a, "addr", "add", "10.77.0.1/24", "dev", &va],
            vec!["-n", b, "addr", "add", "10.77.0.2/24", "dev", &vb],
            vec!["-n", a, "link", "set", &va, "up"],
            vec!["-n", b, "link", "set", &vb, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
            // As on any real network: multicast (local discovery) needs a route.
            vec!["-n", a, "route", "add", "default", "dev", &va],
            vec!["-n", b, "route", "add", "default", "dev", &vb],
        ] {
            let out = std::process::Command::new("ip")
                .args(&args)
                .output()
                .unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// The ports of the direct addresses `peers team` on `d` lists for `member`.
fn ports(d: &Daemon, member: &str) -> Vec<String> {
    let out = ok(d.run(&["peers", "team"]));
    let row = out
        .lines()
        .find(|l| l.starts_with(member))
        .unwrap_or_else(|| panic!("{out}"));
    row.split_whitespace()
        .filter_map(|w| w.rsplit_once(':').map(|(_, port)| port.to_string()))
        .collect()
}

#[test]
fn members_on_one_network_find_each_other_after_both_move_to_new_ports() {
    if !fuse_available() {
        return;
    }
    let lan = Lan::new();
    let mut a = Daemon::start_in("alice", &[], Some(&lan.names[0]));
    let mut b = Daemon::start_in("bob", &[], Some(&lan.names[1]));
    ok(a.run(&["create", "team"]));
    let token = ok(a.run(&["invite", "team"]));
    ok(b.run(&["join", token.trim()]));
    a.sh("echo one > team/one.txt");
    within(SETTLE, "one on bob", || b.path("team/one.txt").exists());
    let before = [ports(&a, "alice"), ports(&b, "bob")];

    // Both restart on new ports, with no relay: the addresses each holds of the other
    // are stale, and only local network discovery can bring them together again.
    a.down();
    b.down();
    for d in [&a, &b] {
        // A node binds the port it had before; without the saved one it takes a new one.
        std::fs::remove_file(d.data.join("port")).unwrap();
    }
    a.up();
    b.up();
    let after = [ports(&a, "alice"), ports(&b, "bob")];
    for (old, new) in before.iter().zip(&after) {
        assert!(new.iter().all(|p| !old.contains(p)), "{old:?} -> {new:?}");
    }
    a.sh("echo two > team/two.txt");
    let took = within(SETTLE, "two on bob", || {
        std::fs::read_to_string(b.path("team/two.txt")).is_ok_and(|s| s == "two\n")
    });
    eprintln!("found again and synced in {took:?}");
    a.assert_mounted();
    b.assert_mounted();
}

#[test]
fn a_reader_sees_the_store_but_cannot_write() {
    if !fuse_available() {
        return;
    }
    let a = Daemon::start_named("alice");
    let r = Daemon::start_named("reader");
    ok(a.run(&["create", "team"]));
    a.sh("echo hello > team/hello.txt");
    let token = ok(a.run(&["invite", "team", "--role", "reader"]));
    ok(r.run(&["join", token.trim()]));
    within(SETTLE, "hello on the reader", || {
        std::fs::read_to_string(r.path("team/hello.txt")).is_ok_and(|s| s == "hello\n")
    });
    let err = std::fs::write(r.path("team/new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::remove_file(r.path("team/hello.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // Local-only files are the reader's own: it makes and removes them as anywhere.
    std::fs::write(r.path("team/.new.txt.swp"), b"swap").unwrap();
    std::fs::remove_file(r.path("team/.new.txt.swp")).unwrap();
    assert!(!r.path("team/.new.txt.swp").exists());
    let peers = ok(a.run(&["peers", "team"]));
    assert!(
        peers.contains("reader") && peers.contains("online"),
        "{peers}"
    );
}

#[test]
fn tokens_are_single_use_and_bad_ones_are_refused_with_one_line() {
    if !fuse_available() {
        return;
    }
    let nodes = team(&["alice", "bob"]);
    let c = Daemon::start_named("carol");
    let token = ok(nodes[0].run(&["invite", "team", "--expires", "1h"]));
    ok(c.run(&["join", token.trim()]));
    let d = Daemon::start_named("dave");
    for (bad, expect) in [
        (token.trim().to_string(), "used"),
        ("lm1garbage".to_string(), "token"),
        (String::new(), "token"),
    ] {
        let out = d.run(&["join", &bad]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.to_lowercase().contains(expect), "{err}");
    }
    let withdrawn = ok(nodes[0].run(&["invite", "team"]));
    let out = ok(nodes[0].run(&["revoke", "team", withdrawn.trim()]));
    assert!(out.contains("revoked the invite"), "{out}");
    let out = d.run(&["join", withdrawn.trim()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("revoked"), "{err}");
    let expired = ok(nodes[0].run(&["invite", "team", "--expires", "0s"]));
    let out = d.run(&["join", expired.trim()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"));
    assert!(!d.path("team").exists());
    // Revocation cuts a member off.
    let bob = ok(nodes[1].run(&["status", "--json"]));
    let key = bob.split("\"node_id\":\"").nth(1).unwrap()[..16].to_string();
    ok(nodes[0].run(&["revoke", "team", &key]));
    // Whatever bob writes from now on stays with him (his mount turns read-only if the
    // revocation reached him before the cut).
    let _ = std::fs::write(nodes[1].path("team/after-revoke.txt"), b"x");
    let _ = nodes[1].run(&["sync", "team"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!nodes[0].path("team/after-revoke.txt").exists());
    let peers = ok(nodes[0].run(&["peers", "team"]));
    assert!(!peers.contains("bob"), "{peers}");
    nodes[0].assert_mounted();
}

/// A `lattice-mount watch` child of a daemon, its stdout lines gathered by a thread.
struct Watcher {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: std::io::BufReader<std::process::ChildStderr>,
}

impl Watcher {
    /// Starts `watch ARGS` on `d` and waits until it reports that it is watching.
    fn start(d: &Daemon, args: &[&str]) -> Watcher {
        use std::io::BufRead;
        let mut child = d
            .cli()
            .arg("watch")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first).unwrap();
        assert!(first.starts_with("watching team"), "{first:?}");
        Watcher {
            child,
            lines,
            stderr: err,
        }
    }

    /// Waits until a line holds every one of `parts`; returns it.
    fn expect(&self, parts: &[&str]) -> String {
        let mut found = None;
        within(
            VISIBLE_WITHIN,
            &format!("watch line with {parts:?}"),
            || {
                found = self
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| parts.iter().all(|p| l.contains(p)))
                    .cloned();
                found.is_some()
            },
        );
        found.unwrap()
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (bounded) for the watch to exit; returns its status and the rest of stderr.
    fn exit(&mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let mut status = None;
        within(SETTLE, "watch exits", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        (status.unwrap(), rest)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_conflict_shows_on_both_nodes_one_resolve_settles_it_everywhere_and_watch_sees_it_all() {
    if !fuse_available() {
        return;
    }
    let mut nodes = team(&["alice", "bob"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut json = Watcher::start(a, &["--json"]);
    let plain = Watcher::start(a, &[a.path("team").to_str().unwrap()]);
    a.sh("echo base > team/doc.txt && echo base > team/notes.txt");
    json.expect(&[
        "\"path\":\"team/doc.txt\"",
        "\"author_name\":\"alice\"",
        "\"local\":true",
    ]);
    within(SETTLE, "doc on bob", || {
        std::fs::read_to_string(b.path("team/doc.txt")).is_ok_and(|s| s == "base\n")
            && std::fs::read_to_string(b.path("team/notes.txt")).is_ok_and(|s| s == "base\n")
    });
    ok(a.run(&["pause", "team"]));
    ok(b.run(&["pause", "team"]));
    a.sh("echo from-alice > team/doc.txt && echo alice-notes > team/notes.txt");
    b.sh("echo from-bob > team/doc.txt && echo bob-notes > team/notes.txt");
    ok(a.run(&["resume", "team"]));
    ok(b.run(&["resume", "team"]));
    for d in [a, b] {
        within(SETTLE, "the conflict listed", || {
            let out = ok(d.run(&["conflicts", "--json"]));
            out.contains("\"path\":\"team/doc.txt\"") && out.matches("\"version\"").count() == 4
        });
    }
    let listed = ok(b.run(&["conflicts"]));
    eprintln!("conflicts on bob:\n{listed}");
    assert!(
        listed.contains("alice (") && listed.contains("bob ("),
        "{listed}"
    );
    assert_eq!(ok(a.run(&["conflicts", "team"])).lines().count(), 6);
    let resolved = ok(b.run(&[
        "resolve",
        b.path("team/doc.txt").to_str().unwrap(),
        "--keep",
        "mine",
    ]));
    eprintln!("resolve on bob:\n{resolved}");
    assert!(
        resolved.starts_with("resolved team/doc.txt: keeps version"),
        "{resolved}"
    );
    let both = ok(a.run(&[
        "resolve",
        a.path("team/notes.txt").to_str().unwrap(),
        "--keep",
        "both",
    ]));
    eprintln!("resolve --keep both on alice:\n{both}");
    let copy = both
        .lines()
        .find_map(|l| l.strip_prefix("kept as a file: team/"))
        .expect("a copy is named")
        .to_string();
    assert!(copy.starts_with("notes (conflict "), "{both}");
    for d in [a, b] {
        within(
            SETTLE,
            "bob's doc, and notes with its copy as files",
            || {
                let mut names: Vec<String> = std::fs::read_dir(d.path("team"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                let read =
                    |p: &str| std::fs::read_to_string(d.path("team").join(p)).unwrap_or_default();
                let mut notes = [read("notes.txt"), read(&copy)];
                notes.sort();
                names == ["doc.txt", copy.as_str(), "notes.txt"]
                    && read("doc.txt") == "from-bob\n"
                    && notes == ["alice-notes\n", "bob-notes\n"]
            },
        );
        assert_eq!(ok(d.run(&["conflicts"])), "no conflicts\n");
        // The copy is an ordinary file now: writable, unlike a conflict copy.
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.path("team").join(&copy))
            .unwrap();
    }
    // Watch on alice saw bob's resolution, carried by the intention bob's history names.
    let dismiss = json.expect(&[
        "\"op\":\"dismiss\"",
        "\"author_name\":\"bob\"",
        "\"local\":false",
    ]);
    assert!(dismiss.contains("\"path\":\"team/doc.txt\""), "{dismiss}");
    let history = ok(b.run(&[
        "history",
        b.path("team/doc.txt").to_str().unwrap(),
        "--json",
    ]));
    let intention = dismiss.split("\"intention\":\"").nth(1).unwrap()[..64].to_string();
    assert!(
        history.contains(&format!("\"intention\":\"{intention}\",\"op\":\"dismiss")),
        "{history}"
    );
    b.sh("mv team/doc.txt team/final.txt");
    json.expect(&[
        "\"op\":\"move\"",
        "\"path\":\"team/final.txt\"",
        "\"old_path\":\"team/doc.txt\"",
        "\"author_name\":\"bob\"",
    ]);
    plain.expect(&["move", "team/doc.txt -> team/final.txt"]);
    eprintln!("watch on alice:\n{}", plain.lines().join("\n"));
    eprintln!("watch --json on alice:\n{}", json.lines().join("\n"));
    // The daemon going down ends the watch with one line and a failure.
    nodes[0].down();
    let (status, rest) = json.exit();
    assert!(!status.success(), "{status}");
    assert_eq!(
        rest, "lattice-mount: the daemon stopped; the watch ended\n",
        "{rest:?}"
    );
}

#[test]
fn a_member_leaves_and_an_admin_deletes_the_store_for_everyone() {
    if !fuse_available() {
        return;
    }
    let nodes = team(&["alice", "bob", "carol"]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // Carol fetches content only when read: her copy must fetch what is not here.
    ok(c.run(&["fetch-mode", "team", "on-demand"]));
    a.sh(
        "mkdir -p team/docs/deep && echo hello > team/docs/a.txt && chmod 600 team/docs/a.txt \
         && head -c 700000 /dev/urandom > team/docs/deep/big.bin && ln -s docs/a.txt team/link",
    );
    within(SETTLE, "the names reach carol", || {
        c.path("team/docs/deep/big.bin").exists() && c.path("team/link").exists()
    });

    // rmdir at the mount root names the command instead of a bare EPERM.
    let rmdir = std::fs::remove_dir(b.path("team"));
    assert_eq!(common::errno_of(rmdir), libc::EBUSY);

    // Without --yes and without a terminal, leave refuses and changes nothing.
    let out = b
        .cli()
        .args(["leave", "team"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stdin is not a terminal"), "{err}");
    assert!(b.path("team").is_dir());

    let store_dirs = |d: &Daemon| std::fs::read_dir(d.data.join("stores")).unwrap().count();
    assert_eq!(store_dirs(b), 1);
    let out = ok(b.run(&["leave", "team", "--yes"]));
    assert!(out.contains("member(s) confirmed the leave"), "{out}");
    assert!(out.contains("removed team"), "{out}");
    assert_eq!(store_dirs(b), 0, "bob's data dir keeps no store");
    let root: Vec<_> = std::fs::read_dir(&b.mnt).unwrap().collect();
    assert!(root.is_empty(), "bob's mount root still lists {root:?}");
    assert!(!b.path("team").exists());
    within(SETTLE, "alice sees bob as left", || {
        let peers = ok(a.run(&["peers", "team"]));
        peers
            .lines()
            .any(|l| l.contains("bob") && l.contains("left"))
    });

    // Only an admin deletes: carol is a writer.
    let out = c.run(&["delete", "team", "--yes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only an admin of team may delete it"), "{err}");

    let out = ok(a.run(&["delete", "team", "--yes"]));
    assert!(out.contains("deleted team"), "{out}");
    within(SETTLE, "carol sees the delete", || {
        ok(c.run(&["status", "--json"])).contains(r#""deleted":true"#)
    });
    assert!(ok(c.run(&["status"])).contains("deleted by an admin"));
    let write = std::fs::write(c.path("team/new.txt"), b"x");
    assert_eq!(common::errno_of(write), libc::EROFS);
    let append = std::fs::OpenOptions::new()
        .append(true)
        .open(c.path("team/docs/a.txt"));
    assert_eq!(common::errno_of(append), libc::EROFS);

    let copy = c.dir.path().join("copy");
    let out = ok(c.run(&["leave", "team", "--yes", "--export", copy.to_str().unwrap()]));
    assert!(out.contains("copied team into"), "{out}");
    assert!(out.contains("was deleted by an admin"), "{out}");
    let diff = std::process::Command::new("diff")
        .arg("-r")
        .arg(&copy)
        .arg(a.path("team"))
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "the copy differs from the tree: {}",
        String::from_utf8_lossy(&diff.stdout)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(copy.join("docs/a.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for rel in ["docs/a.txt", "docs/deep", "docs/deep/big.bin"] {
        let mtime = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
        assert_eq!(
            mtime(copy.join(rel)),
            mtime(a.path("team").join(rel)),
            "{rel}"
        );
    }
    assert_eq!(store_dirs(c), 0, "carol's data dir keeps no store");
    assert!(!c.path("team").exists());
}
