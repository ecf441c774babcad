//! The first run of an ordinary user, end to end: `up` with the default data dir and
//! mountpoint (`~/.local/share/lattice-mount`, `~/Lattice`) as a user other than root,
//! mounted through the setuid `fusermount3`; files written and read with shell tools;
//! `down`. Run as root (as CI is), the binary runs as the user `lattice-e2e`, created
//! if missing; run as an ordinary user, as that user. Under `CI=true` anything this
//! needs that is missing fails the run instead of skipping it.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{lazy_unmount, ok, within, Daemon};

/// The unprivileged user the test runs the daemon as when it runs as root.
const TEST_USER: &str = "lattice-e2e";
/// A relay on loopback where nothing listens: relays are unreachable, as offline, and
/// no packet leaves the machine.
const DEAD_RELAY: &str = "http://127.0.0.1:9";
/// How long the daemon may take to mount, to exit, or to give its relay notice (it
/// waits 10 s for a relay).
const WAIT: Duration = Duration::from_secs(30);

/// Who runs the binary, and how.
struct User {
    uid: u32,
    gid: u32,
    /// Whether commands go through `setpriv` (the test runs as root).
    switch: bool,
    /// The binary, at a path this user may execute.
    bin: PathBuf,
}

/// Skips the test, or under `CI=true` fails it, because `what` is missing.
fn missing(what: &str) -> Option<User> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {what}");
    }
    eprintln!("skipping: {what}");
    None
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The numeric id `id -u NAME` or `id -g NAME` prints.
fn id_of(flag: &str, name: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

impl User {
    /// The user to run as, ready to mount; `None` (skip) when this machine cannot.
    fn ready(scratch: &Path) -> Option<User> {
        // SAFETY: geteuid and getegid have no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut user = if euid == 0 {
            if id_of("-u", TEST_USER).is_none()
                && !succeeds(Command::new("useradd").args([
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    TEST_USER,
                ]))
            {
                return missing(&format!("the test user {TEST_USER} cannot be created"));
            }
            let (Some(uid), Some(gid)) = (id_of("-u", TEST_USER), id_of("-g", TEST_USER)) else {
                return missing(&format!("no ids for the test user {TEST_USER}"));
            };
            if !succeeds(Command::new("setpriv").arg("--version")) {
                return missing("setpriv (util-linux) is not installed");
            }
            User {
                uid,
                gid,
                switch: true,
                bin: PathBuf::from(env!("CARGO_BIN_EXE_lattice-mount")),
            }
        } else {
            User {
                uid: euid,
                gid: egid,
                switch: false,
                bin: PathBuf::from(env!("CARGO_BIN_EXE_lattice-mount")),
            }
        };
        if !succeeds(Command::new("fusermount3").arg("--version")) {
            return missing("fusermount3 is not installed (Debian's fuse3)");
        }
        if !succeeds(user.command("sh").args(["-c", "exec 3<>/dev/fuse"])) {
            return missing(&format!(
                "uid {} cannot open /dev/fuse (`chmod 0666 /dev/fuse`, as .ci/run does)",
                user.uid
            ));
        }
        if !succeeds(user.command("test").arg("-x").arg(&user.bin)) {
            // The build dir is not reachable for this user: run a copy it owns.
            let copy = scratch.join("lattice-mount");
            std::fs::copy(&user.bin, &copy).unwrap();
            std::os::unix::fs::chown(&copy, Some(user.uid), Some(user.gid)).unwrap();
            user.bin = copy;
        }
        Some(user)
    }

    /// `program` run as this user, with a bare environment (no HOME, no RUST_LOG).
    fn command(&self, program: &str) -> Command {
        let mut cmd = if self.switch {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", self.uid))
                .arg(format!("--regid={}", self.gid))
                .args(["--clear-groups", "--", program]);
            c
        } else {
            Command::new(program)
        };
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .stdin(Stdio::null());
        cmd
    }

    /// `program` as this user with HOME `home`.
    fn in_home(&self, home: &Path, program: &str) -> Command {
        let mut cmd = self.command(program);
        cmd.env("HOME", home).current_dir(home);
        cmd
    }

    /// `lattice-mount ARGS` as this user with HOME `home` and the default data dir.
    fn lattice(&self, home: &Path, args: &[&str]) -> Output {
        let bin = self.bin.to_str().unwrap();
        self.in_home(home, bin).args(args).output().unwrap()
    }
}

