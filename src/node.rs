//! The node facade: one data dir, one identity and clock, the content store and every
//! store this node belongs to. The daemon, the FUSE adapter and the control socket all
//! work through a cloneable [`Node`].
//!
//! Every method may block (redb, file I/O): call them from a plain thread or
//! `spawn_blocking`, never from a tokio worker.

use std::fmt;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::budget::CacheBudget;
use crate::cas::{Cas, CasError, Content, GcReport};
use crate::fs::op::{clean_label, validate_label, Op, OpError, SetMeta};
use crate::fs::{FsError, FsState};
use crate::hlc::{Clock, Hlc};
use crate::identity::{Identity, IdentityError, PublicKey};
use crate::ids::{FileId, Hash, OpId, StoreId};
use crate::store::{Genesis, HistoryItem, Store, StoreError, StoreOptions};

mod changes;
mod conflicts;
#[cfg(test)]
mod conflicts_tests;
mod ignored;
mod leave;
mod paths;
mod restore;
#[cfg(test)]
mod restore_tests;
mod space;
mod verify;

pub use changes::Change;
pub use conflicts::{Conflict, ConflictError, Keep, LiveVersion, Resolution};
pub use leave::Exported;
pub use restore::{
    DeletedFile, Pick, RestoreError, Restored, Version, VersionState, MIN_VERSION_PREFIX,
};
pub use space::SpaceReading;
pub use verify::{FileProof, ProvenVersion, VersionOp};

/// Key file name inside the data dir.
const KEY_FILE: &str = "node.key";
/// Display name file inside the data dir.
const NAME_FILE: &str = "node.name";
/// Content store directory inside the data dir.
const BLOBS_DIR: &str = "blobs";
/// Directory holding one subdirectory per store, named by the store id in hex.
const STORES_DIR: &str = "stores";
/// Per-handle write staging directory (used by the FUSE adapter).
const STAGING_DIR: &str = "staging";
/// Marker file in a store's directory while it is still being bootstrapped.
const JOINING_FILE: &str = "joining";
/// Marker file in a store's directory: the local blobs of the store carry its ownership
/// tags, because this version created it or claimed its content once at open.
const CLAIMED_FILE: &str = "blobs-claimed";
/// Directory in a store's directory holding the files its ignore rules keep local.
const LOCAL_DIR: &str = "local";
/// The display name when neither a stored name nor the host name gives a valid one.
const DEFAULT_DISPLAY_NAME: &str = "node";

/// Errors opening a node or serving requests on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A file or directory of the data dir could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Underlying error.
        source: io::Error,
    },
    /// The node key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The content store could not be opened or shut down.
    #[error("content store: {0}")]
    Cas(#[from] CasError),
    /// A store could not be opened, created, queried or shut down.
    #[error("store {store}: {source}")]
    Store {
        /// The store's name or directory.
        store: String,
        /// Underlying error.
        source: StoreError,
    },
    /// The display name is empty, too long, or holds a control character or `/`.
    #[error("invalid display name {0:?}: 1 to 255 bytes, no control characters or '/'")]
    InvalidDisplayName(String),
    /// The host name could not be read to default the display name.
    #[error("cannot read the host name for a default display name: {0}")]
    Hostname(io::Error),
    /// A store name is not a valid file name.
    #[error("invalid store name: {0}")]
    InvalidStoreName(OpError),
    /// A store with this name already exists on this node.
    #[error("a store named {0:?} already exists")]
    StoreExists(String),
    /// No store of this node has this name.
    #[error("no store named {0:?}")]
    UnknownStore(String),
    /// A path inside a store does not resolve.
    #[error("{path}: {source}")]
    Path {
        /// The path, relative to the mount root, up to the failing component.
        path: String,
        /// Why the lookup failed.
        source: FsError,
    },
    /// This node already has the store.
    #[error("already a member of store {0}")]
    AlreadyMember(String),
    /// A path is not a store or a file in one (empty, the mount root, or with `..`).
    #[error("invalid path {0:?}: name a store or a file inside one")]
    InvalidPath(String),
    /// An export's directory holds something already.
    #[error("{0} is not empty: export into a new or empty directory")]
    ExportNotEmpty(String),
    /// A version could not be listed or restored.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// A conflict could not be listed or resolved.
    #[error(transparent)]
    Conflict(#[from] ConflictError),
}

/// A running node: identity, clock, content store and stores. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    identity: Identity,
    display_name: String,
    clock: Arc<Mutex<Clock>>,
    cas: Cas,
    /// The cache budget, split over the content store and the store databases.
    budget: CacheBudget,
    stores: Mutex<Vec<Store>>,
    /// Bumped whenever a store is added, so the mount root can be refreshed.
    stores_generation: tokio::sync::watch::Sender<u64>,
    /// Stores still being bootstrapped: not shown in the mount yet.
    joining: Mutex<Vec<Store>>,
    /// Store directories that could not be opened, with why; the others run without them.
    unreadable: Vec<Unreadable>,
    /// Each store's content space as last measured (see `space`).
    space: Mutex<space::SpaceSlots>,
    /// The ignore rules: which new names stay local.
    ignore: ignored::IgnoreRules,
}

/// A store directory that could not be opened at startup, and why.
#[derive(Debug)]
pub struct Unreadable {
    /// The store's directory.
    pub dir: PathBuf,
    /// Why it could not be opened.
    pub error: StoreError,
}

