//! `Paged`: a map of the projection whose settled records live in a store's tables.
//!
//! A paged map is an overlay over a [`PageSource`] (the store's tables as of its last
//! commit): the overlay holds every record changed since then (a deleted one as a
//! tombstone), reads look in the overlay first and then in the source, and nothing read
//! from the source is kept. So memory holds only what changed since the last commit of
//! pages, and the source's page cache (sized by the daemon's budget) is the only cache.
//!
//! A map without a source holds everything in its overlay: that is how a state is built
//! in memory (tests, the simulator's witness replay, a snapshot of an older format, a
//! rebuilt projection) before its first write of pages.
//!
//! Writing pages is two steps, so a record changed while the write commits is not lost:
//! [`Paged::dirty`] encodes every overlay record and returns the generation it cut at;
//! once the pages are committed, [`Paged::settle`] drops the overlay records not changed
//! since that cut and reads the rest from the new source.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::fs::codec::{Reader, Writer};
use crate::fs::error::FsError;
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::OpId;

/// A table of the paged projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Page {
    /// Entry id → its file, kind and location.
    Entries,
    /// (directory, raw name) → the entries placed under that name.
    Children,
    /// (directory, subdirectory entry) → nothing: the subdirectories of a directory.
    Subdirs,
    /// File id → its entries.
    ByFile,
    /// File id → the file's registers.
    Files,
    /// Op id → nothing: the applied ops not purged yet.
    Applied,
    /// (superseded op id, file) → nothing: ids named as superseded whose ops have not
    /// arrived, by stamp (so a purge finds them).
    Superseded,
}

impl Page {
    /// Every table, in a fixed order.
    pub const ALL: [Page; 7] = [
        Page::Entries,
        Page::Children,
        Page::Subdirs,
        Page::ByFile,
        Page::Files,
        Page::Applied,
        Page::Superseded,
    ];
}

/// The settled records of a paged projection: a store's page tables at one commit.
pub trait PageSource: Send + Sync {
    /// The stored value under `key` in `page`.
    fn get(&self, page: Page, key: &[u8]) -> Option<Vec<u8>>;
    /// Calls `f` on the stored pairs of `page` with keys at or after `from`, in key
    /// order, while it returns true.
    fn scan(&self, page: Page, from: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool);
    /// Records that a stored record of `page` does not decode (it reads as absent).
    fn corrupt(&self, page: Page, key: &[u8]);
}

/// One record to write: the table, the key, and the value (`None`: delete it).
pub type PageWrite = (Page, Vec<u8>, Option<Vec<u8>>);

/// A key of a paged map, encoded so that byte order is the key's order.
pub(crate) trait PageKey: Ord + Clone {
    /// Appends the encoding.
    fn put(&self, out: &mut Vec<u8>);
    /// Reads an encoding; `None` if malformed.
    fn read(bytes: &[u8]) -> Option<Self>;
}

/// A value of a paged map under a key of type `K`.
pub(crate) trait PageValue<K>: Clone {
    /// Writes the value of `key`.
    fn put(&self, key: &K, w: &mut Writer);
    /// Reads what `put` wrote for `key`.
    fn read(key: &K, r: &mut Reader) -> Result<Self, FsError>;
}

/// Bytes of an encoded op id: wall ms and counter big-endian, then the author.
const ID_BYTES: usize = 8 + 4 + 32;

fn put_id(id: &OpId, out: &mut Vec<u8>) {
    out.extend_from_slice(&id.hlc.wall_ms.to_be_bytes());
    out.extend_from_slice(&id.hlc.counter.to_be_bytes());
    out.extend_from_slice(&id.author.0);
}

fn read_id(b: &[u8]) -> Option<OpId> {
    let b: &[u8; ID_BYTES] = b.get(..ID_BYTES)?.try_into().ok()?;
    Some(OpId {
        hlc: Hlc {
            wall_ms: u64::from_be_bytes(b[..8].try_into().ok()?),
            counter: u32::from_be_bytes(b[8..12].try_into().ok()?),
        },
        author: PublicKey(b[12..].try_into().ok()?),
    })
}

impl PageKey for OpId {
    fn put(&self, out: &mut Vec<u8>) {
        put_id(self, out);
    }

    fn read(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == ID_BYTES).then(|| read_id(bytes)).flatten()
    }
}

impl PageKey for (OpId, String) {
    fn put(&self, out: &mut Vec<u8>) {
        put_id(&self.0, out);
        out.extend_from_slice(self.1.as_bytes());
    }

    fn read(bytes: &[u8]) -> Option<Self> {
        let name = String::from_utf8(bytes.get(ID_BYTES..)?.to_vec()).ok()?;
        Some((read_id(bytes)?, name))
    }
}

