//! Tests of `history` versions, `history --deleted` and `restore` through a real node
//! (real store, real content store).

use bytes::Bytes;

use super::*;
use crate::fs::op::{Kind, Setting};
use crate::fs::Node as FsNode;

/// A runtime (kept alive for the content store), a node in `dir` and its store "docs".
fn open(dir: &Path) -> (tokio::runtime::Runtime, Node, Store) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = Node::open(dir, Some("laptop"), rt.handle().clone()).unwrap();
    let store = node.create_store("docs").unwrap();
    (rt, node, store)
}

fn inline(s: &str) -> Content {
    Content::Inline(Bytes::copy_from_slice(s.as_bytes()))
}

/// Runs one planned change and waits until its intention is committed, so that each
/// call makes its own intention (its own version).
fn change(store: &Store, plan: impl FnOnce(&FsState) -> Result<crate::fs::op::OpBody, FsError>) {
    store
        .write(|tx| {
            let body = plan(tx.state())?;
            tx.push(body)?;
            Ok(())
        })
        .unwrap();
    store.flush().unwrap();
}

/// The id of the visible file at `names` below the store root.
fn file_at(store: &Store, names: &[&str]) -> Result<FileId, FsError> {
    store.read(|s| {
        let mut f = OpId::ROOT;
        for n in names {
            f = s.lookup(f, n)?.file();
        }
        Ok(f)
    })
}

/// The bytes of the visible file at `names` (inline pieces only, as these tests write).
fn bytes_at(store: &Store, names: &[&str]) -> Vec<u8> {
    let file = file_at(store, names).unwrap();
    let view = store
        .read(|s| s.content(FsNode::Entry { entry: file, file }))
        .unwrap();
    let mut out = Vec::new();
    for p in view.pieces {
        match p {
            Content::Inline(b) => out.extend_from_slice(&b),
            Content::Manifest { .. } => panic!("tests write inline content"),
        }
    }
    out
}

fn create(store: &Store, parent: FileId, name: &str, kind: Kind, mode: u32, content: Content) {
    change(store, |s| {
        s.plan_create(parent, name, kind, mode, 1000, 1000, 0, content, 0)
    });
}

fn write(store: &Store, file: FileId, text: &str) {
    change(store, |s| s.plan_write(file, inline(text), 0));
}

/// "docs/a.txt" written "one", "two", "three", in three intentions.
fn three_versions(store: &Store) -> FileId {
    create(store, OpId::ROOT, "a.txt", Kind::File, 0o644, inline("one"));
    let file = file_at(store, &["a.txt"]).unwrap();
    write(store, file, "two");
    write(store, file, "three");
    file
}

#[test]
fn an_overwritten_file_lists_each_version_oldest_first_with_the_current_one_last() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = open(tmp.path());
    three_versions(&store);
    let versions = node.versions("docs/a.txt").unwrap();
    let seen: Vec<(u64, VersionState, bool)> = versions
        .iter()
        .map(|v| (v.size, v.state, v.local))
        .collect();
    assert_eq!(
        seen,
        [
            (3, VersionState::Past, true),
            (3, VersionState::Past, true),
            (5, VersionState::Current, true)
        ]
    );
    assert_eq!(versions[1].pieces, [inline("two")]);
    assert!(versions
        .iter()
        .all(|v| v.author() == node.identity().public()));
    assert!(versions.iter().all(|v| v.author_name == "laptop"));
    assert!(versions.windows(2).all(|w| w[0].op < w[1].op));
    node.shutdown().unwrap();
}

#[test]
fn restore_by_default_writes_the_version_before_the_current_one_as_a_new_version() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = open(tmp.path());
    three_versions(&store);
    let before = node.versions("docs/a.txt").unwrap();
    let done = node.restore("docs/a.txt", &Pick::Default, None).unwrap();
    assert_eq!(done.version, before[1].id);
    assert!(!done.created);
    assert_eq!(done.path, "docs/a.txt");
    assert_eq!(bytes_at(&store, &["a.txt"]), b"two");
    let after = node.versions("docs/a.txt").unwrap();
    assert_eq!(after.len(), 4, "the restore is a version of its own");
    assert_eq!(after[3].state, VersionState::Current);
    assert_eq!(after[3].pieces, [inline("two")]);
    assert_ne!(after[3].intention, before[1].intention);
    node.shutdown().unwrap();
}

