//! Write staging for open files: writes land in a local staging file and become a
//! signed intention only on flush, fsync or close (never on a `write` syscall).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

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
    /// Writes over content stored as one manifest (`base`): the staging file holds
    /// only the bytes written, at their offsets, and `written` says where; every other
    /// byte below `kept` is base's and the rest are zeros. A commit cuts and stores
    /// only the chunks around what changed, so an edit costs its chunks, not the file.
    Sparse {
        file: File,
        path: PathBuf,
        base: Content,
        /// Bytes of base still shown: a truncate below base's end lowers it.
        kept: u64,
        size: u64,
        written: Written,
    },
}

/// Disjoint byte ranges written, as start → end.
#[derive(Default)]
struct Written(BTreeMap<u64, u64>);

impl Written {
    /// Adds `[start, end)`, merged with the ranges it touches.
    fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let touched: Vec<u64> = self.0.range(start..=end).map(|(&s, _)| s).collect();
        for s in touched {
            if let Some(e) = self.0.remove(&s) {
                end = end.max(e);
            }
        }
        self.0.insert(start, end);
    }

    /// Drops everything at or past `at`.
    fn cut(&mut self, at: u64) {
        self.0.split_off(&at);
        if let Some((_, e)) = self.0.iter_mut().next_back() {
            *e = (*e).min(at);
        }
    }

    /// The written range holding `at`, or the start of the next one past it.
    fn at(&self, at: u64) -> Result<Range<u64>, Option<u64>> {
        match self.0.range(..=at).next_back() {
            Some((&s, &e)) if e > at => Ok(s..e),
            _ => Err(self.0.range(at..).next().map(|(&s, _)| s)),
        }
    }

    /// From the first written byte to the last, if any was.
    fn span(&self) -> Option<Range<u64>> {
        let first = self.0.keys().next()?;
        let last = self.0.values().next_back()?;
        Some(*first..*last)
    }
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
    /// Whether an `O_APPEND` write landed elsewhere than at the kernel's offset (the
    /// kernel's size was behind ours): the kernel's page cache may then differ from
    /// the merged content.
    pub(crate) append_moved: bool,
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
            append_moved: false,
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
            Staging::Full { size, .. } | Staging::Sparse { size, .. } => a.size = *size,
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
        let ahead = Some(cas.put_ahead(file.try_clone().map_err(io_errno)?, Some(self.store.id())));
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
                copy_into(&file, base.size, len, |at, buf| {
                    appended.read_exact_at(buf, at).map_err(io_errno)
                })?;
                drop(appended);
                let _ = std::fs::remove_file(append_path);
                (file, path, base.size.saturating_add(len))
            }
            Staging::Sparse {
                file: staged,
                path: staged_path,
                base,
                kept,
                size,
                written,
            } => {
                let shown = Shown {
                    file: &staged,
                    base: &base,
                    kept,
                    written: &written,
                };
                let (file, path) = self.new_staging()?;
                let store = self.store.id();
                copy_into(&file, 0, size, |at, buf| shown.fill(cas, store, at, buf))?;
                drop(staged);
                let _ = std::fs::remove_file(staged_path);
                (file, path, size)
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

    /// Switches to sparse staging if the committed content is one manifest and nothing
    /// is staged yet; returns whether the staging is sparse.
    fn sparse(&mut self) -> Result<bool, Fail> {
        match self.staging {
            Staging::Sparse { .. } => return Ok(true),
            Staging::Clean => {}
            Staging::Append { .. } | Staging::Full { .. } => return Ok(false),
        }
        let view = self.committed()?;
        let [base @ Content::Manifest { size, .. }] = view.pieces.as_slice() else {
            return Ok(false);
        };
        let (file, path) = self.new_staging()?;
        self.staging = Staging::Sparse {
            file,
            path,
            base: base.clone(),
            kept: *size,
            size: *size,
            written: Written::default(),
        };
        Ok(true)
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
        if !(append && matches!(self.staging, Staging::Append { .. })) {
            self.sparse()?;
        }
        // Where an append lands, against where the kernel put it.
        let moved;
        match &mut self.staging {
            Staging::Append {
                file, len, base, ..
            } if append => {
                moved = offset != base.size.saturating_add(*len);
                file.write_all_at(data, *len).map_err(io_errno)?;
                *len += data.len() as u64;
            }
            Staging::Sparse {
                file,
                size,
                written,
                ..
            } => {
                moved = append && offset != *size;
                let at = if append { *size } else { offset };
                file.write_all_at(data, at).map_err(io_errno)?;
                let end = at + data.len() as u64;
                written.insert(at, end);
                *size = (*size).max(end);
            }
            _ => {
                let (file, size, ahead) = self.full(cas)?;
                moved = append && offset != *size;
                let at = if append { *size } else { offset };
                if at < *size {
                    stop_ahead(ahead)?;
                }
                match ahead {
                    Some(a) => a.write_at(data, at),
                    None => file.write_all_at(data, at),
                }
                .map_err(io_errno)?;
                *size = (*size).max(at + data.len() as u64);
            }
        }
        self.append_moved |= moved;
        self.dirty = true;
        Ok(data.len() as u32)
    }

    /// Reads up to `len` bytes at `offset`, uncommitted writes included.
    pub(crate) fn read(&mut self, cas: &Cas, offset: u64, len: u32) -> Result<Bytes, Fail> {
        match &self.staging {
            Staging::Full {
                file, size, ahead, ..
            } => {
                let n = (*size).saturating_sub(offset).min(u64::from(len)) as usize;
                let mut buf = vec![0u8; n];
                match ahead {
                    Some(a) => a.read_exact_at(&mut buf, offset).map_err(Fail::cas)?,
                    None => file.read_exact_at(&mut buf, offset).map_err(io_errno)?,
                }
                Ok(buf.into())
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
                Ok(buf.into())
            }
            Staging::Sparse {
                file,
                base,
                kept,
                size,
                written,
                ..
            } => {
                let n = (*size).saturating_sub(offset).min(u64::from(len)) as usize;
                let mut buf = vec![0u8; n];
                let shown = Shown {
                    file,
                    base,
                    kept: *kept,
                    written,
                };
                shown.fill(cas, self.store.id(), offset, &mut buf)?;
                Ok(buf.into())
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
            Staging::Append { .. } | Staging::Full { .. } | Staging::Sparse { .. } => Ok(None),
        }
    }

    /// Makes `content` the file's content, committed at once, if the file is empty now
    /// (nothing written, staged or committed) and has a name; its staging goes. Whether
    /// it did.
    pub(crate) fn replace_empty(&mut self, content: Content) -> Result<bool, Fail> {
        if self.attr()?.size != 0 {
            return Ok(false);
        }
        let mtime = (now_ms() as i64) * 1_000_000;
        let file = self.file;
        match push_write(&self.store, file, content, mtime) {
            Ok(()) => {}
            Err(FsError::NotFound) => return Ok(false),
            Err(e) => return Err(Fail::Fs(e)),
        }
        self.discard();
        self.dirty = false;
        self.refresh();
        Ok(true)
    }

    /// Sets the size; the change is committed at once, as `truncate(2)` is a metadata call.
    pub(crate) fn truncate(&mut self, cas: &Cas, new_size: u64) -> Result<(), Fail> {
        if new_size == 0 {
            let empty = self.empty_full(cas)?;
            self.discard();
            self.staging = empty;
        } else if self.sparse()? {
            let Staging::Sparse {
                file,
                kept,
                size,
                written,
                ..
            } = &mut self.staging
            else {
                unreachable!("sparse() said the staging is sparse");
            };
            if new_size < *size {
                file.set_len(new_size).map_err(io_errno)?;
                written.cut(new_size);
                *kept = (*kept).min(new_size);
            }
            *size = new_size;
        } else {
            let (file, size, ahead) = self.full(cas)?;
            stop_ahead(ahead)?;
            file.set_len(new_size).map_err(io_errno)?;
            *size = new_size;
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
            // Sparse staging goes on over what it stored, unless that is inline.
            let mut rebased = true;
            let result = match &mut self.staging {
                Staging::Clean => Ok(()),
                Staging::Full { path, ahead, .. } => {
                    let content = cas
                        .put_file(self.store.id(), path, ahead.as_mut())
                        .map_err(Fail::cas)?;
                    push_write(&self.store, file, content, mtime).map_err(Fail::Fs)
                }
                Staging::Sparse {
                    file: staged,
                    base,
                    kept,
                    size,
                    written,
                    ..
                } => {
                    let &mut Content::Manifest {
                        hash,
                        size: base_size,
                    } = base
                    else {
                        unreachable!("sparse staging is over a manifest");
                    };
                    let shown = Shown {
                        file: staged,
                        base,
                        kept: *kept,
                        written,
                    };
                    let store = self.store.id();
                    let content = cas
                        .put_edited(
                            store,
                            hash,
                            base_size,
                            *size,
                            shown.changed(*size),
                            |at, buf| {
                                shown
                                    .fill(cas, store, at, buf)
                                    .map_err(|e| std::io::Error::other(format!("{e:?}")))
                            },
                        )
                        .map_err(Fail::cas)?;
                    let r = push_write(&self.store, file, content.clone(), mtime).map_err(Fail::Fs);
                    if matches!(content, Content::Manifest { .. }) {
                        staged.set_len(0).map_err(io_errno)?;
                        *written = Written::default();
                        *kept = *size;
                        *base = content;
                    } else {
                        rebased = false;
                    }
                    r
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
            if !rebased || matches!(self.staging, Staging::Append { .. }) {
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
            Staging::Append { path, .. }
            | Staging::Full { path, .. }
            | Staging::Sparse { path, .. } => {
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

/// Pushes a write of `content` (modified at `mtime`) as `file`'s new content.
fn push_write(store: &Store, file: FileId, content: Content, mtime: i64) -> Result<(), FsError> {
    store.write_unannounced(|tx| {
        let body = tx.state().plan_write(file, content, mtime)?;
        tx.push(body)?;
        Ok(())
    })
}

/// Ends storing the staging file's chunks ahead, its queued and freed bytes written back
/// into it, so that it can be written anywhere; on failure nothing changes.
fn stop_ahead(ahead: &mut Option<PutAhead>) -> Result<(), Fail> {
    if let Some(a) = ahead {
        a.restore().map_err(Fail::cas)?;
    }
    *ahead = None;
    Ok(())
}

/// Writes `len` bytes that `fill` gives (by their offset from the start) to `file` at
/// `to`, a block at a time.
fn copy_into(
    file: &File,
    to: u64,
    len: u64,
    mut fill: impl FnMut(u64, &mut [u8]) -> Result<(), Fail>,
) -> Result<(), Fail> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = buf.len().min((len - done) as usize);
        fill(done, &mut buf[..n])?;
        file.write_all_at(&buf[..n], to.saturating_add(done))
            .map_err(io_errno)?;
        done += n as u64;
    }
    Ok(())
}

/// What sparse staging shows: written bytes from its file, base's below `kept`, zeros.
struct Shown<'a> {
    file: &'a File,
    base: &'a Content,
    kept: u64,
    written: &'a Written,
}

impl Shown<'_> {
    /// Fills `buf` with the bytes shown at `offset` (all below the staged size).
    fn fill(&self, cas: &Cas, store: StoreId, offset: u64, buf: &mut [u8]) -> Result<(), Fail> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let left = buf.len() - done;
            let (n, from_file) = match self.written.at(at) {
                Ok(r) => ((r.end - at).min(left as u64) as usize, true),
                Err(next) => (
                    next.map_or(left as u64, |n| (n - at).min(left as u64)) as usize,
                    false,
                ),
            };
            let part = &mut buf[done..done + n];
            if from_file {
                self.file.read_exact_at(part, at).map_err(io_errno)?;
            } else {
                let from_base = self.kept.saturating_sub(at).min(n as u64) as usize;
                read_exact(
                    cas,
                    store,
                    std::slice::from_ref(self.base),
                    at,
                    &mut part[..from_base],
                )?;
                part[from_base..].fill(0);
            }
            done += n;
        }
        Ok(())
    }

    /// The range of the new content (`size` bytes) that may differ from base's.
    fn changed(&self, size: u64) -> Range<u64> {
        let base_size = self.base.len();
        let mut start = self.written.span().map_or(size, |r| r.start);
        if self.kept < base_size.min(size) {
            start = start.min(self.kept);
        }
        if size != base_size {
            start = start.min(base_size.min(size));
        }
        let end = if size == base_size && self.kept == base_size {
            self.written.span().map_or(start, |r| r.end)
        } else {
            size
        };
        start.min(end)..end
    }
}

/// Reads up to `len` bytes of `view` (content of `store`) at `offset`.
pub(crate) fn read_view(
    cas: &Cas,
    store: StoreId,
    view: &ContentView,
    offset: u64,
    len: u32,
) -> Result<Bytes, Fail> {
    let n = view.size.saturating_sub(offset).min(u64::from(len)) as usize;
    let bytes = cas
        .read_bytes(store, &view.pieces, offset, n)
        .map_err(Fail::cas)?;
    if bytes.len() != n {
        return Err(Fail::Errno(libc::EIO));
    }
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::Written;

    /// What `w` says of every byte below `len`: written or not.
    fn bytes_of(w: &Written, len: u64) -> Vec<bool> {
        (0..len).map(|at| w.at(at).is_ok()).collect()
    }

    #[test]
    fn written_ranges_merge_cut_and_answer_like_a_byte_map() {
        let mut seed = 0x3141_5926u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for case in 0..200 {
            let mut w = Written::default();
            let mut model = vec![false; 300];
            for _ in 0..next(12) {
                if next(4) == 0 {
                    let at = next(300);
                    w.cut(at);
                    model[at as usize..].fill(false);
                } else {
                    let start = next(280);
                    let end = start + next(20);
                    w.insert(start, end);
                    model[start as usize..end as usize].fill(true);
                }
            }
            assert_eq!(bytes_of(&w, 300), model, "case {case}");
            // Ranges are disjoint and apart, and each answer is the range holding a byte
            // or the next range's start.
            for (at, &set) in model.iter().enumerate() {
                let at = at as u64;
                match w.at(at) {
                    Ok(r) => {
                        assert!(set && r.contains(&at), "case {case} at {at}");
                        assert!(model[r.start as usize..r.end as usize].iter().all(|&b| b));
                        assert!(r.start == 0 || !model[r.start as usize - 1]);
                        assert!(r.end == 300 || !model[r.end as usize]);
                    }
                    Err(next) => {
                        let first = model[at as usize..].iter().position(|&b| b);
                        assert_eq!(next, first.map(|i| at + i as u64), "case {case} at {at}");
                    }
                }
            }
            let first = model.iter().position(|&b| b).map(|i| i as u64);
            let last = model.iter().rposition(|&b| b).map(|i| i as u64 + 1);
            assert_eq!(w.span(), first.zip(last).map(|(a, b)| a..b), "case {case}");
        }
    }
}
