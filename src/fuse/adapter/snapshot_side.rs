//! The adapter's snapshot side: each store's read-only `.snapshots` directory, one
//! directory per snapshot label showing that snapshot's tree (see `store::snapshots`).

use std::sync::Arc;
use std::time::Duration;

use fuser::{FileAttr, FileType};

use crate::fs::{FsError, FsState, Node, SNAPSHOTS_DIR};
use crate::ids::{OpId, StoreId};

use super::super::errno::Fail;
use super::super::inodes::Key;
use super::{file_type, DirEntry, LatticeFs, Result};

/// The node of a snapshot tree's root directory.
const ROOT: Node = Node::Entry {
    entry: OpId::ROOT,
    file: OpId::ROOT,
};

impl LatticeFs {
    /// The tree of snapshot `at` of store `sid`.
    pub(super) fn snapshot_tree(&self, sid: StoreId, at: OpId) -> Result<Arc<FsState>> {
        self.store(sid)?.snapshot_state(at).map_err(|e| match e {
            crate::store::StoreError::NotSealed => Fail::Errno(libc::EAGAIN),
            e => Fail::store(e),
        })
    }

    /// Store `sid`'s snapshots: (label, the op that recorded it).
    fn snapshot_labels(&self, sid: StoreId) -> Result<Vec<(String, OpId)>> {
        Ok(self.store(sid)?.read(|s| {
            s.snapshots()
                .into_iter()
                .map(|(label, at)| (label.to_string(), at))
                .collect()
        }))
    }

    /// Whether `name` in directory `dir` of store `sid` is the `.snapshots` directory:
    /// at the store's root while the store has a snapshot (it hides an entry of that name).
    pub(super) fn is_snapshots_dir(&self, sid: StoreId, dir: OpId, name: &str) -> Result<bool> {
        Ok(dir == OpId::ROOT
            && name == SNAPSHOTS_DIR
            && !self.store(sid)?.read(|s| s.snapshots().is_empty()))
    }

    /// Looks up `name` in a snapshot directory key.
    pub(super) fn snapshot_lookup(&self, dir: Key, name: &str) -> Result<Key> {
        match dir {
            Key::Snapshots(sid) => self.snapshot_labels(sid).and_then(|labels| {
                labels
                    .into_iter()
                    .find(|(label, _)| label == name)
                    .map(|(_, at)| Key::Snap(sid, at, ROOT))
                    .ok_or(Fail::Fs(FsError::NotFound))
            }),
            Key::Snap(sid, at, node) => self.snapshot_tree(sid, at).and_then(|tree| {
                let node = tree.lookup(node_file(node)?, name)?;
                Ok(Key::Snap(sid, at, node))
            }),
            _ => Err(Fail::Fs(FsError::NotDir)),
        }
    }

    /// Attributes of a snapshot key; `None` for other keys.
    pub(super) fn snapshot_attr(&self, ino: u64, key: Key) -> Option<Result<FileAttr>> {
        Some(match key {
            Key::Snapshots(sid) => self.snapshot_labels(sid).map(|labels| {
                let newest = labels.iter().map(|(_, at)| at.hlc.wall_ms).max();
                let t = std::time::UNIX_EPOCH + Duration::from_millis(newest.unwrap_or(0));
                self.virtual_dir(ino, t, 0o555, labels.len() as u32)
            }),
            Key::Snap(sid, at, node) => self
                .snapshot_tree(sid, at)
                .and_then(|tree| Ok(Self::fuse_attr(ino, &tree.attr(node)?, false))),
            _ => return None,
        })
    }

    /// The listing of a snapshot directory key after `.` and `..`.
    pub(super) fn snapshot_list(&self, key: Key, out: &mut Vec<DirEntry>) -> Result<()> {
        match key {
            Key::Snapshots(sid) => self.snapshot_labels(sid).map(|labels| {
                out[1].key = Key::File(sid, OpId::ROOT);
                for (label, at) in labels {
                    out.push(DirEntry {
                        name: label.into_bytes(),
                        key: Key::Snap(sid, at, ROOT),
                        kind: FileType::Directory,
                    });
                }
            }),
            Key::Snap(sid, at, node) => self.snapshot_tree(sid, at).and_then(|tree| {
                let dir = node_file(node)?;
                out[1].key = match tree.parent(dir) {
                    Some(p) => Key::Snap(sid, at, Node::Entry { entry: p, file: p }),
                    None => Key::Snapshots(sid),
                };
                for (name, child) in tree.readdir(dir)? {
                    out.push(DirEntry {
                        name: name.into_bytes(),
                        key: Key::Snap(sid, at, child),
                        kind: file_type(tree.attr(child)?.kind),
                    });
                }
                Ok(())
            }),
            _ => Err(Fail::Fs(FsError::NotDir)),
        }
    }

    /// The tree and node behind a snapshot node key; `None` for other keys.
    pub(super) fn snapshot_node(&self, key: Key) -> Option<Result<(StoreId, Arc<FsState>, Node)>> {
        match key {
            Key::Snap(sid, at, node) => Some(self.snapshot_tree(sid, at).map(|t| (sid, t, node))),
            Key::Snapshots(_) => Some(Err(Fail::Fs(FsError::IsDir))),
            _ => None,
        }
    }
}

/// The file a directory node of a snapshot shows (a conflict copy is no directory).
fn node_file(node: Node) -> Result<OpId> {
    match node {
        Node::Entry { file, .. } => Ok(file),
        Node::Conflict { .. } => Err(Fail::Fs(FsError::NotDir)),
    }
}
