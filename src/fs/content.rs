//! Per-file registers: content versions with heads, and last-writer-wins metadata.
//!
//! Content is a register with heads. A Write (or a file's Create) starts a version group;
//! an Append joins the group it names; every op may supersede earlier ops by id. A member
//! id is a head while no op supersedes it, and a group is alive while any member is a head.
//! The winner among alive groups is the group of the greatest head; every other alive group
//! is shown as a conflict copy. Metadata fields are last-writer-wins by op id.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::cas::Content;
use crate::fs::codec::{Reader, Writer};
use crate::fs::error::FsError;
use crate::fs::op::{Create, Kind, SetMeta};
use crate::fs::paged::PageValue;
use crate::fs::vecmap::VecMap;
use crate::fs::view::ContentView;
use crate::identity::PublicKey;
use crate::ids::OpId;

/// Largest size a content version shows: the largest offset the kernel addresses
/// (`off_t`). Pieces are sized by their authors, so their sum may be anything.
pub(crate) const MAX_FILE_BYTES: u64 = i64::MAX as u64;

/// `a + b`, held at [`MAX_FILE_BYTES`]: the same for every order of the same pieces, so
/// replicas agree on a size no matter how its pieces arrived.
pub(crate) fn add_sizes(a: u64, b: u64) -> u64 {
    a.saturating_add(b).min(MAX_FILE_BYTES)
}

/// A last-writer-wins register ordered by op id.
#[derive(Clone, Debug)]
pub(crate) struct Lww<T> {
    /// The op that wrote the value.
    pub at: OpId,
    /// The value.
    pub value: T,
}

impl<T> Lww<T> {
    /// A register written by `at`.
    pub(crate) fn new(at: OpId, value: T) -> Self {
        Lww { at, value }
    }

    /// Takes `value` if `at` is newer than the current writer.
    pub(crate) fn set(&mut self, at: OpId, value: T) {
        if at > self.at {
            self.at = at;
            self.value = value;
        }
    }
}

/// One content version: the base content and every append to it.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    /// Content of the Write or Create that started the group.
    pub base: Content,
    /// Appends by op id.
    pub appends: BTreeMap<OpId, Content>,
}

/// Everything known about one file apart from its names.
#[derive(Clone, Debug)]
pub(crate) struct FileRec {
    /// Kind, fixed at creation.
    pub kind: Kind,
    /// Device number.
    pub rdev: u64,
    /// The Create op's content (the symlink target for symlinks).
    pub target: Content,
    /// Permission bits.
    pub mode: Lww<u32>,
    /// Owner.
    pub uid: Lww<u32>,
    /// Group.
    pub gid: Lww<u32>,
    /// Modification time.
    pub mtime: Lww<i64>,
    /// Access time.
    pub atime: Lww<i64>,
    /// Extended attributes; `None` is a removal tombstone.
    pub xattrs: BTreeMap<Bytes, Lww<Option<Bytes>>>,
    /// Greatest op id that touched the file.
    pub touched: OpId,
    /// For a directory, the location op that last changed its entries (the newest in
    /// replay order, kept by the move log's undo and redo; see `tree`); else, and until
    /// one does, the file's Create.
    pub listing: OpId,
    /// Version groups by the id of the op that started them.
    pub groups: VecMap<OpId, Group>,
    /// Member ops that nothing supersedes, each with its group (a superseded member's
    /// group is never asked for).
    pub heads: VecMap<OpId, OpId>,
    /// Ids named as superseded whose ops have not arrived.
    superseded: BTreeSet<OpId>,
}

impl FileRec {
    /// The store's root directory.
    pub(crate) fn root() -> Self {
        Self::blank(OpId::ROOT, Kind::Dir, 0o755, 0, 0, 0, 0, Content::empty())
    }

    /// A file made by Create op `id`.
    pub(crate) fn created(id: OpId, c: &Create) -> Self {
        let mut f = Self::blank(
            id,
            c.kind,
            c.mode & 0o7777,
            c.uid,
            c.gid,
            c.rdev,
            c.mtime_ns,
            c.content.clone(),
        );
        if c.kind == Kind::File {
            f.add_member(id, id);
            f.groups.insert(
                id,
                Group {
                    base: c.content.clone(),
                    appends: BTreeMap::new(),
                },
            );
        }
        f
    }

