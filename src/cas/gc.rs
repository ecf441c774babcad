//! Content collection: a store's ownership tags are cut back to what its kept versions
//! need, then iroh-blobs' garbage collector deletes every blob no tag roots.
//!
//! The collector runs inside the iroh-blobs store (its `GcConfig`): it wakes every
//! [`GC_POLL`] and asks [`Gate::poll`] whether to run; the gate says yes only when a
//! collection was requested, so nothing is deleted unless [`Cas::collect`] asks. A run
//! marks every blob a persistent or temp tag roots (all stores' ownership tags, the
//! manifest tags' hash sequences, running imports) and deletes the rest.
//!
//! Exclusion. Puts, reads, and downloads until their claim hold the read side of one
//! lock for their whole duration; cutting tags and each collector run hold its write
//! side, taken only when free (a busy store defers collection, never the reverse). So a blob that
//! is being stored, claimed (even one equal to a blob whose tag is being cut) or read
//! is never collected under it, and iroh-blobs' races between listing tags and temp
//! tags (iroh-blobs #247, #240) cannot meet an import. The collector takes the lock
//! only when it is free ([`Gate::poll`] aborts the run otherwise and tries again at the
//! next poll), so it never stalls a put; puts and reads wait only while a run sweeps.
//!
//! Content put for a store is named by no intention until its write is pushed. So
//! besides the kept versions, a collection keeps every blob put in the last
//! [`PUT_GRACE`], and every blob of a put that no op names yet for [`UNNAMED_GRACE`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iroh_blobs::api::blobs::BlobStatus;
use iroh_blobs::store::{GcConfig, ProtectCb, ProtectOutcome};
use n0_future::StreamExt;
use parking_lot::{Condvar, Mutex};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::store::{self, MANIFEST_TAG_PREFIX, OWNER_TAG_PREFIX};
use super::{manifests, Cas, CasError, Content};
use crate::ids::{Hash, StoreId};

/// How often the collector asks whether a run is due: the most a requested run waits
/// to start once the store is idle.
pub(crate) const GC_POLL: Duration = Duration::from_millis(250);
/// Longest wait for a requested run to finish: a sweep of millions of blobs takes
/// minutes; past this the collector is taken to have stopped (it stops on its first
/// error).
pub(crate) const MAX_GC_WAIT: Duration = Duration::from_secs(30 * 60);
/// Pause between attempts to take the exclusion lock while puts, reads or downloads
/// hold it.
const EXCLUSIVE_RETRY: Duration = Duration::from_millis(20);
/// Blobs put this recently are always kept: the write naming them may not be pushed
/// yet, even when an old version names the same content.
pub const PUT_GRACE: Duration = Duration::from_secs(5);
/// Blobs of a put that no op names yet are kept this long: a write waiting for the
/// projection's lock is pushed well within it; a put whose write never came is garbage.
pub(crate) const UNNAMED_GRACE: Duration = Duration::from_secs(60 * 60);

/// What one collection freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs deleted.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The bytes of the blobs a store owns, by why they are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    /// Needed by current versions (and puts in flight).
    pub live: u64,
    /// Needed only by retained superseded or deleted versions.
    pub retained: u64,
    /// Needed by no kept version: the next collection frees them unless another store
    /// owns them too.
    pub reclaimable: u64,
}

/// Blobs recently put, by the manifest (or lone blob) they were put as.
#[derive(Default)]
pub(crate) struct Recent {
    puts: HashMap<Hash, (Instant, Vec<Hash>)>,
}

impl Recent {
    /// Records that `blobs` were just put as `key`.
    pub(crate) fn put(&mut self, key: Hash, blobs: Vec<Hash>) {
        let now = Instant::now();
        self.puts
            .retain(|_, (at, _)| now.duration_since(*at) < UNNAMED_GRACE);
        self.puts.insert(key, (now, blobs));
    }

    /// The blobs still protected when `named` lists every manifest some op names.
    fn protected(&self, named: &HashSet<Hash>, put_grace: Duration) -> HashSet<Hash> {
        let now = Instant::now();
        self.puts
            .iter()
            .filter(|(key, (at, _))| {
                let age = now.duration_since(*at);
                age < put_grace || (age < UNNAMED_GRACE && !named.contains(key))
            })
            .flat_map(|(_, (_, blobs))| blobs.iter().copied())
            .collect()
    }
}

