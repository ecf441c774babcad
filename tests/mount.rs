//! End-to-end tests: the real binary, a real FUSE mount, shell tools and std::fs.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{errno_of, fuse_available, random_bytes, Daemon};

fn daemon_with_store(name: &str) -> Option<Daemon> {
    if !fuse_available() {
        return None;
    }
    let d = Daemon::start();
    fs::create_dir(d.path(name)).unwrap();
    Some(d)
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let (a, b) = (cstr(from), cstr(to));
    // SAFETY: both paths are valid NUL-terminated strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> std::io::Result<()> {
    let (p, n) = (cstr(p), CString::new(name).unwrap());
    // SAFETY: valid C strings and a valid buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn getxattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (p, n) = (cstr(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and a valid out-buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn sha_tree(root: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -type f -print0 | sort -z | xargs -0 sha256sum")
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn copied_tree_reads_back_with_identical_checksums() {
    let Some(d) = daemon_with_store("docs") else {
        return;
    };
    let src = d.dir.path().join("src");
    for i in 0..40 {
        let sub = src.join(format!("d{}", i % 5)).join(format!("e{}", i % 3));
        fs::create_dir_all(&sub).unwrap();
        let len = [0, 1, 100, 4096, 16 * 1024, 16 * 1024 + 1, 200_000, 1 << 20][i % 8];
        fs::write(sub.join(format!("f{i}.bin")), random_bytes(len, i as u64)).unwrap();
    }
    d.sh(&format!("cp -r {} docs/copy", src.display()));
    assert_eq!(sha_tree(&src), sha_tree(&d.path("docs/copy")));
    let listed = d.sh("ls docs/copy | wc -l");
    assert_eq!(listed.trim(), "5");
}

#[test]
fn large_file_write_read_and_overwrite_in_the_middle() {
    let Some(d) = daemon_with_store("big") else {
        return;
    };
    let path = d.path("big/large.bin");
    let mut data = random_bytes(64 << 20, 7);
    fs::write(&path, &data).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 64 << 20);
    assert!(fs::read(&path).unwrap() == data, "64 MiB read back differs");
    let patch = random_bytes(1 << 20, 8);
    let at = 31 << 20;
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&patch, at as u64).unwrap();
    drop(f);
    data[at..at + patch.len()].copy_from_slice(&patch);
    assert!(fs::read(&path).unwrap() == data, "overwritten file differs");
}

#[test]
fn edits_truncations_and_gaps_in_a_stored_file_read_back_exactly_open_closed_and_restarted() {
    let Some(mut d) = daemon_with_store("e") else {
        return;
    };
    let path = d.path("e/edited.bin");
    let mut want = random_bytes(6 << 20, 31);
    fs::write(&path, &want).unwrap();
    let mut seed = 0x000e_d175_u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for round in 0..4u64 {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        for step in 0..12u64 {
            match next(6) {
                0 => {
                    let len = next(want.len() + 1);
                    f.set_len(len as u64).unwrap();
                    want.truncate(len);
                }
                1 => {
                    let len = want.len() + next(3 << 20);
                    f.set_len(len as u64).unwrap();
                    want.resize(len, 0);
                }
                _ => {
                    let at = next(want.len() + (1 << 20));
                    let bytes = random_bytes(1 + next(300_000), 100 * round + step);
                    f.write_all_at(&bytes, at as u64).unwrap();
                    if want.len() < at + bytes.len() {
                        want.resize(at + bytes.len(), 0);
                    }
                    want[at..at + bytes.len()].copy_from_slice(&bytes);
                }
            }
            let at = next(want.len() + 1);
            let mut got = vec![0u8; 200_000.min(want.len() - at)];
            f.read_exact_at(&mut got, at as u64).unwrap();
            assert!(
                got == want[at..at + got.len()],
                "round {round} step {step}: open read"
            );
        }
        // Without the kernel's copies, the open file's reads come from its staging.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
        }
        let mut got = vec![0u8; want.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got == want, "round {round}: open read of everything");
        drop(f);
        assert!(
            fs::read(&path).unwrap() == want,
            "round {round}: closed read"
        );
    }
    d.down();
    d.up();
    assert!(fs::read(&path).unwrap() == want, "read after a restart");
}

#[test]
fn a_mount_by_root_reads_ahead_four_whole_requests() {
    let Some(d) = daemon_with_store("ahead") else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    d.assert_mounted();
    let dev = fs::metadata(d.path("")).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let window = fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"));
    assert_eq!(window.unwrap().trim(), "4096");
}

#[test]
fn a_file_written_front_to_back_with_fsyncs_rewrites_and_truncation_reads_back_exactly() {
    let Some(mut d) = daemon_with_store("ahead") else {
        return;
    };
    let path = d.path("ahead/log.bin");
    let mut data = random_bytes(40 << 20, 9);
    let mut f = File::create(&path).unwrap();
    f.write_all(&data[..20 << 20]).unwrap();
    f.sync_all().unwrap();
    f.write_all(&data[20 << 20..30 << 20]).unwrap();
    f.sync_all().unwrap();
    f.write_all_at(b"rewritten", 1 << 20).unwrap();
    data[1 << 20..(1 << 20) + 9].copy_from_slice(b"rewritten");
    f.write_all(&data[30 << 20..]).unwrap();
    drop(f);
    let other = d.path("ahead/again.bin");
    fs::write(&other, random_bytes(16 << 20, 10)).unwrap();
    let again = random_bytes(12 << 20, 11);
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&other)
        .unwrap();
    f.write_all(&again).unwrap();
    drop(f);
    d.down();
    d.up();
    assert!(fs::read(&path).unwrap() == data, "log.bin differs");
    assert!(fs::read(&other).unwrap() == again, "again.bin differs");
}

