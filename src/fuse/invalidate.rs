//! Kernel cache invalidation: when received intentions or local ops made outside the
//! mount change files, when a request of the kernel changes names beside the one it
//! named, or when the set of stores changes, tell the kernel to drop what it cached.
//!
//! Changes come from each store's event stream (`StoreEvent::Applied` names the touched
//! files and the directories whose entries changed; `Store::write` sends it for local
//! ops too, the FUSE layer's writes excepted), from `Node::watch_stores`, and from the
//! suspects the FUSE layer queues in `Inodes` after its own requests. For each touched
//! file the kernel knows, its inode (attributes and page cache) and every entry handed
//! out for it are invalidated, then the inodes of its old and new parent directories,
//! and of every directory whose entries changed (a removed or moved name's directory
//! may hold no name the kernel knows, yet its cached mtime and ctime are stale).
//!
//! Names are decorated when raw names collide and for conflict copies (`fs/names.rs`),
//! so a change to one name can change what its siblings show: the entries the kernel
//! holds in the same directory under the same raw name, old or new, are looked up again
//! and dropped if they no longer resolve to the same key. A change to a store's
//! snapshots drops its `.snapshots` entries. New names need no invalidation: a failed
//! lookup leaves no cached negative entry (its timeout is zero) and directory listings
//! are not cached.
//!
//! Entries the inode table evicts past its cap (`inodes.rs`) are invalidated here too,
//! so the kernel drops them and forgets their inodes.
//!
//! Notifications run on one dedicated thread that holds no lock while it notifies:
//! `inval_entry` blocks until the kernel has processed it, and the kernel may need a
//! FUSE thread to finish a request first, so a FUSE callback never notifies.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::thread::JoinHandle;

use fuser::{INodeNo, Notifier};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot};

use crate::fs::SNAPSHOTS_DIR;
use crate::ids::{FileId, OpId, StoreId};
use crate::node::Node;
use crate::store::{Store, StoreEvent};

use super::inodes::{Dentry, Inodes, Key, Suspect, MOUNT_ROOT};

/// Changes forwarded from the stores' event streams, waiting to be invalidated.
const CHANGE_QUEUE: usize = 256;

/// A change the kernel must hear about.
enum Change {
    /// Received intentions touched these files of a store and changed the entries of
    /// these directories.
    Files(StoreId, Vec<FileId>, Vec<FileId>),
    /// Events were missed: everything the kernel knows may be stale.
    Lagged,
}

