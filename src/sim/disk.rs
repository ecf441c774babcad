//! A redb storage backend over a real file that the simulator can crash: once the
//! switch is thrown every write and sync fails, so the database closes without
//! promoting its non-durable commits, and the next open recovers what the last durable
//! commit left on disk, as after a power cut.

use std::fs::OpenOptions;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{BackendError, Database, StorageBackend};

use crate::store::{Disk, StoreError};

/// A file backend with a crash switch.
#[derive(Debug)]
struct Crashable {
    file: FileBackend,
    crashed: Arc<AtomicBool>,
}

impl Crashable {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("simulated crash"));
        }
        Ok(())
    }
}

impl StorageBackend for Crashable {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// How a store opens its file so that throwing `crashed` later crashes it.
pub(crate) fn crashable(crashed: Arc<AtomicBool>) -> Disk {
    Arc::new(move |path: &Path| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let backend = Crashable {
            file: FileBackend::new(file)?,
            crashed: crashed.clone(),
        };
        Ok(Database::builder().create_with_backend(backend)?)
    })
}
