//! The POSIX-shaped error of the filesystem layer.

/// Why a filesystem query or planned operation failed; mapped to errno in `src/fuse/`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// No such file, directory or name (`ENOENT`).
    #[error("no such file or directory")]
    NotFound,
    /// The name is already visible in the directory (`EEXIST`).
    #[error("file exists")]
    Exists,
    /// A directory was required (`ENOTDIR`).
    #[error("not a directory")]
    NotDir,
    /// A non-directory was required (`EISDIR`).
    #[error("is a directory")]
    IsDir,
    /// The directory still has visible entries (`ENOTEMPTY`).
    #[error("directory not empty")]
    NotEmpty,
    /// A name or symlink target is longer than allowed (`ENAMETOOLONG`).
    #[error("file name too long")]
    NameTooLong,
    /// A name is empty, `.`/`..`, or contains `/` or NUL (`EINVAL`).
    #[error("invalid file name")]
    InvalidName,
    /// The operation is not allowed on this node (`EPERM`).
    #[error("operation not permitted")]
    NotPermitted,
    /// An invalid argument, such as moving a directory into itself (`EINVAL`).
    #[error("invalid argument")]
    Invalid,
    /// The operation spans two stores (`EXDEV`).
    #[error("cross-store link or rename")]
    CrossStore,
    /// The node or store is read-only (`EROFS`).
    #[error("read-only")]
    ReadOnly,
    /// The extended attribute does not exist (`ENODATA`).
    #[error("no such attribute")]
    NoAttr,
    /// An extended attribute name is empty or too long (`ERANGE`).
    #[error("attribute name out of range")]
    Range,
    /// A value or list exceeds its limit (`E2BIG`).
    #[error("argument too large")]
    TooLarge,
    /// Stored state could not be read, e.g. a malformed snapshot (`EIO`).
    #[error("i/o error: {0}")]
    Io(String),
}

impl From<crate::fs::op::OpError> for FsError {
    /// The errno-shaped reason a planned op fails [`Op::validate`](crate::fs::op::Op::validate).
    fn from(e: crate::fs::op::OpError) -> Self {
        use crate::fs::op::OpError;
        match e {
            OpError::BadName(_) => FsError::InvalidName,
            OpError::TooLarge { .. } => FsError::TooLarge,
            _ => FsError::Invalid,
        }
    }
}
