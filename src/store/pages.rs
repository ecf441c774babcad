//! The projection's page tables: the [`PageSource`] a paged `FsState` reads its
//! settled records from, and the write of a [`PageBatch`] in a commit.
//!
//! Each [`Page`] is a table `page_<name>.v4` of encoded key -> encoded value (see
//! `fs::paged`); the header goes to the `projection` table under the witness seq it
//! reflects, where snapshots of earlier builds were (a snapshot found there is decoded
//! and written as pages at open). A read fault (an I/O error, a record that does not
//! decode) is logged and kept: the next commit fails with it, so a projection that
//! missed a record is never persisted or built upon.

use std::sync::Arc;

use parking_lot::Mutex;
use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, TableError, WriteTransaction,
};

use crate::fs::{Page, PageBatch, PageSource, PageWrite};
use crate::store::error::StoreError;

/// The table of `page`.
pub(crate) fn table(page: Page) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(match page {
        Page::Entries => "page_entries.v4",
        Page::Children => "page_children.v4",
        Page::Subdirs => "page_subdirs.v4",
        Page::ByFile => "page_by_file.v4",
        Page::Files => "page_files.v4",
        Page::Applied => "page_applied.v4",
        Page::Superseded => "page_superseded.v4",
        Page::Log => "page_log.v4",
        Page::Removals => "page_removals.v4",
        Page::Replacements => "page_replacements.v4",
    })
}

/// The place of `page` in [`Page::ALL`].
fn position(page: Page) -> usize {
    Page::ALL
        .iter()
        .position(|p| *p == page)
        .expect("Page::ALL holds every page")
}

/// The first read fault of a store's page tables.
type Fault = Mutex<Option<String>>;

/// One open table per [`Page::ALL`] as of one commit; `None` for a table not created yet
/// (it is empty).
type Snapshot = Vec<Option<ReadOnlyTable<&'static [u8], &'static [u8]>>>;

/// The page tables of a store as of its last commit: the source of every paged map of
/// its projection.
///
/// The store moves it to each commit ([`TablePages::refresh`]), so it pins one read
/// transaction, of the latest commit: redb reuses a page freed by a commit only once no
/// read transaction older than that commit is open, and a source pinned at the last
/// write of pages (up to `PAGES_EVERY` old) kept every page freed since then in the file
/// (1.4 KB per file at 20,000 files written through the mount, two thirds of the file).
/// Reading a later commit is the same as reading the one the pages were written in:
/// only a write of pages changes the page tables, and until its records settle the
/// projection holds every one of them in memory, ahead of its source.
pub(crate) struct TablePages {
    snapshot: Mutex<Arc<Snapshot>>,
    fault: Fault,
}

impl TablePages {
    /// The page tables of the last commit of `db`.
    pub(crate) fn open(db: &Database) -> Result<Self, StoreError> {
        Ok(TablePages {
            snapshot: Mutex::new(Arc::new(Self::snapshot(&db.begin_read()?)?)),
            fault: Fault::default(),
        })
    }

    fn snapshot(txn: &ReadTransaction) -> Result<Snapshot, StoreError> {
        let mut tables = Vec::with_capacity(Page::ALL.len());
        for page in Page::ALL {
            tables.push(match txn.open_table(table(page)) {
                Ok(t) => Some(t),
                Err(TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            });
        }
        Ok(tables)
    }

    /// Moves to the last commit of `db`, releasing the read transaction held so far. A
    /// failure is kept as a read fault (the commit it follows stands).
    pub(crate) fn refresh(&self, db: &Database) {
        match db
            .begin_read()
            .map_err(StoreError::from)
            .and_then(|txn| Self::snapshot(&txn))
        {
            Ok(tables) => *self.snapshot.lock() = Arc::new(tables),
            Err(e) => drop(self.fault.lock().get_or_insert(format!("refresh: {e}"))),
        }
    }

    /// Releases the read transaction, so the database can close: reads find nothing.
    pub(crate) fn close(&self) {
        *self.snapshot.lock() = Arc::new(Vec::new());
    }

    /// Fails with the first read fault of the page tables, if any.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        match &*self.fault.lock() {
            Some(why) => Err(StoreError::Corrupt(format!("projection pages: {why}"))),
            None => Ok(()),
        }
    }

    /// The current snapshot; it stays open while held, whatever a refresh does.
    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.lock().clone()
    }

    fn failed(&self, page: Page, why: String) {
        tracing::error!(?page, "projection page read failed: {why}");
        self.fault
            .lock()
            .get_or_insert(format!("{page:?} page: {why}"));
    }
}

impl PageSource for TablePages {
    fn get(&self, page: Page, key: &[u8]) -> Option<Vec<u8>> {
        let snapshot = self.current();
        match snapshot.get(position(page))?.as_ref()?.get(key) {
            Ok(v) => v.map(|v| v.value().to_vec()),
            Err(e) => {
                self.failed(page, e.to_string());
                None
            }
        }
    }

    fn scan(&self, page: Page, from: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) {
        let snapshot = self.current();
        let Some(t) = snapshot.get(position(page)).and_then(Option::as_ref) else {
            return;
        };
        let range = match t.range(from..) {
            Ok(r) => r,
            Err(e) => return self.failed(page, e.to_string()),
        };
        for row in range {
            match row {
                Ok((k, v)) => {
                    if !f(k.value(), v.value()) {
                        return;
                    }
                }
                Err(e) => return self.failed(page, e.to_string()),
            }
        }
    }

    fn upto(&self, page: Page) -> Option<Vec<u8>> {
        let snapshot = self.current();
        let Some(t) = snapshot.get(position(page))?.as_ref() else {
            return Some(Vec::new());
        };
        let last = match t.last() {
            Ok(last) => Some(last.map(|(k, _)| k.value().to_vec()).unwrap_or_default()),
            Err(e) => {
                self.failed(page, e.to_string());
                None
            }
        };
        last
    }

    fn corrupt(&self, page: Page, key: &[u8]) {
        self.failed(
            page,
            format!("record {} does not decode", crate::identity::hex(key)),
        );
    }
}

/// Writes `batch` (reflecting witness `seq`) in `txn`, its header to `projection`.
pub(crate) fn write(
    txn: &WriteTransaction,
    projection: &mut Table<'_, u64, &'static [u8]>,
    seq: u64,
    batch: &PageBatch,
) -> Result<(), StoreError> {
    for page in Page::ALL {
        let mut t = txn.open_table(table(page))?;
        if batch.clear {
            t.retain(|_, _| false)?;
        }
        for write in batch.writes.iter().filter(|w| w.page() == page) {
            match write {
                PageWrite::Record(_, key, Some(v)) => drop(t.insert(&key[..], &v[..])?),
                PageWrite::Record(_, key, None) => drop(t.remove(&key[..])?),
                PageWrite::Below(_, key) => t.retain_in(..&key[..], |_, _| false)?,
            }
        }
    }
    projection.retain(|_, _| false)?;
    projection.insert(seq, &batch.header[..])?;
    Ok(())
}
