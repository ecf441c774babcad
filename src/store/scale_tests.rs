//! The non-timing invariants of `lattice-bench scale`, scaled down to 20,000 files
//! through the store API: opening costs only the witness log past the persisted
//! projection (its header and page tables), and the store file stays within a
//! per-record bound as the tree and its overwrites grow.

use std::path::Path;

use bytes::Bytes;

use crate::cas::Content;
use crate::fs::op::{Create, Kind, OpBody};
use crate::fs::Page;
use crate::identity::Identity;
use crate::ids::{OpId, StoreId};
use crate::store::tests::clock;
use crate::store::{pages, Store, DB_FILE};

/// Directories of the scaled-down tree.
const DIRS: usize = 100;
/// Files in each directory: 100 x 200 = 20,000 files.
const FILES_PER_DIR: usize = 200;
/// One file in this many gets a line of content, as in the benchmark (10,000 of 100,000).
const WITH_CONTENT_EVERY: usize = 10;
/// Ops pushed under one write lock: about what a busy mount pushes between two seals.
const OPS_PER_WRITE: usize = 1_000;
/// Bytes of `store.redb` per stored file record (a create or an overwrite) allowed.
///
/// Measured at 20,000 files: 629 B per file after the tree; after 20,000 overwrites
/// 838 B per record with snapshot format 2 (the op log, rewritten every 1,000
/// intentions) and 629 B with format 3 (the state); with page header format 4 (authors
/// named by number in page records) 421 B per file after the tree and 420 B per record
/// after the overwrites (debug build). A record costs its op in a signed
/// intention (~80 B, batched so the signature is shared), its `history` row (~70 B), its
/// share of the projection's pages and redb's B-tree overhead (leaves about two thirds full for keys in random order, nearly full for appended ones),
/// plus the intention-level rows (`witness`, `index`, `hlcs`, `seqs`, `chain`) shared by
/// the ops of an intention. The file is counted as `du` counts it (its disk blocks):
/// redb reserves its length in steps (16 or 32 MiB after the overwrites, from one run to
/// the next) but writes only what it uses; on disk, with the page source following each
/// commit, 398 B per file after the tree and 446 B per record after the overwrites.
/// 640 B breaks on another per-op row, page records that name authors by whole keys
/// again, or pages freed by commits but kept in the file.
const MAX_STORE_BYTES_PER_RECORD: u64 = 640;

/// A Create in `parent`: a directory, or a file holding `content`.
fn create_in(parent: OpId, name: String, kind: Kind, content: &str) -> OpBody {
    OpBody::Create(Create {
        parent,
        name,
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        rdev: 0,
        mtime_ns: 1,
        content: Content::Inline(Bytes::from(content.to_owned())),
    })
}

/// Disk space of the store's redb file, as `du` (and `lattice-bench scale`) counts it.
fn store_bytes(dir: &Path) -> u64 {
    disk_bytes(&dir.join(DB_FILE))
}

/// Builds the tree in batches of [`OPS_PER_WRITE`]; returns every file's id.
fn build_tree(store: &Store) -> Vec<OpId> {
    let mut files = Vec::with_capacity(DIRS * FILES_PER_DIR);
    for d in 0..DIRS {
        let dir = store
            .write(|tx| Ok(tx.push(create_in(OpId::ROOT, format!("d{d:03}"), Kind::Dir, ""))?))
            .unwrap();
        for batch in (0..FILES_PER_DIR).collect::<Vec<_>>().chunks(OPS_PER_WRITE) {
            store
                .write(|tx| {
                    for &f in batch {
                        let n = d * FILES_PER_DIR + f;
                        let line = if n.is_multiple_of(WITH_CONTENT_EVERY) {
                            format!("line {n}\n")
                        } else {
                            String::new()
                        };
                        files.push(tx.push(create_in(
                            dir,
                            format!("f{f:04}"),
                            Kind::File,
                            &line,
                        ))?);
                    }
                    Ok(())
                })
                .unwrap();
        }
    }
    store.flush().unwrap();
    files
}

/// Overwrites every file once with a new line, superseding its current head.
fn overwrite_all(store: &Store, files: &[OpId]) {
    for batch in files.chunks(OPS_PER_WRITE) {
        store
            .write(|tx| {
                for &file in batch {
                    let body = tx.state().plan_write(
                        file,
                        Content::Inline(Bytes::from(format!("again {file:?}\n"))),
                        2,
                    )?;
                    tx.push(body)?;
                }
                Ok(())
            })
            .unwrap();
    }
    store.flush().unwrap();
}

