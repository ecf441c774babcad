//! Read queries on `FsState`: name resolution with display names, attributes, content,
//! statistics and the canonical dump used by convergence tests.
//!
//! Display names are computed per raw-name group of a directory: the visible entry with
//! the smallest entry id keeps the raw name, every other one gets a ` (<author8>)` tag
//! (longer tags if that is taken), and each non-winning alive content group of a file
//! shows next to each of the file's names as ` (conflict <who> <date> <time>)`. Lookups
//! parse a name back to its possible raw names, so they only touch those groups.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use bytes::Bytes;

use crate::cas::Content;
use crate::fs::content::FileRec;
use crate::fs::error::FsError;
use crate::fs::names::{
    collision_tags, conflict_tag, decorate, may_be_cut, raw_candidates, MIN_CUT_NAME_BYTES,
};
use crate::fs::op::Kind;
use crate::fs::paged::Got;
use crate::fs::state::FsState;
use crate::fs::tree::{Entry, IdSet};
use crate::fs::view::{Attr, ContentView, FsStats, Node};
use crate::identity::{hex, PublicKey};
use crate::ids::{FileId, OpId};

/// Set-user-ID and set-group-ID: shown only on what the local node wrote alone
/// ([`FsState::mask_foreign_privileges`]).
pub(crate) const PRIVILEGE_BITS: u32 = 0o6000;

/// Visible entries whose file records [`FsState::stats`] reads in one pass over the files.
const STATS_CHUNK: usize = 256;

/// Directories whose verdict [`FsState::stats`] keeps while it counts.
const STATS_DIRS_KEPT: usize = 4096;

/// Adds a visible file counted at this entry to `s`.
fn count_file(f: &FileRec, s: &mut FsStats) {
    s.files += 1;
    if f.kind == Kind::File {
        s.bytes += f.size();
    }
}

impl FsState {
    /// Resolves `name` in directory `dir` (raw, collision or conflict-copy names).
    pub fn lookup(&self, dir: FileId, name: &str) -> Result<Node, FsError> {
        self.check_dir(dir)?;
        for raw in raw_candidates(name) {
            if let Some(set) = self.tree.group(dir, &raw) {
                if raw == name {
                    // The first visible entry of a group shows the raw name itself; every
                    // other name of the group is decorated.
                    if let Some((entry, e)) = self.visible_entries(&set).next() {
                        return Ok(Node::Entry {
                            entry,
                            file: e.file,
                        });
                    }
                    continue;
                }
                for (n, node) in self.group_names(dir, &raw, &set) {
                    if n == name {
                        return Ok(node);
                    }
                }
            }
        }
        if name.len() >= MIN_CUT_NAME_BYTES && name.contains(" (") {
            // A decorated name cut to fit parses back to no raw name: try the long ones.
            for (raw, set) in self.tree.children(dir) {
                if !may_be_cut(&raw) {
                    continue;
                }
                for (n, node) in self.group_names(dir, &raw, &set) {
                    if n == name {
                        return Ok(node);
                    }
                }
            }
        }
        Err(FsError::NotFound)
    }

