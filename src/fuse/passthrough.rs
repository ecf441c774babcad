//! FUSE passthrough: the kernel reads and writes an open file straight from a backing
//! file of ours, without a request to the daemon, where the kernel offers it (Linux 6.9
//! and later) and the daemon may register backing files (`CAP_SYS_ADMIN`).
//!
//! Only local-only entries (`local.rs`) are passed through: each is a real file of its
//! own, which holds exactly the bytes the kernel shows. A replicated file's content is
//! chunks in the content store and becomes an intention when it is committed, so its
//! reads and writes go through the daemon.
//!
//! The kernel lets an inode be open either through its page cache or passed through,
//! never both at once, and every passed-through open of one inode must name the same
//! backing file; an open that breaks either rule fails with `EIO`. So the first open of
//! an inode decides for all that overlap it: [`Backings`] counts each inode's opens by
//! how they were answered and hands later opens the same backing id. The daemon hears
//! of a close only after the kernel has let the file go, so its count never falls
//! below the kernel's.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use fuser::BackingId;
use parking_lot::Mutex;

/// Whether this mount passes open files through to their backing files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Passthrough {
    /// Local-only files are passed through.
    On,
    /// Asked off (`up --no-passthrough`).
    Disabled,
    /// The kernel does not offer FUSE passthrough.
    Unsupported,
    /// The kernel refused to register a backing file: the daemon lacks `CAP_SYS_ADMIN`.
    NotPermitted,
    /// The kernel refused to register a backing file for another reason (logged).
    Refused,
}

impl Passthrough {
    /// The mode a mount starts in: `On` when `asked` and this process holds
    /// `CAP_SYS_ADMIN` (the kernel may still refuse it at `init` or at the first open).
    pub(crate) fn at_start(asked: bool) -> Self {
        match asked {
            false => Self::Disabled,
            true if holds_cap_sys_admin() => Self::On,
            true => Self::NotPermitted,
        }
    }

    /// One line saying what the mode means for reads and writes.
    pub fn describe(self) -> &'static str {
        match self {
            Self::On => "on: the kernel reads and writes local-only files directly",
            Self::Disabled => {
                "off (--no-passthrough): every read and write goes through the daemon"
            }
            Self::Unsupported => "off: this kernel has no FUSE passthrough",
            Self::NotPermitted => {
                "off: registering backing files needs CAP_SYS_ADMIN (run the daemon as root)"
            }
            Self::Refused => "off: the kernel refused a backing file (the daemon's log says why)",
        }
    }
}

/// Whether this process's effective capabilities include `CAP_SYS_ADMIN` (read from
/// `/proc/self/status`; a process that cannot tell is taken to hold it, and the kernel's
/// answer to the first registration decides).
fn holds_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
    effective.is_none_or(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// The mount's passthrough mode, shared between the filesystem and its owner.
#[derive(Clone)]
pub struct Mode(Arc<Mutex<Passthrough>>);

impl Mode {
    /// A mode that starts as `mode`.
    pub fn new(mode: Passthrough) -> Self {
        Self(Arc::new(Mutex::new(mode)))
    }

    /// The mode now.
    pub fn get(&self) -> Passthrough {
        *self.0.lock()
    }

    /// Sets the mode for the rest of the mount.
    pub(crate) fn set(&self, mode: Passthrough) {
        *self.0.lock() = mode;
    }
}

/// How an inode's open handles were answered.
enum Opens {
    /// Through the page cache.
    Cached(usize),
    /// Passed through to one backing file.
    Through(Arc<BackingId>, usize),
}

/// The open handles of each inode, by how they were answered.
pub(crate) struct Backings {
    /// The mount's mode, which a refused registration turns off.
    pub(crate) mode: Mode,
    inodes: Mutex<HashMap<u64, Opens>>,
}

impl Backings {
    /// Counts for a mount in `mode`.
    pub(crate) fn new(mode: Mode) -> Self {
        Self {
            mode,
            inodes: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an open of inode `ino`, whose backing file, if it may have one, is `file`;
    /// the backing id to answer it with, or `None` to answer it through the page cache.
    /// `register` makes a backing id for `file`, asked only when no open of `ino` is
    /// counted.
    pub(crate) fn open(
        &self,
        ino: u64,
        file: Option<&File>,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        let mut inodes = self.inodes.lock();
        match inodes.get_mut(&ino) {
            Some(Opens::Cached(n)) => {
                *n += 1;
                return None;
            }
            Some(Opens::Through(id, n)) => {
                *n += 1;
                return file.map(|_| id.clone());
            }
            None => {}
        }
        // A refused registration turns the mode off: the backing files are all in the
        // data dir, so what one meets, all would.
        let id = match file {
            Some(file) if self.mode.get() == Passthrough::On => match register(file) {
                Ok(id) => Some(Arc::new(id)),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    self.mode.set(Passthrough::NotPermitted);
                    None
                }
                Err(e) => {
                    tracing::warn!("passthrough off: the kernel refused a backing file: {e}");
                    self.mode.set(Passthrough::Refused);
                    None
                }
            },
            _ => None,
        };
        let opens = match &id {
            Some(id) => Opens::Through(id.clone(), 1),
            None => Opens::Cached(1),
        };
        inodes.insert(ino, opens);
        id
    }

    /// Whether open handles of `ino` are passed through.
    pub(crate) fn passed_through(&self, ino: u64) -> bool {
        matches!(self.inodes.lock().get(&ino), Some(Opens::Through(..)))
    }

    /// Counts the release of an open of `ino`; the last one drops its backing id.
    pub(crate) fn release(&self, ino: u64) {
        let mut inodes = self.inodes.lock();
        let last = match inodes.get_mut(&ino) {
            Some(Opens::Cached(n) | Opens::Through(_, n)) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if last {
            inodes.remove(&ino);
        }
    }
}
