//! `FsState`: applies ops to the registers and decides what is visible.
//!
//! Visibility (the rule that makes "nothing is lost" hold): an entry is visible if its
//! parent chain reaches the root and it is not deleted, or it is a file entry whose last
//! Remove did not see some current content head while the file has no other live name
//! (edit wins over delete), or it is a directory with a visible child (a removed directory
//! comes back holding what was added). Ancestors of a visible entry are thus visible.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::fs::content::{FileRec, Lww};
use crate::fs::members::{InviteInfo, MemberInfo, Members};
use crate::fs::op::{Kind, Op, OpBody, Role, Setting};
use crate::fs::paged::{Authors, Got, Page, Paged};
use crate::fs::tree::{Action, Entry, Tree};
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{FileId, InviteId, OpId};

/// The projection of a store's ops: the tree, file contents and metadata, the members.
#[derive(Clone)]
pub struct FsState {
    pub(crate) tree: Tree,
    /// The authors named in the page maps' records (see `fs::paged`).
    pub(crate) authors: Arc<Authors>,
    pub(crate) files: Paged<FileId, FileRec>,
    /// Ids of applied ops, those stamped before `purged_below` forgotten.
    pub(crate) applied: Paged<OpId, ()>,
    /// (id named as superseded whose op has not arrived, the file naming it).
    pub(crate) pending: Paged<(OpId, FileId), ()>,
    pub(crate) store_name: Option<Lww<String>>,
    /// Days superseded content stays retained, if an admin set it.
    pub(crate) retention: Option<Lww<u32>>,
    /// Days a silent member holds the stability frontier back, if an admin set it.
    pub(crate) horizon: Option<Lww<u32>>,
    /// Per snapshot label, the `Snapshot` op it names (`None`: dropped).
    pub(crate) snapshots: BTreeMap<String, Lww<Option<OpId>>>,
    pub(crate) members: Members,
    /// The smallest `DeleteStore` op applied: the store is deleted for everyone.
    pub(crate) deleted: Option<OpId>,
    /// The greatest `below` purged at: ops stamped before it are late.
    pub(crate) purged_below: Hlc,
    /// Late ops applied (stamped before `purged_below`, applied after the purge).
    pub(crate) late: u64,
    /// True once the state's records live in page tables (see `fs::pages`).
    pub(crate) paged: bool,
}

/// What one [`FsState::purge`] dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Move-log records (each with its undo record) of location ops.
    pub tree_records: usize,
    /// Applied op ids.
    pub applied_ids: usize,
    /// Ids named as superseded that no applied op carries.
    pub superseded: usize,
}

impl Default for FsState {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsState")
            .field("applied", &self.applied.len())
            .field("files", &self.files.len())
            .field("entries", &self.tree.len())
            .finish()
    }
}

impl FsState {
    /// An empty store holding only the root directory (perm 0755, owner 0:0).
    pub fn new() -> Self {
        let authors = Authors::new(&[]);
        let mut files = Paged::new(Page::Files, &authors);
        files.insert(OpId::ROOT, FileRec::root());
        FsState {
            tree: Tree::new(&authors),
            files,
            applied: Paged::new(Page::Applied, &authors),
            pending: Paged::new(Page::Superseded, &authors),
            authors,
            store_name: None,
            retention: None,
            horizon: None,
            snapshots: BTreeMap::new(),
            members: Members::default(),
            deleted: None,
            purged_below: Hlc::ZERO,
            late: 0,
            paged: false,
        }
    }

