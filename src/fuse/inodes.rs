//! The inode table: kernel inode numbers for stores, files and conflict copies, and
//! the directory entries handed to the kernel for each, so a remote change can
//! invalidate every dentry the kernel may hold for a file.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::fs::Node;
use crate::ids::{FileId, OpId, StoreId};

/// Inode number of the mount root, which lists the stores.
pub(crate) const MOUNT_ROOT: u64 = 1;

/// Most directory entries remembered per inode; past it the oldest is dropped, and
/// the kernel's copy of that name then expires on its own after the entry TTL.
pub(crate) const MAX_NAMES_PER_INODE: usize = 16;

/// A directory entry given to the kernel: (parent inode, name).
pub(crate) type Dentry = (u64, Box<[u8]>);

/// An inode the kernel knows, with the entries it may have cached for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Known {
    /// The inode number.
    pub(crate) ino: u64,
    /// Entries handed out for it, oldest first.
    pub(crate) names: Vec<Dentry>,
}

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

    /// The store file a key shows (a file or one of its conflict copies).
    fn file(&self) -> Option<(StoreId, FileId)> {
        match *self {
            Key::MountRoot => None,
            Key::File(s, f) | Key::Conflict(s, f, _) => Some((s, f)),
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
    names: Vec<Dentry>,
}

/// The table. A key's inode is found through its file (`by_file`), not a map of its
/// own: a key is over 100 bytes and a file rarely has more than one inode.
#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, Slot>,
    /// Inodes of each store file: the file itself and its conflict copies.
    by_file: HashMap<(StoreId, FileId), Vec<u64>>,
    next: u64,
}

