//! Property tests: random concurrent histories by several authors, delivered to fresh
//! replicas in random causal orders, must converge without cycles or lost writes. The
//! canonical dumps compared hold every visible node's attributes, so directory mtimes
//! and ctimes (moved by creates, links, renames, removals and explicit times) must
//! converge too, and survive a purge (and a sweep of tombstones and superseded versions)
//! at any frontier.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use proptest::prelude::*;

use crate::cas::Content;
use crate::fs::op::{Kind, Op, OpBody, Role, SetMeta};
use crate::fs::{FsState, FsStats, Node, RenameFlags};
use crate::hlc::{Clock, Hlc};
use crate::identity::PublicKey;
use crate::ids::{FileId, OpId};

const AUTHORS: usize = 3;
const NAMES: [&str; 4] = ["a", "b", "c.txt", ".d"];
/// Per-author clock skew in ms, so wall order and causal order disagree sometimes.
const SKEW: [u64; AUTHORS] = [0, 7, 3];

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

#[derive(Clone, Debug)]
enum Act {
    CreateFile {
        dir: usize,
        name: usize,
    },
    CreateDir {
        dir: usize,
        name: usize,
    },
    Write {
        node: usize,
    },
    Append {
        node: usize,
    },
    Rename {
        node: usize,
        dir: usize,
        name: usize,
        flags: u8,
    },
    Unlink {
        node: usize,
    },
    Rmdir {
        node: usize,
    },
    Link {
        node: usize,
        dir: usize,
        name: usize,
    },
    Meta {
        node: usize,
        mode: u32,
    },
    Xattr {
        node: usize,
        remove: bool,
    },
    /// The replica's author leaves (at a made-up chain seq: the store checks it).
    Leave {
        upto: u64,
    },
    /// The store is deleted for everyone (an admin's op: the store checks that).
    Delete,
    /// A snapshot is recorded under one of a few labels, or dropped.
    Snapshot {
        label: u8,
        drop: bool,
    },
}

#[derive(Clone, Debug)]
enum Step {
    Local(usize, Act),
    Sync(usize, usize),
}

fn act() -> impl Strategy<Value = Act> {
    let i = || 0..64usize;
    prop_oneof![
        3 => (i(), i()).prop_map(|(dir, name)| Act::CreateFile { dir, name }),
        2 => (i(), i()).prop_map(|(dir, name)| Act::CreateDir { dir, name }),
        3 => i().prop_map(|node| Act::Write { node }),
        3 => i().prop_map(|node| Act::Append { node }),
        4 => (i(), i(), i(), 0..4u8)
            .prop_map(|(node, dir, name, flags)| Act::Rename { node, dir, name, flags }),
        2 => i().prop_map(|node| Act::Unlink { node }),
        1 => i().prop_map(|node| Act::Rmdir { node }),
        1 => (i(), i(), i()).prop_map(|(node, dir, name)| Act::Link { node, dir, name }),
        1 => (i(), 0..0o1000u32).prop_map(|(node, mode)| Act::Meta { node, mode }),
        1 => (i(), any::<bool>()).prop_map(|(node, remove)| Act::Xattr { node, remove }),
        1 => (1..50u64).prop_map(|upto| Act::Leave { upto }),
        1 => Just(Act::Delete),
        1 => (0..3u8, any::<bool>()).prop_map(|(label, drop)| Act::Snapshot { label, drop }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..AUTHORS, act()).prop_map(|(a, act)| Step::Local(a, act)),
        2 => (0..AUTHORS, 0..AUTHORS).prop_map(|(a, b)| Step::Sync(a, b)),
    ]
}

fn author(i: usize) -> PublicKey {
    PublicKey([i as u8 + 1; 32])
}

struct Replica {
    author: PublicKey,
    state: FsState,
    clock: Clock,
    known: HashSet<OpId>,
    order: Vec<usize>,
}

struct World {
    replicas: Vec<Replica>,
    ops: Vec<(PublicKey, Op)>,
    /// For each op, the ids its author had applied when it planned it.
    pasts: Vec<HashSet<OpId>>,
    now: u64,
}

