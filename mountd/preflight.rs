//! Why a FUSE mount would fail for this user, found before the daemon opens the node.
//!
//! `gather` reads the facts that decide it once (`/dev/fuse`, the setuid `fusermount3`
//! helper a user other than root mounts through, `/etc/fuse.conf`, the mountpoint's
//! permissions); `diagnose` does no I/O and turns them into one line naming the cause
//! and the fix, so tests feed it facts. The checks follow what fuser and fusermount3
//! do: fuser opens `/dev/fuse` itself before anything else, calls mount(2) as root and
//! otherwise hands the mount to the helper, which refuses `allow_other` without
//! `user_allow_other` and a mountpoint the user cannot write.

use std::ffi::{CString, OsStr};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lattice_mount::FuseError;

/// The FUSE device every mount opens.
const DEVICE: &str = "/dev/fuse";
/// Where fusermount3 looks for `user_allow_other`.
const FUSE_CONF: &str = "/etc/fuse.conf";
/// The setuid helpers fuser mounts through when not root, in the order it tries them.
const HELPERS: [&str; 2] = ["fusermount3", "fusermount"];
/// Where fuser also looks for a helper when `PATH` lacks it.
const HELPER_DIRS: [&str; 2] = ["/sbin", "/bin"];
/// The environment variable fuser takes the helper's path from, before searching.
const HELPER_ENV: &str = "FUSERMOUNT_PATH";

/// Whether this process can open the FUSE device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Device {
    /// It opens for reading and writing.
    Usable,
    /// There is no `/dev/fuse`.
    Missing,
    /// Its mode refuses this user: the `st_mode` bits and the owner's uid.
    Denied {
        /// `st_mode`, file type included.
        mode: u32,
        /// The owner's uid.
        owner: u32,
    },
    /// It exists but does not open, for another reason (module not loaded, ...).
    Unusable(String),
}

/// A setuid mount helper found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Helper {
    /// Where it is.
    pub path: PathBuf,
    /// Whether it is owned by root with the setuid bit, as it must be to mount.
    pub setuid_root: bool,
}

/// What decides whether mounting can work for this process.
#[derive(Debug, Clone)]
pub(crate) struct MountFacts {
    /// The effective uid.
    pub euid: u32,
    /// The FUSE device as this process sees it.
    pub device: Device,
    /// The mount helper, if one is installed.
    pub helper: Option<Helper>,
    /// Whether `--allow-other` was asked for.
    pub allow_other: bool,
    /// Whether `/etc/fuse.conf` has a `user_allow_other` line.
    pub user_allow_other: bool,
    /// The mountpoint (canonical).
    pub mountpoint: PathBuf,
    /// Whether this user may write the mountpoint, as the helper requires.
    pub mountpoint_writable: bool,
}

/// Why mounting fails or would fail, each with its fix; displayed as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountProblem {
    /// No FUSE device.
    #[error(
        "{DEVICE} does not exist: load the FUSE module (`sudo modprobe fuse`), or give \
         a container the device (`--device /dev/fuse`)"
    )]
    NoDevice,
    /// The device's mode shuts this user out.
    #[error(
        "{DEVICE} has mode {mode} (owner uid {owner}), so uid {euid} cannot open it: run \
         `sudo chmod 0666 {DEVICE}` (the mode Debian gives it) and start again"
    )]
    DeviceDenied {
        /// The mode as `ls -l` shows it.
        mode: String,
        /// The device owner's uid.
        owner: u32,
        /// This process's uid.
        euid: u32,
    },
    /// The device exists but does not open.
    #[error(
        "cannot open {DEVICE}: {0}: check that the FUSE module is loaded (`sudo modprobe fuse`)"
    )]
    DeviceUnusable(String),
    /// A user other than root needs the helper, and there is none.
    #[error(
        "fusermount3 is not installed, and a user other than root mounts through it: \
         install it (Debian's package `fuse3`: `sudo apt install fuse3`)"
    )]
    NoHelper,
    /// The helper cannot mount for a user.
    #[error(
        "{0} is not setuid root, so it cannot mount for this user: reinstall it \
         (`sudo apt install --reinstall fuse3`) or run `sudo chmod u+s {0}`"
    )]
    HelperNotSetuid(String),
    /// `--allow-other` without `user_allow_other`.
    #[error(
        "--allow-other needs a line `user_allow_other` in {FUSE_CONF}: add it (as root), \
         or start without --allow-other"
    )]
    AllowOtherNotAllowed,
    /// The helper mounts only on a directory the user may write.
    #[error(
        "mountpoint {path} is not writable by uid {euid}, and fusermount3 mounts only \
         there: choose a directory you own (the default is ~/Lattice)"
    )]
    MountpointNotWritable {
        /// The mountpoint.
        path: String,
        /// This process's uid.
        euid: u32,
    },
    /// The mount failed for a reason the facts do not explain; the system's words.
    #[error("cannot mount at {path}: {reason}")]
    Failed {
        /// The mountpoint.
        path: String,
        /// What the kernel or the helper said.
        reason: String,
    },
    /// Another failure of the FUSE layer.
    #[error(transparent)]
    Fuse(FuseError),
}

