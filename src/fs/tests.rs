//! Unit tests of the merge rules, the queries and every planner errno.

use bytes::Bytes;

use crate::cas::Content;
use crate::fs::op::{Kind, Op, OpBody, Role, SetMeta};
use crate::fs::{FsError, FsState, Node, PageWrite, RenameFlags};
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{FileId, OpId};

/// 2026-11-21 10:15:02 UTC in milliseconds.
const T0: u64 = 1_795_256_102_000;

fn key(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

fn inline(s: &str) -> Content {
    Content::Inline(Bytes::copy_from_slice(s.as_bytes()))
}

fn op(wall: u64, body: OpBody) -> Op {
    Op {
        hlc: Hlc {
            wall_ms: wall,
            counter: 0,
        },
        body,
    }
}

/// Applies `body` by `author` at `wall` ms and returns its op and id.
fn run(s: &mut FsState, author: u8, wall: u64, body: OpBody) -> (OpId, Op) {
    let o = op(wall, body);
    s.apply(key(author), &o);
    (o.id(key(author)), o)
}

fn create(s: &FsState, parent: FileId, name: &str, kind: Kind, content: &str) -> OpBody {
    s.plan_create(parent, name, kind, 0o644, 1, 2, 0, inline(content), 7)
        .unwrap()
}

fn mkfile(s: &mut FsState, author: u8, wall: u64, parent: FileId, name: &str, c: &str) -> FileId {
    let body = create(s, parent, name, Kind::File, c);
    run(s, author, wall, body).0
}

fn mkdir(s: &mut FsState, author: u8, wall: u64, parent: FileId, name: &str) -> FileId {
    let body = create(s, parent, name, Kind::Dir, "");
    run(s, author, wall, body).0
}

/// A projection where key 2 is a writer named `name`.
fn with_writer(name: &str) -> FsState {
    let mut s = FsState::new();
    run(
        &mut s,
        2,
        1,
        OpBody::SetMember {
            key: key(2),
            role: Role::Writer,
            display_name: name.into(),
            invite: None,
        },
    );
    s
}

fn names(s: &FsState, dir: FileId) -> Vec<String> {
    s.readdir(dir)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

fn bytes_of(s: &FsState, node: Node) -> Vec<u8> {
    let mut out = Vec::new();
    for p in s.content(node).unwrap().pieces {
        match p {
            Content::Inline(b) => out.extend_from_slice(&b),
            Content::Manifest { .. } => panic!("manifest in test"),
        }
    }
    out
}

fn file_node(s: &FsState, dir: FileId, name: &str) -> Node {
    s.lookup(dir, name).unwrap()
}

/// Applies `ops` (author, op) to a fresh state in the given order.
fn replay<'a>(ops: impl IntoIterator<Item = &'a (PublicKey, Op)>) -> FsState {
    let mut s = FsState::new();
    for (a, o) in ops {
        s.apply(*a, o);
    }
    s
}

fn rename(
    s: &FsState,
    from: (FileId, &str),
    to: (FileId, &str),
    flags: RenameFlags,
) -> Result<Vec<OpBody>, FsError> {
    s.plan_rename(from.0, from.1, to.0, to.1, flags)
}

#[test]
fn root_exists_as_a_0755_directory_owned_by_root() {
    let s = FsState::new();
    let a = s
        .attr(Node::Entry {
            entry: OpId::ROOT,
            file: OpId::ROOT,
        })
        .unwrap();
    assert_eq!(
        (a.kind, a.perm, a.uid, a.gid, a.nlink),
        (Kind::Dir, 0o755, 0, 0, 2)
    );
    assert!(s.exists(OpId::ROOT));
    assert_eq!(s.parent(OpId::ROOT), None);
}

#[test]
fn created_file_is_found_by_lookup_and_listed_with_its_content() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "docs");
    let f = mkfile(&mut s, 1, 11, d, "a.txt", "hello");
    let node = file_node(&s, d, "a.txt");
    assert_eq!(node, Node::Entry { entry: f, file: f });
    assert_eq!(bytes_of(&s, node), b"hello");
    assert_eq!(s.attr(node).unwrap().size, 5);
    assert_eq!(names(&s, OpId::ROOT), vec!["docs"]);
    assert_eq!(s.parent(d), Some(OpId::ROOT));
    assert_eq!(s.lookup(d, "b.txt"), Err(FsError::NotFound));
    assert_eq!(s.lookup(f, "x"), Err(FsError::NotDir));
}

#[test]
fn concurrent_moves_that_would_form_a_cycle_keep_the_tree_acyclic_in_every_order() {
    let mut base = FsState::new();
    let body = create(&base, OpId::ROOT, "a", Kind::Dir, "");
    let (a, ca) = run(&mut base, 1, 10, body);
    let body = create(&base, OpId::ROOT, "b", Kind::Dir, "");
    let (b, cb) = run(&mut base, 1, 11, body);
    let m1 = base
        .plan_rename(OpId::ROOT, "a", b, "a", RenameFlags::default())
        .unwrap();
    let m2 = base
        .plan_rename(OpId::ROOT, "b", a, "b", RenameFlags::default())
        .unwrap();
    let ops = [
        (key(1), ca),
        (key(1), cb),
        (key(1), op(20, m1[0].clone())),
        (key(2), op(21, m2[0].clone())),
    ];
    let forward = replay(&ops);
    let backward = replay([&ops[0], &ops[1], &ops[3], &ops[2]]);
    assert_eq!(forward.canonical_dump(), backward.canonical_dump());
    // The older move (a into b) wins; the newer one would form a cycle and is skipped.
    assert_eq!(names(&forward, OpId::ROOT), vec!["b"]);
    assert_eq!(forward.parent(a), Some(b));
    assert_eq!(forward.parent(b), Some(OpId::ROOT));
}

#[test]
fn an_old_move_arriving_late_is_replayed_before_newer_moves() {
    let mut s = FsState::new();
    let body = create(&s, OpId::ROOT, "f", Kind::File, "");
    let (f, cf) = run(&mut s, 1, 10, body);
    let body = create(&s, OpId::ROOT, "e", Kind::Dir, "");
    let (e, ce) = run(&mut s, 1, 11, body);
    let late = (
        key(2),
        op(
            20,
            OpBody::Move {
                entry: f,
                parent: e,
                name: "old".into(),
            },
        ),
    );
    let newer = (
        key(1),
        op(
            30,
            OpBody::Move {
                entry: f,
                parent: OpId::ROOT,
                name: "new".into(),
            },
        ),
    );
    let in_order = replay([&(key(1), cf.clone()), &(key(1), ce.clone()), &late, &newer]);
    let reordered = replay([&(key(1), cf), &(key(1), ce), &newer, &late]);
    assert_eq!(in_order.canonical_dump(), reordered.canonical_dump());
    assert!(reordered.lookup(OpId::ROOT, "new").is_ok());
    assert!(reordered.readdir(e).unwrap().is_empty());
}

#[test]
fn removed_entry_keeps_its_place_and_a_later_move_brings_it_back() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    let rm = s.plan_rmdir(OpId::ROOT, "d").unwrap();
    run(&mut s, 1, 11, rm);
    assert!(!s.exists(d));
    assert_eq!(s.lookup(OpId::ROOT, "d"), Err(FsError::NotFound));
    run(
        &mut s,
        2,
        12,
        OpBody::Move {
            entry: d,
            parent: OpId::ROOT,
            name: "back".into(),
        },
    );
    assert!(s.exists(d));
    assert_eq!(names(&s, OpId::ROOT), vec!["back"]);
}

#[test]
fn blob_pieces_are_the_manifests_of_the_winner_and_each_conflict_copy_and_inline_holds_none() {
    let manifest = |n: u8| Content::Manifest {
        hash: crate::ids::Hash([n; 32]),
        size: 1 << 20,
    };
    let mut s = with_writer("bob");
    let small = mkfile(&mut s, 1, 10, OpId::ROOT, "small.txt", "a line");
    let pieces = s.blob_pieces(small);
    assert!(pieces.is_empty());
    assert_eq!(
        pieces.capacity(),
        0,
        "an inline file's pieces allocate nothing"
    );
    let big = mkfile(&mut s, 1, 20, OpId::ROOT, "big.bin", "");
    let w_alice = s.plan_write(big, manifest(9), 1).unwrap();
    let w_bob = s.plan_write(big, manifest(3), 2).unwrap();
    run(&mut s, 2, T0, w_bob);
    run(&mut s, 1, T0 + 1000, w_alice);
    assert_eq!(s.blob_pieces(big), vec![manifest(3), manifest(9)]);
}

