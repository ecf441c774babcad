//! The reconciliation index's range summary, and the read-only view a negentropy
//! session runs over.
//!
//! The `index` table holds one row per applied intention, keyed `wall ms (BE) || hash`.
//! Next to it the store keeps a [`Summary`] in memory: the key space cut into blocks of
//! [`BLOCK_ITEMS`] to [`MAX_BLOCK_ITEMS`] rows, each with its row count and the
//! negentropy accumulator of its rows (the sum of their hashes mod 2^256). Block `i`
//! covers the keys from its `first` up to the next block's `first`; block 0 starts at
//! the zero key. Memory is one block per ~2 K rows.
//!
//! The summary is stored too, in `index_blocks`, written (the blocks that changed) in
//! the transaction that changes the index, so an open reads a few rows instead of
//! scanning every intention; an open that finds it missing, or not counting exactly
//! the index's rows, builds it by one scan and stores it.
//!
//! The actor updates a working summary inside each write transaction and publishes it
//! with the commit, under one lock; [`Index::view`] takes that lock to pair a read
//! transaction with the summary of the same commit. An [`IndexView`] is therefore one
//! consistent snapshot however long a session runs, and position lookups jump through
//! the blocks (prefix counts), reading at most one block's rows from redb.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use negentropy::{Bound, Id, Item, NegentropyStorageBase};
use parking_lot::Mutex;
use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    WriteTransaction,
};

use crate::hlc::Hlc;
use crate::ids::Hash;
use crate::store::error::StoreError;
use crate::store::pages::TablePages;
use crate::store::tables::{index_key, INDEX, INDEX_BLOCKS};
use crate::sync::reconcile::ReconcileStorage;

/// Rows per block when a summary is built by a scan, and in each half of a split.
pub(crate) const BLOCK_ITEMS: usize = 2048;
/// A block that grows past this many rows splits in two.
pub(crate) const MAX_BLOCK_ITEMS: usize = 2 * BLOCK_ITEMS;

/// An index key: HLC wall ms (big-endian) || intention hash.
type Key = [u8; 40];

/// The sum of 32-byte ids read as little-endian 256-bit numbers, mod 2^256 (the
/// negentropy fingerprint accumulator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sum([u64; 4]);

impl Sum {
    fn lanes(id: &[u8; 32]) -> [u64; 4] {
        std::array::from_fn(|i| u64::from_le_bytes(id[i * 8..i * 8 + 8].try_into().expect("8")))
    }

    /// Adds `id`.
    pub(crate) fn add(&mut self, id: &[u8; 32]) {
        self.add_sum(&Sum(Self::lanes(id)));
    }

    /// Adds another sum.
    pub(crate) fn add_sum(&mut self, other: &Sum) {
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(other.0) {
            let (s, c1) = a.overflowing_add(b);
            let (s, c2) = s.overflowing_add(u64::from(carry));
            *a = s;
            carry = c1 | c2;
        }
    }

    /// Subtracts another sum.
    pub(crate) fn sub_sum(&mut self, other: &Sum) {
        let mut borrow = false;
        for (a, b) in self.0.iter_mut().zip(other.0) {
            let (s, b1) = a.overflowing_sub(b);
            let (s, b2) = s.overflowing_sub(u64::from(borrow));
            *a = s;
            borrow = b1 | b2;
        }
    }

    /// Subtracts `id`.
    pub(crate) fn sub(&mut self, id: &[u8; 32]) {
        self.sub_sum(&Sum(Self::lanes(id)));
    }

    /// The sum stored as 32 little-endian bytes.
    fn from_bytes(bytes: &[u8; 32]) -> Sum {
        Sum(Self::lanes(bytes))
    }

    /// The sum as 32 little-endian bytes, the form negentropy hashes.
    pub(crate) fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, lane) in self.0.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&lane.to_le_bytes());
        }
        b
    }
}

/// A contiguous key range of the index: where it starts, its rows and their sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    first: Key,
    count: u64,
    sum: Sum,
}

