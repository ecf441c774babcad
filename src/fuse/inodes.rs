//! The inode table: kernel inode numbers for stores, files and conflict copies.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::fs::op::{FileId, OpId};
use crate::fs::Node;
use crate::intention::StoreId;

/// Inode number of the mount root, which lists the stores.
pub(crate) const MOUNT_ROOT: u64 = 1;

/// What an inode number stands for. Hard links share one key (the file id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// The mount root.
    MountRoot,
    /// A file, directory or special node of a store (`OpId::ROOT` is the store's directory).
    File(StoreId, FileId),
    /// A conflict copy: content head `head` of `file`.
    Conflict(StoreId, FileId, OpId),
}

impl Key {
    /// The key of what a directory entry resolves to.
    pub(crate) fn of(store: StoreId, node: Node) -> Key {
        match node {
            Node::Entry { file, .. } => Key::File(store, file),
            Node::Conflict { file, head } => Key::Conflict(store, file, head),
        }
    }

    /// The fs node to ask for attributes and content.
    pub(crate) fn node(&self) -> Option<(StoreId, Node)> {
        match *self {
            Key::MountRoot => None,
            Key::File(s, file) => Some((s, Node::Entry { entry: file, file })),
            Key::Conflict(s, file, head) => Some((s, Node::Conflict { file, head })),
        }
    }
}

struct Slot {
    key: Key,
    lookups: u64,
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, Slot>,
    by_key: HashMap<Key, u64>,
    next: u64,
}

/// Bidirectional map between inode numbers and keys, with kernel lookup counts.
pub(crate) struct Inodes {
    table: Mutex<Table>,
}

impl Inodes {
    /// A table holding only the mount root.
    pub(crate) fn new() -> Self {
        let mut t = Table {
            next: MOUNT_ROOT + 1,
            ..Default::default()
        };
        t.by_ino.insert(
            MOUNT_ROOT,
            Slot {
                key: Key::MountRoot,
                lookups: 1,
            },
        );
        t.by_key.insert(Key::MountRoot, MOUNT_ROOT);
        Self {
            table: Mutex::new(t),
        }
    }

    /// The inode number for `key`, counting one kernel lookup.
    pub(crate) fn lookup(&self, key: Key) -> u64 {
        let mut t = self.table.lock();
        if let Some(&ino) = t.by_key.get(&key) {
            if let Some(slot) = t.by_ino.get_mut(&ino) {
                slot.lookups += 1;
            }
            return ino;
        }
        let ino = t.next;
        t.next += 1;
        t.by_ino.insert(ino, Slot { key, lookups: 1 });
        t.by_key.insert(key, ino);
        ino
    }

    /// The inode number for `key` if the kernel knows it, without counting a lookup.
    pub(crate) fn peek(&self, key: &Key) -> Option<u64> {
        self.table.lock().by_key.get(key).copied()
    }

    /// The key of a known inode.
    pub(crate) fn get(&self, ino: u64) -> Option<Key> {
        self.table.lock().by_ino.get(&ino).map(|s| s.key)
    }

    /// The kernel forgot `n` lookups of `ino`; the number is dropped at zero.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        if ino == MOUNT_ROOT {
            return;
        }
        let mut t = self.table.lock();
        let gone = match t.by_ino.get_mut(&ino) {
            Some(slot) => {
                slot.lookups = slot.lookups.saturating_sub(n);
                (slot.lookups == 0).then_some(slot.key)
            }
            None => None,
        };
        if let Some(key) = gone {
            t.by_ino.remove(&ino);
            t.by_key.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        let mut id = OpId::ROOT;
        id.hlc.wall_ms = u64::from(n);
        Key::File(StoreId([1; 16]), id)
    }

    #[test]
    fn same_key_gets_the_same_inode_until_forgotten() {
        let t = Inodes::new();
        let a = t.lookup(key(1));
        assert_eq!(t.lookup(key(1)), a);
        assert_ne!(t.lookup(key(2)), a);
        t.forget(a, 1);
        assert_eq!(t.get(a), Some(key(1)));
        t.forget(a, 1);
        assert_eq!(t.get(a), None);
        assert_ne!(t.lookup(key(1)), a, "a forgotten number is never reused");
    }

    #[test]
    fn mount_root_is_never_forgotten() {
        let t = Inodes::new();
        t.forget(MOUNT_ROOT, 100);
        assert_eq!(t.get(MOUNT_ROOT), Some(Key::MountRoot));
    }
}
