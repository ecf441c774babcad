//! `FsState`: applies ops to the registers and decides what is visible.
//!
//! Visibility (the rule that makes "nothing is lost" hold): an entry is visible if its
//! parent chain reaches the root and it is not deleted, or it is a file entry whose last
//! Remove did not see some current content head while the file has no other live name
//! (edit wins over delete), or it is a directory with a visible child (a removed directory
//! comes back holding what was added). Ancestors of a visible entry are thus visible.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use crate::cas::Content;
use crate::fs::content::{FileRec, Lww};
use crate::fs::members::{InviteInfo, MemberInfo, Members};
use crate::fs::op::{Create, Kind, Op, OpBody, Role, Setting, MS_PER_DAY};
use crate::fs::paged::{Authors, Got, Page, Paged};
use crate::fs::tree::{Action, Entry, Tree};
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{FileId, Hash, InviteId, OpId};

/// The projection of a store's ops: the tree, file contents and metadata, the members.
#[derive(Clone)]
pub struct FsState {
    pub(crate) tree: Tree,
    /// The authors named in the page maps' records (see `fs::paged`).
    pub(crate) authors: Arc<Authors>,
    pub(crate) files: Paged<FileId, FileRec>,
    /// Ids of applied ops but those in the move log, those stamped before `purged_below`
    /// forgotten.
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
    /// Late ops applied (stamped before `purged_below`, applied after the purge, or
    /// naming a file or directory a sweep forgot).
    pub(crate) late: u64,
    /// The files a removal may have left forgettable, by the removal (see
    /// [`FsState::purge`]).
    pub(crate) removals: Paged<(OpId, FileId), ()>,
    /// The files an op may have left with versions no head belongs to, by the op.
    pub(crate) replacements: Paged<(OpId, FileId), ()>,
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
    /// Deleted entries (tombstones) taken out of the directory indexes.
    pub tombstones: usize,
    /// Records of deleted files (every name deleted) forgotten with their tombstones.
    pub files: usize,
    /// Superseded content versions (version groups no head belongs to) forgotten.
    pub versions: usize,
    /// The sweep stopped at [`SWEEP_BATCH`] rows of a table: more may be due.
    pub behind: bool,
}

