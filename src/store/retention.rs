//! Retention: which content versions of a store are kept, and for how long.
//!
//! A version is a file's version group (a Write or a file's Create, with its appends)
//! or a symlink's target. It is *current* while the projection holds it: an alive
//! group of a visible file (the winner or a conflict copy), or a visible symlink's
//! target. A superseded version, or a deleted file's last versions, is *retained* for
//! the store's retention setting ([`OpBody::SetRetention`], an admin-only LWW register,
//! default [`crate::fs::op::DEFAULT_RETENTION_DAYS`]) from the moment it stopped being current: the
//! stamp of the latest op superseding one of its members (its last head), or of the
//! latest Remove of the deleted file's names. Times come from op stamps, so every
//! replica retains the same versions. Only content of current and retained versions
//! is kept on disk ([`Store::content_plan`], collected by `Node::gc`).
//!
//! Superseded versions are found in the intentions on disk, which are kept for ever;
//! the projection only holds current ones.
//!
//! Store settings (retention, and the stability horizon that `store::frontier` reads)
//! are read and set here through one path: [`Store::setting`], [`Store::set_setting`].

use std::collections::{BTreeMap, HashMap, HashSet};

use redb::{ReadableDatabase, ReadableTable};

use crate::cas::Content;
use crate::fs::op::{Kind, Op, OpBody, OpError, Role, Setting};
use crate::fs::FsState;
use crate::ids::{Hash, OpId};
use crate::intention::{stored, Stored};
use crate::store::error::StoreError;
use crate::store::tables::INTENTIONS;
use crate::store::Store;

pub use crate::fs::op::MS_PER_DAY;

/// Whether a version that stopped being current at wall ms `superseded_ms` (`None`:
/// it still is) is retained at `now_ms` under a retention of `days`.
pub fn is_retained(superseded_ms: Option<u64>, days: u32, now_ms: u64) -> bool {
    superseded_ms.is_none_or(|at| now_ms.saturating_sub(at) < u64::from(days) * MS_PER_DAY)
}

/// The content a store keeps: what its current and retained versions need. Only
/// pieces that name blobs (manifests) are listed: inline content needs none.
#[derive(Clone, Debug, Default)]
pub struct ContentPlan {
    /// Manifest pieces of current versions.
    pub current: Vec<Content>,
    /// Manifest pieces of retained superseded or deleted versions.
    pub retained: Vec<Content>,
    /// Every manifest any op of the store names, kept or not: content put for the store
    /// that none names yet belongs to a write still on its way.
    pub named: HashSet<Hash>,
}

/// A store setting could not be changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingError {
    /// This node is not an admin of the store.
    #[error("only an admin may change the store's settings")]
    NotAdmin,
    /// The value is out of range.
    #[error("invalid setting: {0}")]
    Invalid(#[from] OpError),
    /// The store failed or is closed.
    #[error(transparent)]
    Store(StoreError),
}

/// One version group found in the intentions, with the pieces of it that name blobs.
#[derive(Default)]
struct Group {
    base: Option<Content>,
    appends: BTreeMap<OpId, Content>,
    members: Vec<OpId>,
}

/// The version group `op` (with id `id`) belongs to and the content it brings: a
/// file's Create or a Write starts a group of its own, an Append adds to one.
fn group_piece(id: OpId, body: &OpBody) -> Option<(OpId, &Content)> {
    match body {
        OpBody::Create(c) if c.kind == Kind::File => Some((id, &c.content)),
        OpBody::Write { content, .. } => Some((id, content)),
        OpBody::Append { group, data, .. } => Some((*group, data)),
        _ => None,
    }
}

impl Store {
    /// Calls `f` with every op of every intention on disk and its id (signatures are
    /// not checked again; bytes quarantined at open, never applied, are skipped).
    fn each_op(&self, mut f: impl FnMut(OpId, &Op)) -> Result<(), StoreError> {
        let txn = self.handle.shared.index.db()?.begin_read()?;
        for row in txn.open_table(INTENTIONS)?.iter()? {
            let (_, bytes) = row?;
            let Ok(Stored { author, ops, .. }) = stored(bytes.value()) else {
                continue;
            };
            for op in &ops {
                f(op.id(author), op);
            }
        }
        Ok(())
    }