/// The visible tree of a replica: directories and (parent, name, node) triples.
fn view(s: &FsState) -> (Vec<FileId>, Vec<(FileId, String, Node)>) {
    let mut dirs = vec![OpId::ROOT];
    let mut nodes = Vec::new();
    let mut i = 0;
    while i < dirs.len() {
        let d = dirs[i];
        for (name, node) in s.readdir(d).unwrap() {
            if let Node::Entry { file, .. } = node {
                if s.attr(node).unwrap().kind == Kind::Dir {
                    dirs.push(file);
                }
            }
            nodes.push((d, name, node));
        }
        i += 1;
    }
    (dirs, nodes)
}

impl World {
    fn new() -> Self {
        let mut w = World {
            replicas: (0..AUTHORS)
                .map(|i| Replica {
                    author: author(i),
                    state: FsState::new(),
                    clock: Clock::new(crate::hlc::Hlc::ZERO),
                    known: HashSet::new(),
                    order: Vec::new(),
                })
                .collect(),
            ops: Vec::new(),
            pasts: Vec::new(),
            now: 1_000_000,
        };
        // Retention 0, so that a purge may sweep every settled tombstone and version.
        w.emit(
            0,
            vec![
                OpBody::SetMember {
                    key: author(0),
                    role: Role::Admin,
                    display_name: "alice".into(),
                    invite: None,
                },
                OpBody::SetRetention { days: 0 },
            ],
        );
        w
    }

    fn emit(&mut self, r: usize, bodies: Vec<OpBody>) {
        for body in bodies {
            self.now += 1;
            let rep = &mut self.replicas[r];
            let op = Op {
                hlc: rep.clock.tick(self.now + SKEW[r]),
                body,
            };
            rep.state.apply(rep.author, &op);
            self.pasts.push(rep.known.clone());
            rep.known.insert(op.id(rep.author));
            rep.order.push(self.ops.len());
            self.ops.push((rep.author, op));
        }
    }

    fn sync(&mut self, from: usize, to: usize) {
        let order = self.replicas[from].order.clone();
        let rep = &mut self.replicas[to];
        for i in order {
            let (a, op) = &self.ops[i];
            if rep.known.insert(op.id(*a)) {
                rep.state.apply(*a, op);
                rep.clock.observe(op.hlc);
                rep.order.push(i);
            }
        }
    }

    fn local(&mut self, r: usize, act: &Act) {
        let s = &self.replicas[r].state;
        let (dirs, nodes) = view(s);
        let n = self.ops.len();
        let data = |tag: &str| Content::Inline(Bytes::from(format!("{tag}{r}-{n};")));
        let dir = |i: usize| dirs[i % dirs.len()];
        let node = |i: usize| (!nodes.is_empty()).then(|| nodes[i % nodes.len()].clone());
        let now = self.now as i64;
        let planned = match act {
            Act::CreateFile { dir: d, name } => s
                .plan_create(
                    dir(*d),
                    NAMES[name % 4],
                    Kind::File,
                    0o644,
                    0,
                    0,
                    0,
                    data("c"),
                    now,
                )
                .map(|b| vec![b]),
            Act::CreateDir { dir: d, name } => s
                .plan_create(
                    dir(*d),
                    NAMES[name % 4],
                    Kind::Dir,
                    0o755,
                    0,
                    0,
                    0,
                    Content::empty(),
                    now,
                )
                .map(|b| vec![b]),
            Act::Write { node: i } => match node(*i) {
                Some((_, _, Node::Entry { file, .. })) => {
                    s.plan_write(file, data("w"), now).map(|b| vec![b])
                }
                _ => return,
            },
            Act::Append { node: i } => match node(*i) {
                Some((_, _, Node::Entry { file, .. })) => {
                    s.plan_append(file, data("a"), now).map(|b| vec![b])
                }
                _ => return,
            },
            Act::Rename {
                node: i,
                dir: d,
                name,
                flags,
            } => {
                let Some((parent, from, _)) = node(*i) else {
                    return;
                };
                let flags = RenameFlags {
                    noreplace: *flags == 1,
                    exchange: *flags == 2,
                };
                s.plan_rename(parent, &from, dir(*d), NAMES[name % 4], flags)
            }
            Act::Unlink { node: i } => match node(*i) {
                Some((parent, name, _)) => s.plan_unlink(parent, &name).map(|b| vec![b]),
                None => return,
            },
            Act::Rmdir { node: i } => match node(*i) {
                Some((parent, name, _)) => s.plan_rmdir(parent, &name).map(|b| vec![b]),
                None => return,
            },
            Act::Link {
                node: i,
                dir: d,
                name,
            } => match node(*i) {
                Some((_, _, Node::Entry { file, .. })) => {
                    s.plan_link(file, dir(*d), NAMES[name % 4]).map(|b| vec![b])
                }
                _ => return,
            },
            Act::Meta { node: i, mode } => match node(*i) {
                Some((_, _, Node::Entry { file, .. })) => s
                    .plan_set_meta(SetMeta {
                        file,
                        mode: Some(*mode),
                        mtime_ns: Some(now),
                        ..Default::default()
                    })
                    .map(|b| vec![b]),
                _ => return,
            },
            Act::Xattr { node: i, remove } => match node(*i) {
                Some((_, _, Node::Entry { file, .. })) => {
                    let meta = if *remove {
                        let names = s.xattr_list(file).unwrap();
                        let Some(first) = names.first() else {
                            return;
                        };
                        SetMeta {
                            file,
                            xattr_remove: vec![first.clone()],
                            ..Default::default()
                        }
                    } else {
                        SetMeta {
                            file,
                            xattr_set: vec![(
                                Bytes::from_static(b"user.k"),
                                Bytes::from(format!("{n}")),
                            )],
                            ..Default::default()
                        }
                    };
                    s.plan_set_meta(meta).map(|b| vec![b])
                }
                _ => return,
            },
            Act::Leave { upto } => Ok(vec![OpBody::Leave { upto: *upto }]),
            Act::Delete => Ok(vec![OpBody::DeleteStore]),
            Act::Snapshot { label, drop } => {
                let label = format!("s{label}");
                Ok(vec![if *drop {
                    OpBody::DropSnapshot { label }
                } else {
                    OpBody::Snapshot { label }
                }])
            }
        };
        if let Ok(bodies) = planned {
            self.emit(r, bodies);
        }
    }
}

