//! The FUSE adapter: a `fuser::Filesystem` over the node's stores.
//!
//! Every callback converts its arguments, calls one method returning `Result<T, Fail>`
//! and replies; errors become errno in exactly one place (`errno.rs`). The mount root
//! lists one directory per store; inside a store, inodes map to file ids (`inodes.rs`)
//! and writes are staged per open file until flush, fsync or close (`open_file.rs`).
//! Changes received from peers invalidate the kernel's caches (`invalidate.rs`). Modes
//! are checked by the daemon (`access.rs`) unless other users may reach the mount.

mod access;
mod adapter;
mod errno;
mod inodes;
mod invalidate;
mod local;
mod open_file;
mod passthrough;

pub use passthrough::{Mode as PassthroughMode, Passthrough};

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use crate::node::Node;

/// Threads reading FUSE requests. Measured on 2 cores: 10,000 creates took 5,000/s with
/// 1 thread, 8,700/s with 4 and 10,300/s with 8; an idle reader is always waiting.
const FUSE_THREADS: usize = 8;

/// Largest read or write request the kernel is asked to send, and the I/O size files
/// report (`st_blksize`), by which `cp`, `cat` and buffered writers size their requests.
const MAX_IO: u32 = 1 << 20;

/// Readahead window (KiB) of a mount by root: four whole requests, so the kernel asks
/// for the next ones while the reader copies the last. Measured reading a cold GiB with
/// `dd` on 2 cores: 0.67-0.69 s with one request's window, 0.60-0.62 s with four,
/// 0.60-0.62 s with eight, 0.64 s with sixteen.
const READAHEAD_KB: u32 = 4 * MAX_IO / 1024;

/// Errors mounting the filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FuseError {
    /// The kernel refused the mount or the FUSE device could not be opened.
    #[error("cannot mount at {path}: {source}")]
    Mount {
        /// The mountpoint.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Unmounting failed.
    #[error("unmount failed: {0}")]
    Unmount(std::io::Error),
}

/// A live mount; dropping it unmounts.
pub struct MountGuard {
    session: Option<fuser::BackgroundSession>,
    /// Stopped before unmounting, while FUSE threads can still answer the kernel.
    invalidator: Option<invalidate::Invalidator>,
    passthrough: passthrough::Mode,
}

/// How a mount serves the kernel.
#[derive(Clone, Copy, Debug)]
pub struct MountOptions {
    /// Let other users reach the mount.
    pub allow_other: bool,
    /// Pass open files through to their backing files where the kernel allows it.
    pub passthrough: bool,
}

impl MountGuard {
    /// Whether open files are passed through to their backing files, as it changes.
    pub fn passthrough(&self) -> PassthroughMode {
        self.passthrough.clone()
    }

    /// Unmounts and waits for the session's threads to finish.
    pub fn unmount(mut self) -> Result<(), FuseError> {
        self.invalidator.take();
        match self.session.take() {
            Some(s) => s.umount_and_join().map_err(FuseError::Unmount),
            None => Ok(()),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        self.invalidator.take();
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                tracing::warn!("unmount: {e}");
            }
        }
    }
}