    /// Applies one op by `author`. Callers deliver ops causally (every id an op names was
    /// applied before); otherwise any order. Idempotent per op id: a second op under an
    /// applied id is ignored, so callers must never deliver two different ops under one
    /// id (the store refuses an author's ops stamped before its previous intention, and
    /// forks of its chain). Never panics on odd input.
    ///
    /// Returns the directories whose entries changed, by the op or by later location ops
    /// it reordered (their mtime and ctime may have moved).
    pub fn apply(&mut self, author: PublicKey, op: &Op) -> Vec<FileId> {
        let id = op.id(author);
        if id == OpId::ROOT || self.applied.insert(id, ()).is_some() {
            return Vec::new();
        }
        if id.hlc < self.purged_below {
            self.late += 1;
        }
        match &op.body {
            OpBody::Create(c) => {
                if self.files.contains_key(&id) {
                    return Vec::new();
                }
                self.files.insert(id, FileRec::created(id, c));
                return self.tree.apply(
                    id,
                    Action::Place {
                        file: id,
                        dir: c.kind == Kind::Dir,
                        parent: c.parent,
                        name: c.name.clone(),
                    },
                    &mut self.files,
                );
            }
            OpBody::Link { file, parent, name } => {
                let Some(f) = self.files.get_mut(file) else {
                    return Vec::new();
                };
                if f.kind == Kind::Dir {
                    return Vec::new();
                }
                f.touch(id);
                return self.tree.apply(
                    id,
                    Action::Place {
                        file: *file,
                        dir: false,
                        parent: *parent,
                        name: name.clone(),
                    },
                    &mut self.files,
                );
            }
            OpBody::Move {
                entry,
                parent,
                name,
            } => {
                self.touch_entry(*entry, id);
                return self.tree.apply(
                    id,
                    Action::Move {
                        entry: *entry,
                        parent: *parent,
                        name: name.clone(),
                    },
                    &mut self.files,
                );
            }
            OpBody::Remove {
                entry,
                seen_content,
            } => {
                self.touch_entry(*entry, id);
                let mut seen = seen_content.clone();
                seen.sort();
                seen.dedup();
                return self.tree.apply(
                    id,
                    Action::Remove {
                        entry: *entry,
                        seen,
                    },
                    &mut self.files,
                );
            }
            OpBody::Write {
                file,
                supersedes,
                content,
                mtime_ns,
            } => {
                let pending = self.pending_of(*file, supersedes);
                if let Some(f) = self.files.get_mut(file) {
                    f.touch(id);
                    f.supersede(supersedes, &pending);
                    f.write(id, content, *mtime_ns);
                }
            }
            OpBody::Append {
                file,
                group,
                supersedes,
                data,
                mtime_ns,
            } => {
                let pending = self.pending_of(*file, supersedes);
                if let Some(f) = self.files.get_mut(file) {
                    if f.append(id, *group, data, *mtime_ns) {
                        f.touch(id);
                        f.supersede(supersedes, &pending);
                    }
                }
            }
            OpBody::Dismiss { file, supersedes } => {
                let pending = self.pending_of(*file, supersedes);
                if let Some(f) = self.files.get_mut(file) {
                    f.touch(id);
                    f.supersede(supersedes, &pending);
                }
            }
            OpBody::SetMeta(m) => {
                if let Some(f) = self.files.get_mut(&m.file) {
                    f.touch(id);
                    f.set_meta(id, m);
                }
            }
            OpBody::SetStoreName(name) => match &mut self.store_name {
                Some(reg) => reg.set(id, name.clone()),
                None => self.store_name = Some(Lww::new(id, name.clone())),
            },
            OpBody::Snapshot { label } | OpBody::DropSnapshot { label } => {
                let value = matches!(op.body, OpBody::Snapshot { .. }).then_some(id);
                match self.snapshots.get_mut(label) {
                    Some(reg) => reg.set(id, value),
                    None => {
                        self.snapshots.insert(label.clone(), Lww::new(id, value));
                    }
                }
            }
            OpBody::SetMember {
                key,
                role,
                display_name,
                invite,
            } => self.members.set(id, *key, *role, display_name, *invite),
            OpBody::RevokeMember { key, upto } => self.members.revoke(*key, *upto),
            OpBody::Leave { upto } => self.members.leave(author, *upto),
            OpBody::DeleteStore => {
                self.deleted = Some(self.deleted.map_or(id, |d| d.min(id)));
            }
            OpBody::Invite {
                id: invite,
                role,
                expires_ms,
            } => self.members.invite(id, *invite, *role, *expires_ms),
            OpBody::RevokeInvite { id: invite } => self.members.revoke_invite(*invite),
            OpBody::SetRetention { days } | OpBody::SetHorizon { days } => {
                let register = match op.body {
                    OpBody::SetRetention { .. } => &mut self.retention,
                    _ => &mut self.horizon,
                };
                match register {
                    Some(reg) => reg.set(id, *days),
                    None => *register = Some(Lww::new(id, *days)),
                }
            }
        }
        Vec::new()
    }

    /// Forgets what no op stamped at or after `below` can need, so memory holds only the
    /// part of the history that can still be reordered.
    ///
    /// Contract: the caller guarantees that every op it delivers after this call is
    /// stamped at or after `below` (the stability frontier) and that it never delivers
    /// an op again (applied ids before `below` are forgotten, so a repeat would apply
    /// twice). Under that guarantee the projection after any further ops is exactly the
    /// one a full replay of all ops would give. Dropped: the move-log records with their
    /// undo records of location ops stamped before `below` (no later op sorts before
    /// them, so they are never undone again), applied ids stamped before `below`, and
    /// ids named as superseded before `below` that no op carries (none can arrive).
    /// Kept: every entry, deleted ones included (a deleted name comes back when an edit
    /// it missed wins over its delete, so tombstones stay until that can no longer
    /// happen), every file record, content version, metadata register and member.
    ///
    /// Late rule: an op stamped before the greatest `below` purged at that is applied
    /// afterwards (a member silent past the horizon, or a dishonest one) is applied as
    /// if stamped at that purge point: after every purged record, before every kept one,
    /// among other late ops by op id. That is deterministic given the state but may
    /// differ from a full replay; each such op is counted (`FsStats::late`). A `below`
    /// at or before an earlier purge point drops nothing more.
    pub fn purge(&mut self, below: Hlc) -> Purged {
        if below <= self.purged_below {
            return Purged::default();
        }
        self.purged_below = below;
        let files = &mut self.files;
        Purged {
            tree_records: self.tree.purge(below),
            applied_ids: self.applied.remove_below(below, |_| ()),
            superseded: self.pending.remove_below(below, |(id, file)| {
                if let Some(f) = files.get_mut(file) {
                    f.forget_superseded(id);
                }
            }),
        }
    }

