//! Write staging for open files: writes land in a local staging file and become a
//! signed intention only on flush, fsync or close (never on a `write` syscall).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cas::{Cas, Content, PutAhead};
use crate::fs::{Attr, ContentView, FsError, Node};
use crate::hlc::now_ms;
use crate::ids::{FileId, StoreId};
use crate::store::Store;

use super::errno::{io_errno, Fail};

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

/// Where a dirty open file's bytes live until they are committed.
enum Staging {
    /// Nothing written since the last commit: reads come from the committed content.
    Clean,
    /// Only `O_APPEND` writes: the staging file holds the appended bytes.
    Append {
        file: File,
        path: PathBuf,
        base: ContentView,
        len: u64,
    },
    /// Random-access writes: the staging file holds the whole content. While it has
    /// been written front to back from empty, `ahead` stores its chunks meanwhile.
    Full {
        file: File,
        path: PathBuf,
        size: u64,
        ahead: Option<PutAhead>,
    },
}

/// The shared state of one open file, across all of its handles.
pub(crate) struct OpenFile {
    store: Store,
    file: FileId,
    staging_dir: PathBuf,
    staging: Staging,
    dirty: bool,
    /// Open handles on this file.
    pub(crate) handles: usize,
    /// Whether `O_APPEND` writes happened: the kernel's page cache may then differ
    /// from the merged content, since appends land at our end, not its offset.
    pub(crate) appended: bool,
    /// Attributes and content last seen, to answer after the last name is removed.
    last_attr: Option<Attr>,
    last_view: Option<ContentView>,
}

impl OpenFile {
    /// State for `file` in `store`, with staging files under `staging_dir`.
    pub(crate) fn new(store: Store, file: FileId, staging_dir: &Path) -> Self {
        let mut f = Self {
            store,
            file,
            staging_dir: staging_dir.to_owned(),
            staging: Staging::Clean,
            dirty: false,
            handles: 0,
            appended: false,
            last_attr: None,
            last_view: None,
        };
        f.refresh();
        f
    }

    fn node(&self) -> Node {
        Node::Entry {
            entry: self.file,
            file: self.file,
        }
    }

    /// Re-reads attributes and content from the projection, keeping the last known on error.
    fn refresh(&mut self) {
        let node = self.node();
        let (attr, view) = self.store.read(|s| (s.attr(node), s.content(node)));
        if let Ok(a) = attr {
            self.last_attr = Some(a);
        }
        if let Ok(v) = view {
            self.last_view = Some(v);
        }
    }

    /// The committed content, or the last seen one if the file has no name any more.
    fn committed(&mut self) -> Result<ContentView, Fail> {
        self.refresh();
        self.last_view.clone().ok_or(Fail::Fs(FsError::NotFound))
    }

    /// Attributes with the size of uncommitted writes applied.
    pub(crate) fn attr(&mut self) -> Result<Attr, Fail> {
        self.refresh();
        let mut a = self.last_attr.ok_or(Fail::Fs(FsError::NotFound))?;
        match &self.staging {
            Staging::Clean => {}
            Staging::Append { base, len, .. } => a.size = base.size.saturating_add(*len),
            Staging::Full { size, .. } => a.size = *size,
        }
        if self.dirty {
            a.mtime_ns = (now_ms() as i64) * 1_000_000;
        }
        Ok(a)
    }