/// The block summary of one index; cloning it is cheap (the blocks are shared).
#[derive(Clone, Debug, Default)]
pub(crate) struct Summary {
    blocks: Arc<Vec<Block>>,
}

fn hash_of(key: &Key) -> &[u8; 32] {
    key[8..].try_into().expect("32 bytes")
}

impl Summary {
    /// Builds the summary of `table` in one scan.
    pub(crate) fn build(table: &impl ReadableTable<Key, ()>) -> Result<Summary, StoreError> {
        let mut blocks: Vec<Block> = Vec::new();
        for row in table.iter()? {
            let key = row?.0.value();
            match blocks.last_mut() {
                Some(b) if b.count < BLOCK_ITEMS as u64 => {
                    b.count += 1;
                    b.sum.add(hash_of(&key));
                }
                _ => {
                    let mut sum = Sum::default();
                    sum.add(hash_of(&key));
                    let first = if blocks.is_empty() { [0; 40] } else { key };
                    blocks.push(Block {
                        first,
                        count: 1,
                        sum,
                    });
                }
            }
        }
        Ok(Summary {
            blocks: Arc::new(blocks),
        })
    }

    /// The summary stored in `blocks` for an index of `len` rows; `None` unless it
    /// counts exactly `len` rows in blocks that start at the zero key.
    fn load(
        blocks: &impl ReadableTable<Key, (u64, [u8; 32])>,
        len: u64,
    ) -> Result<Option<Summary>, StoreError> {
        let mut out = Vec::new();
        for row in blocks.iter()? {
            let (first, value) = row?;
            let (count, sum) = value.value();
            out.push(Block {
                first: first.value(),
                count,
                sum: Sum::from_bytes(&sum),
            });
        }
        let anchored = out.first().is_none_or(|b| b.first == [0; 40]);
        let counted =
            out.iter().all(|b| b.count > 0) && out.iter().map(|b| b.count).sum::<u64>() == len;
        Ok((anchored && counted).then(|| Summary {
            blocks: Arc::new(out),
        }))
    }

    /// Writes to `table`, which holds `before`, the blocks that differ from it.
    fn store(
        &self,
        before: &Summary,
        table: &mut Table<'_, Key, (u64, [u8; 32])>,
    ) -> Result<(), StoreError> {
        let mut old: BTreeMap<Key, &Block> = before.blocks.iter().map(|b| (b.first, b)).collect();
        for b in self.blocks.iter() {
            if old.remove(&b.first) != Some(b) {
                table.insert(b.first, (b.count, b.sum.to_bytes()))?;
            }
        }
        for gone in old.keys() {
            table.remove(gone)?;
        }
        Ok(())
    }

    /// The sum of every row's hash.
    pub(crate) fn sum(&self) -> Sum {
        let mut s = Sum::default();
        for b in self.blocks.iter() {
            s.add_sum(&b.sum);
        }
        s
    }

    /// The block whose range holds `key`.
    fn block_of(&self, key: &Key) -> usize {
        self.blocks
            .partition_point(|b| b.first <= *key)
            .saturating_sub(1)
    }

    /// Counts `key`, a row just inserted into `table`; splits its block when too big.
    pub(crate) fn insert(
        &mut self,
        table: &impl ReadableTable<Key, ()>,
        key: Key,
    ) -> Result<(), StoreError> {
        let blocks = Arc::make_mut(&mut self.blocks);
        if blocks.is_empty() {
            blocks.push(Block {
                first: [0; 40],
                count: 0,
                sum: Sum::default(),
            });
        }
        let i = self.block_of(&key);
        let blocks = Arc::make_mut(&mut self.blocks);
        let b = &mut blocks[i];
        b.count += 1;
        b.sum.add(hash_of(&key));
        if b.count > MAX_BLOCK_ITEMS as u64 {
            let upper = split(table, b)?;
            blocks.insert(i + 1, upper);
        }
        Ok(())
    }