#[test]
fn restore_picks_a_version_by_hash_prefix_or_by_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = open(tmp.path());
    create(
        &store,
        OpId::ROOT,
        "a.txt",
        Kind::File,
        0o644,
        inline("one"),
    );
    let file = file_at(&store, &["a.txt"]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    write(&store, file, "two");
    let versions = node.versions("docs/a.txt").unwrap();
    let prefix = versions[0].id.to_hex()[..12].to_uppercase();
    node.restore("docs/a.txt", &Pick::Version(prefix), None)
        .unwrap();
    assert_eq!(bytes_at(&store, &["a.txt"]), b"one");
    let at = versions[1].hlc().wall_ms;
    node.restore("docs/a.txt", &Pick::At(at), None).unwrap();
    assert_eq!(bytes_at(&store, &["a.txt"]), b"two");
    node.shutdown().unwrap();
}

#[test]
fn unknown_short_early_and_missing_versions_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = open(tmp.path());
    create(
        &store,
        OpId::ROOT,
        "a.txt",
        Kind::File,
        0o644,
        inline("one"),
    );
    let first = node.versions("docs/a.txt").unwrap()[0].clone();
    let applied = store.applied();
    let err = |pick: Pick| node.restore("docs/a.txt", &pick, None).unwrap_err();
    // One version only: any other prefix of its length is unknown.
    let other = match first.id.to_hex().as_bytes()[0] {
        b'0' => "10000000",
        _ => "00000000",
    };
    assert!(matches!(
        err(Pick::Version(other.into())),
        NodeError::Restore(RestoreError::UnknownVersion { .. })
    ));
    assert!(matches!(
        err(Pick::Version("abc".into())),
        NodeError::Restore(RestoreError::BadVersion(_))
    ));
    assert!(matches!(
        err(Pick::Version("not-hex!".into())),
        NodeError::Restore(RestoreError::BadVersion(_))
    ));
    assert!(matches!(
        err(Pick::At(first.hlc().wall_ms - 1)),
        NodeError::Restore(RestoreError::NoVersionAt { .. })
    ));
    assert!(matches!(
        err(Pick::Default),
        NodeError::Restore(RestoreError::NoEarlierVersion(_))
    ));
    let e = node
        .restore("docs/nope.txt", &Pick::Default, None)
        .unwrap_err();
    assert!(
        matches!(e, NodeError::Path { ref path, .. } if path == "docs/nope.txt"),
        "{e}"
    );
    let e = node.restore("docs", &Pick::Default, None).unwrap_err();
    assert!(
        matches!(e, NodeError::Restore(RestoreError::NotAFile(_))),
        "{e}"
    );
    assert_eq!(store.applied(), applied, "nothing was written");
    node.shutdown().unwrap();
}

