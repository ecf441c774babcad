//! The location register: names placed by Create/Link, moved by Move, flagged by Remove.
//!
//! This is the replicated move operation of Kleppmann et al., "A highly-available move
//! operation for replicated trees" (2021). Location ops are replayed in op-id order, which
//! is (HLC, author) order. Every applied op is kept in a log with what it changed; an op
//! older than the newest logged one undoes the newer ones, applies, and redoes them, so
//! the resulting tree depends only on the set of ops. A Move whose new parent is the moved
//! entry or one of its descendants (at that point of the replay) is skipped. A Remove only
//! flags the entry as deleted and keeps its place, so later cycle checks still see it there.
//!
//! Directory times follow the same replay: an op that takes effect (a placed name, a
//! move that is not skipped, a removal) sets the `listing` register of each directory
//! whose entries it changed (the parent; for a move, the old and the new one) to its
//! id, and its log record keeps the values it replaced, so undoing it gives them back.
//! A directory's `listing` is thus the newest op, in replay order, that changed its
//! entries: a function of the set of ops, as the locations are.

use std::sync::Arc;

use crate::fs::codec::{corrupt, Reader, Writer};
use crate::fs::content::FileRec;
use crate::fs::error::FsError;
use crate::fs::op::Kind;
use crate::fs::paged::{Authors, Got, Namer, Page, PageKey, PageValue, Paged};
use crate::fs::vecmap::VecMap;
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{FileId, OpId};

/// The Remove op that deleted an entry and the content heads its author had seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Removal {
    /// The Remove op.
    pub op: OpId,
    /// Content heads seen by the remover, sorted.
    pub seen: Vec<OpId>,
}

/// Where an entry is: its parent directory, raw name and deletion flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Parent directory.
    pub parent: FileId,
    /// Raw name (before collision or conflict decoration).
    pub name: String,
    /// Set while the entry is deleted.
    pub removal: Option<Box<Removal>>,
}

/// One name of a file.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The file the name points to.
    pub file: FileId,
    /// Whether the file is a directory.
    pub dir: bool,
    /// Current location.
    pub loc: Loc,
}

/// What one location op does.
#[derive(Clone, Debug)]
pub(crate) enum Action {
    /// Create or Link: a new entry (id = the op id) for `file`.
    Place {
        /// The file.
        file: FileId,
        /// Whether the file is a directory.
        dir: bool,
        /// Parent directory.
        parent: FileId,
        /// Name.
        name: String,
    },
    /// Move `entry` to (`parent`, `name`) and undelete it.
    Move {
        /// The entry.
        entry: OpId,
        /// New parent.
        parent: FileId,
        /// New name.
        name: String,
    },
    /// Flag `entry` as deleted.
    Remove {
        /// The entry.
        entry: OpId,
        /// Content heads the remover had seen, sorted.
        seen: Vec<OpId>,
    },
}

/// How to undo one replayed op.
#[derive(Clone, Debug)]
enum Undo {
    /// The op changed nothing (skipped move, unknown entry).
    Nothing,
    /// The op placed a new entry: take it away.
    Unplace,
    /// The op changed the entry's location: restore this one (boxed: most records
    /// are of the other kinds, and the log is kept per location op).
    Restore(OpId, Box<Loc>),
}

/// One move-log record: the op's action and how to undo it.
#[derive(Clone, Debug)]
pub(crate) struct LogRec {
    action: Action,
    undo: Undo,
    /// The directories whose `listing` register the op set, each with the value it
    /// replaced, in the order set (empty when the op changed nothing).
    listings: Box<[(FileId, OpId)]>,
}

/// The files' registers a replay sets the `listing` of.
pub(crate) type Files = Paged<FileId, FileRec>;

