//! History you can use: a file's content versions, the deleted files under a directory,
//! and `restore`, which brings a version back as a new signed op.
//!
//! A **version** is a file's content after one content op: its Create, a Write, or an
//! Append (with the rest of its group up to it). Versions are read from the intentions
//! on disk (`Store::history`), which are kept for ever, so they do not depend on what the
//! projection still holds; whether a version's content can still be read is the content
//! store's answer (`Cas::missing`). A version is named by its **content id** (the
//! manifest's hash, blake3 of inline bytes, or blake3 over the ids of the pieces of an
//! appended version): two versions with one id have the same bytes, so restoring either
//! is the same. An empty version that was replaced is not listed (every overwrite
//! through `O_TRUNC` makes one; restoring it is `truncate`).
//!
//! A restore is an ordinary edit: a Write of the old content to the file, or, for a
//! deleted file (or `--to`), a Create with the old content and mode, so it replicates
//! and merges like any other write. Deleted directories above a deleted file are brought
//! back at their old places by Moves onto themselves (a Move undeletes).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::cas::{CasError, Content};
use crate::fs::content::add_sizes;
use crate::fs::op::{Kind, OpBody};
use crate::fs::{Found, FsError, FsState};
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{FileId, Hash, OpId};
use crate::store::{is_retained, HistoryItem, Store};

use super::{Node, NodeError, STAGING_DIR};

/// Fewest hex characters of a version id `--version` accepts: fewer would match by
/// accident in any long history.
pub const MIN_VERSION_PREFIX: usize = 8;

/// Errors of `history` versions, `history --deleted` and `restore`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The path is not a regular file (nor a deleted one).
    #[error("{0}: not a regular file")]
    NotAFile(String),
    /// `history --deleted` was given something other than a directory.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// No version of the file has this content id (prefix).
    #[error("{path}: no version {version} (`lattice-mount history` lists them)")]
    UnknownVersion {
        /// The file.
        path: String,
        /// What was asked for.
        version: String,
    },
    /// A version prefix shorter than [`MIN_VERSION_PREFIX`] or not hex.
    #[error(
        "invalid version {0:?}: give at least {MIN_VERSION_PREFIX} hex characters of its hash"
    )]
    BadVersion(String),
    /// Several versions match a hash prefix.
    #[error("{path}: {count} versions start with {version}; give more of the hash")]
    AmbiguousVersion {
        /// The file.
        path: String,
        /// What was asked for.
        version: String,
        /// How many matched.
        count: usize,
    },
    /// The file had no version yet at that time.
    #[error("{path}: no version at or before {at_ms} ms since the epoch")]
    NoVersionAt {
        /// The file.
        path: String,
        /// The time asked for.
        at_ms: u64,
    },
    /// The file is current and has no version before the current one.
    #[error("{0}: no earlier version to restore")]
    NoEarlierVersion(String),
    /// A version's content was collected: it is past the store's retention.
    #[error("{path}: the content of version {version} was collected (older than the store's retention of {days} days)")]
    Collected {
        /// The file.
        path: String,
        /// The version's content id, 16 hex.
        version: String,
        /// The store's retention.
        days: u32,
    },
    /// A retained version's content is not on this node (not fetched yet).
    #[error("{path}: the content of version {version} is not on this node yet ({missing} blobs to fetch; try again once the store has synced)")]
    NotLocal {
        /// The file.
        path: String,
        /// The version's intention hash, 16 hex.
        version: String,
        /// Blobs missing.
        missing: usize,
    },
    /// Something already has the name the file would be restored to.
    #[error("{0} already exists; restore elsewhere with --to")]
    TargetExists(String),
    /// `--to` names another store.
    #[error("--to {0}: restore into the file's own store")]
    OtherStore(String),
    /// This node may not write to the store.
    #[error("store {0}: this node is a reader; restoring needs the writer or admin role")]
    ReadOnly(String),
    /// The content store failed while checking or copying content.
    #[error("content store: {0}")]
    Content(#[from] CasError),
}

/// Where a version stands in the current projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    /// The content the file shows now.
    Current,
    /// The content of one of the file's conflict copies.
    Conflict,
    /// Replaced, or the file is deleted.
    Past,
}

/// One content version of a file: its content after one content op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The content id: what `restore --version` takes (see the module doc).
    pub id: Hash,
    /// The intention that carried the op.
    pub intention: Hash,
    /// The content op (its clock is the version's time).
    pub op: OpId,
    /// The author's display name in the store; empty when it is not a member.
    pub author_name: String,
    /// The content's pieces (the group's base, then its appends up to this op).
    pub pieces: Vec<Content>,
    /// Its size in bytes.
    pub size: u64,
    /// Current, conflict copy, or past.
    pub state: VersionState,
    /// Every blob its content needs is on this node.
    pub local: bool,
    /// Current, or superseded (or deleted) less than the store's retention ago: its
    /// content is kept (see `store::retention`).
    pub retained: bool,
}

