//! A store's projection behind its lock, with the counts of its visible tree kept until
//! the projection next changes. Counting reads every visible entry's record, and `status`
//! asks for the counts often (the daemon's callers poll it: readiness checks, the status
//! page, clone progress) while the tree mostly stands still.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::fs::{FsState, FsStats};

/// The projection of a store; every write access counts as a change.
pub(crate) struct Projection {
    state: RwLock<FsState>,
    /// Bumped by every write access, under the write lock.
    version: AtomicU64,
    /// Bumped by every write access that applies a received intention, under the write
    /// lock (see [`Projection::received`]).
    received: AtomicU64,
    /// The counts of the visible tree, with the version they were taken at.
    stats: Mutex<Option<(u64, FsStats)>>,
}

impl Projection {
    /// `state` behind the lock, with no counts taken yet.
    pub(crate) fn new(state: FsState) -> Self {
        Projection {
            state: RwLock::new(state),
            version: AtomicU64::new(0),
            received: AtomicU64::new(0),
            stats: Mutex::new(None),
        }
    }

    /// Shared access.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, FsState> {
        self.state.read()
    }

    /// Exclusive access; forgets the counts.
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, FsState> {
        let guard = self.state.write();
        // Under the write lock: a reader holding the read lock sees a version that
        // cannot move until it lets go.
        self.version.fetch_add(1, Ordering::Relaxed);
        guard
    }

    /// Exclusive access to apply a received intention: also counted in
    /// [`Projection::received`].
    pub(crate) fn write_received(&self) -> RwLockWriteGuard<'_, FsState> {
        let guard = self.write();
        self.received.fetch_add(1, Ordering::Relaxed);
        guard
    }

    /// Write accesses that applied received intentions so far. A reader that saw the
    /// effect of one reads a count at least as high: it was raised under the write lock.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Counts over the visible tree: kept from the last call unless the projection
    /// changed since, else counted (see [`FsState::stats`]).
    pub(crate) fn stats(&self) -> FsStats {
        let state = self.state.read();
        let version = self.version.load(Ordering::Relaxed);
        if let Some((at, kept)) = *self.stats.lock() {
            if at == version {
                return kept;
            }
        }
        let counted = state.stats();
        *self.stats.lock() = Some((version, counted));
        counted
    }
}