/// One op in a file's history, with the intention that carried it.
#[derive(Clone, Debug)]
pub struct HistoryOp {
    /// The intention's hash.
    pub intention: Hash,
    /// The intention's author.
    pub author: PublicKey,
    /// The author's display name in the store; empty when it is not a member.
    pub author_name: String,
    /// The op.
    pub op: Op,
    /// The intention's `prev` (its author's previous intention).
    pub prev: Option<Hash>,
    /// The intention's deps (the store heads its author had seen).
    pub deps: Vec<Hash>,
    /// The intention's signed bytes as stored (see `intention::signed_parts`).
    pub bytes: bytes::Bytes,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.identity.public())
            .field("data_dir", &self.inner.data_dir)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the node in `data_dir`, creating the dir (0700) and its layout if needed.
    ///
    /// The display name is `display_name` if given (and then stored), else the stored
    /// one, else the host name. `rt` runs the content store's async work.
    pub fn open(
        data_dir: &Path,
        display_name: Option<&str>,
        rt: tokio::runtime::Handle,
    ) -> Result<Node, NodeError> {
        Node::open_within(data_dir, display_name, rt, CacheBudget::default())
    }

    /// [`Node::open`] with the caches sized from `budget` (see `budget`).
    pub fn open_within(
        data_dir: &Path,
        display_name: Option<&str>,
        rt: tokio::runtime::Handle,
        budget: CacheBudget,
    ) -> Result<Node, NodeError> {
        create_private_dir(data_dir)?;
        make_private(data_dir)?;
        create_private_dir(&data_dir.join(STORES_DIR))?;
        create_private_dir(&data_dir.join(STAGING_DIR))?;
        let identity = Identity::load_or_create(&data_dir.join(KEY_FILE))?;
        let display_name = resolve_display_name(&data_dir.join(NAME_FILE), display_name)?;
        let cas = Cas::open_within(&data_dir.join(BLOBS_DIR), rt, &budget)?;
        let clock = Arc::new(Mutex::new(Clock::new(Hlc::ZERO)));
        let OpenedStores {
            stores,
            joining,
            unreadable,
        } = open_stores(&data_dir.join(STORES_DIR), &identity, &clock, &budget)?;
        for store in stores.iter().chain(&joining) {
            sync_content_first(store, &cas);
            claim_untagged_content(&data_dir.join(STORES_DIR), store, &cas);
        }
        tracing::info!(
            node = %identity.public(),
            stores = stores.len(),
            "opened node in {}",
            data_dir.display()
        );
        Ok(Node {
            inner: Arc::new(Inner {
                data_dir: data_dir.to_path_buf(),
                identity,
                display_name,
                clock,
                cas,
                budget,
                stores: Mutex::new(stores),
                stores_generation: tokio::sync::watch::Sender::new(0),
                joining: Mutex::new(joining),
                unreadable,
                space: Mutex::new(space::SpaceSlots::new()),
                ignore: ignored::IgnoreRules::new(),
            }),
        })
    }

    /// Options of a store opened beside `held` others: its share of the cache budget.
    /// (Shares are fixed when a store opens, so stores added while the daemon runs may
    /// take the sum past the budget until the next start.)
    fn store_options(&self, held: usize) -> StoreOptions {
        StoreOptions {
            cache_bytes: self.inner.budget.store_cache_bytes(held + 1),
            ..StoreOptions::default()
        }
    }

    /// The node's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The node's display name (used in member records and conflict names).
    pub fn display_name(&self) -> &str {
        &self.inner.display_name
    }

    /// The cache budget the node was opened with.
    pub fn cache_budget(&self) -> CacheBudget {
        self.inner.budget
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The content store.
    pub fn cas(&self) -> &Cas {
        &self.inner.cas
    }

    /// Every store of this node, sorted by name.
    pub fn stores(&self) -> Vec<Store> {
        let mut stores: Vec<(String, Store)> = self
            .inner
            .stores
            .lock()
            .iter()
            .map(|s| (store_name(s), s.clone()))
            .collect();
        stores.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id().cmp(&b.1.id())));
        stores.into_iter().map(|(_, s)| s).collect()
    }

    /// Collects the content of `store` (every store when `None`): drops what no current
    /// or retained version needs and deletes the blobs no store keeps (see
    /// `store::retention`, `cas::gc`). Returns what each store's collection freed.
    /// Stores still being joined are never collected: their projection is partial.
    pub fn gc(&self, store: Option<&Store>) -> Result<Vec<(String, GcReport)>, NodeError> {
        let stores = self.stores();
        let ids: Vec<StoreId> = stores
            .iter()
            .chain(self.inner.joining.lock().iter())
            .map(Store::id)
            .collect();
        let chosen = match store {
            Some(s) => vec![s.clone()],
            None => stores,
        };
        let mut out = Vec::with_capacity(chosen.len());
        for s in chosen {
            let name = store_name(&s);
            let failed = |source| NodeError::Store {
                store: name.clone(),
                source,
            };
            s.flush().map_err(failed)?;
            let applied = s.applied();
            let plan = s.content_plan().map_err(failed)?;
            let keep: Vec<Content> = plan.current.iter().chain(&plan.retained).cloned().collect();
            let freed = self.inner.cas.collect(s.id(), &keep, &plan.named, &ids)?;
            let space = self
                .inner
                .cas
                .space(s.id(), &plan.current, &plan.retained)?;
            self.keep_space(&s, applied, space);
            tracing::info!(store = %name, blobs = freed.blobs, bytes = freed.bytes, "content collected");
            out.push((name, freed));
        }
        Ok(out)
    }

    /// A counter that changes whenever the set of stores does (a store created or joined).
    pub fn watch_stores(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.stores_generation.subscribe()
    }

    /// Tells watchers that the set of stores changed; call after adding a store.
    fn stores_changed(&self) {
        self.inner.stores_generation.send_modify(|g| *g += 1);
    }

    /// The store with id `id`, joined or still joining.
    pub fn store_by_id(&self, id: StoreId) -> Option<Store> {
        let inner = &self.inner;
        let found = inner.stores.lock().iter().find(|s| s.id() == id).cloned();
        found.or_else(|| inner.joining.lock().iter().find(|s| s.id() == id).cloned())
    }

    /// The directory of store `id`.
    pub fn store_dir(&self, id: StoreId) -> PathBuf {
        self.inner.data_dir.join(STORES_DIR).join(id.to_hex())
    }

    /// The directory holding store `id`'s local-only entries (see `IGNORE_FILE`).
    pub fn local_dir(&self, id: StoreId) -> PathBuf {
        self.store_dir(id).join(LOCAL_DIR)
    }

    /// Whether a new entry `name` (a directory if `is_dir`) in directory `dir` of `store`
    /// stays local: its ignore rules or the defaults match it.
    pub fn is_ignored(&self, store: &Store, dir: FileId, name: &str, is_dir: bool) -> bool {
        self.inner
            .ignore
            .is_ignored(&self.inner.cas, store, dir, name, is_dir)
    }

    /// Lines of `store`'s `.latticeignore` files read so far that were skipped, with why.
    pub fn ignore_problems(&self, store: StoreId) -> Vec<String> {
        self.inner.ignore.problems(store)
    }

    /// Files (of any kind but directories) and bytes held local-only in store `id`.
    pub fn local_usage(&self, id: StoreId) -> (u64, u64) {
        let (mut files, mut bytes) = (0, 0);
        let mut stack = vec![self.local_dir(id)];
        while let Some(dir) = stack.pop() {
            let Ok(listing) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in listing.flatten() {
                match e.metadata() {
                    Ok(m) if m.is_dir() => stack.push(e.path()),
                    Ok(m) => {
                        files += 1;
                        bytes += m.len();
                    }
                    Err(_) => {}
                }
            }
        }
        (files, bytes)
    }

    /// Stores still being bootstrapped, with the bootstrap state saved for each.
    pub fn joining(&self) -> Vec<(Store, JoinState)> {
        self.inner
            .joining
            .lock()
            .iter()
            .filter_map(|s| Some((s.clone(), JoinState::load(&self.store_dir(s.id()))?)))
            .collect()
    }

    /// Creates an empty, not yet visible replica of store `id` founded by `founder`, to
    /// be bootstrapped from `state.inviter`; returns the existing one if already joining.
    pub fn begin_join(
        &self,
        id: StoreId,
        founder: PublicKey,
        state: &JoinState,
    ) -> Result<Store, NodeError> {
        let mut joining = self.inner.joining.lock();
        if let Some(s) = joining.iter().find(|s| s.id() == id) {
            return Ok(s.clone());
        }
        if self.inner.stores.lock().iter().any(|s| s.id() == id) {
            return Err(NodeError::AlreadyMember(id.to_hex()));
        }
        let dir = self.store_dir(id);
        let store_err = |source| NodeError::Store {
            store: id.to_hex(),
            source,
        };
        create_private_dir(&dir)?;
        mark_claimed(&dir)?;
        state.save(&dir)?;
        let store = Store::join_with(
            &dir,
            id,
            founder,
            self.inner.identity.clone(),
            self.inner.clock.clone(),
            self.store_options(joining.len()),
        )
        .map_err(store_err)?;
        make_private(&dir)?;
        sync_content_first(&store, &self.inner.cas);
        joining.push(store.clone());
        Ok(store)
    }

    /// Records how far the bootstrap of joining store `id` got.
    pub fn save_join_state(&self, id: StoreId, state: &JoinState) -> Result<(), NodeError> {
        state.save(&self.store_dir(id))
    }

    /// Makes a bootstrapped store visible in the mount.
    pub fn finish_join(&self, id: StoreId) -> Result<(), NodeError> {
        let mut joining = self.inner.joining.lock();
        let Some(pos) = joining.iter().position(|s| s.id() == id) else {
            return Ok(());
        };
        let path = self.store_dir(id).join(JOINING_FILE);
        std::fs::remove_file(&path).map_err(|source| NodeError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let store = joining.remove(pos);
        self.inner.stores.lock().push(store);
        drop(joining);
        self.stores_changed();
        tracing::info!(store = %id.to_hex(), "joined store");
        Ok(())
    }

    /// The store named `name`, if this node has one.
    pub fn store_by_name(&self, name: &str) -> Option<Store> {
        self.stores().into_iter().find(|s| store_name(s) == name)
    }

    /// Creates a new store named `name` with a random id, this node as its admin.
    pub fn create_store(&self, name: &str) -> Result<Store, NodeError> {
        crate::fs::op::validate_name(name).map_err(NodeError::InvalidStoreName)?;
        // Held across creation so that two concurrent creates cannot both pass the check.
        let mut stores = self.inner.stores.lock();
        if stores.iter().any(|s| store_name(s) == name) {
            return Err(NodeError::StoreExists(name.to_string()));
        }
        let id = StoreId::random();
        let dir = self.inner.data_dir.join(STORES_DIR).join(id.to_hex());
        create_private_dir(&dir)?;
        if let Err(e) = mark_claimed(&dir) {
            remove_failed_store_dir(&dir);
            return Err(e);
        }
        let genesis = Genesis {
            id,
            name,
            display_name: &self.inner.display_name,
        };
        let store = Store::create_with(
            &dir,
            genesis,
            self.inner.identity.clone(),
            self.inner.clock.clone(),
            self.store_options(stores.len()),
        )
        .map_err(|source| {
            remove_failed_store_dir(&dir);
            NodeError::Store {
                store: name.to_string(),
                source,
            }
        })?;
        make_private(&dir)?;
        sync_content_first(&store, &self.inner.cas);
        // The store's directory belongs to whoever runs this node, created now.
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let now_ns = crate::hlc::now_ms() as i64 * 1_000_000;
        store
            .write(|tx| {
                let body = tx.state().plan_set_meta(SetMeta {
                    file: OpId::ROOT,
                    mode: Some(0o755),
                    uid: Some(uid),
                    gid: Some(gid),
                    mtime_ns: Some(now_ns),
                    ..Default::default()
                })?;
                tx.push(body)?;
                Ok(())
            })
            .map_err(|source| NodeError::Path {
                path: name.to_string(),
                source,
            })?;
        stores.push(store.clone());
        drop(stores);
        self.stores_changed();
        tracing::info!(store = %id.to_hex(), "created store {name:?}");
        Ok(store)
    }

    /// Store directories that could not be opened at startup, sorted by directory.
    pub fn unreadable(&self) -> &[Unreadable] {
        &self.inner.unreadable
    }

    /// The history of the file at `path`, relative to the mount root
    /// (`<store name>/a/b`; leading `/` and `.` components are ignored; a deleted
    /// file is found under its old name), in (clock, author) order.
    pub fn history(&self, path: &str) -> Result<Vec<HistoryOp>, NodeError> {
        let (store, name, rest) = self.locate(path)?;
        let file = store.read(|state| resolve(state, &name, &rest))?;
        let items = store.history(file).map_err(|source| NodeError::Store {
            store: name.to_string(),
            source,
        })?;
        let mut ops: Vec<HistoryOp> =
            store.read(|state| items.iter().flat_map(|i| history_ops(state, i)).collect());
        ops.sort_by_key(|h| (h.op.hlc, h.author));
        Ok(ops)
    }

    /// The store a path relative to the mount root names (`<store name>/a/b`; leading
    /// `/` and `.` components are ignored), its name, and the names below its root.
    fn locate(&self, path: &str) -> Result<(Store, String, Vec<String>), NodeError> {
        let mut parts = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(NodeError::InvalidPath(path.to_string())),
                part => parts.push(part.to_string()),
            }
        }
        let Some((name, rest)) = parts.split_first() else {
            return Err(NodeError::InvalidPath(path.to_string()));
        };
        let store = self
            .store_by_name(name)
            .ok_or_else(|| NodeError::UnknownStore(name.to_string()))?;
        Ok((store, name.clone(), rest.to_vec()))
    }

    /// Shuts down every store (durably committing what they hold), then the content store.
    /// Returns the first error after attempting all of them.
    pub fn shutdown(&self) -> Result<(), NodeError> {
        let mut first = None;
        let all: Vec<Store> = {
            let stores = self.inner.stores.lock();
            let joining = self.inner.joining.lock();
            stores.iter().chain(joining.iter()).cloned().collect()
        };
        for store in all.iter() {
            if let Err(source) = store.shutdown() {
                let name = store_name(store);
                tracing::error!("shutting down store {name:?}: {source}");
                first.get_or_insert(NodeError::Store {
                    store: name,
                    source,
                });
            }
        }
        if let Err(e) = self.inner.cas.shutdown() {
            tracing::error!("shutting down the content store: {e}");
            first.get_or_insert(NodeError::Cas(e));
        }
        first.map_or(Ok(()), Err)
    }
}