    fn new_staging(&self) -> Result<(File, PathBuf), Fail> {
        let path = self.staging_dir.join(format!(
            "{}-{}",
            std::process::id(),
            STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_errno)?;
        Ok((file, path))
    }

    /// Empty whole-content staging, its chunks stored ahead as it is written.
    fn empty_full(&self, cas: &Cas) -> Result<Staging, Fail> {
        let (file, path) = self.new_staging()?;
        let ahead = Some(cas.put_ahead(file.try_clone().map_err(io_errno)?));
        Ok(Staging::Full {
            file,
            path,
            size: 0,
            ahead,
        })
    }

    /// Switches to whole-content staging, seeded with the current bytes.
    fn make_full(&mut self, cas: &Cas) -> Result<(), Fail> {
        let (file, path, size) = match std::mem::replace(&mut self.staging, Staging::Clean) {
            full @ Staging::Full { .. } => {
                self.staging = full;
                return Ok(());
            }
            Staging::Clean => {
                let view = self.committed()?;
                if view.size == 0 {
                    self.staging = self.empty_full(cas)?;
                    return Ok(());
                }
                let (file, path) = self.new_staging()?;
                cas.export(self.store.id(), &view.pieces, &path)
                    .map_err(Fail::cas)?;
                (file, path, view.size)
            }
            Staging::Append {
                file: appended,
                path: append_path,
                base,
                len,
            } => {
                let (file, path) = self.new_staging()?;
                cas.export(self.store.id(), &base.pieces, &path)
                    .map_err(Fail::cas)?;
                let mut buf = vec![0u8; 1 << 20];
                let mut done = 0u64;
                while done < len {
                    let n = buf.len().min((len - done) as usize);
                    appended
                        .read_exact_at(&mut buf[..n], done)
                        .map_err(io_errno)?;
                    file.write_all_at(&buf[..n], base.size.saturating_add(done))
                        .map_err(io_errno)?;
                    done += n as u64;
                }
                drop(appended);
                let _ = std::fs::remove_file(append_path);
                (file, path, base.size.saturating_add(len))
            }
        };
        self.staging = Staging::Full {
            file,
            path,
            size,
            ahead: None,
        };
        Ok(())
    }

    /// The whole-content staging (made if needed): its file, size and chunks stored ahead.
    fn full(&mut self, cas: &Cas) -> Result<(&File, &mut u64, &mut Option<PutAhead>), Fail> {
        self.make_full(cas)?;
        let Staging::Full {
            file, size, ahead, ..
        } = &mut self.staging
        else {
            unreachable!("make_full leaves full staging");
        };
        Ok((file, size, ahead))
    }

    /// Writes `data` at `offset` (at the end for an `O_APPEND` handle).
    pub(crate) fn write(
        &mut self,
        cas: &Cas,
        offset: u64,
        data: &[u8],
        append: bool,
    ) -> Result<u32, Fail> {
        self.appended |= append;
        if append && matches!(self.staging, Staging::Clean) {
            let base = self.committed()?;
            let (file, path) = self.new_staging()?;
            self.staging = Staging::Append {
                file,
                path,
                base,
                len: 0,
            };
        }
        match &mut self.staging {
            Staging::Append { file, len, .. } if append => {
                file.write_all_at(data, *len).map_err(io_errno)?;
                *len += data.len() as u64;
            }
            _ => {
                let (file, size, ahead) = self.full(cas)?;
                let at = if append { *size } else { offset };
                file.write_all_at(data, at).map_err(io_errno)?;
                let end = at + data.len() as u64;
                match ahead {
                    Some(a) if at >= *size => a.written(end),
                    _ => *ahead = None,
                }
                *size = (*size).max(end);
            }
        }
        self.dirty = true;
        Ok(data.len() as u32)
    }

    /// Reads up to `len` bytes at `offset`, uncommitted writes included.
    pub(crate) fn read(&mut self, cas: &Cas, offset: u64, len: u32) -> Result<Vec<u8>, Fail> {
        match &self.staging {
            Staging::Full { file, size, .. } => {
                let n = (*size).saturating_sub(offset).min(u64::from(len)) as usize;
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, offset).map_err(io_errno)?;
                Ok(buf)
            }
            Staging::Append {
                file, base, len: l, ..
            } => {
                let total = base.size.saturating_add(*l);
                let n = total.saturating_sub(offset).min(u64::from(len)) as usize;
                let mut buf = vec![0u8; n];
                let from_base = base.size.saturating_sub(offset).min(n as u64) as usize;
                if from_base > 0 {
                    read_exact(
                        cas,
                        self.store.id(),
                        &base.pieces,
                        offset,
                        &mut buf[..from_base],
                    )?;
                }
                if from_base < n {
                    let at = offset + from_base as u64 - base.size;
                    file.read_exact_at(&mut buf[from_base..], at)
                        .map_err(io_errno)?;
                }
                Ok(buf)
            }
            Staging::Clean => {
                let view = self.committed()?;
                read_view(cas, self.store.id(), &view, offset, len)
            }
        }
    }

