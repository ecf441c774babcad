//! `fuser::Filesystem` callbacks: convert, call one method, reply.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};

use crate::cas::Content;
use crate::fs::op::{validate_name, Kind, OpBody, SetMeta, MAX_SYMLINK_BYTES};
use crate::fs::{Attr, FsError, FsState, Node, RenameFlags as FsRenameFlags, SNAPSHOTS_DIR};
use crate::ids::{FileId, OpId, StoreId};
use crate::node::Node as LatticeNode;
use crate::store::Store;

use super::access::{Caller, EXEC, READ, WRITE};
use super::errno::io_errno;
use super::errno::{errno, Fail};
use super::inodes::{Inodes, Key, MOUNT_ROOT};
use super::local::{self, LocalPath, Locals};
use super::open_file::{read_view, OpenFile};
use super::passthrough::{Backings, Mode, Passthrough};

mod local_side;
mod snapshot_side;

/// How long the kernel may cache attributes and entries: every change the kernel did
/// not make itself is invalidated (`invalidate.rs`), so this only bounds a miss.
const TTL: Duration = Duration::from_secs(60);

/// Stacking depth of the filesystems a backing file may be on: 2 lets it be on an
/// overlayfs (a container's root), and nothing then stacks on this mount.
const PASSTHROUGH_STACK_DEPTH: u32 = 2;

/// An open file's state, shared by all of its handles.
type SharedFile = Arc<Mutex<OpenFile>>;

/// What a file handle refers to.
#[derive(Clone)]
struct FileRef {
    /// Shared state of a store file (`None` for conflict copies).
    open: Option<SharedFile>,
    /// The inode opened.
    ino: u64,
    key: Key,
    write: bool,
    append: bool,
}

/// One open file or directory handle.
enum Handle {
    /// A file handle.
    File(FileRef),
    /// A directory listing, taken at `opendir` so offsets stay stable.
    Dir(Vec<DirEntry>),
    /// A local-only file, open, and its inode.
    Local(Arc<std::fs::File>, u64),
}

#[derive(Clone)]
struct DirEntry {
    name: Vec<u8>,
    key: Key,
    kind: FileType,
}

/// The filesystem served to the kernel.
pub(crate) struct LatticeFs {
    node: LatticeNode,
    staging: PathBuf,
    inodes: Arc<Inodes>,
    /// The local-only entries the kernel was given.
    locals: Locals,
    /// How each inode's open handles were answered: passed through or not.
    backings: Backings,
    stores: RwLock<HashMap<StoreId, Store>>,
    open_files: Mutex<HashMap<(StoreId, FileId), SharedFile>>,
    /// Per file, the committed content the kernel's page cache is known to hold (a
    /// prefix of): set when an open empties the cache and when the last handle closes,
    /// so a later open may keep the cache.
    kernel_cache: Mutex<HashMap<(StoreId, FileId), Vec<Content>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    mounted_at: SystemTime,
    uid: u32,
    gid: u32,
    /// Whose access the daemon checks modes for (`access.rs`); `None` where the kernel
    /// checks them (`default_permissions`).
    checks: Option<Caller>,
}

type Result<T> = std::result::Result<T, Fail>;

/// An opened handle, how the kernel is to treat it, and its backing id if passed through.
type Opened = (FileHandle, FopenFlags, Option<Arc<BackingId>>);

fn to_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn now_ns() -> i64 {
    to_ns(SystemTime::now())
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn name_str(name: &OsStr) -> Result<&str> {
    let s = std::str::from_utf8(name.as_bytes()).map_err(|_| Fail::Errno(libc::EINVAL))?;
    if s.len() > crate::fs::op::MAX_NAME_BYTES {
        return Err(Fail::Fs(FsError::NameTooLong));
    }
    Ok(s)
}

/// What opening a file with `flags` needs: reading, writing or both by the access
/// mode, writing to truncate, and only executing for `execve`'s open.
fn open_wants(flags: i32) -> u16 {
    /// The kernel's `__FMODE_EXEC`, set in the flags of the open made by `execve`.
    const FMODE_EXEC: i32 = 0x20;
    if flags & FMODE_EXEC != 0 {
        return EXEC;
    }
    let mut want = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => READ,
        libc::O_WRONLY => WRITE,
        _ => READ | WRITE,
    };
    if flags & libc::O_TRUNC != 0 {
        want |= WRITE;
    }
    want
}

/// What reading (`READ`) or changing (`WRITE`) extended attribute `name` needs: the
/// kernel leaves `security.` and `system.` names to the filesystem's own rules and
/// checks `trusted.` itself, and the rest need the same access as the file's bytes.
fn xattr_wants(name: &OsStr, want: u16) -> u16 {
    let name = name.as_bytes();
    let free = [&b"security."[..], b"system.", b"trusted."];
    if free.iter().any(|p| name.starts_with(p)) {
        0
    } else {
        want
    }
}