/// Most rows of each sweep table one [`FsState::purge`] takes, so the records a sweep
/// changes (written with the next pages) stay bounded however much became due at once
/// (a clone settles its whole history in one commit).
pub(crate) const SWEEP_BATCH: usize = 2048;

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
            removals: Paged::new(Page::Removals, &authors),
            replacements: Paged::new(Page::Replacements, &authors),
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
        if id == OpId::ROOT || self.is_applied(id) {
            return Vec::new();
        }
        let dirs = self.apply_new(id, author, op);
        // A location op's move-log record marks it applied: both are purged at one stamp.
        if !self.tree.is_logged(id) {
            self.applied.insert(id, ());
        }
        dirs
    }

    /// True if op `id` was applied and not purged since.
    fn is_applied(&self, id: OpId) -> bool {
        self.applied.contains_key(&id) || self.tree.is_logged(id)
    }

    /// [`FsState::apply`] of an op not applied yet.
    fn apply_new(&mut self, id: OpId, author: PublicKey, op: &Op) -> Vec<FileId> {
        if id.hlc < self.purged_below {
            self.late += 1;
        }
        match &op.body {
            OpBody::Create(c) => {
                if self.files.contains_key(&id) {
                    return Vec::new();
                }
                self.files.insert(id, FileRec::created(id, c));
                let parent = self.held_dir(id, c.parent);
                return self.tree.apply(
                    id,
                    Action::Place {
                        file: id,
                        dir: c.kind == Kind::Dir,
                        parent,
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
                let parent = self.held_dir(id, *parent);
                return self.tree.apply(
                    id,
                    Action::Place {
                        file: *file,
                        dir: false,
                        parent,
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
                // A removed directory left empty may become forgettable.
                if let Some(from) = self.tree.entry(*entry).map(|e| e.loc.parent) {
                    if self.is_removed(from) {
                        self.removals.insert((id, from), ());
                    }
                }
                let parent = self.held_dir(id, *parent);
                return self.tree.apply(
                    id,
                    Action::Move {
                        entry: *entry,
                        parent,
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
                if let Some(file) = self.tree.entry(*entry).map(|e| e.file) {
                    self.removals.insert((id, file), ());
                }
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
                content,
                mtime_ns,
                ..
            }
            | OpBody::Append {
                file,
                data: content,
                mtime_ns,
                ..
            } if self.swept_away(id, *file) => {
                return self.recover(id, *file, content, *mtime_ns);
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
                self.replaced(id, *file);
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
                self.replaced(id, *file);
            }
            OpBody::Dismiss { file, supersedes } => {
                let pending = self.pending_of(*file, supersedes);
                if let Some(f) = self.files.get_mut(file) {
                    f.touch(id);
                    f.supersede(supersedes, &pending);
                }
                self.replaced(id, *file);
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

    /// Forgets what no op stamped at or after `below` can need, and the deleted names,
    /// deleted files and superseded versions settled before `settled`, so the state
    /// holds only what is live, retained, or can still be reordered.
    ///
    /// Contract: the caller guarantees that every op it delivers after this call is
    /// stamped at or after `below` (the stability frontier) and that it never delivers
    /// an op again (applied ids before `below` are forgotten, so a repeat would apply
    /// twice); and that every op stamped before `settled` (at most `below`) was applied
    /// here and by every member whose later ops it will deliver, before those ops were
    /// planned (the store passes the frontier's `below` capped by the first stamp of
    /// each author's chain past the frontier's vector). Under that guarantee the
    /// projection after any further ops is exactly the one a full replay of all ops
    /// would give, so replicas that purged at different points show the same tree.
    ///
    /// Dropped at `below`: the move-log records with their undo records of location ops
    /// stamped before `below` (no later op sorts before them, so they are never undone
    /// again), applied ids stamped before `below`, and ids named as superseded before
    /// `below` that no op carries (none can arrive).
    ///
    /// Swept at `settled` (when it passed the last sweep): a file none of whose names is
    /// visible, each name deleted by a Remove stamped before `settled` and older than the
    /// store's retention at `settled` (wall clock of the stamps), for a directory holding
    /// no entry at all, and changed last (`FileRec::changed`: emptied, a version dismissed)
    /// before `settled`, is forgotten with its names (its tombstones leave the directory
    /// indexes, so `readdir` and `lookup` no longer scan them). No later op can bring it
    /// back: every author of one has seen its removals and what hid it last, so it did not
    /// see the file, and `history --deleted` and `restore` no longer offer it (its
    /// retention is over). A version group no head belongs to, of a file whose ops are all
    /// stamped before `settled`, is forgotten too: only an Append by an author that had not
    /// seen its last member superseded could revive it. History and restore read versions
    /// from the intentions, which are kept.
    ///
    /// Late rule: an op stamped before the greatest `below` purged at that is applied
    /// afterwards (a member silent past the horizon, or a dishonest one) is applied as
    /// if stamped at that purge point: after every purged record, before every kept one,
    /// among other late ops by op id. A late Create, Link or Move into a directory this
    /// state does not hold places its name at the root instead, and a late Write or
    /// Append to a file it does not hold brings the file back at the root as `recovered
    /// <id>` holding that content, so writes concurrent with a swept delete survive.
    /// That is deterministic given the state but may differ from a full replay (a
    /// replica that had not swept shows the file at its old place); each such op is
    /// counted (`FsStats::late`). A `below` or `settled` at or before an earlier one
    /// drops nothing more.
    pub fn purge(&mut self, below: Hlc, settled: Hlc) -> Purged {
        let mut out = Purged::default();
        if below > self.purged_below {
            self.purge_bookkeeping(below, &mut out);
        }
        self.sweep(settled.min(below), &mut out);
        out
    }

    fn purge_bookkeeping(&mut self, below: Hlc, out: &mut Purged) {
        self.purged_below = below;
        let files = &mut self.files;
        out.tree_records = self.tree.purge(below);
        out.applied_ids = self.applied.remove_below(below, |_| ());
        out.superseded = self.pending.remove_below(below, |(id, file)| {
            if let Some(f) = files.get_mut(file) {
                f.forget_superseded(id);
            }
        });
    }

    /// The sweep of [`FsState::purge`]: it reads only the files the sweep tables name
    /// before `settled` (and the directories of the files it forgets).
    fn sweep(&mut self, settled: Hlc, out: &mut Purged) {
        let retention = u64::from(self.retention_days()) * MS_PER_DAY;
        if let Some(expired) = settled.wall_ms.checked_sub(retention) {
            let settled_removal = |e: &Entry| {
                e.loc
                    .removal
                    .as_ref()
                    .is_some_and(|r| r.op.hlc < settled && r.op.hlc.wall_ms <= expired)
            };
            let due = settled.min(Hlc {
                wall_ms: expired.saturating_add(1),
                counter: 0,
            });
            let rows = self
                .removals
                .remove_first(SWEEP_BATCH, |(op, _)| op.hlc < due);
            out.behind |= rows.len() == SWEEP_BATCH;
            let mut check: BTreeSet<FileId> = rows.into_iter().map(|(_, file)| file).collect();
            // Children before their directories (a child is usually created after its
            // directory: a greater id); forgetting a child checks its directory again.
            let mut hidden_late = Vec::new();
            while let Some(file) = check.pop_last() {
                if !self.forgettable(file, &settled_removal) {
                    continue;
                }
                // A file hidden by an op not settled yet (a directory emptied, a version
                // dismissed) may still be named by an op to come, whose author saw it:
                // look again once that op is settled.
                if let Some(changed) = self.files.get(&file).map(|f| f.changed()) {
                    if changed.hlc >= settled {
                        hidden_late.push((changed, file));
                        continue;
                    }
                }
                // Forgetting names nobody sees changes no other file's visibility.
                for (id, _) in self.tree.entries_of(file).iter() {
                    if let Some(e) = self.tree.entry(*id) {
                        check.insert(e.loc.parent);
                    }
                    self.tree.forget(*id);
                    out.tombstones += 1;
                }
                self.files.remove(&file);
                out.files += 1;
            }
            for key in hidden_late {
                self.removals.insert(key, ());
            }
        }
        let mut later = Vec::new();
        let rows = self
            .replacements
            .remove_first(SWEEP_BATCH, |(op, _)| op.hlc < settled);
        out.behind |= rows.len() == SWEEP_BATCH;
        let trim: BTreeSet<FileId> = rows.into_iter().map(|(_, file)| file).collect();
        for file in trim {
            let Some((touched, dead)) = self
                .files
                .get(&file)
                .map(|f| (f.touched, !f.dead_groups().is_empty()))
            else {
                continue;
            };
            if touched.hlc >= settled {
                // A later op touched it: look again once that one is settled.
                later.push((touched, file));
            } else if dead {
                if let Some(f) = self.files.get_mut(&file) {
                    out.versions += f.drop_dead_groups();
                }
            }
        }
        for key in later {
            self.replacements.insert(key, ());
        }
    }

    /// Records that op `id` may have left versions of `file` without a head.
    fn replaced(&mut self, id: OpId, file: FileId) {
        if self.files.contains_key(&file) {
            self.replacements.insert((id, file), ());
        }
    }

    /// True if a name of `dir` was deleted.
    fn is_removed(&self, dir: FileId) -> bool {
        self.tree.entries_of(dir).keys().any(|id| {
            self.tree
                .entry(*id)
                .is_some_and(|e| e.loc.removal.is_some())
        })
    }

    /// Fills the sweep tables from the entries and file records, for a state read from
    /// a format that had none.
    pub(crate) fn fill_sweep_tables(&mut self) {
        let mut removed = Vec::new();
        self.tree.entries.each(|_, e| {
            if let Some(r) = &e.loc.removal {
                removed.push((r.op, e.file));
            }
            true
        });
        let mut replaced = Vec::new();
        self.files.each(|id, f| {
            if !f.dead_groups().is_empty() {
                replaced.push((f.touched, *id));
            }
            true
        });
        for key in removed {
            self.removals.insert(key, ());
        }
        for key in replaced {
            self.replacements.insert(key, ());
        }
    }

    /// Whether a sweep may forget `file`: not the root, every name deleted by a settled
    /// removal, none visible, and, for a directory, no entry left inside.
    fn forgettable(&self, file: FileId, settled_removal: &impl Fn(&Entry) -> bool) -> bool {
        if file == OpId::ROOT {
            return false;
        }
        let ids = self.tree.entries_of(file);
        let all_settled = !ids.is_empty()
            && ids
                .keys()
                .all(|id| self.tree.entry(*id).is_some_and(|e| settled_removal(&e)));
        let mut empty = true;
        self.tree.scan_children(file, |_, _| {
            empty = false;
            false
        });
        all_settled && empty && !self.exists(file)
    }

    /// `dir`, or the root for a directory a sweep forgot, for op `id` (see
    /// [`FsState::purge`]).
    fn held_dir(&self, id: OpId, dir: FileId) -> FileId {
        if self.swept_away(id, dir) {
            OpId::ROOT
        } else {
            dir
        }
    }

    /// True if late op `id` names `file`, unknown here: ops arrive causally, so a sweep
    /// forgot it (or its Create was voided: an op on time naming such a file is ignored,
    /// as a full replay does).
    fn swept_away(&self, id: OpId, file: FileId) -> bool {
        id.hlc < self.purged_below && file != OpId::ROOT && !self.files.contains_key(&file)
    }

    /// Brings back a file a sweep forgot, written by late op `id`: a regular file at the
    /// root named after its id, holding `content` (see [`FsState::purge`]).
    fn recover(&mut self, id: OpId, file: FileId, content: &Content, mtime_ns: i64) -> Vec<FileId> {
        let name = format!("recovered {}", &Hash::of(&file.to_bytes()).to_hex()[..12]);
        let create = Create {
            parent: OpId::ROOT,
            name: name.clone(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            mtime_ns,
            content: Content::empty(),
        };
        // The version is the late op's own, so the author's next write, which
        // supersedes it, replaces it.
        let mut f = FileRec::created(file, &create);
        f.supersede(&[file], &[]);
        f.write(id, content, mtime_ns);
        f.touch(id);
        self.files.insert(file, f);
        self.tree.apply(
            id,
            Action::Place {
                file,
                dir: false,
                parent: OpId::ROOT,
                name,
            },
            &mut self.files,
        )
    }

    /// The ids of `supersedes` whose ops have not arrived (and still can), recorded as
    /// pending for `file` so that [`FsState::purge`] finds them.
    fn pending_of(&mut self, file: FileId, supersedes: &[OpId]) -> Vec<OpId> {
        if !self.files.contains_key(&file) {
            return Vec::new();
        }
        let pending: Vec<OpId> = supersedes
            .iter()
            .filter(|id| id.hlc >= self.purged_below && !self.is_applied(**id))
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