#[test]
fn a_version_whose_blobs_are_not_local_is_marked_and_not_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = open(tmp.path());
    let gone = Content::Manifest {
        hash: crate::ids::Hash::of(b"a manifest this node never had"),
        size: 100_000,
    };
    create(&store, OpId::ROOT, "big.bin", Kind::File, 0o644, gone);
    let file = file_at(&store, &["big.bin"]).unwrap();
    write(&store, file, "small");
    let versions = node.versions("docs/big.bin").unwrap();
    assert_eq!(
        versions.iter().map(|v| v.local).collect::<Vec<_>>(),
        [false, true]
    );
    let err = node
        .restore("docs/big.bin", &Pick::Default, None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            NodeError::Restore(RestoreError::NotLocal { missing: 1, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not on this node yet"), "{err}");
    assert!(versions.iter().all(|v| v.retained), "30 days by default");
    // Past the retention its absence is for good.
    store.set_setting(Setting::Retention, 0).unwrap();
    store.flush().unwrap();
    let versions = node.versions("docs/big.bin").unwrap();
    assert_eq!(
        versions.iter().map(|v| v.retained).collect::<Vec<_>>(),
        [false, true]
    );
    let err = node
        .restore("docs/big.bin", &Pick::Default, None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            NodeError::Restore(RestoreError::Collected { days: 0, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("was collected"), "{err}");
    assert_eq!(bytes_at(&store, &["big.bin"]), b"small");
    node.shutdown().unwrap();
}

#[test]
fn a_version_made_by_appends_is_restored_as_its_whole_content() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = open(tmp.path());
    create(&store, OpId::ROOT, "log", Kind::File, 0o644, inline("ab"));
    let file = file_at(&store, &["log"]).unwrap();
    change(&store, |s| s.plan_append(file, inline("c"), 0));
    change(&store, |s| s.plan_append(file, inline("d"), 0));
    let versions = node.versions("docs/log").unwrap();
    assert_eq!(
        versions.iter().map(|v| v.size).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert_eq!(versions[1].pieces, [inline("ab"), inline("c")]);
    assert_eq!(versions[2].state, VersionState::Current);
    node.restore("docs/log", &Pick::Default, None).unwrap();
    assert_eq!(bytes_at(&store, &["log"]), b"abc");
    node.shutdown().unwrap();
}

/// "docs/d/a.txt" (mode 0600, "one" then "two"), then deleted, then "docs/d" too.
fn deleted_in_deleted_dir(store: &Store) {
    create(store, OpId::ROOT, "d", Kind::Dir, 0o755, Content::empty());
    let d = file_at(store, &["d"]).unwrap();
    create(store, d, "a.txt", Kind::File, 0o600, inline("one"));
    let file = file_at(store, &["d", "a.txt"]).unwrap();
    write(store, file, "two");
    change(store, |s| s.plan_unlink(d, "a.txt"));
    change(store, |s| s.plan_rmdir(OpId::ROOT, "d"));
}

#[test]
fn deleted_files_are_listed_under_a_directory_by_their_old_paths_even_a_deleted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = open(tmp.path());
    deleted_in_deleted_dir(&store);
    create(
        &store,
        OpId::ROOT,
        "kept.txt",
        Kind::File,
        0o644,
        inline("k"),
    );
    create(
        &store,
        OpId::ROOT,
        "gone.txt",
        Kind::File,
        0o644,
        inline("g"),
    );
    change(&store, |s| s.plan_unlink(OpId::ROOT, "gone.txt"));
    let all = node.deleted("docs").unwrap();
    let paths: Vec<&str> = all.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["docs/d/a.txt", "docs/gone.txt"]);
    let a = &all[0];
    assert_eq!(a.removed_by.author, node.identity().public());
    assert_eq!(a.removed_by_name, "laptop");
    assert_eq!(a.kind, Kind::File);
    assert_eq!(a.versions.len(), 2);
    assert_eq!(a.versions[1].pieces, [inline("two")]);
    assert!(a.versions.iter().all(|v| v.state == VersionState::Past));
    let inside = node.deleted("docs/d").unwrap();
    assert_eq!(inside.len(), 1);
    assert_eq!(inside[0].path, "docs/d/a.txt");
    let err = node.deleted("docs/kept.txt").unwrap_err();
    assert!(
        matches!(err, NodeError::Restore(RestoreError::NotADirectory(_))),
        "{err}"
    );
    // The history of a deleted file is found under its old name.
    assert!(node.history("docs/d/a.txt").unwrap().len() >= 3);
    node.shutdown().unwrap();
}

#[test]
fn a_deleted_file_comes_back_at_its_old_place_with_its_mode_and_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = open(tmp.path());
    deleted_in_deleted_dir(&store);
    assert!(file_at(&store, &["d"]).is_err());
    let done = node.restore("docs/d/a.txt", &Pick::Default, None).unwrap();
    assert!(done.created);
    assert!(
        node.deleted("docs").unwrap().is_empty(),
        "a deleted file whose name is in use again is not listed"
    );
    assert_eq!(done.path, "docs/d/a.txt");
    assert_eq!(bytes_at(&store, &["d", "a.txt"]), b"two");
    let file = file_at(&store, &["d", "a.txt"]).unwrap();
    let attr = store
        .read(|s| s.attr(FsNode::Entry { entry: file, file }))
        .unwrap();
    assert_eq!((attr.perm, attr.uid, attr.gid), (0o600, 1000, 1000));
    node.shutdown().unwrap();
}

#[test]
fn restore_to_a_new_path_copies_the_version_and_an_existing_target_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = open(tmp.path());
    deleted_in_deleted_dir(&store);
    create(
        &store,
        OpId::ROOT,
        "taken.txt",
        Kind::File,
        0o644,
        inline("mine"),
    );
    let applied = store.applied();
    let err = node
        .restore("docs/d/a.txt", &Pick::Default, Some("docs/taken.txt"))
        .unwrap_err();
    assert!(
        matches!(err, NodeError::Restore(RestoreError::TargetExists(_))),
        "{err}"
    );
    let err = node
        .restore("docs/d/a.txt", &Pick::Default, Some("docs/missing/b.txt"))
        .unwrap_err();
    assert!(matches!(err, NodeError::Path { .. }), "{err}");
    let other = node.create_store("other").unwrap();
    let err = node
        .restore("docs/d/a.txt", &Pick::Default, Some("other/a.txt"))
        .unwrap_err();
    assert!(
        matches!(err, NodeError::Restore(RestoreError::OtherStore(_))),
        "{err}"
    );
    assert_eq!(store.applied(), applied, "nothing was written");
    assert_eq!(other.read(|s| s.readdir(OpId::ROOT).unwrap().len()), 0);
    let done = node
        .restore("docs/d/a.txt", &Pick::Default, Some("/docs/back.txt"))
        .unwrap();
    assert_eq!((done.path.as_str(), done.created), ("docs/back.txt", true));
    assert_eq!(bytes_at(&store, &["back.txt"]), b"two");
    assert!(
        file_at(&store, &["d"]).is_err(),
        "the old place stays deleted"
    );
    node.shutdown().unwrap();
}

