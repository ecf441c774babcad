//! `Paged`: a map of the projection whose settled records live in a store's tables.
//!
//! A paged map is an overlay over a [`PageSource`] (the store's tables as of its last
//! commit): the overlay holds every record changed since then (a deleted one as a
//! tombstone), reads look in the overlay first and then in the source, and of what is
//! read from the source only the last few dozen records are kept, decoded ([`Hot`]). So
//! memory holds what changed since the last commit of pages and those few records; the
//! source's page cache (sized by the daemon's budget) is the cache of the rest.
//!
//! A map without a source holds everything in its overlay: that is how a state is built
//! in memory (tests, the simulator's witness replay, a snapshot of an older format, a
//! rebuilt projection) before its first write of pages.
//!
//! Writing pages is two steps, so a record changed while the write commits is not lost:
//! [`Paged::dirty`] encodes every overlay record and returns the generation it cut at;
//! once the pages are committed, [`Paged::settle`] drops the overlay records not changed
//! since that cut and reads the rest from the new source.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::{Bound, Deref};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::fs::codec::{put_uint, Reader, Writer};
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
    /// File id → its entries but the one named by the file's own id.
    ByFile,
    /// File id → the file's registers.
    Files,
    /// Op id → nothing: the applied ops not purged yet, but those in the move log.
    Applied,
    /// (superseded op id, file) → nothing: ids named as superseded whose ops have not
    /// arrived, by stamp (so a purge finds them).
    Superseded,
    /// Location op id → its move-log record: what it changed, to undo it when an older
    /// op arrives (until a purge drops it).
    Log,
    /// (Remove op id, file) → nothing: files a name of which that op deleted, for the
    /// sweep to consider once the removal is settled and past retention.
    Removals,
    /// (op id, file) → nothing: files whose versions that op may have left without a
    /// head, for the sweep to consider once the file's ops are settled.
    Replacements,
}

impl Page {
    /// Every table, in a fixed order.
    pub const ALL: [Page; 10] = [
        Page::Entries,
        Page::Children,
        Page::Subdirs,
        Page::ByFile,
        Page::Files,
        Page::Applied,
        Page::Superseded,
        Page::Log,
        Page::Removals,
        Page::Replacements,
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
    /// The greatest key stored in `page` (empty if it holds none); `None` if unknown.
    fn upto(&self, page: Page) -> Option<Vec<u8>>;
}

/// One change to a page table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageWrite {
    /// Put the value under the key (`None`: delete the record).
    Record(Page, Vec<u8>, Option<Vec<u8>>),
    /// Delete every record keyed before these bytes (written before the table's records).
    Below(Page, Vec<u8>),
}

impl PageWrite {
    /// The table it changes.
    pub fn page(&self) -> Page {
        match self {
            PageWrite::Record(page, ..) | PageWrite::Below(page, _) => *page,
        }
    }
}

/// The authors named in a state's pages, each by a number in the order first written:
/// keys and values name an author by its number, and the header stores the table.
/// Numbers are node-local (pages never leave the node) and only ever added; the maps of
/// one state share the table.
#[derive(Debug, Default)]
pub(crate) struct Authors(RwLock<Names>);

#[derive(Debug, Default)]
struct Names {
    number: HashMap<PublicKey, u64>,
    keys: Vec<PublicKey>,
}

impl Names {
    /// The number of `key`, added if it has none.
    fn add(&mut self, key: &PublicKey) -> u64 {
        if let Some(n) = self.number.get(key) {
            return *n;
        }
        let n = self.keys.len() as u64;
        self.keys.push(*key);
        self.number.insert(*key, n);
        n
    }
}

impl Authors {
    /// A table naming `keys` by their index.
    pub(crate) fn new(keys: &[PublicKey]) -> Arc<Self> {
        let mut names = Names::default();
        for k in keys {
            names.add(k);
        }
        Arc::new(Authors(RwLock::new(names)))
    }

    /// Every author, in number order.
    pub(crate) fn keys(&self) -> Vec<PublicKey> {
        self.0.read().keys.clone()
    }
}

/// Gives an author's number in a key being encoded (`None`: it has none).
pub(crate) type Namer<'a> = dyn FnMut(&PublicKey) -> Option<u64> + 'a;