    /// The ids of `supersedes` whose ops have not arrived (and still can), recorded as
    /// pending for `file` so that [`FsState::purge`] finds them.
    fn pending_of(&mut self, file: FileId, supersedes: &[OpId]) -> Vec<OpId> {
        if !self.files.contains_key(&file) {
            return Vec::new();
        }
        let pending: Vec<OpId> = supersedes
            .iter()
            .filter(|id| id.hlc >= self.purged_below && !self.applied.contains_key(id))
            .copied()
            .collect();
        for id in &pending {
            self.pending.insert((*id, file), ());
        }
        pending
    }

    /// The greatest stamp purged at ([`Hlc::ZERO`] if never purged).
    pub fn purged_below(&self) -> Hlc {
        self.purged_below
    }

    /// Late ops applied since the state was built (see [`FsState::purge`]).
    pub fn late(&self) -> u64 {
        self.late
    }

    fn touch_entry(&mut self, entry: OpId, id: OpId) {
        let file = self.tree.entry(entry).map(|e| e.file);
        if let Some(file) = file {
            if let Some(f) = self.files.get_mut(&file) {
                f.touch(id);
            }
        }
    }

    /// The store's name, if one was set.
    pub fn store_name(&self) -> Option<&str> {
        self.store_name.as_ref().map(|r| r.value.as_str())
    }

    /// The snapshots, by label: each the `Snapshot` op that recorded it.
    pub fn snapshots(&self) -> Vec<(&str, OpId)> {
        self.snapshots
            .iter()
            .filter_map(|(label, reg)| reg.value.map(|at| (label.as_str(), at)))
            .collect()
    }

    /// The `Snapshot` op that recorded the snapshot `label`, if it exists.
    pub fn snapshot(&self, label: &str) -> Option<OpId> {
        self.snapshots.get(label).and_then(|reg| reg.value)
    }

    /// A store setting's value (the admin's, else its default).
    pub fn setting(&self, setting: Setting) -> u32 {
        let register = match setting {
            Setting::Retention => &self.retention,
            Setting::Horizon => &self.horizon,
        };
        register
            .as_ref()
            .map_or(setting.default_days(), |r| r.value)
    }

    /// Days a superseded content version stays retained.
    pub fn retention_days(&self) -> u32 {
        self.setting(Setting::Retention)
    }

    /// Days a member may stay silent before it stops holding the stability frontier back.
    pub fn horizon_days(&self) -> u32 {
        self.setting(Setting::Horizon)
    }

    /// A member's role and display name; `None` if revoked or unknown.
    pub fn member(&self, key: &PublicKey) -> Option<(Role, &str)> {
        self.members.member(key)
    }

    /// Current members in key order (revoked ones excluded).
    pub fn members(&self) -> Vec<MemberInfo> {
        self.members.list()
    }

    /// The counting grants of `key` with their roles in op id order, revocations aside
    /// (see `fs::members`).
    pub fn grants(&self, key: &PublicKey) -> Vec<(OpId, Role)> {
        self.members.grants(key)
    }

    /// Every key ever granted a role, revoked ones included.
    pub fn granted(&self) -> Vec<PublicKey> {
        self.members.granted().collect()
    }

    /// The author-chain length past which `key`'s intentions are void, if it is revoked.
    pub fn revocation_cut(&self, key: &PublicKey) -> Option<u64> {
        self.members.cut(key)
    }

    /// True if `key` left the store (its own `Leave`), rather than being revoked.
    pub fn has_left(&self, key: &PublicKey) -> bool {
        self.members.has_left(key)
    }

    /// Every key that left the store, in key order.
    pub fn left(&self) -> Vec<PublicKey> {
        self.members.left_keys()
    }

    /// The members that left, with the role and name they had, in key order.
    pub fn left_members(&self) -> Vec<MemberInfo> {
        self.members.left_list()
    }

    /// The op that deleted the store for everyone (the smallest, if several did).
    pub fn deleted(&self) -> Option<OpId> {
        self.deleted
    }

    /// Every revoked key with its cut.
    pub fn revocation_cuts(&self) -> Vec<(PublicKey, u64)> {
        self.members.cuts().collect()
    }