impl Version {
    /// The author of the version.
    pub fn author(&self) -> PublicKey {
        self.op.author
    }

    /// The version's time.
    pub fn hlc(&self) -> Hlc {
        self.op.hlc
    }
}

/// A deleted file under a directory, with its versions.
#[derive(Clone, Debug)]
pub struct DeletedFile {
    /// Its path as it was, relative to the mount root (`<store>/a/b`).
    pub path: String,
    /// Its kind.
    pub kind: Kind,
    /// The Remove op that deleted it (when and by whom).
    pub removed_by: OpId,
    /// The remover's display name in the store; empty when it is not a member.
    pub removed_by_name: String,
    /// Its content versions, oldest first.
    pub versions: Vec<Version>,
}

/// Which version `restore` brings back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The version before the current one; for a deleted file its newest.
    Default,
    /// The version with this content id (a hex prefix).
    Version(String),
    /// The version current at this time (ms since the epoch).
    At(u64),
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The restored file's path, relative to the mount root.
    pub path: String,
    /// The content id of the version brought back.
    pub version: Hash,
    /// Its size in bytes.
    pub size: u64,
    /// A new file was created (deleted file or `--to`), rather than the file rewritten.
    pub created: bool,
}

/// A path resolved with deleted names counting: the store, the parent directory and
/// name of the last component (the root has none), and what it names.
pub(super) struct Resolved {
    pub(super) store: Store,
    pub(super) store_name: String,
    pub(super) shown: String,
    pub(super) parent: FileId,
    pub(super) name: Option<String>,
    pub(super) found: Found,
}

impl Resolved {
    /// Waits until what was written is durable.
    pub(super) fn flush(&self) -> Result<(), NodeError> {
        self.store.flush().map_err(|source| NodeError::Store {
            store: self.store_name.clone(),
            source,
        })
    }
}

impl Node {
    /// The content versions of the file at `path` (deleted files too), oldest first;
    /// none for a directory or another kind without content versions.
    pub fn versions(&self, path: &str) -> Result<Vec<Version>, NodeError> {
        let r = self.resolve_any(path)?;
        self.versions_of(&r.store, &r.store_name, r.found)
    }

    /// The deleted files under the directory at `path` (which may be deleted itself),
    /// recursively, by path.
    pub fn deleted(&self, path: &str) -> Result<Vec<DeletedFile>, NodeError> {
        let r = self.resolve_any(path)?;
        let dir = r.found.file();
        let (is_dir, removed) = r.store.read(|s| {
            let is_dir = s.file(dir).is_some_and(|f| f.kind == Kind::Dir);
            (is_dir, s.removed_under(dir))
        });
        if !is_dir {
            return Err(RestoreError::NotADirectory(r.shown).into());
        }
        let mut out = Vec::with_capacity(removed.len());
        for gone in removed {
            let found = Found::Deleted {
                entry: gone.entry,
                file: gone.file,
            };
            let versions = self.versions_of(&r.store, &r.store_name, found)?;
            let removed_by_name = r.store.read(|s| author_name(s, &gone.removed_by.author));
            out.push(DeletedFile {
                path: format!("{}/{}", r.shown, gone.path.join("/")),
                kind: gone.kind,
                removed_by: gone.removed_by,
                removed_by_name,
                versions,
            });
        }
        Ok(out)
    }

