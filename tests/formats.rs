//! On-disk formats across releases: a data dir written by the previous release (the
//! fixture `tests/fixtures/f143caf`, see its README) opens with this build and its
//! store is migrated to the current schema with its tree intact; a store written by a
//! newer build is refused with a typed error and left byte for byte as it was.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use lattice_mount::{
    Clock, FsNode, FsState, Hlc, Identity, Node, OpId, Store, StoreError, StoreId, DB_FILE,
    SCHEMA_VERSION,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use common::{fuse_available, Daemon};

/// The data dir of node "alice" as the release at f143caf left it.
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/f143caf");
/// The data dir of node "alice" as the build at 7ac7b2d left it (page header format 3;
/// the fixture `tests/fixtures/7ac7b2d`, see its README).
const FIXTURE_PAGES_3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/7ac7b2d");
/// A data dir whose page header is format 4, before snapshot labels (README inside).
const FIXTURE_PAGES_4: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/1c192cb");
/// The store the fixture's commands made.
const STORE: &str = "team";
/// The one table whose name never changes: it holds the schema version.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The `meta` row with the schema version (u32 big-endian).
const SCHEMA_ROW: &str = "schema_version";

/// Copies `from` into `to` (created) with the modes the node wants: 0700 dirs, 0600
/// files (git keeps neither, and the node refuses a key file others can read).
fn copy_private(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_private(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}

/// The one store directory under `data/stores`.
fn store_dir(data: &Path) -> std::path::PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir(data.join("stores"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "the fixture holds one store");
    dirs.pop().unwrap()
}

/// The recorded schema version (1 when there is no row) and the sorted table names.
fn schema_of(db_file: &Path) -> (u32, Vec<String>) {
    let db = Database::open(db_file).unwrap();
    let txn = db.begin_read().unwrap();
    let version = txn
        .open_table(META)
        .unwrap()
        .get(SCHEMA_ROW)
        .unwrap()
        .map_or(1, |v| u32::from_be_bytes(v.value().try_into().unwrap()));
    let mut names: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    names.sort();
    (version, names)
}

/// Opens the node on `data`, runs `f` on its store, and shuts the node down.
fn with_store<R>(data: &Path, f: impl FnOnce(&Node, &Store) -> R) -> R {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = Node::open(data, None, rt.handle().clone()).unwrap();
    let store = node
        .store_by_name(STORE)
        .expect("the fixture's store opens");
    let out = f(&node, &store);
    drop(store);
    node.shutdown().unwrap();
    out
}

/// The node at `path` (components separated by `/`) under the store root.
fn resolve(s: &FsState, path: &str) -> FsNode {
    let mut node = None;
    let mut dir = OpId::ROOT;
    for name in path.split('/') {
        let found = s
            .lookup(dir, name)
            .unwrap_or_else(|e| panic!("{path}: {name}: {e}"));
        dir = found.file();
        node = Some(found);
    }
    node.expect("a path has a component")
}

/// The whole content of the file at `path`, read through the content store.
fn content(node: &Node, store: &Store, path: &str) -> Vec<u8> {
    let view = store.read(|s| s.content(resolve(s, path)).unwrap());
    let mut buf = vec![0; view.size as usize];
    let n = node
        .cas()
        .read(store.id(), &view.pieces, 0, &mut buf)
        .unwrap();
    assert_eq!(n, buf.len(), "{path} reads whole");
    buf
}

/// The sorted visible names of directory `path` ("" for the store root).
fn names(s: &FsState, path: &str) -> Vec<String> {
    let dir = if path.is_empty() {
        OpId::ROOT
    } else {
        resolve(s, path).file()
    };
    s.readdir(dir)
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// The format version of the page header stored in `db_file`.
fn header_format(db_file: &Path) -> u32 {
    // The table of the stored projection (a page header under its witness seq), named
    // for the file's schema.
    let table = format!("projection.v{}", schema_of(db_file).0);
    let db = Database::open(db_file).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn
        .open_table(TableDefinition::<u64, &[u8]>::new(&table))
        .unwrap();
    let (_, header) = t.last().unwrap().expect("a stored projection");
    let header = header.value();
    assert!(FsState::is_pages_header(header));
    u32::from_le_bytes(header[8..12].try_into().unwrap())
}

/// Checks the tree the fixture's commands made (see tests/fixtures/f143caf/README.md),
/// whose readme says hello from `build`.
fn check_tree_of(build: &str, node: &Node, store: &Store) {
    store.read(|s| {
        assert_eq!(
            names(s, ""),
            [
                "docs",
                "from-bob.txt",
                "notes.txt",
                "numbers.txt",
                "readme-link"
            ]
        );
        assert_eq!(names(s, "docs"), ["final.txt", "readme.txt", "sub"]);
        assert!(names(s, "docs/sub").is_empty());
        let link = resolve(s, "readme-link").file();
        assert_eq!(&s.readlink(link).unwrap()[..], b"docs/readme.txt");
        let readme = resolve(s, "docs/readme.txt").file();
        assert_eq!(&s.xattr_get(readme, b"user.color").unwrap()[..], b"blue");
    });
    assert_eq!(
        content(node, store, "docs/readme.txt"),
        format!("hello from {build}\n").as_bytes()
    );
    assert_eq!(content(node, store, "notes.txt"), b"second\n");
    assert_eq!(content(node, store, "docs/final.txt"), b"draft\n");
    assert_eq!(content(node, store, "from-bob.txt"), b"hi from bob\n");
    let numbers: String = (1..=6000).map(|n| format!("{n}\n")).collect();
    assert_eq!(content(node, store, "numbers.txt"), numbers.as_bytes());
}

/// Checks the tree of the fixture of the release at f143caf.
fn check_tree(node: &Node, store: &Store) {
    check_tree_of("f143caf", node, store);
}

#[test]
fn a_data_dir_of_the_previous_release_opens_migrated_with_its_tree_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_private(Path::new(FIXTURE), &data);
    let db_file = store_dir(&data).join(DB_FILE);
    let (before, tables) = schema_of(&db_file);
    assert_eq!(before, 1, "the fixture predates the schema version");
    assert!(tables.contains(&"intentions".to_owned()), "{tables:?}");

    with_store(&data, check_tree);

    let (after, tables) = schema_of(&db_file);
    assert_eq!(after, SCHEMA_VERSION);
    assert!(
        tables
            .iter()
            .all(|t| t == "meta" || t.ends_with(&format!(".v{SCHEMA_VERSION}"))),
        "{tables:?}"
    );
}

/// The value of extended attribute `name` of `path`.
fn getxattr(path: &Path, name: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        len >= 0,
        "getxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    buf.truncate(len as usize);
    buf
}

#[test]
fn the_daemon_mounts_a_data_dir_of_the_previous_release_and_keeps_writing_to_it() {
    if !fuse_available() {
        return;
    }
    let mut d = Daemon::start_named("alice");
    d.down();
    std::fs::remove_dir_all(&d.data).unwrap();
    copy_private(Path::new(FIXTURE), &d.data);
    d.up();
    let mnt = d.mnt.clone();
    let read = move |rel: &str| std::fs::read(mnt.join(rel)).unwrap();
    assert_eq!(read("team/docs/readme.txt"), b"hello from f143caf\n");
    assert_eq!(read("team/notes.txt"), b"second\n");
    assert_eq!(read("team/docs/final.txt"), b"draft\n");
    assert_eq!(read("team/from-bob.txt"), b"hi from bob\n");
    let numbers: String = (1..=6000).map(|n| format!("{n}\n")).collect();
    assert_eq!(read("team/numbers.txt"), numbers.as_bytes());
    assert!(!d.path("team/gone.txt").exists());
    assert_eq!(
        std::fs::read_link(d.path("team/readme-link")).unwrap(),
        Path::new("docs/readme.txt")
    );
    assert_eq!(
        getxattr(&d.path("team/docs/readme.txt"), "user.color"),
        b"blue"
    );
    std::fs::write(
        d.path("team/docs/sub/new.txt"),
        b"written after the upgrade",
    )
    .unwrap();
    d.down();
    d.up();
    assert_eq!(
        std::fs::read(d.path("team/docs/sub/new.txt")).unwrap(),
        b"written after the upgrade"
    );
    assert_eq!(read("team/notes.txt"), b"second\n");
    d.down();
}

#[test]
fn opening_a_migrated_data_dir_again_changes_neither_schema_nor_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_private(Path::new(FIXTURE), &data);
    let db_file = store_dir(&data).join(DB_FILE);
    let first = with_store(&data, |_, store| store.read(|s| s.canonical_dump()));
    let schema = schema_of(&db_file);
    let second = with_store(&data, |node, store| {
        check_tree(node, store);
        store.read(|s| s.canonical_dump())
    });
    assert_eq!(second, first);
    assert_eq!(schema_of(&db_file), schema);
}

