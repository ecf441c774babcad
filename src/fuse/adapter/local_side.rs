//! The adapter's local-only side (see `fuse/local.rs`): where a name is held,
//! replicated or local, and renames across that boundary.

use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use fuser::{FileAttr, FileHandle, INodeNo};

use crate::cas::Content;
use crate::fs::op::{Kind, SetMeta};
use crate::fs::{FsError, Node};
use crate::ids::{FileId, StoreId};

use super::super::errno::{io_errno, Fail};
use super::super::inodes::Key;
use super::super::local::{self, LocalPath};
use super::{to_time, DirEntry, Handle, LatticeFs, Result};

impl LatticeFs {
    /// The path of local entry `id` and its real path.
    pub(super) fn local(&self, id: u64) -> Result<(LocalPath, PathBuf)> {
        let p = self.locals.path(id).ok_or(Fail::Errno(libc::ESTALE))?;
        let real = self.local_real(&p);
        Ok((p, real))
    }

    pub(super) fn local_real(&self, p: &LocalPath) -> PathBuf {
        p.real(&self.node.local_dir(p.store))
    }

    /// Where entry `name` of directory `parent` is held locally: always inside a local
    /// directory; in a replicated one when no replicated entry holds the name and a
    /// local entry does, or, for a new entry (`new` = is it a directory), when the ignore
    /// rules match it. `None`: the name is (or would be) replicated.
    pub(super) fn local_place(
        &self,
        parent: Key,
        name: &str,
        new: Option<bool>,
    ) -> Result<Option<LocalPath>> {
        match parent {
            Key::Local(id) => Ok(Some(self.local(id)?.0.child(name))),
            Key::File(sid, dir) => {
                let store = self.store(sid)?;
                let p = LocalPath::new(sid, dir, name);
                let local = || {
                    std::fs::symlink_metadata(self.local_real(&p)).is_ok()
                        || new.is_some_and(|is_dir| self.node.is_ignored(&store, dir, name, is_dir))
                };
                // A new name is seldom held or ignored, and then it is replicated whatever
                // the projection holds: its lookup (a page read in a big store) is skipped.
                if new.is_some() && !local() {
                    return Ok(None);
                }
                match store.read(|s| s.lookup(dir, name)) {
                    Ok(_) => Ok(None),
                    Err(FsError::NotFound) => Ok((new.is_some() || local()).then_some(p)),
                    Err(e) => Err(e.into()),
                }
            }
            Key::MountRoot | Key::Conflict(..) | Key::Snapshots(_) | Key::Snap(..) => Ok(None),
        }
    }

    /// Counts a kernel lookup of local entry `p` as entry `name` of `parent`.
    pub(super) fn local_entry(
        &self,
        p: LocalPath,
        parent: INodeNo,
        name: &str,
    ) -> Result<FileAttr> {
        std::fs::symlink_metadata(self.local_real(&p)).map_err(io_errno)?;
        self.entry(Key::Local(self.locals.id(p)), parent, name)
    }

    pub(super) fn local_handle(&self, fh: FileHandle) -> Option<Arc<std::fs::File>> {
        match self.handles.lock().get(&fh.0) {
            Some(Handle::Local(f, _)) => Some(f.clone()),
            _ => None,
        }
    }

    /// The store a directory key is in.
    pub(super) fn store_of(&self, key: Key) -> Result<StoreId> {
        match key {
            Key::File(sid, _) => Ok(sid),
            Key::Local(id) => Ok(self.local(id)?.0.store),
            Key::MountRoot | Key::Conflict(..) => Err(Fail::Fs(FsError::NotDir)),
            Key::Snapshots(_) | Key::Snap(..) => Err(Fail::Fs(FsError::ReadOnly)),
        }
    }