    #[allow(clippy::too_many_arguments)]
    fn blank(
        id: OpId,
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        mtime: i64,
        target: Content,
    ) -> Self {
        FileRec {
            kind,
            rdev,
            target,
            mode: Lww::new(id, mode),
            uid: Lww::new(id, uid),
            gid: Lww::new(id, gid),
            mtime: Lww::new(id, mtime),
            atime: Lww::new(id, mtime),
            xattrs: BTreeMap::new(),
            touched: id,
            listing: id,
            groups: VecMap::new(),
            heads: VecMap::new(),
            superseded: BTreeSet::new(),
        }
    }

    /// Records that op `id` touched the file (for ctime).
    pub(crate) fn touch(&mut self, id: OpId) {
        self.touched = self.touched.max(id);
    }

    /// Modification time: the mtime register or, for a directory whose entries an op
    /// changed at or after the register's writer, that op's stamp (last writer wins, by
    /// op id, as between the register's own writers). A directory's Create counts as its
    /// first entry change, so it shows the same clock (the op stamp, not the creator's
    /// sub-millisecond time) from its first `stat` on and never runs backwards.
    pub(crate) fn mtime_ns(&self) -> i64 {
        if self.kind == Kind::Dir && self.listing >= self.mtime.at {
            self.listing.hlc.as_nanos()
        } else {
            self.mtime.value
        }
    }

    /// The op of the last status change (ctime): the newest op that touched the file
    /// or changed a directory's entries.
    pub(crate) fn changed(&self) -> OpId {
        self.touched.max(self.listing)
    }

    /// Marks `ids` as superseded. A member's group is only needed while it is a head,
    /// and an id only needs remembering until its op arrives: those of `pending`, the
    /// ones whose ops have not arrived.
    pub(crate) fn supersede(&mut self, ids: &[OpId], pending: &[OpId]) {
        for id in ids {
            if self.heads.remove(id).is_none() && pending.contains(id) {
                self.superseded.insert(*id);
            }
        }
    }

    /// Forgets that `id` was named as superseded (its op can no longer arrive).
    pub(crate) fn forget_superseded(&mut self, id: &OpId) {
        self.superseded.remove(id);
    }

    /// Starts a version group with Write `id`.
    pub(crate) fn write(&mut self, id: OpId, content: &Content, mtime_ns: i64) {
        if self.kind != Kind::File {
            return;
        }
        self.groups.insert(
            id,
            Group {
                base: content.clone(),
                appends: BTreeMap::new(),
            },
        );
        self.add_member(id, id);
        self.mtime.set(id, mtime_ns);
    }

    /// Adds Append `id` to `group`; false if the group is unknown.
    pub(crate) fn append(&mut self, id: OpId, group: OpId, data: &Content, mtime_ns: i64) -> bool {
        let Some(g) = self.groups.get_mut(&group) else {
            return false;
        };
        g.appends.insert(id, data.clone());
        self.add_member(id, group);
        self.mtime.set(id, mtime_ns);
        true
    }

    fn add_member(&mut self, id: OpId, group: OpId) {
        if !self.superseded.remove(&id) {
            self.heads.insert(id, group);
        }
    }

    /// Groups no head belongs to (superseded versions), by id.
    pub(crate) fn dead_groups(&self) -> Vec<OpId> {
        let alive = self.alive();
        self.groups
            .keys()
            .filter(|g| !alive.contains_key(g))
            .copied()
            .collect()
    }

    /// Forgets the content of superseded versions (see `FsState::purge`); returns how
    /// many.
    pub(crate) fn drop_dead_groups(&mut self) -> usize {
        let dead = self.dead_groups();
        for g in &dead {
            self.groups.remove(g);
        }
        dead.len()
    }

    /// The winning group: the group of the greatest head.
    pub(crate) fn winner(&self) -> Option<OpId> {
        self.heads.last_key_value().map(|(_, g)| *g)
    }

    /// Alive groups with their greatest head, by group id.
    pub(crate) fn alive(&self) -> BTreeMap<OpId, OpId> {
        let mut out = BTreeMap::new();
        for (h, g) in self.heads.iter() {
            out.insert(*g, *h);
        }
        out
    }