    /// Brings back a version of the file at `path` as a new op: a Write to the file, or a
    /// Create at its old place when it is deleted, or at `to` (a path in the same store
    /// that must not exist).
    pub fn restore(
        &self,
        path: &str,
        pick: &Pick,
        to: Option<&str>,
    ) -> Result<Restored, NodeError> {
        let r = self.resolve_any(path)?;
        let kind = r.store.read(|s| s.file(r.found.file()).map(|f| f.kind));
        if kind.is_some_and(|k| k != Kind::File) {
            return Err(RestoreError::NotAFile(r.shown).into());
        }
        let versions = self.versions_of(&r.store, &r.store_name, r.found)?;
        let version = choose(&versions, pick, &r.shown, matches!(r.found, Found::Live(_)))?;
        if !version.local && !version.retained {
            return Err(RestoreError::Collected {
                path: r.shown,
                version: short(&version.id),
                days: r.store.retention_days(),
            }
            .into());
        }
        if !version.local {
            let missing = self
                .cas()
                .missing(&version.pieces)
                .map_err(RestoreError::from)?;
            return Err(RestoreError::NotLocal {
                path: r.shown,
                version: short(&version.id),
                missing: missing.len(),
            }
            .into());
        }
        let content = self.one_piece(&r.store, &version.pieces)?;
        let file = r.found.file();
        let now_ns = crate::hlc::now_ms() as i64 * 1_000_000;
        let (place, shown) = match (to, r.found) {
            (Some(to), _) => {
                let (parent, name, shown) = self.free_place(to, &r.store)?;
                (Some((parent, name)), shown)
            }
            (None, Found::Deleted { .. }) => {
                let name = r.name.clone().unwrap_or_default();
                (Some((r.parent, name)), r.shown.clone())
            }
            (None, Found::Live(_)) => (None, r.shown.clone()),
        };
        let store_name = r.store_name.clone();
        let written = r.store.write(|tx| match &place {
            None => {
                let body = tx.state().plan_write(file, content.clone(), now_ns)?;
                tx.push(body)?;
                Ok(())
            }
            Some((parent, name)) => {
                // The file's last mode and owner; this node's user if the record is gone.
                // SAFETY: getuid/getgid have no preconditions and cannot fail.
                let me = unsafe { (libc::getuid(), libc::getgid()) };
                let (mode, uid, gid) = tx.state().file(file).map_or((0o644, me.0, me.1), |f| {
                    (f.mode.value, f.uid.value, f.gid.value)
                });
                for body in tx.state().plan_undelete_dirs(*parent)? {
                    tx.push(body)?;
                }
                let body = tx.state().plan_create(
                    *parent,
                    name,
                    Kind::File,
                    mode,
                    uid,
                    gid,
                    0,
                    content.clone(),
                    now_ns,
                )?;
                tx.push(body)?;
                Ok(())
            }
        });
        match written {
            Ok(()) => {}
            Err(FsError::ReadOnly) => return Err(RestoreError::ReadOnly(store_name).into()),
            Err(FsError::Exists) => return Err(RestoreError::TargetExists(shown).into()),
            Err(source) => {
                return Err(NodeError::Path {
                    path: shown,
                    source,
                })
            }
        }
        r.flush()?;
        Ok(Restored {
            path: shown,
            version: version.id,
            size: version.size,
            created: place.is_some(),
        })
    }

    /// A path inside the mount resolved through deleted names too.
    pub(super) fn resolve_any(&self, path: &str) -> Result<Resolved, NodeError> {
        let (store, store_name, names) = self.locate(path)?;
        let walked = store.read(|s| {
            let mut parent = OpId::ROOT;
            let mut found = Found::Live(OpId::ROOT);
            for (i, name) in names.iter().enumerate() {
                parent = found.file();
                found = s
                    .lookup_any(parent, name, i + 1 < names.len())
                    .map_err(|source| NodeError::Path {
                        path: shown_path(&store_name, &names[..=i]),
                        source,
                    })?;
            }
            Ok::<_, NodeError>((parent, found))
        })?;
        let (parent, found) = walked;
        Ok(Resolved {
            shown: shown_path(&store_name, &names),
            name: names.last().cloned(),
            store,
            store_name,
            parent,
            found,
        })
    }

    /// The parent directory, name and shown path of `to`, a path in `store` that names
    /// nothing visible (a deleted name may be reused; its deleted directories come back).
    fn free_place(&self, to: &str, store: &Store) -> Result<(FileId, String, String), NodeError> {
        let (to_store, store_name, names) = self.locate(to)?;
        if to_store.id() != store.id() {
            return Err(RestoreError::OtherStore(to.to_string()).into());
        }
        let shown = shown_path(&store_name, &names);
        let Some((name, dirs)) = names.split_last() else {
            return Err(RestoreError::TargetExists(shown).into());
        };
        let dirs = dirs.iter().map(String::as_str).collect::<Vec<_>>();
        let parent = store.read(|s| {
            let mut parent = OpId::ROOT;
            for (i, dir) in dirs.iter().enumerate() {
                parent = s
                    .lookup_any(parent, dir, true)
                    .map_err(|source| NodeError::Path {
                        path: shown_path(&store_name, &names[..=i]),
                        source,
                    })?
                    .file();
            }
            match s.lookup_any(parent, name, false) {
                Ok(Found::Live(_)) => {
                    Err(NodeError::from(RestoreError::TargetExists(shown.clone())))
                }
                _ => Ok(parent),
            }
        })?;
        Ok((parent, name.clone(), shown))
    }

