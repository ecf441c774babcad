//! Waiting for absent blobs: a read that needs a blob the local store lacks asks the
//! fetch hook (installed by the network layer) for it, then waits until the store holds
//! it completely or [`READ_WAIT`] passes. Without a hook it fails at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use iroh_blobs::api::Store;
use tokio::runtime::Handle;

use crate::ids::{Hash, StoreId};

use super::store::to_iroh;
use super::CasError;

/// Longest a read waits for one absent blob to arrive before failing with `Absent`.
pub const READ_WAIT: Duration = Duration::from_secs(20);

/// Blobs a read needs that the local store lacks, to be fetched from the store's members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    /// The store whose content refers to the blobs (its members may serve them).
    pub store: StoreId,
    /// The blobs, raw (chunks and manifests are both raw blobs).
    pub hashes: Vec<iroh_blobs::Hash>,
}

/// The fetch hook: starts fetching and returns at once (it may be called on a
/// runtime thread, so it must not block).
pub type Fetcher = Arc<dyn Fn(FetchRequest) + Send + Sync>;

/// Asks `fetcher` for blob `hash` of `store` and waits up to `wait` for the local store
/// to hold it completely.
pub(crate) fn wait_for(
    rt: &Handle,
    blobs: &Store,
    fetcher: Option<&Fetcher>,
    wait: Duration,
    store: StoreId,
    hash: Hash,
) -> Result<(), CasError> {
    let Some(fetcher) = fetcher else {
        return Err(CasError::Absent {
            hash,
            waited: Duration::ZERO,
        });
    };
    let start = Instant::now();
    fetcher(FetchRequest {
        store,
        hashes: vec![to_iroh(hash)],
    });
    // The first item observed is the blob's current state, so a blob that completed
    // before observation began is seen at once.
    let observed = rt.block_on(async {
        let complete = blobs.observe(to_iroh(hash)).await_completion();
        tokio::time::timeout(wait, complete).await
    });
    match observed {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(CasError::Blobs(e.into())),
        Err(_) => Err(CasError::Absent {
            hash,
            waited: start.elapsed(),
        }),
    }
}