    /// Uncounts `key`, a row just removed from `table`; drops its block when empty.
    pub(crate) fn remove(&mut self, key: Key) {
        if self.blocks.is_empty() {
            return;
        }
        let i = self.block_of(&key);
        let blocks = Arc::make_mut(&mut self.blocks);
        let b = &mut blocks[i];
        assert!(b.count > 0, "removing a key the summary does not hold");
        b.count -= 1;
        b.sum.sub(hash_of(&key));
        if b.count == 0 {
            blocks.remove(i);
            if let Some(b) = blocks.first_mut() {
                b.first = [0; 40];
            }
        }
    }
}

/// Cuts the upper half off `b`, reading its rows from `table`; returns that half.
fn split(table: &impl ReadableTable<Key, ()>, b: &mut Block) -> Result<Block, StoreError> {
    let keep = b.count / 2;
    let mut rows = table.range(b.first..)?.skip(keep as usize);
    let first = rows
        .next()
        .ok_or_else(|| StoreError::Corrupt("index block is shorter than its count".into()))??
        .0
        .value();
    let mut upper = Block {
        first,
        count: b.count - keep,
        sum: Sum::default(),
    };
    upper.sum.add(hash_of(&first));
    for row in rows.take(upper.count as usize - 1) {
        upper.sum.add(hash_of(&row?.0.value()));
    }
    b.count = keep;
    b.sum.sub_sum(&upper.sum);
    Ok(upper)
}

/// A store's index: the shared database, the summary of its last commit and the
/// projection's page tables as of that commit.
pub(crate) struct Index {
    /// The store's database, shared by the actor (writes) and views (reads) until
    /// the actor stops.
    db: Mutex<Option<Arc<Database>>>,
    /// The actor's summary, ahead of `published` while a write transaction is open.
    pub working: Mutex<Summary>,
    /// The summary matching the last committed transaction.
    published: Mutex<Summary>,
    /// The page tables of the last commit (moved on by every commit).
    pages: Arc<TablePages>,
}

impl Index {
    /// Wraps `db` with the stored summary of its index table, built by one scan (and
    /// stored) if it is missing or does not count the index's rows.
    pub(crate) fn open(db: Database) -> Result<Index, StoreError> {
        let read = db.begin_read()?;
        let table = match read.open_table(INDEX) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Index::wrap(db, Summary::default())
            }
            Err(e) => return Err(e.into()),
        };
        let stored = match read.open_table(INDEX_BLOCKS) {
            Ok(blocks) => Summary::load(&blocks, table.len()?)?,
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let summary = match stored {
            Some(summary) => summary,
            None => {
                let summary = Summary::build(&table)?;
                let txn = db.begin_write()?;
                txn.delete_table(INDEX_BLOCKS)?;
                summary.store(&Summary::default(), &mut txn.open_table(INDEX_BLOCKS)?)?;
                txn.commit()?;
                summary
            }
        };
        drop((table, read));
        Index::wrap(db, summary)
    }

    fn wrap(db: Database, summary: Summary) -> Result<Index, StoreError> {
        Ok(Index {
            pages: Arc::new(TablePages::open(&db)?),
            db: Mutex::new(Some(Arc::new(db))),
            working: Mutex::new(summary.clone()),
            published: Mutex::new(summary),
        })
    }

    /// The projection's page tables as of the last commit.
    pub(crate) fn pages(&self) -> Arc<TablePages> {
        self.pages.clone()
    }

    /// The database, unless the store has shut down.
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db.lock().clone().ok_or(StoreError::Closed)
    }

    /// Lets the database close once the last transaction on it ends.
    pub(crate) fn close(&self) {
        self.pages.close();
        self.db.lock().take();
    }

    /// Commits `txn` with the blocks of the working summary that changed, publishes
    /// that summary and moves the page tables to the new commit.
    pub(crate) fn commit(&self, txn: WriteTransaction) -> Result<(), StoreError> {
        let mut published = self.published.lock();
        let working = self.working.lock().clone();
        if !Arc::ptr_eq(&working.blocks, &published.blocks) {
            working.store(&published, &mut txn.open_table(INDEX_BLOCKS)?)?;
        }
        txn.commit()?;
        *published = working;
        drop(published);
        if let Some(db) = self.db.lock().clone() {
            self.pages.refresh(&db);
        }
        Ok(())
    }

    /// A snapshot of the index as of the last commit.
    pub(crate) fn view(&self) -> Result<IndexView, StoreError> {
        let published = self.published.lock();
        let table = self.db()?.begin_read()?.open_table(INDEX)?;
        let summary = published.clone();
        drop(published);
        IndexView::new(table, summary)
    }
}