/// Bytes the files in `dir` take on their file system.
fn allocated_in(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

#[test]
fn a_large_file_being_written_holds_its_bytes_once_and_reads_back_while_open() {
    let Some(mut d) = daemon_with_store("big") else {
        return;
    };
    let path = d.path("big/copy.bin");
    let staging = d.data.join("staging");
    let mut data = random_bytes(72 << 20, 12);
    let mut f = File::create(&path).unwrap();
    for piece in data[..64 << 20].chunks(1 << 20) {
        f.write_all(piece).unwrap();
    }
    // What is stored as chunks leaves the staging file as later writes come in.
    let mut written = 64 << 20;
    common::within(
        Duration::from_secs(20),
        "the stored prefix to be freed",
        || {
            f.write_all(&data[written..written + 4096]).unwrap();
            written += 4096;
            std::thread::sleep(Duration::from_millis(50));
            allocated_in(&staging) < 32 << 20
        },
    );
    d.assert_mounted();

    // Another handle reads the freed prefix from its chunks, and the rest from staging.
    let mut r = File::open(&path).unwrap();
    let mut head = vec![0u8; 8 << 20];
    r.read_exact(&mut head).unwrap();
    assert!(head == data[..8 << 20], "the freed head differs");
    let mut tail = vec![0u8; 1 << 20];
    r.read_exact_at(&mut tail, (written - (1 << 20)) as u64)
        .unwrap();
    assert!(
        tail == data[written - (1 << 20)..written],
        "the tail differs"
    );
    drop(r);

    // A rewrite of the freed head puts the bytes back before it lands.
    f.write_all_at(b"rewritten", 1 << 20).unwrap();
    data[1 << 20..(1 << 20) + 9].copy_from_slice(b"rewritten");
    f.write_all(&data[written..]).unwrap();
    drop(f);
    assert!(fs::read(&path).unwrap() == data, "copy.bin differs");
    common::within(Duration::from_secs(10), "staging to empty", || {
        fs::read_dir(&staging).unwrap().next().is_none()
    });
    d.down();
    d.up();
    assert!(
        fs::read(&path).unwrap() == data,
        "copy.bin differs after a restart"
    );
}

#[test]
fn files_ask_tools_for_whole_requests() {
    // `cp`, `cat` and buffered writers size their I/O by st_blksize: at 4 KiB a Python
    // script's buffered writes each made a round trip to the daemon.
    let Some(d) = daemon_with_store("io") else {
        return;
    };
    let path = d.path("io/f.bin");
    let data = random_bytes(3 << 20, 31);
    fs::write(&path, &data).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().blksize(), 1 << 20);
    let copy = d.path("io/copy.bin");
    let status = Command::new("cp").arg(&path).arg(&copy).status().unwrap();
    assert!(status.success());
    assert!(fs::read(&copy).unwrap() == data, "the copy differs");
    assert_eq!(fs::metadata(&copy).unwrap().blksize(), 1 << 20);
}

/// Runs `cp FROM TO` inside `d`'s mount; whether it succeeded.
fn cp(d: &Daemon, from: &str, to: &str) -> bool {
    let status = Command::new("cp")
        .arg(d.path(from))
        .arg(d.path(to))
        .status()
        .unwrap();
    status.success()
}

#[test]
fn cp_within_a_store_copies_the_content_without_reading_it() {
    let Some(mut d) = daemon_with_store("cp") else {
        return;
    };
    let data = random_bytes(12 << 20, 41);
    fs::write(d.path("cp/a.bin"), &data).unwrap();
    fs::write(d.path("cp/old.bin"), b"old content").unwrap();
    fs::create_dir(d.path("other")).unwrap();
    // Whole copies in the store, to a new name and over a file; across stores and in
    // part, the kernel copies bytes.
    for to in ["cp/b.bin", "cp/old.bin", "other/c.bin"] {
        assert!(cp(&d, "cp/a.bin", to), "cp to {to}");
    }
    let src = File::open(d.path("cp/a.bin")).unwrap();
    let part = File::create(d.path("cp/part.bin")).unwrap();
    let (mut off_in, mut off_out) = (5i64 << 20, 0i64);
    // SAFETY: both descriptors are open and the offsets are valid pointers.
    let n = unsafe {
        libc::copy_file_range(
            std::os::fd::AsRawFd::as_raw_fd(&src),
            &mut off_in,
            std::os::fd::AsRawFd::as_raw_fd(&part),
            &mut off_out,
            1 << 20,
            0,
        )
    };
    assert_eq!(n, 1 << 20);
    drop((src, part));
    d.down();
    d.up();
    for name in ["cp/b.bin", "cp/old.bin", "other/c.bin"] {
        assert!(fs::read(d.path(name)).unwrap() == data, "{name} differs");
    }
    assert!(fs::read(d.path("cp/part.bin")).unwrap() == data[5 << 20..6 << 20]);

    // With every chunk altered on disk the file cannot be read, and yet `cp` copies it
    // within the store: the copy names the same content, which reads as badly.
    d.down();
    for e in fs::read_dir(d.data.join("blobs/data")).unwrap() {
        let path = e.unwrap().path();
        let mut bytes = fs::read(&path).unwrap();
        if bytes.len() >= 64 << 10 {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 1;
            fs::write(&path, &bytes).unwrap();
        }
    }
    d.up();
    assert!(
        fs::read(d.path("cp/a.bin")).is_err(),
        "an altered chunk read"
    );
    assert!(cp(&d, "cp/a.bin", "cp/ref.bin"), "cp of an unreadable file");
    assert_eq!(
        fs::metadata(d.path("cp/ref.bin")).unwrap().len(),
        data.len() as u64
    );
    assert!(fs::read(d.path("cp/ref.bin")).is_err(), "the copy read");
}