/// The persisted projection: its header row (witness seq, bytes) and every page table's
/// rows.
struct Persisted {
    seq: u64,
    header: Vec<u8>,
    pages: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// The projection as persisted in the store file in `dir`.
fn persisted(dir: &Path) -> Persisted {
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(crate::store::tables::PROJECTION).unwrap();
    let (k, v) = t.last().unwrap().unwrap();
    let pages = Page::ALL
        .iter()
        .map(|page| {
            let t = txn.open_table(pages::table(*page)).unwrap();
            t.iter()
                .unwrap()
                .map(|row| {
                    let (k, v) = row.unwrap();
                    (k.value().to_vec(), v.value().to_vec())
                })
                .collect()
        })
        .collect();
    Persisted {
        seq: k.value(),
        header: v.value().to_vec(),
        pages,
    }
}

/// Puts `p` back as the persisted projection, as if the store had stopped before
/// writing the pages of what followed (the witness log keeps those intentions).
fn put_back(dir: &Path, p: &Persisted) {
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(crate::store::tables::PROJECTION).unwrap();
        t.retain(|_, _| false).unwrap();
        t.insert(p.seq, &p.header[..]).unwrap();
        for (page, rows) in Page::ALL.iter().zip(&p.pages) {
            let mut t = txn.open_table(pages::table(*page)).unwrap();
            t.retain(|_, _| false).unwrap();
            for (k, v) in rows {
                t.insert(&k[..], &v[..]).unwrap();
            }
        }
    }
    txn.commit().unwrap();
}

#[test]
fn opening_a_20000_file_store_replays_only_the_witness_log_past_its_snapshot_and_its_file_stays_bounded_per_record(
) {
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let store =
        Store::create(tmp.path(), StoreId([9; 16]), me.clone(), clock(), "s", "me").unwrap();
    let files = build_tree(&store);
    let records = files.len() as u64;
    store.shutdown().unwrap();
    drop(store);
    let after_tree = store_bytes(tmp.path());
    let after_tree_pages = persisted(tmp.path());

    let store = Store::open(tmp.path(), me.clone(), clock()).unwrap();
    let stats = store.stats();
    assert_eq!(stats.fs.files, records);
    assert_eq!(stats.fs.dirs, DIRS as u64);
    assert!(stats.intentions > 1);
    assert_eq!(
        stats.replayed, 0,
        "a store shut down cleanly opens from its pages alone"
    );
    overwrite_all(&store, &files);
    let dump = store.read(|s| s.canonical_dump());
    let applied = store.applied();
    store.shutdown().unwrap();
    drop(store);
    let after_overwrites = store_bytes(tmp.path());

    let reopened = Store::open(tmp.path(), me.clone(), clock()).unwrap();
    assert_eq!(reopened.stats().replayed, 0);
    assert_eq!(reopened.read(|s| s.canonical_dump()), dump);
    reopened.shutdown().unwrap();
    drop(reopened);

    // Put back the projection persisted after the tree: the overwrites' intentions, and
    // only they, are past it and must be replayed, to the same projection.
    let last_seq = persisted(tmp.path()).seq;
    put_back(tmp.path(), &after_tree_pages);
    let replaying = Store::open(tmp.path(), me, clock()).unwrap();
    let stats = replaying.stats();
    assert_eq!(stats.replayed, last_seq - after_tree_pages.seq);
    assert!(stats.replayed > 0 && stats.replayed < applied / 2);
    assert_eq!(replaying.read(|s| s.canonical_dump()), dump);
    replaying.shutdown().unwrap();

    println!(
        "store.redb: {after_tree} B after {records} files ({} B/file), \
         {after_overwrites} B after {records} overwrites ({} B/record)",
        after_tree / records,
        after_overwrites / (2 * records)
    );
    assert!(after_tree <= records * MAX_STORE_BYTES_PER_RECORD);
    assert!(after_overwrites <= 2 * records * MAX_STORE_BYTES_PER_RECORD);
}

/// Ops per write in [`many_small_commits_leave_no_pinned_pages_in_the_store_file`]: about
/// what a mount commits per batch while files are created one by one.
const OPS_PER_SMALL_WRITE: usize = 4;

/// Disk blocks `path` holds, in bytes (what `du` counts: a freed page the file keeps is
/// counted, the unwritten tail redb reserves is not).
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .expect("the store file exists while the test runs")
        .blocks()
        * 512
}

#[test]
fn many_small_commits_leave_no_pinned_pages_in_the_store_file() {
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let store =
        Store::create(tmp.path(), StoreId([7; 16]), me.clone(), clock(), "s", "me").unwrap();
    store.shutdown().unwrap();
    drop(store);
    // Opened, the projection reads its records from the page tables.
    let store = Store::open(tmp.path(), me, clock()).unwrap();
    // Hundreds of commits, fewer than `PAGES_INTENTIONS` intentions and well within
    // `PAGES_EVERY`: no write of pages comes between them, so a page source held since
    // the last one would keep every page these commits free.
    for batch in 0..500 {
        store
            .write(|tx| {
                for f in 0..OPS_PER_SMALL_WRITE {
                    tx.push(create_in(
                        OpId::ROOT,
                        format!("f{batch:03}-{f}"),
                        Kind::File,
                        "",
                    ))?;
                }
                Ok(())
            })
            .unwrap();
        // Past the batch window: each write is a commit of its own, not durable.
        std::thread::sleep(std::time::Duration::from_millis(4));
    }
    store.flush().unwrap();
    let disk = store_bytes(tmp.path());
    store.shutdown().unwrap();
    drop(store);
    let db = redb::Database::open(tmp.path().join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    let stats = txn.stats().unwrap();
    let live = stats.allocated_pages() * stats.page_size() as u64;
    txn.abort().unwrap();
    println!("store.redb: {disk} B on disk, {live} B in live pages");
    assert!(
        disk <= 2 * live,
        "{disk} B on disk for {live} B of live pages"
    );
}