/// FSTYPE and OPTIONS of what is mounted at `path`, if anything.
fn findmnt(path: &Path) -> Option<(String, String)> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,OPTIONS", "--mountpoint"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    Some((words.next()?.to_string(), words.next()?.to_string()))
}

/// The daemon, killed and its mount detached if the test fails midway.
struct Running {
    child: Option<Child>,
    mnt: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `done` holds, panicking with the daemon's stderr after [`WAIT`] or
    /// if it exits first.
    fn wait_for(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited ({status}) before {what}: {:?}", self.lines());
            }
            assert!(Instant::now() < deadline, "no {what}: {:?}", self.lines());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        lazy_unmount(&self.mnt);
    }
}

/// What the user may do to entries of modes that forbid it, tried with shell tools in
/// the store `docs` ([`attempts`]): one line per attempt, each as a local filesystem
/// answers it.
const MODE_CHECKS: &str = r#"
printf x > ro.txt && chmod 0444 ro.txt
try "append to a 0444 file" "printf y >> ro.txt"
try "truncate a 0444 file" "truncate -s 0 ro.txt"
try "read a 0444 file" "cat ro.txt"
try "test -w a 0444 file" "test -w ro.txt"
try "set the times of a 0444 file" "touch -d @0 ro.txt"
try "set a 0444 file's times to now" "touch ro.txt"
try "chown a file to root" "chown 0 ro.txt"
try "chgrp a file to root" "chgrp 0 ro.txt"
try "chmod a 0444 file" "chmod 0644 ro.txt"
try "append once it is 0644" "printf y >> ro.txt"
printf x > wo.txt && chmod 0200 wo.txt
try "read a 0200 file" "cat wo.txt"
try "test -r a 0200 file" "test -r wo.txt"
try "append to a 0200 file" "printf y >> wo.txt"
printf 'exit 0
' > run.sh && chmod 0644 run.sh
try "run a 0644 script" "./run.sh"
chmod 0755 run.sh
try "run a 0755 script" "./run.sh"
cp /bin/true true.bin && chmod 0100 true.bin
try "run a 0100 program" "./true.bin"
mkdir shut && printf z > shut/in.txt && chmod 0555 shut
try "create in a 0555 dir" "touch shut/new"
try "mkdir in a 0555 dir" "mkdir shut/sub"
try "link into a 0555 dir" "ln ro.txt shut/ro.txt"
try "remove from a 0555 dir" "rm -f shut/in.txt"
try "rename out of a 0555 dir" "mv shut/in.txt out.txt"
try "rename within a 0555 dir" "mv shut/in.txt shut/again.txt"
try "read in a 0555 dir" "cat shut/in.txt"
chmod 0300 shut
try "list a 0300 dir" "ls shut"
try "read in a 0300 dir" "cat shut/in.txt"
chmod 0600 shut
try "enter a 0600 dir" "cd shut"
try "read in a 0600 dir" "cat shut/in.txt"
try "stat in a 0600 dir" "stat shut/in.txt"
try "list a 0600 dir" "ls shut"
chmod 0700 shut
try "read in a 0700 dir" "cat shut/in.txt"
mkdir -p from/d to && chmod 0555 from/d
try "move a 0555 dir to another dir" "mv from/d to/"
chmod 0755 from/d
try "move a 0755 dir to another dir" "mv from/d to/"
"#;

/// A scratch directory and the user to run as; `None` (skip) where this machine cannot.
fn scratch_and_user() -> Option<(tempfile::TempDir, User)> {
    let tmp = tempfile::Builder::new()
        .prefix("lattice-user")
        .tempdir()
        .unwrap();
    let user = User::ready(tmp.path())?;
    Some((tmp, user))
}

/// The lines `script` prints when `sh` (a command of the user) runs it in `dir`, where
/// `try NAME COMMAND` prints "NAME: yes" if COMMAND succeeds and "NAME: no" if not.
fn attempts(mut sh: Command, dir: &str, script: &str) -> Vec<String> {
    let out = ok(sh
        .arg("-c")
        .arg(format!(
            r#"cd {dir} && try() {{ if sh -c "$2" >/dev/null 2>&1; then echo "$1: yes"; else echo "$1: no"; fi; }}
{script}"#
        ))
        .output()
        .unwrap());
    out.lines().map(str::to_owned).collect()
}