    /// A setting's value in this store.
    pub fn setting(&self, setting: Setting) -> u32 {
        self.read(|s| s.setting(setting))
    }

    /// Days a superseded version stays retained in this store.
    pub fn retention_days(&self) -> u32 {
        self.setting(Setting::Retention)
    }

    /// Sets a store setting to `days` (a replicated system op); nothing is written when
    /// it already is `days`, and `days` outside the setting's range is refused. Admins only.
    pub fn set_setting(&self, setting: Setting, days: u32) -> Result<(), SettingError> {
        self.write_as(
            |role| match role {
                Some(Role::Admin) => Ok(()),
                _ => Err(SettingError::NotAdmin),
            },
            SettingError::Store,
            true,
            |tx| {
                if tx.state().setting(setting) != days {
                    tx.push(setting.op(days))?;
                }
                Ok(())
            },
        )
    }

    /// What content the store keeps now (see the module doc). Reads every intention
    /// on disk (without checking signatures again), outside any lock of the projection.
    pub fn content_plan(&self) -> Result<ContentPlan, StoreError> {
        let now_ms = self.handle.shared.now_ms();
        let days = self.read(FsState::retention_days);
        let held = self.read_files(FsState::held_versions_after);
        let mut plan = ContentPlan::default();
        for v in held {
            if v.deleted_ms.is_none() {
                plan.current.extend(v.pieces);
            } else if is_retained(v.deleted_ms, days, now_ms) {
                plan.retained.extend(v.pieces);
            }
        }
        // Three passes over the intentions, so memory holds only the groups that name a
        // blob (inline content needs none): which groups those are, their members and
        // pieces, then when each member stopped being current.
        let mut groups: HashMap<OpId, Group> = HashMap::new();
        self.each_op(|id, op| {
            if let Some((group, content)) = group_piece(id, &op.body) {
                if content.is_manifest() {
                    groups.entry(group).or_default();
                }
            }
        })?;
        let mut members: HashMap<OpId, Option<u64>> = HashMap::new();
        self.each_op(|id, op| {
            let Some((group, content)) = group_piece(id, &op.body) else {
                return;
            };
            let Some(g) = groups.get_mut(&group) else {
                return;
            };
            if content.is_manifest() {
                match op.body {
                    OpBody::Append { .. } => {
                        g.appends.insert(id, content.clone());
                    }
                    _ => g.base = Some(content.clone()),
                }
            }
            g.members.push(id);
            members.insert(id, None);
        })?;
        self.each_op(|_, op| {
            let supersedes = match &op.body {
                OpBody::Write { supersedes, .. }
                | OpBody::Append { supersedes, .. }
                | OpBody::Dismiss { supersedes, .. } => supersedes,
                _ => return,
            };
            for s in supersedes {
                if let Some(at) = members.get_mut(s) {
                    *at = Some(at.map_or(op.hlc.wall_ms, |at| at.min(op.hlc.wall_ms)));
                }
            }
        })?;
        for g in groups.into_values() {
            let pieces: Vec<Content> = g.base.into_iter().chain(g.appends.into_values()).collect();
            plan.named.extend(pieces.iter().filter_map(|c| match c {
                Content::Manifest { hash, .. } => Some(*hash),
                Content::Inline(_) => None,
            }));
            let dead: Option<Vec<u64>> = g.members.iter().map(|m| members[m]).collect();
            // A group with a head left is the projection's to judge (current, or a
            // deleted file's), above.
            let Some(dead_ms) = dead.and_then(|d| d.into_iter().max()) else {
                continue;
            };
            if is_retained(Some(dead_ms), days, now_ms) {
                plan.retained.extend(pieces);
            }
        }
        // A snapshot keeps its current versions until it is dropped.
        let snapshots: Vec<OpId> =
            self.read(|s| s.snapshots().into_iter().map(|(_, at)| at).collect());
        for at in snapshots {
            for v in self.snapshot_state(at)?.held_versions() {
                if v.deleted_ms.is_none() {
                    plan.retained.extend(v.pieces);
                }
            }
        }
        for c in plan.current.iter().chain(&plan.retained) {
            if let Content::Manifest { hash, .. } = c {
                plan.named.insert(*hash);
            }
        }
        Ok(plan)
    }
}