    /// The invite `id` with its status at `now_ms`.
    pub fn invite(&self, id: &InviteId, now_ms: u64) -> Option<InviteInfo> {
        self.members.invite_info(id, now_ms)
    }

    /// Every invite with its status at `now_ms`, in id order.
    pub fn invites(&self, now_ms: u64) -> Vec<InviteInfo> {
        self.members.invite_list(now_ms)
    }

    /// The name shown for an author in conflict names.
    pub(crate) fn who(&self, key: &PublicKey) -> String {
        match self.member(key) {
            Some((_, name)) if !name.is_empty() => name.to_string(),
            _ => key.short(),
        }
    }

    /// True if `dir` is the root or a directory whose parent chain reaches the root.
    pub(crate) fn placed(&self, dir: FileId) -> bool {
        let mut p = dir;
        for _ in 0..=self.tree.len() + 1 {
            if p == OpId::ROOT {
                return true;
            }
            match self.tree.entry(p) {
                Some(e) if e.dir => p = e.loc.parent,
                _ => return false,
            }
        }
        false
    }

    /// Visibility of entry `id` given that its parent is placed.
    pub(crate) fn self_visible(&self, id: OpId, e: &Entry) -> bool {
        if e.loc.removal.is_none() {
            true
        } else if e.dir {
            self.has_visible_child(id)
        } else {
            self.revived(e.file) == Some(id)
        }
    }

    /// True if entry `id` is visible in the tree.
    pub(crate) fn entry_visible(&self, id: OpId) -> bool {
        self.tree
            .entry(id)
            .is_some_and(|e| self.placed(e.loc.parent) && self.self_visible(id, &e))
    }

    /// The deleted name of `file` that comes back because its removal missed a content head
    /// and the file has no other live name: the one removed last.
    fn revived(&self, file: FileId) -> Option<OpId> {
        let f = self.files.get(&file)?;
        let mut best: Option<(OpId, OpId)> = None;
        for &eid in self.tree.entries_of(file).keys() {
            let Some(e) = self.tree.entry(eid) else {
                continue;
            };
            if !self.placed(e.loc.parent) {
                continue;
            }
            match &e.loc.removal {
                None => return None,
                Some(r) => {
                    let missed = f.heads.keys().any(|h| r.seen.binary_search(h).is_err());
                    if missed && best.is_none_or(|b| (r.op, eid) > b) {
                        best = Some((r.op, eid));
                    }
                }
            }
        }
        best.map(|b| b.1)
    }

    /// True if directory `dir` has a visible child (searching down through deleted dirs).
    pub(crate) fn has_visible_child(&self, dir: FileId) -> bool {
        let mut stack = vec![dir];
        let mut budget = self.tree.len() + 1;
        while let Some(d) = stack.pop() {
            if budget == 0 {
                return false;
            }
            budget -= 1;
            let mut found = false;
            self.tree.scan_children(d, |_, set| {
                for &eid in set.keys() {
                    let Some(e) = self.tree.entry(eid) else {
                        continue;
                    };
                    if e.loc.removal.is_none() || (!e.dir && self.revived(e.file) == Some(eid)) {
                        found = true;
                        return false;
                    }
                    if e.dir {
                        stack.push(eid);
                    }
                }
                true
            });
            if found {
                return true;
            }
        }
        false
    }

    /// True if `file` is the root or has a visible name.
    pub fn exists(&self, file: FileId) -> bool {
        file == OpId::ROOT
            || self
                .tree
                .entries_of(file)
                .keys()
                .any(|e| self.entry_visible(*e))
    }

    /// The record of a known file.
    pub(crate) fn file(&self, file: FileId) -> Option<Got<'_, FileRec>> {
        self.files.get(&file)
    }

    /// The file an op concerns (for `history`), resolved against current state.
    pub fn touched(&self, author: PublicKey, op: &Op) -> Option<FileId> {
        match &op.body {
            OpBody::Create(_) => Some(op.id(author)),
            OpBody::Link { file, .. }
            | OpBody::Write { file, .. }
            | OpBody::Append { file, .. }
            | OpBody::Dismiss { file, .. } => Some(*file),
            OpBody::SetMeta(m) => Some(m.file),
            OpBody::Move { entry, .. } | OpBody::Remove { entry, .. } => {
                self.tree.entry(*entry).map(|e| e.file)
            }
            OpBody::SetStoreName(_)
            | OpBody::Snapshot { .. }
            | OpBody::DropSnapshot { .. }
            | OpBody::SetMember { .. }
            | OpBody::RevokeMember { .. }
            | OpBody::Invite { .. }
            | OpBody::RevokeInvite { .. }
            | OpBody::SetRetention { .. }
            | OpBody::SetHorizon { .. }
            | OpBody::Leave { .. }
            | OpBody::DeleteStore => None,
        }
    }
}