    /// The versions of `found` in `store`, with their state and whether they are local.
    fn versions_of(
        &self,
        store: &Store,
        store_name: &str,
        found: Found,
    ) -> Result<Vec<Version>, NodeError> {
        let file = found.file();
        let items = store.history(file).map_err(|source| NodeError::Store {
            store: store_name.to_string(),
            source,
        })?;
        let now_ms = crate::hlc::now_ms();
        let live = matches!(found, Found::Live(_));
        let mut versions = store.read(|s| versions(s, file, &items, live, now_ms));
        for v in &mut versions {
            v.local = self
                .cas()
                .missing(&v.pieces)
                .map_err(RestoreError::from)?
                .is_empty();
        }
        Ok(versions)
    }

    /// `pieces` as one `Content`: itself when there is one, else the concatenation stored
    /// anew (a version made by appends).
    pub(super) fn one_piece(
        &self,
        store: &Store,
        pieces: &[Content],
    ) -> Result<Content, NodeError> {
        match pieces {
            [] => Ok(Content::empty()),
            [one] => Ok(one.clone()),
            many => {
                let staging = self
                    .data_dir()
                    .join(STAGING_DIR)
                    .join(format!("restore-{:016x}", rand::random::<u64>()));
                let stored = self
                    .cas()
                    .export(store.id(), many, &staging)
                    .and_then(|()| self.cas().put_file(store.id(), &staging, None));
                remove_staging(staging);
                Ok(stored.map_err(RestoreError::from)?)
            }
        }
    }
}