fn reply_entry(reply: ReplyEntry, r: Result<FileAttr>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

impl LatticeFs {
    /// A filesystem over `node`'s stores, staging writes under `staging`, numbering
    /// inodes in `inodes` (shared with the kernel cache invalidator), checking modes
    /// for `checks` unless the kernel does.
    pub(crate) fn new(
        node: LatticeNode,
        staging: PathBuf,
        inodes: Arc<Inodes>,
        passthrough: Mode,
        checks: Option<Caller>,
    ) -> Self {
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            node,
            staging,
            inodes,
            locals: Locals::default(),
            backings: Backings::new(passthrough),
            stores: RwLock::new(HashMap::new()),
            open_files: Mutex::new(HashMap::new()),
            kernel_cache: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            mounted_at: SystemTime::now(),
            uid,
            gid,
            checks,
        }
    }

    /// The caller modes are checked for here, unless it is root or the kernel checks.
    fn bound_caller(&self) -> Option<&Caller> {
        self.checks.as_ref().filter(|c| c.is_bound())
    }

    /// Fails with `EACCES` unless the caller may do each of `want` to directory inode
    /// `ino`: root may do anything to a directory, so its attributes are not read then.
    fn permit_dir(&self, ino: INodeNo, want: u16) -> Result<()> {
        match self.bound_caller() {
            Some(_) => self.permit(ino, want),
            None => Ok(()),
        }
    }

    /// Fails with `EACCES` unless the caller may do each of `want` to inode `ino`.
    fn permit(&self, ino: INodeNo, want: u16) -> Result<()> {
        let Some(caller) = self.checks.as_ref() else {
            return Ok(());
        };
        if want == 0 || !caller.is_bound() && want & EXEC == 0 {
            return Ok(());
        }
        let attr = self.attr_of(ino.0, self.key(ino)?)?;
        if caller.may(&attr, want) {
            Ok(())
        } else {
            Err(Fail::Errno(libc::EACCES))
        }
    }

    /// Fails unless the caller may change what `meta` and `size` change of inode `ino`,
    /// as a local filesystem decides: `touch` when every time given is "now",
    /// `truncating` when the change comes through a handle opened for writing. Clears
    /// the set-group-ID bit of a new mode where the caller is not in the file's group.
    fn permit_setattr(
        &self,
        ino: INodeNo,
        meta: &mut SetMeta,
        size: Option<u64>,
        touch: bool,
        truncating: bool,
    ) -> Result<()> {
        let Some(caller) = self.bound_caller() else {
            return Ok(());
        };
        let attr = self.attr_of(ino.0, self.key(ino)?)?;
        let owner = caller.owns(&attr);
        let retimed = meta.mtime_ns.is_some() || meta.atime_ns.is_some();
        let not_permitted = (meta.mode.is_some() && !owner)
            || meta.uid.is_some_and(|u| !owner || u != attr.uid)
            || meta
                .gid
                .is_some_and(|g| !owner || g != attr.gid && !caller.in_group(g))
            || (retimed && !touch && !owner);
        if not_permitted {
            return Err(Fail::Errno(libc::EPERM));
        }
        let writes = size.is_some() || (retimed && !owner);
        if writes && !truncating && !caller.may(&attr, WRITE) {
            return Err(Fail::Errno(libc::EACCES));
        }
        if let Some(mode) = &mut meta.mode {
            if !caller.in_group(meta.gid.unwrap_or(attr.gid)) {
                *mode &= !libc::S_ISGID;
            }
        }
        Ok(())
    }

    fn store(&self, id: StoreId) -> Result<Store> {
        if let Some(s) = self.stores.read().get(&id) {
            return Ok(s.clone());
        }
        // Refilled from the node's list, so a store removed since (left) is dropped.
        let mut map = self.stores.write();
        map.clear();
        for s in self.node.stores() {
            map.insert(s.id(), s);
        }
        map.get(&id).cloned().ok_or(Fail::Fs(FsError::NotFound))
    }

    /// The stores as listed at the mount root: (shown name, store), unique names.
    fn root_entries(&self) -> Vec<(String, Store)> {
        let stores = self.node.stores();
        let names: Vec<String> = stores
            .iter()
            .map(|s| {
                s.read(|st| st.store_name().map(str::to_owned))
                    .unwrap_or_else(|| s.id().to_hex())
            })
            .collect();
        let mut out = Vec::with_capacity(stores.len());
        for (i, s) in stores.into_iter().enumerate() {
            let dup = names.iter().filter(|n| **n == names[i]).count() > 1;
            let shown = if dup {
                format!("{} ({})", names[i], &s.id().to_hex()[..8])
            } else {
                names[i].clone()
            };
            out.push((shown, s));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn key(&self, ino: INodeNo) -> Result<Key> {
        self.inodes.get(ino.0).ok_or(Fail::Errno(libc::ESTALE))
    }

    /// The store and directory file id behind a directory inode inside a store.
    fn dir(&self, ino: INodeNo) -> Result<(Store, FileId)> {
        match self.key(ino)? {
            Key::File(s, f) => Ok((self.store(s)?, f)),
            Key::MountRoot => Err(Fail::Fs(FsError::NotPermitted)),
            Key::Conflict(..) => Err(Fail::Fs(FsError::NotDir)),
            Key::Local(_) => Err(Fail::Errno(libc::EXDEV)),
            Key::Snapshots(_) | Key::Snap(..) => Err(Fail::Fs(FsError::ReadOnly)),
        }
    }

    fn root_attr(&self) -> FileAttr {
        let subdirs = self.node.stores().len() as u32;
        self.virtual_dir(MOUNT_ROOT, self.mounted_at, 0o755, subdirs)
    }

    /// A directory the adapter makes up (the mount root, `.snapshots`), owned by the
    /// daemon's user, with all its times `t`.
    fn virtual_dir(&self, ino: u64, t: SystemTime, perm: u16, subdirs: u32) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::Directory,
            perm,
            nlink: 2 + subdirs,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn fuse_attr(ino: u64, a: &Attr, conflict: bool) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: to_time(a.atime_ns),
            mtime: to_time(a.mtime_ns),
            ctime: to_time(a.ctime_ns),
            crtime: to_time(a.crtime_ns),
            kind: file_type(a.kind),
            perm: (if conflict { a.perm & !0o222 } else { a.perm }) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev as u32,
            blksize: super::MAX_IO,
            flags: 0,
        }
    }

    /// Attributes of `key`, with uncommitted writes of an open file applied.
    fn attr_of(&self, ino: u64, key: Key) -> Result<FileAttr> {
        if let Key::Local(id) = key {
            let m = std::fs::symlink_metadata(self.local(id)?.1).map_err(io_errno)?;
            return Ok(local::attr(ino, &m));
        }
        if let Some(attr) = self.snapshot_attr(ino, key) {
            return attr;
        }
        let Some((sid, node)) = key.node() else {
            return Ok(self.root_attr());
        };
        let store = self.store(sid)?;
        let open = match key {
            Key::File(_, file) => self.open_files.lock().get(&(sid, file)).cloned(),
            _ => None,
        };
        let mut a = match &open {
            Some(open) => open.lock().attr()?,
            None => store.read(|s| s.attr(node))?,
        };
        let me = self.node.identity().public();
        store.read(|s| s.mask_foreign_privileges(node, &mut a, &me));
        Ok(Self::fuse_attr(ino, &a, matches!(key, Key::Conflict(..))))
    }

    /// Counts a kernel lookup of `key` as entry `name` of `parent` and returns its attributes.
    fn entry(&self, key: Key, parent: INodeNo, name: &str) -> Result<FileAttr> {
        let ino = self.inodes.lookup(key, parent.0, name.as_bytes());
        match self.attr_of(ino, key) {
            Ok(a) => {
                if a.kind == FileType::Directory {
                    self.inodes.keep(ino);
                }
                Ok(a)
            }
            Err(e) => {
                self.inodes.forget(ino, 1);
                Err(e)
            }
        }
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr> {
        let name = name_str(name)?;
        match self.key(parent)? {
            Key::MountRoot => {
                let store = self
                    .root_entries()
                    .into_iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, s)| s)
                    .ok_or(Fail::Fs(FsError::NotFound))?;
                self.entry(Key::File(store.id(), OpId::ROOT), parent, name)
            }
            Key::File(sid, dir) if self.is_snapshots_dir(sid, dir, name)? => {
                self.entry(Key::Snapshots(sid), parent, name)
            }
            Key::File(sid, dir) => match self.store(sid)?.read(|s| s.lookup(dir, name)) {
                Ok(node) => self.entry(Key::of(sid, node), parent, name),
                Err(FsError::NotFound) => {
                    self.local_entry(LocalPath::new(sid, dir, name), parent, name)
                }
                Err(e) => Err(e.into()),
            },
            Key::Local(id) => self.local_entry(self.local(id)?.0.child(name), parent, name),
            Key::Conflict(..) => Err(Fail::Fs(FsError::NotDir)),
            dir @ (Key::Snapshots(_) | Key::Snap(..)) => {
                self.entry(self.snapshot_lookup(dir, name)?, parent, name)
            }
        }
    }

    /// Creates a node of `kind` in `parent` and returns its key and attributes.
    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        rdev: u64,
        content: Content,
    ) -> Result<(Key, FileAttr)> {
        let name = name_str(name)?;
        self.permit_dir(parent, WRITE | EXEC)?;
        if self.key(parent)? == Key::MountRoot {
            if kind != Kind::Dir {
                return Err(Fail::Fs(FsError::NotPermitted));
            }
            validate_name(name).map_err(|_| Fail::Fs(FsError::InvalidName))?;
            if self.root_entries().iter().any(|(n, _)| n == name) {
                return Err(Fail::Fs(FsError::Exists));
            }
            let store = self.node.create_store(name).map_err(|e| {
                tracing::warn!("create store {name}: {e}");
                Fail::Errno(libc::EIO)
            })?;
            self.stores.write().insert(store.id(), store.clone());
            let key = Key::File(store.id(), OpId::ROOT);
            return Ok((key, self.entry(key, parent, name)?));
        }
        if matches!(self.key(parent)?, Key::File(_, OpId::ROOT)) && name == SNAPSHOTS_DIR {
            // Reserved for the snapshots of the store.
            return Err(Fail::Fs(FsError::NotPermitted));
        }
        let (uid, gid) = (req.uid(), req.gid());
        if let Some(p) = self.local_place(self.key(parent)?, name, Some(kind == Kind::Dir))? {
            let target = match &content {
                Content::Inline(b) => b.clone(),
                Content::Manifest { .. } => Bytes::new(),
            };
            local::create(&self.local_real(&p), kind, perm & 0o7777, uid, gid, &target)
                .map_err(io_errno)?;
            let key = Key::Local(self.locals.id(p));
            return Ok((key, self.entry(key, parent, name)?));
        }
        let (store, dir) = self.dir(parent)?;
        let file = store.write_unannounced(|tx| {
            let body = tx.state().plan_create(
                dir,
                name,
                kind,
                perm & 0o7777,
                uid,
                gid,
                rdev,
                content,
                now_ns(),
            )?;
            Ok(tx.push(body)?)
        })?;
        self.suspect_name(parent, name);
        let key = Key::File(store.id(), file);
        Ok((key, self.entry(key, parent, name)?))
    }

    /// Has the invalidation thread check the entries of `parent` decorated from the
    /// same raw name as `name`, which a request of the kernel just changed.
    fn suspect_name(&self, parent: INodeNo, name: &str) {
        self.inodes.suspect_name(parent.0, name.as_bytes());
    }

    fn open_file(&self, key: Key) -> Option<SharedFile> {
        let Key::File(sid, file) = key else {
            return None;
        };
        let store = self.store(sid).ok()?;
        let mut map = self.open_files.lock();
        let open = map
            .entry((sid, file))
            .or_insert_with(|| Arc::new(Mutex::new(OpenFile::new(store, file, &self.staging))))
            .clone();
        open.lock().handles += 1;
        Some(open)
    }

    fn new_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, h);
        FileHandle(fh)
    }

    /// Opens inode `ino` (`key`) with open `flags`: the handle, how the kernel is to
    /// treat it, and the backing id when it is passed through (`register` makes one).
    fn open_handle(
        &self,
        ino: u64,
        key: Key,
        flags: i32,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Result<Opened> {
        let acc = flags & libc::O_ACCMODE;
        let write = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if let Key::Local(id) = key {
            let file = std::fs::OpenOptions::new()
                .read(acc != libc::O_WRONLY)
                .write(write)
                .append(flags & libc::O_APPEND != 0)
                .open(self.local(id)?.1)
                .map_err(io_errno)?;
            let backing = self.backings.open(ino, Some(&file), register);
            let fh = self.new_handle(Handle::Local(Arc::new(file), ino));
            return Ok((fh, FopenFlags::empty(), backing));
        }
        if write && matches!(key, Key::Conflict(..) | Key::Snap(..)) {
            return Err(Fail::Fs(FsError::ReadOnly));
        }
        if let (true, Key::File(sid, _)) = (write, key) {
            if self.store(sid)?.is_deleted() {
                return Err(Fail::Fs(FsError::ReadOnly));
            }
        }
        // A handle that only writes bypasses the page cache: its writes reach the staging
        // file straight from the writer's buffer, without first being copied into pages
        // that nobody reads through it (the kernel drops cached pages a direct write
        // overlaps, so other handles' reads stay coherent). A handle that only reads
        // has nothing to commit when it is closed (the kernel truncates for `O_TRUNC`
        // with a `setattr`, which commits), so the kernel skips its flush.
        let mut fopen = match acc {
            libc::O_WRONLY => FopenFlags::FOPEN_DIRECT_IO,
            libc::O_RDONLY => FopenFlags::FOPEN_NOFLUSH,
            _ => FopenFlags::empty(),
        };
        if self.keep_kernel_cache(key, acc != libc::O_WRONLY) {
            fopen |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        // Counted, never passed through: an inode may become a local file's by a rename
        // while this handle is open, and its next opens must not be passed through then.
        self.backings.open(ino, None, register);
        let fh = self.new_handle(Handle::File(FileRef {
            open: self.open_file(key),
            ino,
            key,
            write,
            append: flags & libc::O_APPEND != 0,
        }));
        Ok((fh, fopen, None))
    }

    /// Whether the kernel may keep its page cache for `key` at open: no append landed
    /// away from the kernel's offset and its committed content is what the cache was
    /// last filled with.
    /// An open that may not keep it empties it, so the cache is filled from the content
    /// committed now: that is recorded for the opens that follow, when this one `reads`
    /// (a write-only open, a create's among them, neither needs nor fills the cache).
    fn keep_kernel_cache(&self, key: Key, reads: bool) -> bool {
        let Key::File(sid, file) = key else {
            return false;
        };
        let open = self.open_files.lock().get(&(sid, file)).cloned();
        if open.is_some_and(|o| o.lock().append_moved) {
            return false;
        }
        if !reads && !self.kernel_cache.lock().contains_key(&(sid, file)) {
            return false;
        }
        let node = Node::Entry { entry: file, file };
        let Some(view) = self
            .store(sid)
            .ok()
            .and_then(|s| s.read(|st| st.content(node)).ok())
        else {
            return false;
        };
        let mut cache = self.kernel_cache.lock();
        if cache.get(&(sid, file)) == Some(&view.pieces) {
            return true;
        }
        cache.insert((sid, file), view.pieces);
        false
    }

    fn file_handle(&self, fh: FileHandle) -> Result<FileRef> {
        match self.handles.lock().get(&fh.0) {
            Some(Handle::File(f)) => Ok(f.clone()),
            _ => Err(Fail::Errno(libc::EBADF)),
        }
    }

    fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Bytes> {
        if let Some(f) = self.local_handle(fh) {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0; size as usize];
            let mut done = 0;
            while done < buf.len() {
                match f.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_errno(e)),
                }
            }
            buf.truncate(done);
            return Ok(buf.into());
        }
        let FileRef { open, key, .. } = self.file_handle(fh)?;
        let cas = self.node.cas();
        if let Some(found) = self.snapshot_node(key) {
            let (sid, tree, node) = found?;
            return read_view(cas, sid, &tree.content(node)?, offset, size);
        }
        let (sid, node) = key.node().ok_or(Fail::Fs(FsError::IsDir))?;
        let view = match open {
            Some(open) => {
                let clean = open.lock().clean_view()?;
                match clean {
                    Some(view) => view,
                    None => return open.lock().read(cas, offset, size),
                }
            }
            None => self.store(sid)?.read(|s| s.content(node))?,
        };
        read_view(cas, sid, &view, offset, size)
    }

    fn do_write(&self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32> {
        if let Some(f) = self.local_handle(fh) {
            use std::os::unix::fs::FileExt;
            f.write_all_at(data, offset).map_err(io_errno)?;
            return Ok(data.len() as u32);
        }
        let FileRef {
            open,
            write,
            append,
            ..
        } = self.file_handle(fh)?;
        if !write {
            return Err(Fail::Errno(libc::EBADF));
        }
        let open = open.ok_or(Fail::Errno(libc::EBADF))?;
        let cas = self.node.cas();
        let n = open.lock().write(cas, offset, data, append)?;
        Ok(n)
    }

    /// Copies a whole file over an empty file of the same store (what `cp` asks) as a
    /// write of the same content: no byte is read or stored. `None` for any other copy,
    /// which the kernel then makes with reads and writes.
    fn do_copy_file_range(
        &self,
        (fh_in, offset_in): (FileHandle, u64),
        (fh_out, offset_out): (FileHandle, u64),
        len: u64,
    ) -> Result<Option<u32>> {
        if self.local_handle(fh_in).is_some() || self.local_handle(fh_out).is_some() {
            return Ok(None);
        }
        let (src, dst) = (self.file_handle(fh_in)?, self.file_handle(fh_out)?);
        if !dst.write {
            return Err(Fail::Errno(libc::EBADF));
        }
        let (Key::File(sid, from), Key::File(to_sid, to), Some(src_open), Some(dst_open)) =
            (src.key, dst.key, src.open, dst.open)
        else {
            return Ok(None);
        };
        // Uncommitted writes of the source are in its staging only: copied byte by byte.
        let Some(view) = src_open.lock().clean_view()? else {
            return Ok(None);
        };
        if offset_in >= view.size {
            return Ok(Some(0));
        }
        let whole = offset_in == 0 && offset_out == 0 && len >= view.size;
        let (true, true, Ok(n), [content]) = (
            whole,
            sid == to_sid && from != to,
            u32::try_from(view.size),
            &view.pieces[..],
        ) else {
            return Ok(None);
        };
        if !dst_open.lock().replace_empty(content.clone())? {
            return Ok(None);
        }
        self.inodes.suspect_copies(sid, to);
        Ok(Some(n))
    }

    fn commit(&self, fh: FileHandle, durable: bool) -> Result<()> {
        if let Some(f) = self.local_handle(fh) {
            if durable {
                f.sync_all().map_err(io_errno)?;
            }
            return Ok(());
        }
        let FileRef { open, key, .. } = self.file_handle(fh)?;
        if let Some(open) = open {
            open.lock().commit(self.node.cas(), durable)?;
            if let Key::File(sid, file) = key {
                self.inodes.suspect_copies(sid, file);
            }
        } else if durable {
            if let Some((sid, _)) = key.node() {
                self.store(sid)?.flush().map_err(Fail::store)?;
            }
        }
        Ok(())
    }

    fn do_release(&self, fh: FileHandle) -> Result<()> {
        let handle = self.handles.lock().remove(&fh.0);
        match &handle {
            Some(Handle::Local(_, ino)) => {
                self.backings.release(*ino);
                return Ok(());
            }
            Some(Handle::File(f)) => self.backings.release(f.ino),
            _ => {}
        }
        let Some(Handle::File(FileRef {
            open: Some(open),
            key: Key::File(sid, file),
            write,
            ..
        })) = handle
        else {
            return Ok(());
        };
        // A handle commits the writes when it can write, or when it is the last (a
        // writer's failed commit is retried): a reader's close publishes nothing of a
        // writer still at work.
        let result = {
            let mut o = open.lock();
            if write || o.handles == 1 {
                o.commit(self.node.cas(), false)
            } else {
                Ok(())
            }
        };
        self.inodes.suspect_copies(sid, file);
        let mut map = self.open_files.lock();
        let mut o = open.lock();
        o.handles -= 1;
        if o.handles == 0 {
            map.remove(&(sid, file));
            let mut cache = self.kernel_cache.lock();
            let node = Node::Entry { entry: file, file };
            let view = self
                .store(sid)
                .ok()
                .and_then(|s| s.read(|st| st.content(node)).ok());
            match view {
                Some(view) if !o.append_moved && result.is_ok() => {
                    cache.insert((sid, file), view.pieces);
                }
                _ => {
                    cache.remove(&(sid, file));
                }
            }
        }
        result
    }

    fn do_setattr(&self, ino: INodeNo, meta: SetMeta, size: Option<u64>) -> Result<FileAttr> {
        let key = self.key(ino)?;
        if let Key::Local(id) = key {
            local::set_attr(
                &self.local(id)?.1,
                size,
                meta.mode,
                (meta.uid, meta.gid),
                (meta.atime_ns.map(to_time), meta.mtime_ns.map(to_time)),
            )
            .map_err(io_errno)?;
            return self.attr_of(ino.0, key);
        }
        let Key::File(sid, file) = key else {
            return Err(Fail::Fs(if key == Key::MountRoot {
                FsError::NotPermitted
            } else {
                FsError::ReadOnly
            }));
        };
        let store = self.store(sid)?;
        if let Some(size) = size {
            let kind = store
                .read(|s| s.attr(Node::Entry { entry: file, file }))?
                .kind;
            if kind == Kind::Dir {
                return Err(Fail::Fs(FsError::IsDir));
            }
            if kind != Kind::File {
                return Err(Fail::Fs(FsError::Invalid));
            }
            let existing = self.open_files.lock().get(&(sid, file)).cloned();
            let open = existing.unwrap_or_else(|| {
                Arc::new(Mutex::new(OpenFile::new(
                    store.clone(),
                    file,
                    &self.staging,
                )))
            });
            open.lock().truncate(self.node.cas(), size)?;
        }
        let changes = meta.mode.is_some()
            || meta.uid.is_some()
            || meta.gid.is_some()
            || meta.mtime_ns.is_some()
            || meta.atime_ns.is_some();
        if changes {
            store.write_unannounced(|tx| {
                let body = tx.state().plan_set_meta(SetMeta { file, ..meta })?;
                tx.push(body)?;
                Ok(())
            })?;
        }
        self.inodes.suspect_copies(sid, file);
        self.attr_of(ino.0, key)
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        let (name, newname) = (name_str(name)?, name_str(newname)?);
        let fs_flags = FsRenameFlags {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Fail::Errno(libc::EINVAL));
        }
        self.permit_dir(parent, WRITE | EXEC)?;
        self.permit_dir(newparent, WRITE | EXEC)?;
        if parent != newparent && self.bound_caller().is_some() {
            // A directory moved elsewhere has its `..` rewritten.
            let moved = [Some(name), fs_flags.exchange.then_some(newname)];
            let dirs = moved.into_iter().flatten().zip([parent, newparent]);
            for (moved, dir) in dirs {
                if let Some(ino) = self.inodes.child(dir.0, moved.as_bytes()) {
                    let key = self.key(INodeNo(ino))?;
                    if self.attr_of(ino, key)?.kind == FileType::Directory {
                        self.permit_dir(INodeNo(ino), WRITE)?;
                    }
                }
            }
        }
        match (self.key(parent)?, self.key(newparent)?) {
            (Key::MountRoot, Key::MountRoot) => self.rename_store(name, newname, fs_flags),
            (Key::MountRoot, _) | (_, Key::MountRoot) => Err(Fail::Fs(FsError::CrossStore)),
            (from_dir, to_dir) => {
                if self.store_of(from_dir)? != self.store_of(to_dir)? {
                    return Err(Fail::Fs(FsError::CrossStore));
                }
                if matches!(to_dir, Key::File(_, OpId::ROOT)) && newname == SNAPSHOTS_DIR {
                    return Err(Fail::Fs(FsError::NotPermitted));
                }
                let from = self.local_place(from_dir, name, None)?;
                let src_dir = match (&from, from_dir) {
                    (Some(p), _) => std::fs::symlink_metadata(self.local_real(p))
                        .map_err(io_errno)?
                        .is_dir(),
                    (None, Key::File(sid, dir)) => {
                        self.store(sid)?
                            .read(|s| s.lookup(dir, name).and_then(|n| s.attr(n)))?
                            .kind
                            == Kind::Dir
                    }
                    _ => return Err(Fail::Fs(FsError::NotDir)),
                };
                let to = self.local_place(to_dir, newname, Some(src_dir))?;
                if (from.is_some() || to.is_some()) && fs_flags.exchange {
                    return Err(Fail::Errno(libc::EXDEV));
                }
                let renamed = match (from, to, from_dir, to_dir) {
                    (None, None, Key::File(sid, dir), Key::File(_, newdir)) => {
                        self.store(sid)?.write_unannounced(|tx| {
                            let bodies = tx
                                .state()
                                .plan_rename(dir, name, newdir, newname, fs_flags)?;
                            for body in bodies {
                                tx.push(body)?;
                            }
                            Ok(())
                        })?;
                        Ok(())
                    }
                    (Some(a), Some(b), ..) => self.rename_local(&a, &b, fs_flags.noreplace),
                    (Some(a), None, _, Key::File(sid, newdir)) => self.local_to_replicated(
                        &a,
                        sid,
                        (newparent.0, newdir),
                        newname,
                        fs_flags.noreplace,
                    ),
                    (None, Some(b), Key::File(sid, dir), _) => {
                        self.replicated_to_local(sid, dir, name, &b, fs_flags.noreplace)
                    }
                    _ => Err(Fail::Fs(FsError::NotDir)),
                };
                if renamed.is_ok() {
                    self.suspect_name(parent, name);
                    self.suspect_name(newparent, newname);
                }
                renamed
            }
        }
    }

    fn rename_store(&self, name: &str, newname: &str, flags: FsRenameFlags) -> Result<()> {
        validate_name(newname).map_err(|_| Fail::Fs(FsError::InvalidName))?;
        let entries = self.root_entries();
        let store = entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .ok_or(Fail::Fs(FsError::NotFound))?;
        if name == newname {
            return Ok(());
        }
        if flags.exchange || entries.iter().any(|(n, _)| n == newname) {
            // Stores are never replaced or merged by a rename.
            return Err(Fail::Fs(if flags.exchange {
                FsError::NotPermitted
            } else {
                FsError::Exists
            }));
        }
        let newname = newname.to_owned();
        let me = self.node.identity().public();
        store.write_unannounced(|tx| {
            // Store names are system ops: other replicas accept them from admins only.
            if !matches!(
                tx.state().member(&me),
                Some((crate::fs::op::Role::Admin, _))
            ) {
                return Err(FsError::NotPermitted);
            }
            tx.push(OpBody::SetStoreName(newname))?;
            Ok(())
        })?;
        Ok(())
    }

    fn do_remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<()> {
        let name = name_str(name)?;
        self.permit_dir(parent, WRITE | EXEC)?;
        let key = self.key(parent)?;
        if let Key::Local(_) = key {
            return self.remove_local(key, name, dir, Fail::Fs(FsError::NotFound));
        }
        let (store, pdir) = self.dir(parent)?;
        if dir {
            // A directory holding local entries lists them, so it is not empty.
            if let Ok(Node::Entry { file, .. }) = store.read(|s| s.lookup(pdir, name)) {
                let real = self.node.local_dir(store.id()).join(file.to_hex());
                if std::fs::read_dir(real).is_ok_and(|mut d| d.next().is_some()) {
                    return Err(Fail::Fs(FsError::NotEmpty));
                }
            }
        }
        // The replicated entry is tried first. A name is local only where no replicated
        // entry holds it, and a local entry may go where the store takes no writes, so
        // the local side is looked at only when the replicated removal fails.
        let removed = store.write_unannounced(|tx| {
            let body = if dir {
                tx.state().plan_rmdir(pdir, name)?
            } else {
                tx.state().plan_unlink(pdir, name)?
            };
            tx.push(body)?;
            Ok(())
        });
        match removed {
            Ok(()) => {
                self.suspect_name(parent, name);
                Ok(())
            }
            Err(e) => self.remove_local(key, name, dir, e.into()),
        }
    }

    /// Removes local entry `name` of `parent`, or fails with `otherwise` if it holds none.
    fn remove_local(&self, parent: Key, name: &str, dir: bool, otherwise: Fail) -> Result<()> {
        let Some(p) = self.local_place(parent, name, None)? else {
            return Err(otherwise);
        };
        let real = self.local_real(&p);
        let r = if dir {
            std::fs::remove_dir(real)
        } else {
            std::fs::remove_file(real)
        };
        r.map_err(io_errno)
    }

    fn do_link(&self, ino: INodeNo, newparent: INodeNo, newname: &OsStr) -> Result<FileAttr> {
        let newname = name_str(newname)?;
        self.permit_dir(newparent, WRITE | EXEC)?;
        let key = self.key(ino)?;
        if let Some(caller) = self.bound_caller() {
            if !caller.may_link(&self.attr_of(ino.0, key)?) {
                return Err(Fail::Errno(libc::EPERM));
            }
        }
        let Key::File(sid, file) = key else {
            return Err(Fail::Fs(FsError::NotPermitted));
        };
        let (store, dir) = self.dir(newparent)?;
        if store.id() != sid {
            return Err(Fail::Fs(FsError::CrossStore));
        }
        store.write_unannounced(|tx| {
            let body = tx.state().plan_link(file, dir, newname)?;
            tx.push(body)?;
            Ok(())
        })?;
        self.suspect_name(newparent, newname);
        self.entry(key, newparent, newname)
    }

    fn list_dir(&self, ino: INodeNo) -> Result<Vec<DirEntry>> {
        let key = self.key(ino)?;
        let mut out = vec![
            DirEntry {
                name: b".".to_vec(),
                key,
                kind: FileType::Directory,
            },
            DirEntry {
                name: b"..".to_vec(),
                key,
                kind: FileType::Directory,
            },
        ];
        match key {
            Key::MountRoot => {
                for (name, store) in self.root_entries() {
                    out.push(DirEntry {
                        name: name.into_bytes(),
                        key: Key::File(store.id(), OpId::ROOT),
                        kind: FileType::Directory,
                    });
                }
            }
            Key::File(sid, dir) => {
                let store = self.store(sid)?;
                store.read(|s| -> Result<()> {
                    if s.attr(Node::Entry {
                        entry: dir,
                        file: dir,
                    })?
                    .kind
                        != Kind::Dir
                    {
                        return Err(Fail::Fs(FsError::NotDir));
                    }
                    if let Some(p) = s.parent(dir) {
                        out[1].key = Key::File(sid, p);
                    } else {
                        out[1].key = Key::MountRoot;
                    }
                    let snapshots = dir == OpId::ROOT && !s.snapshots().is_empty();
                    if snapshots {
                        out.push(DirEntry {
                            name: SNAPSHOTS_DIR.as_bytes().to_vec(),
                            key: Key::Snapshots(sid),
                            kind: FileType::Directory,
                        });
                    }
                    for (name, node) in s.readdir(dir)? {
                        if snapshots && name == SNAPSHOTS_DIR {
                            continue;
                        }
                        let kind = s.attr(node).map(|a| file_type(a.kind))?;
                        out.push(DirEntry {
                            name: name.into_bytes(),
                            key: Key::of(sid, node),
                            kind,
                        });
                    }
                    Ok(())
                })?;
                let real = self.node.local_dir(sid).join(dir.to_hex());
                self.list_local(&real, |name| LocalPath::new(sid, dir, name), &mut out)?;
            }
            Key::Local(id) => {
                let (p, real) = self.local(id)?;
                out[1].key = match p.parent() {
                    Some(up) => Key::Local(self.locals.id(up)),
                    None => Key::File(p.store, p.anchor),
                };
                if !std::fs::symlink_metadata(&real).map_err(io_errno)?.is_dir() {
                    return Err(Fail::Fs(FsError::NotDir));
                }
                self.list_local(&real, |name| p.child(name), &mut out)?;
            }
            Key::Conflict(..) => return Err(Fail::Fs(FsError::NotDir)),
            dir @ (Key::Snapshots(_) | Key::Snap(..)) => self.snapshot_list(dir, &mut out)?,
        }
        Ok(out)
    }

    fn dir_entries(&self, fh: FileHandle, offset: u64) -> Result<Vec<(u64, DirEntry)>> {
        match self.handles.lock().get(&fh.0) {
            Some(Handle::Dir(entries)) => Ok(entries
                .iter()
                .enumerate()
                .skip(offset as usize)
                .map(|(i, e)| (i as u64 + 1, e.clone()))
                .collect()),
            _ => Err(Fail::Errno(libc::EBADF)),
        }
    }

    fn xattr_target(&self, ino: INodeNo) -> Result<(Store, FileId)> {
        match self.key(ino)? {
            Key::File(s, f) => Ok((self.store(s)?, f)),
            Key::MountRoot | Key::Local(_) => Err(Fail::Errno(libc::ENOTSUP)),
            Key::Conflict(..) | Key::Snapshots(_) | Key::Snap(..) => {
                Err(Fail::Fs(FsError::ReadOnly))
            }
        }
    }

    fn do_setxattr(&self, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let (store, file) = self.xattr_target(ino)?;
        let name = Bytes::copy_from_slice(name.as_bytes());
        let value = Bytes::copy_from_slice(value);
        store.write_unannounced(|tx| {
            let exists = tx.state().xattr_get(file, &name).is_ok();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(FsError::Exists);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(FsError::NoAttr);
            }
            let body = tx.state().plan_set_meta(SetMeta {
                file,
                xattr_set: vec![(name, value)],
                ..Default::default()
            })?;
            tx.push(body)?;
            Ok(())
        })?;
        self.inodes.suspect_copies(store.id(), file);
        Ok(())
    }

    fn do_removexattr(&self, ino: INodeNo, name: &OsStr) -> Result<()> {
        let (store, file) = self.xattr_target(ino)?;
        let name = Bytes::copy_from_slice(name.as_bytes());
        store.write_unannounced(|tx| {
            tx.state().xattr_get(file, &name)?;
            let body = tx.state().plan_set_meta(SetMeta {
                file,
                xattr_remove: vec![name],
                ..Default::default()
            })?;
            tx.push(body)?;
            Ok(())
        })?;
        self.inodes.suspect_copies(store.id(), file);
        Ok(())
    }

    fn xattr_bytes(&self, ino: INodeNo, name: Option<&OsStr>) -> Result<Vec<u8>> {
        let read = |s: &FsState, file: FileId| -> Result<Vec<u8>> {
            Ok(match name {
                Some(n) => s.xattr_get(file, n.as_bytes())?.to_vec(),
                None => {
                    let mut out = Vec::new();
                    for n in s.xattr_list(file)? {
                        out.extend_from_slice(&n);
                        out.push(0);
                    }
                    out
                }
            })
        };
        match self.key(ino)? {
            Key::File(s, f) | Key::Conflict(s, f, _) => self.store(s)?.read(|st| read(st, f)),
            Key::Snap(sid, at, Node::Entry { file, .. } | Node::Conflict { file, .. }) => {
                read(&*self.snapshot_tree(sid, at)?, file)
            }
            Key::MountRoot | Key::Local(_) | Key::Snapshots(_) => match name {
                Some(_) => Err(Fail::Fs(FsError::NoAttr)),
                None => Ok(Vec::new()),
            },
        }
    }

    fn statfs_data(&self) -> Result<libc::statvfs> {
        let path = std::ffi::CString::new(self.node.data_dir().as_os_str().as_bytes())
            .map_err(|_| Fail::Errno(libc::EINVAL))?;
        // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(Fail::Errno(libc::EIO));
        }
        Ok(st)
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>>) {
    match r {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(errno(e)),
    }
}

