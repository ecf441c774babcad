//! The inode table: kernel inode numbers for stores, files and conflict copies, and
//! the directory entries handed to the kernel for each (by inode and by directory), so
//! a change can invalidate every dentry the kernel may hold for a file or a name. It
//! also queues the names the FUSE layer suspects its own requests left stale.
//!
//! The kernel keeps every entry it looked up until memory runs short, and each costs a
//! slot here: past a cap (from the cache budget) the oldest file entries are handed to
//! the invalidation thread, whose `inval_entry` makes the kernel drop them and then
//! forget their inodes. Directories and the stores' roots are kept: dropping one would
//! drop every cached entry under it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::fs::names::{decorated_prefix, raw_candidates};
use crate::fs::Node;
use crate::ids::{FileId, OpId, StoreId};

/// Inode number of the mount root, which lists the stores.
pub(crate) const MOUNT_ROOT: u64 = 1;

/// Most directory entries remembered per inode; past it the oldest is dropped, and
/// the kernel's copy of that name then expires on its own after the entry TTL.
pub(crate) const MAX_NAMES_PER_INODE: usize = 16;

/// Fewest inodes a table is capped at, whatever the budget: a deep path walk needs
/// its directories and a few files at once.
const MIN_INODES: usize = 1024;

/// Eviction frees an eighth of the cap at once, so it runs once per that many lookups.
const EVICT_FRACTION: usize = 8;

/// A directory entry given to the kernel: (parent inode, name).
pub(crate) type Dentry = (u64, Box<[u8]>);

/// An inode the kernel knows, with the entries it may have cached for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Known {
    /// The inode number.
    pub(crate) ino: u64,
    /// What it stands for.
    pub(crate) key: Key,
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
    /// A local-only entry, by its number in `local::Locals`.
    Local(u64),
    /// A store's read-only `.snapshots` directory.
    Snapshots(StoreId),
    /// A node of a snapshot's tree: the `Snapshot` op that recorded it, and the node.
    Snap(StoreId, OpId, Node),
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
            Key::MountRoot | Key::Local(_) | Key::Snapshots(_) | Key::Snap(..) => None,
            Key::File(s, f) | Key::Conflict(s, f, _) => Some((s, f)),
        }
    }

    /// The fs node to ask for attributes and content.
    pub(crate) fn node(&self) -> Option<(StoreId, Node)> {
        match *self {
            Key::MountRoot | Key::Local(_) | Key::Snapshots(_) | Key::Snap(..) => None,
            Key::File(s, file) => Some((s, Node::Entry { entry: file, file })),
            Key::Conflict(s, file, head) => Some((s, Node::Conflict { file, head })),
        }
    }
}

/// Entries a change made through the kernel may have left stale beside the ones the
/// kernel updated itself: display names decorated from one raw name change together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Suspect {
    /// The entry `name` of directory inode `dir` changed; names decorated from the
    /// same raw name may show other files now, or none.
    Name(u64, Box<[u8]>),
    /// The content of a store file changed: its conflict copies may be gone.
    Copies(StoreId, FileId),
    /// The kernel's entry `name` of directory inode `dir` names an inode that no longer
    /// stands for what the name holds: it is dropped, so the next lookup finds anew.
    Stale(u64, Box<[u8]>),
}

struct Slot {
    key: Key,
    lookups: u64,
    names: Vec<Dentry>,
    /// In `Table::order`, so the cap may evict it.
    queued: bool,
    /// A directory or a store's root: never evicted.
    kept: bool,
    /// Its entries were evicted and the kernel has not forgotten it yet.
    evicted: bool,
}

/// The table. A key's inode is found through its file (`by_file`), not a map of its
/// own: a key is over 100 bytes and a file rarely has more than one inode.
#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, Slot>,
    /// Inodes of each store file: the file itself and its conflict copies.
    by_file: HashMap<(StoreId, FileId), Vec<u64>>,
    /// The inode of each key that shows no store file (local and snapshot entries).
    by_key: HashMap<Key, u64>,
    /// The entries of each directory inode handed out, by name.
    children: HashMap<u64, BTreeMap<Box<[u8]>, u64>>,
    /// Suspects waiting for the invalidation thread.
    suspects: Vec<Suspect>,
    /// Evictable inodes, oldest lookup first; forgotten ones are skipped when popped.
    order: VecDeque<u64>,
    /// Entries evicted, waiting for the invalidation thread.
    evicted: Vec<Dentry>,
    /// Inodes evicted and not forgotten yet.
    evicting: usize,
    next: u64,
}

