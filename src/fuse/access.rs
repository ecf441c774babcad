//! Mode checks made by the daemon for a mount only its own user may reach.
//!
//! Without `allow_other` the kernel lets no other user into the mount, so every caller
//! is the daemon's user, and the daemon checks modes for it. The kernel checks them
//! itself (`default_permissions`) only where other users come in: it alone knows each
//! caller's groups. A caller is granted what the daemon's own credentials would be, so
//! it gains nothing it could not do to the data dir directly.

use fuser::{FileAttr, FileType};

/// Permission to read (a file's bytes, a directory's names).
pub(crate) const READ: u16 = 0o4;
/// Permission to write (a file's bytes, a directory's names).
pub(crate) const WRITE: u16 = 0o2;
/// Permission to execute a file or search a directory.
pub(crate) const EXEC: u16 = 0o1;

/// The credentials modes are checked against: the daemon's user, with its groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    uid: u32,
    /// The primary group first, then the supplementary ones.
    groups: Vec<u32>,
    /// Whether a hard link to a file it does not own needs read and write access to
    /// it (`fs.protected_hardlinks`).
    protected_hardlinks: bool,
}

impl Caller {
    /// The credentials of this process.
    pub(crate) fn of_process() -> Caller {
        // SAFETY: getuid and getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let protected = std::fs::read_to_string("/proc/sys/fs/protected_hardlinks")
            .map_or(true, |v| v.trim() != "0");
        Caller::new(uid, gid, &supplementary_groups()).protecting_hardlinks(protected)
    }

    /// User `uid` in primary group `gid` and `groups`.
    pub(crate) fn new(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        let mut all = vec![gid];
        all.extend(groups.iter().copied().filter(|g| *g != gid));
        Caller {
            uid,
            groups: all,
            protected_hardlinks: true,
        }
    }

    /// This caller, with hard links protected as `protected` says.
    pub(crate) fn protecting_hardlinks(self, protected: bool) -> Caller {
        Caller {
            protected_hardlinks: protected,
            ..self
        }
    }

    /// Whether modes bind this caller beyond execution: root may read, write and search
    /// anything, and execute what has an execute bit for anyone.
    pub(crate) fn is_bound(&self) -> bool {
        self.uid != 0
    }

    /// Whether the caller may do each of `want` (bits of [`READ`], [`WRITE`], [`EXEC`])
    /// to an entry of attributes `attr`: the owner's bits if it owns it, else the group's
    /// if it is in its group, else the others'.
    pub(crate) fn may(&self, attr: &FileAttr, want: u16) -> bool {
        if !self.is_bound() {
            return want & EXEC == 0 || attr.kind == FileType::Directory || attr.perm & 0o111 != 0;
        }
        let shift = if attr.uid == self.uid {
            6
        } else if self.in_group(attr.gid) {
            3
        } else {
            0
        };
        (attr.perm >> shift) & want == want
    }

    /// Whether the caller may make a hard link to an entry of attributes `attr`: where
    /// hard links are protected, only to one it owns or may read and write.
    pub(crate) fn may_link(&self, attr: &FileAttr) -> bool {
        !self.protected_hardlinks || self.owns(attr) || self.may(attr, READ | WRITE)
    }

    /// Whether the caller owns an entry of attributes `attr`, as changing its mode,
    /// group or times to given values needs.
    pub(crate) fn owns(&self, attr: &FileAttr) -> bool {
        !self.is_bound() || attr.uid == self.uid
    }

    /// Whether the caller is in group `gid`.
    pub(crate) fn in_group(&self, gid: u32) -> bool {
        !self.is_bound() || self.groups.contains(&gid)
    }
}

/// The supplementary groups of this process.
fn supplementary_groups() -> Vec<u32> {
    // SAFETY: a zero size asks only for the count, and writes nothing.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let Ok(len) = usize::try_from(n) else {
        return Vec::new();
    };
    let mut groups = vec![0 as libc::gid_t; len];
    // SAFETY: `groups` holds `n` writable gids.
    let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    groups.truncate(usize::try_from(got).unwrap_or(0));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuser::INodeNo;
    use std::time::UNIX_EPOCH;

    fn attr(kind: FileType, perm: u16, uid: u32, gid: u32) -> FileAttr {
        FileAttr {
            ino: INodeNo(2),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    #[test]
    fn the_owner_group_or_others_bits_apply_and_never_a_mix() {
        let me = Caller::new(1000, 1000, &[27, 1000]);
        let file = |perm, uid, gid| attr(FileType::RegularFile, perm, uid, gid);
        assert!(me.may(&file(0o600, 1000, 5), READ | WRITE));
        assert!(!me.may(&file(0o600, 1000, 5), EXEC));
        // The owner's bits decide for the owner, even where the others' grant more.
        assert!(!me.may(&file(0o077, 1000, 1000), READ));
        assert!(me.may(&file(0o040, 1001, 27), READ));
        assert!(!me.may(&file(0o404, 1001, 27), READ));
        assert!(me.may(&file(0o004, 1001, 5), READ));
        assert!(!me.may(&file(0o006, 1001, 5), READ | WRITE | EXEC));
        assert!(me.may(&file(0o000, 1001, 5), 0));
        assert!(me.owns(&file(0o000, 1000, 5)));
        assert!(!me.owns(&file(0o777, 1001, 1000)));
        assert!(me.in_group(27) && me.in_group(1000) && !me.in_group(0));
    }

    #[test]
    fn a_hard_link_to_anothers_file_needs_read_and_write_where_links_are_protected() {
        let me = Caller::new(1000, 1000, &[]);
        let file = |perm, uid| attr(FileType::RegularFile, perm, uid, 5);
        assert!(me.may_link(&file(0o000, 1000)));
        assert!(me.may_link(&file(0o666, 1001)));
        assert!(!me.may_link(&file(0o644, 1001)));
        assert!(me.protecting_hardlinks(false).may_link(&file(0o000, 1001)));
    }

    #[test]
    fn root_may_anything_but_execute_a_file_without_an_execute_bit() {
        let root = Caller::new(0, 0, &[]);
        assert!(!root.is_bound());
        let file = |perm| attr(FileType::RegularFile, perm, 1000, 1000);
        assert!(root.may(&file(0o000), READ | WRITE));
        assert!(!root.may(&file(0o666), EXEC));
        assert!(root.may(&file(0o001), EXEC));
        assert!(root.may(
            &attr(FileType::Directory, 0o000, 1000, 1000),
            READ | WRITE | EXEC
        ));
        assert!(root.owns(&file(0o000)) && root.in_group(4242));
    }

    #[test]
    fn this_process_is_in_its_own_primary_group() {
        let me = Caller::of_process();
        // SAFETY: getgid has no preconditions.
        assert!(me.in_group(unsafe { libc::getgid() }));
    }
}