/// Creates `dir` (and missing parents) with mode 0700.
fn create_private_dir(dir: &Path) -> Result<(), NodeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| NodeError::Io {
            path: dir.display().to_string(),
            source,
        })
}

/// Mode of every directory in the data dir: only its owner may list or enter it.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every regular file in the data dir (keys, redb files, blobs, staging).
const PRIVATE_FILE_MODE: u32 = 0o600;

/// Gives `path` and everything under it (not following symlinks) the private modes:
/// directories 0700, regular files 0600, so a data dir made by an older version or a
/// library that follows the umask is closed to other local users. Other file types
/// (the control socket) are left alone, and so is the key file, whose mode is the
/// identity's to check: an exposed key is refused, never quietly hidden.
fn make_private(path: &Path) -> Result<(), NodeError> {
    if path.file_name().is_some_and(|n| n == KEY_FILE) {
        return Ok(());
    }
    use std::os::unix::fs::PermissionsExt;
    let io = |source| NodeError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    let want = if meta.is_dir() {
        PRIVATE_DIR_MODE
    } else if meta.is_file() {
        PRIVATE_FILE_MODE
    } else {
        return Ok(());
    };
    if meta.permissions().mode() & 0o7777 != want {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(want)).map_err(io)?;
    }
    // Local-only entries keep the modes their users gave them: the 0700 directories
    // above them keep others out.
    if meta.is_dir() && path.file_name().is_none_or(|n| n != LOCAL_DIR) {
        for entry in std::fs::read_dir(path).map_err(io)? {
            make_private(&entry.map_err(io)?.path())?;
        }
    }
    Ok(())
}

