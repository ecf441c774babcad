//! Changes received from another member show through a live mount at once: the kernel's
//! cached entries, attributes and pages are invalidated, not left to expire; content
//! whose blobs have not arrived yet reads once they are fetched, or fails with `EIO`.
//!
//! The "peer" is a second identity, added as a writer, whose signed intentions are
//! applied with `Store::apply_remote`, as the network layer will apply them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lattice_mount::{
    now_ms, ApplyOutcome, Cas, Clock, Content, FetchRequest, Fetcher, FileId, FsNode, FsState,
    Hash, Hlc, Identity, Intention, Kind, MountGuard, Node, Op, OpBody, OpId, RenameFlags, Role,
    Store, StoreEvent,
};
use parking_lot::Mutex;

use common::{fuse_available, is_lattice_mount};

/// Longest a remote change may take to show through the mount. The kernel caches
/// entries and attributes for a second, so without invalidation it would take longer.
const SHOW_WITHIN: Duration = Duration::from_millis(200);

/// A writer of the store on another node: authors intentions on the store's heads.
struct Peer {
    identity: Identity,
    clock: Arc<Mutex<Clock>>,
    prev: Option<Hash>,
    head: Hash,
}

impl Peer {
    /// Applies one intention of this peer holding the ops `plan` makes from the state.
    /// Returns the id of its first op.
    fn apply(&mut self, store: &Store, plan: impl FnOnce(&FsState) -> Vec<OpBody>) -> OpId {
        let ops = self.stamp(store.read(plan));
        self.apply_ops(store, ops)
    }

    /// Stamps `bodies` with this peer's clock now.
    fn stamp(&self, bodies: Vec<OpBody>) -> Vec<Op> {
        bodies
            .into_iter()
            .map(|body| Op {
                hlc: self.clock.lock().tick(now_ms()),
                body,
            })
            .collect()
    }

    /// Applies one intention of this peer holding `ops`; returns the id of the first.
    fn apply_ops(&mut self, store: &Store, ops: Vec<Op>) -> OpId {
        let first = ops[0].id(self.identity.public());
        let i =
            Intention::create(&self.identity, store.id(), self.prev, vec![self.head], ops).unwrap();
        let outcome = store.apply_remote(i.bytes.clone()).unwrap();
        assert_eq!(outcome, ApplyOutcome::Applied { woken: 0 });
        self.prev = Some(i.hash);
        self.head = i.hash;
        first
    }
}

/// A store whose single head is known, with `peer` added as a writer.
fn store_with_peer(node: &Node) -> (Store, Peer) {
    let store = node.create_store("shared").unwrap();
    let mut sealed = store.subscribe();
    let peer = Identity::generate();
    store
        .write(|tx| {
            tx.push(OpBody::SetMember {
                key: peer.public(),
                role: Role::Writer,
                display_name: "peer".into(),
                invite: None,
            })?;
            Ok(())
        })
        .unwrap();
    store.flush().unwrap();
    // The last sealed intention names every earlier one: it is the only head.
    let mut head = None;
    while let Ok(event) = sealed.try_recv() {
        if let StoreEvent::Sealed(all) = event {
            let last = all.last().unwrap().clone();
            head = Some(Intention::decode(last).unwrap().hash);
        }
    }
    let peer = Peer {
        identity: peer,
        clock: Arc::new(Mutex::new(Clock::new(Hlc::ZERO))),
        prev: None,
        head: head.expect("the member op was sealed"),
    };
    (store, peer)
}

/// A node holding the store "shared" with a peer writer, mounted.
struct Mounted {
    tmp: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    node: Node,
    store: Store,
    peer: Peer,
    mnt: PathBuf,
    guard: MountGuard,
}

