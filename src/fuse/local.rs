//! Local-only entries: names the ignore rules keep on this node (`IGNORE_FILE` in `node/ignored.rs`),
//! held as real files under `DATA_DIR/stores/ID/local/` and shown beside the store's
//! replicated entries. Nothing here is signed or sent.
//!
//! An entry is anchored at the replicated directory it sits in, by that directory's
//! file id (stable across renames and the same on every replica of it):
//! `local/<dir id hex>/<name>`, and below a local directory the rest of its path. Each
//! path the kernel is given gets a number here, which its inode key carries
//! (`Key::Local`); a rename inside the local tree moves the numbers with the paths.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use parking_lot::Mutex;

use crate::fs::op::Kind;
use crate::ids::{FileId, StoreId};

/// Where a local entry is: below which replicated directory, at which path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LocalPath {
    /// The store.
    pub(crate) store: StoreId,
    /// The replicated directory the entry is in, or below through local directories.
    pub(crate) anchor: FileId,
    /// Its path below `anchor`: one name, or more below a local directory.
    pub(crate) rel: PathBuf,
}

impl LocalPath {
    /// Entry `name` of replicated directory `anchor` of `store`.
    pub(crate) fn new(store: StoreId, anchor: FileId, name: &str) -> Self {
        Self {
            store,
            anchor,
            rel: PathBuf::from(name),
        }
    }

    /// Entry `name` of this (local) directory.
    pub(crate) fn child(&self, name: &str) -> Self {
        Self {
            rel: self.rel.join(name),
            ..self.clone()
        }
    }

    /// The directory holding it: its anchor's directory when it has one name.
    pub(crate) fn parent(&self) -> Option<Self> {
        let rel = self.rel.parent().filter(|p| !p.as_os_str().is_empty())?;
        Some(Self {
            rel: rel.to_path_buf(),
            ..self.clone()
        })
    }

    /// Its real path, below the store's local directory `root`.
    pub(crate) fn real(&self, root: &Path) -> PathBuf {
        root.join(self.anchor.to_hex()).join(&self.rel)
    }
}

#[derive(Default)]
struct Table {
    by_id: HashMap<u64, LocalPath>,
    by_path: HashMap<LocalPath, u64>,
    next: u64,
}

/// The numbers of the local paths the kernel was given.
#[derive(Default)]
pub(crate) struct Locals {
    table: Mutex<Table>,
}

impl Locals {
    /// The number of `path`, given one if it has none.
    pub(crate) fn id(&self, path: LocalPath) -> u64 {
        let mut t = self.table.lock();
        if let Some(&id) = t.by_path.get(&path) {
            return id;
        }
        t.next += 1;
        let id = t.next;
        t.by_id.insert(id, path.clone());
        t.by_path.insert(path, id);
        id
    }

    /// The path numbered `id`.
    pub(crate) fn path(&self, id: u64) -> Option<LocalPath> {
        self.table.lock().by_id.get(&id).cloned()
    }

    /// Forgets number `id` (the kernel forgot its inode).
    pub(crate) fn forget(&self, id: u64) {
        let mut t = self.table.lock();
        if let Some(p) = t.by_id.remove(&id) {
            t.by_path.remove(&p);
        }
    }

    /// `from` was renamed to `to`: the numbers of it and of every path below it follow.
    pub(crate) fn renamed(&self, from: &LocalPath, to: &LocalPath) {
        let mut t = self.table.lock();
        let moved: Vec<(LocalPath, u64)> = t
            .by_path
            .iter()
            .filter(|(p, _)| {
                p.store == from.store && p.anchor == from.anchor && p.rel.starts_with(&from.rel)
            })
            .map(|(p, &id)| (p.clone(), id))
            .collect();
        if let Some(old) = t.by_path.remove(to) {
            t.by_id.remove(&old);
        }
        for (p, id) in moved {
            t.by_path.remove(&p);
            let rest = p.rel.strip_prefix(&from.rel).expect("filtered by prefix");
            let new = LocalPath {
                rel: to.rel.join(rest),
                ..to.clone()
            };
            t.by_id.insert(id, new.clone());
            t.by_path.insert(new, id);
        }
    }
}

