//! Conflicts you can see and settle: `conflicts` lists every visible file with several
//! live content versions, `resolve` settles one with a single local write.
//!
//! A file's live versions are its alive content groups (`fs::content`): the winner,
//! shown under the file's name, and the others, shown as read-only conflict copies
//! beside it. A version is named, as in `history`, by its content id. Resolving is one
//! `Store::write`, so its ops go out in one signed intention and merge like any other
//! edit: a `Dismiss` of the heads of every version not kept (the op that deleting a
//! conflict copy makes), and with `--keep both` first a Create of a regular file per
//! other version, under its conflict-copy name, holding that version's content.

use crate::cas::Content;
use crate::fs::op::{Kind, OpBody, SetMeta};
use crate::fs::{Found, FsError, FsState, Node as FsNode};
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{FileId, Hash, OpId};

use super::paths::Names;
use super::restore::{author_name, content_id, shown_path};
use super::{store_name, Node, NodeError, RestoreError, MIN_VERSION_PREFIX};

/// Errors of `conflicts` and `resolve`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConflictError {
    /// The file has one live version: nothing to resolve.
    #[error(
        "{0}: no conflicting versions (`lattice-mount conflicts` lists the files that have some)"
    )]
    NoConflict(String),
    /// `--keep mine` but no live version is this node's.
    #[error("{0}: no version was written by this node; use --keep theirs or a version id")]
    NoneMine(String),
    /// `--keep theirs` but every live version is this node's.
    #[error("{0}: every version was written by this node; give a version id")]
    NoneTheirs(String),
    /// `--keep mine` or `theirs` matches several versions.
    #[error("{path}: {count} versions are {which}; give a version id (`lattice-mount conflicts` lists them)")]
    Ambiguous {
        /// The file.
        path: String,
        /// "mine" or "theirs".
        which: &'static str,
        /// How many matched.
        count: usize,
    },
    /// The file's versions changed between listing them and writing the resolution.
    #[error(
        "{0}: its versions changed while resolving; run `lattice-mount conflicts` and try again"
    )]
    Changed(String),
    /// This node may not write to the store.
    #[error("store {0}: this node is a reader; resolving needs the writer or admin role")]
    ReadOnly(String),
    /// `--keep both` would create a file whose name a regular entry already has.
    #[error("{0} already exists; rename it, then resolve again")]
    NameTaken(String),
}

/// Which version(s) `resolve` keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The one version written by this node.
    Mine,
    /// The one version written by another node.
    Theirs,
    /// The version with this content id (a hex prefix of at least [`MIN_VERSION_PREFIX`]).
    Version(String),
    /// The winner under the file's name, every other version as a regular file named as
    /// its conflict copy was.
    Both,
}

/// One live content version of a conflicted file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveVersion {
    /// The op that started the version group.
    pub group: OpId,
    /// Its newest head: its author and time are the version's (as in the copy's name).
    pub head: OpId,
    /// The author's display name in the store; empty when it is not a member.
    pub author_name: String,
    /// The content id (as `history` shows it).
    pub id: Hash,
    /// Its size in bytes.
    pub size: u64,
    /// Its content's pieces.
    pub pieces: Vec<Content>,
    /// The version the file's name shows (the others are conflict copies).
    pub winner: bool,
    /// Where the mount shows it, relative to the mount root: the file's path for the
    /// winner, the conflict copy's path for the others.
    pub shown: String,
}

impl LiveVersion {
    /// The version's author.
    pub fn author(&self) -> PublicKey {
        self.head.author
    }

    /// The version's time.
    pub fn hlc(&self) -> Hlc {
        self.head.hlc
    }
}

/// A visible file with several live content versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// Its path relative to the mount root (`<store>/a/b`).
    pub path: String,
    /// The file.
    pub file: FileId,
    /// Its live versions, the winner first, then the others oldest first.
    pub versions: Vec<LiveVersion>,
}

/// What `resolve` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The file, relative to the mount root.
    pub path: String,
    /// The content id of the version the file's name now shows.
    pub kept: Hash,
    /// Files created with `--keep both`, relative to the mount root.
    pub copies: Vec<String>,
    /// Versions superseded.
    pub dismissed: usize,
}

