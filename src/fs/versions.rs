//! The content versions the projection holds now, for content collection: every alive
//! version group of every file (the winner and conflict copies) and every symlink
//! target that names blobs, each marked with when its file was deleted if it has no
//! visible name. Inline content needs no blob, so it is left out.

use crate::cas::Content;
use crate::fs::content::FileRec;
use crate::fs::op::Kind;
use crate::fs::paged::Got;
use crate::fs::state::FsState;
use crate::ids::FileId;

/// One version the projection holds: the pieces of its content that name blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeldVersion {
    /// The file.
    pub file: FileId,
    /// Its manifest pieces: of a group's base and appends, or a symlink target.
    pub pieces: Vec<Content>,
    /// Wall ms of the latest Remove of the file's names when the file has no visible
    /// name (a deleted file, kept as retained history from then on); `None` while the
    /// file is visible, or when no Remove explains why it is not.
    pub deleted_ms: Option<u64>,
}

impl FsState {
    /// Every version the projection holds now that names a blob (see [`HeldVersion`]).
    pub(crate) fn held_versions(&self) -> Vec<HeldVersion> {
        self.held_versions_after(None, usize::MAX).1
    }

    /// The versions of up to `limit` files after `after` in the files' stored order (from
    /// the first if `None`), and the last file looked at (`None`: there was none left).
    pub(crate) fn held_versions_after(
        &self,
        after: Option<FileId>,
        limit: usize,
    ) -> (Option<FileId>, Vec<HeldVersion>) {
        let (mut seen, mut last, mut out) = (0, None, Vec::new());
        let mut take = |&file: &FileId, rec: Got<'_, FileRec>| {
            if Some(file) == after {
                return true;
            }
            seen += 1;
            last = Some(file);
            let blobs = |pieces: Vec<Content>| -> Vec<Content> {
                pieces.into_iter().filter(Content::is_manifest).collect()
            };
            let pieces: Vec<Vec<Content>> = match rec.kind {
                Kind::File => rec
                    .alive()
                    .keys()
                    .map(|group| blobs(rec.view(*group).pieces))
                    .filter(|p| !p.is_empty())
                    .collect(),
                Kind::Symlink => Some(blobs(vec![rec.target.clone()]))
                    .filter(|p| !p.is_empty())
                    .into_iter()
                    .collect(),
                _ => return seen < limit,
            };
            if pieces.is_empty() {
                return seen < limit;
            }
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
            seen < limit
        };
        match &after {
            Some(after) => self.files.scan_from(after, &mut take),
            None => self.files.each(&mut take),
        }
        (last, out)
    }
}