/// Ids an op names: it may only be applied after them.
fn named(op: &Op) -> Vec<OpId> {
    match &op.body {
        OpBody::Create(c) => vec![c.parent],
        OpBody::Link { file, parent, .. } => vec![*file, *parent],
        OpBody::Move { entry, parent, .. } => vec![*entry, *parent],
        OpBody::Remove {
            entry,
            seen_content,
        } => {
            let mut v = seen_content.clone();
            v.push(*entry);
            v
        }
        OpBody::Write {
            file, supersedes, ..
        }
        | OpBody::Dismiss { file, supersedes } => {
            let mut v = supersedes.clone();
            v.push(*file);
            v
        }
        OpBody::Append {
            file,
            group,
            supersedes,
            ..
        } => {
            let mut v = supersedes.clone();
            v.extend([*file, *group]);
            v
        }
        OpBody::SetMeta(m) => vec![m.file],
        _ => Vec::new(),
    }
}

/// A random topological order of `ops` respecting per-author order and named ids.
fn causal_order(ops: &[(PublicKey, Op)], seed: u64) -> Vec<usize> {
    let index: HashMap<OpId, usize> = ops
        .iter()
        .enumerate()
        .map(|(i, (a, o))| (o.id(*a), i))
        .collect();
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); ops.len()];
    let mut last: HashMap<PublicKey, usize> = HashMap::new();
    for (i, (a, o)) in ops.iter().enumerate() {
        if let Some(p) = last.insert(*a, i) {
            deps[i].push(p);
        }
        deps[i].extend(named(o).iter().filter_map(|id| index.get(id)).copied());
    }
    let mut rng = seed | 1;
    let mut done = vec![false; ops.len()];
    let mut out = Vec::with_capacity(ops.len());
    while out.len() < ops.len() {
        let ready: Vec<usize> = (0..ops.len())
            .filter(|&i| !done[i] && deps[i].iter().all(|&d| done[d]))
            .collect();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let pick = ready[(rng % ready.len() as u64) as usize];
        done[pick] = true;
        out.push(pick);
    }
    out
}

fn replay(ops: &[(PublicKey, Op)], order: &[usize]) -> FsState {
    let mut s = FsState::new();
    for &i in order {
        s.apply(ops[i].0, &ops[i].1);
    }
    s
}

