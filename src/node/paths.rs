//! Paths for reports: a file's path as the mount shows it now, and the place an entry
//! had before an op (a moved entry's old path, a removed one's last path).
//!
//! Only the projection's query API is used: a file's parent is the directory of the name
//! its Create made (`FsState::parent`), and that name as shown is found in the parent's
//! listing (`FsState::readdir`, so collision suffixes are those the mount shows). A place
//! the projection no longer holds (a removed entry, or one that moved on) is read from
//! the entry's history on disk (`Store::history`): the latest Create, Link or Move of the
//! entry before the op asked about.

use std::collections::HashMap;

use crate::fs::op::OpBody;
use crate::fs::{FsState, Node as FsNode};
use crate::ids::{FileId, OpId};
use crate::store::Store;

/// Deepest nesting walked up from a file to the store root: the tree has no cycles, the
/// bound only keeps a broken assumption from looping.
pub(crate) const MAX_PATH_DEPTH: usize = 4096;

/// The names of directories' entries, memoised for one report (a batch of many changes
/// in one large directory lists it once).
#[derive(Default)]
pub(crate) struct Names {
    /// Per directory: entry id → the name the mount shows for it.
    dirs: HashMap<FileId, HashMap<OpId, String>>,
}

impl Names {
    /// The names from the store root to `file` as the mount shows them now (through the
    /// name its Create made); `None` when that name is not visible.
    pub(crate) fn of(&mut self, state: &FsState, file: FileId) -> Option<Vec<String>> {
        let mut names = Vec::new();
        let mut cur = file;
        for _ in 0..MAX_PATH_DEPTH {
            if cur == OpId::ROOT {
                names.reverse();
                return Some(names);
            }
            let parent = state.parent(cur)?;
            let listed = self.dirs.entry(parent).or_insert_with(|| {
                state
                    .readdir(parent)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(name, node)| match node {
                        FsNode::Entry { entry, .. } => Some((entry, name)),
                        FsNode::Conflict { .. } => None,
                    })
                    .collect()
            });
            names.push(listed.get(&cur)?.clone());
            cur = parent;
        }
        None
    }
}

/// The directory and raw name entry `entry` had just before op `before`, from its history
/// on disk; `None` when the history names no place for it.
pub(crate) fn place_before(store: &Store, entry: OpId, before: OpId) -> Option<(FileId, String)> {
    let items = store.history(entry).ok()?;
    let mut best: Option<(OpId, FileId, String)> = None;
    for item in &items {
        for op in &item.ops {
            let id = op.id(item.author);
            if id >= before {
                continue;
            }
            let place = match &op.body {
                OpBody::Create(c) if id == entry => (c.parent, c.name.clone()),
                OpBody::Link { parent, name, .. } if id == entry => (*parent, name.clone()),
                OpBody::Move {
                    entry: e,
                    parent,
                    name,
                } if *e == entry => (*parent, name.clone()),
                _ => continue,
            };
            if best.as_ref().is_none_or(|(b, ..)| id > *b) {
                best = Some((id, place.0, place.1));
            }
        }
    }
    best.map(|(_, dir, name)| (dir, name))
}

/// The names from the store root to directory `dir`: as shown now, or, for a directory
/// that is gone, its place before op `before` (and so on up); `None` when neither is known.
pub(crate) fn dir_names(
    store: &Store,
    names: &mut Names,
    dir: FileId,
    before: OpId,
) -> Option<Vec<String>> {
    let mut tail: Vec<String> = Vec::new();
    let mut cur = dir;
    for _ in 0..MAX_PATH_DEPTH {
        if let Some(mut head) = store.read(|s| names.of(s, cur)) {
            head.extend(tail.into_iter().rev());
            return Some(head);
        }
        let (parent, name) = place_before(store, cur, before)?;
        tail.push(name);
        cur = parent;
    }
    None
}