/// A key of a paged map. Its encoding names each op id's author by its number in
/// [`Authors`], so byte order is (HLC, author number, rest): HLC-major like the key's
/// own order, but authors of one HLC in node-local order. The encoding of a key's first
/// id is never a prefix of another id's, so a scan of one id's keys is contiguous.
pub(crate) trait PageKey: Ord + Clone {
    /// Appends the encoding, with the number `name` gives each author; `None` if it
    /// gives none.
    fn put(&self, name: &mut Namer, out: &mut Vec<u8>) -> Option<()>;
    /// Reads an encoding whose authors are numbers into `keys`; `None` if malformed.
    fn read(bytes: &[u8], keys: &[PublicKey]) -> Option<Self>;
}

/// A value of a paged map under a key of type `K`.
pub(crate) trait PageValue<K>: Clone {
    /// Writes the value of `key`.
    fn put(&self, key: &K, w: &mut Writer);
    /// Reads what `put` wrote for `key`.
    fn read(key: &K, r: &mut Reader) -> Result<Self, FsError>;
}

/// Bytes of an op id's HLC in a key: wall ms and counter, big-endian.
const HLC_BYTES: usize = 8 + 4;

/// Appends `id` as its HLC and its author's number (a varint).
fn put_id(id: &OpId, name: &mut Namer, out: &mut Vec<u8>) -> Option<()> {
    out.extend_from_slice(&id.hlc.wall_ms.to_be_bytes());
    out.extend_from_slice(&id.hlc.counter.to_be_bytes());
    put_uint(out, name(&id.author)?);
    Some(())
}

/// Reads an id written by `put_id` from the front of `r`.
fn read_id(r: &mut Reader, keys: &[PublicKey]) -> Option<OpId> {
    let hlc = r.take(HLC_BYTES).ok()?;
    let number = usize::try_from(r.uint().ok()?).ok()?;
    Some(OpId {
        hlc: Hlc {
            wall_ms: u64::from_be_bytes(hlc[..8].try_into().ok()?),
            counter: u32::from_be_bytes(hlc[8..].try_into().ok()?),
        },
        author: *keys.get(number)?,
    })
}

impl PageKey for OpId {
    fn put(&self, name: &mut Namer, out: &mut Vec<u8>) -> Option<()> {
        put_id(self, name, out)
    }

    fn read(bytes: &[u8], keys: &[PublicKey]) -> Option<Self> {
        let mut r = Reader::new(bytes, Vec::new());
        let id = read_id(&mut r, keys)?;
        r.is_empty().then_some(id)
    }
}

impl PageKey for (OpId, String) {
    fn put(&self, name: &mut Namer, out: &mut Vec<u8>) -> Option<()> {
        put_id(&self.0, name, out)?;
        out.extend_from_slice(self.1.as_bytes());
        Some(())
    }

    fn read(bytes: &[u8], keys: &[PublicKey]) -> Option<Self> {
        let mut r = Reader::new(bytes, Vec::new());
        let id = read_id(&mut r, keys)?;
        let name = String::from_utf8(r.take(r.remaining()).ok()?.to_vec()).ok()?;
        Some((id, name))
    }
}

impl PageKey for (OpId, OpId) {
    fn put(&self, name: &mut Namer, out: &mut Vec<u8>) -> Option<()> {
        put_id(&self.0, name, out)?;
        put_id(&self.1, name, out)
    }

    fn read(bytes: &[u8], keys: &[PublicKey]) -> Option<Self> {
        let mut r = Reader::new(bytes, Vec::new());
        let pair = (read_id(&mut r, keys)?, read_id(&mut r, keys)?);
        r.is_empty().then_some(pair)
    }
}

impl<K> PageValue<K> for () {
    fn put(&self, _: &K, _: &mut Writer) {}

    fn read(_: &K, _: &mut Reader) -> Result<Self, FsError> {
        Ok(())
    }
}

/// Decodes a value whose authors are numbers into `keys`.
fn decode_value<K, V: PageValue<K>>(
    key: &K,
    bytes: &[u8],
    keys: &[PublicKey],
) -> Result<V, FsError> {
    let mut r = Reader::borrowing(bytes, keys);
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
struct Slot<K, V> {
    key: K,
    /// `None`: deleted since the last commit of pages.
    val: Option<V>,
    /// The generation that last changed it.
    generation: u64,
}

/// The overlay slot under `kb` (holding `loaded` if the overlay had none), marked as
/// changed in `generation`.
fn touch<'a, K: Clone, V>(
    over: &'a mut BTreeMap<Vec<u8>, Slot<K, V>>,
    generation: u64,
    key: &K,
    kb: Vec<u8>,
    loaded: Option<V>,
) -> &'a mut Slot<K, V> {
    let slot = over.entry(kb).or_insert_with(|| Slot {
        key: key.clone(),
        val: loaded,
        generation,
    });
    slot.generation = generation;
    slot
}