impl Table {
    /// The inode of `key`, if the kernel knows it.
    fn find(&self, key: &Key) -> Option<u64> {
        let Some(file) = key.file() else {
            return Some(MOUNT_ROOT);
        };
        self.by_file
            .get(&file)?
            .iter()
            .copied()
            .find(|ino| self.by_ino.get(ino).is_some_and(|s| s.key == *key))
    }
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
                names: Vec::new(),
            },
        );
        Self {
            table: Mutex::new(t),
        }
    }

    /// The inode number for `key`, counting one kernel lookup through entry `name`
    /// of directory `parent`, which is remembered until the inode is forgotten.
    pub(crate) fn lookup(&self, key: Key, parent: u64, name: &[u8]) -> u64 {
        let mut t = self.table.lock();
        let ino = match t.find(&key) {
            Some(ino) => ino,
            None => {
                let ino = t.next;
                t.next += 1;
                t.by_ino.insert(
                    ino,
                    Slot {
                        key,
                        lookups: 0,
                        names: Vec::with_capacity(1),
                    },
                );
                if let Some(file) = key.file() {
                    t.by_file
                        .entry(file)
                        .or_insert_with(|| Vec::with_capacity(1))
                        .push(ino);
                }
                ino
            }
        };
        let slot = t.by_ino.get_mut(&ino).expect("by_key and by_ino agree");
        slot.lookups += 1;
        if !slot.names.iter().any(|(p, n)| *p == parent && **n == *name) {
            if slot.names.len() == MAX_NAMES_PER_INODE {
                slot.names.remove(0);
            }
            slot.names.push((parent, name.into()));
        }
        ino
    }

    /// The inode number for `key` if the kernel knows it, without counting a lookup.
    pub(crate) fn peek(&self, key: &Key) -> Option<u64> {
        self.table.lock().find(key)
    }

    /// The key of a known inode.
    pub(crate) fn get(&self, ino: u64) -> Option<Key> {
        self.table.lock().by_ino.get(&ino).map(|s| s.key)
    }

    /// The kernel forgot `n` lookups of `ino`; the number is dropped at zero, and then
    /// its key is returned.
    pub(crate) fn forget(&self, ino: u64, n: u64) -> Option<Key> {
        if ino == MOUNT_ROOT {
            return None;
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
            if let Some(file) = key.file() {
                if let Some(inos) = t.by_file.get_mut(&file) {
                    inos.retain(|&i| i != ino);
                    if inos.is_empty() {
                        t.by_file.remove(&file);
                    }
                }
            }
        }
        gone
    }

    /// The inodes the kernel knows for `file` of store `store` (the file and its
    /// conflict copies), with their entries.
    pub(crate) fn known(&self, store: StoreId, file: FileId) -> Vec<Known> {
        let t = self.table.lock();
        let Some(inos) = t.by_file.get(&(store, file)) else {
            return Vec::new();
        };
        inos.iter()
            .filter_map(|&ino| {
                t.by_ino.get(&ino).map(|s| Known {
                    ino,
                    names: s.names.clone(),
                })
            })
            .collect()
    }

    /// Every inode the kernel knows, with its entries.
    pub(crate) fn all(&self) -> Vec<Known> {
        let t = self.table.lock();
        t.by_ino
            .iter()
            .map(|(&ino, s)| Known {
                ino,
                names: s.names.clone(),
            })
            .collect()
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
        let a = t.lookup(key(1), MOUNT_ROOT, b"a");
        assert_eq!(t.lookup(key(1), MOUNT_ROOT, b"a"), a);
        assert_ne!(t.lookup(key(2), MOUNT_ROOT, b"b"), a);
        assert_eq!(t.forget(a, 1), None, "one lookup is left");
        assert_eq!(t.get(a), Some(key(1)));
        assert_eq!(t.peek(&key(1)), Some(a));
        assert_eq!(t.forget(a, 1), Some(key(1)));
        assert_eq!(t.get(a), None);
        assert_eq!(t.peek(&key(1)), None);
        assert_ne!(
            t.lookup(key(1), MOUNT_ROOT, b"a"),
            a,
            "a forgotten number is never reused"
        );
    }

    #[test]
    fn mount_root_is_never_forgotten() {
        let t = Inodes::new();
        t.forget(MOUNT_ROOT, 100);
        assert_eq!(t.get(MOUNT_ROOT), Some(Key::MountRoot));
    }

    #[test]
    fn entries_are_remembered_per_file_until_forgotten() {
        let t = Inodes::new();
        let Key::File(sid, file) = key(1) else {
            unreachable!()
        };
        let conflict = Key::Conflict(sid, file, OpId::ROOT);
        let a = t.lookup(key(1), MOUNT_ROOT, b"a");
        t.lookup(key(1), 7, b"b");
        t.lookup(key(1), MOUNT_ROOT, b"a");
        let c = t.lookup(conflict, MOUNT_ROOT, b"a (conflict)");
        let mut known = t.known(sid, file);
        known.sort_by_key(|k| k.ino);
        assert_eq!(
            known,
            vec![
                Known {
                    ino: a,
                    names: vec![(MOUNT_ROOT, b"a"[..].into()), (7, b"b"[..].into())],
                },
                Known {
                    ino: c,
                    names: vec![(MOUNT_ROOT, b"a (conflict)"[..].into())],
                },
            ]
        );
        t.forget(a, 3);
        assert_eq!(t.known(sid, file).len(), 1);
        t.forget(c, 1);
        assert!(t.known(sid, file).is_empty());
        assert_eq!(t.all().len(), 1, "only the mount root is left");
    }

    #[test]
    fn names_per_inode_are_bounded_oldest_dropped_first() {
        let t = Inodes::new();
        let names: Vec<String> = (0..=MAX_NAMES_PER_INODE).map(|i| format!("n{i}")).collect();
        for n in &names {
            t.lookup(key(1), MOUNT_ROOT, n.as_bytes());
        }
        let Key::File(sid, file) = key(1) else {
            unreachable!()
        };
        let known = t.known(sid, file);
        assert_eq!(known[0].names.len(), MAX_NAMES_PER_INODE);
        assert_eq!(&*known[0].names[0].1, names[1].as_bytes());
    }
}
