//! Heap held by a large store, counted by a global allocator: 100 directories of 200
//! files, 2,000 of them written once (the issue 9 tree scaled down), whose projection
//! lives in page tables; and the cost of the one scan a store's open still makes (the
//! reconciliation index).
//! `cargo test --release --test projection_memory -- --nocapture` prints the numbers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use lattice_mount::{
    BareIndex, CacheBudget, Content, Create, Hash, Kind, Node, OpBody, OpId, Store,
};

/// Counts the bytes live on the heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Directories in the tree.
const DIRS: u64 = 100;
/// Files per directory.
const FILES_PER_DIR: u64 = 200;
/// Files written once after the tree is built.
const WRITTEN: u64 = 2_000;
/// Ops pushed in one local transaction.
const OPS_PER_WRITE: u64 = 250;
/// The daemon-wide cache budget of the test node, in MiB.
const BUDGET_MIB: u64 = 8;
/// Heap the node may hold beyond its cache budget whatever the tree's size: the
/// content store, the runtime, the unwritten part of the projection (at most
/// `PAGES_UNWRITTEN` records) and the index summary. The projection held in memory took
/// over 2,000 bytes per file (40 MB here).
const MAX_FIXED_BYTES: i64 = 12 << 20;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed) as i64
}

fn create(parent: OpId, name: String, kind: Kind) -> OpBody {
    OpBody::Create(Create {
        parent,
        name,
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        rdev: 0,
        mtime_ns: 0,
        content: Content::empty(),
    })
}

/// Pushes `bodies` in transactions of [`OPS_PER_WRITE`] ops; returns their ids.
fn push_all(store: &Store, bodies: Vec<OpBody>) -> Vec<OpId> {
    let mut ids = Vec::with_capacity(bodies.len());
    for chunk in bodies.chunks(OPS_PER_WRITE as usize) {
        store
            .write(|tx| {
                for body in chunk {
                    ids.push(tx.push(body.clone())?);
                }
                Ok(())
            })
            .expect("local ops apply");
    }
    ids
}

#[test]
fn a_store_of_twenty_thousand_files_holds_its_cache_budget_and_a_fixed_heap() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let node = Node::open_within(
        dir.path(),
        Some("me"),
        rt.handle().clone(),
        CacheBudget::from_mib(BUDGET_MIB),
    )
    .expect("a node");
    let store = node.create_store("big").expect("a store");
    let base = live();
    let dirs = push_all(
        &store,
        (0..DIRS)
            .map(|d| create(OpId::ROOT, format!("dir{d:03}"), Kind::Dir))
            .collect(),
    );
    let mut held = Vec::new();
    for half in [0, 1] {
        let bodies = dirs
            .iter()
            .flat_map(|dir| {
                (0..FILES_PER_DIR / 2).map(move |f| {
                    let name = format!("file{:04}.txt", half * FILES_PER_DIR / 2 + f);
                    create(*dir, name, Kind::File)
                })
            })
            .collect();
        let files = push_all(&store, bodies);
        let writes = files
            .iter()
            .take((WRITTEN / 2) as usize)
            .map(|file| OpBody::Write {
                file: *file,
                supersedes: vec![*file],
                content: Content::Inline("a line of content\n".into()),
                mtime_ns: 1,
            })
            .collect();
        push_all(&store, writes);
        store.flush().expect("flushed");
        let bytes = live() - base;
        println!(
            "{} files: heap {bytes} bytes above the empty store, {} projection records unwritten",
            (half + 1) * DIRS * FILES_PER_DIR / 2,
            store.read(|s| s.unwritten())
        );
        held.push(bytes);
    }
    let stats = store.stats();
    assert_eq!(stats.fs.files, DIRS * FILES_PER_DIR);
    let budget = CacheBudget::from_mib(BUDGET_MIB).bytes() as i64;
    for bytes in held {
        assert!(
            bytes <= budget + MAX_FIXED_BYTES,
            "{bytes} bytes held, budget {budget}"
        );
    }
    node.shutdown().expect("node shut down");
}

/// Intentions in the index whose open is timed.
const INTENTIONS: u64 = 100_000;

#[test]
fn opening_the_reconciliation_index_of_a_hundred_thousand_intentions_reads_it_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("index.redb");
    let index = BareIndex::create(&path).expect("a new index file");
    let items = (0..INTENTIONS).map(|i| (1_700_000_000_000 + i, Hash::of(&i.to_le_bytes())));
    index.insert(items).expect("inserted");
    drop(index);
    let started = Instant::now();
    let index = BareIndex::open(&path).expect("the index reopens");
    println!(
        "index of {INTENTIONS} intentions opened in {:?}",
        started.elapsed()
    );
    let view = index.view().expect("a view");
    assert!(format!("{view:?}").contains(&format!("len: {INTENTIONS}")));
}
