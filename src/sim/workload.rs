//! Random file operations through a store's write path, as the FUSE layer would issue
//! them: the fs planners decide, the store stamps and queues. Names come from a small
//! pool so that nodes collide on names, and directories move into each other from
//! different nodes, which would form cycles if the tree did not skip such moves.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;

use crate::cas::Content;
use crate::fs::op::{Kind, OpBody};
use crate::fs::{FsError, FsState, Node, RenameFlags};
use crate::ids::{FileId, OpId};
use crate::store::Store;

/// Names the workload uses: few, so that concurrent creates and renames collide.
const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
/// Largest inline content the workload writes, in bytes.
const MAX_CONTENT: usize = 48;
/// Deepest directory the workload walks into.
const MAX_DEPTH: usize = 8;

/// One visible entry of the tree.
#[derive(Clone, Copy, Debug)]
struct Seen {
    parent: FileId,
    name: &'static str,
    file: FileId,
    dir: bool,
}

/// The visible entries the workload may act on (conflict copies are left alone).
fn entries(state: &FsState) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut stack = vec![(OpId::ROOT, 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(list) = state.readdir(dir) else {
            continue;
        };
        for (name, node) in list {
            let (Node::Entry { file, .. }, Some(name)) = (node, NAMES.iter().find(|n| **n == name))
            else {
                continue;
            };
            let dir_kind = state.attr(node).is_ok_and(|a| a.kind == Kind::Dir);
            out.push(Seen {
                parent: dir,
                name,
                file,
                dir: dir_kind,
            });
            if dir_kind && depth < MAX_DEPTH {
                stack.push((file, depth + 1));
            }
        }
    }
    out
}

/// A random small inline content.
fn content(rng: &mut StdRng) -> Content {
    let len = rng.random_range(0..=MAX_CONTENT);
    let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    Content::Inline(Bytes::from(bytes))
}

/// Plans one random file operation on `state`.
fn plan(rng: &mut StdRng, state: &FsState, mtime_ns: i64) -> Result<Vec<OpBody>, FsError> {
    let seen = entries(state);
    let mut dirs: Vec<FileId> = seen.iter().filter(|s| s.dir).map(|s| s.file).collect();
    dirs.push(OpId::ROOT);
    let parent = *dirs.choose(rng).expect("the root is always a directory");
    let name = NAMES.choose(rng).expect("the pool is not empty");
    let files: Vec<&Seen> = seen.iter().filter(|s| !s.dir).collect();
    let subdirs: Vec<&Seen> = seen.iter().filter(|s| s.dir).collect();
    match rng.random_range(0..10) {
        0..=2 => Ok(vec![state.plan_create(
            parent,
            name,
            Kind::File,
            0o644,
            0,
            0,
            0,
            content(rng),
            mtime_ns,
        )?]),
        3 => Ok(vec![state.plan_create(
            parent,
            name,
            Kind::Dir,
            0o755,
            0,
            0,
            0,
            Content::empty(),
            mtime_ns,
        )?]),
        4 | 5 => {
            let f = files.choose(rng).ok_or(FsError::NotFound)?;
            Ok(vec![state.plan_write(f.file, content(rng), mtime_ns)?])
        }
        6 => {
            let s = seen.choose(rng).ok_or(FsError::NotFound)?;
            state.plan_rename(s.parent, s.name, parent, name, RenameFlags::default())
        }
        7 => {
            // A directory into another one: from two nodes at once, a cycle to skip.
            let s = subdirs.choose(rng).ok_or(FsError::NotFound)?;
            state.plan_rename(s.parent, s.name, parent, s.name, RenameFlags::default())
        }
        8 => {
            let f = files.choose(rng).ok_or(FsError::NotFound)?;
            Ok(vec![state.plan_unlink(f.parent, f.name)?])
        }
        _ => {
            let d = subdirs.choose(rng).ok_or(FsError::NotFound)?;
            Ok(vec![state.plan_rmdir(d.parent, d.name)?])
        }
    }
}

/// Performs one random file operation on `store`; `Ok(false)` if the planner refused
/// it (the call would have failed with an errno, which is fine).
pub(crate) fn random_op(rng: &mut StdRng, store: &Store, mtime_ns: i64) -> Result<bool, FsError> {
    store.write(|tx| {
        let bodies = match plan(rng, tx.state(), mtime_ns) {
            Ok(b) => b,
            Err(_) => return Ok(false),
        };
        for body in bodies {
            tx.push(body).map_err(FsError::from)?;
        }
        Ok(true)
    })
}
