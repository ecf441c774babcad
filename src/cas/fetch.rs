//! Waiting for absent blobs: a read that needs a blob the local store lacks asks the
//! fetch hook (installed by the network layer) for it, then waits until the store holds
//! it completely or [`READ_WAIT`] passes. Without a hook it fails at once.
//!
//! What is still to fetch: a [`Backlog`] holds, per file, the absent blobs its current
//! versions need ([`Cas::needs`](super::Cas::needs)), updated when a file changes and
//! when a blob arrives, so its totals are read without looking at any file.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iroh_blobs::api::Store;
use tokio::runtime::Handle;

use crate::ids::{FileId, Hash, StoreId};

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

/// Window over which [`Backlog::progress`] measures the arrival rate: long enough to
/// smooth one chunk's burst, short enough to show a stall within seconds.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// An absent blob and the content bytes it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// The blob.
    pub hash: Hash,
    /// A chunk's length, or for a manifest the size of the whole content it describes.
    pub bytes: u64,
    /// The blob is a manifest (its arrival reveals the chunks still needed).
    pub manifest: bool,
}

/// How much content is still to fetch, as `status` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Files whose current versions need absent blobs.
    pub files: u64,
    /// Content bytes those blobs stand for (a blob shared by two files counts twice).
    pub bytes: u64,
    /// Bytes of blobs that arrived per second over the last [`RATE_WINDOW`].
    pub rate: u64,
    /// `bytes / rate`, when something is arriving.
    pub eta: Option<Duration>,
}

/// The absent blobs of one store's current versions, per file, with running totals.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    files: HashMap<FileId, Vec<Need>>,
    /// Files that need each absent blob.
    waiting: HashMap<Hash, HashSet<FileId>>,
    bytes: u64,
    /// Sizes of blobs that arrived, with when, within the last [`RATE_WINDOW`].
    arrivals: VecDeque<(Instant, u64)>,
}

impl Backlog {
    /// Replaces what `file` needs (empty: nothing, or the file is gone).
    pub(crate) fn set(&mut self, file: FileId, needs: Vec<Need>) {
        if let Some(old) = self.files.remove(&file) {
            for n in old {
                self.bytes -= n.bytes;
                self.unwait(n.hash, file);
            }
        }
        if needs.is_empty() {
            return;
        }
        for n in &needs {
            self.bytes += n.bytes;
            self.waiting.entry(n.hash).or_default().insert(file);
        }
        self.files.insert(file, needs);
    }

    /// Blob `hash` of `size` bytes arrived at `now`: chunks are struck off the files that
    /// waited for them; the files that waited for it as a manifest are returned, to be
    /// looked at again with [`Backlog::set`] (their chunks are known now).
    pub(crate) fn arrived(&mut self, hash: Hash, size: u64, now: Instant) -> Vec<FileId> {
        self.arrivals.push_back((now, size));
        self.expire(now);
        let Some(files) = self.waiting.remove(&hash) else {
            return Vec::new();
        };
        let mut again = Vec::new();
        for file in files {
            let Some(needs) = self.files.get_mut(&file) else {
                continue;
            };
            let mut bytes = 0;
            needs.retain(|n| {
                let keep = n.hash != hash;
                if !keep {
                    bytes += n.bytes;
                    if n.manifest {
                        again.push(file);
                    }
                }
                keep
            });
            self.bytes -= bytes;
            if needs.is_empty() {
                self.files.remove(&file);
            }
        }
        again.sort();
        again.dedup();
        again
    }

    /// The files that need something.
    pub(crate) fn files(&self) -> Vec<FileId> {
        self.files.keys().copied().collect()
    }

    /// The totals now.
    pub(crate) fn progress(&mut self, now: Instant) -> Progress {
        self.expire(now);
        let arrived: u64 = self.arrivals.iter().map(|(_, b)| b).sum();
        let rate = arrived / RATE_WINDOW.as_secs();
        let eta =
            (rate > 0 && self.bytes > 0).then(|| Duration::from_secs(self.bytes.div_ceil(rate)));
        Progress {
            files: self.files.len() as u64,
            bytes: self.bytes,
            rate,
            eta,
        }
    }

    fn unwait(&mut self, hash: Hash, file: FileId) {
        if let Some(set) = self.waiting.get_mut(&hash) {
            set.remove(&file);
            if set.is_empty() {
                self.waiting.remove(&hash);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .arrivals
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > RATE_WINDOW)
        {
            self.arrivals.pop_front();
        }
    }
}