/// A consistent, read-only snapshot of a store's reconciliation index: the items
/// `(wall ms, intention hash)` in order, for a negentropy session.
pub struct IndexView {
    table: ReadOnlyTable<Key, ()>,
    summary: Summary,
    /// Position of each block's first row.
    starts: Vec<u64>,
    len: u64,
    /// The first storage error met inside a negentropy callback that cannot return it.
    fault: Mutex<Option<StoreError>>,
    /// An anchor `(position, key)`: the rows from `key` on start at `position`.
    /// Negentropy reads mostly in ascending order, so reads resume from the last one
    /// instead of from their block's start.
    cursor: Mutex<(u64, Key)>,
}

impl std::fmt::Debug for IndexView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexView")
            .field("len", &self.len)
            .field("blocks", &self.starts.len())
            .finish()
    }
}

impl ReconcileStorage for IndexView {
    type Fault = StoreError;

    /// Takes the storage error that made a negentropy call fail, if one did.
    fn take_fault(&self) -> Option<StoreError> {
        self.fault.lock().take()
    }
}

/// A reconciliation session over a store's index snapshot (the simulator's direct
/// exchange between stores).
#[cfg(any(test, feature = "bench"))]
pub(crate) type IndexSession = crate::sync::reconcile::Session<IndexView>;

/// The item an index key names.
fn item_of(key: &Key) -> Item {
    Item::with_timestamp_and_id(
        u64::from_be_bytes(key[..8].try_into().expect("8 bytes")),
        Id::from_byte_array(*hash_of(key)),
    )
}

/// The index key of an item (or of a bound's zero-padded item).
fn key_of(item: &Item) -> Key {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&item.timestamp.to_be_bytes());
    k[8..].copy_from_slice(item.id.as_bytes());
    k
}

impl IndexView {
    fn new(table: ReadOnlyTable<Key, ()>, summary: Summary) -> Result<IndexView, StoreError> {
        let mut starts = Vec::with_capacity(summary.blocks.len());
        let mut len = 0;
        for b in summary.blocks.iter() {
            starts.push(len);
            len += b.count;
        }
        if len != table.len()? {
            return Err(StoreError::Corrupt(format!(
                "index summary counts {len} rows, the table has {}",
                table.len()?
            )));
        }
        Ok(IndexView {
            table,
            summary,
            starts,
            len,
            fault: Mutex::new(None),
            cursor: Mutex::new((0, [0; 40])),
        })
    }

    /// Items in the snapshot.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the snapshot holds no item.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Negentropy's fingerprint of the whole set (16 bytes), from the block sums alone:
    /// equal digests and lengths mean equal sets, so a peer can skip a session.
    pub fn digest(&self) -> [u8; 16] {
        let sums = SumStorage {
            sum: self.summary.sum(),
            len: self.len as usize,
        };
        let fp = sums
            .fingerprint(0, sums.len)
            .expect("a sum storage cannot fail");
        *fp
    }

    fn record(&self, e: StoreError) -> negentropy::Error {
        self.fault.lock().get_or_insert(e);
        negentropy::Error::BadRange
    }

    /// Rows from position `at` on, starting the read at the block that holds it.
    /// Rows from position `at` on, read from the nearest anchor before it: the block
    /// that holds it, or the cursor when that is closer.
    fn rows_from(
        &self,
        at: u64,
    ) -> Result<impl Iterator<Item = Result<Key, StoreError>>, StoreError> {
        let b = self.starts.partition_point(|s| *s <= at) - 1;
        let cursor = *self.cursor.lock();
        let (pos, from) = if cursor.0 <= at && cursor.0 >= self.starts[b] {
            cursor
        } else {
            (self.starts[b], self.summary.blocks[b].first)
        };
        let rows = self.table.range(from..)?;
        Ok(rows.skip((at - pos) as usize).map(|r| Ok(r?.0.value())))
    }