    /// Alive groups other than the winner, with their greatest head.
    pub(crate) fn conflicts(&self) -> BTreeMap<OpId, OpId> {
        let mut all = self.alive();
        if let Some(w) = self.winner() {
            all.remove(&w);
        }
        all
    }

    /// Who wrote the content of the alive versions: each group's base and its appends.
    pub(crate) fn content_authors(&self) -> BTreeSet<PublicKey> {
        let mut out = BTreeSet::new();
        for group in self.alive().into_keys() {
            out.insert(group.author);
            if let Some(g) = self.groups.get(&group) {
                out.extend(g.appends.keys().map(|id| id.author));
            }
        }
        out
    }

    /// Heads belonging to `group`.
    pub(crate) fn group_heads(&self, group: OpId) -> Vec<OpId> {
        self.heads
            .iter()
            .filter(|(_, g)| **g == group)
            .map(|(h, _)| *h)
            .collect()
    }

    /// The bytes of `group`: its base followed by its appends in op-id order.
    pub(crate) fn view(&self, group: OpId) -> ContentView {
        let mut v = ContentView::default();
        if let Some(g) = self.groups.get(&group) {
            for c in std::iter::once(&g.base).chain(g.appends.values()) {
                if !c.is_empty() {
                    v.size = add_sizes(v.size, c.len());
                    v.pieces.push(c.clone());
                }
            }
        }
        v
    }

    /// Length of the winning content, without building its view.
    pub(crate) fn size(&self) -> u64 {
        let Some(g) = self.winner().and_then(|w| self.groups.get(&w)) else {
            return 0;
        };
        g.appends
            .values()
            .map(Content::len)
            .fold(g.base.len(), add_sizes)
    }

    /// The winning content (empty if there is none).
    pub(crate) fn content(&self) -> ContentView {
        self.winner().map(|w| self.view(w)).unwrap_or_default()
    }

    /// Applies SetMeta op `id`.
    pub(crate) fn set_meta(&mut self, id: OpId, m: &SetMeta) {
        if let Some(v) = m.mode {
            self.mode.set(id, v & 0o7777);
        }
        if let Some(v) = m.uid {
            self.uid.set(id, v);
        }
        if let Some(v) = m.gid {
            self.gid.set(id, v);
        }
        if let Some(v) = m.mtime_ns {
            self.mtime.set(id, v);
        }
        if let Some(v) = m.atime_ns {
            self.atime.set(id, v);
        }
        let sets = m.xattr_set.iter().map(|(n, v)| (n, Some(v.clone())));
        let removes = m.xattr_remove.iter().map(|n| (n, None));
        for (name, value) in sets.chain(removes) {
            match self.xattrs.get_mut(name) {
                Some(reg) => reg.set(id, value),
                None => {
                    self.xattrs.insert(name.clone(), Lww::new(id, value));
                }
            }
        }
    }

    /// The value of xattr `name`, if set.
    pub(crate) fn xattr(&self, name: &[u8]) -> Option<&Bytes> {
        self.xattrs.get(name).and_then(|r| r.value.as_ref())
    }
}

/// Writes a register's writer as a flag when it is the file's Create op (the usual case).
fn put_at(w: &mut Writer, at: &OpId, file: &OpId) {
    if at == file {
        w.u8(0);
    } else {
        w.u8(1);
        w.id(at);
    }
}

fn get_at(r: &mut Reader, file: &OpId) -> Result<OpId, FsError> {
    Ok(if r.bool()? { r.id()? } else { *file })
}

/// A file's record; registers written by its Create op cost one byte.
impl PageValue<OpId> for FileRec {
    fn put(&self, file: &OpId, w: &mut Writer) {
        w.kind(self.kind);
        w.uint(self.rdev);
        w.content(&self.target);
        for reg in [&self.mode, &self.uid, &self.gid] {
            put_at(w, &reg.at, file);
            w.uint(u64::from(reg.value));
        }
        for reg in [&self.mtime, &self.atime] {
            put_at(w, &reg.at, file);
            w.int(reg.value);
        }
        w.len(self.xattrs.len());
        for (name, reg) in &self.xattrs {
            w.bytes(name);
            w.id(&reg.at);
            match &reg.value {
                None => w.u8(0),
                Some(v) => {
                    w.u8(1);
                    w.bytes(v);
                }
            }
        }
        put_at(w, &self.touched, file);
        put_at(w, &self.listing, file);
        w.len(self.groups.len());
        for (id, g) in self.groups.iter() {
            w.id(id);
            w.content(&g.base);
            w.len(g.appends.len());
            for (a, c) in &g.appends {
                w.id(a);
                w.content(c);
            }
        }
        w.len(self.heads.len());
        for (head, group) in self.heads.iter() {
            w.id(head);
            w.id(group);
        }
        w.ids(self.superseded.iter());
    }