/// A map whose settled records are read from a [`PageSource`] (see the module doc).
///
/// Its order is the encoded keys' byte order (see [`PageKey`]), in the overlay as in
/// the source, so the two merge in one pass; [`Paged::all`] sorts by the keys' own order.
#[derive(Clone)]
pub(crate) struct Paged<K, V> {
    page: Page,
    authors: Arc<Authors>,
    src: Option<Arc<dyn PageSource>>,
    /// The records changed since the last commit of pages, by encoded key.
    over: BTreeMap<Vec<u8>, Slot<K, V>>,
    /// The source's records keyed before these bytes are removed (hidden until a commit
    /// deletes them), with the generation that removed them.
    floor: Option<(Vec<u8>, u64)>,
    len: usize,
    generation: u64,
    /// Set once pages were written: from then on a removal must leave a tombstone.
    written: bool,
    /// No source record is keyed after these bytes (`None`: not known), so looking up a
    /// newer key, as inserting a new id does, needs no read.
    upto: Option<Vec<u8>>,
    /// Source records read lately, decoded (see [`Hot`]).
    hot: Hot<V>,
}

/// Source records held in memory at most, per map: the few every operation reads, as
/// the directories above the one it works in.
const HOT_RECORDS: usize = 64;

/// Decoded copies of the source records read lately, by encoded key, so the records
/// that every file operation reads (its directory's ancestors) are not looked up and
/// decoded in the source each time. Emptied when full and when the source changes; the
/// overlay and the floor are looked at first, so a record changed since it was read
/// here is never served from it.
struct Hot<V>(parking_lot::Mutex<HashMap<Vec<u8>, V>>);

impl<V> Default for Hot<V> {
    fn default() -> Self {
        Hot(parking_lot::Mutex::new(HashMap::new()))
    }
}

impl<V> Clone for Hot<V> {
    fn clone(&self) -> Self {
        Hot::default()
    }
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
    /// An empty map held in memory, naming authors in `authors`.
    pub(crate) fn new(page: Page, authors: &Arc<Authors>) -> Self {
        Paged {
            page,
            authors: authors.clone(),
            src: None,
            over: BTreeMap::new(),
            floor: None,
            len: 0,
            generation: 0,
            written: false,
            upto: Some(Vec::new()),
            hot: Hot::default(),
        }
    }

    /// A map of `len` records settled in `src`, whose authors are named in `authors`.
    pub(crate) fn backed(
        page: Page,
        authors: &Arc<Authors>,
        src: Arc<dyn PageSource>,
        len: usize,
    ) -> Self {
        Paged {
            upto: src.upto(page),
            src: Some(src),
            len,
            written: true,
            ..Self::new(page, authors)
        }
    }

    /// The encoding of `key`; `None` if it names an author without a number (then no
    /// record has that key).
    fn encoded(&self, key: &K) -> Option<Vec<u8>> {
        let names = self.authors.0.read();
        let mut out = Vec::new();
        key.put(&mut |k| names.number.get(k).copied(), &mut out)?;
        Some(out)
    }

    /// The encoding of `key`, numbering the authors that have no number yet.
    fn encoded_adding(&self, key: &K) -> Vec<u8> {
        let mut names = self.authors.0.write();
        let mut out = Vec::new();
        key.put(&mut |k| Some(names.add(k)), &mut out)
            .expect("every author gets a number");
        out
    }

    /// True if the source's record under `kb` is removed by the floor.
    fn below_floor(&self, kb: &[u8]) -> bool {
        self.floor.as_ref().is_some_and(|(f, _)| kb < f.as_slice())
    }