/// Removes a staging file, logging (not failing) when it cannot be.
fn remove_staging(path: PathBuf) {
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

/// `<store>/a/b` for display.
pub(super) fn shown_path(store: &str, names: &[String]) -> String {
    std::iter::once(store)
        .chain(names.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("/")
}

/// The first 16 hex characters of `hash`, as `history` prints them.
pub(super) fn short(hash: &Hash) -> String {
    hash.to_hex()[..16].to_string()
}

/// The display name of `key` in the store; empty when it is not a member.
pub(super) fn author_name(state: &FsState, key: &PublicKey) -> String {
    state
        .member(key)
        .map(|(_, name)| name.to_string())
        .unwrap_or_default()
}

/// The content id of `pieces` (see the module doc).
pub(super) fn content_id(pieces: &[Content]) -> Hash {
    let piece_id = |c: &Content| match c {
        Content::Manifest { hash, .. } => *hash,
        Content::Inline(bytes) => Hash::of(bytes),
    };
    match pieces {
        [] => Hash::of(b""),
        [one] => piece_id(one),
        many => {
            let ids: Vec<u8> = many.iter().flat_map(|c| piece_id(c).0).collect();
            Hash::of(&ids)
        }
    }
}

/// The content versions of `file` from its history `items`, oldest first; `live` when
/// the file is visible, so that its current and conflict versions are marked, and
/// whether each is retained at `now_ms`. Every version is marked local: the caller asks
/// the content store.
pub(crate) fn versions(
    state: &FsState,
    file: FileId,
    items: &[HistoryItem],
    live: bool,
    now_ms: u64,
) -> Vec<Version> {
    // When each op stopped being a head (the latest op superseding it), and the latest
    // Remove of the file: what retention counts from (as `store::retention` does).
    let mut superseded_at: HashMap<OpId, u64> = HashMap::new();
    let mut removed_at: Option<u64> = None;
    for item in items {
        for op in &item.ops {
            let ids = match &op.body {
                OpBody::Write { supersedes, .. }
                | OpBody::Append { supersedes, .. }
                | OpBody::Dismiss { supersedes, .. } => supersedes,
                OpBody::Remove { .. } => {
                    removed_at = removed_at.max(Some(op.hlc.wall_ms));
                    continue;
                }
                _ => continue,
            };
            for id in ids {
                let at = superseded_at.entry(*id).or_default();
                *at = (*at).max(op.hlc.wall_ms);
            }
        }
    }
    let days = state.retention_days();
    // Each group's base content, and its appends by op id.
    let mut bases: HashMap<OpId, &Content> = HashMap::new();
    let mut appends: HashMap<OpId, BTreeMap<OpId, &Content>> = HashMap::new();
    // Every content op with its group and intention.
    let mut ops: Vec<(OpId, OpId, &HistoryItem)> = Vec::new();
    for item in items {
        for op in &item.ops {
            let id = op.id(item.author);
            let group = match &op.body {
                OpBody::Create(c) if c.kind == Kind::File && id == file => {
                    bases.insert(id, &c.content);
                    id
                }
                OpBody::Write {
                    file: f, content, ..
                } if *f == file => {
                    bases.insert(id, content);
                    id
                }
                OpBody::Append {
                    file: f,
                    group,
                    data,
                    ..
                } if *f == file => {
                    appends.entry(*group).or_default().insert(id, data);
                    *group
                }
                _ => continue,
            };
            ops.push((id, group, item));
        }
    }
    ops.sort_by_key(|(op, ..)| *op);
    let (winner, conflicts) = match state.file(file).filter(|_| live) {
        Some(f) => (f.winner(), f.conflicts()),
        None => (None, BTreeMap::new()),
    };
    // The newest op of each group is the content that group shows.
    let mut newest_of: HashMap<OpId, OpId> = HashMap::new();
    for (op, group, _) in &ops {
        newest_of.insert(*group, *op);
    }
    let last = ops.last().map(|(op, ..)| *op);
    // Each group's end: the latest supersession of one of its members; a group nothing
    // superseded ends with the file's deletion.
    let mut ended: HashMap<OpId, u64> = HashMap::new();
    for (op, group, _) in &ops {
        if let Some(at) = superseded_at.get(op) {
            let end = ended.entry(*group).or_default();
            *end = (*end).max(*at);
        }
    }
    let mut out = Vec::with_capacity(ops.len());
    for (op, group, item) in ops {
        // An append to a group this node never saw the start of shows nothing (as in
        // the projection), so it is no version.
        let Some(base) = bases.get(&group) else {
            continue;
        };
        let later = appends.get(&group).into_iter().flat_map(|a| a.range(..=op));
        let pieces: Vec<Content> = std::iter::once(*base)
            .chain(later.map(|(_, c)| *c))
            .filter(|c| !c.is_empty())
            .cloned()
            .collect();
        let shown = newest_of.get(&group) == Some(&op);
        let state_of = if shown && winner == Some(group) {
            VersionState::Current
        } else if shown && conflicts.contains_key(&group) {
            VersionState::Conflict
        } else {
            VersionState::Past
        };
        if pieces.is_empty() && state_of == VersionState::Past && Some(op) != last {
            continue;
        }
        let alive = winner == Some(group) || conflicts.contains_key(&group);
        let end = match ended.get(&group) {
            _ if alive => None,
            Some(at) => Some(*at),
            None => removed_at,
        };
        out.push(Version {
            id: content_id(&pieces),
            intention: item.hash,
            op,
            author_name: author_name(state, &item.author),
            size: pieces.iter().map(Content::len).fold(0, add_sizes),
            pieces,
            state: state_of,
            local: true,
            retained: is_retained(end, days, now_ms),
        });
    }
    out
}

/// The version `pick` names among `versions` of the file shown as `path`; `live` when
/// the file is visible (then the default is the version before the current one).
fn choose<'v>(
    versions: &'v [Version],
    pick: &Pick,
    path: &str,
    live: bool,
) -> Result<&'v Version, RestoreError> {
    match pick {
        Pick::Version(prefix) => {
            let p = prefix.to_ascii_lowercase();
            if p.len() < MIN_VERSION_PREFIX || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(RestoreError::BadVersion(prefix.clone()));
            }
            // Versions with one id hold the same bytes: the newest of them stands for all.
            let mut matching: Vec<&Version> = versions
                .iter()
                .rev()
                .filter(|v| v.id.to_hex().starts_with(&p))
                .collect();
            matching.sort_by_key(|v| v.id);
            matching.dedup_by_key(|v| v.id);
            match matching.as_slice() {
                [one] => Ok(one),
                [] => Err(RestoreError::UnknownVersion {
                    path: path.to_string(),
                    version: prefix.clone(),
                }),
                many => Err(RestoreError::AmbiguousVersion {
                    path: path.to_string(),
                    version: prefix.clone(),
                    count: many.len(),
                }),
            }
        }
        Pick::At(at_ms) => {
            versions
                .iter()
                .rfind(|v| v.op.hlc.wall_ms <= *at_ms)
                .ok_or(RestoreError::NoVersionAt {
                    path: path.to_string(),
                    at_ms: *at_ms,
                })
        }
        Pick::Default if live => {
            let current = versions
                .iter()
                .rposition(|v| v.state == VersionState::Current)
                .unwrap_or(versions.len());
            current
                .checked_sub(1)
                .and_then(|i| versions.get(i))
                .ok_or_else(|| RestoreError::NoEarlierVersion(path.to_string()))
        }
        Pick::Default => versions
            .last()
            .ok_or_else(|| RestoreError::NotAFile(path.to_string())),
    }
}