/// Creates entry `real` of `kind` (`target` for a symlink), owned by `uid`/`gid`. The
/// anchor's directory is made on first use.
pub(crate) fn create(
    real: &Path,
    kind: Kind,
    perm: u32,
    uid: u32,
    gid: u32,
    target: &[u8],
) -> std::io::Result<()> {
    if let Some(dir) = real.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match kind {
        Kind::File => {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(perm)
                .open(real)?;
        }
        Kind::Dir => std::fs::DirBuilder::new().mode(perm).create(real)?,
        Kind::Symlink => std::os::unix::fs::symlink(OsStr::from_bytes(target), real)?,
        Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM))
        }
    }
    if kind != Kind::Symlink {
        // The daemon's own umask keeps its data dir private; the caller's mode, already
        // masked by the caller's umask, is what the entry must show.
        std::fs::set_permissions(real, std::fs::Permissions::from_mode(perm & 0o7777))?;
    }
    std::os::unix::fs::lchown(real, Some(uid), Some(gid))
}

/// Applies a `setattr` to local entry `real`: size, mode, owner, times (a symlink
/// takes only the owner).
pub(crate) fn set_attr(
    real: &Path,
    size: Option<u64>,
    mode: Option<u32>,
    owner: (Option<u32>, Option<u32>),
    times: (Option<SystemTime>, Option<SystemTime>),
) -> std::io::Result<()> {
    let link = std::fs::symlink_metadata(real)?.file_type().is_symlink();
    if owner.0.is_some() || owner.1.is_some() {
        std::os::unix::fs::lchown(real, owner.0, owner.1)?;
    }
    if link {
        return Ok(());
    }
    if let Some(size) = size {
        std::fs::OpenOptions::new()
            .write(true)
            .open(real)?
            .set_len(size)?;
    }
    if let Some(mode) = mode {
        std::fs::set_permissions(real, std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    let (atime, mtime) = times;
    if atime.is_some() || mtime.is_some() {
        let mut t = std::fs::FileTimes::new();
        if let Some(a) = atime {
            t = t.set_accessed(a);
        }
        if let Some(m) = mtime {
            t = t.set_modified(m);
        }
        std::fs::File::open(real)?.set_times(t)?;
    }
    Ok(())
}

fn time(secs: i64, nsec: i64) -> SystemTime {
    let d = Duration::new(secs.unsigned_abs(), nsec as u32);
    if secs >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// The kind the kernel is told of a local entry.
pub(crate) fn file_type(m: &std::fs::Metadata) -> FileType {
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

/// The attributes of a local entry with metadata `m`, as inode `ino`.
pub(crate) fn attr(ino: u64, m: &std::fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind: file_type(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: super::MAX_IO,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::OpId;

    #[test]
    fn a_rename_moves_the_numbers_of_the_path_and_everything_below_it() {
        let locals = Locals::default();
        let store = StoreId([1; 16]);
        let dir = LocalPath::new(store, OpId::ROOT, "build");
        let inner = dir.child("out.o");
        let other = LocalPath::new(store, OpId::ROOT, "buildx");
        let (d, i, o) = (
            locals.id(dir.clone()),
            locals.id(inner.clone()),
            locals.id(other.clone()),
        );
        let to = LocalPath::new(store, OpId::ROOT, "target");
        locals.renamed(&dir, &to);
        assert_eq!(locals.path(d), Some(to.clone()));
        assert_eq!(locals.path(i), Some(to.child("out.o")));
        assert_eq!(
            locals.path(o),
            Some(other),
            "a sibling sharing a prefix stays"
        );
        assert_eq!(locals.id(to.child("out.o")), i);
        assert_eq!(to.child("out.o").parent(), Some(to.clone()));
        assert_eq!(to.parent(), None);
        locals.forget(i);
        assert_eq!(locals.path(i), None);
    }
}