    fn read(file: &OpId, r: &mut Reader) -> Result<Self, FsError> {
        let kind = r.kind()?;
        let rdev = r.uint()?;
        let target = r.content()?;
        let mut small = [
            Lww::new(*file, 0u32),
            Lww::new(*file, 0),
            Lww::new(*file, 0),
        ];
        for reg in &mut small {
            *reg = Lww::new(get_at(r, file)?, r.u32()?);
        }
        let mut times = [Lww::new(*file, 0i64), Lww::new(*file, 0)];
        for reg in &mut times {
            *reg = Lww::new(get_at(r, file)?, r.int()?);
        }
        let mut xattrs = BTreeMap::new();
        for _ in 0..r.len()? {
            let name = Bytes::copy_from_slice(r.bytes()?);
            let at = r.id()?;
            let value = match r.bool()? {
                false => None,
                true => Some(Bytes::copy_from_slice(r.bytes()?)),
            };
            xattrs.insert(name, Lww::new(at, value));
        }
        let touched = get_at(r, file)?;
        let listing = get_at(r, file)?;
        let mut groups = VecMap::new();
        for _ in 0..r.len()? {
            let id = r.id()?;
            let base = r.content()?;
            let mut appends = BTreeMap::new();
            for _ in 0..r.len()? {
                appends.insert(r.id()?, r.content()?);
            }
            groups.insert(id, Group { base, appends });
        }
        let mut heads = VecMap::new();
        for _ in 0..r.len()? {
            heads.insert(r.id()?, r.id()?);
        }
        let superseded = r.ids()?.into_iter().collect();
        let [mode, uid, gid] = small;
        let [mtime, atime] = times;
        Ok(FileRec {
            kind,
            rdev,
            target,
            mode,
            uid,
            gid,
            mtime,
            atime,
            xattrs,
            touched,
            listing,
            groups,
            heads,
            superseded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::identity::PublicKey;
    use crate::ids::{FileId, Hash};

    fn id(wall_ms: u64) -> OpId {
        OpId {
            hlc: Hlc {
                wall_ms,
                counter: 0,
            },
            author: PublicKey([7; 32]),
        }
    }

    fn file_of(content: Content) -> (FileId, FileRec) {
        let create = Create {
            parent: OpId::ROOT,
            name: "f".into(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            mtime_ns: 0,
            content,
        };
        (id(1), FileRec::created(id(1), &create))
    }

    #[test]
    fn piece_sizes_that_overflow_u64_show_the_largest_file_size() {
        let huge = Content::Manifest {
            hash: Hash::of(b"m"),
            size: u64::MAX,
        };
        let (file, mut f) = file_of(huge.clone());
        assert!(f.append(id(2), file, &Content::Inline("x".into()), 0));
        assert!(f.append(id(3), file, &huge, 0));
        assert_eq!(f.size(), MAX_FILE_BYTES);
        assert_eq!(f.content().size, MAX_FILE_BYTES);
        assert_eq!(f.content().pieces.len(), 3);
    }

    #[test]
    fn a_size_past_the_largest_kernel_offset_shows_as_that_offset() {
        let half = Content::Manifest {
            hash: Hash::of(b"h"),
            size: MAX_FILE_BYTES / 2 + 1,
        };
        let (file, mut f) = file_of(Content::Inline("ab".into()));
        assert!(f.append(id(2), file, &half, 0));
        assert_eq!(f.size(), MAX_FILE_BYTES / 2 + 3);
        assert!(f.append(id(3), file, &half, 0));
        assert_eq!(f.size(), MAX_FILE_BYTES);
        assert_eq!(f.view(file).size, MAX_FILE_BYTES);
    }
}
