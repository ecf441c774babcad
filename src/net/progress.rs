//! What each store still has to fetch: the driver keeps one [`Backlog`] per store,
//! counted once when its replica starts, then updated for the files each apply changed
//! and for each blob that arrives (downloaded or patched), so `status` reads totals.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::cas::{Backlog, Content, Progress};
use crate::ids::{FileId, Hash};
use crate::net::Shared;
use crate::store::Store;

/// The backlog of `store`, created empty on first use.
fn backlog(shared: &Shared, store: &Store) -> Arc<Mutex<Backlog>> {
    shared
        .backlogs
        .lock()
        .entry(store.id())
        .or_default()
        .clone()
}

/// Counts again what `files` of `store` need. Blocks on the content store: call it off
/// the async workers.
pub(crate) fn recount(shared: &Shared, store: &Store, files: Vec<FileId>) {
    count(shared, store, store.pieces_of(Some(files)), false);
}

/// Counts what files of `store` need from their blob `pieces`; `all`: these are every
/// file that has any, so the others are dropped. Blocks on the content store.
pub(crate) fn count(
    shared: &Shared,
    store: &Store,
    pieces: Vec<(FileId, Vec<Content>)>,
    all: bool,
) {
    let backlog = backlog(shared, store);
    if all {
        let live: std::collections::HashSet<FileId> = pieces.iter().map(|(f, _)| *f).collect();
        let mut b = backlog.lock();
        for gone in b.files().into_iter().filter(|f| !live.contains(f)) {
            b.set(gone, Vec::new());
        }
    }
    let cas = shared.node.cas();
    for (file, pieces) in pieces {
        // Counted under the lock: a blob completing meanwhile is either seen complete
        // here or struck off by its arrival, which takes the lock after.
        let mut b = backlog.lock();
        match cas.needs(&pieces) {
            Ok(needs) => b.set(file, needs),
            Err(e) => tracing::debug!("cannot count what a file needs: {e}"),
        }
    }
}

/// Blobs `hashes` of `store` arrived: strikes them off, and counts again the files
/// that waited for one as their manifest; returns their total size.
pub(crate) async fn arrived(shared: &Arc<Shared>, store: &Store, hashes: Vec<Hash>) -> u64 {
    let blobs = shared.node.cas().blobs();
    let mut sized = Vec::with_capacity(hashes.len());
    for hash in hashes {
        let size = match blobs.status(crate::cas::to_iroh(hash)).await {
            Ok(iroh_blobs::api::proto::BlobStatus::Complete { size }) => size,
            _ => 0,
        };
        sized.push((hash, size));
    }
    let total = sized.iter().map(|(_, size)| size).sum();
    let again: Vec<FileId> = {
        let backlog = backlog(shared, store);
        let mut b = backlog.lock();
        let now = Instant::now();
        sized
            .into_iter()
            .flat_map(|(h, size)| b.arrived(h, size, now))
            .collect()
    };
    if !again.is_empty() {
        let (sh, st) = (shared.clone(), store.clone());
        if let Err(e) = crate::net::blocking(move || recount(&sh, &st, again)).await {
            tracing::debug!("cannot count what fetched manifests need: {e}");
        }
    }
    total
}

/// What `store` still has to fetch.
pub(crate) fn progress(shared: &Shared, store: &Store) -> Progress {
    backlog(shared, store).lock().progress(Instant::now())
}