impl Table {
    /// The inode of `key`, if the kernel knows it.
    fn find(&self, key: &Key) -> Option<u64> {
        let Some(file) = key.file() else {
            return match key {
                Key::MountRoot => Some(MOUNT_ROOT),
                _ => self.by_key.get(key).copied(),
            };
        };
        self.by_file
            .get(&file)?
            .iter()
            .copied()
            .find(|ino| self.by_ino.get(ino).is_some_and(|s| s.key == *key))
    }

    /// Finds `ino` by `key` from now on.
    fn index(&mut self, key: Key, ino: u64) {
        match key.file() {
            Some(file) => self
                .by_file
                .entry(file)
                .or_insert_with(|| Vec::with_capacity(1))
                .push(ino),
            None => {
                if key != Key::MountRoot {
                    self.by_key.insert(key, ino);
                }
            }
        }
    }

    /// Stops finding `ino` by `key`.
    fn unindex(&mut self, key: Key, ino: u64) {
        if self.by_key.get(&key) == Some(&ino) {
            self.by_key.remove(&key);
        }
        if let Some(file) = key.file() {
            if let Some(inos) = self.by_file.get_mut(&file) {
                inos.retain(|&i| i != ino);
                if inos.is_empty() {
                    self.by_file.remove(&file);
                }
            }
        }
    }

    /// Stops finding `ino` through directory entry `name` of `parent`.
    fn unname(&mut self, ino: u64, parent: u64, name: &[u8]) {
        if let Some(names) = self.children.get_mut(&parent) {
            if names.get(name) == Some(&ino) {
                names.remove(name);
                if names.is_empty() {
                    self.children.remove(&parent);
                }
            }
        }
    }

    /// Moves the entries of the oldest evictable inodes to `evicted`, as many inodes
    /// as leave `keep` once the kernel forgets them; returns whether any moved.
    fn evict_down_to(&mut self, keep: usize) -> bool {
        let mut left = (self.by_ino.len() - self.evicting).saturating_sub(keep);
        let any = left > 0;
        while left > 0 {
            let Some(ino) = self.order.pop_front() else {
                break;
            };
            let Some(slot) = self.by_ino.get_mut(&ino) else {
                continue;
            };
            slot.queued = false;
            if slot.kept {
                continue;
            }
            let names = std::mem::take(&mut slot.names);
            slot.evicted = true;
            self.evicting += 1;
            left -= 1;
            for (parent, name) in &names {
                self.unname(ino, *parent, name);
            }
            self.evicted.extend(names);
        }
        any
    }
}

/// Bidirectional map between inode numbers and keys, with kernel lookup counts.
pub(crate) struct Inodes {
    table: Mutex<Table>,
    /// Inodes past which the oldest file entries are evicted.
    cap: usize,
    /// Woken when entries were evicted.
    evicting: Notify,
}