/// A fresh [`Mounted`]; `None` where FUSE is unavailable (never under CI).
fn mounted() -> Option<Mounted> {
    if !fuse_available() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = Node::open(&tmp.path().join("data"), Some("me"), rt.handle().clone()).unwrap();
    let (store, peer) = store_with_peer(&node);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let guard = lattice_mount::mount(
        node.clone(),
        &mnt,
        lattice_mount::MountOptions {
            allow_other: false,
            passthrough: true,
        },
    )
    .unwrap();
    assert!(is_lattice_mount(&mnt), "mount did not appear");
    Some(Mounted {
        tmp,
        rt,
        node,
        store,
        peer,
        mnt,
        guard,
    })
}

/// Polls `check` until it holds or `SHOW_WITHIN` passes; returns how long it took.
fn shows(what: &str, mnt: &Path, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < SHOW_WITHIN,
            "{what}: not visible through the mount after {SHOW_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        is_lattice_mount(mnt),
        "{} is no longer mounted",
        mnt.display()
    );
    start.elapsed()
}

/// True if `stat` of directory `path` shows the (mtime, ctime) the store projects for
/// directory `dir`.
fn dir_times_show(store: &Store, dir: FileId, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let node = FsNode::Entry {
        entry: dir,
        file: dir,
    };
    let a = store.read(|s| s.attr(node).unwrap());
    let m = std::fs::metadata(path).unwrap();
    let ns = |secs: i64, nsec: i64| secs * 1_000_000_000 + nsec;
    (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec())) == (a.mtime_ns, a.ctime_ns)
}

fn create(s: &FsState, parent: FileId, name: &str, kind: Kind, data: &str) -> Vec<OpBody> {
    let content = Content::Inline(Bytes::from(data.to_owned()));
    vec![s
        .plan_create(parent, name, kind, 0o644, 0, 0, 0, content, 1)
        .unwrap()]
}

#[test]
fn remote_creates_rewrites_renames_and_deletes_show_through_the_mount_at_once() {
    let Some(mut m) = mounted() else {
        return;
    };
    let (node, store, mnt) = (m.node.clone(), m.store.clone(), m.mnt.clone());
    let dir = mnt.join("shared");
    let (a, b, sub) = (dir.join("a.txt"), dir.join("b.txt"), dir.join("sub"));

    // Fill the kernel's caches: the directory, then a file's entry, attributes and pages.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    assert!(dir_times_show(&store, OpId::ROOT, &dir));
    let file = m.peer.apply(&store, |s| {
        create(s, OpId::ROOT, "a.txt", Kind::File, "one")
    });
    let mut took = vec![shows("created file", &mnt, || {
        std::fs::read(&a).is_ok_and(|d| d == b"one") && dir_times_show(&store, OpId::ROOT, &dir)
    })];
    assert_eq!(std::fs::read(&a).unwrap(), b"one");
    assert_eq!(std::fs::metadata(&a).unwrap().len(), 3);

    m.peer.apply(&store, |s| {
        let content = Content::Inline(Bytes::from_static(b"second version"));
        vec![s.plan_write(file, content, 2).unwrap()]
    });
    took.push(shows("rewritten content", &mnt, || {
        std::fs::metadata(&a).is_ok_and(|m| m.len() == 14)
            && std::fs::read(&a).is_ok_and(|d| d == b"second version")
    }));

    let subdir = m
        .peer
        .apply(&store, |s| create(s, OpId::ROOT, "sub", Kind::Dir, ""));
    assert!(std::fs::metadata(&sub).unwrap().is_dir());
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
    m.peer.apply(&store, |s| {
        s.plan_rename(OpId::ROOT, "a.txt", subdir, "b.txt", RenameFlags::default())
            .unwrap()
    });
    took.push(shows("renamed into a subdirectory", &mnt, || {
        std::fs::metadata(&a).is_err()
            && std::fs::read(sub.join("b.txt")).is_ok_and(|d| d == b"second version")
            && dir_times_show(&store, OpId::ROOT, &dir)
            && dir_times_show(&store, subdir, &sub)
    }));

    m.peer.apply(&store, |s| {
        s.plan_rename(subdir, "b.txt", OpId::ROOT, "b.txt", RenameFlags::default())
            .unwrap()
    });
    took.push(shows("moved back", &mnt, || {
        std::fs::metadata(sub.join("b.txt")).is_err()
            && std::fs::metadata(&b).is_ok()
            && dir_times_show(&store, OpId::ROOT, &dir)
            && dir_times_show(&store, subdir, &sub)
    }));

    m.peer.apply(&store, |s| {
        vec![s.plan_unlink(OpId::ROOT, "b.txt").unwrap()]
    });
    took.push(shows("deleted file", &mnt, || {
        std::fs::metadata(&b).is_err() && dir_times_show(&store, OpId::ROOT, &dir)
    }));

    // A name the kernel never looked up comes and goes: only the directory's cached
    // attributes say so.
    assert!(dir_times_show(&store, subdir, &sub));
    m.peer
        .apply(&store, |s| create(s, subdir, "unseen", Kind::File, ""));
    took.push(shows("created unseen name", &mnt, || {
        dir_times_show(&store, subdir, &sub)
    }));
    m.peer
        .apply(&store, |s| vec![s.plan_unlink(subdir, "unseen").unwrap()]);
    took.push(shows("removed unseen name", &mnt, || {
        dir_times_show(&store, subdir, &sub)
    }));
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["sub"]);

    // A store added outside the mount: the root's link count (2 + stores) is cached too.
    let nlink = || std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(&mnt).unwrap());
    assert_eq!(nlink(), 3);
    node.create_store("second").unwrap();
    took.push(shows("new store", &mnt, || {
        nlink() == 4 && mnt.join("second").is_dir()
    }));

    eprintln!("remote changes showed after {took:?}");
    m.guard.unmount().unwrap();
    node.shutdown().unwrap();
}

