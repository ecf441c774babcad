//! The projection's page tables: the [`PageSource`] a paged `FsState` reads its
//! settled records from, and the write of a [`PageBatch`] in a commit.
//!
//! Each [`Page`] is a table `page_<name>.v3` of encoded key -> encoded value (see
//! `fs::paged`); the header goes to the `projection` table under the witness seq it
//! reflects, where snapshots of earlier builds were (a snapshot found there is decoded
//! and written as pages at open). A read fault (an I/O error, a record that does not
//! decode) is logged and kept: the next commit fails with it, so a projection that
//! missed a record is never persisted or built upon.

use std::sync::Arc;

use parking_lot::Mutex;
use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, Table, TableDefinition, TableError,
    WriteTransaction,
};

use crate::fs::{Page, PageBatch, PageSource};
use crate::store::error::StoreError;

/// The table of `page`.
pub(crate) fn table(page: Page) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(match page {
        Page::Entries => "page_entries.v3",
        Page::Children => "page_children.v3",
        Page::Subdirs => "page_subdirs.v3",
        Page::ByFile => "page_by_file.v3",
        Page::Files => "page_files.v3",
        Page::Applied => "page_applied.v3",
        Page::Superseded => "page_superseded.v3",
    })
}

/// The first read fault of a store's page tables, shared by its page sources.
pub(crate) type Fault = Arc<Mutex<Option<String>>>;

/// The page tables as of one commit.
pub(crate) struct TablePages {
    /// One per [`Page::ALL`]; `None` for a table not created yet (it is empty).
    tables: Vec<Option<ReadOnlyTable<&'static [u8], &'static [u8]>>>,
    fault: Fault,
}

impl TablePages {
    /// The page tables of the last commit of `db`.
    pub(crate) fn open(db: &Database, fault: Fault) -> Result<Self, StoreError> {
        Self::of(&db.begin_read()?, fault)
    }

    /// The page tables as `txn` sees them.
    pub(crate) fn of(txn: &ReadTransaction, fault: Fault) -> Result<Self, StoreError> {
        let mut tables = Vec::with_capacity(Page::ALL.len());
        for page in Page::ALL {
            tables.push(match txn.open_table(table(page)) {
                Ok(t) => Some(t),
                Err(TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            });
        }
        Ok(TablePages { tables, fault })
    }

    fn table(&self, page: Page) -> Option<&ReadOnlyTable<&'static [u8], &'static [u8]>> {
        let i = Page::ALL.iter().position(|p| *p == page)?;
        self.tables.get(i)?.as_ref()
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
        match self.table(page)?.get(key) {
            Ok(v) => v.map(|v| v.value().to_vec()),
            Err(e) => {
                self.failed(page, e.to_string());
                None
            }
        }
    }

    fn scan(&self, page: Page, from: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) {
        let Some(t) = self.table(page) else {
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
        for (_, key, value) in batch.writes.iter().filter(|w| w.0 == page) {
            match value {
                Some(v) => drop(t.insert(&key[..], &v[..])?),
                None => drop(t.remove(&key[..])?),
            }
        }
    }
    projection.retain(|_, _| false)?;
    projection.insert(seq, &batch.header[..])?;
    Ok(())
}

/// Fails with the first read fault of the page tables, if any.
pub(crate) fn check(fault: &Fault) -> Result<(), StoreError> {
    match &*fault.lock() {
        Some(why) => Err(StoreError::Corrupt(format!("projection pages: {why}"))),
        None => Ok(()),
    }
}