#[test]
fn file_ids_after_pages_through_every_regular_file_once() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 5, OpId::ROOT, "d");
    for k in 0..7u64 {
        mkfile(&mut s, 1, 10 + k, d, &format!("f{k}"), "x");
    }
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = s.file_ids_after(after, 3);
        assert!(page.len() <= 3);
        let Some(last) = page.last().copied() else {
            break;
        };
        paged.extend(page);
        after = Some(last);
    }
    assert_eq!(paged, s.file_ids());
    assert_eq!(paged.len(), 7);
    assert!(!paged.contains(&d));
}

/// A state with a directory `d` of nine files, all but every third written with a
/// manifest: the state, `d`, and the files with blobs with their manifests.
fn files_with_manifests() -> (FsState, FileId, Vec<(FileId, Vec<Content>)>) {
    let manifest = |n: u8| Content::Manifest {
        hash: crate::ids::Hash([n; 32]),
        size: 1 << 20,
    };
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 5, OpId::ROOT, "d");
    let mut with = Vec::new();
    for k in 0..9u8 {
        let f = mkfile(&mut s, 1, 10 + u64::from(k), d, &format!("f{k}"), "x");
        if k % 3 != 1 {
            let w = s.plan_write(f, manifest(k), 1).unwrap();
            run(&mut s, 1, 100 + u64::from(k), w);
            with.push((f, vec![manifest(k)]));
        }
    }
    (s, d, with)
}

#[test]
fn blob_pieces_after_pages_through_the_files_that_have_blobs_as_blob_pieces_sees_them() {
    let (s, _, want) = files_with_manifests();
    let (mut got, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let (last, found) = s.blob_pieces_after(after, 2);
        assert!(found.len() <= 2);
        let Some(last) = last else {
            break;
        };
        got.extend(found);
        after = Some(last);
        pages += 1;
    }
    assert_eq!(pages, 5, "nine regular files, two looked at a page");
    assert_eq!(got, want);
    for (f, pieces) in &got {
        assert_eq!(&s.blob_pieces(*f), pieces);
    }
}

#[test]
fn held_versions_after_pages_give_the_versions_of_one_whole_pass() {
    let (mut s, d, _) = files_with_manifests();
    let gone = s.plan_unlink(d, "f0").unwrap();
    run(&mut s, 1, 200, gone);
    let whole = s.held_versions();
    assert_eq!(whole.len(), 6);
    assert_eq!(whole.iter().filter(|v| v.deleted_ms.is_some()).count(), 1);
    let (mut got, mut after) = (Vec::new(), None);
    loop {
        let (last, found) = s.held_versions_after(after, 2);
        let Some(last) = last else {
            assert!(found.is_empty());
            break;
        };
        got.extend(found);
        after = Some(last);
    }
    assert_eq!(got, whole);
}

#[test]
fn concurrent_writes_show_the_loser_as_a_conflict_copy_named_after_its_author() {
    let mut s = with_writer("bob");
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a.txt", "base");
    let w_alice = s.plan_write(f, inline("alice"), 1).unwrap();
    let w_bob = s.plan_write(f, inline("bob"), 2).unwrap();
    let (wb, _) = run(&mut s, 2, T0, w_bob);
    run(&mut s, 1, T0 + 1000, w_alice);
    assert_eq!(
        names(&s, OpId::ROOT),
        vec!["a (conflict bob 2026-11-21 101502).txt", "a.txt"]
    );
    assert_eq!(bytes_of(&s, file_node(&s, OpId::ROOT, "a.txt")), b"alice");
    let copy = file_node(&s, OpId::ROOT, "a (conflict bob 2026-11-21 101502).txt");
    assert_eq!(copy, Node::Conflict { file: f, head: wb });
    assert_eq!(bytes_of(&s, copy), b"bob");
    assert_eq!(s.attr(copy).unwrap().perm, 0o444);
    assert_eq!(s.stats().conflicts, 1);
}

#[test]
fn conflict_names_use_the_key_prefix_for_unknown_authors_and_keep_no_extension_when_none() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "Makefile", "");
    let w1 = s.plan_write(f, inline("1"), 0).unwrap();
    let w2 = s.plan_write(f, inline("2"), 0).unwrap();
    run(&mut s, 0xab, T0, w1);
    run(&mut s, 1, T0 + 5, w2);
    assert_eq!(
        names(&s, OpId::ROOT),
        vec!["Makefile", "Makefile (conflict abababab 2026-11-21 101502)"]
    );
}

#[test]
fn content_authors_are_the_writers_and_appenders_of_every_visible_version() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "log", "");
    assert_eq!(s.content_authors(f), [key(1)].into());
    let app = s.plan_append(f, inline("from 2\n"), 0).unwrap();
    run(&mut s, 2, 20, app);
    assert_eq!(s.content_authors(f), [key(1), key(2)].into());
    let (w3, w4) = (
        s.plan_write(f, inline("3"), 0).unwrap(),
        s.plan_write(f, inline("4"), 0).unwrap(),
    );
    run(&mut s, 3, 30, w3);
    run(&mut s, 4, 31, w4);
    assert_eq!(
        s.content_authors(f),
        [key(3), key(4)].into(),
        "the winner and the conflict copy; the superseded version's writers are gone"
    );
    let unknown = OpId {
        hlc: Hlc {
            wall_ms: 99,
            counter: 0,
        },
        author: key(9),
    };
    assert!(
        s.content_authors(unknown).is_empty(),
        "a file never created"
    );
}

#[test]
fn writing_the_file_supersedes_every_head_and_resolves_the_conflict() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a", "");
    let w1 = s.plan_write(f, inline("1"), 0).unwrap();
    let w2 = s.plan_write(f, inline("2"), 0).unwrap();
    run(&mut s, 1, 20, w1);
    run(&mut s, 2, 21, w2);
    assert_eq!(names(&s, OpId::ROOT).len(), 2);
    let w3 = s.plan_write(f, inline("3"), 0).unwrap();
    run(&mut s, 2, 22, w3);
    assert_eq!(names(&s, OpId::ROOT), vec!["a"]);
    assert_eq!(bytes_of(&s, file_node(&s, OpId::ROOT, "a")), b"3");
}

#[test]
fn unlinking_a_conflict_copy_dismisses_that_version_only() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a", "");
    let w1 = s.plan_write(f, inline("1"), 0).unwrap();
    let w2 = s.plan_write(f, inline("2"), 0).unwrap();
    run(&mut s, 1, 20, w1);
    run(&mut s, 2, 21, w2);
    let copy = names(&s, OpId::ROOT)[1].clone();
    let dismiss = s.plan_unlink(OpId::ROOT, &copy).unwrap();
    assert!(matches!(dismiss, OpBody::Dismiss { .. }));
    run(&mut s, 2, 22, dismiss);
    assert_eq!(names(&s, OpId::ROOT), vec!["a"]);
    assert_eq!(bytes_of(&s, file_node(&s, OpId::ROOT, "a")), b"2");
}

#[test]
fn concurrent_appends_from_two_peers_both_survive_in_op_id_order() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "chat.log", "start\n");
    let a1 = s.plan_append(f, inline("from b\n"), 0).unwrap();
    let a2 = s.plan_append(f, inline("from a\n"), 0).unwrap();
    let ops = [(key(2), op(20, a1)), (key(1), op(21, a2))];
    for (a, o) in ops.iter().rev() {
        s.apply(*a, o);
    }
    assert_eq!(names(&s, OpId::ROOT), vec!["chat.log"]);
    assert_eq!(
        bytes_of(&s, file_node(&s, OpId::ROOT, "chat.log")),
        b"start\nfrom b\nfrom a\n"
    );
    let a3 = s.plan_append(f, inline("end\n"), 0).unwrap();
    let OpBody::Append { supersedes, .. } = &a3 else {
        panic!("{a3:?}")
    };
    assert_eq!(supersedes.len(), 2);
}