/// The replayed tree with its per-directory name index; every map but the move log is
/// paged (see `fs::paged`).
#[derive(Clone, Debug)]
pub(crate) struct Tree {
    pub(super) entries: Paged<OpId, Entry>,
    /// (dir, raw name) -> entries (deleted ones included: they keep their place).
    pub(super) children: Paged<(FileId, String), IdSet>,
    /// (dir, entry of a subdirectory) (for `nlink`).
    pub(super) subdirs: Paged<(FileId, OpId), ()>,
    /// file -> its entries but the one named by the file's own id (all a file has but
    /// its hard links).
    pub(super) by_file: Paged<FileId, IdSet>,
    /// Location ops not purged yet, with what each changed, in op-id order.
    pub(super) log: Paged<Logged, LogRec>,
}

/// A move-log key: an op id written whole (its author's key, not its number), so the
/// log's byte order is op-id order, the replay order, also among authors of one HLC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Logged(pub OpId);

impl PageKey for Logged {
    fn put(&self, _: &mut Namer, out: &mut Vec<u8>) -> Option<()> {
        out.extend_from_slice(&self.0.to_bytes());
        Some(())
    }

    fn read(bytes: &[u8], _: &[PublicKey]) -> Option<Self> {
        (bytes.len() == 44).then(|| OpId::from_bytes(bytes).map(Logged))?
    }
}

/// A set of op ids, usually of one.
pub(crate) type IdSet = VecMap<OpId, ()>;

impl Tree {
    /// An empty tree held in memory, naming authors in `authors`.
    pub(crate) fn new(authors: &Arc<Authors>) -> Self {
        Tree {
            entries: Paged::new(Page::Entries, authors),
            children: Paged::new(Page::Children, authors),
            subdirs: Paged::new(Page::Subdirs, authors),
            by_file: Paged::new(Page::ByFile, authors),
            log: Paged::new(Page::Log, authors),
        }
    }

    /// Applies location op `id`, replaying newer logged ops after it, and returns the
    /// directories whose entries the undone, applied or replayed ops changed (their
    /// `listing` may have moved). Idempotent.
    pub(crate) fn apply(&mut self, id: OpId, action: Action, files: &mut Files) -> Vec<FileId> {
        // One scan from `id` finds whether it is logged already and what sorts after it.
        let mut logged = false;
        let mut later = Vec::new();
        self.log.scan_from(&Logged(id), |k, rec| {
            logged = k.0 == id;
            if !logged {
                later.push((*k, rec.into_owned()));
            }
            !logged
        });
        if logged {
            return Vec::new();
        }
        let mut dirs = Vec::new();
        for (k, rec) in later.iter().rev() {
            self.log.remove(k);
            self.undo(k.0, rec, files);
            dirs.extend(rec.listings.iter().map(|(d, _)| *d));
        }
        let rec = self.run(id, action, files);
        dirs.extend(rec.listings.iter().map(|(d, _)| *d));
        self.log.insert(Logged(id), rec);
        for (k, rec) in later {
            let rec = self.run(k.0, rec.action, files);
            dirs.extend(rec.listings.iter().map(|(d, _)| *d));
            self.log.insert(k, rec);
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Drops the move-log records of ops stamped before `below`; returns how many.
    pub(crate) fn purge(&mut self, below: Hlc) -> usize {
        self.log.remove_below(below, |_| ())
    }

    /// Takes entry `id` out of every index, as if it had never been placed (a purged
    /// tombstone: see `FsState::purge`).
    pub(crate) fn forget(&mut self, id: OpId) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        self.index_remove(id, &e.loc, e.dir);
        // Stores written before the index left out own names hold those too.
        if self
            .by_file
            .get(&e.file)
            .is_none_or(|set| set.get(&id).is_none())
        {
            return;
        }
        if let Some(set) = self.by_file.get_mut(&e.file) {
            set.remove(&id);
            if set.is_empty() {
                self.by_file.remove(&e.file);
            }
        }
    }

    /// The entry with id `id`, if placed.
    pub(crate) fn entry(&self, id: OpId) -> Option<Got<'_, Entry>> {
        self.entries.get(&id)
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Calls `f` on the raw-name groups of directory `dir`, in raw-name order, while it
    /// returns true.
    pub(crate) fn scan_children(&self, dir: FileId, mut f: impl FnMut(&str, &IdSet) -> bool) {
        self.children
            .scan_under(&dir, |(_, name), set| f(name, &set));
    }

    /// Raw-name groups of directory `dir`, in raw-name order.
    pub(crate) fn children(&self, dir: FileId) -> Vec<(String, IdSet)> {
        let mut out = Vec::new();
        self.scan_children(dir, |name, set| {
            out.push((name.to_string(), set.clone()));
            true
        });
        out
    }

    /// The entries of `dir` whose raw name is `name`.
    pub(crate) fn group(&self, dir: FileId, name: &str) -> Option<Got<'_, IdSet>> {
        self.children.get(&(dir, name.to_string()))
    }