#[test]
fn sparse_writes_read_holes_as_zeros() {
    let Some(d) = daemon_with_store("s") else {
        return;
    };
    let path = d.path("s/sparse");
    let f = File::create(&path).unwrap();
    f.write_all_at(b"end", 10 << 20).unwrap();
    f.write_all_at(b"mid", 5 << 20).unwrap();
    drop(f);
    let got = fs::read(&path).unwrap();
    assert_eq!(got.len(), (10 << 20) + 3);
    assert_eq!(&got[5 << 20..(5 << 20) + 3], b"mid");
    assert_eq!(&got[10 << 20..], b"end");
    assert!(got[..5 << 20].iter().all(|&b| b == 0));
    assert!(got[(5 << 20) + 3..10 << 20].iter().all(|&b| b == 0));
}

#[test]
fn truncate_up_and_down() {
    let Some(d) = daemon_with_store("t") else {
        return;
    };
    let path = d.path("t/f");
    fs::write(&path, b"hello world").unwrap();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(5).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"hello");
    f.set_len(100_000).unwrap();
    drop(f);
    let got = fs::read(&path).unwrap();
    assert_eq!(got.len(), 100_000);
    assert_eq!(&got[..5], b"hello");
    assert!(got[5..].iter().all(|&b| b == 0));
    d.sh("truncate -s 0 t/f");
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    fs::write(&path, b"abc").unwrap();
    d.sh(": > t/f");
    assert_eq!(fs::read(&path).unwrap(), b"");
}