/// Every visible file is reachable from the root, and every unsuperseded write survives.
fn check_invariants(s: &FsState, ops: &[(PublicKey, Op)]) -> Result<(), TestCaseError> {
    let (_, nodes) = view(s);
    for (dir, name, node) in &nodes {
        prop_assert_eq!(
            s.lookup(*dir, name),
            Ok(*node),
            "lookup of listed {:?}",
            name
        );
    }
    let reachable: HashSet<FileId> = nodes.iter().map(|(_, _, n)| n.file()).collect();
    let conflicts: HashSet<(FileId, OpId)> = nodes
        .iter()
        .filter_map(|(_, _, n)| match n {
            Node::Conflict { file, head } => Some((*file, *head)),
            Node::Entry { .. } => None,
        })
        .collect();
    let superseded: HashSet<OpId> = ops
        .iter()
        .flat_map(|(_, o)| match &o.body {
            OpBody::Write { supersedes, .. }
            | OpBody::Append { supersedes, .. }
            | OpBody::Dismiss { supersedes, .. } => supersedes.clone(),
            _ => Vec::new(),
        })
        .collect();
    for (a, o) in ops {
        let id = o.id(*a);
        if let OpBody::Create(_) = o.body {
            prop_assert_eq!(
                s.exists(id),
                reachable.contains(&id),
                "{:?} reachability",
                id
            );
            if s.exists(id) {
                let mut p = id;
                let mut steps = 0;
                while let Some(up) = s.parent(p) {
                    p = up;
                    steps += 1;
                    prop_assert!(steps <= ops.len(), "cycle above {:?}", id);
                }
            }
        }
        let (file, group) = match &o.body {
            OpBody::Write { file, .. } => (*file, id),
            OpBody::Append {
                file, group, data, ..
            } => {
                let f = s.file(*file).unwrap();
                if f.alive().contains_key(group) {
                    prop_assert!(f.view(*group).pieces.contains(data), "append {:?} lost", id);
                }
                (*file, *group)
            }
            _ => continue,
        };
        if superseded.contains(&id) {
            continue;
        }
        if s.exists(file) {
            let winner = s.file(file).unwrap().winner();
            prop_assert!(
                winner == Some(group) || conflicts.contains(&(file, group)),
                "write {:?} of visible file {:?} not shown",
                id,
                file
            );
        } else {
            let seen_by_remove = ops.iter().any(|(_, r)| match &r.body {
                OpBody::Remove {
                    entry,
                    seen_content,
                } => {
                    s.tree.entry(*entry).is_some_and(|e| e.file == file)
                        && seen_content.contains(&id)
                }
                _ => false,
            });
            prop_assert!(
                seen_by_remove,
                "write {:?} lost with its file {:?}",
                id,
                file
            );
        }
    }
    Ok(())
}

/// The world after `steps` and two rounds of every replica syncing from every other.
fn settled(steps: &[Step]) -> World {
    let mut w = World::new();
    for st in steps {
        match st {
            Step::Local(r, act) => w.local(*r, act),
            Step::Sync(a, b) => w.sync(*a, *b),
        }
    }
    for _ in 0..2 {
        for a in 0..AUTHORS {
            for b in 0..AUTHORS {
                w.sync(a, b);
            }
        }
    }
    w
}

/// The counts of `s` taken by listing every directory from the root: the definition
/// that `FsState::stats`, which builds no display names, must agree with.
fn listed_stats(s: &FsState) -> FsStats {
    let mut out = FsStats {
        late: s.late(),
        ..FsStats::default()
    };
    let mut seen = HashSet::new();
    let mut dirs = vec![OpId::ROOT];
    while let Some(dir) = dirs.pop() {
        for (_, node) in s
            .readdir(dir)
            .expect("a directory reached from the root lists")
        {
            let file = match node {
                Node::Conflict { .. } => {
                    out.conflicts += 1;
                    continue;
                }
                Node::Entry { file, .. } => file,
            };
            let Some(f) = s.file(file) else {
                continue;
            };
            if f.kind == Kind::Dir {
                out.dirs += 1;
                dirs.push(file);
            } else if seen.insert(file) {
                out.files += 1;
                if f.kind == Kind::File {
                    out.bytes += f.size();
                }
            }
        }
    }
    out
}

