//! Tests of the sweep of `FsState::purge`: tombstones, deleted files and superseded
//! versions forgotten below the settled point, what retention keeps, the late rule for
//! ops naming what was forgotten, and readdir over many deleted names.

use std::time::Instant;

use bytes::Bytes;

use crate::cas::Content;
use crate::fs::op::{Create, Kind, Op, OpBody, MS_PER_DAY};
use crate::fs::{FsError, FsState, Node, SWEEP_BATCH};
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{FileId, OpId};

/// 2026-11-21 10:15:02 UTC in milliseconds.
const T0: u64 = 1_795_256_102_000;

fn at(wall_ms: u64) -> Hlc {
    Hlc {
        wall_ms,
        counter: 0,
    }
}

fn key(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

fn inline(s: &str) -> Content {
    Content::Inline(Bytes::copy_from_slice(s.as_bytes()))
}

/// A state that records every op it applies, so a full replay can be compared.
#[derive(Default)]
struct Log {
    s: FsState,
    ops: Vec<(PublicKey, Op)>,
}

impl Log {
    /// Applies `body` by `author` at `wall` ms; returns its id.
    fn run(&mut self, author: u8, wall: u64, body: OpBody) -> OpId {
        let op = Op {
            hlc: at(wall),
            body,
        };
        self.s.apply(key(author), &op);
        self.ops.push((key(author), op.clone()));
        op.id(key(author))
    }

    fn create(&mut self, wall: u64, parent: FileId, name: &str, kind: Kind) -> FileId {
        let body = self
            .s
            .plan_create(parent, name, kind, 0o644, 1, 2, 0, inline(name), 7)
            .expect("a free name");
        self.run(1, wall, body)
    }

    fn unlink(&mut self, wall: u64, parent: FileId, name: &str) {
        let body = self.s.plan_unlink(parent, name).expect("a file to unlink");
        self.run(1, wall, body);
    }

    fn rmdir(&mut self, wall: u64, parent: FileId, name: &str) {
        let body = self.s.plan_rmdir(parent, name).expect("an empty directory");
        self.run(1, wall, body);
    }

    fn write(&mut self, wall: u64, file: FileId, data: &str) {
        let body = self.s.plan_write(file, inline(data), 7).expect("a file");
        self.run(1, wall, body);
    }

    /// A fresh state fed every op recorded: the full replay.
    fn replay(&self) -> FsState {
        let mut s = FsState::new();
        for (a, o) in &self.ops {
            s.apply(*a, o);
        }
        s
    }
}

/// A store keeping no superseded or deleted version (retention 0).
fn no_retention() -> Log {
    let mut l = Log::default();
    l.run(1, T0, OpBody::SetRetention { days: 0 });
    l
}

fn raw_names(s: &FsState, dir: FileId) -> Vec<String> {
    s.tree.children(dir).into_iter().map(|(n, _)| n).collect()
}

fn names(s: &FsState, dir: FileId) -> Vec<String> {
    let list = s.readdir(dir).expect("a directory");
    list.into_iter().map(|(n, _)| n).collect()
}

#[test]
fn a_settled_deleted_file_leaves_the_directory_index_and_the_tree_is_unchanged() {
    let mut l = no_retention();
    l.create(T0 + 1, OpId::ROOT, "keep", Kind::File);
    let gone = l.create(T0 + 2, OpId::ROOT, "gone", Kind::File);
    l.unlink(T0 + 3, OpId::ROOT, "gone");
    assert_eq!(raw_names(&l.s, OpId::ROOT), vec!["gone", "keep"]);
    let purged = l.s.purge(at(T0 + 10), at(T0 + 10));
    assert_eq!((purged.tombstones, purged.files), (1, 1));
    assert_eq!(raw_names(&l.s, OpId::ROOT), vec!["keep"]);
    assert!(l.s.file(gone).is_none());
    assert_eq!(l.s.lookup(OpId::ROOT, "gone"), Err(FsError::NotFound));
    assert_eq!(
        l.s.lookup_any(OpId::ROOT, "gone", false),
        Err(FsError::NotFound)
    );
    assert!(l.s.removed_under(OpId::ROOT).is_empty());
    assert_eq!(l.s.canonical_dump(), l.replay().canonical_dump());
}

#[test]
fn rows_stores_wrote_for_own_names_and_location_ops_read_and_purge_like_the_lean_ones() {
    let mut l = no_retention();
    l.create(T0 + 1, OpId::ROOT, "keep", Kind::File);
    let gone = l.create(T0 + 2, OpId::ROOT, "gone", Kind::File);
    // Before, a file's own name had a row in the file index and every applied op one
    // in the applied ids, the move log's included.
    let mut former = l.s.clone();
    former.tree.by_file.get_or_default(&gone).add(gone);
    former.applied.insert(gone, ());
    assert_eq!(former.tree.entries_of(gone), l.s.tree.entries_of(gone));
    assert!(
        l.s.tree.by_file.get(&gone).is_none(),
        "no row for an own name"
    );
    let create = l.ops[2].clone();
    former.apply(create.0, &create.1);
    assert_eq!(
        former.canonical_dump(),
        l.s.canonical_dump(),
        "applied once"
    );
    l.unlink(T0 + 3, OpId::ROOT, "gone");
    let unlink = l.ops.last().expect("the unlink").clone();
    former.apply(unlink.0, &unlink.1);
    let purged = l.s.purge(at(T0 + 10), at(T0 + 10));
    let purged_former = former.purge(at(T0 + 10), at(T0 + 10));
    assert_eq!(purged_former.applied_ids, purged.applied_ids + 1);
    assert_eq!((purged_former.tombstones, purged_former.files), (1, 1));
    assert!(
        former.tree.by_file.get(&gone).is_none(),
        "the row went with the name"
    );
    assert_eq!(former.canonical_dump(), l.s.canonical_dump());
    assert_eq!(l.s.canonical_dump(), l.replay().canonical_dump());
}

#[test]
fn a_deleted_file_keeps_its_tombstone_while_retained_and_loses_it_after() {
    let mut l = Log::default();
    l.create(T0, OpId::ROOT, "old", Kind::File);
    l.unlink(T0 + 1, OpId::ROOT, "old");
    let day = at(T0 + MS_PER_DAY);
    assert_eq!(l.s.purge(day, day).tombstones, 0, "retained 30 days");
    let removed = l.s.removed_under(OpId::ROOT);
    assert_eq!(removed.len(), 1, "history --deleted still finds it");
    assert!(matches!(
        l.s.lookup_any(OpId::ROOT, "old", false),
        Ok(crate::fs::Found::Deleted { .. })
    ));
    let later = at(T0 + 1 + 30 * MS_PER_DAY);
    assert_eq!(l.s.purge(later, later).tombstones, 1, "retention over");
    assert!(l.s.removed_under(OpId::ROOT).is_empty());
}

#[test]
fn a_removal_not_settled_keeps_its_tombstone_even_below_the_frontier() {
    let mut l = no_retention();
    l.create(T0 + 1, OpId::ROOT, "f", Kind::File);
    l.unlink(T0 + 5, OpId::ROOT, "f");
    // Some member may not have the removal yet: settled stops before it.
    let purged = l.s.purge(at(T0 + 10), at(T0 + 5));
    assert_eq!(purged.tombstones, 0);
    assert_eq!(raw_names(&l.s, OpId::ROOT), vec!["f"]);
    assert_eq!(l.s.purge(at(T0 + 10), at(T0 + 6)).tombstones, 1);
}

#[test]
fn a_deleted_directory_is_forgotten_with_its_deleted_children() {
    let mut l = no_retention();
    let d = l.create(T0 + 1, OpId::ROOT, "d", Kind::Dir);
    let e = l.create(T0 + 2, d, "e", Kind::Dir);
    l.create(T0 + 3, e, "x", Kind::File);
    l.unlink(T0 + 4, e, "x");
    l.rmdir(T0 + 5, d, "e");
    l.rmdir(T0 + 6, OpId::ROOT, "d");
    let purged = l.s.purge(at(T0 + 10), at(T0 + 10));
    assert_eq!((purged.tombstones, purged.files), (3, 3));
    assert!(raw_names(&l.s, OpId::ROOT).is_empty());
    assert!(l.s.tree.subdirs(OpId::ROOT).is_empty());
    assert_eq!(l.s.tree.len(), 0);
    assert_eq!(l.s.canonical_dump(), l.replay().canonical_dump());
}

/// A store where author 2 created `c` in directory `d` while author 1, not having seen
/// it, removed `d`, swept once since: `d` stays, holding `c`.
fn removed_dir_holding_a_concurrent_child() -> (Log, FileId) {
    let mut l = no_retention();
    let d = l.create(T0 + 1, OpId::ROOT, "d", Kind::Dir);
    let child =
        l.s.plan_create(d, "c", Kind::File, 0o644, 1, 2, 0, inline("c"), 7)
            .expect("a free name");
    l.rmdir(T0 + 2, OpId::ROOT, "d");
    l.run(2, T0 + 3, child);
    assert_eq!(names(&l.s, OpId::ROOT), vec!["d"], "d holds a live child");
    assert_eq!(l.s.purge(at(T0 + 4), at(T0 + 4)).files, 0, "d is not empty");
    (l, d)
}

#[test]
fn a_deleted_directory_kept_by_a_concurrent_child_is_forgotten_when_a_later_sweep_forgets_the_child(
) {
    let (mut l, d) = removed_dir_holding_a_concurrent_child();
    l.unlink(T0 + 5, d, "c");
    let second = l.s.purge(at(T0 + 10), at(T0 + 10));
    assert_eq!((second.tombstones, second.files), (2, 2), "c, then d");
    assert_eq!(l.s.tree.len(), 0);
    assert_eq!(l.s.canonical_dump(), l.replay().canonical_dump());
}

#[test]
fn a_deleted_directory_kept_by_a_concurrent_child_is_forgotten_once_the_child_moves_out() {
    let (mut l, d) = removed_dir_holding_a_concurrent_child();
    // No name is deleted now: the move alone leaves d empty.
    let out =
        l.s.plan_rename(d, "c", OpId::ROOT, "c", crate::fs::RenameFlags::default())
            .expect("a rename");
    for body in out {
        l.run(2, T0 + 5, body);
    }
    assert_eq!(names(&l.s, OpId::ROOT), vec!["c"]);
    let purged = l.s.purge(at(T0 + 10), at(T0 + 10));
    assert_eq!((purged.tombstones, purged.files), (1, 1), "d");
    assert!(l.s.file(d).is_none());
    assert_eq!(l.s.canonical_dump(), l.replay().canonical_dump());
}

#[test]
fn a_deleted_directory_emptied_by_an_op_not_settled_stays_for_an_author_that_saw_it_full() {
    let mut l = no_retention();
    let d = l.create(T0 + 1, OpId::ROOT, "d", Kind::Dir);
    let rmdir = l.s.plan_rmdir(OpId::ROOT, "d").expect("an empty directory");
    let child =
        l.s.plan_create(d, "c", Kind::File, 0o644, 1, 2, 0, inline("c"), 7)
            .expect("a free name");
    l.run(2, T0 + 3, child);
    // Author 1 removed d before c arrived there; it arrives here after c.
    l.run(1, T0 + 2, rmdir);
    // Author 3 has seen the removal and c, but not the move that takes c out.
    let unaware =
        l.s.plan_create(d, "e", Kind::File, 0o644, 1, 2, 0, inline("e"), 7)
            .expect("d is visible, holding c");
    let out =
        l.s.plan_rename(d, "c", OpId::ROOT, "c", crate::fs::RenameFlags::default())
            .expect("a rename");
    for body in out {
        l.run(2, T0 + 6, body);
    }
    // The removal is settled, the move that emptied d is not.
    let purged = l.s.purge(at(T0 + 6), at(T0 + 6));
    assert_eq!(purged.files, 0, "d was emptied by an op not settled");
    l.run(3, T0 + 7, unaware);
    assert_eq!(names(&l.s, d), vec!["e"]);
    assert_eq!(l.s.canonical_dump(), l.replay().canonical_dump());
    // Once the move is settled and e removed, d goes.
    l.unlink(T0 + 8, d, "e");
    assert_eq!(l.s.purge(at(T0 + 10), at(T0 + 10)).files, 2, "e, then d");
    assert!(l.s.file(d).is_none());
}

#[test]
fn a_file_with_a_live_name_keeps_it_and_loses_only_its_deleted_one() {
    let mut l = no_retention();
    let f = l.create(T0 + 1, OpId::ROOT, "a", Kind::File);
    let link = l.s.plan_link(f, OpId::ROOT, "b").expect("a free name");
    l.run(1, T0 + 2, link);
    l.unlink(T0 + 3, OpId::ROOT, "a");
    let purged = l.s.purge(at(T0 + 10), at(T0 + 10));
    assert_eq!(purged.tombstones, 0, "the file lives on: its names stay");
    assert_eq!(names(&l.s, OpId::ROOT), vec!["b"]);
    assert_eq!(l.s.canonical_dump(), l.replay().canonical_dump());
}

#[test]
fn superseded_versions_of_a_settled_file_are_forgotten_and_its_content_stays() {
    let mut l = Log::default();
    let f = l.create(T0 + 1, OpId::ROOT, "f", Kind::File);
    for (i, data) in ["one", "two", "three"].into_iter().enumerate() {
        l.write(T0 + 2 + i as u64, f, data);
    }
    assert_eq!(l.s.file(f).expect("held").groups.len(), 4);
    let purged = l.s.purge(at(T0 + 4), at(T0 + 4));
    assert_eq!(purged.versions, 0, "the last write is not settled yet");
    let purged = l.s.purge(at(T0 + 10), at(T0 + 10));
    assert_eq!(purged.versions, 3);
    assert_eq!(l.s.file(f).expect("held").groups.len(), 1);
    let node = l.s.lookup(OpId::ROOT, "f").expect("visible");
    assert_eq!(
        l.s.content(node).expect("content").pieces,
        vec![inline("three")]
    );
    assert_eq!(l.s.canonical_dump(), l.replay().canonical_dump());
}

#[test]
fn replicas_that_purged_at_different_points_show_the_same_tree() {
    let mut l = no_retention();
    let mut one = FsState::new();
    let mut two = FsState::new();
    let d = l.create(T0 + 1, OpId::ROOT, "d", Kind::Dir);
    let f = l.create(T0 + 2, d, "f", Kind::File);
    l.create(T0 + 3, d, "g", Kind::File);
    l.write(T0 + 4, f, "v2");
    l.unlink(T0 + 5, d, "g");
    l.write(T0 + 6, f, "v3");
    let cuts_one = [3, 6];
    let cuts_two = [5];
    for (i, (a, o)) in l.ops.iter().enumerate() {
        for (s, cuts) in [(&mut one, &cuts_one[..]), (&mut two, &cuts_two[..])] {
            if cuts.contains(&i) {
                s.purge(o.hlc, o.hlc);
            }
            s.apply(*a, o);
        }
    }
    let end = at(T0 + 100);
    one.purge(end, end);
    assert_eq!(one.canonical_dump(), two.canonical_dump());
    assert_eq!(one.canonical_dump(), l.replay().canonical_dump());
    assert_eq!(
        FsState::decode_snapshot(&one.encode_snapshot())
            .expect("decodes")
            .canonical_dump(),
        two.canonical_dump()
    );
}

#[test]
fn a_late_write_to_a_swept_file_survives_at_the_root() {
    let mut l = no_retention();
    let d = l.create(T0 + 1, OpId::ROOT, "d", Kind::Dir);
    let f = l.create(T0 + 2, d, "f", Kind::File);
    l.unlink(T0 + 3, d, "f");
    l.rmdir(T0 + 4, OpId::ROOT, "d");
    assert_eq!(l.s.purge(at(T0 + 10), at(T0 + 10)).files, 2);
    // A member silent past the horizon wrote to f, and created a file in d, before it
    // learnt of the removals.
    let late_write = Op {
        hlc: at(T0 + 5),
        body: OpBody::Write {
            file: f,
            supersedes: vec![f],
            content: inline("late"),
            mtime_ns: 9,
        },
    };
    l.s.apply(key(2), &late_write);
    let create = Create {
        parent: d,
        name: "new".into(),
        kind: Kind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        mtime_ns: 9,
        content: inline("new"),
    };
    l.s.apply(
        key(2),
        &Op {
            hlc: at(T0 + 6),
            body: OpBody::Create(create),
        },
    );
    assert_eq!(l.s.late(), 2, "both are late");
    let shown = names(&l.s, OpId::ROOT);
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(shown.contains(&"new".to_string()));
    let recovered = shown
        .iter()
        .find(|n| n.starts_with("recovered "))
        .expect("the write survives");
    let node = l.s.lookup(OpId::ROOT, recovered).expect("visible");
    assert_eq!(node.file(), f);
    assert_eq!(
        l.s.content(node).expect("content").pieces,
        vec![inline("late")]
    );
    let again = FsState::decode_snapshot(&l.s.encode_snapshot()).expect("decodes");
    assert_eq!(again.canonical_dump(), l.s.canonical_dump());
}

/// Measures readdir of a directory that held 10,000 names now deleted, before and after
/// the sweep forgets them (printed, not asserted: `cargo test --release --lib
/// readdir_over_ten_thousand -- --nocapture`).
#[test]
fn readdir_over_ten_thousand_deleted_names_before_and_after_the_sweep() {
    const DELETED: u64 = 10_000;
    let mut l = no_retention();
    let d = l.create(T0 + 1, OpId::ROOT, "d", Kind::Dir);
    for i in 0..DELETED {
        let name = format!("f{i:05}");
        l.create(T0 + 10 + 2 * i, d, &name, Kind::File);
        l.unlink(T0 + 11 + 2 * i, d, &name);
    }
    l.create(T0 + 10 + 2 * DELETED, d, "live", Kind::File);
    let time = |s: &FsState| {
        let start = Instant::now();
        const ROUNDS: u32 = 20;
        for _ in 0..ROUNDS {
            assert_eq!(names(s, d), vec!["live"]);
        }
        start.elapsed() / ROUNDS
    };
    let before = time(&l.s);
    let end = at(T0 + 20 + 2 * DELETED);
    let start = Instant::now();
    // Each purge takes at most a batch of due rows and says whether more are due.
    let mut calls = Vec::new();
    loop {
        let purged = l.s.purge(end, end);
        calls.push((purged.tombstones, purged.files, purged.behind));
        if !purged.behind {
            break;
        }
    }
    let sweep = start.elapsed();
    let batches = (DELETED as usize).div_ceil(SWEEP_BATCH);
    assert_eq!(calls.len(), batches, "{calls:?}");
    for (i, (tombstones, files, behind)) in calls.iter().enumerate() {
        let rows = SWEEP_BATCH.min(DELETED as usize - i * SWEEP_BATCH);
        assert_eq!(
            (*tombstones, *files, *behind),
            (rows, rows, i + 1 < batches)
        );
    }
    let after = time(&l.s);
    println!(
        "readdir of 1 live name beside {DELETED} deleted ones: {before:?} before the sweep, \
         {after:?} after; the sweep took {sweep:?}"
    );
    assert!(matches!(l.s.lookup(d, "live"), Ok(Node::Entry { .. })));
}