    /// The visible names of directory `dir`, sorted by name.
    pub fn readdir(&self, dir: FileId) -> Result<Vec<(String, Node)>, FsError> {
        self.check_dir(dir)?;
        let mut out = Vec::new();
        for (raw, set) in self.tree.children(dir) {
            out.extend(self.group_names(dir, &raw, &set));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Fails unless `dir` is a visible directory.
    pub(crate) fn check_dir(&self, dir: FileId) -> Result<(), FsError> {
        let f = self.file(dir).ok_or(FsError::NotFound)?;
        if !self.exists(dir) {
            return Err(FsError::NotFound);
        }
        if f.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(())
    }

    /// Display names of the visible entries (and their conflict copies) of one raw-name
    /// group of a placed directory.
    fn group_names(&self, dir: FileId, raw: &str, set: &IdSet) -> Vec<(String, Node)> {
        let mut out = Vec::new();
        let mut taken: Vec<String> = Vec::new();
        for (eid, e) in self.visible_entries(set) {
            let shown = if taken.is_empty() {
                raw.to_string()
            } else {
                let tags = collision_tags(&eid.author.short(), eid.hlc.wall_ms, eid.hlc.counter);
                let candidates: Vec<String> = tags.iter().map(|t| decorate(raw, t)).collect();
                candidates
                    .iter()
                    .find(|n| !taken.contains(n) && !self.raw_taken(dir, n))
                    .unwrap_or(&candidates[2])
                    .clone()
            };
            out.push((
                shown.clone(),
                Node::Entry {
                    entry: eid,
                    file: e.file,
                },
            ));
            self.push_conflicts(&mut out, &shown, e.file);
            taken.push(shown);
        }
        out
    }

    /// The visible entries of a raw-name group, in the group's order.
    fn visible_entries<'a>(
        &'a self,
        set: &'a IdSet,
    ) -> impl Iterator<Item = (OpId, Got<'a, Entry>)> + 'a {
        set.keys().filter_map(|&eid| {
            let e = self.tree.entry(eid)?;
            self.self_visible(eid, &e).then_some((eid, e))
        })
    }

    /// True if a visible entry of `dir` has the raw name `name`.
    fn raw_taken(&self, dir: FileId, name: &str) -> bool {
        self.tree
            .group(dir, name)
            .is_some_and(|set| self.visible_entries(&set).next().is_some())
    }

    fn push_conflicts(&self, out: &mut Vec<(String, Node)>, shown: &str, file: FileId) {
        let Some(f) = self.file(file) else {
            return;
        };
        let mut names: Vec<String> = Vec::new();
        for (group, head) in f.conflicts() {
            let tag = conflict_tag(&self.who(&head.author), head.hlc.wall_ms);
            let mut name = decorate(shown, &tag);
            let mut k = 2;
            while names.contains(&name) {
                name = decorate(shown, &format!("{tag} {k}"));
                k += 1;
            }
            names.push(name.clone());
            out.push((name, Node::Conflict { file, head: group }));
        }
    }

    /// Attributes of a node.
    pub fn attr(&self, node: Node) -> Result<Attr, FsError> {
        match node {
            Node::Entry { entry, file } => {
                let f = self.file(file).ok_or(FsError::NotFound)?;
                if file != OpId::ROOT && self.tree.entry(entry).map(|e| e.file) != Some(file) {
                    return Err(FsError::NotFound);
                }
                let nlink = if f.kind == Kind::Dir {
                    let subdirs = self
                        .tree
                        .subdirs(file)
                        .iter()
                        .filter(|id| {
                            self.tree
                                .entry(**id)
                                .is_some_and(|e| self.self_visible(**id, &e))
                        })
                        .count();
                    2 + subdirs
                } else {
                    self.tree
                        .entries_of(file)
                        .keys()
                        .filter(|id| self.entry_visible(**id))
                        .count()
                };
                let size = match f.kind {
                    Kind::File => f.size(),
                    Kind::Symlink => f.target.len(),
                    _ => 0,
                };
                Ok(Attr {
                    kind: f.kind,
                    size,
                    perm: f.mode.value,
                    uid: f.uid.value,
                    gid: f.gid.value,
                    nlink: u32::try_from(nlink).unwrap_or(u32::MAX),
                    rdev: f.rdev,
                    mtime_ns: f.mtime_ns(),
                    atime_ns: f.atime.value,
                    ctime_ns: f.changed().hlc.as_nanos(),
                    crtime_ns: file.hlc.as_nanos(),
                })
            }
            Node::Conflict { file, head } => {
                let f = self.file(file).ok_or(FsError::NotFound)?;
                let latest = *f.conflicts().get(&head).ok_or(FsError::NotFound)?;
                Ok(Attr {
                    kind: Kind::File,
                    size: f.view(head).size,
                    perm: f.mode.value & !0o222,
                    uid: f.uid.value,
                    gid: f.gid.value,
                    nlink: 1,
                    rdev: 0,
                    mtime_ns: latest.hlc.as_nanos(),
                    atime_ns: latest.hlc.as_nanos(),
                    ctime_ns: latest.hlc.as_nanos(),
                    crtime_ns: head.hlc.as_nanos(),
                })
            }
        }
    }

    /// Clears the set-user-ID and set-group-ID bits of `attr`, the attributes of `node`,
    /// unless `me` wrote its mode, owner and group and every op of the content it shows:
    /// what another member wrote never gains privileges on this machine (the mount is
    /// `nosuid` too; this keeps `cp -a` from copying the bits somewhere they count).
    pub fn mask_foreign_privileges(&self, node: Node, attr: &mut Attr, me: &PublicKey) {
        if attr.perm & PRIVILEGE_BITS != 0 && !self.only_written_by(node, me) {
            attr.perm &= !PRIVILEGE_BITS;
        }
    }

    /// Whether `who` authored the mode, owner and group of `node` and every op of the
    /// content it shows (the version group's first op and its appends).
    fn only_written_by(&self, node: Node, who: &PublicKey) -> bool {
        let Some(f) = self.file(node.file()) else {
            return false;
        };
        let group = match node {
            Node::Entry { .. } => f.winner(),
            Node::Conflict { head, .. } => Some(head),
        };
        let content = group.into_iter().flat_map(|g| {
            std::iter::once(g).chain(
                f.groups
                    .get(&g)
                    .into_iter()
                    .flat_map(|g| g.appends.keys().copied()),
            )
        });
        [f.mode.at, f.uid.at, f.gid.at]
            .into_iter()
            .chain(content)
            .all(|op| op.author == *who)
    }

    /// The content of a file node or conflict copy.
    pub fn content(&self, node: Node) -> Result<ContentView, FsError> {
        match node {
            Node::Entry { file, .. } => {
                let f = self.file(file).ok_or(FsError::NotFound)?;
                match f.kind {
                    Kind::File => Ok(f.content()),
                    Kind::Dir => Err(FsError::IsDir),
                    _ => Err(FsError::Invalid),
                }
            }
            Node::Conflict { file, head } => {
                let f = self.file(file).ok_or(FsError::NotFound)?;
                if !f.conflicts().contains_key(&head) {
                    return Err(FsError::NotFound);
                }
                Ok(f.view(head))
            }
        }
    }

    /// The blob-backed pieces of every visible version of a file: the winning content
    /// and each conflict copy (what a replica must fetch to read them all).
    pub fn blob_pieces(&self, file: FileId) -> Vec<Content> {
        self.file(file)
            .map(|f| rec_blob_pieces(&f))
            .unwrap_or_default()
    }

    /// Who wrote the content of `file`'s visible versions: the members that hold its
    /// blobs for certain (empty for a file not known).
    pub fn content_authors(&self, file: FileId) -> BTreeSet<PublicKey> {
        self.file(file)
            .map(|f| f.content_authors())
            .unwrap_or_default()
    }

    /// The regular files after `after` in the files' stored order (from the first if
    /// `None`) that have blob-backed pieces, with them ([`FsState::blob_pieces`]), among
    /// `limit` regular files at most; and the last regular file looked at (`None`: there
    /// was none left). One pass over the records, each decoded once.
    pub fn blob_pieces_after(
        &self,
        after: Option<FileId>,
        limit: usize,
    ) -> (Option<FileId>, Vec<(FileId, Vec<Content>)>) {
        let (mut seen, mut last, mut out) = (0, None, Vec::new());
        let mut take = |id: &FileId, f: Got<'_, FileRec>| {
            if f.kind == Kind::File && Some(*id) != after {
                seen += 1;
                last = Some(*id);
                let pieces = rec_blob_pieces(&f);
                if !pieces.is_empty() {
                    out.push((*id, pieces));
                }
            }
            seen < limit
        };
        match &after {
            Some(after) => self.files.scan_from(after, &mut take),
            None => self.files.each(&mut take),
        }
        (last, out)
    }

    /// Up to `limit` regular files known to the projection, visible or not, after
    /// `after` in the files' stored order (from the first if `None`).
    pub fn file_ids_after(&self, after: Option<FileId>, limit: usize) -> Vec<FileId> {
        let mut out = Vec::new();
        let mut take = |id: &FileId, f: Got<'_, FileRec>| {
            if f.kind == Kind::File && Some(*id) != after {
                out.push(*id);
            }
            out.len() < limit
        };
        match &after {
            Some(after) => self.files.scan_from(after, &mut take),
            None => self.files.each(&mut take),
        }
        out
    }