/// A second node in `dir` made a member of `store` (founded by `admin`) with `role`,
/// holding every intention of the store so far; with its runtime.
fn member(
    dir: &Path,
    admin: &Node,
    store: &Store,
    role: crate::fs::op::Role,
) -> (tokio::runtime::Runtime, Node, Store) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = Node::open(dir, Some("other"), rt.handle().clone()).unwrap();
    let key = node.identity().public();
    change(store, |_| {
        Ok(crate::fs::op::OpBody::SetMember {
            key,
            role,
            display_name: "other".into(),
            invite: None,
        })
    });
    let inviter = admin.identity().public();
    let state = JoinState { inviter, next: 1 };
    let replica = node.begin_join(store.id(), inviter, &state).unwrap();
    catch_up(&replica, store);
    node.finish_join(store.id()).unwrap();
    (rt, node, replica)
}

/// Applies every intention of `from` that `to` lacks, as a sync would.
fn catch_up(to: &Store, from: &Store) {
    let log = from.witness(1, usize::MAX).unwrap();
    for result in to.apply_remote_many(log.intentions) {
        result.unwrap();
    }
    to.flush().unwrap();
}

#[test]
fn a_reader_cannot_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, admin, store) = open(&tmp.path().join("admin"));
    three_versions(&store);
    let (_rt2, reader, replica) = member(
        &tmp.path().join("reader"),
        &admin,
        &store,
        crate::fs::op::Role::Reader,
    );
    assert_eq!(reader.versions("docs/a.txt").unwrap().len(), 3);
    let err = reader
        .restore("docs/a.txt", &Pick::Default, None)
        .unwrap_err();
    assert!(
        matches!(err, NodeError::Restore(RestoreError::ReadOnly(_))),
        "{err}"
    );
    assert!(err.to_string().contains("reader"), "{err}");
    assert_eq!(bytes_at(&replica, &["a.txt"]), b"three");
    reader.shutdown().unwrap();
    admin.shutdown().unwrap();
}