impl From<FuseError> for MountProblem {
    fn from(e: FuseError) -> Self {
        match e {
            FuseError::Mount { path, source } => MountProblem::Failed {
                path,
                reason: source.to_string().trim().to_string(),
            },
            other => MountProblem::Fuse(other),
        }
    }
}

/// The first reason the mount would fail, or `Ok` when none is known.
pub(crate) fn diagnose(facts: &MountFacts) -> Result<(), MountProblem> {
    match &facts.device {
        Device::Usable => {}
        Device::Missing => return Err(MountProblem::NoDevice),
        Device::Denied { mode, owner } => {
            return Err(MountProblem::DeviceDenied {
                mode: mode_string(*mode),
                owner: *owner,
                euid: facts.euid,
            })
        }
        Device::Unusable(reason) => return Err(MountProblem::DeviceUnusable(reason.clone())),
    }
    // Root mounts with mount(2) itself; the helper's rules apply to everyone else.
    if facts.euid == 0 {
        return Ok(());
    }
    let helper = facts.helper.as_ref().ok_or(MountProblem::NoHelper)?;
    if !helper.setuid_root {
        return Err(MountProblem::HelperNotSetuid(
            helper.path.display().to_string(),
        ));
    }
    if facts.allow_other && !facts.user_allow_other {
        return Err(MountProblem::AllowOtherNotAllowed);
    }
    if !facts.mountpoint_writable {
        return Err(MountProblem::MountpointNotWritable {
            path: facts.mountpoint.display().to_string(),
            euid: facts.euid,
        });
    }
    Ok(())
}

/// Reads the facts for mounting at `mountpoint` from this machine.
pub(crate) fn gather(mountpoint: &Path, allow_other: bool) -> MountFacts {
    let helper_env = std::env::var_os(HELPER_ENV).map(PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    MountFacts {
        // SAFETY: geteuid has no preconditions.
        euid: unsafe { libc::geteuid() },
        device: probe_device(Path::new(DEVICE)),
        helper: find_helper(helper_env, &path),
        allow_other,
        user_allow_other: std::fs::read_to_string(FUSE_CONF).is_ok_and(|t| allows_other(&t)),
        mountpoint: mountpoint.to_path_buf(),
        mountpoint_writable: writable(mountpoint),
    }
}

/// Opens `device` read-write the way fuser does, and says how it went.
fn probe_device(device: &Path) -> Device {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device);
    match opened {
        Ok(_) => Device::Usable,
        Err(e) if e.kind() == ErrorKind::NotFound => Device::Missing,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => match std::fs::metadata(device) {
            Ok(m) => Device::Denied {
                mode: m.mode(),
                owner: m.uid(),
            },
            Err(_) => Device::Unusable(e.to_string()),
        },
        Err(e) => Device::Unusable(e.to_string()),
    }
}

/// The helper fuser would run: `FUSERMOUNT_PATH`, else the first of `HELPERS` on
/// `path` or in `HELPER_DIRS`.
fn find_helper(from_env: Option<PathBuf>, path: &OsStr) -> Option<Helper> {
    let dirs: Vec<PathBuf> = std::env::split_paths(path)
        .chain(HELPER_DIRS.iter().map(PathBuf::from))
        .collect();
    let candidates = from_env.into_iter().chain(
        HELPERS
            .iter()
            .flat_map(|name| dirs.iter().map(move |d| d.join(name))),
    );
    candidates
        .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m)))
        .find(|(_, m)| m.is_file())
        .map(|(path, m)| Helper {
            path,
            setuid_root: m.uid() == 0 && m.permissions().mode() & libc::S_ISUID != 0,
        })
}

/// Whether fuse.conf text enables `user_allow_other` (a line of its own; `#` comments).
fn allows_other(conf: &str) -> bool {
    conf.lines().any(|l| l.trim() == "user_allow_other")
}

/// Whether this process may write `dir` (access(2), as fusermount3 checks it).
fn writable(dir: &Path) -> bool {
    CString::new(dir.as_os_str().as_bytes())
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
}

