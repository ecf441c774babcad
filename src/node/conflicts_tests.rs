//! Tests of `conflicts`, `resolve` and the changes `watch` reports, through a real node
//! (real store, real content store) with a second writer whose intentions are signed
//! here and applied as received ones.

use bytes::Bytes;

use super::*;
use crate::fs::op::{Kind, OpBody, Role};
use crate::fs::Node as FsNode;
use crate::intention::Intention;

/// A runtime (kept alive for the content store), a node "laptop" with store "docs", and
/// a second writer "phone" of that store.
fn open(dir: &Path) -> (tokio::runtime::Runtime, Node, Store, Identity) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = Node::open(dir, Some("laptop"), rt.handle().clone()).unwrap();
    let store = node.create_store("docs").unwrap();
    let phone = Identity::generate();
    store
        .write(|tx| {
            tx.push(OpBody::SetMember {
                key: phone.public(),
                role: Role::Writer,
                display_name: "phone".into(),
                invite: None,
            })?;
            Ok(())
        })
        .unwrap();
    store.flush().unwrap();
    (rt, node, store, phone)
}

fn inline(s: &str) -> Content {
    Content::Inline(Bytes::copy_from_slice(s.as_bytes()))
}

/// Pushes `body` as this node's own intention and waits for it to be durable.
fn local(store: &Store, body: impl FnOnce(&FsState) -> Result<OpBody, FsError>) -> OpId {
    let id = store
        .write(|tx| {
            let b = body(tx.state())?;
            Ok(tx.push(b)?)
        })
        .unwrap();
    store.flush().unwrap();
    id
}

/// Applies one op signed by `who`, as received, after everything the store holds.
fn remote(store: &Store, who: &Identity, body: OpBody) -> Hash {
    let log = store.witness(1, usize::MAX).unwrap();
    let deps: Vec<Hash> = log
        .intentions
        .last()
        .and_then(Intention::peek)
        .map(|(_, h)| h)
        .into_iter()
        .collect();
    let prev = log
        .intentions
        .iter()
        .filter_map(|b| {
            let author = crate::intention::stored(b.clone()).ok()?.author;
            (author == who.public()).then(|| Intention::peek(b).map(|(_, h)| h))?
        })
        .next_back();
    let op = Op {
        hlc: Hlc {
            wall_ms: crate::hlc::now_ms() + 50,
            counter: 0,
        },
        body,
    };
    let i = Intention::create(who, store.id(), prev, deps, vec![op]).unwrap();
    store.apply_remote(i.bytes).unwrap();
    store.flush().unwrap();
    i.hash
}

fn file_at(store: &Store, name: &str) -> FileId {
    store.read(|s| s.lookup(OpId::ROOT, name).unwrap().file())
}

fn text(store: &Store, node: FsNode) -> String {
    let view = store.read(|s| s.content(node)).unwrap();
    let mut out = Vec::new();
    for p in view.pieces {
        match p {
            Content::Inline(b) => out.extend_from_slice(&b),
            Content::Manifest { .. } => panic!("tests write inline content"),
        }
    }
    String::from_utf8(out).unwrap()
}

/// The names at the store root.
fn listing(store: &Store) -> Vec<String> {
    store.read(|s| {
        s.readdir(OpId::ROOT)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    })
}

/// "docs/a.txt" created "base", then rewritten concurrently: "mine" here, "theirs!" by
/// the phone (which had not seen "mine").
fn conflicted(store: &Store, phone: &Identity) -> FileId {
    local(store, |s| {
        s.plan_create(
            OpId::ROOT,
            "a.txt",
            Kind::File,
            0o644,
            1000,
            1000,
            0,
            inline("base"),
            0,
        )
    });
    let file = file_at(store, "a.txt");
    local(store, |s| s.plan_write(file, inline("mine"), 0));
    remote(
        store,
        phone,
        OpBody::Write {
            file,
            supersedes: vec![file],
            content: inline("theirs!"),
            mtime_ns: 0,
        },
    );
    file
}