    /// Entries of subdirectories of `dir`.
    pub(crate) fn subdirs(&self, dir: FileId) -> Vec<OpId> {
        let mut out = Vec::new();
        self.subdirs.scan_under(&dir, |(_, e), _| {
            out.push(*e);
            true
        });
        out
    }

    /// The entries of `file`.
    pub(crate) fn entries_of(&self, file: FileId) -> IdSet {
        let mut ids = self
            .by_file
            .get(&file)
            .map(Got::into_owned)
            .unwrap_or_default();
        if self.entries.get(&file).is_some_and(|e| e.file == file) {
            ids.add(file);
        }
        ids
    }

    /// True if location op `id` is in the move log (applied, not purged yet).
    pub(crate) fn is_logged(&self, id: OpId) -> bool {
        self.log.contains_key(&Logged(id))
    }

    /// True if `dir` is `node` or lies below it, following current parents. A walk that
    /// does not end (only possible after malformed ops) counts as inside.
    pub(crate) fn is_within(&self, dir: FileId, node: FileId) -> bool {
        let mut p = dir;
        for _ in 0..=self.entries.len() + 1 {
            if p == node {
                return true;
            }
            if p == OpId::ROOT {
                return false;
            }
            match self.entries.get(&p) {
                Some(e) => p = e.loc.parent,
                None => return false,
            }
        }
        true
    }

    /// Runs location op `id` on the current tree: its log record.
    fn run(&mut self, id: OpId, action: Action, files: &mut Files) -> LogRec {
        let (undo, dirs) = self.act(id, &action);
        let mut listings = Vec::with_capacity(dirs.len());
        for dir in dirs.into_iter().flatten() {
            let Some(f) = files.get_mut(&dir) else {
                continue;
            };
            if f.kind == Kind::Dir && !listings.iter().any(|(d, _)| *d == dir) {
                listings.push((dir, f.listing));
                // The greatest, not the last: a late op (see `FsState::purge`) runs
                // after purged ops stamped later.
                f.listing = f.listing.max(id);
            }
        }
        LogRec {
            action,
            undo,
            listings: listings.into_boxed_slice(),
        }
    }

    /// Does what `action` says: how to undo it, and the directories whose entries it
    /// changed.
    fn act(&mut self, id: OpId, action: &Action) -> (Undo, [Option<FileId>; 2]) {
        match action {
            Action::Place {
                file,
                dir,
                parent,
                name,
            } => {
                if self.entries.contains_key(&id) {
                    return (Undo::Nothing, [None; 2]);
                }
                let loc = Loc {
                    parent: *parent,
                    name: name.clone(),
                    removal: None,
                };
                self.index_add(id, &loc, *dir);
                if id != *file {
                    self.by_file.get_or_default(file).add(id);
                }
                self.entries.insert(
                    id,
                    Entry {
                        file: *file,
                        dir: *dir,
                        loc,
                    },
                );
                (Undo::Unplace, [Some(*parent), None])
            }
            Action::Move {
                entry,
                parent,
                name,
            } => {
                let Some(e) = self.entries.get(entry) else {
                    return (Undo::Nothing, [None; 2]);
                };
                if self.is_within(*parent, e.file) {
                    return (Undo::Nothing, [None; 2]);
                }
                let prev = e.loc.clone();
                self.set_loc(
                    *entry,
                    Loc {
                        parent: *parent,
                        name: name.clone(),
                        removal: None,
                    },
                );
                let dirs = [Some(prev.parent), Some(*parent)];
                (Undo::Restore(*entry, Box::new(prev)), dirs)
            }
            Action::Remove { entry, seen } => {
                let Some(e) = self.entries.get(entry) else {
                    return (Undo::Nothing, [None; 2]);
                };
                let prev = e.loc.clone();
                let next = Loc {
                    removal: Some(Box::new(Removal {
                        op: id,
                        seen: seen.clone(),
                    })),
                    ..prev.clone()
                };
                self.set_loc(*entry, next);
                let dirs = [Some(prev.parent), None];
                (Undo::Restore(*entry, Box::new(prev)), dirs)
            }
        }
    }

