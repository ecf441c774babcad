//! The read-side types of the projection: nodes, attributes, content views, statistics.

use crate::cas::Content;
use crate::fs::op::Kind;
use crate::ids::{FileId, OpId};

/// What a directory entry resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// A name of a file: `entry` = id of the Create/Link op that made the name.
    Entry {
        /// The Create or Link op that made this name.
        entry: OpId,
        /// The file the name points to.
        file: FileId,
    },
    /// A conflict copy: non-winning content version `head` of `file`, a read-only sibling.
    Conflict {
        /// The file whose concurrent version this is.
        file: FileId,
        /// The id of the Write or Create that started the version group.
        head: OpId,
    },
}

impl Node {
    /// The file this node shows.
    pub fn file(&self) -> FileId {
        match self {
            Node::Entry { file, .. } | Node::Conflict { file, .. } => *file,
        }
    }
}

/// Attributes of a node, as `stat` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Node kind.
    pub kind: Kind,
    /// Content length in bytes (symlink target length for symlinks, 0 for directories).
    pub size: u64,
    /// Permission bits (07777).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Number of visible names (directories: 2 + visible subdirectories).
    pub nlink: u32,
    /// Device number of device nodes.
    pub rdev: u64,
    /// Modification time in nanoseconds since the epoch (a directory's moves with the
    /// entries it gains, loses or renames).
    pub mtime_ns: i64,
    /// Access time in nanoseconds since the epoch.
    pub atime_ns: i64,
    /// Change time: the stamp of the newest op that touched the file (or changed a
    /// directory's entries).
    pub ctime_ns: i64,
    /// Creation time: wall time of the file's Create op.
    pub crtime_ns: i64,
}

/// The bytes of one content version: `pieces` concatenated (base write, then appends in order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContentView {
    /// Non-empty pieces in reading order.
    pub pieces: Vec<Content>,
    /// Total length of all pieces.
    pub size: u64,
}

/// Flags of `rename(2)`/`renameat2(2)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// `RENAME_NOREPLACE`: fail with `EEXIST` if the destination exists.
    pub noreplace: bool,
    /// `RENAME_EXCHANGE`: swap source and destination atomically.
    pub exchange: bool,
}

/// Counts over the visible tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Visible non-directory files (hard links counted once).
    pub files: u64,
    /// Visible directories, the root excluded.
    pub dirs: u64,
    /// Total content bytes of visible files' winning versions.
    pub bytes: u64,
    /// Visible conflict copies.
    pub conflicts: u64,
    /// Ops applied after a purge although stamped before it (see `FsState::purge`).
    pub late: u64,
}
