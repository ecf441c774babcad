//! The content versions the projection holds now, for content collection: every alive
//! version group of every file (the winner and conflict copies) and every symlink
//! target, each marked with when its file was deleted if it has no visible name.

use crate::cas::Content;
use crate::fs::op::Kind;
use crate::fs::state::FsState;
use crate::ids::FileId;

/// One version the projection holds: the pieces of its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeldVersion {
    /// The file.
    pub file: FileId,
    /// Its content: a group's base and appends, or a symlink target.
    pub pieces: Vec<Content>,
    /// Wall ms of the latest Remove of the file's names when the file has no visible
    /// name (a deleted file, kept as retained history from then on); `None` while the
    /// file is visible, or when no Remove explains why it is not.
    pub deleted_ms: Option<u64>,
}

impl FsState {
    /// Every version the projection holds now (see [`HeldVersion`]).
    pub(crate) fn held_versions(&self) -> Vec<HeldVersion> {
        let mut out = Vec::new();
        self.files.each(|&file, rec| {
            let pieces: Vec<Vec<Content>> = match rec.kind {
                Kind::File => rec
                    .alive()
                    .keys()
                    .map(|group| rec.view(*group).pieces)
                    .collect(),
                Kind::Symlink => vec![vec![rec.target.clone()]],
                _ => return true,
            };
            let deleted_ms = if self.exists(file) {
                None
            } else {
                self.tree
                    .entries_of(file)
                    .keys()
                    .filter_map(|e| Some(self.tree.entry(*e)?.loc.removal.as_ref()?.op.hlc.wall_ms))
                    .max()
            };
            out.extend(pieces.into_iter().map(|pieces| HeldVersion {
                file,
                pieces,
                deleted_ms,
            }));
            true
        });
        out
    }
}