    /// Renames local entry `a` to local name `b`.
    pub(super) fn rename_local(&self, a: &LocalPath, b: &LocalPath, noreplace: bool) -> Result<()> {
        let (ra, rb) = (self.local_real(a), self.local_real(b));
        if noreplace && std::fs::symlink_metadata(&rb).is_ok() {
            return Err(Fail::Fs(FsError::Exists));
        }
        if let Some(dir) = rb.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_errno)?;
        }
        std::fs::rename(ra, rb).map_err(io_errno)?;
        self.locals.renamed(a, b);
        Ok(())
    }

    /// Renames local file or symlink `a` to `name` in replicated directory `dir` (kernel
    /// inode `parent`): a signed create with its content, or a write of it over the
    /// regular file holding the name (an editor's save by rename keeps the file's
    /// identity and history).
    /// Directories are refused with `EXDEV`, so `mv` copies them entry by entry.
    pub(super) fn local_to_replicated(
        &self,
        a: &LocalPath,
        sid: StoreId,
        (parent, dir): (u64, FileId),
        name: &str,
        noreplace: bool,
    ) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let ra = self.local_real(a);
        let m = std::fs::symlink_metadata(&ra).map_err(io_errno)?;
        let (kind, content) = if m.is_dir() {
            return Err(Fail::Errno(libc::EXDEV));
        } else if m.file_type().is_symlink() {
            let target = std::fs::read_link(&ra).map_err(io_errno)?;
            let target = Bytes::from(target.into_os_string().into_vec());
            (Kind::Symlink, Content::Inline(target))
        } else {
            let content = self
                .node
                .cas()
                .put_file(sid, &ra, None)
                .map_err(Fail::cas)?;
            (Kind::File, content)
        };
        let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
        let perm = m.mode() & 0o7777;
        let store = self.store(sid)?;
        let file = store.write_unannounced(|tx| {
            let held = tx.state().lookup(dir, name);
            if noreplace && held.is_ok() {
                return Err(FsError::Exists);
            }
            if let Ok(Node::Entry { file, .. }) = held {
                let node = Node::Entry { entry: file, file };
                if kind == Kind::File && tx.state().attr(node)?.kind == Kind::File {
                    let body = tx.state().plan_write(file, content, mtime)?;
                    tx.push(body)?;
                    let body = tx.state().plan_set_meta(SetMeta {
                        file,
                        mode: Some(perm),
                        ..Default::default()
                    })?;
                    tx.push(body)?;
                    return Ok(file);
                }
            }
            if held.is_ok() {
                let body = tx.state().plan_unlink(dir, name)?;
                tx.push(body)?;
            }
            let body = tx.state().plan_create(
                dir,
                name,
                kind,
                perm,
                m.uid(),
                m.gid(),
                0,
                content,
                mtime,
            )?;
            Ok(tx.push(body)?)
        })?;
        std::fs::remove_file(&ra).map_err(io_errno)?;
        let id = self.locals.id(a.clone());
        match self.inodes.peek(&Key::Local(id)) {
            // The kernel wants every open of an inode passed through while one is, and a
            // replicated file is not: its name is handed out again as a new inode.
            Some(ino) if self.backings.passed_through(ino) => {
                self.inodes.suspect_stale(parent, name.as_bytes())
            }
            Some(ino) => self.inodes.rekey(ino, Key::File(sid, file)),
            None => {}
        }
        self.locals.forget(id);
        Ok(())
    }

    /// Renames replicated file or symlink `name` of `dir` to local name `b`: its content
    /// is written there, then its name is removed with a signed op (a delete, as peers
    /// see it). Directories are refused with `EXDEV`, so `mv` copies them entry by entry.
    pub(super) fn replicated_to_local(
        &self,
        sid: StoreId,
        dir: FileId,
        name: &str,
        b: &LocalPath,
        noreplace: bool,
    ) -> Result<()> {
        let store = self.store(sid)?;
        let node = store.read(|s| s.lookup(dir, name))?;
        let Node::Entry { file, .. } = node else {
            return Err(Fail::Errno(libc::EXDEV));
        };
        let rb = self.local_real(b);
        if noreplace && std::fs::symlink_metadata(&rb).is_ok() {
            return Err(Fail::Fs(FsError::Exists));
        }
        // Uncommitted writes of an open handle go with it.
        let open = self.open_files.lock().get(&(sid, file)).cloned();
        if let Some(open) = open {
            open.lock().commit(self.node.cas(), false)?;
        }
        let a = store.read(|s| s.attr(node))?;
        let tmp = self.staging.join(format!(
            "to-local-{}",
            self.next_handle.fetch_add(1, Ordering::Relaxed)
        ));
        let made = match a.kind {
            Kind::File => {
                let view = store.read(|s| s.content(node))?;
                self.node
                    .cas()
                    .export(sid, &view.pieces, &tmp)
                    .map_err(Fail::cas)?;
                local::set_attr(
                    &tmp,
                    None,
                    Some(a.perm),
                    (Some(a.uid), Some(a.gid)),
                    (None, Some(to_time(a.mtime_ns))),
                )
            }
            Kind::Symlink => {
                let target = store.read(|s| s.readlink(file))?;
                local::create(&tmp, Kind::Symlink, 0o777, a.uid, a.gid, &target)
            }
            _ => return Err(Fail::Errno(libc::EXDEV)),
        };
        let placed = made.and_then(|()| {
            if let Some(up) = rb.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(up)?;
            }
            std::fs::rename(&tmp, &rb)
        });
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_errno(e));
        }
        let removed = store.write_unannounced(|tx| {
            let body = tx.state().plan_unlink(dir, name)?;
            tx.push(body)?;
            Ok(())
        });
        if let Err(e) = removed {
            let _ = std::fs::remove_file(&rb);
            return Err(e.into());
        }
        // The kernel's inode is now the local file's, unless a hard link still names it.
        if store.read(|s| s.places_of(file)).is_empty() {
            if let Some(ino) = self.inodes.peek(&Key::File(sid, file)) {
                self.inodes
                    .rekey(ino, Key::Local(self.locals.id(b.clone())));
            }
        }
        Ok(())
    }

    /// Adds the local entries in `real` (named by `path`) to listing `out`, but for
    /// names `out` holds already (a replicated entry is never shadowed).
    pub(super) fn list_local(
        &self,
        real: &Path,
        path: impl Fn(&str) -> LocalPath,
        out: &mut Vec<DirEntry>,
    ) -> Result<()> {
        let listing = match std::fs::read_dir(real) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_errno(e)),
        };
        let held: std::collections::HashSet<Vec<u8>> = out.iter().map(|e| e.name.clone()).collect();
        for e in listing {
            let e = e.map_err(io_errno)?;
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if held.contains(name.as_bytes()) {
                continue;
            }
            let Ok(m) = e.metadata() else {
                continue;
            };
            out.push(DirEntry {
                key: Key::Local(self.locals.id(path(&name))),
                name: name.into_bytes(),
                kind: local::file_type(&m),
            });
        }
        Ok(())
    }
}