#[test]
fn a_concurrent_write_is_listed_with_both_versions_authors_sizes_and_the_copy_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store, phone) = open(tmp.path());
    assert!(node.conflicts(None).unwrap().is_empty());
    conflicted(&store, &phone);
    let all = node.conflicts(None).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    let c = &all[0];
    assert_eq!(c.path, "docs/a.txt");
    assert_eq!(c.versions.len(), 2);
    let (winner, other) = (&c.versions[0], &c.versions[1]);
    assert!(winner.winner && !other.winner);
    // The phone's write is stamped later: it wins.
    assert_eq!(winner.author_name, "phone");
    assert_eq!(winner.size, 7);
    assert_eq!(winner.shown, "docs/a.txt");
    assert_eq!(other.author(), node.identity().public());
    assert_eq!(other.author_name, "laptop");
    assert_eq!(other.size, 4);
    assert_eq!(other.id, Hash::of(b"mine"));
    assert!(
        other.shown.starts_with("docs/a (conflict laptop "),
        "{other:?}"
    );
    let copy = other.shown.strip_prefix("docs/").unwrap();
    assert!(listing(&store).contains(&copy.to_string()));
    assert_eq!(node.conflicts(Some("docs")).unwrap(), all);
    assert!(matches!(
        node.conflicts(Some("nope")),
        Err(NodeError::UnknownStore(_))
    ));
    node.shutdown().unwrap();
}

#[test]
fn each_keep_mode_leaves_one_file_with_the_kept_content_in_one_intention() {
    for (keep, expect) in [
        (Keep::Mine, "mine"),
        (Keep::Theirs, "theirs!"),
        (
            Keep::Version(Hash::of(b"mine").to_hex()[..12].to_string()),
            "mine",
        ),
        (Keep::Both, "theirs!"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node, store, phone) = open(tmp.path());
        let file = conflicted(&store, &phone);
        let copy = node.conflicts(None).unwrap()[0].versions[1].shown.clone();
        let before = store.witness(u64::MAX, 0).unwrap().len;
        let done = node.resolve("docs/a.txt", &keep).unwrap();
        assert_eq!(
            store.witness(u64::MAX, 0).unwrap().len,
            before + 1,
            "{keep:?}"
        );
        assert_eq!(done.path, "docs/a.txt");
        assert_eq!(done.kept, Hash::of(expect.as_bytes()), "{keep:?}");
        assert_eq!(done.dismissed, 1);
        assert_eq!(
            text(&store, FsNode::Entry { entry: file, file }),
            expect,
            "{keep:?}"
        );
        assert!(node.conflicts(None).unwrap().is_empty(), "{keep:?}");
        // Keeping the version the name did not show is a content change: a new mtime.
        let mtime = store
            .read(|s| s.attr(FsNode::Entry { entry: file, file }))
            .unwrap()
            .mtime_ns;
        assert_eq!(mtime != 0, expect == "mine", "{keep:?}: mtime {mtime}");
        if keep == Keep::Both {
            // The other version is a regular file under its copy's name.
            assert_eq!(done.copies, vec![copy.clone()]);
            let name = copy.strip_prefix("docs/").unwrap();
            assert_eq!(listing(&store), vec![name.to_string(), "a.txt".to_string()]);
            let node_of = store.read(|s| s.lookup(OpId::ROOT, name).unwrap());
            assert!(matches!(node_of, FsNode::Entry { .. }));
            assert_eq!(text(&store, node_of), "mine");
        } else {
            assert!(done.copies.is_empty());
            assert_eq!(listing(&store), vec!["a.txt".to_string()], "{keep:?}");
        }
        node.shutdown().unwrap();
    }
}

#[test]
fn a_conflict_copy_path_resolves_the_same_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store, phone) = open(tmp.path());
    conflicted(&store, &phone);
    let copy = node.conflicts(None).unwrap()[0].versions[1].shown.clone();
    let done = node.resolve(&copy, &Keep::Mine).unwrap();
    assert_eq!(done.path, "docs/a.txt");
    assert_eq!(listing(&store), vec!["a.txt".to_string()]);
    node.shutdown().unwrap();
}