    /// Every regular file known to the projection, visible or not.
    pub fn file_ids(&self) -> Vec<FileId> {
        self.file_ids_after(None, usize::MAX)
    }

    /// The target of a symlink.
    pub fn readlink(&self, file: FileId) -> Result<Bytes, FsError> {
        let f = self.file(file).ok_or(FsError::NotFound)?;
        if f.kind != Kind::Symlink {
            return Err(FsError::Invalid);
        }
        match &f.target {
            Content::Inline(b) => Ok(b.clone()),
            Content::Manifest { .. } => Err(FsError::Io("symlink target is not inline".into())),
        }
    }

    /// The parent of a visible directory (or file name made by Create); `None` for the root.
    pub fn parent(&self, dir: FileId) -> Option<FileId> {
        if dir == OpId::ROOT || !self.entry_visible(dir) {
            return None;
        }
        self.tree.entry(dir).map(|e| e.loc.parent)
    }

    /// The parent and raw name of a visible entry (before any decoration); `None` for
    /// the root or an entry not shown.
    pub fn place(&self, entry: FileId) -> Option<(FileId, String)> {
        if entry == OpId::ROOT || !self.entry_visible(entry) {
            return None;
        }
        self.tree
            .entry(entry)
            .map(|e| (e.loc.parent, e.loc.name.clone()))
    }

