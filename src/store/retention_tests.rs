//! Content collection against a real node: a real store of intentions and a real
//! iroh-blobs content store, with the store's wall clock moved by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cas::{Cas, CasError, Content};
use crate::fs::op::{Create, Kind, OpBody, Setting, DEFAULT_HORIZON_DAYS, DEFAULT_RETENTION_DAYS};
use crate::ids::{FileId, OpId};
use crate::node::Node;
use crate::store::retention::MS_PER_DAY;
use crate::store::{SettingError, Store};

/// A node in `dir` whose collections keep no put for a grace period.
fn node(dir: &std::path::Path) -> (tokio::runtime::Runtime, Node) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = Node::open(dir, Some("gc"), rt.handle().clone()).unwrap();
    node.cas().set_put_grace(Duration::ZERO);
    (rt, node)
}

/// A node as [`node`] gives, with a new store `name` that keeps no old version.
fn node_keeping_nothing(
    dir: &std::path::Path,
    name: &str,
) -> (tokio::runtime::Runtime, Node, Store) {
    let (rt, node) = node(dir);
    let store = node.create_store(name).unwrap();
    store.set_setting(Setting::Retention, 0).unwrap();
    (rt, node, store)
}

/// Makes `store` read the wall time from the returned cell (starting now).
fn clock(store: &Store) -> Arc<AtomicU64> {
    let now = Arc::new(AtomicU64::new(crate::hlc::now_ms()));
    let cell = now.clone();
    store.set_wall(Arc::new(move || cell.load(Ordering::SeqCst)));
    now
}

/// `len` bytes that no other call with another `seed` repeats.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn create(node: &Node, store: &Store, name: &str, bytes: &[u8]) -> (FileId, Content) {
    let content = node.cas().put_bytes(store.id(), bytes).unwrap();
    let c = content.clone();
    let id = store
        .write(|tx| {
            Ok(tx.push(OpBody::Create(Create {
                parent: OpId::ROOT,
                name: name.into(),
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                mtime_ns: 0,
                content: c,
            }))?)
        })
        .unwrap();
    (id, content)
}

fn overwrite(node: &Node, store: &Store, file: FileId, bytes: &[u8]) -> Content {
    let content = node.cas().put_bytes(store.id(), bytes).unwrap();
    let c = content.clone();
    store
        .write(|tx| {
            let supersedes = tx
                .state()
                .file(file)
                .unwrap()
                .heads
                .keys()
                .copied()
                .collect();
            Ok(tx.push(OpBody::Write {
                file,
                supersedes,
                content: c,
                mtime_ns: 0,
            })?)
        })
        .unwrap();
    content
}

fn remove(store: &Store, file: FileId) {
    store
        .write(|tx| {
            let seen_content = tx
                .state()
                .file(file)
                .unwrap()
                .heads
                .keys()
                .copied()
                .collect();
            Ok(tx.push(OpBody::Remove {
                entry: file,
                seen_content,
            })?)
        })
        .unwrap();
}

/// Whether `content` of `store` reads back as `bytes`; false if a blob is gone.
fn reads(cas: &Cas, store: &Store, content: &Content, bytes: &[u8]) -> bool {
    let mut buf = vec![0; bytes.len()];
    match cas.read(store.id(), std::slice::from_ref(content), 0, &mut buf) {
        Ok(n) => n == bytes.len() && buf == bytes,
        Err(CasError::Absent { .. }) => false,
        Err(e) => panic!("read failed: {e}"),
    }
}

/// Bytes of every complete blob of the node.
fn blob_bytes(node: &Node) -> u64 {
    node.cas().stats().unwrap().1
}

/// Bytes of every file under `dir`, as stored (the data dir's growth).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// Slack over the kept content's bytes for manifests and hash sequences.
const SLACK: u64 = 64 * 1024;