    /// Position of the first row not less than `key`.
    fn position(&self, key: &Key) -> Result<u64, StoreError> {
        if self.len == 0 {
            return Ok(0);
        }
        let b = self.summary.block_of(key);
        let cursor = *self.cursor.lock();
        let (mut at, from) = if cursor.1 <= *key && cursor.0 >= self.starts[b] {
            cursor
        } else {
            (self.starts[b], self.summary.blocks[b].first)
        };
        for row in self.table.range(from..*key)? {
            row?;
            at += 1;
        }
        *self.cursor.lock() = (at, *key);
        Ok(at)
    }
}

impl NegentropyStorageBase for IndexView {
    fn size(&self) -> Result<usize, negentropy::Error> {
        Ok(self.len as usize)
    }

    fn get_item(&self, i: usize) -> Result<Option<Item>, negentropy::Error> {
        if i as u64 >= self.len {
            return Ok(None);
        }
        let mut rows = self.rows_from(i as u64).map_err(|e| self.record(e))?;
        match rows.next() {
            Some(Ok(key)) => {
                *self.cursor.lock() = (i as u64, key);
                Ok(Some(item_of(&key)))
            }
            Some(Err(e)) => Err(self.record(e)),
            None => Err(self.record(StoreError::Corrupt("index row is missing".into()))),
        }
    }

    fn iterate(
        &self,
        begin: usize,
        end: usize,
        cb: &mut dyn FnMut(Item, usize) -> Result<bool, negentropy::Error>,
    ) -> Result<(), negentropy::Error> {
        if begin > end || end as u64 > self.len {
            return Err(negentropy::Error::BadRange);
        }
        if begin == end {
            return Ok(());
        }
        let rows = self.rows_from(begin as u64).map_err(|e| self.record(e))?;
        let mut at = begin;
        let mut last = None;
        let mut more = true;
        for row in rows.take(end - begin) {
            let key = row.map_err(|e| self.record(e))?;
            last = Some((at as u64, key));
            more = cb(item_of(&key), at)?;
            if !more {
                break;
            }
            at += 1;
        }
        if let Some(last) = last {
            *self.cursor.lock() = last;
        }
        if more && at < end {
            return Err(self.record(StoreError::Corrupt("index rows are missing".into())));
        }
        Ok(())
    }

    fn find_lower_bound(&self, first: usize, last: usize, value: &Bound) -> usize {
        match self.position(&key_of(&value.item)) {
            Ok(at) => (at as usize).clamp(first, last),
            Err(e) => {
                self.record(e);
                last
            }
        }
    }
}

/// A stand-in storage of `len` items whose ids sum to `sum`, so negentropy's own
/// fingerprint code hashes a cached sum (its accumulator type is private).
struct SumStorage {
    sum: Sum,
    len: usize,
}

impl NegentropyStorageBase for SumStorage {
    fn size(&self) -> Result<usize, negentropy::Error> {
        Ok(self.len)
    }

    fn get_item(&self, _: usize) -> Result<Option<Item>, negentropy::Error> {
        Err(negentropy::Error::BadRange)
    }

    fn iterate(
        &self,
        begin: usize,
        end: usize,
        cb: &mut dyn FnMut(Item, usize) -> Result<bool, negentropy::Error>,
    ) -> Result<(), negentropy::Error> {
        if begin < end {
            cb(
                Item::with_timestamp_and_id(0, Id::from_byte_array(self.sum.to_bytes())),
                begin,
            )?;
        }
        Ok(())
    }

    fn find_lower_bound(&self, first: usize, _: usize, _: &Bound) -> usize {
        first
    }
}

/// A reconciliation index in a redb file of its own, without a store around it: for
/// benchmarks and tests that need millions of items without signing intentions.
pub struct BareIndex {
    index: Index,
}