#[test]
fn remote_content_with_absent_blobs_fails_with_eio_then_reads_once_fetched() {
    let Some(mut m) = mounted() else {
        return;
    };
    let (node, store, mnt) = (m.node.clone(), m.store.clone(), m.mnt.clone());
    // The peer's own content store holds the file's chunks and manifest.
    let peer_cas = Cas::open(&m.tmp.path().join("peer-blobs"), m.rt.handle().clone()).unwrap();
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let content = peer_cas.put_bytes(store.id(), &data).unwrap();
    assert!(matches!(content, Content::Manifest { .. }));
    let path = mnt.join("shared").join("big");
    m.peer.apply(&store, |s| {
        vec![s
            .plan_create(OpId::ROOT, "big", Kind::File, 0o644, 0, 0, 0, content, 1)
            .unwrap()]
    });

    let err = std::fs::read(&path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "no fetcher: {err}");

    let (from, to, handle) = (peer_cas.blobs(), node.cas().blobs(), m.rt.handle().clone());
    let fetcher: Fetcher = Arc::new(move |req: FetchRequest| {
        let (from, to, handle) = (from.clone(), to.clone(), handle.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            handle.block_on(async {
                for hash in req.hashes {
                    let bytes = from.get_bytes(hash).await.unwrap();
                    to.add_bytes(bytes).await.unwrap();
                }
            });
        });
    });
    node.cas().set_fetcher(fetcher);
    let t = Instant::now();
    assert!(
        std::fs::read(&path).unwrap() == data,
        "fetched content differs"
    );
    eprintln!("read of 3 MiB of absent content took {:?}", t.elapsed());
    assert!(
        is_lattice_mount(&mnt),
        "{} is no longer mounted",
        mnt.display()
    );
    m.guard.unmount().unwrap();
    node.shutdown().unwrap();
    peer_cas.shutdown().unwrap();
}

/// The file a visible name of the store's root shows.
fn file_named(store: &Store, name: &str) -> OpId {
    match store.read(|s| s.lookup(OpId::ROOT, name)).unwrap() {
        FsNode::Entry { file, .. } => file,
        other => panic!("{name} shows {other:?}"),
    }
}