/// The most a store may call settled once `order[..i]` is applied: the smallest stamp of
/// an applied op that the author of some op still to come had not applied when it
/// planned it.
fn settled_at(w: &World, order: &[usize], i: usize) -> Hlc {
    let mut settled = Hlc {
        wall_ms: u64::MAX,
        counter: 0,
    };
    for &j in &order[i..] {
        for &k in &order[..i] {
            let (a, op) = &w.ops[k];
            if !w.pasts[j].contains(&op.id(*a)) {
                settled = settled.min(op.hlc);
            }
        }
    }
    settled
}

/// `s` through a snapshot, checking that re-encoding the decoded state gives the same bytes.
fn through_snapshot(s: &FsState) -> Result<FsState, TestCaseError> {
    let bytes = s.encode_snapshot();
    let decoded = FsState::decode_snapshot(&bytes).expect("an encoded snapshot decodes");
    prop_assert_eq!(&decoded.encode_snapshot(), &bytes);
    prop_assert_eq!(decoded.canonical_dump(), s.canonical_dump());
    prop_assert_eq!(decoded.stats(), s.stats());
    Ok(decoded)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn purging_and_sweeping_where_no_later_op_is_stamped_before_them_never_changes_the_projection(
        steps in prop::collection::vec(step(), 1..120),
        seed in any::<u64>(),
        cuts in prop::collection::btree_set(0..=1000usize, 1..4),
    ) {
        let w = settled(&steps);
        let order = causal_order(&w.ops, seed);
        let reference = replay(&w.ops, &order);
        let at: Vec<usize> = cuts.iter().map(|c| c * order.len() / 1000).collect();
        let mut s = FsState::new();
        for i in 0..=order.len() {
            if at.contains(&i) {
                // The most a frontier may allow here: the smallest stamp still to come.
                let below = order[i..]
                    .iter()
                    .map(|&j| w.ops[j].1.hlc)
                    .min()
                    .unwrap_or(Hlc { wall_ms: u64::MAX, counter: 0 });
                s.purge(below, settled_at(&w, &order, i));
                s = through_snapshot(&s)?;
            }
            if let Some(&j) = order.get(i) {
                s.apply(w.ops[j].0, &w.ops[j].1);
            }
        }
        prop_assert_eq!(s.canonical_dump(), reference.canonical_dump());
        prop_assert_eq!(s.stats(), reference.stats());
        prop_assert_eq!(s.late(), 0);
        through_snapshot(&s)?;
        // Once everything is settled, the sweep leaves only what something visible needs.
        let end = Hlc { wall_ms: u64::MAX, counter: 0 };
        s.purge(end, end);
        prop_assert_eq!(s.canonical_dump(), reference.canonical_dump());
        for (id, e) in s.tree.entries.all() {
            if e.loc.removal.is_some() {
                let holds = !s.tree.children(e.file).is_empty();
                prop_assert!(s.exists(e.file) || holds, "tombstone {:?} kept", id);
            }
        }
        for (id, f) in s.files.all() {
            prop_assert!(f.dead_groups().is_empty(), "dead versions of {:?} kept", id);
        }
    }

    #[test]
    fn random_concurrent_histories_converge_in_every_causal_order_without_losing_writes(
        steps in prop::collection::vec(step(), 1..120),
        seeds in prop::array::uniform3(any::<u64>()),
    ) {
        let w = settled(&steps);
        let reference = w.replicas[0].state.canonical_dump();
        for r in &w.replicas[1..] {
            prop_assert_eq!(&r.state.canonical_dump(), &reference);
        }
        for seed in seeds {
            let order = causal_order(&w.ops, seed);
            let s = replay(&w.ops, &order);
            prop_assert_eq!(&s.canonical_dump(), &reference);
            prop_assert_eq!(s.stats(), listed_stats(&s));
            check_invariants(&s, &w.ops)?;
            let half = order.len() / 2;
            let first = replay(&w.ops, &order[..half]);
            let mut resumed = FsState::decode_snapshot(&first.encode_snapshot()).unwrap();
            prop_assert_eq!(resumed.canonical_dump(), first.canonical_dump());
            for &i in &order[half..] {
                resumed.apply(w.ops[i].0, &w.ops[i].1);
            }
            prop_assert_eq!(&resumed.canonical_dump(), &reference);
        }
        let s = &w.replicas[0].state;
        let decoded = FsState::decode_snapshot(&s.encode_snapshot()).unwrap();
        prop_assert_eq!(decoded.canonical_dump(), reference);
    }
}