/// Runs [`MODE_CHECKS`] as `user` and compares every answer with a local filesystem's.
fn modes_are_enforced(user: &User, home: &Path) {
    let out = attempts(user.in_home(home, "sh"), "~/Lattice/docs", MODE_CHECKS);
    let expected = [
        "append to a 0444 file: no",
        "truncate a 0444 file: no",
        "read a 0444 file: yes",
        "test -w a 0444 file: no",
        "set the times of a 0444 file: yes",
        "set a 0444 file's times to now: yes",
        "chown a file to root: no",
        "chgrp a file to root: no",
        "chmod a 0444 file: yes",
        "append once it is 0644: yes",
        "read a 0200 file: no",
        "test -r a 0200 file: no",
        "append to a 0200 file: yes",
        "run a 0644 script: no",
        "run a 0755 script: yes",
        "run a 0100 program: yes",
        "create in a 0555 dir: no",
        "mkdir in a 0555 dir: no",
        "link into a 0555 dir: no",
        "remove from a 0555 dir: no",
        "rename out of a 0555 dir: no",
        "rename within a 0555 dir: no",
        "read in a 0555 dir: yes",
        "list a 0300 dir: no",
        "read in a 0300 dir: yes",
        "enter a 0600 dir: no",
        "read in a 0600 dir: no",
        "stat in a 0600 dir: no",
        "list a 0600 dir: yes",
        "read in a 0700 dir: yes",
        "move a 0555 dir to another dir: no",
        "move a 0755 dir to another dir: yes",
    ];
    assert_eq!(out, expected);
}