#[test]
fn a_restore_is_an_ordinary_signed_edit_that_another_member_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, admin, store) = open(&tmp.path().join("admin"));
    three_versions(&store);
    deleted_in_deleted_dir(&store);
    let (_rt2, other, replica) = member(
        &tmp.path().join("other"),
        &admin,
        &store,
        crate::fs::op::Role::Writer,
    );
    admin.restore("docs/a.txt", &Pick::Default, None).unwrap();
    admin.restore("docs/d/a.txt", &Pick::Default, None).unwrap();
    catch_up(&replica, &store);
    assert_eq!(bytes_at(&replica, &["a.txt"]), b"two");
    assert_eq!(bytes_at(&replica, &["d", "a.txt"]), b"two");
    assert_eq!(
        replica.read(|s| s.canonical_dump()),
        store.read(|s| s.canonical_dump())
    );
    // The other member sees the restore as a version by the admin.
    let versions = other.versions("docs/a.txt").unwrap();
    let last = versions.last().unwrap();
    assert_eq!(
        (last.author(), last.state),
        (admin.identity().public(), VersionState::Current)
    );
    other.shutdown().unwrap();
    admin.shutdown().unwrap();
}

#[test]
fn a_deleted_file_whose_deleted_directory_name_was_taken_is_refused_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = open(tmp.path());
    deleted_in_deleted_dir(&store);
    create(
        &store,
        OpId::ROOT,
        "d",
        Kind::File,
        0o644,
        inline("a file now"),
    );
    let applied = store.applied();
    // "docs/d" names the new file; the deleted one is still listed by its old path.
    let listed = node.deleted("docs").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, "docs/d/a.txt");
    assert_eq!(node.versions("docs/d/a.txt").unwrap().len(), 2);
    let err = node
        .restore("docs/d/a.txt", &Pick::Default, None)
        .unwrap_err();
    assert!(
        matches!(err, NodeError::Restore(RestoreError::TargetExists(_))),
        "{err}"
    );
    assert_eq!(store.applied(), applied, "nothing was written");
    node.restore("docs/d/a.txt", &Pick::Default, Some("docs/a.txt"))
        .unwrap();
    assert_eq!(bytes_at(&store, &["a.txt"]), b"two");
    node.shutdown().unwrap();
}

#[test]
fn each_content_op_of_one_intention_is_a_version_and_replaced_empty_ones_are_not_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store) = open(tmp.path());
    create(
        &store,
        OpId::ROOT,
        "a.txt",
        Kind::File,
        0o644,
        inline("same"),
    );
    let file = file_at(&store, &["a.txt"]).unwrap();
    // What an overwrite through O_TRUNC does: an empty write, then the content, all
    // packed into one intention.
    store
        .write(|tx| {
            for text in ["", "other", "", "same"] {
                let body = tx.state().plan_write(file, inline(text), 0)?;
                tx.push(body)?;
            }
            Ok(())
        })
        .unwrap();
    store.flush().unwrap();
    let versions = node.versions("docs/a.txt").unwrap();
    let contents: Vec<&[Content]> = versions.iter().map(|v| v.pieces.as_slice()).collect();
    assert_eq!(
        contents,
        [&[inline("same")][..], &[inline("other")], &[inline("same")]]
    );
    assert_eq!(versions[1].intention, versions[2].intention);
    assert_eq!(versions[0].id, versions[2].id, "one content, one id");
    assert_eq!(versions[0].id, crate::ids::Hash::of(b"same"));
    // Restoring by that id is not ambiguous: both versions hold the same bytes.
    let id = versions[0].id.to_hex();
    node.restore("docs/a.txt", &Pick::Version(id[..8].into()), None)
        .unwrap();
    assert_eq!(bytes_at(&store, &["a.txt"]), b"same");
    node.restore("docs/a.txt", &Pick::Version(versions[1].id.to_hex()), None)
        .unwrap();
    assert_eq!(bytes_at(&store, &["a.txt"]), b"other");
    node.shutdown().unwrap();
}
