//! Planners: check a POSIX call against the current projection, as the Linux kernel and
//! tmpfs would, and return the op bodies that make it come true.

use bytes::{Bytes, BytesMut};

use crate::cas::{Content, INLINE_MAX};
use crate::fs::error::FsError;
use crate::fs::op::{
    validate_name, Create, Kind, OpBody, SetMeta, MAX_NAME_BYTES, MAX_SUPERSEDES,
    MAX_SYMLINK_BYTES, MAX_XATTRS_PER_OP, MAX_XATTR_NAME, MAX_XATTR_VALUE,
};
use crate::fs::paged::Got;
use crate::fs::state::FsState;
use crate::fs::view::{Node, RenameFlags};
use crate::ids::{FileId, OpId};

/// Checks a name that is about to be created.
fn check_name(name: &str) -> Result<(), FsError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(FsError::NameTooLong);
    }
    validate_name(name).map_err(|_| FsError::InvalidName)
}

/// Checks content carried by a Create, Write or Append.
fn check_content(c: &Content) -> Result<(), FsError> {
    match c {
        Content::Inline(b) if b.len() > INLINE_MAX => Err(FsError::TooLarge),
        _ => Ok(()),
    }
}

impl FsState {
    /// Plans `mknod`/`mkdir`/`symlink`/`create`: a Create of `name` in `parent`.
    #[allow(clippy::too_many_arguments)]
    pub fn plan_create(
        &self,
        parent: FileId,
        name: &str,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        content: Content,
        mtime_ns: i64,
    ) -> Result<OpBody, FsError> {
        check_name(name)?;
        self.check_dir(parent)?;
        if self.lookup(parent, name).is_ok() {
            return Err(FsError::Exists);
        }
        if kind == Kind::Symlink && content.len() > MAX_SYMLINK_BYTES as u64 {
            return Err(FsError::NameTooLong);
        }
        check_content(&content)?;
        let content = match kind {
            Kind::File | Kind::Symlink => content,
            _ => Content::empty(),
        };
        Ok(OpBody::Create(Create {
            parent,
            name: name.to_string(),
            kind,
            mode: perm & 0o7777,
            uid,
            gid,
            rdev,
            mtime_ns,
            content,
        }))
    }

    /// Plans `link`: a new name for a non-directory `file`.
    pub fn plan_link(&self, file: FileId, parent: FileId, name: &str) -> Result<OpBody, FsError> {
        check_name(name)?;
        let f = self.file(file).ok_or(FsError::NotFound)?;
        if !self.exists(file) {
            return Err(FsError::NotFound);
        }
        if f.kind == Kind::Dir {
            return Err(FsError::NotPermitted);
        }
        self.check_dir(parent)?;
        if self.lookup(parent, name).is_ok() {
            return Err(FsError::Exists);
        }
        Ok(OpBody::Link {
            file,
            parent,
            name: name.to_string(),
        })
    }

    /// Plans `unlink`: Remove of a name, or Dismiss of a conflict copy's heads.
    pub fn plan_unlink(&self, parent: FileId, name: &str) -> Result<OpBody, FsError> {
        match self.lookup(parent, name)? {
            Node::Entry { entry, file } => {
                let f = self.file(file).ok_or(FsError::NotFound)?;
                if f.kind == Kind::Dir {
                    return Err(FsError::IsDir);
                }
                Ok(OpBody::Remove {
                    entry,
                    seen_content: f.heads.keys().copied().collect(),
                })
            }
            Node::Conflict { file, head } => self.dismiss(file, head),
        }
    }

    fn dismiss(&self, file: FileId, group: OpId) -> Result<OpBody, FsError> {
        let f = self.file(file).ok_or(FsError::NotFound)?;
        Ok(OpBody::Dismiss {
            file,
            supersedes: f.group_heads(group),
        })
    }

    /// Plans `rmdir`: Remove of an empty directory's name.
    pub fn plan_rmdir(&self, parent: FileId, name: &str) -> Result<OpBody, FsError> {
        match self.lookup(parent, name)? {
            Node::Conflict { .. } => Err(FsError::NotDir),
            Node::Entry { entry, file } => {
                let f = self.file(file).ok_or(FsError::NotFound)?;
                if f.kind != Kind::Dir {
                    return Err(FsError::NotDir);
                }
                if self.has_visible_child(file) {
                    return Err(FsError::NotEmpty);
                }
                Ok(OpBody::Remove {
                    entry,
                    seen_content: Vec::new(),
                })
            }
        }
    }