/// A daemon of root joins the user's store `docs`. Root's files are checked for the user
/// like any other (their owner is root), and root's `chmod` of a directory the user had
/// reached into ends what the user's kernel cached below it.
fn another_members_entries_are_checked_too(user: &User, home: &Path) {
    let sh = |script: &str| {
        ok(user
            .in_home(home, "sh")
            .arg("-c")
            .arg(format!("cd ~/Lattice/docs && {script}"))
            .output()
            .unwrap())
    };
    let bob = Daemon::start_named("bob");
    let token = ok(user.lattice(home, &["invite", "docs"]));
    ok(bob.run(&["join", token.trim()]));
    assert_eq!(
        sh("mkdir gate && printf in > gate/in.txt && cat gate/in.txt"),
        "in"
    );
    within(WAIT, "gate/in.txt on bob", || {
        std::fs::read(bob.path("docs/gate/in.txt")).is_ok_and(|b| b == b"in")
    });
    std::fs::set_permissions(
        bob.path("docs/gate"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    std::fs::write(bob.path("docs/roots.txt"), b"root's").unwrap();
    std::fs::set_permissions(
        bob.path("docs/roots.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    within(WAIT, "bob's changes on the user's node", || {
        sh("stat -c %a gate; stat -c %u roots.txt 2>/dev/null || true") == "0\n0\n"
    });
    let script = r#"
try "read below a directory another member shut" "cat gate/in.txt"
try "read another member's 0600 file" "cat roots.txt"
try "hard link another member's 0600 file" "ln roots.txt mine.txt"
try "remove another member's file from one's own directory" "rm -f roots.txt"
"#;
    assert_eq!(
        attempts(user.in_home(home, "sh"), "~/Lattice/docs", script),
        [
            "read below a directory another member shut: no",
            "read another member's 0600 file: no",
            "hard link another member's 0600 file: no",
            "remove another member's file from one's own directory: yes",
        ]
    );
}

#[test]
fn an_ordinary_user_mounts_writes_reads_and_unmounts_through_fusermount3() {
    let Some((tmp, user)) = scratch_and_user() else {
        return;
    };
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // A mountpoint the user may not write: one line with the cause and the fix, and
    // no node is opened.
    let shared = home.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(user.uid), Some(user.gid)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o555)).unwrap();
    let refused = user.lattice(&home, &["up", "--relay", "disabled", "shared"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        format!(
            "lattice-mount: mountpoint {} is not writable by uid {}, and fusermount3 mounts \
             only there: choose a directory you own (the default is ~/Lattice)\n",
            shared.display(),
            user.uid
        )
    );
    assert!(
        !home.join(".local/share/lattice-mount/node.key").exists(),
        "a refused mount must not create the node"
    );

    // The first run with every default but the relay, which is unreachable.
    let mnt = home.join("Lattice");
    let bin = user.bin.to_str().unwrap();
    let mut child = user
        .in_home(&home, bin)
        .args(["up", "--relay", DEAD_RELAY, "--bind", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            sink.lock().unwrap().push(line.unwrap());
        }
    });
    let mut daemon = Running {
        child: Some(child),
        mnt: mnt.clone(),
        stderr,
    };
    daemon.wait_for("FUSE mount at ~/Lattice", |d| {
        findmnt(&d.mnt).is_some_and(|(fstype, _)| fstype == "fuse.lattice-mount")
    });
    let (_, options) = findmnt(&mnt).unwrap();
    assert!(
        options.contains(&format!("user_id={}", user.uid)),
        "not the user's mount: {options}"
    );
    assert!(
        !options.contains("default_permissions"),
        "the user's own mount has its modes checked by the daemon: {options}"
    );
    daemon.wait_for("control socket", |_| {
        user.lattice(&home, &["status"]).status.success()
    });

    let created = ok(user.lattice(&home, &["create", "docs"]));
    assert!(created.starts_with("created store docs ("), "{created}");
    let shell = user
        .in_home(&home, "sh")
        .arg("-c")
        .arg(
            "cd ~/Lattice/docs && printf 'written by an ordinary user\\n' > note.txt \
             && mkdir sub && mv note.txt sub/ && cat sub/note.txt && stat -c %u sub/note.txt",
        )
        .output()
        .unwrap();
    assert_eq!(
        ok(shell),
        format!("written by an ordinary user\n{}\n", user.uid)
    );
    modes_are_enforced(&user, &home);
    if user.switch {
        // Another member's files need an author other than the user: root here.
        another_members_entries_are_checked_too(&user, &home);
    }
    if user.switch {
        // Without --allow-other the mount is the user's alone, root included.
        let err = std::fs::metadata(mnt.join("docs")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    }

    daemon.wait_for("relay notice", |d| {
        d.lines()
            .iter()
            .any(|l| l.starts_with("no relay reachable"))
    });
    ok(user.lattice(&home, &["down"]));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "daemon did not exit after down");
        std::thread::sleep(Duration::from_millis(50));
    };
    daemon.child = None;
    assert!(status.success(), "daemon exited with {status}");
    assert_eq!(findmnt(&mnt), None, "still mounted after down");
    reader.join().unwrap();

    // What the user saw: the mount line and one relay notice, no library log lines.
    let lines = daemon.lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].starts_with("mounted 0 stores at "), "{lines:#?}");
    assert_eq!(
        lines[1],
        "no relay reachable within 10 s: peers are reached by their direct addresses only \
         until one answers (RUST_LOG=iroh=warn shows why)"
    );
}

#[test]
fn with_allow_other_the_kernel_holds_other_users_to_the_modes() {
    let Some((_tmp, user)) = scratch_and_user() else {
        return;
    };
    if !user.switch {
        // Another user than the daemon's is needed, and only root can switch to one.
        return;
    }
    let d = Daemon::start_with("shared", &["--allow-other"]);
    let (_, options) = findmnt(&d.mnt).unwrap();
    assert!(options.contains("default_permissions"), "{options}");
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d.sh(
        "mkdir pub && printf open > pub/open.txt && chmod 0644 pub/open.txt \
         && printf secret > pub/secret.txt && chmod 0600 pub/secret.txt",
    );
    let script = r#"
try "list root's directory" "ls pub"
try "read root's 0644 file" "cat pub/open.txt"
try "read root's 0600 file" "cat pub/secret.txt"
try "append to root's 0644 file" "printf x >> pub/open.txt"
try "create in root's 0755 directory" "touch pub/new"
try "remove from root's 0755 directory" "rm -f pub/open.txt"
"#;
    let tried = attempts(user.command("sh"), &d.mnt.display().to_string(), script);
    assert_eq!(
        tried,
        [
            "list root's directory: yes",
            "read root's 0644 file: yes",
            "read root's 0600 file: no",
            "append to root's 0644 file: no",
            "create in root's 0755 directory: no",
            "remove from root's 0755 directory: no",
        ]
    );
}