/// Writes `text` to the new or replaced file `path` with mode 0600.
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// Picks the display name (given, stored, else host name) and stores it if it changed.
/// A given name must be valid ([`check_display_name`]); a stored one written by an
/// older version, or a host name, is cleaned ([`clean_label`]) instead, so the node
/// still opens and never signs an invalid name.
fn resolve_display_name(path: &Path, given: Option<&str>) -> Result<String, NodeError> {
    let io = |source| NodeError::Io {
        path: path.display().to_string(),
        source,
    };
    let stored = match std::fs::read_to_string(path) {
        Ok(s) => Some(s.trim_end_matches('\n').to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let name = match (given, &stored) {
        (Some(given), _) => check_display_name(given)?,
        (None, Some(stored)) => clean_label(stored),
        (None, None) => clean_label(&hostname()?),
    };
    let name = if name.is_empty() {
        DEFAULT_DISPLAY_NAME.to_string()
    } else {
        name
    };
    if stored.as_deref() != Some(name.as_str()) {
        if let Some(old) = stored.as_deref().filter(|_| given.is_none()) {
            tracing::warn!("stored display name {old:?} is not valid; using {name:?}");
        }
        write_private(path, &format!("{name}\n")).map_err(io)?;
    }
    Ok(name)
}

/// A display name given by the user (`up --name`, `join --name`), trimmed; refused
/// unless it is 1 to [`MAX_LABEL_BYTES`](crate::fs::op::MAX_LABEL_BYTES) bytes without control characters or `/`
/// (the rule every replica applies to a signed member record).
pub fn check_display_name(given: &str) -> Result<String, NodeError> {
    let name = given.trim();
    if name.is_empty() || validate_label(name).is_err() {
        return Err(NodeError::InvalidDisplayName(
            given.chars().take(64).collect(),
        ));
    }
    Ok(name.to_string())
}

/// The host name, via `gethostname(2)`.
fn hostname() -> Result<String, NodeError> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(NodeError::Hostname(io::Error::last_os_error()));
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// Removes the directory of a store whose creation failed. Its id is fresh and random:
/// nothing else can live in it.
fn remove_failed_store_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!("cannot remove {} after a failed create: {e}", dir.display());
    }
}