impl PageKey for (OpId, OpId) {
    fn put(&self, out: &mut Vec<u8>) {
        put_id(&self.0, out);
        put_id(&self.1, out);
    }

    fn read(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 2 * ID_BYTES {
            return None;
        }
        Some((read_id(bytes)?, read_id(&bytes[ID_BYTES..])?))
    }
}

impl<K> PageValue<K> for () {
    fn put(&self, _: &K, _: &mut Writer) {}

    fn read(_: &K, _: &mut Reader) -> Result<Self, FsError> {
        Ok(())
    }
}

/// Encodes a value with its own key table: a varint count, the 32-byte keys, the body.
fn encode_value<K, V: PageValue<K>>(key: &K, v: &V) -> Vec<u8> {
    let mut w = Writer::default();
    v.put(key, &mut w);
    let mut head = Writer::default();
    head.len(w.keys.len());
    let mut out = head.body;
    for k in &w.keys {
        out.extend_from_slice(&k.0);
    }
    out.extend_from_slice(&w.body);
    out
}

fn decode_value<K, V: PageValue<K>>(key: &K, bytes: &[u8]) -> Result<V, FsError> {
    let mut r = Reader::new(bytes, Vec::new());
    let n = r.len()?;
    let keys = (0..n)
        .map(|_| r.array().map(PublicKey))
        .collect::<Result<Vec<_>, _>>()?;
    let mut r = Reader::new(r.take(r.remaining())?, keys);
    let v = V::read(key, &mut r)?;
    if !r.is_empty() {
        return Err(crate::fs::codec::corrupt("trailing bytes in a page"));
    }
    Ok(v)
}

/// A value read from a paged map: borrowed from the overlay or decoded from the source.
pub(crate) enum Got<'a, V> {
    /// Held in the overlay.
    Mem(&'a V),
    /// Read from the source.
    Disk(V),
}

impl<V> Deref for Got<'_, V> {
    type Target = V;

    fn deref(&self) -> &V {
        match self {
            Got::Mem(v) => v,
            Got::Disk(v) => v,
        }
    }
}

impl<V: Clone> Got<'_, V> {
    /// The value, owned.
    pub(crate) fn into_owned(self) -> V {
        match self {
            Got::Mem(v) => v.clone(),
            Got::Disk(v) => v,
        }
    }
}

#[derive(Clone, Debug)]
struct Slot<V> {
    /// `None`: deleted since the last commit of pages.
    val: Option<V>,
    /// The generation that last changed it.
    generation: u64,
}

/// A map whose settled records are read from a [`PageSource`] (see the module doc).
#[derive(Clone)]
pub(crate) struct Paged<K, V> {
    page: Page,
    src: Option<Arc<dyn PageSource>>,
    over: BTreeMap<K, Slot<V>>,
    len: usize,
    generation: u64,
    /// Set once pages were written: from then on a removal must leave a tombstone.
    written: bool,
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Paged<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paged")
            .field("page", &self.page)
            .field("len", &self.len)
            .field("overlay", &self.over.len())
            .finish()
    }
}

impl<K: PageKey, V: PageValue<K>> Paged<K, V> {
    /// An empty map held in memory.
    pub(crate) fn new(page: Page) -> Self {
        Paged {
            page,
            src: None,
            over: BTreeMap::new(),
            len: 0,
            generation: 0,
            written: false,
        }
    }

    /// A map of `len` records settled in `src`.
    pub(crate) fn backed(page: Page, src: Arc<dyn PageSource>, len: usize) -> Self {
        Paged {
            src: Some(src),
            len,
            written: true,
            ..Self::new(page)
        }
    }