#[test]
fn every_rename_form_behaves_like_posix() {
    let Some(d) = daemon_with_store("r") else {
        return;
    };
    fs::create_dir(d.path("other")).unwrap();
    let p = |s: &str| d.path(&format!("r/{s}"));
    fs::write(p("a"), b"A").unwrap();
    fs::write(p("b"), b"B").unwrap();
    fs::rename(p("a"), p("a2")).unwrap();
    assert_eq!(fs::read(p("a2")).unwrap(), b"A");
    assert!(!p("a").exists());
    // Replace an existing file.
    fs::rename(p("a2"), p("b")).unwrap();
    assert_eq!(fs::read(p("b")).unwrap(), b"A");
    // Across directories, and a directory with children.
    fs::create_dir_all(p("x/y")).unwrap();
    fs::write(p("x/y/z"), b"Z").unwrap();
    fs::create_dir(p("dst")).unwrap();
    fs::rename(p("b"), p("dst/b")).unwrap();
    fs::rename(p("x"), p("dst/x")).unwrap();
    assert_eq!(fs::read(p("dst/x/y/z")).unwrap(), b"Z");
    // A directory into its own subtree.
    assert_eq!(
        errno_of(fs::rename(p("dst"), p("dst/x/inside"))),
        libc::EINVAL
    );
    // Over a non-empty directory.
    fs::create_dir(p("empty")).unwrap();
    fs::create_dir(p("full")).unwrap();
    fs::write(p("full/f"), b"").unwrap();
    assert_eq!(errno_of(fs::rename(p("empty"), p("full"))), libc::ENOTEMPTY);
    fs::rename(p("full"), p("empty")).unwrap();
    assert!(p("empty/f").exists());
    // File over directory and directory over file.
    fs::write(p("file"), b"").unwrap();
    assert_eq!(errno_of(fs::rename(p("file"), p("dst"))), libc::EISDIR);
    assert_eq!(errno_of(fs::rename(p("dst"), p("file"))), libc::ENOTDIR);
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    fs::write(p("n1"), b"1").unwrap();
    fs::write(p("n2"), b"2").unwrap();
    assert_eq!(
        errno_of(renameat2(&p("n1"), &p("n2"), libc::RENAME_NOREPLACE)),
        libc::EEXIST
    );
    renameat2(&p("n1"), &p("n3"), libc::RENAME_NOREPLACE).unwrap();
    renameat2(&p("n3"), &p("n2"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(p("n2")).unwrap(), b"1");
    assert_eq!(fs::read(p("n3")).unwrap(), b"2");
    // Across stores.
    assert_eq!(
        errno_of(fs::rename(p("n2"), d.path("other/n2"))),
        libc::EXDEV
    );
    d.sh("mv r/n2 other/n2");
    assert_eq!(fs::read(d.path("other/n2")).unwrap(), b"1");
}

#[test]
fn symlinks_hard_links_and_special_nodes() {
    let Some(d) = daemon_with_store("l") else {
        return;
    };
    let p = |s: &str| d.path(&format!("l/{s}"));
    fs::write(p("target"), b"T").unwrap();
    std::os::unix::fs::symlink("target", p("sym")).unwrap();
    assert_eq!(fs::read_link(p("sym")).unwrap(), Path::new("target"));
    assert_eq!(fs::read(p("sym")).unwrap(), b"T");
    assert!(fs::symlink_metadata(p("sym"))
        .unwrap()
        .file_type()
        .is_symlink());
    fs::hard_link(p("target"), p("hard")).unwrap();
    assert_eq!(fs::metadata(p("target")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(p("hard")).unwrap().ino(),
        fs::metadata(p("target")).unwrap().ino()
    );
    fs::write(p("hard"), b"via link").unwrap();
    assert_eq!(fs::read(p("target")).unwrap(), b"via link");
    fs::remove_file(p("target")).unwrap();
    assert_eq!(fs::metadata(p("hard")).unwrap().nlink(), 1);
    fs::create_dir_all(p("d/e")).unwrap();
    fs::create_dir(p("d/f")).unwrap();
    assert_eq!(fs::metadata(p("d")).unwrap().nlink(), 4);
    assert_eq!(errno_of(fs::hard_link(p("d"), p("dlink"))), libc::EPERM);
    d.sh("mkfifo l/fifo && mknod l/null c 1 3");
    let m = fs::symlink_metadata(p("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
    let m = fs::symlink_metadata(p("null")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &m.file_type()
    ));
    assert_eq!(m.rdev(), libc::makedev(1, 3));
}

/// (mtime, ctime) of `p` in nanoseconds, as `stat` shows them.
fn times(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
    )
}

/// Creates, links, renames and unlinks in and between directories `m/d` and `m/e`:
/// each change moves both times of each directory it changed, at once (no wait for
/// the kernel's attribute cache), and leaves the other's alone; a link or unlink moves
/// the file's ctime; an explicit mtime holds until the next entry change.
fn directory_times_follow_entry_changes(d: &Daemon) {
    let (dir, other) = (d.path("m/d"), d.path("m/e"));
    fs::create_dir(&dir).unwrap();
    fs::create_dir(&other).unwrap();
    let mut last = [times(&dir), times(&other)];
    let mut step = |what: &str, change: &dyn Fn(), changed: [bool; 2]| {
        change();
        let now = [times(&dir), times(&other)];
        for i in 0..2 {
            if changed[i] {
                assert!(
                    now[i].0 > last[i].0 && now[i].1 > last[i].1,
                    "{what}: directory {i} went from {:?} to {:?}",
                    last[i],
                    now[i]
                );
                assert!(now[i].1 >= now[i].0, "{what}: ctime before mtime");
            } else {
                assert_eq!(now[i], last[i], "{what}: directory {i} changed");
            }
        }
        last = now;
    };
    let p = |rel: &str| d.path(&format!("m/{rel}"));
    step(
        "create",
        &|| fs::write(p("d/f"), b"x").unwrap(),
        [true, false],
    );
    step(
        "rewrite",
        &|| fs::write(p("d/f"), b"y").unwrap(),
        [false, false],
    );
    step(
        "rename within",
        &|| fs::rename(p("d/f"), p("d/g")).unwrap(),
        [true, false],
    );
    let ctime = |rel: &str| times(&p(rel)).1;
    let before = ctime("d/g");
    step(
        "link",
        &|| fs::hard_link(p("d/g"), p("e/l")).unwrap(),
        [false, true],
    );
    let linked = ctime("d/g");
    assert!(linked > before, "a link moves the file's ctime");
    step(
        "rename out",
        &|| fs::rename(p("d/g"), p("e/g")).unwrap(),
        [true, true],
    );
    let moved = ctime("e/g");
    assert!(moved > linked, "a rename moves the file's ctime");
    step(
        "unlink",
        &|| fs::remove_file(p("e/l")).unwrap(),
        [false, true],
    );
    assert!(ctime("e/g") > moved, "an unlink moves the file's ctime");
    step(
        "rename in",
        &|| fs::rename(p("e/g"), p("d/g")).unwrap(),
        [true, true],
    );
    step(
        "symlink",
        &|| std::os::unix::fs::symlink("g", p("d/s")).unwrap(),
        [true, false],
    );
    step(
        "mkdir",
        &|| fs::create_dir(p("d/sub")).unwrap(),
        [true, false],
    );
    step(
        "rmdir",
        &|| fs::remove_dir(p("d/sub")).unwrap(),
        [true, false],
    );
    step(
        "unlink last",
        &|| fs::remove_file(p("d/g")).unwrap(),
        [true, false],
    );
    d.sh("touch -m -d '2001-02-03 04:05:06 UTC' m/d");
    let (mtime, ctime) = times(&dir);
    assert_eq!(mtime, 981_173_106 * 1_000_000_000, "touch -d sets it");
    assert!(ctime > last[0].1, "and moves ctime");
    fs::write(p("d/h"), b"").unwrap();
    let (mtime, _) = times(&dir);
    assert!(mtime > ctime, "a later create wins over the explicit mtime");
}

#[test]
fn chmod_chown_utimens_xattrs_and_directory_times_behave_like_posix() {
    let Some(d) = daemon_with_store("m") else {
        return;
    };
    let p = d.path("m/f");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    d.sh("chown 1234:5678 m/f");
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    d.sh("touch -m -d '2001-02-03 04:05:06.789 UTC' m/f");
    let mtime = fs::metadata(&p).unwrap().modified().unwrap();
    let want = SystemTime::UNIX_EPOCH + Duration::from_millis(981_173_106_789);
    assert_eq!(mtime, want);
    let before = SystemTime::now() - Duration::from_secs(2);
    d.sh("touch m/f");
    assert!(fs::metadata(&p).unwrap().modified().unwrap() >= before);
    setxattr(&p, "user.color", b"blue", 0).unwrap();
    assert_eq!(getxattr(&p, "user.color").unwrap(), b"blue");
    assert_eq!(
        errno_of(setxattr(&p, "user.color", b"red", libc::XATTR_CREATE)),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(setxattr(&p, "user.none", b"x", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    assert_eq!(errno_of(getxattr(&p, "user.none")), libc::ENODATA);
    let c = cstr(&p);
    let n = CString::new("user.color").unwrap();
    // SAFETY: valid C strings.
    assert_eq!(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) }, 0);
    assert_eq!(errno_of(getxattr(&p, "user.color")), libc::ENODATA);
    directory_times_follow_entry_changes(&d);
}

#[test]
fn ten_thousand_files_in_one_directory_are_listed() {
    let Some(d) = daemon_with_store("many") else {
        return;
    };
    for i in 0..10_000 {
        File::create(d.path(&format!("many/f{i:05}"))).unwrap();
    }
    let names: Vec<String> = fs::read_dir(d.path("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 10_000);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 10_000);
    assert_eq!(d.sh("ls -l many | tail -n +2 | wc -l").trim(), "10000");
}

#[test]
fn appends_from_two_processes_all_survive() {
    let Some(d) = daemon_with_store("a") else {
        return;
    };
    d.sh("echo first >> a/notes.log");
    d.sh(
        "(for i in $(seq 1 200); do echo A$i >> a/chat.log; done) & \
          (for i in $(seq 1 200); do echo B$i >> a/chat.log; done) & wait",
    );
    let text = fs::read_to_string(d.path("a/chat.log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 400);
    for i in 1..=200 {
        assert!(lines.contains(&format!("A{i}").as_str()));
        assert!(lines.contains(&format!("B{i}").as_str()));
    }
    let hist = d.run(&["history", d.path("a/notes.log").to_str().unwrap()]);
    assert!(hist.status.success(), "{hist:?}");
    assert!(String::from_utf8_lossy(&hist.stdout).contains("append"));
}

#[test]
fn a_command_whose_reader_goes_away_ends_quietly() {
    let Some(d) = daemon_with_store("h") else {
        return;
    };
    let log = d.path("h/long.log");
    for i in 0..1500 {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        writeln!(f, "line {i}").unwrap();
    }
    // The history is far longer than a pipe holds, so the command writes into a pipe
    // whose reader is gone.
    let mut child = d
        .cli()
        .arg("history")
        .arg(&log)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn posix_errors_match_the_kernel() {
    let Some(d) = daemon_with_store("e") else {
        return;
    };
    let p = |s: &str| d.path(&format!("e/{s}"));
    fs::create_dir(p("dir")).unwrap();
    fs::write(p("dir/f"), b"").unwrap();
    assert_eq!(errno_of(fs::create_dir(p("dir"))), libc::EEXIST);
    assert_eq!(errno_of(fs::remove_dir(p("dir"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_file(p("dir"))), libc::EISDIR);
    assert_eq!(errno_of(fs::remove_dir(p("dir/f"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::read(p("missing"))), libc::ENOENT);
    assert_eq!(errno_of(fs::write(p("dir/f/x"), b"")), libc::ENOTDIR);
    assert_eq!(
        errno_of(fs::write(p(&"n".repeat(256)), b"")),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p("dir/f"))
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(fs::write(d.path("file-at-root"), b"")),
        libc::EPERM
    );
    // A file still open after its last name is removed keeps answering.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p("gone"))
        .unwrap();
    f.write_all(b"still here").unwrap();
    fs::remove_file(p("gone")).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    assert_eq!(f.metadata().unwrap().len(), 10);
    let df = d.sh("df -P e | tail -1");
    assert!(!df.is_empty());
}

#[test]
fn everything_survives_down_and_up() {
    let Some(mut d) = daemon_with_store("keep") else {
        return;
    };
    let p = |d: &Daemon, s: &str| d.path(&format!("keep/{s}"));
    fs::create_dir(p(&d, "sub")).unwrap();
    let big = random_bytes(3 << 20, 3);
    fs::write(p(&d, "sub/big"), &big).unwrap();
    fs::write(p(&d, "small"), b"small").unwrap();
    fs::set_permissions(p(&d, "small"), fs::Permissions::from_mode(0o600)).unwrap();
    d.sh("touch -m -d '2010-01-01 00:00:00 UTC' keep/small");
    std::os::unix::fs::symlink("sub/big", p(&d, "link")).unwrap();
    setxattr(&p(&d, "small"), "user.k", b"v", 0).unwrap();
    d.sh("echo one >> keep/log && echo two >> keep/log");
    let before = fs::metadata(p(&d, "small")).unwrap();
    d.down();
    d.up();
    assert_eq!(fs::read(p(&d, "sub/big")).unwrap(), big);
    assert_eq!(fs::read(p(&d, "small")).unwrap(), b"small");
    let after = fs::metadata(p(&d, "small")).unwrap();
    assert_eq!(after.mode(), before.mode());
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    assert_eq!(fs::read_link(p(&d, "link")).unwrap(), Path::new("sub/big"));
    assert_eq!(getxattr(&p(&d, "small"), "user.k").unwrap(), b"v");
    assert_eq!(fs::read_to_string(p(&d, "log")).unwrap(), "one\ntwo\n");
    let status = d.run(&["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("keep"));
}

#[test]
fn fsynced_data_survives_kill_9() {
    let Some(mut d) = daemon_with_store("crash") else {
        return;
    };
    for round in 0..3u64 {
        let data = random_bytes(2 << 20, 11 + round);
        let big = d.path(&format!("crash/synced{round}"));
        let small = d.path(&format!("crash/small{round}"));
        let mut f = File::create(&big).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        let mut g = File::create(&small).unwrap();
        g.write_all(b"tiny").unwrap();
        g.sync_all().unwrap();
        // Closing a duplicate (as a forked child's exec does) commits the content before
        // the fsync: the fsync must still make that content durable.
        let mut h = File::create(d.path(&format!("crash/flushed{round}"))).unwrap();
        h.write_all(&random_bytes(2 << 20, 111 + round)).unwrap();
        drop(h.try_clone().unwrap());
        h.sync_all().unwrap();
        fs::create_dir(d.path(&format!("crash/dir{round}"))).unwrap();
        File::open(d.path("crash")).unwrap().sync_all().unwrap();
        d.kill9();
        drop((f, g, h));
        // The dead mount is still there; `up` must clean it.
        assert!(
            common::fstype(&d.mnt).is_some(),
            "kill -9 left no mount to clean"
        );
        d.up();
        for r in 0..=round {
            for (name, seed) in [("synced", 11), ("flushed", 111)] {
                assert!(
                    fs::read(d.path(&format!("crash/{name}{r}"))).unwrap()
                        == random_bytes(2 << 20, seed + r),
                    "{name} in round {r}"
                );
            }
            assert_eq!(
                fs::read(d.path(&format!("crash/small{r}"))).unwrap(),
                b"tiny"
            );
            assert!(d.path(&format!("crash/dir{r}")).is_dir());
        }
    }
}

#[test]
fn a_large_file_fsynced_midway_through_its_copy_survives_kill_9() {
    let Some(mut d) = daemon_with_store("bigcrash") else {
        return;
    };
    // Past its first 8 MiB, a copy's writes wait in the daemon's memory for their
    // chunks: the fsync must store what is still there.
    let data = random_bytes(48 << 20, 21);
    let path = d.path("bigcrash/copy.bin");
    let mut f = File::create(&path).unwrap();
    for piece in data[..40 << 20].chunks(1 << 20) {
        f.write_all(piece).unwrap();
    }
    f.sync_all().unwrap();
    for piece in data[40 << 20..].chunks(1 << 20) {
        f.write_all(piece).unwrap();
    }
    d.kill9();
    drop(f);
    d.up();
    // The fsynced 40 MiB must be there; later writes may have been committed too (a
    // process another test forks meanwhile holds the handle until its exec, and that
    // close is a FLUSH), but only as the bytes written, in order.
    let got = fs::read(&path).unwrap();
    assert!(
        got.len() >= 40 << 20 && data.starts_with(&got),
        "{} bytes after the restart, not the 40 MiB fsynced and a prefix of the rest",
        got.len()
    );
}

#[test]
fn cli_reports_status_history_and_clear_errors() {
    let Some(d) = daemon_with_store("cli") else {
        return;
    };
    let out = d.run(&["create", "second"]);
    assert!(out.status.success(), "{out:?}");
    assert!(d.path("second").is_dir());
    let dup = d.run(&["create", "second"]);
    assert!(!dup.status.success());
    assert_eq!(String::from_utf8_lossy(&dup.stderr).lines().count(), 1);
    let status = d.run(&["status", "--json"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("\"second\"") && text.contains("\"cli\""),
        "{text}"
    );
    let missing = d.run(&["history", d.path("cli/nope").to_str().unwrap()]);
    assert!(!missing.status.success());
    let busy = Command::new(env!("CARGO_BIN_EXE_lattice-mount"))
        .arg("--data-dir")
        .arg(d.dir.path().join("other-data"))
        .arg("up")
        .arg(&d.mnt)
        .output()
        .unwrap();
    assert!(!busy.status.success(), "up on a busy mountpoint must fail");
    assert_eq!(
        String::from_utf8_lossy(&busy.stderr).trim().lines().count(),
        1
    );
}

#[test]
fn rereads_after_rewrites_truncates_and_appends_never_show_stale_pages() {
    let Some(d) = daemon_with_store("cache") else {
        return;
    };
    let p = d.path("cache/f");
    fs::write(&p, b"").unwrap();
    // Held open throughout: its cached pages must follow what the other handles write,
    // the write-only ones bypassing the page cache included.
    let held = File::open(&p).unwrap();
    let mut want = Vec::new();
    for round in 0..24u64 {
        match round % 4 {
            0 => {
                want = random_bytes((round as usize * 7919) % 300_000, round);
                fs::write(&p, &want).unwrap();
            }
            1 => {
                let extra = random_bytes(1000 + round as usize, round + 100);
                OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .unwrap()
                    .write_all(&extra)
                    .unwrap();
                want.extend_from_slice(&extra);
            }
            2 => {
                let len = want.len() / 2;
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(len as u64)
                    .unwrap();
                want.truncate(len);
            }
            _ => {
                let patch = random_bytes(5000, round + 200);
                let at = want.len() / 3;
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .write_all_at(&patch, at as u64)
                    .unwrap();
                if want.len() < at + patch.len() {
                    want.resize(at + patch.len(), 0);
                }
                want[at..at + patch.len()].copy_from_slice(&patch);
            }
        }
        assert!(
            fs::read(&p).unwrap() == want,
            "round {round}: stale or wrong bytes"
        );
        assert!(
            fs::read(&p).unwrap() == want,
            "round {round}: second read differs"
        );
        let mut through_held = vec![0u8; want.len() + 1];
        let mut n = 0;
        while n < through_held.len() {
            match held.read_at(&mut through_held[n..], n as u64).unwrap() {
                0 => break,
                got => n += got,
            }
        }
        through_held.truncate(n);
        assert!(
            through_held == want,
            "round {round}: the handle held open reads stale bytes"
        );
    }
}

/// How many of the pages of open file `f` the kernel holds in its page cache, and of how many.
fn cached_pages(f: &File) -> (usize, usize) {
    use std::os::fd::AsRawFd;
    let len = f.metadata().unwrap().len() as usize;
    let mut resident = vec![0u8; len.div_ceil(4096)];
    // SAFETY: a read-only shared mapping of `len` bytes of an open file, unmapped below;
    // `mincore` writes one byte per page of it into `resident`, which has that many.
    let rc = unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap failed");
        let rc = libc::mincore(addr, len, resident.as_mut_ptr());
        libc::munmap(addr, len);
        rc
    };
    assert_eq!(rc, 0, "mincore failed");
    (
        resident.iter().filter(|&&b| b & 1 == 1).count(),
        resident.len(),
    )
}

#[test]
fn opening_a_file_again_while_it_is_read_keeps_its_cached_pages() {
    let Some(d) = daemon_with_store("pages") else {
        return;
    };
    let p = d.path("pages/f");
    let want = random_bytes(8 << 20, 21);
    // Written by appends, after which nothing records what the kernel may cache: the
    // first open starts from an empty cache.
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(&want)
        .unwrap();
    let mut first = File::open(&p).unwrap();
    let mut got = Vec::new();
    first.read_to_end(&mut got).unwrap();
    assert!(got == want);
    let (cached, pages) = cached_pages(&first);
    assert_eq!(
        cached, pages,
        "a whole read leaves the file in the page cache"
    );
    let mut second = File::open(&p).unwrap();
    assert_eq!(
        cached_pages(&first),
        (pages, pages),
        "a second open of unchanged content dropped the page cache"
    );
    got.clear();
    second.read_to_end(&mut got).unwrap();
    assert!(got == want);
    // A change through another handle still shows through both, and a new open still
    // sees the committed bytes.
    let patch = random_bytes(4096, 22);
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(&patch, 4 << 20)
        .unwrap();
    let mut changed = want;
    changed[4 << 20..(4 << 20) + 4096].copy_from_slice(&patch);
    let mut at = vec![0u8; 4096];
    for f in [&first, &second, &File::open(&p).unwrap()] {
        f.read_exact_at(&mut at, 4 << 20).unwrap();
        assert!(at == patch, "a handle reads stale bytes after a write");
    }
    assert!(fs::read(&p).unwrap() == changed);
}

#[test]
fn closing_a_reader_commits_nothing_of_a_writer_still_open() {
    use std::process::Stdio;
    let Some(d) = daemon_with_store("commits") else {
        return;
    };
    let p = d.path("commits/f");
    fs::write(&p, b"first").unwrap();
    let writes = || {
        let out = d.run(&["history", p.to_str().unwrap()]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(" write "))
            .count()
    };
    assert_eq!(writes(), 1);
    // The writer is another process, writing through its only descriptor of the file
    // (every close of one commits, a dup's included, and a process this test forks
    // closes its copies of the test's descriptors when it execs).
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg("exec 1<>\"$1\"; printf second; read _ || true")
        .arg("sh")
        .arg(&p)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    // Readers see the writer's bytes, and their closes are no commit of them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fs::read(&p).unwrap() != b"second" {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never showed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(writes(), 1, "a reader's close committed the writer's bytes");
    drop(writer.stdin.take());
    assert!(writer.wait().unwrap().success());
    assert_eq!(writes(), 2, "the writer's close commits its bytes");
    assert_eq!(fs::read(&p).unwrap(), b"second");
}

// Local exposure: what other members write, and what lies in the data dir, is no way in
// for another user of this machine.

/// Every directory and regular file under `dir` with its permission bits.
fn modes_under(dir: &Path) -> Vec<(std::path::PathBuf, bool, u32)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.push((path.clone(), true, meta.mode() & 0o7777));
            out.extend(modes_under(&path));
        } else if meta.is_file() {
            out.push((path, false, meta.mode() & 0o7777));
        }
    }
    out
}

#[test]
fn the_daemons_own_user_is_held_to_modes_as_on_a_local_filesystem() {
    let Some(d) = daemon_with_store("modes") else {
        return;
    };
    let out = d.sh(
        "cd modes && printf 'exit 0\\n' > plain && chmod 0644 plain \
         && printf 'exit 0\\n' > run && chmod 0100 run \
         && printf x > shut && chmod 0000 shut && mkdir ro && chmod 0555 ro \
         && for t in 'test -x plain' 'test -x run' './run' 'cat shut' 'test -w shut' \
              'touch ro/new'; do \
              if sh -c \"$t\" >/dev/null 2>&1; then echo \"$t: yes\"; else echo \"$t: no\"; fi; \
            done",
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // Root may read and write anything but executes only what has an execute bit; any
    // other user gets its owner bits.
    let yes = |by_root: bool| if by_root == root { "yes" } else { "no" };
    let expected = [
        "test -x plain: no".to_string(),
        "test -x run: yes".to_string(),
        format!("./run: {}", yes(true)),
        format!("cat shut: {}", yes(true)),
        format!("test -w shut: {}", yes(true)),
        format!("touch ro/new: {}", yes(true)),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn the_mount_is_nosuid_and_nodev_so_a_device_node_on_it_cannot_be_opened() {
    let Some(d) = daemon_with_store("dev") else {
        return;
    };
    let out = Command::new("findmnt")
        .args(["-n", "-o", "OPTIONS", "--mountpoint"])
        .arg(&d.mnt)
        .output()
        .unwrap();
    let options = String::from_utf8_lossy(&out.stdout);
    let options: Vec<&str> = options.trim().split(',').collect();
    assert!(options.contains(&"nosuid"), "{options:?}");
    assert!(options.contains(&"nodev"), "{options:?}");
    d.sh("mknod dev/null c 1 3");
    let opened = OpenOptions::new().read(true).open(d.path("dev/null"));
    assert_eq!(errno_of(opened), libc::EACCES);
}

#[test]
fn set_user_id_bits_show_only_on_what_this_node_wrote() {
    if !fuse_available() {
        return;
    }
    let a = Daemon::start_named("alice");
    let b = Daemon::start_named("bob");
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(a.run(&["create", "team"]));
    let token = ok(a.run(&["invite", "team"]));
    ok(b.run(&["join", token.trim()]));
    fs::write(a.path("team/tool"), b"#!/bin/sh\nid\n").unwrap();
    fs::set_permissions(a.path("team/tool"), fs::Permissions::from_mode(0o6755)).unwrap();
    fs::create_dir(a.path("team/shared")).unwrap();
    fs::set_permissions(a.path("team/shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    let mode = |p: &Path| fs::metadata(p).ok().map(|m| m.mode() & 0o7777);
    assert_eq!(
        mode(&a.path("team/tool")),
        Some(0o6755),
        "the author sees its own bits"
    );
    assert_eq!(mode(&a.path("team/shared")), Some(0o2775));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while mode(&b.path("team/tool")) != Some(0o755) || mode(&b.path("team/shared")) != Some(0o775) {
        assert!(
            std::time::Instant::now() < deadline,
            "bob sees tool {:?} and shared {:?}",
            mode(&b.path("team/tool")).map(|m| format!("{m:o}")),
            mode(&b.path("team/shared")).map(|m| format!("{m:o}"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Bob's own chmod of alice's content does not make it privileged either; his own file does.
    fs::set_permissions(b.path("team/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(mode(&b.path("team/tool")), Some(0o755));
    fs::write(b.path("team/mine"), b"x").unwrap();
    fs::set_permissions(b.path("team/mine"), fs::Permissions::from_mode(0o4750)).unwrap();
    assert_eq!(mode(&b.path("team/mine")), Some(0o4750));
}

#[test]
fn staging_files_are_private_while_a_file_is_being_written() {
    let Some(d) = daemon_with_store("st") else {
        return;
    };
    let mut f = File::create(d.path("st/open.bin")).unwrap();
    f.write_all(&random_bytes(100_000, 12)).unwrap();
    let staging = d.data.join("staging");
    assert_eq!(fs::metadata(&staging).unwrap().mode() & 0o7777, 0o700);
    let files = modes_under(&staging);
    assert!(!files.is_empty(), "no staging file while a write is open");
    for (path, _, m) in files {
        assert_eq!(m, 0o600, "{} is {m:o}", path.display());
    }
    drop(f);
}

#[test]
fn an_open_data_dir_is_made_private_when_the_daemon_starts() {
    let Some(mut d) = daemon_with_store("p") else {
        return;
    };
    fs::write(d.path("p/big.bin"), random_bytes(2 << 20, 13)).unwrap();
    d.down();
    fs::set_permissions(&d.data, fs::Permissions::from_mode(0o755)).unwrap();
    for (path, is_dir, _) in modes_under(&d.data) {
        // The key stays private: an exposed key is refused, not repaired.
        if !path.ends_with("node.key") {
            let m = if is_dir { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(m)).unwrap();
        }
    }
    d.up();
    assert_eq!(fs::metadata(&d.data).unwrap().mode() & 0o7777, 0o700);
    let all = modes_under(&d.data);
    assert!(all.iter().any(|(p, ..)| p.ends_with("store.redb")));
    for (path, is_dir, m) in all {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(m, want, "{} is {m:o}", path.display());
    }
    assert_eq!(
        fs::read(d.path("p/big.bin")).unwrap(),
        random_bytes(2 << 20, 13)
    );
}
