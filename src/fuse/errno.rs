//! The one place where errors become errno values for the kernel.

use fuser::Errno;

use crate::fs::FsError;

/// Why a FUSE request failed.
#[derive(Debug)]
pub(crate) enum Fail {
    /// A filesystem rule refused it.
    Fs(FsError),
    /// A plain errno (I/O on staging files, unsupported requests).
    Errno(i32),
}

impl Fail {
    /// A content store failure, including content still absent after waiting for a
    /// fetch (`CasError::Absent`): logged, reported as `EIO` (never wrong bytes).
    pub(crate) fn cas(e: crate::cas::CasError) -> Fail {
        tracing::warn!("content store: {e}");
        Fail::Errno(libc::EIO)
    }

    /// A store failure: logged, reported as `EIO`.
    pub(crate) fn store(e: crate::store::StoreError) -> Fail {
        tracing::warn!("store: {e}");
        Fail::Errno(libc::EIO)
    }
}

impl From<FsError> for Fail {
    fn from(e: FsError) -> Self {
        Fail::Fs(e)
    }
}

/// An I/O error on a local staging file.
pub(crate) fn io_errno(e: std::io::Error) -> Fail {
    Fail::Errno(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The errno for a failure.
pub(crate) fn errno(f: Fail) -> Errno {
    Errno::from_i32(match f {
        Fail::Errno(n) => n,
        Fail::Fs(e) => match e {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::InvalidName => libc::EINVAL,
            FsError::NotPermitted => libc::EPERM,
            FsError::Invalid => libc::EINVAL,
            FsError::CrossStore => libc::EXDEV,
            FsError::ReadOnly => libc::EROFS,
            FsError::NoAttr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::TooLarge => libc::E2BIG,
            FsError::Io(msg) => {
                tracing::warn!("filesystem: {msg}");
                libc::EIO
            }
        },
    })
}