    /// Plans `rename`/`renameat2`. Renaming a conflict copy materialises it as a new file
    /// at the destination (when its bytes can be carried inline) and dismisses the copy.
    pub fn plan_rename(
        &self,
        parent: FileId,
        name: &str,
        new_parent: FileId,
        new_name: &str,
        flags: RenameFlags,
    ) -> Result<Vec<OpBody>, FsError> {
        if [name, new_name].iter().any(|n| *n == "." || *n == "..") {
            return Err(FsError::Invalid);
        }
        if flags.exchange && flags.noreplace {
            return Err(FsError::Invalid);
        }
        let src = self.lookup(parent, name)?;
        self.check_dir(new_parent)?;
        check_name(new_name)?;
        let dest = match self.lookup(new_parent, new_name) {
            Ok(n) => Some(n),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if flags.noreplace && dest.is_some() {
            return Err(FsError::Exists);
        }
        if dest == Some(src) {
            return Ok(Vec::new());
        }
        if let (Some(Node::Entry { file: a, .. }), Node::Entry { file: b, .. }) = (dest, src) {
            if a == b {
                return Ok(Vec::new());
            }
        }
        let src_dir = self.is_dir(src.file());
        if src_dir && self.tree.is_within(new_parent, src.file()) {
            return Err(FsError::Invalid);
        }
        if flags.exchange {
            let dest = dest.ok_or(FsError::NotFound)?;
            let (
                Node::Entry { entry: se, .. },
                Node::Entry {
                    entry: de,
                    file: df,
                },
            ) = (src, dest)
            else {
                return Err(FsError::NotPermitted);
            };
            if self.is_dir(df) && self.tree.is_within(parent, df) {
                return Err(FsError::Invalid);
            }
            return Ok(vec![
                OpBody::Move {
                    entry: se,
                    parent: new_parent,
                    name: new_name.to_string(),
                },
                OpBody::Move {
                    entry: de,
                    parent,
                    name: name.to_string(),
                },
            ]);
        }
        if let (Node::Conflict { file, head }, Some(Node::Entry { file: df, .. })) = (src, dest) {
            if file == df {
                let f = self.regular(file)?;
                return Ok(vec![OpBody::Write {
                    file,
                    supersedes: f.heads.keys().copied().collect(),
                    content: self.conflict_content(file, head)?,
                    mtime_ns: f.mtime.value,
                }]);
            }
        }
        let mut ops = Vec::new();
        if let Some(dest) = dest {
            ops.push(self.plan_replace(src_dir, dest)?);
        }
        match src {
            Node::Entry { entry, .. } => ops.push(OpBody::Move {
                entry,
                parent: new_parent,
                name: new_name.to_string(),
            }),
            Node::Conflict { file, head } => {
                ops.push(self.materialise(file, head, new_parent, new_name)?);
                ops.push(self.dismiss(file, head)?);
            }
        }
        Ok(ops)
    }

    fn is_dir(&self, file: FileId) -> bool {
        self.file(file).is_some_and(|f| f.kind == Kind::Dir)
    }

    /// The op that clears `dest` for a rename of a (directory if `src_dir`) source over it.
    fn plan_replace(&self, src_dir: bool, dest: Node) -> Result<OpBody, FsError> {
        match dest {
            Node::Conflict { file, head } => {
                if src_dir {
                    return Err(FsError::NotDir);
                }
                self.dismiss(file, head)
            }
            Node::Entry { entry, file } => {
                let f = self.file(file).ok_or(FsError::NotFound)?;
                let dest_dir = f.kind == Kind::Dir;
                if src_dir && !dest_dir {
                    return Err(FsError::NotDir);
                }
                if !src_dir && dest_dir {
                    return Err(FsError::IsDir);
                }
                if dest_dir && self.has_visible_child(file) {
                    return Err(FsError::NotEmpty);
                }
                Ok(OpBody::Remove {
                    entry,
                    seen_content: f.heads.keys().copied().collect(),
                })
            }
        }
    }

    /// A Create at (`parent`, `name`) holding the bytes of conflict group `group`.
    fn materialise(
        &self,
        file: FileId,
        group: OpId,
        parent: FileId,
        name: &str,
    ) -> Result<OpBody, FsError> {
        let f = self.file(file).ok_or(FsError::NotFound)?;
        Ok(OpBody::Create(Create {
            parent,
            name: name.to_string(),
            kind: Kind::File,
            mode: f.mode.value,
            uid: f.uid.value,
            gid: f.gid.value,
            rdev: 0,
            mtime_ns: f.mtime.value,
            content: self.conflict_content(file, group)?,
        }))
    }

    /// The bytes of content group `group` as one `Content`. A group made of one piece is
    /// copied by reference; several pieces are joined only if all are inline and fit in
    /// [`INLINE_MAX`] (joining manifests needs the content store), else `EPERM`.
    fn conflict_content(&self, file: FileId, group: OpId) -> Result<Content, FsError> {
        let f = self.file(file).ok_or(FsError::NotFound)?;
        let view = f.view(group);
        Ok(match view.pieces.as_slice() {
            [] => Content::empty(),
            [one] => one.clone(),
            many => {
                let mut joined = BytesMut::new();
                for piece in many {
                    match piece {
                        Content::Inline(b) if joined.len() + b.len() <= INLINE_MAX => {
                            joined.extend_from_slice(b)
                        }
                        _ => return Err(FsError::NotPermitted),
                    }
                }
                Content::Inline(joined.freeze())
            }
        })
    }

    /// A known regular file, for content ops (a deleted but open file still accepts them).
    fn regular(&self, file: FileId) -> Result<Got<'_, crate::fs::content::FileRec>, FsError> {
        let f = self.file(file).ok_or(FsError::NotFound)?;
        match f.kind {
            Kind::File => Ok(f),
            Kind::Dir => Err(FsError::IsDir),
            _ => Err(FsError::Invalid),
        }
    }