#[test]
fn an_append_concurrent_with_a_write_keeps_its_version_as_a_conflict_copy() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "log", "x");
    let app = s.plan_append(f, inline("y"), 0).unwrap();
    let write = s.plan_write(f, inline("new"), 0).unwrap();
    run(&mut s, 2, 20, app);
    run(&mut s, 1, 21, write);
    let list = s.readdir(OpId::ROOT).unwrap();
    assert_eq!(list.len(), 2);
    let copy = list
        .iter()
        .find(|(_, n)| matches!(n, Node::Conflict { .. }))
        .unwrap()
        .1;
    assert_eq!(bytes_of(&s, copy), b"xy");
    assert_eq!(bytes_of(&s, file_node(&s, OpId::ROOT, "log")), b"new");
}

#[test]
fn same_name_created_twice_keeps_the_oldest_and_suffixes_the_other_with_its_author() {
    let mut s = FsState::new();
    let c1 = create(&s, OpId::ROOT, "a.txt", Kind::File, "1");
    let c2 = create(&s, OpId::ROOT, "a.txt", Kind::File, "2");
    let c3 = create(&s, OpId::ROOT, "a.txt", Kind::File, "3");
    let (f2, _) = run(&mut s, 2, 20, c2);
    let (f1, _) = run(&mut s, 1, 20, c1);
    let (f3, _) = run(&mut s, 2, 30, c3);
    assert_eq!(
        names(&s, OpId::ROOT),
        vec!["a (02020202).txt", "a (02020202001e).txt", "a.txt"]
    );
    assert_eq!(file_node(&s, OpId::ROOT, "a.txt").file(), f1);
    assert_eq!(file_node(&s, OpId::ROOT, "a (02020202).txt").file(), f2);
    assert_eq!(file_node(&s, OpId::ROOT, "a (02020202001e).txt").file(), f3);
}

#[test]
fn an_edit_concurrent_with_a_delete_wins_and_the_file_stays() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a", "v1");
    let rm = s.plan_unlink(OpId::ROOT, "a").unwrap();
    let w = s.plan_write(f, inline("v2"), 0).unwrap();
    run(&mut s, 1, 20, rm);
    assert!(!s.exists(f));
    run(&mut s, 2, 19, w);
    assert!(s.exists(f));
    assert_eq!(bytes_of(&s, file_node(&s, OpId::ROOT, "a")), b"v2");
}

#[test]
fn a_delete_that_saw_the_latest_edit_stays_deleted() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a", "v1");
    let w = s.plan_write(f, inline("v2"), 0).unwrap();
    run(&mut s, 2, 11, w);
    let rm = s.plan_unlink(OpId::ROOT, "a").unwrap();
    run(&mut s, 1, 20, rm);
    assert!(!s.exists(f));
    assert!(names(&s, OpId::ROOT).is_empty());
}

#[test]
fn a_removed_directory_comes_back_holding_what_a_peer_added() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    let sub = mkdir(&mut s, 1, 11, d, "sub");
    let rm_sub = s.plan_rmdir(d, "sub").unwrap();
    let added = create(&s, sub, "new", Kind::File, "x");
    run(&mut s, 1, 20, rm_sub);
    let rm_d = s.plan_rmdir(OpId::ROOT, "d").unwrap();
    run(&mut s, 1, 21, rm_d);
    assert!(!s.exists(d));
    run(&mut s, 2, 15, added);
    assert!(s.exists(d) && s.exists(sub));
    assert_eq!(names(&s, d), vec!["sub"]);
    assert_eq!(names(&s, sub), vec!["new"]);
    assert_eq!(s.plan_rmdir(OpId::ROOT, "d"), Err(FsError::NotEmpty));
}

#[test]
fn hard_links_count_in_nlink_and_directories_count_visible_subdirectories() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    mkdir(&mut s, 1, 11, d, "s1");
    mkdir(&mut s, 1, 12, d, "s2");
    let f = mkfile(&mut s, 1, 13, d, "f", "x");
    let link = s.plan_link(f, OpId::ROOT, "g").unwrap();
    run(&mut s, 1, 14, link);
    let fnode = file_node(&s, d, "f");
    assert_eq!(s.attr(fnode).unwrap().nlink, 2);
    assert_eq!(s.attr(file_node(&s, OpId::ROOT, "d")).unwrap().nlink, 4);
    let rm = s.plan_rmdir(d, "s1").unwrap();
    run(&mut s, 1, 15, rm);
    let rm = s.plan_unlink(OpId::ROOT, "g").unwrap();
    run(&mut s, 1, 16, rm);
    assert_eq!(s.attr(file_node(&s, OpId::ROOT, "d")).unwrap().nlink, 3);
    assert_eq!(s.attr(fnode).unwrap().nlink, 1);
    assert_eq!(s.stats().files, 1);
}

#[test]
fn a_hard_linked_file_counts_once_whichever_of_its_names_are_visible() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    let f = mkfile(&mut s, 1, 11, OpId::ROOT, "a", "x");
    for (wall, parent, name) in [(12, d, "b"), (13, OpId::ROOT, "c")] {
        let link = s.plan_link(f, parent, name).unwrap();
        run(&mut s, 1, wall, link);
    }
    assert_eq!((s.stats().files, s.stats().bytes), (1, 1), "three names");
    let rm = s.plan_unlink(OpId::ROOT, "a").unwrap();
    run(&mut s, 1, 14, rm);
    assert_eq!(s.stats().files, 1, "two links, its own name gone");
    let rm = s.plan_unlink(OpId::ROOT, "c").unwrap();
    run(&mut s, 1, 15, rm);
    assert_eq!(s.stats().files, 1, "one link left");
    mkfile(&mut s, 1, 16, d, "other", "yz");
    assert_eq!((s.stats().files, s.stats().bytes), (2, 3));
    let rm = s.plan_unlink(d, "b").unwrap();
    run(&mut s, 1, 17, rm);
    assert_eq!(s.stats().files, 1);
}

#[test]
fn metadata_registers_are_last_writer_wins_by_op_id_whatever_the_arrival_order() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a", "");
    let meta = |mode, v: &'static [u8]| {
        OpBody::SetMeta(SetMeta {
            file: f,
            mode: Some(mode),
            xattr_set: vec![(Bytes::from_static(b"user.k"), Bytes::from_static(v))],
            ..Default::default()
        })
    };
    run(&mut s, 2, 30, meta(0o600, b"new"));
    run(&mut s, 1, 20, meta(0o640, b"old"));
    let node = file_node(&s, OpId::ROOT, "a");
    assert_eq!(s.attr(node).unwrap().perm, 0o600);
    assert_eq!(
        s.xattr_get(f, b"user.k").unwrap(),
        Bytes::from_static(b"new")
    );
    let rm = s
        .plan_set_meta(SetMeta {
            file: f,
            xattr_remove: vec![Bytes::from_static(b"user.k")],
            ..Default::default()
        })
        .unwrap();
    run(&mut s, 1, 40, rm);
    assert_eq!(s.xattr_get(f, b"user.k"), Err(FsError::NoAttr));
    assert!(s.xattr_list(f).unwrap().is_empty());
    run(&mut s, 3, 35, meta(0o700, b"older than the removal"));
    assert_eq!(s.xattr_get(f, b"user.k"), Err(FsError::NoAttr));
    assert_eq!(s.attr(node).unwrap().perm, 0o700);
}

#[test]
fn times_come_from_ops_ctime_from_the_newest_touch_and_crtime_from_the_create() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a", "");
    let w = s.plan_write(f, inline("x"), 99).unwrap();
    run(&mut s, 1, 50, w);
    let a = s.attr(file_node(&s, OpId::ROOT, "a")).unwrap();
    assert_eq!(a.mtime_ns, 99);
    assert_eq!(a.ctime_ns, 50_000_000);
    assert_eq!(a.crtime_ns, 10_000_000);
    let mv = s
        .plan_rename(OpId::ROOT, "a", OpId::ROOT, "b", RenameFlags::default())
        .unwrap();
    run(&mut s, 1, 60, mv[0].clone());
    assert_eq!(
        s.attr(file_node(&s, OpId::ROOT, "b")).unwrap().ctime_ns,
        60_000_000
    );
}