#[test]
fn a_store_written_by_a_newer_build_is_refused_skipped_by_the_node_and_left_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let id = StoreId([7; 16]);
    let dir = data.join("stores").join(id.to_hex());
    let me = Identity::generate();
    let clock = || std::sync::Arc::new(parking_lot::Mutex::new(Clock::new(Hlc::ZERO)));
    Store::create(&dir, id, me.clone(), clock(), "s", "me")
        .unwrap()
        .shutdown()
        .unwrap();
    let newer = SCHEMA_VERSION + 1;
    {
        let db = Database::open(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(SCHEMA_ROW, &newer.to_be_bytes()[..])
            .unwrap();
        txn.commit().unwrap();
    }
    let bytes = std::fs::read(dir.join(DB_FILE)).unwrap();

    let err = Store::open(&dir, me, clock()).err().expect("refused");
    assert!(
        matches!(err, StoreError::NewerSchema { found, supported }
            if found == newer && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "written by a newer lattice-mount (schema {newer}); this one reads up to {SCHEMA_VERSION}"
        )
    );
    assert!(std::fs::read(dir.join(DB_FILE)).unwrap() == bytes);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = Node::open(&data, None, rt.handle().clone()).unwrap();
    assert!(node.stores().is_empty(), "the store is not served");
    node.shutdown().unwrap();
    assert!(std::fs::read(dir.join(DB_FILE)).unwrap() == bytes);
}

