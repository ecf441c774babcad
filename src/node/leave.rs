//! Leaving a store on this node: a plain copy of its tree (`export`), and removing its
//! local data (`remove_store`): the store file, its place in the mount, its blob tags.

use std::collections::HashSet;
use std::fs::{self, File, FileTimes, Permissions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cas::{CasError, Content};
use crate::fs::op::Kind;
use crate::fs::{Attr, FsState, Node as FsNode};
use crate::ids::{OpId, StoreId};
use crate::node::{store_name, Node, NodeError};
use crate::store::Store;

/// What an export wrote, and what it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exported {
    /// Regular files written with their content.
    pub files: u64,
    /// Directories made.
    pub dirs: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Paths (relative to the export) whose content is neither here nor fetched from a
    /// peer in time: written empty.
    pub missing: Vec<String>,
    /// Paths of fifos, sockets and device nodes, which a plain copy leaves out.
    pub skipped: Vec<String>,
}

/// One node of the tree to copy: where it goes and what it is.
struct Item {
    path: PathBuf,
    rel: String,
    node: FsNode,
    attr: Attr,
}

impl Node {
    /// Writes a plain copy of `store`'s tree into `dir`, which must not exist or be
    /// empty: directories, regular files with their content (fetched from peers when
    /// not here), symlinks, with their modes and modification times.
    pub fn export(&self, store: &Store, dir: &Path) -> Result<Exported, NodeError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| NodeError::Io { path, source }
        };
        match fs::read_dir(dir).map(|mut entries| entries.next().is_some()) {
            Ok(true) => return Err(NodeError::ExportNotEmpty(dir.display().to_string())),
            Ok(false) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(io(dir))?
            }
            Err(e) => return Err(io(dir)(e)),
        }
        let mut out = Exported::default();
        let root = FsNode::Entry {
            entry: OpId::ROOT,
            file: OpId::ROOT,
        };
        let (items, root_attr) = store.read(|s| -> Result<_, NodeError> {
            let mut items = Vec::new();
            walk(s, OpId::ROOT, dir, "", &mut items)?;
            Ok((
                items,
                s.attr(root).map_err(|source| path_error("", source))?,
            ))
        })?;
        // Directories last, deepest first, so their times and modes survive the filling.
        let mut dirs = Vec::new();
        for item in items {
            match item.attr.kind {
                Kind::Dir => {
                    fs::create_dir(&item.path).map_err(io(&item.path))?;
                    out.dirs += 1;
                    dirs.push(item);
                }
                Kind::File => {
                    let pieces: Vec<Content> = store
                        .read(|s| s.content(item.node))
                        .map_err(|source| path_error(&item.rel, source))?
                        .pieces;
                    match self.cas().export(store.id(), &pieces, &item.path) {
                        Ok(()) => {}
                        Err(CasError::Absent { .. }) => {
                            File::create(&item.path).map_err(io(&item.path))?;
                            out.missing.push(item.rel.clone());
                        }
                        Err(e) => return Err(e.into()),
                    }
                    out.files += 1;
                    out.bytes += item.attr.size;
                    set_meta(&item.path, &item.attr).map_err(io(&item.path))?;
                }
                Kind::Symlink => {
                    let FsNode::Entry { file, .. } = item.node else {
                        continue;
                    };
                    let target = store
                        .read(|s| s.readlink(file))
                        .map_err(|source| path_error(&item.rel, source))?;
                    let target = std::ffi::OsStr::from_bytes(&target);
                    std::os::unix::fs::symlink(target, &item.path).map_err(io(&item.path))?;
                    out.symlinks += 1;
                }
                Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                    out.skipped.push(item.rel.clone())
                }
            }
        }
        for item in dirs.iter().rev() {
            set_meta(&item.path, &item.attr).map_err(io(&item.path))?;
        }
        set_meta(dir, &root_attr).map_err(io(dir))?;
        Ok(out)
    }

    /// Removes store `id` from this node: out of the mount at once, then closed, its
    /// directory deleted and its blob tags dropped, so the collector deletes the
    /// content no other store keeps.
    pub fn remove_store(&self, id: StoreId) -> Result<(), NodeError> {
        let store = {
            let mut stores = self.inner.stores.lock();
            let at = stores.iter().position(|s| s.id() == id);
            at.map(|at| stores.remove(at))
        }
        .ok_or_else(|| NodeError::UnknownStore(id.to_hex()))?;
        self.stores_changed();
        let name = store_name(&store);
        store.shutdown().map_err(|source| NodeError::Store {
            store: name.clone(),
            source,
        })?;
        let others: Vec<StoreId> = self
            .stores()
            .iter()
            .chain(self.inner.joining.lock().iter())
            .map(Store::id)
            .collect();
        let freed = self.cas().collect(id, &[], &HashSet::new(), &others)?;
        let dir = self.store_dir(id);
        fs::remove_dir_all(&dir).map_err(|source| NodeError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        self.inner.space.lock().remove(&id);
        tracing::info!(store = %name, blobs = freed.blobs, bytes = freed.bytes, "removed the store from this node");
        Ok(())
    }
}

/// Every node under `dir` (a directory of `s` copied to `at`), parents first.
fn walk(
    s: &FsState,
    dir: OpId,
    at: &Path,
    rel: &str,
    out: &mut Vec<Item>,
) -> Result<(), NodeError> {
    let entries = s.readdir(dir).map_err(|source| path_error(rel, source))?;
    for (name, node) in entries {
        let rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let attr = s.attr(node).map_err(|source| path_error(&rel, source))?;
        let path = at.join(&name);
        let sub = match node {
            FsNode::Entry { file, .. } if attr.kind == Kind::Dir => Some(file),
            _ => None,
        };
        out.push(Item {
            path: path.clone(),
            rel: rel.clone(),
            node,
            attr,
        });
        if let Some(file) = sub {
            walk(s, file, &path, &rel, out)?;
        }
    }
    Ok(())
}

fn path_error(rel: &str, source: crate::fs::FsError) -> NodeError {
    NodeError::Path {
        path: rel.to_string(),
        source,
    }
}

/// Gives `path` the mode and modification time of `attr`.
fn set_meta(path: &Path, attr: &Attr) -> std::io::Result<()> {
    let mtime = if attr.mtime_ns >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(attr.mtime_ns as u64)
    } else {
        SystemTime::UNIX_EPOCH
    };
    File::open(path)?.set_times(FileTimes::new().set_modified(mtime))?;
    fs::set_permissions(path, Permissions::from_mode(attr.perm & 0o7777))
}