#[test]
fn collection_keeps_every_blob_a_current_or_retained_version_needs_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node) = node(tmp.path());
    let store = node.create_store("docs").unwrap();
    let now = clock(&store);
    let t0 = now.load(Ordering::SeqCst);
    assert_eq!(store.retention_days(), DEFAULT_RETENTION_DAYS);
    let len = 300 * 1024;
    let v: Vec<Vec<u8>> = (1..=4).map(|i| data(i, len)).collect();
    let (f, c1) = create(&node, &store, "f", &v[0]);
    let c2 = overwrite(&node, &store, f, &v[1]);
    let c3 = overwrite(&node, &store, f, &v[2]);
    let gone = data(10, len);
    let (g, cg) = create(&node, &store, "g", &gone);
    remove(&store, g);

    let freed = node.gc(Some(&store)).unwrap();
    assert_eq!(freed[0].1.blobs, 0, "everything is within 30 days");
    for (c, b) in [(&c1, &v[0]), (&c2, &v[1]), (&c3, &v[2]), (&cg, &gone)] {
        assert!(reads(node.cas(), &store, c, b));
    }

    now.store(t0 + 20 * MS_PER_DAY, Ordering::SeqCst);
    let c4 = overwrite(&node, &store, f, &v[3]);
    let kept = data(11, len);
    let (h, ch) = create(&node, &store, "h", &kept);
    remove(&store, h);
    now.store(t0 + 31 * MS_PER_DAY, Ordering::SeqCst);

    let freed = node.gc(Some(&store)).unwrap()[0].1;
    assert!(freed.bytes >= 3 * len as u64, "{freed:?}");
    for (c, b) in [(&c3, &v[2]), (&c4, &v[3]), (&ch, &kept)] {
        assert!(
            reads(node.cas(), &store, c, b),
            "a retained version lost blobs"
        );
    }
    for (c, b) in [(&c1, &v[0]), (&c2, &v[1]), (&cg, &gone)] {
        assert!(
            !reads(node.cas(), &store, c, b),
            "an expired version kept blobs"
        );
    }
    let reading = node.space(&store);
    assert!(
        reading.current,
        "the collection measured the space: {reading:?}"
    );
    let space = reading.last.unwrap().0;
    assert_eq!(space.reclaimable, 0, "{space:?}");
    assert!(
        (len as u64..len as u64 + SLACK).contains(&space.live),
        "{space:?}"
    );
    let retained = 2 * len as u64;
    assert!(
        (retained..retained + SLACK).contains(&space.retained),
        "{space:?}"
    );
    let total = blob_bytes(&node);
    assert!(
        (3 * len as u64..3 * len as u64 + SLACK).contains(&total),
        "{total}"
    );
    node.shutdown().unwrap();
}

#[test]
fn retention_zero_and_a_collection_after_ten_overwrites_of_a_large_file_keep_only_the_last() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = node_keeping_nothing(tmp.path(), "big");
    assert_eq!(store.retention_days(), 0);
    let len = 5 * 1024 * 1024;
    let before = blob_bytes(&node);
    let dir_before = dir_bytes(tmp.path());
    let (f, mut content) = create(&node, &store, "f", &data(0, len));
    for i in 1..=10 {
        content = overwrite(&node, &store, f, &data(i, len));
    }
    let written = blob_bytes(&node) - before;
    let freed = node.gc(None).unwrap()[0].1;
    let after = blob_bytes(&node) - before;
    let grown = dir_bytes(tmp.path()).saturating_sub(dir_before);
    eprintln!(
        "11 versions of {len} bytes: {written} blob bytes written, {} freed in {} blobs, \
         {after} kept; data dir grew {grown} bytes",
        freed.bytes, freed.blobs
    );
    assert!(grown <= 2 * len as u64, "data dir grew {grown} bytes");
    assert!(written >= 11 * len as u64);
    assert!((len as u64..len as u64 + SLACK).contains(&after), "{after}");
    assert!(reads(node.cas(), &store, &content, &data(10, len)));
    node.shutdown().unwrap();
}