#[test]
fn a_data_dir_with_pages_of_the_previous_format_opens_rebuilt_with_its_tree_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_private(Path::new(FIXTURE_PAGES_3), &data);
    let db_file = store_dir(&data).join(DB_FILE);
    assert_eq!(schema_of(&db_file).0, 3);
    assert_eq!(header_format(&db_file), 3);

    let opened = |data: &Path| {
        with_store(data, |node, store| {
            check_tree_of("7ac7b2d", node, store);
            (store.read(|s| s.canonical_dump()), store.stats().replayed)
        })
    };
    let (rebuilt, replayed) = opened(&data);
    assert!(
        replayed > 0,
        "format 3 pages are rebuilt from the intentions"
    );
    assert_eq!(schema_of(&db_file).0, SCHEMA_VERSION);
    assert_eq!(header_format(&db_file), 7);
    let (again, replayed) = opened(&data);
    assert_eq!(replayed, 0, "the rebuilt pages are read as they are");
    assert_eq!(again, rebuilt);
}

#[test]
fn pages_of_the_format_before_snapshot_labels_are_read_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_private(Path::new(FIXTURE_PAGES_4), &data);
    let db_file = store_dir(&data).join(DB_FILE);
    assert_eq!(header_format(&db_file), 4);

    let (replayed, state) = with_store(&data, |node, store| {
        check_tree_of("7ac7b2d", node, store);
        assert!(store.read(|s| s.snapshots().is_empty()));
        store.snapshot("before").unwrap();
        (store.stats().replayed, store.read(|s| s.encode_snapshot()))
    });
    assert_eq!(replayed, 0, "format 4 pages are read, not rebuilt");
    assert_eq!(header_format(&db_file), 7);
    with_store(&data, |node, store| {
        check_tree_of("7ac7b2d", node, store);
        assert_eq!(
            store.read(|s| s.encode_snapshot()),
            state,
            "the whole state, move log included, reads back from format 7 pages"
        );
        let at = store
            .read(|s| s.snapshot("before"))
            .expect("the label is kept");
        let tree = store.snapshot_state(at).unwrap();
        assert_eq!(
            tree.canonical_dump(),
            store
                .read(|s| s.canonical_dump())
                .replace(&format!("snapshot \"before\" at {at:?}\n"), "")
        );
    });
}