    fn load(&self, key: &K) -> Option<V> {
        let src = self.src.as_ref()?;
        let mut kb = Vec::new();
        key.put(&mut kb);
        let bytes = src.get(self.page, &kb)?;
        match decode_value(key, &bytes) {
            Ok(v) => Some(v),
            Err(_) => {
                src.corrupt(self.page, &kb);
                None
            }
        }
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: &K) -> Option<Got<'_, V>> {
        match self.over.get(key) {
            Some(slot) => slot.val.as_ref().map(Got::Mem),
            None => self.load(key).map(Got::Disk),
        }
    }

    /// True if `key` has a value.
    pub(crate) fn contains_key(&self, key: &K) -> bool {
        match self.over.get(key) {
            Some(slot) => slot.val.is_some(),
            None => self.load(key).is_some(),
        }
    }

    /// The value under `key`, for changing it.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if !self.over.contains_key(key) {
            let v = self.load(key)?;
            self.over.insert(
                key.clone(),
                Slot {
                    val: Some(v),
                    generation: self.generation,
                },
            );
        }
        let slot = self.over.get_mut(key)?;
        slot.generation = self.generation;
        slot.val.as_mut()
    }

    /// The value under `key`, inserting the default first if there is none.
    pub(crate) fn get_or_default(&mut self, key: &K) -> &mut V
    where
        V: Default,
    {
        if !self.contains_key(key) {
            self.insert(key.clone(), V::default());
        }
        self.get_mut(key)
            .expect("a value was just inserted under this key")
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = match self.over.get(&key) {
            Some(slot) => slot.val.clone(),
            None => self.load(&key),
        };
        if old.is_none() {
            self.len += 1;
        }
        self.over.insert(
            key,
            Slot {
                val: Some(value),
                generation: self.generation,
            },
        );
        old
    }

    /// Removes `key`; returns its value.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let old = match self.over.get(key) {
            Some(slot) => slot.val.clone(),
            None => self.load(key),
        };
        old.as_ref()?;
        self.len -= 1;
        if self.written {
            self.over.insert(
                key.clone(),
                Slot {
                    val: None,
                    generation: self.generation,
                },
            );
        } else {
            self.over.remove(key);
        }
        old
    }

    /// Number of values.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Calls `f` on every value with a key at or after `from`, in key order, while it
    /// returns true.
    pub(crate) fn scan(&self, from: &K, f: impl FnMut(&K, Got<'_, V>) -> bool) {
        self.scan_from(Some(from), f);
    }

    /// Calls `f` on every value in key order while it returns true.
    pub(crate) fn each(&self, f: impl FnMut(&K, Got<'_, V>) -> bool) {
        self.scan_from(None, f);
    }

    fn scan_from(&self, from: Option<&K>, mut f: impl FnMut(&K, Got<'_, V>) -> bool) {
        let mut mem = match from {
            Some(k) => self.over.range(k.clone()..),
            None => self.over.range(..),
        }
        .peekable();
        if let Some(src) = &self.src {
            let mut fb = Vec::new();
            if let Some(k) = from {
                k.put(&mut fb);
            }
            let mut going = true;
            src.scan(self.page, &fb, &mut |kb, vb| {
                let Some(k) = K::read(kb) else {
                    src.corrupt(self.page, kb);
                    return true;
                };
                while let Some((mk, slot)) = mem.next_if(|(mk, _)| **mk < k) {
                    if let Some(v) = &slot.val {
                        if !f(mk, Got::Mem(v)) {
                            going = false;
                            return false;
                        }
                    }
                }
                let shown = match mem.next_if(|(mk, _)| **mk == k) {
                    Some((_, slot)) => slot.val.as_ref().map(Got::Mem),
                    None => match decode_value(&k, vb) {
                        Ok(v) => Some(Got::Disk(v)),
                        Err(_) => {
                            src.corrupt(self.page, kb);
                            None
                        }
                    },
                };
                going = shown.is_none_or(|v| f(&k, v));
                going
            });
            if !going {
                return;
            }
        }
        for (k, slot) in mem {
            if let Some(v) = &slot.val {
                if !f(k, Got::Mem(v)) {
                    return;
                }
            }
        }
    }

    /// Every value, in key order (for encoding and tests: reads the whole table).
    pub(crate) fn all(&self) -> Vec<(K, V)> {
        let mut out = Vec::with_capacity(self.len);
        self.each(|k, v| {
            out.push((k.clone(), v.into_owned()));
            true
        });
        out
    }

    /// Appends every overlay record (changed since the last commit of pages) to `out`;
    /// returns the generation to pass to [`Paged::settle`] once they are committed.
    pub(crate) fn dirty(&mut self, out: &mut Vec<PageWrite>) -> u64 {
        for (k, slot) in &self.over {
            let mut kb = Vec::new();
            k.put(&mut kb);
            out.push((self.page, kb, slot.val.as_ref().map(|v| encode_value(k, v))));
        }
        self.written = true;
        let cut = self.generation;
        self.generation += 1;
        cut
    }

    /// After the records of generation `cut` were committed: reads them from `src` now.
    pub(crate) fn settle(&mut self, cut: u64, src: Arc<dyn PageSource>) {
        self.over.retain(|_, slot| slot.generation > cut);
        self.src = Some(src);
    }

    /// Records held in memory (changed since the last commit of pages).
    pub(crate) fn overlay_len(&self) -> usize {
        self.over.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::{Page, PageSource, PageWrite, Paged};
    use crate::fs::tree::IdSet;
    use crate::hlc::Hlc;
    use crate::identity::PublicKey;
    use crate::ids::OpId;

    /// A committed table: what a store's page table holds after a commit.
    #[derive(Clone, Default)]
    struct Committed(BTreeMap<Vec<u8>, Vec<u8>>);

    impl PageSource for Committed {
        fn get(&self, _: Page, key: &[u8]) -> Option<Vec<u8>> {
            self.0.get(key).cloned()
        }

        fn scan(&self, _: Page, from: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) {
            for (k, v) in self.0.range(from.to_vec()..) {
                if !f(k, v) {
                    return;
                }
            }
        }

        fn corrupt(&self, _: Page, key: &[u8]) {
            panic!("record {key:?} does not decode");
        }
    }

    impl Committed {
        fn apply(&mut self, writes: Vec<PageWrite>) {
            for (_, k, v) in writes {
                match v {
                    Some(v) => self.0.insert(k, v),
                    None => self.0.remove(&k),
                };
            }
        }
    }

    type Key = (OpId, String);

    fn key(dir: u8, name: u8) -> Key {
        let id = OpId {
            hlc: Hlc {
                wall_ms: u64::from(dir) << 40,
                counter: u32::from(dir),
            },
            author: PublicKey([dir; 32]),
        };
        (id, format!("n{name}"))
    }

    fn set(n: u8) -> IdSet {
        let mut s = IdSet::new();
        s.add(key(n, 0).0);
        s
    }

    #[derive(Clone, Debug)]
    enum Step {
        Insert(u8, u8, u8),
        Remove(u8, u8),
        Change(u8, u8, u8),
        /// Cut the dirty records; they commit at the next `Settle`.
        Cut,
        Settle,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..4u8, 0..6u8, any::<u8>()).prop_map(|(d, n, v)| Step::Insert(d, n, v)),
            2 => (0..4u8, 0..6u8).prop_map(|(d, n)| Step::Remove(d, n)),
            2 => (0..4u8, 0..6u8, any::<u8>()).prop_map(|(d, n, v)| Step::Change(d, n, v)),
            1 => Just(Step::Cut),
            1 => Just(Step::Settle),
        ]
    }

    fn check(map: &Paged<Key, IdSet>, model: &BTreeMap<Key, IdSet>) {
        assert_eq!(map.len(), model.len());
        assert_eq!(map.all(), model.clone().into_iter().collect::<Vec<_>>());
        for d in 0..4 {
            for n in 0..6 {
                let k = key(d, n);
                assert_eq!(map.get(&k).map(|v| v.clone()), model.get(&k).cloned());
            }
            let mut seen = Vec::new();
            map.scan(&key(d, 0), |k, v| {
                let inside = k.0 == key(d, 0).0;
                if inside {
                    seen.push((k.clone(), v.clone()));
                }
                inside
            });
            let want: Vec<_> = model
                .range(key(d, 0)..)
                .take_while(|(k, _)| k.0 == key(d, 0).0)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(seen, want);
        }
    }

    proptest! {
        #[test]
        fn a_paged_map_reads_like_a_map_across_cuts_and_commits(
            steps in prop::collection::vec(step(), 1..80),
        ) {
            let mut map: Paged<Key, IdSet> = Paged::new(Page::Children);
            let mut model = BTreeMap::new();
            let mut db = Committed::default();
            let mut cut: Option<(u64, Vec<PageWrite>)> = None;
            for s in steps {
                match s {
                    Step::Insert(d, n, v) => {
                        prop_assert_eq!(map.insert(key(d, n), set(v)), model.insert(key(d, n), set(v)));
                    }
                    Step::Remove(d, n) => {
                        prop_assert_eq!(map.remove(&key(d, n)), model.remove(&key(d, n)));
                    }
                    Step::Change(d, n, v) => {
                        if let Some(s) = map.get_mut(&key(d, n)) {
                            s.add(key(v, 1).0);
                        }
                        if let Some(s) = model.get_mut(&key(d, n)) {
                            s.add(key(v, 1).0);
                        }
                    }
                    Step::Cut => {
                        if cut.is_none() {
                            let mut writes = Vec::new();
                            let generation = map.dirty(&mut writes);
                            cut = Some((generation, writes));
                        }
                    }
                    Step::Settle => {
                        if let Some((generation, writes)) = cut.take() {
                            db.apply(writes);
                            map.settle(generation, Arc::new(db.clone()));
                        }
                    }
                }
                check(&map, &model);
            }
            let mut writes = Vec::new();
            let generation = map.dirty(&mut writes);
            db.apply(writes);
            map.settle(generation, Arc::new(db.clone()));
            prop_assert_eq!(map.overlay_len(), 0);
            check(&map, &model);
            let reopened: Paged<Key, IdSet> =
                Paged::backed(Page::Children, Arc::new(db.clone()), model.len());
            check(&reopened, &model);
        }
    }
}