/// Records in store directory `dir` that the store's local blobs carry its ownership
/// tags ([`CLAIMED_FILE`]), durably: a store created by this version is marked before
/// any content reaches it, so it is never claimed by reference.
fn mark_claimed(dir: &Path) -> Result<(), NodeError> {
    let path = dir.join(CLAIMED_FILE);
    write_private(&path, "")
        .and_then(|()| std::fs::File::open(&path)?.sync_all())
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|source| NodeError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// Claims for `store`, once, the local blobs its files reference (current content and
/// conflict copies), unless its directory under `stores_dir` is marked
/// ([`CLAIMED_FILE`]); then marks it.
///
/// A store kept by a version before per-store ownership tags holds blobs that carry
/// none, and a blob is served only for a store that owns it: without this its members
/// could never fetch its old files from this node. Claiming by reference is sound only
/// here, once, over content the store held before ownership existed (when every member
/// of any store on the node could fetch any blob); afterwards a reference never grants
/// a blob. A failure is logged and the claim is tried again at the next open.
fn claim_untagged_content(stores_dir: &Path, store: &Store, cas: &Cas) {
    let dir = stores_dir.join(store.id().to_hex());
    if dir.join(CLAIMED_FILE).exists() {
        return;
    }
    let pieces = store.blobs_of(None);
    let claimed = cas
        .claim_referenced(store.id(), &pieces)
        .map_err(NodeError::from)
        .and_then(|n| mark_claimed(&dir).map(|()| n));
    match claimed {
        Ok(n) => {
            tracing::info!(store = %store.id().to_hex(), "claimed {n} blobs stored before ownership tags")
        }
        Err(e) => {
            tracing::warn!(store = %store.id().to_hex(), "cannot claim the blobs stored before ownership tags: {e}")
        }
    }
}

/// Makes `store` sync the content store before each durable commit, so a durable
/// intention never names content a crash could lose.
fn sync_content_first(store: &Store, cas: &Cas) {
    let cas = cas.clone();
    store.set_before_durable(Arc::new(move || cas.sync().map_err(|e| e.to_string())));
}

/// The stores found in a data dir.
struct OpenedStores {
    /// Stores shown in the mount.
    stores: Vec<Store>,
    /// Stores still being bootstrapped.
    joining: Vec<Store>,
    /// Store directories that could not be opened, with why.
    unreadable: Vec<Unreadable>,
}

/// Opens every store under `dir` (one subdirectory per store, named by its hex id); a
/// store that cannot be opened is logged and listed, and the others open without it.
fn open_stores(
    dir: &Path,
    identity: &Identity,
    clock: &Arc<Mutex<Clock>>,
    budget: &CacheBudget,
) -> Result<OpenedStores, NodeError> {
    let io = |source| NodeError::Io {
        path: dir.display().to_string(),
        source,
    };
    let (mut stores, mut joining, mut unreadable) = (Vec::new(), Vec::new(), Vec::new());
    let entries = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    let count = entries.len();
    for entry in entries {
        let is_store = entry.file_type().map_err(io)?.is_dir()
            && entry
                .file_name()
                .to_str()
                .is_some_and(|n| StoreId::from_hex(n).is_some());
        if !is_store {
            tracing::warn!("ignoring {} (not a store)", entry.path().display());
            continue;
        }
        let path = entry.path();
        let opts = StoreOptions {
            cache_bytes: budget.store_cache_bytes(count),
            ..StoreOptions::default()
        };
        let store = match Store::open_with(&path, identity.clone(), clock.clone(), opts) {
            Ok(store) => store,
            Err(e) => {
                tracing::error!("cannot open the store in {}: {e}", path.display());
                unreadable.push(Unreadable {
                    dir: path.clone(),
                    error: e,
                });
                continue;
            }
        };
        if path.join(JOINING_FILE).exists() {
            joining.push(store);
        } else {
            stores.push(store);
        }
    }
    unreadable.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(OpenedStores {
        stores,
        joining,
        unreadable,
    })
}

/// Where the bootstrap of a joining store stands: whom it streams from, and the next
/// witness seq to ask for. Kept in the store's `joining` file until the join completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinState {
    /// The inviter's node key.
    pub inviter: PublicKey,
    /// The next witness seq of the inviter's log to fetch (1-based).
    pub next: u64,
}