/// The session settings of a mount; `allow_other` lets other users reach it.
fn config(allow_other: bool) -> fuser::Config {
    let mut config = fuser::Config::default();
    // Other members choose modes, owners and device numbers: the kernel must never honour
    // a set-user-ID bit or open a device node found here. Asked for explicitly rather
    // than left to the mount helper's defaults.
    config.mount_options = vec![
        fuser::MountOption::FSName("lattice".into()),
        fuser::MountOption::Subtype("lattice-mount".into()),
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    if allow_other {
        // Only the kernel knows another user's groups: it checks modes. A mount that is
        // the daemon's user's alone has them checked by the daemon (`access.rs`), which
        // spares the kernel's `GETATTR` of a directory after each change in it.
        config
            .mount_options
            .push(fuser::MountOption::DefaultPermissions);
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    config
}

/// Mounts `node` at `mountpoint`.
pub fn mount(node: Node, mountpoint: &Path, opts: MountOptions) -> Result<MountGuard, FuseError> {
    let staging = node.data_dir().join("staging");
    let mount_err = |source| FuseError::Mount {
        path: mountpoint.display().to_string(),
        source,
    };
    // Staging files of a previous run belong to handles that no longer exist.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&staging)
        .map_err(mount_err)?;
    let config = config(opts.allow_other);
    let inodes = Arc::new(inodes::Inodes::new(node.cache_budget().kernel_inodes()));
    let passthrough = passthrough::Mode::new(Passthrough::at_start(opts.passthrough));
    let checks = (!opts.allow_other).then(access::Caller::of_process);
    let fs = adapter::LatticeFs::new(
        node.clone(),
        staging,
        inodes.clone(),
        passthrough.clone(),
        checks,
    );
    let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(mount_err)?;
    widen_readahead(mountpoint);
    let notifier = session.notifier();
    // Unmounts again if the invalidator cannot start.
    let mut guard = MountGuard {
        session: Some(session),
        invalidator: None,
        passthrough,
    };
    guard.invalidator =
        Some(invalidate::Invalidator::start(node, inodes, notifier).map_err(mount_err)?);
    Ok(guard)
}

/// Raises the readahead window of the mount at `mountpoint` to [`READAHEAD_KB`]. The
/// kernel gives a FUSE mount the default 128 KiB and only lowers it to what `init` asks,
/// so a sequential read would cost a request per 128 KiB, one at a time; the window is
/// a sysfs setting of the mount's own backing device, writable by root only, so other
/// users keep 128 KiB.
fn widen_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) if is_fuse(mountpoint) => m.dev(),
        Ok(_) => {
            tracing::warn!("the mountpoint is not a FUSE mount: its readahead is left alone");
            return;
        }
        Err(e) => {
            tracing::warn!("cannot stat the mount for its readahead: {e}");
            return;
        }
    };
    let path = readahead_path(dev);
    if let Err(e) = std::fs::write(&path, READAHEAD_KB.to_string()) {
        tracing::debug!(
            "readahead stays at the kernel's default ({}: {e})",
            path.display()
        );
    }
}

/// Whether `path` is on a FUSE filesystem, so that no other device's setting is touched.
fn is_fuse(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    /// `f_type` of every FUSE filesystem (`FUSE_SUPER_MAGIC`).
    const FUSE_MAGIC: libc::__fsword_t = 0x6573_5546;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: all-zero bytes are a valid `statfs`, which the call fills.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type == FUSE_MAGIC
}

/// The sysfs file holding the readahead window (KiB) of the device `dev`.
fn readahead_path(dev: u64) -> std::path::PathBuf {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    Path::new("/sys/class/bdi")
        .join(format!("{major}:{minor}"))
        .join("read_ahead_kb")
}

#[cfg(test)]
mod tests {
    use fuser::MountOption;

    #[test]
    fn a_directory_that_is_no_fuse_mount_is_never_taken_for_one() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!super::is_fuse(tmp.path()));
        assert!(!super::is_fuse(&tmp.path().join("missing")));
    }

    #[test]
    fn every_mount_asks_for_nosuid_and_nodev_itself() {
        for allow_other in [false, true] {
            let options = super::config(allow_other).mount_options;
            assert!(options.contains(&MountOption::NoSuid), "{options:?}");
            assert!(options.contains(&MountOption::NoDev), "{options:?}");
            assert!(!options.contains(&MountOption::Suid), "{options:?}");
            assert!(!options.contains(&MountOption::Dev), "{options:?}");
            assert_eq!(
                options.contains(&MountOption::DefaultPermissions),
                allow_other,
                "the kernel checks modes exactly where other users reach the mount"
            );
        }
    }
}