/// (mtime, ctime) of directory or file `file` in ms (the ops below all have counter 0).
fn times_ms(s: &FsState, file: FileId) -> (i64, i64) {
    let a = s.attr(Node::Entry { entry: file, file }).unwrap();
    (a.mtime_ns / 1_000_000, a.ctime_ns / 1_000_000)
}

#[test]
fn a_directory_mtime_and_ctime_move_with_every_create_link_rename_and_unlink_in_it() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    let e = mkdir(&mut s, 1, 11, OpId::ROOT, "e");
    assert_eq!(
        times_ms(&s, OpId::ROOT),
        (11, 11),
        "the root gained d and e"
    );
    // A new directory shows its Create's stamp, not the creator's mtime (7 ns).
    assert_eq!(times_ms(&s, d), (10, 10));
    let a = mkfile(&mut s, 1, 20, d, "a", "x");
    assert_eq!(times_ms(&s, d), (20, 20));
    let link = s.plan_link(a, e, "l").unwrap();
    run(&mut s, 1, 30, link);
    assert_eq!(times_ms(&s, e), (30, 30));
    assert_eq!(
        times_ms(&s, d),
        (20, 20),
        "linking elsewhere leaves d alone"
    );
    assert_eq!(times_ms(&s, a).1, 30, "a link changes the file's ctime");
    let mv = rename(&s, (d, "a"), (e, "b"), RenameFlags::default()).unwrap();
    run(&mut s, 1, 40, mv[0].clone());
    assert_eq!((times_ms(&s, d), times_ms(&s, e)), ((40, 40), (40, 40)));
    assert_eq!(
        times_ms(&s, a).1,
        40,
        "a rename changes the moved file's ctime"
    );
    let unlink = s.plan_unlink(e, "l").unwrap();
    run(&mut s, 1, 50, unlink);
    assert_eq!(times_ms(&s, e), (50, 50));
    assert_eq!(times_ms(&s, a).1, 50, "an unlink changes the file's ctime");
    let mv = rename(&s, (e, "b"), (e, "c"), RenameFlags::default()).unwrap();
    run(&mut s, 1, 60, mv[0].clone());
    assert_eq!(times_ms(&s, e), (60, 60));
    assert_eq!(
        times_ms(&s, OpId::ROOT),
        (11, 11),
        "nothing changed in the root"
    );
    let write = s.plan_write(a, inline("y"), 99).unwrap();
    run(&mut s, 1, 65, write);
    assert_eq!(times_ms(&s, e), (60, 60), "content is not an entry");
    let rm = s.plan_rmdir(OpId::ROOT, "d").unwrap();
    run(&mut s, 1, 70, rm);
    assert_eq!(times_ms(&s, OpId::ROOT), (70, 70));
}

#[test]
fn an_explicit_directory_mtime_holds_until_a_later_entry_change_by_op_id() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    mkfile(&mut s, 1, 20, d, "a", "");
    let touch = |ns| {
        OpBody::SetMeta(SetMeta {
            file: d,
            mtime_ns: Some(ns),
            ..SetMeta::default()
        })
    };
    run(&mut s, 1, 30, touch(5_000_000));
    assert_eq!(
        times_ms(&s, d),
        (5, 30),
        "touch -d sets mtime; ctime is the op's"
    );
    mkfile(&mut s, 1, 40, d, "b", "");
    assert_eq!(times_ms(&s, d), (40, 40), "a later create wins over it");
    // A touch stamped before that create, arriving after it, loses to it.
    run(&mut s, 2, 35, touch(6_000_000));
    assert_eq!(times_ms(&s, d), (40, 40));
    run(&mut s, 2, 45, touch(7_000_000));
    assert_eq!(times_ms(&s, d), (7, 45));
}

#[test]
fn an_older_move_arriving_late_gives_back_the_directory_times_its_replay_changed() {
    let mut base = FsState::new();
    let (x, cx) = {
        let body = create(&base, OpId::ROOT, "x", Kind::File, "");
        run(&mut base, 1, 10, body)
    };
    let (a, ca) = {
        let body = create(&base, OpId::ROOT, "a", Kind::Dir, "");
        run(&mut base, 1, 11, body)
    };
    let (b, cb) = {
        let body = create(&base, OpId::ROOT, "b", Kind::Dir, "");
        run(&mut base, 1, 12, body)
    };
    let to = |parent| OpBody::Move {
        entry: x,
        parent,
        name: "x".into(),
    };
    let ops = [
        (key(1), cx),
        (key(1), ca),
        (key(1), cb),
        (key(1), op(30, to(a))),
        (key(2), op(40, to(b))),
    ];
    let in_order = replay(&ops);
    // The move to b alone took x out of the root at 40; once the older move to a
    // arrives, x left the root at 30 and the move to b took it out of a.
    let mut late = replay([&ops[0], &ops[1], &ops[2], &ops[4]]);
    assert_eq!(times_ms(&late, OpId::ROOT), (40, 40));
    let mut resumed = FsState::decode_snapshot(&late.encode_snapshot()).unwrap();
    for s in [&mut late, &mut resumed] {
        s.apply(ops[3].0, &ops[3].1);
        assert_eq!(s.canonical_dump(), in_order.canonical_dump());
        assert_eq!(times_ms(s, OpId::ROOT), (30, 30));
        assert_eq!((times_ms(s, a), times_ms(s, b)), ((40, 40), (40, 40)));
    }
}

#[test]
fn a_move_skipped_as_a_cycle_changes_no_directory_time_in_either_order() {
    let mut base = FsState::new();
    let body = create(&base, OpId::ROOT, "a", Kind::Dir, "");
    let (a, ca) = run(&mut base, 1, 10, body);
    let body = create(&base, OpId::ROOT, "b", Kind::Dir, "");
    let (b, cb) = run(&mut base, 1, 11, body);
    let into = |entry, parent, name: &str| OpBody::Move {
        entry,
        parent,
        name: name.into(),
    };
    let ops = [
        (key(1), ca),
        (key(1), cb),
        (key(1), op(20, into(a, b, "a"))),
        (key(2), op(21, into(b, a, "b"))),
    ];
    let forward = replay(&ops);
    let backward = replay([&ops[0], &ops[1], &ops[3], &ops[2]]);
    for s in [&forward, &backward] {
        assert_eq!(s.canonical_dump(), forward.canonical_dump());
        assert_eq!(
            times_ms(s, b),
            (20, 21),
            "b gained a; its own skipped move is a ctime"
        );
        assert_eq!(times_ms(s, OpId::ROOT), (20, 20), "the root lost a, not b");
        assert_eq!(
            times_ms(s, a),
            (10, 20),
            "a never held b; its own move is a ctime"
        );
    }
}

#[test]
fn symlink_target_is_the_create_content() {
    let mut s = FsState::new();
    let body = create(&s, OpId::ROOT, "l", Kind::Symlink, "../target");
    let (l, _) = run(&mut s, 1, 10, body);
    assert_eq!(s.readlink(l).unwrap(), Bytes::from_static(b"../target"));
    assert_eq!(s.attr(file_node(&s, OpId::ROOT, "l")).unwrap().size, 9);
    let f = mkfile(&mut s, 1, 11, OpId::ROOT, "f", "");
    assert_eq!(s.readlink(f), Err(FsError::Invalid));
}