/// `st_mode` as `ls -l` shows it: `crw-------`.
fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFCHR => 'c',
        libc::S_IFDIR => 'd',
        libc::S_IFREG => '-',
        _ => '?',
    };
    let bits = (0..9).rev().map(|i| {
        if mode & (1 << i) == 0 {
            '-'
        } else {
            ['x', 'w', 'r'][i % 3]
        }
    });
    std::iter::once(kind).chain(bits).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Facts under which an ordinary user's mount works.
    fn fine() -> MountFacts {
        MountFacts {
            euid: 1000,
            device: Device::Usable,
            helper: Some(Helper {
                path: "/usr/bin/fusermount3".into(),
                setuid_root: true,
            }),
            allow_other: false,
            user_allow_other: false,
            mountpoint: "/home/ada/Lattice".into(),
            mountpoint_writable: true,
        }
    }

    #[test]
    fn an_ordinary_user_with_device_helper_and_own_mountpoint_has_no_problem() {
        assert!(diagnose(&fine()).is_ok());
        let allowed = MountFacts {
            allow_other: true,
            user_allow_other: true,
            ..fine()
        };
        assert!(diagnose(&allowed).is_ok());
    }

    #[test]
    fn a_root_only_device_names_its_mode_and_the_chmod_that_fixes_it() {
        let facts = MountFacts {
            device: Device::Denied {
                mode: libc::S_IFCHR | 0o600,
                owner: 0,
            },
            ..fine()
        };
        let problem = diagnose(&facts).unwrap_err();
        assert_eq!(
            problem.to_string(),
            "/dev/fuse has mode crw------- (owner uid 0), so uid 1000 cannot open it: run \
             `sudo chmod 0666 /dev/fuse` (the mode Debian gives it) and start again"
        );
    }

    #[test]
    fn a_missing_or_unloaded_device_is_reported_before_anything_else() {
        let missing = MountFacts {
            device: Device::Missing,
            helper: None,
            ..fine()
        };
        assert!(matches!(diagnose(&missing), Err(MountProblem::NoDevice)));
        let unloaded = MountFacts {
            euid: 0,
            device: Device::Unusable("No such device (os error 19)".into()),
            ..fine()
        };
        let msg = diagnose(&unloaded).unwrap_err().to_string();
        assert!(
            msg.contains("os error 19") && msg.contains("modprobe fuse"),
            "{msg}"
        );
    }

    #[test]
    fn without_fusermount3_an_ordinary_user_is_told_to_install_fuse3_but_root_is_not() {
        let facts = MountFacts {
            helper: None,
            ..fine()
        };
        let problem = diagnose(&facts).unwrap_err();
        assert!(matches!(problem, MountProblem::NoHelper), "{problem}");
        assert!(problem.to_string().contains("sudo apt install fuse3"));
        assert!(diagnose(&MountFacts { euid: 0, ..facts }).is_ok());
    }

    #[test]
    fn a_helper_without_the_setuid_bit_is_named() {
        let facts = MountFacts {
            helper: Some(Helper {
                path: "/usr/bin/fusermount3".into(),
                setuid_root: false,
            }),
            ..fine()
        };
        let msg = diagnose(&facts).unwrap_err().to_string();
        assert!(
            msg.starts_with("/usr/bin/fusermount3 is not setuid root"),
            "{msg}"
        );
    }

    #[test]
    fn allow_other_without_user_allow_other_is_refused_for_users_only() {
        let facts = MountFacts {
            allow_other: true,
            ..fine()
        };
        let problem = diagnose(&facts).unwrap_err();
        assert!(
            matches!(problem, MountProblem::AllowOtherNotAllowed),
            "{problem}"
        );
        assert!(problem.to_string().contains("user_allow_other"));
        assert!(diagnose(&MountFacts { euid: 0, ..facts }).is_ok());
    }

    #[test]
    fn a_mountpoint_the_user_cannot_write_is_named() {
        let facts = MountFacts {
            mountpoint: "/mnt/shared".into(),
            mountpoint_writable: false,
            ..fine()
        };
        let problem = diagnose(&facts).unwrap_err();
        assert!(
            matches!(problem, MountProblem::MountpointNotWritable { ref path, euid: 1000 } if path == "/mnt/shared"),
            "{problem}"
        );
        assert!(diagnose(&MountFacts { euid: 0, ..facts }).is_ok());
    }

    #[test]
    fn a_failed_mount_says_its_cause_once() {
        let e = FuseError::Mount {
            path: "/home/ada/Lattice".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(
            MountProblem::from(e).to_string(),
            "cannot mount at /home/ada/Lattice: Permission denied (os error 13)"
        );
    }

    #[test]
    fn fuse_conf_counts_only_an_uncommented_user_allow_other_line() {
        assert!(allows_other("# comment\nuser_allow_other\n"));
        assert!(allows_other("  user_allow_other  \nmount_max = 10"));
        assert!(!allows_other("#user_allow_other\n"));
        assert!(!allows_other("mount_max = 1000\n"));
        assert!(!allows_other(""));
    }

    #[test]
    fn modes_render_as_ls_shows_them() {
        assert_eq!(mode_string(libc::S_IFCHR | 0o666), "crw-rw-rw-");
        assert_eq!(mode_string(libc::S_IFCHR | 0o600), "crw-------");
        assert_eq!(mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(libc::S_IFREG | 0o4755), "-rwxr-xr-x");
    }

    #[test]
    fn the_helper_is_found_on_path_with_its_setuid_bit() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("fusermount3");
        std::fs::write(&bin, b"").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let found = find_helper(None, tmp.path().as_os_str()).unwrap();
        assert_eq!(found.path, bin);
        assert!(!found.setuid_root, "a 0755 file is not setuid");
        let env = tmp.path().join("custom");
        std::fs::write(&env, b"").unwrap();
        let found = find_helper(Some(env.clone()), tmp.path().as_os_str()).unwrap();
        assert_eq!(found.path, env, "FUSERMOUNT_PATH comes first");
    }

    #[test]
    fn the_device_probe_tells_a_missing_device_from_a_usable_one() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(probe_device(&tmp.path().join("fuse")), Device::Missing);
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(probe_device(&file), Device::Usable);
    }
}