#[test]
fn with_retention_thirty_every_old_version_survives_a_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node) = node(tmp.path());
    let store = node.create_store("kept").unwrap();
    let len = 600 * 1024;
    let (f, first) = create(&node, &store, "f", &data(0, len));
    let mut versions = vec![first];
    for i in 1..=10 {
        versions.push(overwrite(&node, &store, f, &data(i, len)));
    }
    let freed = node.gc(None).unwrap()[0].1;
    assert_eq!(freed.blobs, 0);
    for (i, c) in versions.iter().enumerate() {
        assert!(
            reads(node.cas(), &store, c, &data(i as u64, len)),
            "version {i}"
        );
    }
    node.shutdown().unwrap();
}

#[test]
fn a_blob_owned_by_two_stores_survives_the_collection_of_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node) = node(tmp.path());
    let (a, b) = (
        node.create_store("a").unwrap(),
        node.create_store("b").unwrap(),
    );
    let shared = data(7, 400 * 1024);
    let (fa, ca) = create(&node, &a, "f", &shared);
    let (fb, cb) = create(&node, &b, "f", &shared);
    assert_eq!(ca, cb, "equal content is stored once");
    a.set_setting(Setting::Retention, 0).unwrap();
    overwrite(&node, &a, fa, b"now inline");
    node.gc(Some(&a)).unwrap();
    assert!(reads(node.cas(), &b, &cb, &shared), "b still owns it");
    b.set_setting(Setting::Retention, 0).unwrap();
    overwrite(&node, &b, fb, b"inline too");
    let freed = node.gc(Some(&b)).unwrap()[0].1;
    assert!(freed.bytes >= shared.len() as u64, "{freed:?}");
    assert!(!reads(node.cas(), &b, &cb, &shared));
    node.shutdown().unwrap();
}

#[test]
fn a_setting_outside_its_range_is_refused_and_changes_nothing() {
    use crate::fs::op::{MAX_HORIZON_DAYS, MAX_RETENTION_DAYS};
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node) = node(tmp.path());
    let store = node.create_store("s").unwrap();
    let intentions = store.stats().intentions;
    for (setting, days) in [
        (Setting::Retention, MAX_RETENTION_DAYS + 1),
        (Setting::Horizon, 0),
        (Setting::Horizon, MAX_HORIZON_DAYS + 1),
    ] {
        let err = store.set_setting(setting, days).unwrap_err();
        assert!(matches!(err, SettingError::Invalid(_)), "{err}");
    }
    assert_eq!(
        store
            .set_setting(Setting::Horizon, 0)
            .unwrap_err()
            .to_string(),
        "invalid setting: horizon must be 1 to 3650 days"
    );
    assert_eq!(store.stats().intentions, intentions);
    assert_eq!(store.retention_days(), DEFAULT_RETENTION_DAYS);
    assert_eq!(store.setting(Setting::Horizon), DEFAULT_HORIZON_DAYS);
    store.set_setting(Setting::Retention, 7).unwrap();
    store
        .set_setting(Setting::Horizon, MAX_HORIZON_DAYS)
        .unwrap();
    assert_eq!(store.retention_days(), 7);
    assert_eq!(store.setting(Setting::Horizon), MAX_HORIZON_DAYS);
    node.shutdown().unwrap();
}

#[test]
fn content_put_for_a_write_not_pushed_yet_survives_a_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = node_keeping_nothing(tmp.path(), "s");
    let bytes = data(3, 300 * 1024);
    let pending = node.cas().put_bytes(store.id(), &bytes).unwrap();
    let freed = node.gc(Some(&store)).unwrap()[0].1;
    assert_eq!(freed.blobs, 0);
    assert!(reads(node.cas(), &store, &pending, &bytes));
    let (f, c) = create(&node, &store, "f", &bytes);
    assert_eq!(c, pending);
    overwrite(&node, &store, f, b"small");
    let freed = node.gc(Some(&store)).unwrap()[0].1;
    assert!(
        freed.bytes >= bytes.len() as u64,
        "named and superseded: {freed:?}"
    );
    node.shutdown().unwrap();
}