impl JoinState {
    fn load(store_dir: &Path) -> Option<JoinState> {
        let text = std::fs::read_to_string(store_dir.join(JOINING_FILE)).ok()?;
        let (key, next) = text.trim().split_once(' ')?;
        Some(JoinState {
            inviter: PublicKey(crate::identity::unhex(key)?.try_into().ok()?),
            next: next.parse().ok()?,
        })
    }

    fn save(&self, store_dir: &Path) -> Result<(), NodeError> {
        let path = store_dir.join(JOINING_FILE);
        let text = format!("{} {}\n", self.inviter.to_hex(), self.next);
        let tmp = path.with_extension("tmp");
        write_private(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| NodeError::Io {
                path: path.display().to_string(),
                source,
            })
    }
}

/// A store's name, or its hex id while it has none (a store still being joined).
pub fn store_name(store: &Store) -> String {
    store
        .read(|s| s.store_name().map(str::to_owned))
        .unwrap_or_else(|| store.id().to_hex())
}

/// Walks `rest` (the components after the store name `store`) from the store root,
/// through deleted names too (see [`FsState::lookup_any`]).
fn resolve(state: &FsState, store: &str, rest: &[String]) -> Result<FileId, NodeError> {
    let mut file = OpId::ROOT;
    for (i, name) in rest.iter().enumerate() {
        file = state
            .lookup_any(file, name, i + 1 < rest.len())
            .map_err(|source| NodeError::Path {
                path: std::iter::once(store)
                    .chain(rest[..=i].iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join("/"),
                source,
            })?
            .file();
    }
    Ok(file)
}

/// The ops of one history item, each with its intention and author.
fn history_ops(state: &FsState, item: &HistoryItem) -> Vec<HistoryOp> {
    let author_name = state
        .member(&item.author)
        .map(|(_, name)| name.to_string())
        .unwrap_or_default();
    item.ops
        .iter()
        .map(|op| HistoryOp {
            intention: item.hash,
            author: item.author,
            author_name: author_name.clone(),
            op: op.clone(),
            prev: item.prev,
            deps: item.deps.clone(),
            bytes: item.bytes.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use bytes::Bytes;

    use super::*;
    use crate::fs::op::{Kind, OpBody};
    use crate::store::DB_FILE as DB_FILE_NAME;

    /// A runtime (kept alive for the content store) and a node opened on `dir`.
    fn open(dir: &Path, name: Option<&str>) -> (tokio::runtime::Runtime, Node) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let node = Node::open(dir, name, rt.handle().clone()).unwrap();
        (rt, node)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Every directory and regular file under `dir` with its mode (symlinks not followed).
    fn modes_under(dir: &Path) -> Vec<(PathBuf, bool, u32)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.push((path.clone(), true, meta.permissions().mode() & 0o7777));
                out.extend(modes_under(&path));
            } else if meta.is_file() {
                out.push((path, false, meta.permissions().mode() & 0o7777));
            }
        }
        out
    }

    #[test]
    fn an_open_data_dir_and_everything_in_it_is_made_private_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let (rt, node) = open(&dir, Some("laptop"));
        let store = node.create_store("docs").unwrap();
        let cas = node.cas().clone();
        cas.put_bytes(store.id(), &vec![7u8; 300 * 1024]).unwrap();
        cas.sync().unwrap();
        node.shutdown().unwrap();
        drop(rt);
        let open_mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        open_mode(&dir, 0o755);
        std::fs::write(dir.join(STAGING_DIR).join("left-over"), b"secret").unwrap();
        for (path, is_dir, _) in modes_under(&dir) {
            if !path.ends_with(KEY_FILE) {
                open_mode(&path, if is_dir { 0o755 } else { 0o644 });
            }
        }
        let (_rt, node) = open(&dir, None);
        assert_eq!(mode(&dir), 0o700);
        let all = modes_under(&dir);
        assert!(all.iter().any(|(p, ..)| p.ends_with(DB_FILE_NAME)));
        assert!(all.iter().filter(|(_, d, _)| !d).count() > 4);
        for (path, is_dir, m) in all {
            let want = if is_dir { 0o700 } else { 0o600 };
            assert_eq!(m, want, "{} is {m:o}", path.display());
        }
        node.shutdown().unwrap();
    }

    #[test]
    fn an_exposed_key_is_refused_not_quietly_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let (rt, node) = open(&dir, Some("laptop"));
        node.shutdown().unwrap();
        drop(rt);
        let key = dir.join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let err = Node::open(&dir, None, rt.handle().clone()).unwrap_err();
        assert!(
            matches!(err, NodeError::Identity(IdentityError::Permissions(_))),
            "{err}"
        );
        assert_eq!(mode(&key), 0o644);
    }

    #[test]
    fn a_created_store_is_private_from_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let (_rt, node) = open(&dir, Some("laptop"));
        let store = node.create_store("docs").unwrap();
        let store_dir = node.store_dir(store.id());
        assert_eq!(mode(&store_dir), 0o700);
        assert_eq!(mode(&store_dir.join(DB_FILE_NAME)), 0o600);
        node.shutdown().unwrap();
    }

    #[test]
    fn open_creates_a_private_data_dir_with_a_0600_key_and_the_given_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let (_rt, node) = open(&dir, Some("laptop"));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert!(dir.join(STORES_DIR).is_dir());
        assert!(dir.join(BLOBS_DIR).is_dir());
        assert_eq!(node.display_name(), "laptop");
        assert_eq!(
            std::fs::read_to_string(dir.join(NAME_FILE)).unwrap(),
            "laptop\n"
        );
        assert_eq!(node.data_dir(), dir);
        assert!(node.stores().is_empty());
        node.shutdown().unwrap();
    }

    #[test]
    fn reopening_keeps_the_identity_and_stored_name_unless_a_new_name_is_given() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, a) = open(tmp.path(), Some("nas"));
        let id = a.identity().public();
        a.shutdown().unwrap();
        drop(a);
        let (_rt2, b) = open(tmp.path(), None);
        assert_eq!(b.identity().public(), id);
        assert_eq!(b.display_name(), "nas");
        b.shutdown().unwrap();
        drop(b);
        let (_rt3, c) = open(tmp.path(), Some("renamed"));
        assert_eq!(c.display_name(), "renamed");
        c.shutdown().unwrap();
    }

    #[test]
    fn display_name_defaults_to_the_host_name() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path(), None);
        assert_eq!(node.display_name(), hostname().unwrap());
        node.shutdown().unwrap();
    }

    #[test]
    fn multi_line_display_name_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let err = Node::open(tmp.path(), Some("a\nb"), rt.handle().clone()).unwrap_err();
        assert!(matches!(err, NodeError::InvalidDisplayName(_)), "{err}");
    }

    #[test]
    fn a_given_display_name_with_a_slash_or_over_255_bytes_is_refused_and_a_stored_one_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        for bad in ["a/b", &"x".repeat(256), "tab\there", "  "] {
            let err = Node::open(tmp.path(), Some(bad), rt.handle().clone()).unwrap_err();
            assert!(
                matches!(err, NodeError::InvalidDisplayName(_)),
                "{bad:?}: {err}"
            );
        }
        std::fs::write(
            tmp.path().join(NAME_FILE),
            format!("{}/x\n", "é".repeat(200)),
        )
        .unwrap();
        let (_rt, node) = open(tmp.path(), None);
        let name = node.display_name().to_string();
        assert!(
            validate_label(&name).is_ok() && !name.is_empty(),
            "{name:?}"
        );
        assert!(name.starts_with("éé"));
        let store = node.create_store("docs").unwrap();
        assert_eq!(store.members()[0].display_name, name);
        node.shutdown().unwrap();
    }

    #[test]
    fn one_unreadable_store_does_not_stop_the_others_and_is_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path(), Some("laptop"));
        node.create_store("docs").unwrap();
        let broken = node.create_store("photos").unwrap().id();
        node.shutdown().unwrap();
        drop(node);
        let db = tmp
            .path()
            .join(STORES_DIR)
            .join(broken.to_hex())
            .join(crate::store::DB_FILE);
        std::fs::write(&db, b"not a redb file at all").unwrap();
        let (_rt2, node) = open(tmp.path(), None);
        let names: Vec<String> = node.stores().iter().map(store_name).collect();
        assert_eq!(names, ["docs"]);
        let unreadable = node.unreadable();
        assert_eq!(unreadable.len(), 1);
        assert!(unreadable[0].dir.ends_with(broken.to_hex()));
        assert!(!unreadable[0].error.to_string().is_empty());
        node.shutdown().unwrap();
    }

    #[test]
    fn created_stores_are_listed_sorted_by_name_after_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path(), Some("laptop"));
        node.create_store("photos").unwrap();
        let docs = node.create_store("docs").unwrap().id();
        node.shutdown().unwrap();
        drop(node);
        let (_rt2, node) = open(tmp.path(), None);
        let names: Vec<String> = node.stores().iter().map(store_name).collect();
        assert_eq!(names, ["docs", "photos"]);
        assert_eq!(node.store_by_name("docs").unwrap().id(), docs);
        assert!(node.store_by_name("music").is_none());
        node.shutdown().unwrap();
    }

    #[test]
    fn a_second_store_with_the_same_name_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path(), Some("laptop"));
        node.create_store("docs").unwrap();
        let Err(err) = node.create_store("docs") else {
            panic!("duplicate store created")
        };
        assert!(matches!(err, NodeError::StoreExists(ref n) if n == "docs"));
        assert_eq!(err.to_string(), "a store named \"docs\" already exists");
        assert_eq!(node.stores().len(), 1);
        node.shutdown().unwrap();
    }

    #[test]
    fn store_names_that_are_not_file_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path(), Some("laptop"));
        for name in ["", ".", "..", "a/b"] {
            let Err(err) = node.create_store(name) else {
                panic!("store {name:?} created")
            };
            assert!(matches!(err, NodeError::InvalidStoreName(_)), "{name:?}");
        }
        assert!(node.stores().is_empty());
        node.shutdown().unwrap();
    }

    #[test]
    fn history_paths_that_do_not_resolve_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path(), Some("laptop"));
        node.create_store("docs").unwrap();
        for path in ["", "/", ".", "docs/../docs"] {
            let err = node.history(path).unwrap_err();
            assert!(matches!(err, NodeError::InvalidPath(_)), "{path:?}: {err}");
        }
        let err = node.history("music/a.txt").unwrap_err();
        assert!(matches!(err, NodeError::UnknownStore(ref n) if n == "music"));
        let err = node.history("/docs/missing/a.txt").unwrap_err();
        match err {
            NodeError::Path { path, source } => {
                assert_eq!(path, "docs/missing");
                assert!(matches!(source, FsError::NotFound), "{source}");
            }
            other => panic!("unexpected {other}"),
        }
        node.shutdown().unwrap();
    }

    #[test]
    fn history_of_a_file_lists_its_creation_by_this_node() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path(), Some("laptop"));
        let store = node.create_store("docs").unwrap();
        store
            .write(|tx| {
                let body = tx.state().plan_create(
                    OpId::ROOT,
                    "a.txt",
                    Kind::File,
                    0o644,
                    0,
                    0,
                    0,
                    Content::Inline(Bytes::from_static(b"hi")),
                    0,
                )?;
                tx.push(body)?;
                Ok(())
            })
            .unwrap();
        store.flush().unwrap();
        let entries = node.history("/docs/./a.txt").unwrap();
        let create = entries
            .iter()
            .find(|e| matches!(&e.op.body, OpBody::Create(c) if c.name == "a.txt"))
            .unwrap_or_else(|| panic!("no create in {entries:?}"));
        assert_eq!(create.author, node.identity().public());
        assert_eq!(create.author_name, "laptop");
        assert_eq!(
            store.get(vec![create.intention], usize::MAX).unwrap().len(),
            1
        );
        assert!(create.op.hlc.wall_ms > 0);
        let err = node.history("docs/a.txt/b").unwrap_err();
        assert!(matches!(err, NodeError::Path { .. }), "{err}");
        node.shutdown().unwrap();
    }

    /// Creates file `name` holding `content` at the root of `store`.
    fn create_file(store: &Store, name: &str, content: Content) {
        store
            .write(|tx| {
                let body = tx.state().plan_create(
                    OpId::ROOT,
                    name,
                    Kind::File,
                    0o644,
                    0,
                    0,
                    0,
                    content,
                    0,
                )?;
                tx.push(body)?;
                Ok(())
            })
            .unwrap();
        store.flush().unwrap();
    }

    #[test]
    fn a_store_whose_blobs_lost_their_tags_owns_its_referenced_local_blobs_again_after_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (rt, node) = open(tmp.path(), Some("laptop"));
        let store = node.create_store("docs").unwrap();
        let (id, cas) = (store.id(), node.cas().clone());
        let marker = node.store_dir(id).join(CLAIMED_FILE);
        assert!(marker.exists(), "a store created by this version is marked");
        let mut data = vec![0u8; 3 * 1024 * 1024];
        blake3::Hasher::new().finalize_xof().fill(&mut data);
        let content = cas.put_bytes(id, &data).unwrap();
        let Content::Manifest { hash, size } = content.clone() else {
            panic!("3 MiB is stored as a manifest");
        };
        let manifest = crate::cas::manifest::Manifest::decode(
            hash,
            &cas.local_blob(hash).unwrap().unwrap(),
            size,
        )
        .unwrap();
        let mut referenced: Vec<_> = manifest.chunks().map(|(h, _, _)| h).collect();
        assert!(referenced.len() > 1, "several chunks");
        referenced.push(hash);
        create_file(&store, "old.bin", content);
        // A manifest that does not decode is skipped, never claimed, never fatal.
        let garbage = cas.put_blob(id, Bytes::from(vec![0xff; 100])).unwrap();
        create_file(
            &store,
            "bad.bin",
            Content::Manifest {
                hash: garbage,
                size: 100,
            },
        );
        let unreferenced = cas.put_blob(id, Bytes::from(vec![0x42; 100])).unwrap();
        cas.sync().unwrap();
        // What an older version left behind: no ownership tags, no marker.
        rt.block_on(
            cas.blobs()
                .tags()
                .delete_prefix(format!("lm/{}/", id.to_hex())),
        )
        .unwrap();
        std::fs::remove_file(&marker).unwrap();
        let owns = |cas: &Cas, h| rt.block_on(cas.owns(id, h)).unwrap();
        assert!(!owns(&cas, hash), "the tags are gone");
        node.shutdown().unwrap();
        drop((node, cas));

        let (_rt2, node) = open(tmp.path(), Some("laptop"));
        let cas = node.cas().clone();
        for h in &referenced {
            assert!(owns(&cas, *h), "{h:?} is referenced by the store's file");
        }
        assert!(!owns(&cas, unreferenced), "no file of the store names it");
        assert!(!owns(&cas, garbage), "its manifest does not decode");
        assert!(marker.exists(), "the claim is made once");
        node.shutdown().unwrap();
    }
}