impl Inodes {
    /// A table holding only the mount root, evicting file entries past `cap` inodes.
    pub(crate) fn new(cap: usize) -> Self {
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
                queued: false,
                kept: true,
                evicted: false,
            },
        );
        Self {
            table: Mutex::new(t),
            cap: cap.max(MIN_INODES),
            evicting: Notify::new(),
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
                let kept = matches!(key, Key::File(_, file) if file == OpId::ROOT);
                t.by_ino.insert(
                    ino,
                    Slot {
                        key,
                        lookups: 0,
                        names: Vec::with_capacity(1),
                        queued: false,
                        kept,
                        evicted: false,
                    },
                );
                t.index(key, ino);
                ino
            }
        };
        let slot = t.by_ino.get_mut(&ino).expect("by_file and by_ino agree");
        slot.lookups += 1;
        let back = std::mem::take(&mut slot.evicted);
        let mut dropped = None;
        let new = !slot.names.iter().any(|(p, n)| *p == parent && **n == *name);
        if new {
            if slot.names.len() == MAX_NAMES_PER_INODE {
                dropped = Some(slot.names.remove(0));
            }
            slot.names.push((parent, name.into()));
        }
        let queue = !slot.queued && !slot.kept;
        slot.queued |= queue;
        if let Some((p, n)) = dropped {
            t.unname(ino, p, &n);
        }
        if new {
            t.children
                .entry(parent)
                .or_default()
                .insert(name.into(), ino);
        }
        if back {
            t.evicting -= 1;
        }
        if queue {
            t.order.push_back(ino);
            if t.order.len() > 2 * t.by_ino.len() + MIN_INODES {
                let Table { order, by_ino, .. } = &mut *t;
                order.retain(|i| by_ino.get(i).is_some_and(|s| s.queued));
            }
        }
        if t.by_ino.len() - t.evicting > self.cap
            && t.evict_down_to(self.cap - self.cap / EVICT_FRACTION)
        {
            self.evicting.notify_one();
        }
        ino
    }

    /// Never evicts `ino` (a directory: dropping its entry drops every entry under it).
    pub(crate) fn keep(&self, ino: u64) {
        if let Some(slot) = self.table.lock().by_ino.get_mut(&ino) {
            slot.kept = true;
        }
    }

    /// Queues [`Suspect::Name`] of entry `name` of directory inode `dir` if the kernel
    /// holds another entry there that may show the same raw name: most names have none,
    /// and the invalidation thread is then not woken.
    pub(crate) fn suspect_name(&self, dir: u64, name: &[u8]) {
        if self
            .siblings(dir, name)
            .iter()
            .all(|((_, n), _)| **n == *name)
        {
            return;
        }
        self.table
            .lock()
            .suspects
            .push(Suspect::Name(dir, name.into()));
        self.evicting.notify_one();
    }

    /// The entries of directory inode `dir` handed out under a raw name `name` may be
    /// decorated from, or decorated from such a raw name (`name` itself included).
    pub(crate) fn siblings(&self, dir: u64, name: &[u8]) -> Vec<(Dentry, u64)> {
        let name = String::from_utf8_lossy(name);
        let mut out: Vec<(Dentry, u64)> = raw_candidates(&name)
            .iter()
            .flat_map(|raw| self.named(dir, raw.as_bytes(), decorated_prefix(raw).as_bytes()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Has the invalidation thread drop the kernel's entry `name` of directory inode
    /// `dir` (see [`Suspect::Stale`]).
    pub(crate) fn suspect_stale(&self, dir: u64, name: &[u8]) {
        self.table
            .lock()
            .suspects
            .push(Suspect::Stale(dir, name.into()));
        self.evicting.notify_one();
    }

    /// Has the invalidation thread drop every entry the kernel holds in directory inode
    /// `dir`, so each next lookup there asks again (as after its mode changed).
    pub(crate) fn suspect_children(&self, dir: u64) {
        let mut t = self.table.lock();
        let Some(names) = t.children.get(&dir) else {
            return;
        };
        let stale: Vec<Suspect> = names
            .keys()
            .map(|n| Suspect::Stale(dir, n.clone()))
            .collect();
        t.suspects.extend(stale);
        drop(t);
        self.evicting.notify_one();
    }

    /// The inode the kernel was given for entry `name` of directory inode `dir`.
    pub(crate) fn child(&self, dir: u64, name: &[u8]) -> Option<u64> {
        let t = self.table.lock();
        t.children.get(&dir)?.get(name).copied()
    }

    /// Queues [`Suspect::Copies`] of `file` if the kernel knows one of its conflict copies.
    pub(crate) fn suspect_copies(&self, store: StoreId, file: FileId) {
        let mut t = self.table.lock();
        let copies = t.by_file.get(&(store, file)).is_some_and(|inos| {
            inos.iter()
                .any(|i| matches!(t.by_ino.get(i), Some(s) if matches!(s.key, Key::Conflict(..))))
        });
        if copies {
            t.suspects.push(Suspect::Copies(store, file));
            drop(t);
            self.evicting.notify_one();
        }
    }

    /// Waits until entries were evicted or suspects queued, then takes both: the
    /// kernel is to drop the evicted entries and have the suspects checked.
    pub(crate) async fn work(&self) -> (Vec<Dentry>, Vec<Suspect>) {
        loop {
            {
                let mut t = self.table.lock();
                if !t.evicted.is_empty() || !t.suspects.is_empty() {
                    return (
                        std::mem::take(&mut t.evicted),
                        std::mem::take(&mut t.suspects),
                    );
                }
            }
            self.evicting.notified().await;
        }
    }

    /// The entries of directory inode `dir` handed out with a name that equals `exact`
    /// or starts with `prefix`, with their inodes.
    pub(crate) fn named(&self, dir: u64, exact: &[u8], prefix: &[u8]) -> Vec<(Dentry, u64)> {
        let t = self.table.lock();
        let Some(names) = t.children.get(&dir) else {
            return Vec::new();
        };
        let exact = names.get_key_value(exact);
        let prefixed = names
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(n, _)| n.starts_with(prefix));
        exact
            .into_iter()
            .chain(prefixed)
            .map(|(n, &ino)| ((dir, n.clone()), ino))
            .collect()
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
            if let Some(slot) = t.by_ino.remove(&ino) {
                if slot.evicted {
                    t.evicting -= 1;
                }
                for (parent, name) in &slot.names {
                    t.unname(ino, *parent, name);
                }
            }
            t.unindex(key, ino);
        }
        gone
    }

    /// Inode `ino` now stands for `key` (an entry that crossed between local and
    /// replicated by a rename: the kernel keeps the inode under the new name). A key the
    /// kernel knows by another inode then has two, as a file has with its conflict copies.
    pub(crate) fn rekey(&self, ino: u64, key: Key) {
        let mut t = self.table.lock();
        let Some(old) = t.by_ino.get(&ino).map(|s| s.key) else {
            return;
        };
        t.unindex(old, ino);
        t.index(key, ino);
        if let Some(slot) = t.by_ino.get_mut(&ino) {
            slot.key = key;
        }
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
                    key: s.key,
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
                key: s.key,
                names: s.names.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        let mut id = OpId::ROOT;
        id.hlc.wall_ms = u64::from(n);
        Key::File(StoreId([1; 16]), id)
    }

    fn evicted(t: &Inodes) -> Vec<Dentry> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), t.work())
                .await
                .expect("entries were evicted")
                .0
        })
    }

    #[test]
    fn past_the_cap_the_oldest_file_entries_are_evicted_and_directories_kept() {
        let t = Inodes::new(MIN_INODES);
        let dir = t.lookup(key(1), MOUNT_ROOT, b"dir");
        t.keep(dir);
        let store_root = t.lookup(Key::File(StoreId([1; 16]), OpId::ROOT), MOUNT_ROOT, b"s");
        // With the mount root and the store's root, the table is then exactly at the cap.
        let names: Vec<String> = (2..=MIN_INODES as u32 - 2)
            .map(|i| format!("f{i}"))
            .collect();
        let mut inos = Vec::new();
        for (i, n) in (2..).zip(&names) {
            inos.push(t.lookup(key(i), dir, n.as_bytes()));
        }
        assert!(
            t.table.lock().evicted.is_empty(),
            "at the cap nothing is evicted"
        );
        t.lookup(key(5000), dir, b"one more");
        let gone = evicted(&t);
        let want = MIN_INODES + 1 - (MIN_INODES - MIN_INODES / EVICT_FRACTION);
        assert_eq!(gone.len(), want);
        assert!(gone.iter().all(|(p, _)| *p == dir));
        let gone_names: Vec<&[u8]> = gone.iter().map(|(_, n)| &**n).collect();
        let oldest: Vec<&[u8]> = names[..want].iter().map(|n| n.as_bytes()).collect();
        assert_eq!(gone_names, oldest, "the oldest files go first");
        assert!(t.table.lock().evicted.is_empty(), "taken once");

        // The kernel forgets what was evicted; nothing more is evicted until the table
        // grows past the cap again.
        for ino in &inos[..want] {
            assert!(t.forget(*ino, 1).is_some());
        }
        assert_eq!(t.table.lock().evicting, 0);
        assert_eq!(t.get(dir), Some(key(1)));
        assert_eq!(
            t.get(store_root),
            Some(Key::File(StoreId([1; 16]), OpId::ROOT))
        );
        for i in 0..(want as u32 - 1) {
            t.lookup(key(6000 + i), dir, format!("g{i}").as_bytes());
        }
        assert!(t.table.lock().evicted.is_empty());
    }

    #[test]
    fn an_evicted_inode_looked_up_again_is_evictable_again() {
        let t = Inodes::new(MIN_INODES);
        let first = t.lookup(key(1), MOUNT_ROOT, b"first");
        for i in 2..=MIN_INODES as u32 + 1 {
            t.lookup(key(i), MOUNT_ROOT, format!("f{i}").as_bytes());
        }
        assert!(evicted(&t).contains(&(MOUNT_ROOT, b"first"[..].into())));
        assert_eq!(
            t.lookup(key(1), MOUNT_ROOT, b"first"),
            first,
            "not forgotten yet"
        );
        assert_eq!(t.table.lock().evicting, MIN_INODES / EVICT_FRACTION);
        let t2 = t.table.lock();
        assert_eq!(t2.order.back(), Some(&first), "queued again, newest");
    }

    #[test]
    fn same_key_gets_the_same_inode_until_forgotten() {
        let t = Inodes::new(MIN_INODES);
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
    fn a_rekeyed_inode_is_found_by_its_new_key_only() {
        let t = Inodes::new(MIN_INODES);
        let local = t.lookup(Key::Local(7), MOUNT_ROOT, b"a.swp");
        assert_eq!(t.peek(&Key::Local(7)), Some(local));
        t.rekey(local, key(1));
        assert_eq!(t.peek(&Key::Local(7)), None);
        assert_eq!(t.peek(&key(1)), Some(local));
        assert_eq!(t.get(local), Some(key(1)));
        let Key::File(sid, file) = key(1) else {
            unreachable!()
        };
        assert_eq!(t.known(sid, file).len(), 1);
        t.rekey(local, Key::Local(8));
        assert!(t.known(sid, file).is_empty());
        assert_eq!(t.forget(local, 1), Some(Key::Local(8)));
        assert_eq!(t.peek(&Key::Local(8)), None);
    }

    #[test]
    fn mount_root_is_never_forgotten() {
        let t = Inodes::new(MIN_INODES);
        t.forget(MOUNT_ROOT, 100);
        assert_eq!(t.get(MOUNT_ROOT), Some(Key::MountRoot));
    }

    #[test]
    fn entries_are_remembered_per_file_until_forgotten() {
        let t = Inodes::new(MIN_INODES);
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
                    key: key(1),
                    names: vec![(MOUNT_ROOT, b"a"[..].into()), (7, b"b"[..].into())],
                },
                Known {
                    ino: c,
                    key: conflict,
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
    fn entries_are_found_by_directory_and_name_until_dropped() {
        let t = Inodes::new(MIN_INODES);
        let named = |prefix: &[u8]| -> Vec<(Vec<u8>, u64)> {
            t.named(7, b"a.txt", prefix)
                .into_iter()
                .map(|((dir, name), ino)| {
                    assert_eq!(dir, 7);
                    (name.to_vec(), ino)
                })
                .collect()
        };
        let a = t.lookup(key(1), 7, b"a.txt");
        let b = t.lookup(key(2), 7, b"a (bob).txt");
        let c = t.lookup(key(3), 7, b"a (carol).txt");
        t.lookup(key(4), 7, b"b.txt");
        t.lookup(key(5), 8, b"a (dave).txt");
        assert_eq!(
            named(b"a ("),
            vec![
                (b"a.txt".to_vec(), a),
                (b"a (bob).txt".to_vec(), b),
                (b"a (carol).txt".to_vec(), c)
            ]
        );
        assert_eq!(named(b"zz").len(), 1, "the exact name alone");
        assert_eq!(t.named(7, b"", b"").len(), 4, "an empty prefix lists all");
        // A name handed out again for another inode finds the newer one only.
        let d = t.lookup(key(6), 7, b"a.txt");
        assert_eq!(named(b"zz"), vec![(b"a.txt".to_vec(), d)]);
        // The older inode forgotten leaves the newer one's entry.
        t.forget(a, 1);
        assert_eq!(named(b"zz"), vec![(b"a.txt".to_vec(), d)]);
        t.forget(d, 1);
        assert!(named(b"zz").is_empty());
        t.forget(b, 1);
        assert_eq!(named(b"a ("), vec![(b"a (carol).txt".to_vec(), c)]);
        // Entries dropped past the per-inode bound or evicted are not found either.
        for i in 0..MAX_NAMES_PER_INODE {
            t.lookup(key(3), 9, format!("n{i}").as_bytes());
        }
        assert!(named(b"a (").is_empty(), "c's oldest entry was dropped");
        let table = t.table.lock();
        assert!(table.children.get(&7).is_some_and(|m| m.len() == 1));
    }

    #[test]
    fn siblings_are_the_entries_a_raw_name_of_the_name_may_show_as() {
        let t = Inodes::new(MIN_INODES);
        let a = t.lookup(key(1), 7, b"a.txt");
        let b = t.lookup(key(2), 7, b"a (bob).txt");
        let c = t.lookup(key(3), 7, b"a (conflict carol 2026-12-06 010203).txt");
        t.lookup(key(4), 7, b"ab.txt");
        t.lookup(key(5), 7, b"a(x).txt");
        t.lookup(key(6), 8, b"a (dave).txt");
        let entry = |n: &[u8], ino| ((7u64, Box::<[u8]>::from(n)), ino);
        let want = vec![
            entry(b"a (bob).txt", b),
            entry(b"a (conflict carol 2026-12-06 010203).txt", c),
            entry(b"a.txt", a),
        ];
        assert_eq!(t.siblings(7, b"a.txt"), want);
        assert_eq!(
            t.siblings(7, b"a (bob).txt").len(),
            3,
            "from its raw name a.txt"
        );
        assert_eq!(t.siblings(7, b"gone.txt"), vec![]);
        t.suspect_name(7, b"gone.txt");
        t.suspect_name(7, b"ab.txt");
        assert!(
            t.table.lock().suspects.is_empty(),
            "no other entry may show these names"
        );
    }

    #[test]
    fn an_evicted_entry_is_no_longer_found_by_its_directory() {
        let t = Inodes::new(MIN_INODES);
        t.lookup(key(1), MOUNT_ROOT, b"first");
        for i in 2..=MIN_INODES as u32 + 1 {
            t.lookup(key(i), MOUNT_ROOT, format!("f{i}").as_bytes());
        }
        assert!(evicted(&t).contains(&(MOUNT_ROOT, b"first"[..].into())));
        assert!(t.named(MOUNT_ROOT, b"first", b"first").is_empty());
    }

    #[test]
    fn copies_are_suspected_only_when_the_kernel_knows_one() {
        let t = Inodes::new(MIN_INODES);
        let Key::File(sid, file) = key(1) else {
            unreachable!()
        };
        t.lookup(key(1), MOUNT_ROOT, b"a");
        t.suspect_copies(sid, file);
        assert!(t.table.lock().suspects.is_empty());
        t.lookup(
            Key::Conflict(sid, file, OpId::ROOT),
            MOUNT_ROOT,
            b"a (conflict)",
        );
        t.suspect_copies(sid, file);
        t.suspect_name(MOUNT_ROOT, b"b");
        t.suspect_name(MOUNT_ROOT, b"a");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (evicted, suspects) = rt.block_on(t.work());
        assert!(evicted.is_empty());
        assert_eq!(
            suspects,
            vec![
                Suspect::Copies(sid, file),
                Suspect::Name(MOUNT_ROOT, b"a"[..].into())
            ]
        );
    }

    #[test]
    fn names_per_inode_are_bounded_oldest_dropped_first() {
        let t = Inodes::new(MIN_INODES);
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