#[test]
fn both_settings_survive_a_restart_and_the_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (_rt, node) = node(tmp.path());
        let store = node.create_store("s").unwrap();
        store.set_setting(Setting::Retention, 3).unwrap();
        store.set_setting(Setting::Horizon, 5).unwrap();
        node.shutdown().unwrap();
    }
    let (_rt, node) = node(tmp.path());
    let store = node.store_by_name("s").unwrap();
    assert_eq!(store.retention_days(), 3);
    assert_eq!(store.setting(Setting::Horizon), 5);
    let snapshot = store.read(|s| s.encode_snapshot());
    let decoded = crate::fs::FsState::decode_snapshot(&snapshot).unwrap();
    assert_eq!(decoded.retention_days(), 3);
    assert_eq!(decoded.horizon_days(), 5);
    node.shutdown().unwrap();
}

/// Polls `node`'s reading of `store`'s space until it is current (bounded).
fn current_space(node: &Node, store: &Store) -> crate::cas::Space {
    for _ in 0..3000 {
        let reading = node.space(store);
        if reading.current {
            return reading.last.unwrap().0;
        }
        assert_eq!(reading.error, None);
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the content space was not measured within 30 s");
}

#[test]
fn the_content_space_is_measured_in_the_background_and_kept_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let len = 1 << 20;
    let (before, file) = {
        let (_rt, node) = node(tmp.path());
        let store = node.create_store("s").unwrap();
        let (file, _) = create(&node, &store, "f", &data(1, len));
        let first = node.space(&store);
        assert!(!first.current && first.last.is_none(), "{first:?}");
        let before = current_space(&node, &store);
        assert!(
            (len as u64..len as u64 + SLACK).contains(&before.live),
            "{before:?}"
        );
        node.shutdown().unwrap();
        (before, file)
    };
    let (_rt, node) = node(tmp.path());
    let store = node.store_by_name("s").unwrap();
    let kept = node.space(&store);
    assert!(kept.current, "nothing applied since: {kept:?}");
    assert_eq!(kept.last.unwrap().0, before);

    overwrite(&node, &store, file, &data(2, 2 * len));
    // A measurement dates by the applied count, which moves when the op is sealed.
    store.flush().unwrap();
    let stale = node.space(&store);
    assert!(!stale.current, "{stale:?}");
    assert_eq!(
        stale.last.unwrap().0,
        before,
        "the last figures stay until measured"
    );
    let after = current_space(&node, &store);
    assert!(
        (2 * len as u64..2 * len as u64 + SLACK).contains(&after.live),
        "{after:?}"
    );
    assert!(after.retained >= len as u64, "{after:?}");

    // A change right after a measurement is measured once the gap has passed, without
    // anyone asking again.
    overwrite(&node, &store, file, &data(3, len));
    store.flush().unwrap();
    assert!(!node.space(&store).current);
    std::thread::sleep(SPACE_GAP_AND_SOME);
    let later = node.space(&store);
    assert!(later.current, "{later:?}");
    node.shutdown().unwrap();
}

/// Longer than the gap between two measurements of a small store (2 s), with room for
/// the measurement itself.
const SPACE_GAP_AND_SOME: Duration = Duration::from_secs(5);

#[test]
fn a_store_keeps_sweeping_batch_after_batch_with_nothing_else_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = node_keeping_nothing(tmp.path(), "many");
    let files = 3 * crate::fs::SWEEP_BATCH;
    let ids = store
        .write(|tx| {
            let mut ids = Vec::new();
            for n in 0..files {
                ids.push(tx.push(crate::store::tests::create(&format!("f{n}")))?);
            }
            Ok(ids)
        })
        .unwrap();
    store
        .write(|tx| {
            for id in &ids {
                tx.push(OpBody::Remove {
                    entry: *id,
                    seen_content: tx
                        .state()
                        .file(*id)
                        .unwrap()
                        .heads
                        .keys()
                        .copied()
                        .collect(),
                })?;
            }
            Ok(())
        })
        .unwrap();
    // An op after the removals, so that every one of them is settled.
    create(&node, &store, "last", b"last");
    // Reading takes no commit: only the store's own sweep commits can empty the tree.
    let start = std::time::Instant::now();
    while store.read(|s| s.tree.len()) > 1 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} tombstones left: {:?}",
            store.read(|s| s.tree.len()),
            store.read(|s| s.tree.children(OpId::ROOT))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.shutdown().unwrap();
}