#[test]
fn snapshot_labels_are_last_writer_wins_in_any_order_and_survive_encoding() {
    let snap = |label: &str| OpBody::Snapshot {
        label: label.into(),
    };
    let drop = |label: &str| OpBody::DropSnapshot {
        label: label.into(),
    };
    let ops = [
        (1, 10, snap("a")),
        (2, 5, drop("a")),
        (1, 12, snap("b")),
        (2, 20, drop("b")),
        (2, 30, snap("b")),
        (1, 15, snap("c")),
    ];
    let mut forward = FsState::new();
    for (who, at, body) in ops.iter().cloned() {
        run(&mut forward, who, at, body);
    }
    let mut backward = FsState::new();
    for (who, at, body) in ops.iter().rev().cloned() {
        run(&mut backward, who, at, body);
    }
    let labels: Vec<&str> = forward.snapshots().into_iter().map(|(l, _)| l).collect();
    assert_eq!(labels, ["a", "b", "c"]);
    assert_eq!(forward.snapshot("b").unwrap().hlc.wall_ms, 30);
    assert_eq!(forward.canonical_dump(), backward.canonical_dump());
    run(&mut forward, 1, 40, drop("a"));
    assert_eq!(forward.snapshot("a"), None);
    let decoded = FsState::decode_snapshot(&forward.encode_snapshot()).unwrap();
    assert_eq!(decoded.canonical_dump(), forward.canonical_dump());
    assert_eq!(decoded.encode_snapshot(), forward.encode_snapshot());
}

#[test]
fn store_name_and_members_are_last_writer_wins_and_revoked_members_vanish() {
    let mut s = FsState::new();
    run(&mut s, 1, 20, OpBody::SetStoreName("new".into()));
    run(&mut s, 1, 10, OpBody::SetStoreName("old".into()));
    assert_eq!(s.store_name(), Some("new"));
    run(
        &mut s,
        1,
        11,
        OpBody::SetMember {
            key: key(5),
            role: Role::Writer,
            display_name: "e".into(),
            invite: None,
        },
    );
    assert_eq!(s.member(&key(5)), Some((Role::Writer, "e")));
    run(
        &mut s,
        2,
        30,
        OpBody::RevokeMember {
            key: key(5),
            upto: 0,
        },
    );
    run(
        &mut s,
        3,
        25,
        OpBody::SetMember {
            key: key(5),
            role: Role::Admin,
            display_name: "e".into(),
            invite: None,
        },
    );
    assert_eq!(s.member(&key(5)), None);
    assert_eq!(s.member(&key(6)), None);
    run(
        &mut s,
        1,
        40,
        OpBody::SetMember {
            key: key(5),
            role: Role::Writer,
            display_name: "again".into(),
            invite: None,
        },
    );
    assert_eq!(s.member(&key(5)), None, "a revocation is final");
    assert_eq!(
        s.grants(&key(5)).last().map(|(_, role)| *role),
        Some(Role::Writer),
        "grants are kept, for the store to place in the key's chain"
    );
    assert_eq!(s.revocation_cut(&key(5)), Some(0));
}

#[test]
fn applying_the_same_op_twice_changes_nothing() {
    let mut s = FsState::new();
    let body = create(&s, OpId::ROOT, "a", Kind::File, "x");
    let (_, o) = run(&mut s, 1, 10, body);
    let before = s.canonical_dump();
    s.apply(key(1), &o);
    assert_eq!(s.canonical_dump(), before);
}

#[test]
fn touched_names_the_file_an_op_concerns() {
    let mut s = FsState::new();
    let body = create(&s, OpId::ROOT, "a", Kind::File, "x");
    let (f, o) = run(&mut s, 1, 10, body);
    assert_eq!(s.touched(key(1), &o), Some(f));
    let mv = op(
        11,
        OpBody::Move {
            entry: f,
            parent: OpId::ROOT,
            name: "b".into(),
        },
    );
    assert_eq!(s.touched(key(1), &mv), Some(f));
    assert_eq!(
        s.touched(key(1), &op(12, OpBody::SetStoreName("x".into()))),
        None
    );
}

#[test]
fn create_refuses_visible_names_bad_names_and_bad_parents() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a", "");
    let plan = |s: &FsState, parent, name: &str| {
        s.plan_create(
            parent,
            name,
            Kind::File,
            0o644,
            0,
            0,
            0,
            Content::empty(),
            0,
        )
    };
    assert_eq!(plan(&s, OpId::ROOT, "a"), Err(FsError::Exists));
    assert_eq!(
        plan(&s, OpId::ROOT, &"x".repeat(256)),
        Err(FsError::NameTooLong)
    );
    assert_eq!(plan(&s, OpId::ROOT, "a/b"), Err(FsError::InvalidName));
    assert_eq!(plan(&s, OpId::ROOT, ".."), Err(FsError::InvalidName));
    assert_eq!(plan(&s, f, "x"), Err(FsError::NotDir));
    let ghost = op(99, OpBody::SetStoreName("g".into())).id(key(9));
    assert_eq!(plan(&s, ghost, "x"), Err(FsError::NotFound));
    assert!(plan(&s, OpId::ROOT, &"x".repeat(255)).is_ok());
    let long_target = Content::Inline(Bytes::from(vec![b'a'; 4097]));
    assert_eq!(
        s.plan_create(
            OpId::ROOT,
            "l",
            Kind::Symlink,
            0o777,
            0,
            0,
            0,
            long_target,
            0
        ),
        Err(FsError::NameTooLong)
    );
    let huge = Content::Inline(Bytes::from(vec![0; crate::cas::INLINE_MAX + 1]));
    assert_eq!(
        s.plan_create(OpId::ROOT, "h", Kind::File, 0o644, 0, 0, 0, huge, 0),
        Err(FsError::TooLarge)
    );
}

#[test]
fn a_conflict_copy_name_counts_as_taken() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a", "");
    let w1 = s.plan_write(f, inline("1"), 0).unwrap();
    let w2 = s.plan_write(f, inline("2"), 0).unwrap();
    run(&mut s, 1, T0, w1);
    run(&mut s, 2, T0 + 1, w2);
    let copy = names(&s, OpId::ROOT)[1].clone();
    let res = s.plan_create(
        OpId::ROOT,
        &copy,
        Kind::File,
        0o644,
        0,
        0,
        0,
        Content::empty(),
        0,
    );
    assert_eq!(res, Err(FsError::Exists));
}

#[test]
fn link_refuses_directories_missing_files_and_taken_names() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    let f = mkfile(&mut s, 1, 11, OpId::ROOT, "f", "");
    assert_eq!(s.plan_link(d, OpId::ROOT, "d2"), Err(FsError::NotPermitted));
    assert_eq!(s.plan_link(f, OpId::ROOT, "d"), Err(FsError::Exists));
    assert_eq!(s.plan_link(f, f, "x"), Err(FsError::NotDir));
    let ghost = op(99, OpBody::SetStoreName("g".into())).id(key(9));
    assert_eq!(s.plan_link(ghost, OpId::ROOT, "x"), Err(FsError::NotFound));
    assert_eq!(
        s.plan_link(f, OpId::ROOT, &"y".repeat(300)),
        Err(FsError::NameTooLong)
    );
}

#[test]
fn unlink_and_rmdir_check_kinds_emptiness_and_existence() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    mkfile(&mut s, 1, 11, d, "f", "");
    mkfile(&mut s, 1, 12, OpId::ROOT, "g", "");
    assert_eq!(s.plan_unlink(OpId::ROOT, "d"), Err(FsError::IsDir));
    assert_eq!(s.plan_unlink(OpId::ROOT, "nope"), Err(FsError::NotFound));
    assert_eq!(s.plan_rmdir(OpId::ROOT, "g"), Err(FsError::NotDir));
    assert_eq!(s.plan_rmdir(OpId::ROOT, "d"), Err(FsError::NotEmpty));
    assert_eq!(s.plan_rmdir(OpId::ROOT, "nope"), Err(FsError::NotFound));
    let rm = s.plan_unlink(d, "f").unwrap();
    run(&mut s, 1, 13, rm);
    assert!(matches!(
        s.plan_rmdir(OpId::ROOT, "d"),
        Ok(OpBody::Remove { .. })
    ));
}