    /// The committed content if no writes are staged. Reading it needs no lock on this
    /// file, so a read waiting for absent content does not hold up the file's other calls.
    pub(crate) fn clean_view(&mut self) -> Result<Option<ContentView>, Fail> {
        match self.staging {
            Staging::Clean => self.committed().map(Some),
            Staging::Append { .. } | Staging::Full { .. } => Ok(None),
        }
    }

    /// Sets the size; the change is committed at once, as `truncate(2)` is a metadata call.
    pub(crate) fn truncate(&mut self, cas: &Cas, new_size: u64) -> Result<(), Fail> {
        if new_size == 0 {
            let empty = self.empty_full(cas)?;
            self.discard();
            self.staging = empty;
        } else {
            let (file, size, ahead) = self.full(cas)?;
            file.set_len(new_size).map_err(io_errno)?;
            *size = new_size;
            *ahead = None;
        }
        self.dirty = true;
        self.commit(cas, false)
    }

    /// Turns uncommitted writes into an op; when `durable`, returns once that op and its
    /// content are durable (the store syncs the content before its durable commit).
    pub(crate) fn commit(&mut self, cas: &Cas, durable: bool) -> Result<(), Fail> {
        if self.dirty {
            let mtime = (now_ms() as i64) * 1_000_000;
            let file = self.file;
            let result = match &mut self.staging {
                Staging::Clean => Ok(()),
                Staging::Full { path, ahead, .. } => {
                    let content = cas
                        .put_file(self.store.id(), path, ahead.as_ref())
                        .map_err(Fail::cas)?;
                    self.store
                        .write_unannounced(|tx| {
                            let body = tx.state().plan_write(file, content, mtime)?;
                            tx.push(body)?;
                            Ok(())
                        })
                        .map_err(Fail::Fs)
                }
                Staging::Append {
                    file: f, path, len, ..
                } => {
                    let data = if *len as usize <= crate::cas::INLINE_MAX {
                        let mut buf = vec![0u8; *len as usize];
                        f.read_exact_at(&mut buf, 0).map_err(io_errno)?;
                        Content::Inline(buf.into())
                    } else {
                        cas.put_file(self.store.id(), path, None)
                            .map_err(Fail::cas)?
                    };
                    let r = self
                        .store
                        .write_unannounced(|tx| {
                            let body = tx.state().plan_append(file, data, mtime)?;
                            tx.push(body)?;
                            Ok(())
                        })
                        .map_err(Fail::Fs);
                    r
                }
            };
            match result {
                // A file with no name left is private to its open handles: nothing to replicate.
                Err(Fail::Fs(FsError::NotFound)) | Ok(()) => {}
                Err(e) => return Err(e),
            }
            self.dirty = false;
            if let Staging::Append { .. } = self.staging {
                self.discard();
            }
        }
        if durable {
            self.store.flush().map_err(Fail::store)?;
        }
        Ok(())
    }

    /// Drops the staging file (after the last handle closed).
    pub(crate) fn discard(&mut self) {
        match std::mem::replace(&mut self.staging, Staging::Clean) {
            Staging::Clean => {}
            Staging::Append { path, .. } | Staging::Full { path, .. } => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        self.discard();
    }
}

/// Reads up to `len` bytes of `view` (content of `store`) at `offset`.
pub(crate) fn read_view(
    cas: &Cas,
    store: StoreId,
    view: &ContentView,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>, Fail> {
    let n = view.size.saturating_sub(offset).min(u64::from(len)) as usize;
    let mut buf = vec![0u8; n];
    read_exact(cas, store, &view.pieces, offset, &mut buf)?;
    Ok(buf)
}

/// Reads exactly `buf.len()` bytes of `pieces` of `store` at `offset`.
fn read_exact(
    cas: &Cas,
    store: StoreId,
    pieces: &[Content],
    offset: u64,
    buf: &mut [u8],
) -> Result<(), Fail> {
    let mut done = 0;
    while done < buf.len() {
        let n = cas
            .read(store, pieces, offset + done as u64, &mut buf[done..])
            .map_err(Fail::cas)?;
        if n == 0 {
            return Err(Fail::Errno(libc::EIO));
        }
        done += n;
    }
    Ok(())
}