/// The names of `dir` starting with `prefix`.
fn names_starting(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[test]
fn changes_to_names_beside_the_one_a_request_named_show_through_the_mount_at_once() {
    let Some(mut m) = mounted() else {
        return;
    };
    let (node, store, mnt) = (m.node.clone(), m.store.clone(), m.mnt.clone());
    let dir = mnt.join("shared");
    let mut took = Vec::new();

    // A received entry that collides with one the kernel holds and sorts first (an
    // older create) takes the raw name; the local one is shown decorated.
    let theirs = m
        .peer
        .stamp(store.read(|s| create(s, OpId::ROOT, "same.txt", Kind::File, "theirs")));
    // Stamped a few milliseconds earlier: the clocks do not share counters.
    std::thread::sleep(Duration::from_millis(5));
    std::fs::write(dir.join("same.txt"), b"mine").unwrap();
    assert_eq!(std::fs::read(dir.join("same.txt")).unwrap(), b"mine");
    m.peer.apply_ops(&store, theirs);
    took.push(shows("a colliding name received", &mnt, || {
        std::fs::read(dir.join("same.txt")).is_ok_and(|d| d == b"theirs")
    }));
    let decorated = names_starting(&dir, "same (");
    assert_eq!(decorated.len(), 1, "{decorated:?}");
    let my_name = dir.join(&decorated[0]);
    assert_eq!(std::fs::read(&my_name).unwrap(), b"mine");

    // Removing the raw name through the mount undecorates the other.
    std::fs::remove_file(dir.join("same.txt")).unwrap();
    took.push(shows("the other name undecorated", &mnt, || {
        std::fs::metadata(&my_name).is_err()
            && std::fs::read(dir.join("same.txt")).is_ok_and(|d| d == b"mine")
    }));

    // A write through the mount to a file with a conflict copy dismisses the copy.
    std::fs::write(dir.join("doc.txt"), b"one").unwrap();
    let doc = file_named(&store, "doc.txt");
    let concurrent = store.read(|s| {
        vec![s
            .plan_write(doc, Content::Inline(Bytes::from_static(b"theirs")), 2)
            .unwrap()]
    });
    std::fs::write(dir.join("doc.txt"), b"two").unwrap();
    let mut held = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("doc.txt"))
        .unwrap();
    m.peer.apply(&store, |_| concurrent);
    let copies = names_starting(&dir, "doc (conflict");
    assert_eq!(copies.len(), 1, "{:?}", names_starting(&dir, ""));
    let copy = dir.join(&copies[0]);
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(
        mode(&copy),
        0o444,
        "a copy shows the file's mode, read-only"
    );
    std::fs::set_permissions(
        dir.join("doc.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    took.push(shows(
        "the file's new mode on its conflict copy",
        &mnt,
        || mode(&copy) == 0o440,
    ));
    std::io::Write::write_all(&mut held, b"three").unwrap();
    drop(held);
    took.push(shows("the conflict copy dismissed", &mnt, || {
        std::fs::metadata(&copy).is_err()
    }));

    // Ops written outside the mount (as `restore` or `resolve` write them).
    store
        .write(|tx| {
            let body = tx.state().plan_unlink(OpId::ROOT, "doc.txt")?;
            tx.push(body)?;
            Ok(())
        })
        .unwrap();
    took.push(shows("a name removed outside the mount", &mnt, || {
        std::fs::metadata(dir.join("doc.txt")).is_err()
    }));

    // A snapshot dropped: its directory and, with no snapshot left, `.snapshots`.
    store.snapshot("before").unwrap();
    let snap = dir.join(".snapshots").join("before");
    assert_eq!(std::fs::read(snap.join("same.txt")).unwrap(), b"mine");
    store.drop_snapshot("before").unwrap();
    took.push(shows("a dropped snapshot", &mnt, || {
        std::fs::metadata(&snap).is_err() && std::fs::metadata(dir.join(".snapshots")).is_err()
    }));

    eprintln!("changes beside the named entry showed after {took:?}");
    m.guard.unmount().unwrap();
    node.shutdown().unwrap();
}