#[test]
fn rename_validates_like_the_kernel() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    let sub = mkdir(&mut s, 1, 11, d, "sub");
    mkfile(&mut s, 1, 12, sub, "x", "");
    let e = mkdir(&mut s, 1, 13, OpId::ROOT, "e");
    mkfile(&mut s, 1, 14, OpId::ROOT, "f", "");
    mkfile(&mut s, 1, 15, OpId::ROOT, "g", "");
    let plain = RenameFlags::default();
    let noreplace = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    let exchange = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    assert_eq!(
        rename(&s, (OpId::ROOT, "d"), (sub, "d"), plain),
        Err(FsError::Invalid)
    );
    assert_eq!(
        rename(&s, (OpId::ROOT, "d"), (d, "d"), plain),
        Err(FsError::Invalid)
    );
    assert_eq!(
        rename(&s, (OpId::ROOT, "f"), (OpId::ROOT, "g"), noreplace),
        Err(FsError::Exists)
    );
    assert_eq!(
        rename(&s, (OpId::ROOT, "f"), (OpId::ROOT, "h"), exchange),
        Err(FsError::NotFound)
    );
    assert_eq!(
        rename(&s, (OpId::ROOT, "f"), (OpId::ROOT, "e"), plain),
        Err(FsError::IsDir)
    );
    assert_eq!(
        rename(&s, (OpId::ROOT, "e"), (OpId::ROOT, "f"), plain),
        Err(FsError::NotDir)
    );
    assert_eq!(
        rename(&s, (OpId::ROOT, "e"), (d, "sub"), plain),
        Err(FsError::NotEmpty)
    );
    assert_eq!(
        rename(&s, (OpId::ROOT, "nope"), (OpId::ROOT, "x"), plain),
        Err(FsError::NotFound)
    );
    assert_eq!(
        rename(&s, (OpId::ROOT, "f"), (OpId::ROOT, "."), plain),
        Err(FsError::Invalid)
    );
    assert_eq!(
        rename(&s, (OpId::ROOT, "f"), (OpId::ROOT, &"n".repeat(256)), plain),
        Err(FsError::NameTooLong)
    );
    assert_eq!(
        rename(&s, (OpId::ROOT, "f"), (OpId::ROOT, "f"), plain),
        Ok(vec![])
    );
    assert_eq!(
        rename(&s, (OpId::ROOT, "f"), (OpId::ROOT, "f"), noreplace),
        Err(FsError::Exists)
    );
    let e_over_empty = rename(&s, (OpId::ROOT, "e"), (d, "sub2"), plain).unwrap();
    assert_eq!(e_over_empty.len(), 1);
    let _ = e;
}

#[test]
fn rename_onto_another_name_of_the_same_file_does_nothing() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "f", "");
    let link = s.plan_link(f, OpId::ROOT, "g").unwrap();
    run(&mut s, 1, 11, link);
    assert_eq!(
        rename(
            &s,
            (OpId::ROOT, "f"),
            (OpId::ROOT, "g"),
            RenameFlags::default()
        ),
        Ok(vec![])
    );
}

#[test]
fn rename_over_a_file_removes_the_target_and_moves_the_source() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "f", "new");
    let g = mkfile(&mut s, 1, 11, OpId::ROOT, "g", "old");
    let ops = rename(
        &s,
        (OpId::ROOT, "f"),
        (OpId::ROOT, "g"),
        RenameFlags::default(),
    )
    .unwrap();
    assert!(matches!(ops[0], OpBody::Remove { entry, .. } if entry == g));
    for (i, body) in ops.into_iter().enumerate() {
        run(&mut s, 1, 20 + i as u64, body);
    }
    assert_eq!(names(&s, OpId::ROOT), vec!["g"]);
    assert_eq!(file_node(&s, OpId::ROOT, "g").file(), f);
    assert!(!s.exists(g));
}

#[test]
fn rename_exchange_swaps_two_names() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    let f = mkfile(&mut s, 1, 11, OpId::ROOT, "f", "");
    let flags = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    let ops = rename(&s, (OpId::ROOT, "f"), (OpId::ROOT, "d"), flags).unwrap();
    assert_eq!(ops.len(), 2);
    for (i, body) in ops.into_iter().enumerate() {
        run(&mut s, 1, 20 + i as u64, body);
    }
    assert_eq!(file_node(&s, OpId::ROOT, "d").file(), f);
    assert_eq!(file_node(&s, OpId::ROOT, "f").file(), d);
}

#[test]
fn renaming_a_conflict_copy_makes_it_a_file_and_dismisses_the_copy() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a", "base");
    let app = s.plan_append(f, inline("+b"), 0).unwrap();
    let w = s.plan_write(f, inline("w"), 0).unwrap();
    run(&mut s, 2, 20, app);
    run(&mut s, 1, 21, w);
    let copy = names(&s, OpId::ROOT)[1].clone();
    let ops = rename(
        &s,
        (OpId::ROOT, &copy),
        (OpId::ROOT, "kept"),
        RenameFlags::default(),
    )
    .unwrap();
    for (i, body) in ops.into_iter().enumerate() {
        run(&mut s, 1, 30 + i as u64, body);
    }
    assert_eq!(names(&s, OpId::ROOT), vec!["a", "kept"]);
    assert_eq!(bytes_of(&s, file_node(&s, OpId::ROOT, "kept")), b"base+b");
    assert_eq!(bytes_of(&s, file_node(&s, OpId::ROOT, "a")), b"w");
}

#[test]
fn renaming_a_conflict_copy_onto_its_file_adopts_that_version() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a", "");
    let w1 = s.plan_write(f, inline("mine"), 0).unwrap();
    let w2 = s.plan_write(f, inline("theirs"), 0).unwrap();
    run(&mut s, 1, 20, w1);
    run(&mut s, 2, 21, w2);
    let copy = names(&s, OpId::ROOT)[1].clone();
    let ops = rename(
        &s,
        (OpId::ROOT, &copy),
        (OpId::ROOT, "a"),
        RenameFlags::default(),
    )
    .unwrap();
    assert_eq!(ops.len(), 1);
    run(&mut s, 1, 30, ops[0].clone());
    assert_eq!(names(&s, OpId::ROOT), vec!["a"]);
    assert_eq!(bytes_of(&s, file_node(&s, OpId::ROOT, "a")), b"mine");
}

#[test]
fn content_planners_refuse_directories_and_oversized_inline_content() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    let f = mkfile(&mut s, 1, 11, OpId::ROOT, "f", "");
    assert_eq!(s.plan_write(d, Content::empty(), 0), Err(FsError::IsDir));
    assert_eq!(s.plan_append(d, Content::empty(), 0), Err(FsError::IsDir));
    let huge = Content::Inline(Bytes::from(vec![0; crate::cas::INLINE_MAX + 1]));
    assert_eq!(s.plan_write(f, huge, 0), Err(FsError::TooLarge));
    assert_eq!(
        s.content(file_node(&s, OpId::ROOT, "d")),
        Err(FsError::IsDir)
    );
}

#[test]
fn set_meta_checks_xattr_names_sizes_and_existence() {
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "f", "");
    let with = |set: Vec<(Bytes, Bytes)>, remove: Vec<Bytes>| SetMeta {
        file: f,
        xattr_set: set,
        xattr_remove: remove,
        ..Default::default()
    };
    let n = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    assert_eq!(
        s.plan_set_meta(with(vec![], vec![n("user.none")])),
        Err(FsError::NoAttr)
    );
    assert_eq!(
        s.plan_set_meta(with(vec![(n(&"k".repeat(256)), n("v"))], vec![])),
        Err(FsError::Range)
    );
    assert_eq!(
        s.plan_set_meta(with(vec![(n(""), n("v"))], vec![])),
        Err(FsError::Range)
    );
    let big = Bytes::from(vec![0; crate::fs::op::MAX_XATTR_VALUE + 1]);
    assert_eq!(
        s.plan_set_meta(with(vec![(n("user.a"), big)], vec![])),
        Err(FsError::TooLarge)
    );
    let many = (0..65).map(|i| (n(&format!("user.{i}")), n("v"))).collect();
    assert_eq!(s.plan_set_meta(with(many, vec![])), Err(FsError::TooLarge));
    let ghost = op(99, OpBody::SetStoreName("g".into())).id(key(9));
    let missing = SetMeta {
        file: ghost,
        ..Default::default()
    };
    assert_eq!(s.plan_set_meta(missing), Err(FsError::NotFound));
    let ok = s.plan_set_meta(SetMeta {
        file: f,
        mode: Some(0o100600),
        ..Default::default()
    });
    assert!(matches!(
        ok,
        Ok(OpBody::SetMeta(SetMeta {
            mode: Some(0o600),
            ..
        }))
    ));
}