    /// The parent and raw name of each visible entry of `file`.
    pub fn places_of(&self, file: FileId) -> Vec<(FileId, String)> {
        self.tree
            .entries_of(file)
            .keys()
            .filter_map(|&entry| self.place(entry))
            .collect()
    }

    /// The value of extended attribute `name`.
    pub fn xattr_get(&self, file: FileId, name: &[u8]) -> Result<Bytes, FsError> {
        let f = self.file(file).ok_or(FsError::NotFound)?;
        f.xattr(name).cloned().ok_or(FsError::NoAttr)
    }

    /// Names of the set extended attributes, sorted.
    pub fn xattr_list(&self, file: FileId) -> Result<Vec<Bytes>, FsError> {
        let f = self.file(file).ok_or(FsError::NotFound)?;
        Ok(f.xattrs
            .iter()
            .filter(|(_, r)| r.value.is_some())
            .map(|(n, _)| n.clone())
            .collect())
    }

    /// Visits every visible node below the root in path order as (path, node).
    fn walk(&self, mut visit: impl FnMut(&str, Node)) {
        let mut stack = vec![(OpId::ROOT, String::new())];
        while let Some((dir, path)) = stack.pop() {
            let Ok(list) = self.readdir(dir) else {
                continue;
            };
            let mut subdirs = Vec::new();
            for (name, node) in list {
                let p = format!("{path}/{name}");
                visit(&p, node);
                if let Node::Entry { file, .. } = node {
                    if self.file(file).is_some_and(|f| f.kind == Kind::Dir) {
                        subdirs.push((file, p));
                    }
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
    }

    /// Counts over the visible tree: what listing every directory from the root counts
    /// (entries, their conflict copies, hard links once), without building display names.
    ///
    /// One pass over the entries in id order: an entry counts when its directory is
    /// reached from the root and it is visible. The records of entries named by their
    /// file's own id (all but hard links) are read by a pass over the files from the
    /// first of each [`STATS_CHUNK`] such entries, as both tables share that order;
    /// looking each one up costs a search of the table per entry.
    pub fn stats(&self) -> FsStats {
        let mut s = FsStats {
            late: self.late(),
            ..FsStats::default()
        };
        // Files reached through a hard link whose own name is not visible: the only
        // ones that need remembering to be counted once (a set of every file would
        // grow with the tree).
        let mut linked = HashSet::new();
        let mut reached = HashMap::new();
        let mut own = Vec::with_capacity(STATS_CHUNK);
        self.tree.entries.each(|&eid, e| {
            if e.dir {
                if self.reached(eid, &mut reached) {
                    s.dirs += 1;
                    s.conflicts += self.file(eid).map_or(0, |f| f.conflicts().len() as u64);
                }
            } else if self.reached(e.loc.parent, &mut reached) && self.self_visible(eid, &e) {
                if e.file == eid {
                    own.push(eid);
                    if own.len() == STATS_CHUNK {
                        self.count_own(&mut own, &mut s);
                    }
                } else if let Some(f) = self.file(e.file) {
                    // A hard link counts its file when the file's own name is not
                    // visible, at the first such link.
                    s.conflicts += f.conflicts().len() as u64;
                    if !self.entry_visible(e.file) && linked.insert(e.file) {
                        count_file(&f, &mut s);
                    }
                }
            }
            true
        });
        self.count_own(&mut own, &mut s);
        s
    }

    /// Adds to `s` the files of `own` (visible entries named by their file's own id, in
    /// the tables' order) and empties it.
    fn count_own(&self, own: &mut Vec<FileId>, s: &mut FsStats) {
        let (Some(&first), Some(last)) = (own.first(), own.last().map(|id| id.hlc)) else {
            return;
        };
        own.sort_unstable();
        self.files.scan_from(&first, |file, f| {
            if file.hlc > last {
                return false;
            }
            if own.binary_search(file).is_ok() {
                s.conflicts += f.conflicts().len() as u64;
                count_file(&f, s);
            }
            true
        });
        own.clear();
    }

    /// Whether a listing from the root reaches directory `dir`: it and every directory
    /// above it visible. Verdicts are kept in `known` for the next entries of the same
    /// directories, up to [`STATS_DIRS_KEPT`] of them.
    fn reached(&self, dir: FileId, known: &mut HashMap<FileId, bool>) -> bool {
        let mut chain = Vec::new();
        let mut d = dir;
        let verdict = loop {
            if d == OpId::ROOT {
                break true;
            }
            if let Some(&v) = known.get(&d) {
                break v;
            }
            if chain.len() > self.tree.len() {
                break false;
            }
            chain.push(d);
            match self.tree.entry(d) {
                Some(e)
                    if e.dir
                        && self.self_visible(d, &e)
                        && self.file(d).is_some_and(|f| f.kind == Kind::Dir) =>
                {
                    d = e.loc.parent;
                }
                _ => break false,
            }
        };
        if known.len() + chain.len() > STATS_DIRS_KEPT {
            known.clear();
        }
        known.extend(chain.into_iter().map(|d| (d, verdict)));
        verdict
    }

    /// A canonical dump of the visible tree (paths, kinds, meta, content refs) for
    /// convergence tests: equal on replicas that applied the same set of ops.
    pub fn canonical_dump(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "store {:?}", self.store_name());
        for m in self.members() {
            let _ = writeln!(
                out,
                "member {} {:?} {:?}",
                m.key.to_hex(),
                m.role,
                m.display_name
            );
        }
        let mut cuts = self.revocation_cuts();
        cuts.sort();
        for (key, upto) in cuts {
            let _ = writeln!(out, "revoked {} upto {upto}", key.to_hex());
        }
        for key in self.left() {
            let _ = writeln!(out, "left {}", key.to_hex());
        }
        if let Some(at) = self.deleted() {
            let _ = writeln!(out, "deleted at {at:?}");
        }
        for (label, at) in self.snapshots() {
            let _ = writeln!(out, "snapshot {label:?} at {at:?}");
        }
        for i in self.invites(0) {
            let id = crate::identity::hex(&i.id);
            let _ = writeln!(
                out,
                "invite {id} {:?} {} {:?}",
                i.role, i.expires_ms, i.status
            );
        }
        self.dump_node(
            &mut out,
            "/",
            Node::Entry {
                entry: OpId::ROOT,
                file: OpId::ROOT,
            },
        );
        self.walk(|path, node| {
            let mut line = String::new();
            self.dump_node(&mut line, path, node);
            out.push_str(&line);
        });
        out
    }

    fn dump_node(&self, out: &mut String, path: &str, node: Node) {
        let Ok(a) = self.attr(node) else {
            let _ = writeln!(out, "{path} <no attr>");
            return;
        };
        let _ = write!(
            out,
            "{path} {node:?} {:?} perm={:o} uid={} gid={} nlink={} size={} rdev={} \
             mtime={} atime={} ctime={} crtime={}",
            a.kind,
            a.perm,
            a.uid,
            a.gid,
            a.nlink,
            a.size,
            a.rdev,
            a.mtime_ns,
            a.atime_ns,
            a.ctime_ns,
            a.crtime_ns
        );
        if let Ok(view) = self.content(node) {
            out.push_str(" content=");
            for piece in &view.pieces {
                out.push_str(&content_ref(piece));
            }
        }
        if let Ok(target) = self.readlink(node.file()) {
            let _ = write!(out, " target={target:?}");
        }
        if let (Node::Entry { file, .. }, Some(f)) = (node, self.file(node.file())) {
            dump_xattrs(out, &f);
            let _ = write!(
                out,
                " heads={:?} file={file:?}",
                f.heads.keys().collect::<Vec<_>>()
            );
        }
        out.push('\n');
    }
}

fn content_ref(c: &Content) -> String {
    match c {
        Content::Inline(b) => format!("[i{}:{}]", b.len(), &blake3::hash(b).to_hex()[..16]),
        Content::Manifest { hash, size } => format!("[m{size}:{}]", hex(&hash.0[..8])),
    }
}

fn dump_xattrs(out: &mut String, f: &FileRec) {
    for (name, reg) in &f.xattrs {
        if let Some(v) = &reg.value {
            let _ = write!(out, " xattr {name:?}={v:?}");
        }
    }
}

/// The blob-backed pieces of the visible versions of file record `f` (none unless it is
/// a regular file), sorted by hash without repeats.
fn rec_blob_pieces(f: &FileRec) -> Vec<Content> {
    if f.kind != Kind::File {
        return Vec::new();
    }
    // Collected through the filter, a file whose content is all inline gets a Vec with
    // no allocation: a replica starting on a million such files keeps none.
    let mut pieces: Vec<Content> = std::iter::once(f.content())
        .chain(f.conflicts().keys().map(|group| f.view(*group)))
        .flat_map(|view| view.pieces)
        .filter(|c| matches!(c, Content::Manifest { .. }))
        .collect();
    pieces.sort_by_key(|c| match c {
        Content::Manifest { hash, .. } => hash.0,
        Content::Inline(_) => [0; 32],
    });
    pieces.dedup();
    pieces
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::fs::op::{Op, OpBody, SetMeta};
    use crate::hlc::Hlc;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    /// Applies `body` by `author` at `wall` ms; returns the op's id.
    fn run(s: &mut FsState, author: u8, wall: u64, body: OpBody) -> OpId {
        let op = Op {
            hlc: Hlc {
                wall_ms: wall,
                counter: 0,
            },
            body,
        };
        s.apply(key(author), &op);
        op.id(key(author))
    }

    fn shown(s: &FsState, name: &str, me: u8) -> u32 {
        let node = s.lookup(OpId::ROOT, name).unwrap();
        let mut a = s.attr(node).unwrap();
        s.mask_foreign_privileges(node, &mut a, &key(me));
        a.perm
    }

    fn setuid_file(s: &mut FsState, author: u8, wall: u64, name: &str) -> FileId {
        let content = Content::Inline(Bytes::from_static(b"#!/bin/sh\n"));
        let body = s
            .plan_create(OpId::ROOT, name, Kind::File, 0o6755, 0, 0, 0, content, 0)
            .unwrap();
        run(s, author, wall, body)
    }

    #[test]
    fn set_user_id_bits_show_only_to_the_node_that_wrote_everything() {
        let mut s = FsState::new();
        setuid_file(&mut s, 1, 10, "tool");
        assert_eq!(shown(&s, "tool", 1), 0o6755);
        assert_eq!(shown(&s, "tool", 2), 0o755);
        let body = s
            .plan_create(
                OpId::ROOT,
                "d",
                Kind::Dir,
                0o2775,
                0,
                0,
                0,
                Content::empty(),
                0,
            )
            .unwrap();
        run(&mut s, 1, 11, body);
        assert_eq!(shown(&s, "d", 1), 0o2775);
        assert_eq!(shown(&s, "d", 2), 0o775);
    }

    #[test]
    fn another_members_content_owner_or_mode_clears_the_bits_for_the_author_too() {
        let mut s = FsState::new();
        let tool = setuid_file(&mut s, 1, 10, "tool");
        let content = Content::Inline(Bytes::from_static(b"#!/bin/sh\nrm -rf ~\n"));
        let body = s.plan_write(tool, content, 0).unwrap();
        run(&mut s, 2, 20, body);
        assert_eq!(shown(&s, "tool", 1), 0o755, "content by 2");
        assert_eq!(shown(&s, "tool", 2), 0o755, "mode by 1");

        let chowned = setuid_file(&mut s, 1, 30, "chowned");
        let body = s
            .plan_set_meta(SetMeta {
                file: chowned,
                uid: Some(0),
                ..SetMeta::default()
            })
            .unwrap();
        run(&mut s, 2, 31, body);
        assert_eq!(shown(&s, "chowned", 1), 0o755, "owner by 2");

        let body = s
            .plan_create(
                OpId::ROOT,
                "plain",
                Kind::File,
                0o755,
                0,
                0,
                0,
                Content::empty(),
                0,
            )
            .unwrap();
        let plain = run(&mut s, 1, 40, body);
        let body = s
            .plan_set_meta(SetMeta {
                file: plain,
                mode: Some(0o4755),
                ..SetMeta::default()
            })
            .unwrap();
        run(&mut s, 2, 41, body);
        assert_eq!(shown(&s, "plain", 1), 0o755, "mode by 2");
        assert_eq!(shown(&s, "plain", 2), 0o755, "content by 1");
    }
}