/// Decides when the collector runs and reports when a run is over.
#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    done: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Runs asked for so far.
    requested: u64,
    /// The request a run started for, while it runs.
    running: Option<u64>,
    /// The latest request a finished run covered.
    finished: u64,
    /// The write side of the exclusion lock, held by the running run.
    hold: Option<OwnedRwLockWriteGuard<()>>,
}

impl Gate {
    /// Called by the collector before each run: ends the previous run, then starts a
    /// new one if a request is pending and no put, claim or read runs.
    fn poll(&self, turn: &Arc<RwLock<()>>) -> ProtectOutcome {
        let mut st = self.state.lock();
        if let Some(n) = st.running.take() {
            st.finished = n;
            st.hold = None;
            self.done.notify_all();
        }
        if st.requested <= st.finished {
            return ProtectOutcome::Abort;
        }
        match turn.clone().try_write_owned() {
            Ok(guard) => {
                st.hold = Some(guard);
                st.running = Some(st.requested);
                ProtectOutcome::Continue
            }
            Err(_) => ProtectOutcome::Abort,
        }
    }

    /// Asks for a run and waits until one begun after the request has finished.
    fn run(&self) -> Result<(), CasError> {
        let mut st = self.state.lock();
        st.requested += 1;
        let want = st.requested;
        let deadline = Instant::now() + MAX_GC_WAIT;
        while st.finished < want {
            if self.done.wait_until(&mut st, deadline).timed_out() {
                return Err(CasError::GcStalled(MAX_GC_WAIT));
            }
        }
        Ok(())
    }
}

/// The collector's configuration: poll the gate every [`GC_POLL`].
pub(crate) fn config(gate: Arc<Gate>, turn: Arc<RwLock<()>>) -> GcConfig {
    let cb: ProtectCb = Arc::new(move |_live| {
        let outcome = gate.poll(&turn);
        Box::pin(async move { outcome })
    });
    GcConfig {
        interval: GC_POLL,
        add_protected: Some(cb),
    }
}

/// The ownership-tag prefix of store `owner`.
fn owner_prefix(owner: StoreId) -> String {
    format!("{OWNER_TAG_PREFIX}{}/live/", owner.to_hex())
}

impl Cas {
    /// Collects the content of store `owner`: drops its ownership of every blob that
    /// no content of `keep` needs (nor a recent put, see the module doc), and the
    /// manifest tag of each such manifest that none of `others` owns, then runs the
    /// collector. `named` lists every manifest an op of the store names. Returns what
    /// was deleted (and drops it from the read caches).
    pub fn collect(
        &self,
        owner: StoreId,
        keep: &[Content],
        named: &HashSet<Hash>,
        others: &[StoreId],
    ) -> Result<GcReport, CasError> {
        let inner = &self.inner;
        let mut kept = self.needed(keep)?;
        let candidates = {
            let _turn = self.exclusive()?;
            kept.extend(
                inner
                    .recent
                    .lock()
                    .protected(named, *inner.put_grace.lock()),
            );
            let blobs = self.blobs();
            inner.rt.block_on(async {
                let mut candidates = Vec::new();
                for hash in owned(&blobs, owner).await? {
                    if kept.contains(&hash) {
                        continue;
                    }
                    candidates.push((hash, size_of(&blobs, hash).await?));
                    blobs
                        .tags()
                        .delete(store::owner_tag(owner, hash))
                        .await
                        .map_err(iroh_blobs::api::Error::from)?;
                    let name = format!("{MANIFEST_TAG_PREFIX}{}", hash.to_hex());
                    let Some(seq) = blobs
                        .tags()
                        .get(&name)
                        .await
                        .map_err(iroh_blobs::api::Error::from)?
                    else {
                        continue;
                    };
                    let mut shared = false;
                    for other in others.iter().filter(|o| **o != owner) {
                        shared |= store::owns(&blobs, *other, hash).await?;
                    }
                    if !shared {
                        blobs
                            .tags()
                            .delete(&name)
                            .await
                            .map_err(iroh_blobs::api::Error::from)?;
                        let seq = store::from_iroh(seq.hash);
                        candidates.push((seq, size_of(&blobs, seq).await?));
                    }
                }
                Ok::<_, CasError>(candidates)
            })?
        };
        if candidates.is_empty() {
            return Ok(GcReport::default());
        }
        inner.gate.run()?;
        let blobs = self.blobs();
        inner.rt.block_on(async {
            let mut report = GcReport::default();
            for (hash, size) in candidates {
                if size_of(&blobs, hash).await? == 0 && size > 0 {
                    report.blobs += 1;
                    report.bytes += size;
                    inner.chunks.lock().remove(&hash);
                    inner.manifests.lock().remove(&hash);
                    inner.intact.forget(hash);
                }
            }
            Ok(report)
        })
    }