#[test]
fn snapshot_round_trips_and_later_ops_merge_as_without_it() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    let f = mkfile(&mut s, 1, 11, d, "a.txt", "x");
    let w = s.plan_write(f, inline("y"), 0).unwrap();
    run(&mut s, 2, 12, w);
    let snap = FsState::decode_snapshot(&s.encode_snapshot()).unwrap();
    assert_eq!(snap.canonical_dump(), s.canonical_dump());
    let late = op(
        5,
        OpBody::Move {
            entry: f,
            parent: OpId::ROOT,
            name: "moved".into(),
        },
    );
    let mut a = snap;
    a.apply(key(3), &late);
    s.apply(key(3), &late);
    assert_eq!(a.canonical_dump(), s.canonical_dump());
}

#[test]
fn malformed_snapshots_are_refused_not_panicked_on() {
    let mut s = FsState::new();
    mkfile(&mut s, 1, 10, OpId::ROOT, "a", "x");
    let bytes = s.encode_snapshot();
    for cut in 0..bytes.len() {
        assert!(
            FsState::decode_snapshot(&bytes[..cut]).is_err(),
            "cut {cut}"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        FsState::decode_snapshot(&trailing),
        Err(FsError::Io(_))
    ));
}

/// A format 2 snapshot (the op log of the releases before issue 9) of `ops`.
fn v2_snapshot(ops: &[(PublicKey, Op)]) -> Vec<u8> {
    let mut out = b"LMFSSNAP".to_vec();
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(ops.len() as u64).to_le_bytes());
    for (author, op) in ops {
        let bytes = prost::Message::encode_to_vec(&op.to_proto());
        out.extend_from_slice(&author.0);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

#[test]
fn format_1_and_2_snapshots_decode_by_replay_to_the_same_state_and_reencode_as_format_6() {
    let mut s = FsState::new();
    let body = create(&s, OpId::ROOT, "d", Kind::Dir, "");
    let (d, dir_op) = run(&mut s, 1, 10, body);
    let body = create(&s, d, "a.txt", Kind::File, "x");
    let (_, file_op) = run(&mut s, 1, 11, body);
    let v2 = v2_snapshot(&[(key(1), dir_op), (key(1), file_op)]);
    let v1 = [b"LMFSNAP1".as_slice(), &v2[12..]].concat();
    assert!(FsState::decode_snapshot(&v1).is_err());
    assert_eq!(FsState::snapshot_v1_to_v2(&v1), Some(v2.clone()));
    assert_eq!(FsState::snapshot_v1_to_v2(&v2), None);
    let (decoded, old) = FsState::decode_versioned(&v2).unwrap();
    assert!(old, "a format 2 snapshot asks to be rewritten");
    assert_eq!(decoded.canonical_dump(), s.canonical_dump());
    let v6 = decoded.encode_snapshot();
    assert_eq!(&v6[8..12], &6u32.to_le_bytes());
    assert_eq!(v6, s.encode_snapshot());
    assert!(!FsState::decode_versioned(&v6).unwrap().1);
}

/// A page source without records: a refused header never reads one.
struct NoPages;

impl crate::fs::PageSource for NoPages {
    fn get(&self, _: crate::fs::Page, _: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn scan(&self, _: crate::fs::Page, _: &[u8], _: &mut dyn FnMut(&[u8], &[u8]) -> bool) {}

    fn corrupt(&self, _: crate::fs::Page, _: &[u8]) {}

    fn upto(&self, _: crate::fs::Page) -> Option<Vec<u8>> {
        Some(Vec::new())
    }
}

/// A page source over the records of committed batches.
#[derive(Clone, Default)]
struct Written(std::collections::BTreeMap<(crate::fs::Page, Vec<u8>), Vec<u8>>);

impl Written {
    /// Commits the records of `batch`, but those of the tables in `skip`.
    fn commit(&mut self, batch: &crate::fs::PageBatch, skip: &[crate::fs::Page]) {
        for write in batch.writes.iter().filter(|w| !skip.contains(&w.page())) {
            match write {
                PageWrite::Record(page, key, Some(v)) => {
                    self.0.insert((*page, key.clone()), v.clone());
                }
                PageWrite::Record(page, key, None) => {
                    self.0.remove(&(*page, key.clone()));
                }
                PageWrite::Below(page, key) => self
                    .0
                    .retain(|(p, k), _| p != page || k.as_slice() >= key.as_slice()),
            }
        }
    }
}

impl crate::fs::PageSource for Written {
    fn get(&self, page: crate::fs::Page, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(&(page, key.to_vec())).cloned()
    }

    fn scan(&self, page: crate::fs::Page, from: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) {
        for ((p, k), v) in self.0.range((page, from.to_vec())..) {
            if *p != page || !f(k, v) {
                return;
            }
        }
    }

    fn corrupt(&self, page: crate::fs::Page, key: &[u8]) {
        panic!("{page:?} record {key:?} does not decode");
    }

    fn upto(&self, page: crate::fs::Page) -> Option<Vec<u8>> {
        let stored = self.0.range((page, Vec::new())..);
        let last = stored.take_while(|((p, _), _)| *p == page).last();
        Some(last.map(|((_, k), _)| k.clone()).unwrap_or_default())
    }
}

#[test]
fn a_header_without_sweep_tables_opens_with_them_filled_and_sweeps_like_the_state_it_wrote() {
    use crate::fs::Page;
    use std::sync::Arc;
    let mut s = FsState::new();
    run(&mut s, 1, T0, OpBody::SetRetention { days: 0 });
    let d = mkdir(&mut s, 1, T0 + 10, OpId::ROOT, "d");
    let a = mkfile(&mut s, 1, T0 + 20, d, "a", "x");
    mkfile(&mut s, 1, T0 + 30, d, "b", "y");
    let w = s.plan_write(a, inline("x2"), 7).unwrap();
    run(&mut s, 1, T0 + 40, w);
    let rm = s.plan_unlink(d, "b").unwrap();
    run(&mut s, 1, T0 + 50, rm);
    let batch = s.take_pages();
    let mut src = Written::default();
    src.commit(&batch, &[Page::Removals, Page::Replacements]);
    let legacy = s.encode_old_header(6);

    let mut opened = FsState::open_pages(&legacy, Arc::new(src)).unwrap();
    assert_eq!(opened.encode_snapshot(), s.encode_snapshot());
    assert_eq!(opened.removals.len(), 1, "the removal of b");
    assert!(opened.replacements.len() >= 1, "the write to a");
    let end = Hlc {
        wall_ms: T0 + 100,
        counter: 0,
    };
    let swept = s.purge(end, end);
    assert_eq!((swept.tombstones, swept.files), (1, 1));
    assert!(swept.versions >= 1);
    assert_eq!(opened.purge(end, end), swept);
    assert_eq!(opened.encode_snapshot(), s.encode_snapshot());
}

#[test]
fn a_header_that_held_the_move_log_opens_with_the_log_in_pages_and_undoes_from_them() {
    use crate::fs::Page;
    use std::sync::Arc;
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, T0 + 10, OpId::ROOT, "d");
    mkfile(&mut s, 1, T0 + 20, d, "a", "x");
    mkfile(&mut s, 2, T0 + 30, OpId::ROOT, "b", "y");
    for body in rename(&s, (OpId::ROOT, "b"), (d, "b"), RenameFlags::default()).unwrap() {
        run(&mut s, 2, T0 + 40, body);
    }
    let whole = s.encode_snapshot();
    let batch = s.take_pages();
    let mut src = Written::default();
    src.commit(&batch, &[Page::Log, Page::Removals, Page::Replacements]);
    let legacy = s.encode_old_header(5);

    let mut opened = FsState::open_pages(&legacy, Arc::new(src.clone())).unwrap();
    assert_eq!(opened.encode_snapshot(), whole);
    let batch = opened.take_pages();
    let logged = batch
        .writes
        .iter()
        .filter(|w| matches!(w, PageWrite::Record(Page::Log, _, Some(_))))
        .count();
    assert_eq!(
        logged, 4,
        "two creates, a mkdir and a move, written as log pages"
    );
    src.commit(&batch, &[]);

    let mut reopened = FsState::open_pages(&batch.header, Arc::new(src)).unwrap();
    assert_eq!(reopened.encode_snapshot(), whole);
    // An op older than every logged one undoes and redoes them, read from the pages.
    let older = create(&reopened, d, "c", Kind::File, "z");
    run(&mut reopened, 3, T0 + 5, older.clone());
    run(&mut s, 3, T0 + 5, older);
    assert_eq!(reopened.encode_snapshot(), s.encode_snapshot());
    assert_eq!(names(&reopened, d), names(&s, d));
}

#[test]
fn projections_in_an_earlier_builds_format_are_refused_and_named_for_a_rebuild() {
    let mut s = FsState::new();
    mkfile(&mut s, 1, 10, OpId::ROOT, "a", "x");
    let snapshot = s.encode_snapshot();
    let header = s.take_pages().header;
    assert!(!FsState::must_rebuild(&snapshot));
    assert!(!FsState::must_rebuild(&header));
    let with_version = |bytes: &[u8], version: u32| {
        let mut old = bytes.to_vec();
        old[8..12].copy_from_slice(&version.to_le_bytes());
        assert!(FsState::must_rebuild(&old), "{version}");
        old
    };
    let mut errors = Vec::new();
    for version in [3, 4] {
        let old = with_version(&snapshot, version);
        errors.push(FsState::decode_snapshot(&old).unwrap_err());
    }
    for version in [1, 2, 3] {
        let old = with_version(&header, version);
        errors.push(FsState::open_pages(&old, std::sync::Arc::new(NoPages)).unwrap_err());
    }
    for err in errors {
        assert!(
            err.to_string().contains("rebuild it from the intentions"),
            "{err}"
        );
    }
}

#[test]
fn a_leave_and_a_delete_survive_a_snapshot_and_the_smallest_delete_holds() {
    let mut s = FsState::new();
    run(&mut s, 1, 9, OpBody::Leave { upto: 3 });
    run(&mut s, 2, 12, OpBody::DeleteStore);
    run(&mut s, 3, 11, OpBody::DeleteStore);
    let decoded = FsState::decode_snapshot(&s.encode_snapshot()).unwrap();
    assert_eq!(decoded.left(), s.left());
    assert_eq!(decoded.left().len(), 1);
    let leaver = decoded.left()[0];
    assert_eq!(decoded.revocation_cut(&leaver), Some(3));
    assert!(decoded.has_left(&leaver));
    assert_eq!(decoded.deleted().map(|d| d.hlc.wall_ms), Some(11));
    assert_eq!(decoded.canonical_dump(), s.canonical_dump());
}

#[test]
fn a_snapshot_of_another_format_version_is_refused() {
    let mut s = FsState::new();
    mkfile(&mut s, 1, 10, OpId::ROOT, "a", "x");
    for version in [0u32, 1, 7, u32::MAX] {
        let mut bytes = s.encode_snapshot();
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let err = FsState::decode_snapshot(&bytes).unwrap_err();
        assert!(
            err.to_string().contains(&format!("format {version}")),
            "{err}"
        );
    }
}

#[test]
fn ten_thousand_files_in_one_directory_create_look_up_and_list_quickly() {
    let started = std::time::Instant::now();
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 1, OpId::ROOT, "big");
    for i in 0..10_000u64 {
        let body = s
            .plan_create(
                d,
                &format!("file{i}"),
                Kind::File,
                0o644,
                0,
                0,
                0,
                Content::empty(),
                0,
            )
            .unwrap();
        run(&mut s, 1, 10 + i, body);
    }
    for i in 0..10_000u64 {
        let node = s.lookup(d, &format!("file{i}")).unwrap();
        s.attr(node).unwrap();
    }
    assert_eq!(s.readdir(d).unwrap().len(), 10_000);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_move_into_a_concurrently_removed_directory_is_applied_and_brings_it_back() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    let f = mkfile(&mut s, 1, 11, OpId::ROOT, "f", "x");
    let mv = rename(&s, (OpId::ROOT, "f"), (d, "f"), RenameFlags::default()).unwrap();
    let rm = s.plan_rmdir(OpId::ROOT, "d").unwrap();
    run(&mut s, 1, 20, rm);
    run(&mut s, 2, 21, mv[0].clone());
    assert!(s.exists(d));
    assert_eq!(s.parent(f), Some(d));
    assert_eq!(names(&s, OpId::ROOT), vec!["d"]);
}