fn time_ns(t: TimeOrNow) -> i64 {
    match t {
        TimeOrNow::Now => now_ns(),
        TimeOrNow::SpecificTime(t) => to_ns(t),
    }
}

impl Filesystem for LatticeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES;
        if let Err(missing) = config.add_capabilities(wanted) {
            tracing::info!("kernel lacks FUSE capabilities {missing:?}");
        }
        if self.backings.mode.get() == Passthrough::On {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(PASSTHROUGH_STACK_DEPTH).is_ok();
            if !granted {
                self.backings.mode.set(Passthrough::Unsupported);
            }
        }
        let _ = config.set_max_write(super::MAX_IO);
        let _ = config.set_max_readahead(super::MAX_IO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.permit_dir(parent, EXEC);
        reply_entry(reply, r.and_then(|()| self.do_lookup(parent, name)));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        match self.inodes.forget(ino.0, nlookup) {
            // The kernel dropped the inode with its page cache.
            Some(Key::File(sid, file)) => {
                self.kernel_cache.lock().remove(&(sid, file));
            }
            Some(Key::Local(id)) => self.locals.forget(id),
            _ => {}
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.key(ino).and_then(|k| self.attr_of(ino.0, k)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut meta = SetMeta {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            mtime_ns: mtime.map(time_ns),
            atime_ns: atime.map(time_ns),
            ..Default::default()
        };
        let touch = ![atime, mtime]
            .iter()
            .any(|t| matches!(t, Some(TimeOrNow::SpecificTime(_))));
        let r = self
            .permit_setattr(ino, &mut meta, size, touch, fh.is_some())
            .and_then(|()| self.do_setattr(ino, meta, size));
        match r {
            Ok(a) => {
                if mode.is_some() && a.kind == FileType::Directory && self.bound_caller().is_some()
                {
                    // Entries below were reached through its old mode.
                    self.inodes.suspect_children(ino.0);
                }
                reply.attr(&TTL, &a)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.key(ino).and_then(|k| match k {
            Key::File(s, f) => Ok(self.store(s)?.read(|st| st.readlink(f))?),
            Key::Snap(sid, at, Node::Entry { file, .. }) => {
                Ok(self.snapshot_tree(sid, at)?.readlink(file)?)
            }
            Key::Local(id) => Ok(Bytes::from(
                std::fs::read_link(self.local(id)?.1)
                    .map_err(io_errno)?
                    .into_os_string()
                    .into_vec(),
            )),
            _ => Err(Fail::Errno(libc::EINVAL)),
        });
        match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Some(Kind::File),
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDev),
            libc::S_IFBLK => Some(Kind::BlockDev),
            _ => None,
        };
        let r = match kind {
            Some(kind) => self
                .make(
                    req,
                    parent,
                    name,
                    kind,
                    mode & !umask,
                    u64::from(rdev),
                    Content::empty(),
                )
                .map(|(_, a)| a),
            None => Err(Fail::Errno(libc::EINVAL)),
        };
        reply_entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.make(
            req,
            parent,
            name,
            Kind::Dir,
            mode & !umask,
            0,
            Content::empty(),
        );
        reply_entry(reply, r.map(|(_, a)| a));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_remove(parent, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if parent.0 == MOUNT_ROOT {
            // A store is not a directory to remove: leaving it is a decision with its
            // own command. EBUSY, as for a mount point, says "in use", not "forbidden".
            let name = name.to_string_lossy();
            tracing::warn!(
                "rmdir of store {name:?} at the mount root refused: to stop sharing it, run `lattice-mount leave {name}`"
            );
            reply_empty(reply, Err(Fail::Errno(libc::EBUSY)));
            return;
        }
        reply_empty(reply, self.do_remove(parent, name, true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes();
        let r = if target.len() > MAX_SYMLINK_BYTES {
            Err(Fail::Fs(FsError::NameTooLong))
        } else {
            let content = Content::Inline(Bytes::copy_from_slice(target));
            self.make(req, parent, link_name, Kind::Symlink, 0o777, 0, content)
                .map(|(_, a)| a)
        };
        reply_entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.do_rename(parent, name, newparent, newname, flags),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.do_link(ino, newparent, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.key(ino).and_then(|k| {
            if matches!(k, Key::MountRoot | Key::Snapshots(_)) {
                return Err(Fail::Fs(FsError::IsDir));
            }
            self.permit(ino, open_wants(flags.0))?;
            self.open_handle(ino.0, k, flags.0, |f| reply.open_backing(f))
        });
        match r {
            Ok((fh, fopen, Some(id))) => reply.opened_passthrough(fh, fopen, &id),
            Ok((fh, fopen, None)) => reply.opened(fh, fopen),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.commit(fh, false));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.do_release(fh));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self.do_copy_file_range((fh_in, offset_in), (fh_out, offset_out), len) {
            Ok(Some(n)) => reply.written(n),
            Ok(None) => reply.error(errno(Fail::Errno(libc::EOPNOTSUPP))),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.commit(fh, true));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.permit_dir(ino, READ).and_then(|()| self.list_dir(ino)) {
            Ok(entries) => reply.opened(self.new_handle(Handle::Dir(entries)), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.dir_entries(fh, offset) {
            Ok(entries) => {
                for (next, e) in entries {
                    let ino = self.inodes.peek(&e.key).unwrap_or(u64::MAX);
                    if reply.add(INodeNo(ino), next, e.kind, OsStr::from_bytes(&e.name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.dir_entries(fh, offset) {
            Ok(entries) => {
                for (next, e) in entries {
                    let dot = e.name == b"." || e.name == b"..";
                    let child = if dot {
                        self.inodes.peek(&e.key).unwrap_or(MOUNT_ROOT)
                    } else {
                        self.inodes.lookup(e.key, ino.0, &e.name)
                    };
                    let Ok(attr) = self.attr_of(child, e.key) else {
                        if !dot {
                            self.inodes.forget(child, 1);
                        }
                        continue;
                    };
                    if !dot && attr.kind == FileType::Directory {
                        self.inodes.keep(child);
                    }
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(INodeNo(child), next, name, &TTL, &attr, Generation(0)) {
                        if !dot {
                            self.inodes.forget(child, 1);
                        }
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.key(ino).and_then(|k| match k.node() {
            Some((sid, _)) => self.store(sid)?.flush().map_err(Fail::store),
            None => Ok(()),
        });
        reply_empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.statfs_data() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                crate::fs::op::MAX_NAME_BYTES as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let r = self.permit(ino, xattr_wants(name, WRITE));
        reply_empty(
            reply,
            r.and_then(|()| self.do_setxattr(ino, name, value, flags)),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = self.permit(ino, xattr_wants(name, READ));
        reply_xattr(
            reply,
            size,
            r.and_then(|()| self.xattr_bytes(ino, Some(name))),
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.xattr_bytes(ino, None));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.permit(ino, xattr_wants(name, WRITE));
        reply_empty(reply, r.and_then(|()| self.do_removexattr(ino, name)));
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let want = (mask.bits() & 0o7) as u16;
        reply_empty(reply, self.key(ino).and_then(|_| self.permit(ino, want)));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self
            .make(
                req,
                parent,
                name,
                Kind::File,
                mode & !umask,
                0,
                Content::empty(),
            )
            .and_then(|(key, attr)| {
                let opened = self.open_handle(attr.ino.0, key, flags, |f| reply.open_backing(f))?;
                Ok((opened, attr))
            });
        match r {
            Ok(((fh, fopen, Some(id)), attr)) => {
                reply.created_passthrough(&TTL, &attr, Generation(0), fh, fopen, &id)
            }
            Ok(((fh, fopen, None), attr)) => reply.created(&TTL, &attr, Generation(0), fh, fopen),
            Err(e) => reply.error(errno(e)),
        }
    }
}