impl BareIndex {
    /// Creates an empty index file at `path`.
    pub fn create(path: &Path) -> Result<BareIndex, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(INDEX)?;
        txn.commit()?;
        Ok(BareIndex {
            index: Index::open(db)?,
        })
    }

    /// Opens the index file at `path`, building its summary as a store's open does.
    pub fn open(path: &Path) -> Result<BareIndex, StoreError> {
        Ok(BareIndex {
            index: Index::open(Database::open(path)?)?,
        })
    }

    /// Inserts `(wall ms, hash)` items in one transaction; known ones are ignored.
    pub fn insert(&self, items: impl IntoIterator<Item = (u64, Hash)>) -> Result<(), StoreError> {
        self.write(items, true)
    }

    /// Removes `(wall ms, hash)` items in one transaction; unknown ones are ignored.
    pub fn remove(&self, items: impl IntoIterator<Item = (u64, Hash)>) -> Result<(), StoreError> {
        self.write(items, false)
    }

    fn write(
        &self,
        items: impl IntoIterator<Item = (u64, Hash)>,
        insert: bool,
    ) -> Result<(), StoreError> {
        let txn = self.index.db()?.begin_write()?;
        {
            let mut table = txn.open_table(INDEX)?;
            let mut summary = self.index.working.lock();
            for (ms, hash) in items {
                let key = index_key(
                    Hlc {
                        wall_ms: ms,
                        counter: 0,
                    },
                    &hash,
                );
                if insert {
                    if table.insert(key, ())?.is_none() {
                        summary.insert(&table, key)?;
                    }
                } else if table.remove(key)?.is_some() {
                    summary.remove(key);
                }
            }
        }
        self.index.commit(txn)
    }

    /// A snapshot of the index as of the last insert or remove.
    pub fn view(&self) -> Result<IndexView, StoreError> {
        self.index.view()
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Checks that `path`'s stored summary counts and sums exactly the rows of each
    /// block's range; returns its number of blocks.
    fn check_stored(path: &Path) -> usize {
        let db = Database::open(path).unwrap();
        let read = db.begin_read().unwrap();
        let table = read.open_table(INDEX).unwrap();
        let blocks = read.open_table(INDEX_BLOCKS).unwrap();
        let summary = Summary::load(&blocks, table.len().unwrap())
            .unwrap()
            .expect("stored summary counts the index");
        for (i, b) in summary.blocks.iter().enumerate() {
            let (mut count, mut sum) = (0, Sum::default());
            let rows = match summary.blocks.get(i + 1) {
                Some(next) => table.range(b.first..next.first).unwrap(),
                None => table.range(b.first..).unwrap(),
            };
            for row in rows {
                count += 1;
                sum.add(hash_of(&row.unwrap().0.value()));
            }
            assert_eq!((count, sum), (b.count, b.sum), "block {i}");
        }
        summary.blocks.len()
    }

    #[test]
    fn the_stored_summary_follows_every_commit_and_a_stale_one_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let mut rng = StdRng::seed_from_u64(7);
        let items: Vec<(u64, Hash)> = (0..12_000)
            .map(|_| (rng.random_range(0..5_000), Hash(rng.random())))
            .collect();
        let index = BareIndex::create(&path).unwrap();
        for chunk in items.chunks(1_000) {
            index.insert(chunk.iter().copied()).unwrap();
        }
        index.remove(items.iter().step_by(3).copied()).unwrap();
        let digest = index.view().unwrap().digest();
        drop(index);
        assert!(check_stored(&path) > 2, "blocks split and were stored");

        let reopened = BareIndex::open(&path).unwrap();
        assert_eq!(reopened.view().unwrap().digest(), digest);
        drop(reopened);

        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut blocks = txn.open_table(INDEX_BLOCKS).unwrap();
                let (first, (count, sum)) = {
                    let last = blocks.last().unwrap().unwrap();
                    (last.0.value(), last.1.value())
                };
                blocks.insert(first, (count + 1, sum)).unwrap();
            }
            txn.commit().unwrap();
        }
        let rebuilt = BareIndex::open(&path).unwrap();
        assert_eq!(rebuilt.view().unwrap().digest(), digest);
        drop(rebuilt);
        check_stored(&path);
    }
}