#[test]
fn conflict_copies_and_duplicates_of_a_255_byte_name_are_valid_names_that_open() {
    let mut s = with_writer(&"é".repeat(127));
    let long = format!("{}.txt", "n".repeat(251));
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, &long, "base");
    let w1 = s.plan_write(f, inline("mine"), 0).unwrap();
    let w2 = s.plan_write(f, inline("theirs"), 0).unwrap();
    run(&mut s, 2, T0, w2);
    run(&mut s, 1, T0 + 1, w1);
    let dup = create(&s, OpId::ROOT, "x", Kind::File, "dup");
    let OpBody::Create(mut dup) = dup else {
        unreachable!("create plans a Create")
    };
    dup.name = long.clone();
    run(&mut s, 3, 11, OpBody::Create(dup));
    let listed = names(&s, OpId::ROOT);
    assert_eq!(listed.len(), 3, "{listed:?}");
    for n in &listed {
        crate::fs::op::validate_name(n).unwrap();
        let node = s.lookup(OpId::ROOT, n).unwrap();
        s.attr(node).unwrap();
    }
    assert!(listed.iter().any(|n| n.contains("(conflict ")));
}

#[test]
fn a_file_with_more_heads_than_one_op_may_supersede_is_still_written_in_valid_ops() {
    use crate::fs::op::MAX_SUPERSEDES;
    let mut s = FsState::new();
    let f = mkfile(&mut s, 1, 10, OpId::ROOT, "a", "");
    let heads = MAX_SUPERSEDES * 2 + 10;
    let w = s.plan_write(f, inline("x"), 0).unwrap();
    for n in 0..heads {
        run(&mut s, 2, 100 + n as u64, w.clone());
    }
    let body = s.plan_write(f, inline("final"), 0).unwrap();
    let ops = s.bounded(body);
    assert_eq!(ops.len(), 3);
    for (wall, b) in (100_000..).zip(ops) {
        let o = op(wall, b);
        o.validate().unwrap();
        s.apply(key(1), &o);
    }
    assert_eq!(names(&s, OpId::ROOT), vec!["a"]);
    assert_eq!(bytes_of(&s, file_node(&s, OpId::ROOT, "a")), b"final");
}

#[test]
fn an_op_stamped_before_the_purge_point_is_applied_at_that_point_and_counted_late() {
    let mut s = FsState::new();
    let d = mkdir(&mut s, 1, 10, OpId::ROOT, "d");
    let e = mkdir(&mut s, 1, 11, OpId::ROOT, "e");
    let into_d = OpBody::Move {
        entry: e,
        parent: d,
        name: "e".into(),
    };
    run(&mut s, 1, 30, into_d);
    let purged = s.purge(
        Hlc {
            wall_ms: 20,
            counter: 0,
        },
        Hlc::ZERO,
    );
    assert_eq!(
        purged.tree_records, 2,
        "the two Creates; the move at 30 stays"
    );
    assert_eq!(
        purged.applied_ids, 0,
        "a location op's move-log record marks it applied"
    );
    // A move of d into e stamped at 15, before the purge point: a full replay would run
    // it before the move at 30 (which is then skipped as a cycle); late, it runs after
    // what was purged and before the move at 30, with the same outcome here.
    let late = op(
        15,
        OpBody::Move {
            entry: d,
            parent: e,
            name: "d".into(),
        },
    );
    let mut again = FsState::decode_snapshot(&s.encode_snapshot()).unwrap();
    s.apply(key(2), &late);
    again.apply(key(2), &late);
    assert_eq!(s.stats().late, 1);
    assert_eq!(s.canonical_dump(), again.canonical_dump(), "deterministic");
    assert_eq!(names(&s, OpId::ROOT), vec!["e"]);
    assert_eq!(names(&s, e), vec!["d"]);
    assert_eq!(s.purge(Hlc::ZERO, Hlc::ZERO), crate::fs::Purged::default());
}