#[test]
fn bad_keeps_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store, phone) = open(tmp.path());
    local(&store, |s| {
        s.plan_create(
            OpId::ROOT,
            "solo.txt",
            Kind::File,
            0o644,
            0,
            0,
            0,
            inline("x"),
            0,
        )
    });
    conflicted(&store, &phone);
    let dump = store.read(|s| s.canonical_dump());
    let before = store.witness(u64::MAX, 0).unwrap().len;
    let cases: [(&str, Keep); 5] = [
        ("docs/solo.txt", Keep::Mine),
        ("docs/a.txt", Keep::Version("zz".into())),
        ("docs/a.txt", Keep::Version("00000000".into())),
        ("docs/missing", Keep::Mine),
        ("nostore/a.txt", Keep::Theirs),
    ];
    for (path, keep) in cases {
        let err = node.resolve(path, &keep).unwrap_err();
        let ok = matches!(
            (&keep, &err),
            (
                Keep::Mine,
                NodeError::Conflict(ConflictError::NoConflict(_))
            ) | (
                Keep::Version(_),
                NodeError::Restore(RestoreError::BadVersion(_))
            ) | (
                Keep::Version(_),
                NodeError::Restore(RestoreError::UnknownVersion { .. })
            ) | (Keep::Mine, NodeError::Path { .. })
                | (Keep::Theirs, NodeError::UnknownStore(_))
        );
        assert!(ok, "{path} {keep:?}: {err}");
        assert_eq!(err.to_string().lines().count(), 1, "{err}");
    }
    store.flush().unwrap();
    assert_eq!(store.read(|s| s.canonical_dump()), dump);
    assert_eq!(store.witness(u64::MAX, 0).unwrap().len, before);
    node.shutdown().unwrap();
}

#[test]
fn changes_name_the_paths_old_paths_authors_and_intentions_of_local_and_received_ops() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store, phone) = open(tmp.path());
    let from = node.watch_start(&store).unwrap();
    assert_eq!(node.changes(&store, from).unwrap(), (vec![], from));
    let dir = local(&store, |s| {
        s.plan_create(
            OpId::ROOT,
            "d",
            Kind::Dir,
            0o755,
            0,
            0,
            0,
            Content::empty(),
            0,
        )
    });
    let file = local(&store, |s| {
        s.plan_create(dir, "f", Kind::File, 0o644, 0, 0, 0, inline("1"), 0)
    });
    local(&store, |s| s.plan_write(file, inline("22"), 0));
    // `echo 333 > f`: a truncate and a write, sealed in one intention, are one change.
    store
        .write(|tx| {
            for data in ["", "333"] {
                let body = tx.state().plan_write(file, inline(data), 0)?;
                tx.push(body)?;
            }
            Ok(())
        })
        .unwrap();
    store.flush().unwrap();
    let moved = remote(
        &store,
        &phone,
        OpBody::Move {
            entry: file,
            parent: OpId::ROOT,
            name: "g".into(),
        },
    );
    local(&store, |s| s.plan_unlink(OpId::ROOT, "g"));
    local(&store, |s| s.plan_rmdir(OpId::ROOT, "d"));
    let (changes, next) = node.changes(&store, from).unwrap();
    assert!(next > from);
    let seen: Vec<(&str, &str, Option<&str>, &str)> = changes
        .iter()
        .map(|c| {
            (
                c.op,
                c.path.as_str(),
                c.old_path.as_deref(),
                c.author_name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("create", "docs/d", None, "laptop"),
            ("create", "docs/d/f", None, "laptop"),
            ("write", "docs/d/f", None, "laptop"),
            ("write", "docs/d/f", None, "laptop"),
            ("move", "docs/g", Some("docs/d/f"), "phone"),
            ("remove", "docs/g", None, "laptop"),
            ("remove", "docs/d", None, "laptop"),
        ]
    );
    assert_eq!(changes[4].intention, moved);
    assert_eq!(changes[4].author, phone.public());
    assert_eq!(node.changes(&store, next).unwrap(), (vec![], next));
    node.shutdown().unwrap();
}

#[test]
fn keep_theirs_with_two_other_versions_is_ambiguous_and_a_version_id_settles_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rt, node, store, phone) = open(tmp.path());
    let file = conflicted(&store, &phone);
    remote(
        &store,
        &phone,
        OpBody::Write {
            file,
            supersedes: vec![file],
            content: inline("third"),
            mtime_ns: 0,
        },
    );
    let versions = &node.conflicts(None).unwrap()[0].versions;
    assert_eq!(versions.len(), 3, "{versions:?}");
    let err = node.resolve("docs/a.txt", &Keep::Theirs).unwrap_err();
    assert!(
        matches!(
            err,
            NodeError::Conflict(ConflictError::Ambiguous { count: 2, .. })
        ),
        "{err}"
    );
    let third = Hash::of(b"third").to_hex();
    let done = node
        .resolve("docs/a.txt", &Keep::Version(third[..8].into()))
        .unwrap();
    assert_eq!(done.dismissed, 2);
    assert_eq!(text(&store, FsNode::Entry { entry: file, file }), "third");
    assert_eq!(listing(&store), vec!["a.txt".to_string()]);
    node.shutdown().unwrap();
}