impl Node {
    /// Every visible file with several live versions in the store named `store`, or in
    /// every store, by path.
    pub fn conflicts(&self, store: Option<&str>) -> Result<Vec<Conflict>, NodeError> {
        let stores = match store {
            Some(name) => vec![self
                .store_by_name(name)
                .ok_or_else(|| NodeError::UnknownStore(name.to_string()))?],
            None => self.stores(),
        };
        let mut out = Vec::new();
        for store in stores {
            let name = store_name(&store);
            store.read(|s| {
                let mut names = Names::default();
                for file in s.file_ids() {
                    let conflicted = s.file(file).is_some_and(|f| !f.conflicts().is_empty());
                    if conflicted && s.exists(file) {
                        out.extend(conflict_of(s, &mut names, &name, file));
                    }
                }
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Settles the conflict of the file at `path` (its name or one of its conflict
    /// copies) by keeping `keep`, in one local write (see the module doc); when the name
    /// then shows another version than before, the file's mtime becomes now.
    pub fn resolve(&self, path: &str, keep: &Keep) -> Result<Resolution, NodeError> {
        let r = self.resolve_any(path)?;
        let Found::Live(file) = r.found else {
            return Err(ConflictError::NoConflict(r.shown).into());
        };
        let conflict = r
            .store
            .read(|s| conflict_of(s, &mut Names::default(), &r.store_name, file))
            .ok_or_else(|| ConflictError::NoConflict(r.shown.clone()))?;
        let shown = conflict.path.clone();
        let kept = choose(&conflict, keep, self.identity().public())?;
        // With `both`, each other version becomes a file: its content as one piece.
        let mut copies = Vec::new();
        if *keep == Keep::Both {
            for v in conflict.versions.iter().filter(|v| v.group != kept.group) {
                let content = self.one_piece(&r.store, &v.pieces)?;
                let name = v.shown.rsplit('/').next().unwrap_or_default().to_string();
                copies.push((name, content, v.head.hlc.wall_ms));
            }
        }
        let groups: Vec<OpId> = conflict.versions.iter().map(|v| v.group).collect();
        let store_name = r.store_name.clone();
        let written = r.store.write(|tx| {
            let s = tx.state();
            let Some(f) = s.file(file).filter(|_| s.exists(file)) else {
                return Ok(Err(ConflictError::Changed(shown.clone())));
            };
            if f.alive().keys().copied().collect::<Vec<_>>() != sorted(&groups) {
                return Ok(Err(ConflictError::Changed(shown.clone())));
            }
            let parent = s.parent(file).unwrap_or(OpId::ROOT);
            for (name, ..) in &copies {
                let taken = s
                    .readdir(parent)?
                    .into_iter()
                    .any(|(n, node)| n == *name && matches!(node, FsNode::Entry { .. }));
                if taken {
                    return Ok(Err(ConflictError::NameTaken(name.clone())));
                }
            }
            let (mode, uid, gid) = (f.mode.value, f.uid.value, f.gid.value);
            let losing: Vec<OpId> = groups
                .iter()
                .filter(|g| **g != kept.group)
                .flat_map(|g| f.group_heads(*g))
                .collect();
            tx.push(OpBody::Dismiss {
                file,
                supersedes: losing,
            })?;
            if !kept.winner {
                // The name now shows other bytes: a content change, so a new mtime.
                tx.push(OpBody::SetMeta(SetMeta {
                    file,
                    mode: None,
                    uid: None,
                    gid: None,
                    mtime_ns: Some(crate::hlc::now_ms() as i64 * 1_000_000),
                    atime_ns: None,
                    xattr_set: Vec::new(),
                    xattr_remove: Vec::new(),
                }))?;
            }
            for (name, content, wall_ms) in &copies {
                let body = tx.state().plan_create(
                    parent,
                    name,
                    Kind::File,
                    mode,
                    uid,
                    gid,
                    0,
                    content.clone(),
                    *wall_ms as i64 * 1_000_000,
                )?;
                tx.push(body)?;
            }
            Ok(Ok(()))
        });
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(FsError::ReadOnly) => return Err(ConflictError::ReadOnly(store_name).into()),
            Err(source) => {
                return Err(NodeError::Path {
                    path: shown,
                    source,
                })
            }
        }
        r.flush()?;
        let dir = shown.rsplit_once('/').map_or("", |(d, _)| d);
        Ok(Resolution {
            copies: copies
                .iter()
                .map(|(name, ..)| format!("{dir}/{name}"))
                .collect(),
            dismissed: conflict.versions.len() - 1,
            kept: kept.id,
            path: shown,
        })
    }
}

/// `groups` sorted, as `FileRec::alive` lists them.
fn sorted(groups: &[OpId]) -> Vec<OpId> {
    let mut g = groups.to_vec();
    g.sort();
    g
}

/// The live versions of visible `file` in the store named `store`, if it has several.
fn conflict_of(state: &FsState, names: &mut Names, store: &str, file: FileId) -> Option<Conflict> {
    if state.file(file)?.alive().len() < 2 {
        return None;
    }
    let (path, versions) = live_versions(state, names, store, file)?;
    Some(Conflict {
        path,
        file,
        versions,
    })
}

/// The path of the visible file `file` of the store named `store`, and its live
/// versions, the winner first, then the others oldest first.
pub(super) fn live_versions(
    state: &FsState,
    names: &mut Names,
    store: &str,
    file: FileId,
) -> Option<(String, Vec<LiveVersion>)> {
    let f = state.file(file)?;
    let alive = f.alive();
    let path = shown_path(store, &names.of(state, file)?);
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    let winner = f.winner();
    let listing = state.parent(file).and_then(|p| state.readdir(p).ok());
    let copy_name = |group: OpId| {
        listing.iter().flatten().find_map(|(n, node)| match node {
            FsNode::Conflict { file: cf, head } if *cf == file && *head == group => Some(n.clone()),
            _ => None,
        })
    };
    let mut versions = Vec::with_capacity(alive.len());
    for (group, head) in alive {
        let is_winner = winner == Some(group);
        let node = if is_winner {
            FsNode::Entry { entry: file, file }
        } else {
            FsNode::Conflict { file, head: group }
        };
        let view = state.content(node).ok()?;
        let shown = match is_winner {
            true => path.clone(),
            false => format!("{dir}/{}", copy_name(group)?),
        };
        versions.push(LiveVersion {
            group,
            head,
            author_name: author_name(state, &head.author),
            id: content_id(&view.pieces),
            size: view.size,
            pieces: view.pieces,
            winner: is_winner,
            shown,
        });
    }
    versions.sort_by_key(|v| (!v.winner, v.head));
    Some((path, versions))
}

/// The version `keep` names among the live versions of `c`; `me` is this node's key.
fn choose<'c>(c: &'c Conflict, keep: &Keep, me: PublicKey) -> Result<&'c LiveVersion, NodeError> {
    let one = |which: &'static str, mine: bool| {
        let matching: Vec<&LiveVersion> = c
            .versions
            .iter()
            .filter(|v| (v.author() == me) == mine)
            .collect();
        match matching.as_slice() {
            [one] => Ok(*one),
            [] if mine => Err(ConflictError::NoneMine(c.path.clone())),
            [] => Err(ConflictError::NoneTheirs(c.path.clone())),
            many => Err(ConflictError::Ambiguous {
                path: c.path.clone(),
                which,
                count: many.len(),
            }),
        }
    };
    Ok(match keep {
        Keep::Mine => one("mine", true)?,
        Keep::Theirs => one("theirs", false)?,
        Keep::Both => c
            .versions
            .iter()
            .find(|v| v.winner)
            .expect("a file with live versions has a winner"),
        Keep::Version(prefix) => {
            let p = prefix.to_ascii_lowercase();
            if p.len() < MIN_VERSION_PREFIX || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(RestoreError::BadVersion(prefix.clone()).into());
            }
            let matching: Vec<&LiveVersion> = c
                .versions
                .iter()
                .filter(|v| v.id.to_hex().starts_with(&p))
                .collect();
            // Versions with one id hold the same bytes: keeping either is the same.
            let mut ids: Vec<Hash> = matching.iter().map(|v| v.id).collect();
            ids.sort();
            ids.dedup();
            match (matching.first(), ids.len()) {
                (Some(one), 1) => one,
                (None, _) => {
                    return Err(RestoreError::UnknownVersion {
                        path: c.path.clone(),
                        version: prefix.clone(),
                    }
                    .into())
                }
                (Some(_), count) => {
                    return Err(RestoreError::AmbiguousVersion {
                        path: c.path.clone(),
                        version: prefix.clone(),
                        count,
                    }
                    .into())
                }
            }
        }
    })
}