    fn undo(&mut self, id: OpId, rec: &LogRec, files: &mut Files) {
        for (dir, before) in rec.listings.iter().rev() {
            if let Some(f) = files.get_mut(dir) {
                f.listing = *before;
            }
        }
        match &rec.undo {
            Undo::Nothing => {}
            Undo::Unplace => self.forget(id),
            Undo::Restore(entry, prev) => self.set_loc(*entry, Loc::clone(prev)),
        }
    }

    fn set_loc(&mut self, id: OpId, loc: Loc) {
        let Some(e) = self.entries.get(&id) else {
            return;
        };
        let (old, dir) = (e.loc.clone(), e.dir);
        if old.parent != loc.parent || old.name != loc.name {
            self.index_remove(id, &old, dir);
            self.index_add(id, &loc, dir);
        }
        if let Some(e) = self.entries.get_mut(&id) {
            e.loc = loc;
        }
    }

    fn index_add(&mut self, id: OpId, loc: &Loc, dir: bool) {
        self.children
            .get_or_default(&(loc.parent, loc.name.clone()))
            .add(id);
        if dir {
            self.subdirs.insert((loc.parent, id), ());
        }
    }

    fn index_remove(&mut self, id: OpId, loc: &Loc, dir: bool) {
        let key = (loc.parent, loc.name.clone());
        if let Some(set) = self.children.get_mut(&key) {
            set.remove(&id);
            if set.is_empty() {
                self.children.remove(&key);
            }
        }
        if dir {
            self.subdirs.remove(&(loc.parent, id));
        }
    }
}

impl PageValue<OpId> for Entry {
    fn put(&self, _: &OpId, w: &mut Writer) {
        w.id(&self.file);
        w.u8(u8::from(self.dir));
        self.loc.encode(w);
    }

    fn read(_: &OpId, r: &mut Reader) -> Result<Self, FsError> {
        Ok(Entry {
            file: r.id()?,
            dir: r.bool()?,
            loc: Loc::decode(r)?,
        })
    }
}

impl<K> PageValue<K> for IdSet {
    fn put(&self, _: &K, w: &mut Writer) {
        w.ids(self.keys());
    }

    fn read(_: &K, r: &mut Reader) -> Result<Self, FsError> {
        let mut set = IdSet::new();
        for id in r.ids()? {
            set.add(id);
        }
        Ok(set)
    }
}

impl Loc {
    fn encode(&self, w: &mut Writer) {
        w.id(&self.parent);
        w.bytes(self.name.as_bytes());
        match &self.removal {
            None => w.u8(0),
            Some(r) => {
                w.u8(1);
                w.id(&r.op);
                w.ids(r.seen.iter());
            }
        }
    }

    fn decode(r: &mut Reader) -> Result<Self, FsError> {
        Ok(Loc {
            parent: r.id()?,
            name: r.string()?,
            removal: match r.bool()? {
                false => None,
                true => Some(Box::new(Removal {
                    op: r.id()?,
                    seen: r.ids()?,
                })),
            },
        })
    }
}

impl Action {
    fn encode(&self, w: &mut Writer) {
        match self {
            Action::Place {
                file,
                dir,
                parent,
                name,
            } => {
                w.u8(0);
                w.id(file);
                w.u8(u8::from(*dir));
                w.id(parent);
                w.bytes(name.as_bytes());
            }
            Action::Move {
                entry,
                parent,
                name,
            } => {
                w.u8(1);
                w.id(entry);
                w.id(parent);
                w.bytes(name.as_bytes());
            }
            Action::Remove { entry, seen } => {
                w.u8(2);
                w.id(entry);
                w.ids(seen.iter());
            }
        }
    }