    fn load(&self, key: &K, kb: &[u8]) -> Option<V> {
        if self.below_floor(kb) || self.upto.as_ref().is_some_and(|u| kb > u.as_slice()) {
            return None;
        }
        if let Some(v) = self.hot.0.lock().get(kb) {
            return Some(v.clone());
        }
        let src = self.src.as_ref()?;
        let bytes = src.get(self.page, kb)?;
        let decoded = decode_value::<K, V>(key, &bytes, &self.authors.0.read().keys);
        match decoded {
            Ok(v) => {
                let mut hot = self.hot.0.lock();
                if hot.len() >= HOT_RECORDS {
                    hot.clear();
                }
                hot.insert(kb.to_vec(), v.clone());
                Some(v)
            }
            Err(_) => {
                src.corrupt(self.page, kb);
                None
            }
        }
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: &K) -> Option<Got<'_, V>> {
        let kb = self.encoded(key)?;
        match self.over.get(&kb) {
            Some(slot) => slot.val.as_ref().map(Got::Mem),
            None => self.load(key, &kb).map(Got::Disk),
        }
    }

    /// True if `key` has a value.
    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// The value under `key`, for changing it.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let kb = self.encoded(key)?;
        let loaded = if self.over.contains_key(&kb) {
            None
        } else {
            Some(self.load(key, &kb)?)
        };
        touch(&mut self.over, self.generation, key, kb, loaded)
            .val
            .as_mut()
    }

    /// The value under `key`, inserting the default first if there is none.
    pub(crate) fn get_or_default(&mut self, key: &K) -> &mut V
    where
        V: Default,
    {
        let kb = self.encoded_adding(key);
        let loaded = if self.over.contains_key(&kb) {
            None
        } else {
            self.load(key, &kb)
        };
        let slot = touch(&mut self.over, self.generation, key, kb, loaded);
        if slot.val.is_none() {
            self.len += 1;
        }
        slot.val.get_or_insert_with(V::default)
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let kb = self.encoded_adding(&key);
        let slot = Slot {
            key,
            val: Some(value),
            generation: self.generation,
        };
        let old = match self.over.get_mut(&kb) {
            Some(held) => std::mem::replace(held, slot).val,
            None => {
                let old = self.load(&slot.key, &kb);
                self.over.insert(kb, slot);
                old
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`; returns its value.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let kb = self.encoded(key)?;
        let generation = self.generation;
        let (old, held) = match self.over.get_mut(&kb) {
            Some(slot) => {
                let old = slot.val.take()?;
                slot.generation = generation;
                (old, true)
            }
            None => (self.load(key, &kb)?, false),
        };
        self.len -= 1;
        if !self.written {
            self.over.remove(&kb);
        } else if !held {
            self.over.insert(
                kb,
                Slot {
                    key: key.clone(),
                    val: None,
                    generation,
                },
            );
        }
        Some(old)
    }

    /// Number of values.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Calls `f` on every value whose key starts with the id `first`, in the map's
    /// order, while it returns true.
    pub(crate) fn scan_under(&self, first: &OpId, f: impl FnMut(&K, Got<'_, V>) -> bool) {
        let mut prefix = Vec::new();
        let names = self.authors.0.read();
        if put_id(first, &mut |k| names.number.get(k).copied(), &mut prefix).is_none() {
            return;
        }
        drop(names);
        self.scan_prefix(&prefix, f);
    }

    /// Calls `f` on every value in the map's order while it returns true.
    pub(crate) fn each(&self, f: impl FnMut(&K, Got<'_, V>) -> bool) {
        self.scan_prefix(&[], f);
    }

    /// Calls `f` on every value at or after `from` in the map's order while it returns
    /// true.
    pub(crate) fn scan_from(&self, from: &K, f: impl FnMut(&K, Got<'_, V>) -> bool) {
        self.scan(&self.encoded_adding(from), &[], f);
    }

    fn scan_prefix(&self, prefix: &[u8], f: impl FnMut(&K, Got<'_, V>) -> bool) {
        self.scan(prefix, prefix, f);
    }

    /// Calls `f` on the values whose keys start with `prefix`, from key `start` on.
    fn scan(&self, start: &[u8], prefix: &[u8], mut f: impl FnMut(&K, Got<'_, V>) -> bool) {
        let mut mem = self
            .over
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
            .take_while(|(kb, _)| kb.starts_with(prefix))
            .peekable();
        if let Some(src) = &self.src {
            let keys = self.authors.keys();
            let mut going = true;
            let start = match &self.floor {
                Some((floor, _)) if floor.as_slice() > start => floor.as_slice(),
                _ => start,
            };
            src.scan(self.page, start, &mut |kb, vb| {
                if !kb.starts_with(prefix) {
                    return false;
                }
                while let Some((_, slot)) = mem.next_if(|(mk, _)| mk.as_slice() < kb) {
                    if let Some(v) = &slot.val {
                        if !f(&slot.key, Got::Mem(v)) {
                            going = false;
                            return false;
                        }
                    }
                }
                if let Some((_, slot)) = mem.next_if(|(mk, _)| mk.as_slice() == kb) {
                    going = slot.val.as_ref().is_none_or(|v| f(&slot.key, Got::Mem(v)));
                    return going;
                }
                let Some(k) = K::read(kb, &keys) else {
                    src.corrupt(self.page, kb);
                    return true;
                };
                going = match decode_value(&k, vb, &keys) {
                    Ok(v) => f(&k, Got::Disk(v)),
                    Err(_) => {
                        src.corrupt(self.page, kb);
                        true
                    }
                };
                going
            });
            if !going {
                return;
            }
        }
        for (_, slot) in mem {
            if let Some(v) = &slot.val {
                if !f(&slot.key, Got::Mem(v)) {
                    return;
                }
            }
        }
    }

    /// Removes every record whose key's first op id is stamped before `below`, calling
    /// `each` on its key; returns how many. Stored records are not read: they are hidden
    /// at once and deleted by one range delete at the next write of pages.
    pub(crate) fn remove_below(&mut self, below: Hlc, mut each: impl FnMut(&K)) -> usize {
        let mut floor = Vec::with_capacity(HLC_BYTES);
        floor.extend_from_slice(&below.wall_ms.to_be_bytes());
        floor.extend_from_slice(&below.counter.to_be_bytes());
        let mut removed = 0;
        if let Some(src) = &self.src {
            let keys = self.authors.keys();
            let start = self.floor.as_ref().map_or(&[][..], |(f, _)| f.as_slice());
            src.scan(self.page, start, &mut |kb, _| {
                if kb >= floor.as_slice() {
                    return false;
                }
                // A record in the overlay is counted with the overlay's.
                if !self.over.contains_key(kb) {
                    removed += 1;
                    match K::read(kb, &keys) {
                        Some(k) => each(&k),
                        None => src.corrupt(self.page, kb),
                    }
                }
                true
            });
        }
        let below = (Bound::Unbounded, Bound::Excluded(floor.as_slice()));
        if self.written {
            // A record cut for a commit not settled yet may be stored by it: once
            // written, the overlay keeps a tombstone. Earlier purges' tombstones are
            // walked past, only looked at: taking from each would move a whole record.
            for (_, slot) in self.over.range_mut::<[u8], _>(below) {
                if slot.val.is_some() {
                    slot.val = None;
                    removed += 1;
                    each(&slot.key);
                    slot.generation = self.generation;
                }
            }
        } else {
            let kept = self.over.split_off(floor.as_slice());
            for (_, slot) in std::mem::replace(&mut self.over, kept) {
                if slot.val.is_some() {
                    removed += 1;
                    each(&slot.key);
                }
            }
        }
        self.len -= removed;
        // A floor set again stamps every record stored until then hidden: only a higher
        // one may (a record stored after a lower floor's removal is live).
        if self.written && self.floor.as_ref().is_none_or(|(old, _)| *old < floor) {
            self.floor = Some((floor, self.generation));
        }
        removed
    }

    /// Removes the first records of the map's order, at most `most`, while `leading`
    /// holds for their keys; returns those keys.
    pub(crate) fn remove_first(&mut self, most: usize, leading: impl Fn(&K) -> bool) -> Vec<K> {
        let mut keys = Vec::new();
        self.each(|k, _| {
            let take = keys.len() < most && leading(k);
            if take {
                keys.push(k.clone());
            }
            take
        });
        for k in &keys {
            self.remove(k);
        }
        keys
    }

    pub(crate) fn all(&self) -> Vec<(K, V)> {
        let mut out = Vec::with_capacity(self.len);
        self.each(|k, v| {
            out.push((k.clone(), v.into_owned()));
            true
        });
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Appends every overlay record (changed since the last commit of pages) to `out`;
    /// returns the generation to pass to [`Paged::settle`] once they are committed.
    pub(crate) fn dirty(&mut self, out: &mut Vec<PageWrite>) -> u64 {
        let mut names = self.authors.0.write();
        let known = names.keys.len();
        let mut w = Writer::naming(&names.keys);
        if let Some((floor, _)) = &self.floor {
            out.push(PageWrite::Below(self.page, floor.clone()));
        }
        for (kb, slot) in &self.over {
            let value = slot.val.as_ref().map(|v| {
                v.put(&slot.key, &mut w);
                std::mem::take(&mut w.body)
            });
            out.push(PageWrite::Record(self.page, kb.clone(), value));
        }
        // The writer numbered the authors new to the table after the known ones, in
        // the order the table adds them.
        for k in &w.keys[known..] {
            names.add(k);
        }
        drop(names);
        if let (Some(upto), Some(last)) = (&mut self.upto, self.over.keys().next_back()) {
            if last > upto {
                upto.clone_from(last);
            }
        }
        self.written = true;
        let cut = self.generation;
        self.generation += 1;
        cut
    }

    /// After the records of generation `cut` were committed: reads them from `src` now.
    pub(crate) fn settle(&mut self, cut: u64, src: Arc<dyn PageSource>) {
        // Most often every record is settled: dropping the map whole spares `retain`'s
        // removal one by one (each shifting its leaf).
        if self.over.values().any(|slot| slot.generation > cut) {
            self.over.retain(|_, slot| slot.generation > cut);
        } else {
            self.over.clear();
        }
        if self.floor.as_ref().is_some_and(|(_, g)| *g <= cut) {
            self.floor = None;
        }
        self.hot.0.lock().clear();
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

    use super::{Authors, Page, PageSource, PageWrite, Paged};
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

        fn upto(&self, _: Page) -> Option<Vec<u8>> {
            Some(self.0.keys().next_back().cloned().unwrap_or_default())
        }
    }

    impl Committed {
        fn apply(&mut self, writes: Vec<PageWrite>) {
            for w in writes {
                match w {
                    PageWrite::Record(_, k, Some(v)) => drop(self.0.insert(k, v)),
                    PageWrite::Record(_, k, None) => drop(self.0.remove(&k)),
                    PageWrite::Below(_, k) => self.0 = self.0.split_off(&k),
                }
            }
        }
    }

    type Key = (OpId, String);

    /// Directories 2k and 2k + 1 share an HLC: their order by author need not be the
    /// order of their authors' numbers.
    fn key(dir: u8, name: u8) -> Key {
        let id = OpId {
            hlc: Hlc {
                wall_ms: u64::from(dir / 2) << 40,
                counter: u32::from(dir / 2),
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
        /// Change the record, inserting an empty one first if there is none.
        Upsert(u8, u8, u8),
        /// Remove the records stamped before directory `d`'s.
        Purge(u8),
        /// Cut the dirty records; they commit at the next `Settle`.
        Cut,
        Settle,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..4u8, 0..6u8, any::<u8>()).prop_map(|(d, n, v)| Step::Insert(d, n, v)),
            2 => (0..4u8, 0..6u8).prop_map(|(d, n)| Step::Remove(d, n)),
            2 => (0..4u8, 0..6u8, any::<u8>()).prop_map(|(d, n, v)| Step::Change(d, n, v)),
            2 => (0..4u8, 0..6u8, any::<u8>()).prop_map(|(d, n, v)| Step::Upsert(d, n, v)),
            1 => (0..5u8).prop_map(Step::Purge),
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
            map.scan_under(&key(d, 0).0, |k, v| {
                seen.push((k.clone(), v.clone()));
                true
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
            let authors = Authors::new(&[]);
            let mut map: Paged<Key, IdSet> = Paged::new(Page::Children, &authors);
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
                    Step::Upsert(d, n, v) => {
                        map.get_or_default(&key(d, n)).add(key(v, 1).0);
                        model.entry(key(d, n)).or_default().add(key(v, 1).0);
                    }
                    Step::Purge(d) => {
                        let below = key(d, 0).0.hlc;
                        let mut gone = Vec::new();
                        let n = map.remove_below(below, |k| gone.push(k.clone()));
                        let kept = model.split_off(&key(d & !1, 0));
                        let want: Vec<Key> = std::mem::replace(&mut model, kept).into_keys().collect();
                        gone.sort();
                        prop_assert_eq!(n, want.len());
                        prop_assert_eq!(gone, want);
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
            // As a store reopens: the authors' table as the header stored it.
            let stored = Authors::new(&authors.keys());
            let reopened: Paged<Key, IdSet> =
                Paged::backed(Page::Children, &stored, Arc::new(db.clone()), model.len());
            check(&reopened, &model);
        }
    }
}