/// The invalidation thread; stopping it (or dropping it) joins it.
pub(crate) struct Invalidator {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Invalidator {
    /// Starts invalidating the kernel caches behind `notifier` for changes to `node`.
    pub(crate) fn start(
        node: Node,
        inodes: Arc<Inodes>,
        notifier: Notifier,
    ) -> std::io::Result<Invalidator> {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("fuse-invalidate".into())
            .spawn(move || {
                let kernel = Kernel {
                    node,
                    inodes,
                    notifier,
                    names: HashMap::new(),
                    snapshots: HashMap::new(),
                };
                rt.block_on(kernel.run(stopped));
            })?;
        Ok(Invalidator {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Invalidator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("kernel cache invalidation thread panicked");
            }
        }
    }
}

/// What the invalidation thread works with.
struct Kernel {
    node: Node,
    inodes: Arc<Inodes>,
    notifier: Notifier,
    /// Each watched store's name when last seen, to notice a remote rename.
    names: HashMap<StoreId, Option<String>>,
    /// Each watched store's snapshots when last seen, to notice one made or dropped.
    snapshots: HashMap<StoreId, Snapshots>,
}

/// A file's parent directory and the (directory, raw name) of each of its entries.
type Places = (Option<FileId>, Vec<(FileId, String)>);

/// A store's snapshots: (label, `Snapshot` op).
type Snapshots = Vec<(String, OpId)>;

/// The snapshots of `store` now.
fn snapshots_of(store: &Store) -> Snapshots {
    store.read(|s| {
        s.snapshots()
            .into_iter()
            .map(|(label, at)| (label.to_owned(), at))
            .collect()
    })
}

impl Kernel {
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        let mut generation = self.node.watch_stores();
        let (tx, mut rx) = mpsc::channel(CHANGE_QUEUE);
        self.watch_new_stores(&tx);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                changed = generation.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.watch_new_stores(&tx);
                    self.forget_gone_stores();
                    self.inval_inode(MOUNT_ROOT);
                }
                Some(change) = rx.recv() => match change {
                    Change::Files(store, files, dirs) => self.files_changed(store, &files, &dirs),
                    Change::Lagged => self.everything_changed(),
                },
                (evicted, suspects) = self.inodes.work() => {
                    for (parent, name) in evicted {
                        self.inval_entry(parent, &name);
                    }
                    for suspect in suspects {
                        self.check(suspect);
                    }
                }
            }
        }
    }

    /// Subscribes to the events of every store not watched yet.
    fn watch_new_stores(&mut self, tx: &mpsc::Sender<Change>) {
        for store in self.node.stores() {
            if self.names.contains_key(&store.id()) {
                continue;
            }
            self.names.insert(
                store.id(),
                store.read(|s| s.store_name().map(str::to_owned)),
            );
            self.snapshots.insert(store.id(), snapshots_of(&store));
            tokio::spawn(forward(store, tx.clone()));
        }
    }

    /// Drops the kernel's entry of each store no longer on the node (left), so its
    /// directory disappears from the mount root at once.
    fn forget_gone_stores(&mut self) {
        let held: BTreeSet<StoreId> = self.node.stores().iter().map(|s| s.id()).collect();
        let gone: Vec<(StoreId, Option<String>)> = self
            .names
            .iter()
            .filter(|(id, _)| !held.contains(id))
            .map(|(id, name)| (*id, name.clone()))
            .collect();
        for (id, name) in gone {
            self.names.remove(&id);
            self.snapshots.remove(&id);
            let shown = name.unwrap_or_else(|| id.to_hex());
            self.inval_entry(MOUNT_ROOT, shown.as_bytes());
        }
    }

    /// Invalidates what the kernel holds about `files` of `store` and their directories,
    /// and the attributes of directories `listed` (whose entries changed).
    fn files_changed(&mut self, store: StoreId, files: &[FileId], listed: &[FileId]) {
        let Some(handle) = self.node.stores().into_iter().find(|s| s.id() == store) else {
            return;
        };
        let mut files = files.to_vec();
        let name = handle.read(|s| s.store_name().map(str::to_owned));
        let mut dirs = BTreeSet::new();
        if self.names.get(&store) != Some(&name) {
            // Renamed remotely: the store's directory changes name at the mount root.
            self.names.insert(store, name);
            files.push(OpId::ROOT);
            dirs.insert(MOUNT_ROOT);
        }
        if let Some(root) = self.snapshots_changed(&handle) {
            dirs.insert(root);
        }
        if self.inodes.peek(&Key::File(store, OpId::ROOT)).is_none() {
            // The kernel holds nothing below a store root it does not know.
            for ino in dirs {
                self.inval_inode(ino);
            }
            return;
        }
        let places: Vec<Places> = handle.read(|s| {
            files
                .iter()
                .map(|&f| (s.parent(f), s.places_of(f)))
                .collect()
        });
        let mut inodes = Vec::new();
        let mut entries: Vec<Dentry> = Vec::new();
        // Entries under the touched files' names, old and new: their siblings' too.
        let mut names: BTreeSet<Dentry> = BTreeSet::new();
        for (&file, (parent, now)) in files.iter().zip(places) {
            for known in self.inodes.known(store, file) {
                inodes.push(known.ino);
                dirs.extend(known.names.iter().map(|(p, _)| *p));
                names.extend(known.names.iter().cloned());
                entries.extend(known.names);
            }
            if let Some(ino) = parent.and_then(|p| self.inodes.peek(&Key::File(store, p))) {
                dirs.insert(ino);
            }
            for (dir, raw) in now {
                if let Some(ino) = self.inodes.peek(&Key::File(store, dir)) {
                    names.insert((ino, raw.into_bytes().into()));
                }
            }
        }
        dirs.extend(
            listed
                .iter()
                .filter_map(|&d| self.inodes.peek(&Key::File(store, d))),
        );
        for (parent, name) in &entries {
            self.inval_entry(*parent, name);
        }
        for (dir, name) in names {
            self.siblings_changed(&handle, dir, &name, &entries);
        }
        for ino in inodes.into_iter().chain(dirs) {
            self.inval_inode(ino);
        }
    }

    /// Checks what a request of the kernel may have left stale beside its own entry.
    fn check(&mut self, suspect: Suspect) {
        match suspect {
            Suspect::Name(dir, name) => {
                let Some((handle, _)) = self.dir_of(dir) else {
                    return;
                };
                let own = (dir, name);
                self.siblings_changed(&handle, own.0, &own.1, std::slice::from_ref(&own));
            }
            Suspect::Stale(dir, name) => self.inval_entry(dir, &name),
            Suspect::Copies(store, file) => {
                let Some(handle) = self.node.stores().into_iter().find(|s| s.id() == store) else {
                    return;
                };
                for known in self.inodes.known(store, file) {
                    if !matches!(known.key, Key::Conflict(..)) {
                        continue;
                    }
                    for (parent, name) in known.names {
                        self.revalidate(&handle, parent, &name, known.ino);
                    }
                    self.inval_inode(known.ino);
                }
            }
        }
    }

    /// The store and directory of directory inode `ino`.
    fn dir_of(&self, ino: u64) -> Option<(Store, FileId)> {
        let Some(Key::File(store, dir)) = self.inodes.get(ino) else {
            return None;
        };
        let handle = self.node.stores().into_iter().find(|s| s.id() == store)?;
        Some((handle, dir))
    }

    /// Looks up again the entries of directory inode `dir` shown for the raw names
    /// `name` may be decorated from (but those in `done`), and drops those that changed.
    fn siblings_changed(&self, store: &Store, dir: u64, name: &[u8], done: &[Dentry]) {
        for (dentry, ino) in self.inodes.siblings(dir, name) {
            if !done.contains(&dentry) {
                self.revalidate(store, dentry.0, &dentry.1, ino);
            }
        }
    }

    /// Drops entry `name` of directory inode `dir`, given for inode `ino`, unless the
    /// store still resolves it to the same file or conflict copy (or, for a local-only
    /// entry, to nothing).
    fn revalidate(&self, store: &Store, dir: u64, name: &[u8], ino: u64) {
        let Some(key @ (Key::File(..) | Key::Conflict(..) | Key::Local(_))) = self.inodes.get(ino)
        else {
            return;
        };
        let Some(Key::File(sid, parent)) = self.inodes.get(dir) else {
            return;
        };
        let name_str = String::from_utf8_lossy(name);
        let now = store.read(|s| s.lookup(parent, &name_str).ok());
        let now = now.map(|node| Key::of(sid, node));
        let stale = match key {
            Key::Local(_) => now.is_some(),
            _ => now != Some(key),
        };
        if stale {
            self.inval_entry(dir, name);
        }
    }

    /// If `store`'s snapshots changed since last seen, drops the entries the kernel
    /// holds under its `.snapshots` directory and that directory's own entry; returns
    /// the inode of the store's root, whose attributes changed.
    fn snapshots_changed(&mut self, store: &Store) -> Option<u64> {
        let now = snapshots_of(store);
        if self.snapshots.get(&store.id()) == Some(&now) {
            return None;
        }
        self.snapshots.insert(store.id(), now);
        if let Some(dir) = self.inodes.peek(&Key::Snapshots(store.id())) {
            for ((parent, name), _) in self.inodes.named(dir, b"", b"") {
                self.inval_entry(parent, &name);
            }
            self.inval_inode(dir);
        }
        let root = self.inodes.peek(&Key::File(store.id(), OpId::ROOT))?;
        self.inval_entry(root, SNAPSHOTS_DIR.as_bytes());
        Some(root)
    }

    /// Invalidates every entry and inode the kernel knows.
    fn everything_changed(&mut self) {
        tracing::info!("store events were missed: invalidating the whole kernel cache");
        let known = self.inodes.all();
        for k in &known {
            for (parent, name) in &k.names {
                self.inval_entry(*parent, name);
            }
        }
        for k in known {
            self.inval_inode(k.ino);
        }
    }

    fn inval_entry(&self, parent: u64, name: &[u8]) {
        if let Err(e) = self
            .notifier
            .inval_entry(INodeNo(parent), OsStr::from_bytes(name))
        {
            tracing::debug!(
                "invalidate entry {parent}/{:?}: {e}",
                OsStr::from_bytes(name)
            );
        }
    }

    fn inval_inode(&self, ino: u64) {
        // Offset 0 and length 0: the attributes and every cached page.
        if let Err(e) = self.notifier.inval_inode(INodeNo(ino), 0, 0) {
            tracing::debug!("invalidate inode {ino}: {e}");
        }
    }
}

/// Forwards `store`'s changes from received intentions until the store closes.
async fn forward(store: Store, tx: mpsc::Sender<Change>) {
    let id = store.id();
    let mut events = store.subscribe();
    drop(store);
    loop {
        let change = match events.recv().await {
            Ok(StoreEvent::Applied { files, dirs, .. }) => Change::Files(id, files, dirs),
            Ok(StoreEvent::Sealed(_)) => continue,
            Err(RecvError::Lagged(_)) => Change::Lagged,
            Err(RecvError::Closed) => return,
        };
        if tx.send(change).await.is_err() {
            return;
        }
    }
}