    fn decode(r: &mut Reader) -> Result<Self, FsError> {
        Ok(match r.u8()? {
            0 => Action::Place {
                file: r.id()?,
                dir: r.bool()?,
                parent: r.id()?,
                name: r.string()?,
            },
            1 => Action::Move {
                entry: r.id()?,
                parent: r.id()?,
                name: r.string()?,
            },
            2 => Action::Remove {
                entry: r.id()?,
                seen: r.ids()?,
            },
            _ => return Err(corrupt("bad action tag")),
        })
    }
}

impl Undo {
    fn encode(&self, w: &mut Writer) {
        match self {
            Undo::Nothing => w.u8(0),
            Undo::Unplace => w.u8(1),
            Undo::Restore(entry, loc) => {
                w.u8(2);
                w.id(entry);
                loc.encode(w);
            }
        }
    }

    fn decode(r: &mut Reader) -> Result<Self, FsError> {
        Ok(match r.u8()? {
            0 => Undo::Nothing,
            1 => Undo::Unplace,
            2 => Undo::Restore(r.id()?, Box::new(Loc::decode(r)?)),
            _ => return Err(corrupt("bad undo tag")),
        })
    }
}

impl Tree {
    /// Writes the entries and the move log; the name, subdirectory and file indexes
    /// are derived from the entries on decode.
    pub(crate) fn encode(&self, w: &mut Writer) {
        let entries = self.entries.all();
        w.len(entries.len());
        for (id, e) in &entries {
            w.id(id);
            e.put(id, w);
        }
        self.encode_log(w);
    }

    /// Reads what [`Tree::encode`] wrote, naming authors in `authors`.
    pub(crate) fn decode(r: &mut Reader, authors: &Arc<Authors>) -> Result<Self, FsError> {
        let mut t = Tree::new(authors);
        for _ in 0..r.len()? {
            let id = r.id()?;
            let e = Entry::read(&id, r)?;
            if t.entries.contains_key(&id) {
                return Err(corrupt("entry listed twice"));
            }
            t.index_add(id, &e.loc, e.dir);
            if id != e.file {
                t.by_file.get_or_default(&e.file).add(id);
            }
            t.entries.insert(id, e);
        }
        t.decode_log(r)?;
        Ok(t)
    }

    /// Writes the move log alone (snapshots, and page headers before format 6, held it).
    pub(crate) fn encode_log(&self, w: &mut Writer) {
        let log = self.log.all();
        w.len(log.len());
        for (k, rec) in &log {
            w.id(&k.0);
            rec.put(k, w);
        }
    }

    /// Reads what [`Tree::encode_log`] wrote into the log (as records not written yet).
    pub(crate) fn decode_log(&mut self, r: &mut Reader) -> Result<(), FsError> {
        for _ in 0..r.len()? {
            let k = Logged(r.id()?);
            let rec = LogRec::read(&k, r)?;
            if self.log.insert(k, rec).is_some() {
                return Err(corrupt("move-log record listed twice"));
            }
        }
        Ok(())
    }
}

impl PageValue<Logged> for LogRec {
    fn put(&self, _: &Logged, w: &mut Writer) {
        self.action.encode(w);
        self.undo.encode(w);
        w.len(self.listings.len());
        for (dir, before) in &self.listings {
            w.id(dir);
            w.id(before);
        }
    }

    fn read(_: &Logged, r: &mut Reader) -> Result<Self, FsError> {
        let action = Action::decode(r)?;
        let undo = Undo::decode(r)?;
        let listings = (0..r.len()?)
            .map(|_| Ok((r.id()?, r.id()?)))
            .collect::<Result<_, FsError>>()?;
        Ok(LogRec {
            action,
            undo,
            listings,
        })
    }
}
