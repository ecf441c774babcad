//! Deleted names: what `history --deleted` and `restore` find of entries a Remove flagged.
//!
//! A Remove only flags its entry and leaves it at its last place (see `tree`), so a
//! deleted file is still found under its old parent and raw name, and a deleted
//! directory still holds the entries it had. These queries walk those flagged entries;
//! nothing here changes the projection.

use crate::fs::error::FsError;
use crate::fs::op::{Kind, OpBody};
use crate::fs::state::FsState;
use crate::ids::{FileId, OpId};

/// A deleted name of a file that has no visible name left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Removed {
    /// The entry: id of the Create or Link that made the name.
    pub entry: OpId,
    /// The file it named.
    pub file: FileId,
    /// The file's kind.
    pub kind: Kind,
    /// Its raw names from the directory asked about down to it.
    pub path: Vec<String>,
    /// The Remove op that deleted it: its clock and author say when and who.
    pub removed_by: OpId,
}

/// What a name resolves to when deleted names count too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// A visible file.
    Live(FileId),
    /// A deleted entry (the newest deleted one under that name) and its file.
    Deleted {
        /// The entry.
        entry: OpId,
        /// The file it named.
        file: FileId,
    },
}

impl Found {
    /// The file found.
    pub(crate) fn file(self) -> FileId {
        match self {
            Found::Live(file) | Found::Deleted { file, .. } => file,
        }
    }
}

impl FsState {
    /// Resolves `name` in directory `dir` (visible or deleted): a visible name first,
    /// else the deleted entry under that raw name removed last. With `dir_only`, only
    /// directories count (a path's inner components).
    pub(crate) fn lookup_any(
        &self,
        dir: FileId,
        name: &str,
        dir_only: bool,
    ) -> Result<Found, FsError> {
        let is_dir = |f: FileId| self.file(f).is_some_and(|f| f.kind == Kind::Dir);
        if let Ok(node) = self.lookup(dir, name) {
            if !dir_only || is_dir(node.file()) {
                return Ok(Found::Live(node.file()));
            }
        }
        let set = self.tree.group(dir, name).ok_or(FsError::NotFound)?;
        set.keys()
            .filter(|&&id| !self.entry_visible(id))
            .filter(|&&id| !dir_only || self.tree.entry(id).is_some_and(|e| e.dir))
            .filter_map(|&id| {
                let e = self.tree.entry(id)?;
                Some((e.loc.removal.as_ref().map(|r| r.op), id, e.file))
            })
            .max()
            .map(|(_, entry, file)| Found::Deleted { entry, file })
            .ok_or(FsError::NotFound)
    }

    /// Every deleted name under directory `dir` (recursively, through deleted directories
    /// too) of a file that is not a directory and has no visible name, by path. A
    /// deleted name that a visible entry holds again is left out: a path names the
    /// visible file, so the deleted one could not be named by it.
    pub(crate) fn removed_under(&self, dir: FileId) -> Vec<Removed> {
        let mut out = Vec::new();
        let mut stack = vec![(dir, Vec::new())];
        // The tree has no cycles; the budget only makes that assumption cost nothing.
        let mut budget = self.tree.len() + 1;
        while let Some((d, path)) = stack.pop() {
            if budget == 0 {
                break;
            }
            budget -= 1;
            for (name, set) in self.tree.children(d) {
                if set.keys().any(|&id| self.entry_visible(id)) {
                    // Still descend into a directory of that name: its deleted files keep
                    // their paths.
                    for &id in set.keys() {
                        if let Some(e) = self.tree.entry(id).filter(|e| e.dir) {
                            let mut below = path.clone();
                            below.push(name.clone());
                            stack.push((e.file, below));
                        }
                    }
                    continue;
                }
                for &id in set.keys() {
                    let Some(e) = self.tree.entry(id) else {
                        continue;
                    };
                    let mut below = path.clone();
                    below.push(name.clone());
                    if e.dir {
                        stack.push((e.file, below));
                        continue;
                    }
                    let (Some(r), Some(f)) = (&e.loc.removal, self.file(e.file)) else {
                        continue;
                    };
                    if !self.entry_visible(id) && !self.exists(e.file) {
                        out.push(Removed {
                            entry: id,
                            file: e.file,
                            kind: f.kind,
                            path: below,
                            removed_by: r.op,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.path, a.removed_by).cmp(&(&b.path, b.removed_by)));
        out
    }

    /// Plans bringing back the deleted directories above `dir` at their old places: a
    /// Move of each deleted one onto its own place (which undeletes it), outermost first.
    /// `Exists` if a visible entry took the name of one of them meanwhile.
    pub(crate) fn plan_undelete_dirs(&self, dir: FileId) -> Result<Vec<OpBody>, FsError> {
        let mut moves = Vec::new();
        let mut d = dir;
        let mut budget = self.tree.len() + 1;
        while d != OpId::ROOT && !self.entry_visible(d) {
            let e = self.tree.entry(d).ok_or(FsError::NotFound)?;
            if budget == 0 || !e.dir {
                return Err(FsError::NotFound);
            }
            budget -= 1;
            if e.loc.removal.is_some() {
                moves.push((d, e.loc.parent, e.loc.name.clone()));
            }
            d = e.loc.parent;
        }
        moves.reverse();
        let mut out = Vec::new();
        for (entry, parent, name) in moves {
            if self.tree.group(parent, &name).is_some_and(|set| {
                set.keys().any(|&id| {
                    id != entry && self.tree.entry(id).is_some_and(|e| e.loc.removal.is_none())
                })
            }) {
                return Err(FsError::Exists);
            }
            out.push(OpBody::Move {
                entry,
                parent,
                name,
            });
        }
        Ok(out)
    }
}