    /// The bytes of the blobs store `owner` owns, split by which of `current` and
    /// `retained` content needs them (see [`Space`]).
    pub fn space(
        &self,
        owner: StoreId,
        current: &[Content],
        retained: &[Content],
    ) -> Result<Space, CasError> {
        let live = self.needed(current)?;
        let old = self.needed(retained)?;
        let blobs = self.blobs();
        self.inner.rt.block_on(async {
            let mut space = Space::default();
            for hash in owned(&blobs, owner).await? {
                let size = size_of(&blobs, hash).await?;
                if live.contains(&hash) {
                    space.live += size;
                } else if old.contains(&hash) {
                    space.retained += size;
                } else {
                    space.reclaimable += size;
                }
            }
            Ok(space)
        })
    }

    /// Holds off content collection until dropped: a download holds it until the blob
    /// is claimed, so no run sweeps it in between.
    pub async fn hold(&self) -> OwnedRwLockReadGuard<()> {
        self.inner.turn.clone().read_owned().await
    }

    /// The write side of the exclusion lock, taken only when free (never queued, so
    /// no read or put ever waits behind a collection that is not running yet).
    fn exclusive(&self) -> Result<OwnedRwLockWriteGuard<()>, CasError> {
        let deadline = Instant::now() + MAX_GC_WAIT;
        loop {
            if let Ok(guard) = self.inner.turn.clone().try_write_owned() {
                return Ok(guard);
            }
            if Instant::now() >= deadline {
                return Err(CasError::GcStalled(MAX_GC_WAIT));
            }
            std::thread::sleep(EXCLUSIVE_RETRY);
        }
    }

    /// Sets how long every put is kept whether named or not (default [`PUT_GRACE`]).
    pub fn set_put_grace(&self, grace: Duration) {
        *self.inner.put_grace.lock() = grace;
    }

    /// Every blob `pieces` need that the local store can tell: each manifest and, when
    /// it is held and decodes, its chunks.
    fn needed(&self, pieces: &[Content]) -> Result<HashSet<Hash>, CasError> {
        let mut out = HashSet::new();
        let mut seen = HashSet::new();
        for (hash, size) in manifests(pieces) {
            if !seen.insert(hash) {
                continue;
            }
            out.insert(hash);
            match self.manifest(None, hash, size) {
                Ok(m) => out.extend(m.chunks().map(|(h, _, _)| h)),
                Err(CasError::Absent { .. }) => {}
                Err(
                    e @ (CasError::Corrupt { .. }
                    | CasError::ChunkTooLarge { .. }
                    | CasError::SizeOverflow { .. }
                    | CasError::BlobTooLarge { .. }),
                ) => {
                    tracing::warn!("content collection skips an unusable manifest: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Every blob store `owner` owns.
async fn owned(blobs: &iroh_blobs::api::Store, owner: StoreId) -> Result<Vec<Hash>, CasError> {
    let mut tags = blobs
        .tags()
        .list_prefix(owner_prefix(owner))
        .await
        .map_err(iroh_blobs::api::Error::from)?;
    let mut out = Vec::new();
    while let Some(tag) = tags.next().await {
        out.push(store::from_iroh(tag?.hash));
    }
    Ok(out)
}

/// The size of blob `hash` if complete locally, else 0.
async fn size_of(blobs: &iroh_blobs::api::Store, hash: Hash) -> Result<u64, CasError> {
    let status = blobs
        .status(store::to_iroh(hash))
        .await
        .map_err(iroh_blobs::api::Error::from)?;
    Ok(match status {
        BlobStatus::Complete { size } => size,
        _ => 0,
    })
}
