//! Kernel cache invalidation: when received intentions change files, or the set of
//! stores changes, tell the kernel to drop what it cached about them.
//!
//! Local changes need none of this: they arrive through the kernel, which updates its
//! own caches. Remote changes come from each store's event stream (`StoreEvent::Applied`
//! names the touched files) and from `Node::watch_stores`. For each touched file the
//! kernel knows, its inode (attributes and page cache) and every entry handed out for it
//! (`Inodes` remembers them) are invalidated, then the inodes of its old and new parent
//! directories, and of every directory whose entries changed (the event names them: a
//! removed or moved name's directory may hold no name the kernel knows, yet its cached
//! mtime and ctime are stale). New names need no entry invalidation: a failed lookup leaves no cached
//! negative entry (its timeout is zero) and directory listings are not cached.
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

use crate::ids::{FileId, OpId, StoreId};
use crate::node::Node;
use crate::store::{Store, StoreEvent};

use super::inodes::{Dentry, Inodes, Key, MOUNT_ROOT};

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
                evicted = self.inodes.evicted() => {
                    for (parent, name) in evicted {
                        self.inval_entry(parent, &name);
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
        let parents: Vec<Option<FileId>> =
            handle.read(|s| files.iter().map(|&f| s.parent(f)).collect());
        let mut inodes = Vec::new();
        let mut entries: Vec<Dentry> = Vec::new();
        for (&file, parent) in files.iter().zip(parents) {
            for known in self.inodes.known(store, file) {
                inodes.push(known.ino);
                dirs.extend(known.names.iter().map(|(p, _)| *p));
                entries.extend(known.names);
            }
            if let Some(ino) = parent.and_then(|p| self.inodes.peek(&Key::File(store, p))) {
                dirs.insert(ino);
            }
        }
        dirs.extend(
            listed
                .iter()
                .filter_map(|&d| self.inodes.peek(&Key::File(store, d))),
        );
        for (parent, name) in entries {
            self.inval_entry(parent, &name);
        }
        for ino in inodes.into_iter().chain(dirs) {
            self.inval_inode(ino);
        }
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