    /// Plans a full-content write: a Write superseding every current head.
    pub fn plan_write(
        &self,
        file: FileId,
        content: Content,
        mtime_ns: i64,
    ) -> Result<OpBody, FsError> {
        let f = self.regular(file)?;
        check_content(&content)?;
        Ok(OpBody::Write {
            file,
            supersedes: f.heads.keys().copied().collect(),
            content,
            mtime_ns,
        })
    }

    /// Plans an `O_APPEND` write: an Append to the winning version, superseding its heads.
    pub fn plan_append(
        &self,
        file: FileId,
        data: Content,
        mtime_ns: i64,
    ) -> Result<OpBody, FsError> {
        let f = self.regular(file)?;
        check_content(&data)?;
        match f.winner() {
            Some(group) => Ok(OpBody::Append {
                file,
                group,
                supersedes: f.group_heads(group),
                data,
                mtime_ns,
            }),
            None => Ok(OpBody::Write {
                file,
                supersedes: Vec::new(),
                content: data,
                mtime_ns,
            }),
        }
    }

    /// `body` as ops that each carry at most [`MAX_SUPERSEDES`] superseded (or seen)
    /// heads, `body` last. A file may gain more concurrent heads than one op can name
    /// (many writers, or one hostile writer); then every later write of it would plan an
    /// op no replica accepts. The excess, oldest heads first, goes into `Dismiss` ops
    /// pushed just before: applying `Dismiss{A}` then `Write{B}` gives the state of one
    /// `Write{A ∪ B}` (superseding is a set union and commutes), so the projection stays
    /// a pure function of the set of ops. For a `Remove` the dismissed heads are ones its
    /// author saw and deleted; if the file keeps another name, those versions are gone
    /// from it as if their conflict copies had been deleted.
    pub fn bounded(&self, body: OpBody) -> Vec<OpBody> {
        let (file, mut body) = match body {
            OpBody::Write { file, .. }
            | OpBody::Append { file, .. }
            | OpBody::Dismiss { file, .. } => (file, body),
            OpBody::Remove { entry, .. } => match self.tree.entry(entry) {
                Some(e) => (e.file, body),
                None => return vec![body],
            },
            other => return vec![other],
        };
        let ids = match &mut body {
            OpBody::Write { supersedes, .. }
            | OpBody::Append { supersedes, .. }
            | OpBody::Dismiss { supersedes, .. } => supersedes,
            OpBody::Remove { seen_content, .. } => seen_content,
            _ => return vec![body],
        };
        if ids.len() <= MAX_SUPERSEDES {
            return vec![body];
        }
        ids.sort();
        ids.dedup();
        let keep = ids.split_off(ids.len().saturating_sub(MAX_SUPERSEDES));
        let excess = std::mem::replace(ids, keep);
        let mut out: Vec<OpBody> = excess
            .chunks(MAX_SUPERSEDES)
            .map(|chunk| OpBody::Dismiss {
                file,
                supersedes: chunk.to_vec(),
            })
            .collect();
        out.push(body);
        out
    }

    /// Plans `chmod`/`chown`/`utimens`/`setxattr`/`removexattr`.
    pub fn plan_set_meta(&self, meta: SetMeta) -> Result<OpBody, FsError> {
        let f = self.file(meta.file).ok_or(FsError::NotFound)?;
        if meta.xattr_set.len() > MAX_XATTRS_PER_OP || meta.xattr_remove.len() > MAX_XATTRS_PER_OP {
            return Err(FsError::TooLarge);
        }
        let names = meta
            .xattr_set
            .iter()
            .map(|(n, _)| n)
            .chain(&meta.xattr_remove);
        for n in names {
            check_xattr_name(n)?;
        }
        if meta
            .xattr_set
            .iter()
            .any(|(_, v)| v.len() > MAX_XATTR_VALUE)
        {
            return Err(FsError::TooLarge);
        }
        if meta.xattr_remove.iter().any(|n| f.xattr(n).is_none()) {
            return Err(FsError::NoAttr);
        }
        Ok(OpBody::SetMeta(SetMeta {
            mode: meta.mode.map(|m| m & 0o7777),
            ..meta
        }))
    }
}

fn check_xattr_name(n: &Bytes) -> Result<(), FsError> {
    if n.is_empty() || n.len() > MAX_XATTR_NAME {
        return Err(FsError::Range);
    }
    if n.contains(&0) {
        return Err(FsError::Invalid);
    }
    Ok(())
}
