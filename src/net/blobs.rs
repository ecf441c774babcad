//! Blob transfer: the provider side runs in intercept mode so that a peer may fetch a
//! blob only if it is a member of an unpaused store that owns it (imported or fetched
//! it, `cas` module docs), never because some manifest names it; the fetch side
//! downloads what a store's files reference from its members, online ones first, and
//! records each blob it fetched as owned by that store.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use iroh_blobs::api::proto::BlobStatus;
use iroh_blobs::provider::events::{
    AbortReason, ConnectMode, EventMask, EventSender, ObserveMode, ProviderMessage, RequestMode,
};
use parking_lot::Mutex;
use tokio::task::JoinSet;

use crate::cas::{Cas, Content, FetchRequest};
use crate::identity::PublicKey;
use crate::ids::{FileId, Hash, StoreId};
use crate::net::peers::{endpoint_id, node_key};
use crate::net::{blocking, NetError, Shared};
use crate::store::Store;

/// The iroh-blobs protocol without its shutdown: the content store belongs to the node,
/// which shuts it down after the network, so the router must not.
#[derive(Debug, Clone)]
pub(crate) struct BlobsHandler(pub iroh_blobs::BlobsProtocol);

impl iroh::protocol::ProtocolHandler for BlobsHandler {
    async fn accept(
        &self,
        conn: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        self.0.accept(conn).await
    }
}

/// Blob downloads running at once per fetch.
const FETCH_IN_FLIGHT: usize = 8;
/// Rounds of "what is missing → download it" per fetch (manifests, then chunks).
const FETCH_ROUNDS: usize = 3;
/// Longest a read's fetch waits for the replica's driver to act on the received
/// changes it saw, before it fetches without knowing which are due a patch.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(250);
/// Most changed chunks one fetch tries to patch before fetching the rest whole.
const MAX_PATCHES: usize = 64;
/// Most announced chunks waiting for or being fetched; later announcements are dropped
/// (their file's own fetch brings their chunks).
const AHEAD_QUEUE: usize = 64;

/// The provider event sender for the blobs protocol: connections, get, get-many and
/// observe requests are intercepted and checked; pushes stay disabled.
pub(crate) fn provider_events(shared: Weak<Shared>) -> EventSender {
    let mask = EventMask {
        connected: ConnectMode::Intercept,
        get: RequestMode::Intercept,
        get_many: RequestMode::Intercept,
        observe: ObserveMode::Intercept,
        ..EventMask::DEFAULT
    };
    let (tx, mut rx) = EventSender::channel(64, mask);
    tokio::spawn(async move {
        let conns: Arc<Mutex<HashMap<u64, PublicKey>>> = Arc::default();
        while let Some(msg) = rx.recv().await {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match msg {
                ProviderMessage::ClientConnected(msg) => {
                    let verdict = match msg.endpoint_id {
                        Some(id) if !shared.stores_of(&node_key(&id)).is_empty() => {
                            conns.lock().insert(msg.connection_id, node_key(&id));
                            Ok(())
                        }
                        _ => Err(AbortReason::Permission),
                    };
                    msg.tx.send(verdict).await.ok();
                }
                ProviderMessage::ConnectionClosed(msg) => {
                    conns.lock().remove(&msg.connection_id);
                }
                ProviderMessage::GetRequestReceived(msg) => {
                    let peer = conns.lock().get(&msg.connection_id).copied();
                    let hashes = vec![msg.request.hash];
                    let single = msg.request.ranges.is_blob();
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let ok = single && allows(&shared, peer, &hashes).await;
                        msg.tx.send(verdict(ok)).await.ok();
                    });
                }
                ProviderMessage::GetManyRequestReceived(msg) => {
                    let peer = conns.lock().get(&msg.connection_id).copied();
                    let hashes = msg.request.hashes.clone();
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let ok = allows(&shared, peer, &hashes).await;
                        msg.tx.send(verdict(ok)).await.ok();
                    });
                }
                ProviderMessage::ObserveRequestReceived(msg) => {
                    let peer = conns.lock().get(&msg.connection_id).copied();
                    let hashes = vec![msg.request.hash];
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let ok = allows(&shared, peer, &hashes).await;
                        msg.tx.send(verdict(ok)).await.ok();
                    });
                }
                ProviderMessage::Throttle(msg) => msg.tx.send(Ok(())).await.ok().unwrap_or(()),
                _ => {}
            }
        }
    });
    tx
}

fn verdict(ok: bool) -> Result<(), AbortReason> {
    if ok {
        Ok(())
    } else {
        Err(AbortReason::Permission)
    }
}

/// True if `peer` is a member of unpaused stores owning each of `hashes`.
async fn allows(
    shared: &Arc<Shared>,
    peer: Option<PublicKey>,
    hashes: &[iroh_blobs::Hash],
) -> bool {
    let refuse = || {
        shared.refused_blobs.fetch_add(1, Ordering::Relaxed);
        false
    };
    let Some(peer) = peer else {
        return refuse();
    };
    let stores = shared.stores_of(&peer);
    for h in hashes {
        let hash = Hash(*h.as_bytes());
        if !owned_by_any(shared, &stores, hash).await {
            tracing::info!(peer = %peer.short(), "refused a blob request for {h}");
            return refuse();
        }
    }
    true
}

/// True if one of `stores` owns blob `hash`.
async fn owned_by_any(shared: &Shared, stores: &[Store], hash: Hash) -> bool {
    for store in stores {
        match shared.node.cas().owns(store.id(), hash).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot read the owners of blob {hash:?}: {e}"),
        }
    }
    false
}

/// Members to fetch from: online ones first and, among those, `writers` (who wrote the
/// content wanted, so hold it) before the rest, who may not have it yet.
fn providers(shared: &Shared, store: &Store, writers: &[PublicKey]) -> Vec<iroh::EndpointId> {
    let members = shared
        .other_members(store)
        .into_iter()
        .map(|k| (k, shared.peers.state(&k).online))
        .collect();
    provider_order(members, writers)
        .iter()
        .filter_map(endpoint_id)
        .collect()
}

/// `members`, each with whether it is online, in the order to ask them for blobs
/// `writers` wrote: online writers, online others, then the offline ones alike.
fn provider_order(mut members: Vec<(PublicKey, bool)>, writers: &[PublicKey]) -> Vec<PublicKey> {
    members.sort_by_key(|(k, online)| (!online, !writers.contains(k)));
    members.into_iter().map(|(k, _)| k).collect()
}

/// Chunks members announced ahead of their files, waiting for or being fetched: at most
/// [`AHEAD_QUEUE`], in at most [`FETCH_IN_FLIGHT`] announcements at once.
pub(crate) struct Ahead {
    queued: AtomicUsize,
    slots: tokio::sync::Semaphore,
}

impl Default for Ahead {
    fn default() -> Self {
        Ahead {
            queued: AtomicUsize::new(0),
            slots: tokio::sync::Semaphore::new(FETCH_IN_FLIGHT),
        }
    }
}

/// Offers `chunks`, stored ahead of the commit of a file of `store` being written here,
/// to the store's other members, if it has any and is not paused: claimed for the store
/// (so this node serves them), then announced by its replica.
pub(crate) async fn offer_ahead(shared: &Arc<Shared>, store: StoreId, chunks: Vec<Hash>) {
    let Some(st) = shared.node.store_by_id(store) else {
        return;
    };
    if shared.other_members(&st).is_empty() || shared.settings(&st).paused {
        return;
    }
    let Some(replica) = shared.replicas.lock().get(&store).cloned() else {
        return;
    };
    if let Err(e) = shared.node.cas().claim(store, &chunks).await {
        tracing::info!(store = %store.to_hex(), "not announcing chunks stored ahead: {e}");
        return;
    }
    replica.stored_ahead(chunks);
}

/// Fetches `chunks` that member `from` announced for `store` ahead of the file naming
/// them, asking `from` first; dropped when [`AHEAD_QUEUE`] announced chunks wait. A
/// chunk already local is left as it is: an announcement names no content of the
/// store, so it must not make another store's blob this one's.
pub(crate) async fn fetch_ahead(
    shared: &Arc<Shared>,
    store: &Store,
    from: PublicKey,
    chunks: Vec<Hash>,
) {
    let (ahead, n) = (&shared.ahead, chunks.len());
    if ahead.queued.fetch_add(n, Ordering::AcqRel) + n > AHEAD_QUEUE {
        ahead.queued.fetch_sub(n, Ordering::AcqRel);
        tracing::debug!(peer = %from.short(), "dropped a chunk announcement: the queue is full");
        return;
    }
    let hashes = chunks.into_iter().map(crate::cas::to_iroh).collect();
    let fetched = match ahead.slots.acquire().await {
        Ok(_slot) => download(shared, store, hashes, &[from], false).await,
        Err(_) => Ok(0),
    };
    ahead.queued.fetch_sub(n, Ordering::AcqRel);
    if let Err(e) = fetched {
        tracing::debug!(peer = %from.short(), "fetching announced chunks failed: {e}");
    }
}

/// A file's content change: its previous pieces and its new ones.
pub(crate) type Change = (Vec<Content>, Vec<Content>);

/// Content changes whose fetch is running, with their stores: a read that needs a
/// chunk one of them changed patches it as that fetch would, not fetch it whole. The
/// replica's driver lists a change as it starts its fetch, a little after the
/// projection shows it, so a read first waits for the driver to catch up with what it
/// saw (`ReplicaHandle::caught_up`).
#[derive(Default)]
pub(crate) struct DuePatches {
    running: Vec<(StoreId, Arc<[Change]>)>,
}

/// Keeps one fetch's changes in [`DuePatches`] until dropped.
pub(crate) struct Listed {
    shared: Arc<Shared>,
    changes: Arc<[Change]>,
}

impl Listed {
    /// Lists `changes` of `store`, if there are any.
    pub(crate) fn new(
        shared: &Arc<Shared>,
        store: StoreId,
        changes: &Arc<[Change]>,
    ) -> Option<Self> {
        if changes.is_empty() {
            return None;
        }
        let changes = changes.clone();
        shared
            .due_patches
            .lock()
            .running
            .push((store, changes.clone()));
        Some(Listed {
            shared: shared.clone(),
            changes,
        })
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.shared
            .due_patches
            .lock()
            .running
            .retain(|(_, listed)| !Arc::ptr_eq(listed, &self.changes));
    }
}

/// Fetches every blob of `files` (current content and conflict copies) that is not local.
/// `changes` pairs files' previous pieces with their new ones: changed chunks are first
/// patched from the chunks they replace where a member can say which blocks differ.
pub(crate) async fn fetch_files(
    shared: &Arc<Shared>,
    store: &Store,
    files: Vec<FileId>,
    changes: &[Change],
) -> Result<usize, NetError> {
    let st = store.clone();
    let (pieces, writers) = blocking(move || {
        let by_file = st.pieces_of(Some(files));
        let with_blobs: Vec<FileId> = by_file
            .iter()
            .filter(|(_, pieces)| !pieces.is_empty())
            .map(|(file, _)| *file)
            .collect();
        let pieces: Vec<Content> = by_file.into_iter().flat_map(|(_, p)| p).collect();
        (pieces, st.content_authors(&with_blobs))
    })
    .await?;
    let writers: Vec<PublicKey> = writers.into_iter().collect();
    fetch_pieces(shared, store, pieces, changes, &writers).await
}

/// Fetches every blob any file of `store` references that is not local.
pub(crate) async fn fetch_all(shared: &Arc<Shared>, store: &Store) -> Result<usize, NetError> {
    let st = store.clone();
    let pieces = blocking(move || st.blobs_of(None)).await?;
    fetch_pieces(shared, store, pieces, &[], &[]).await
}

/// Patches the changed chunks of `changes` whose new manifest is local (only those in
/// `only`, if given), each from the chunk at its place in the previous content (at most
/// [`MAX_PATCHES`]); returns how many this call rebuilt. A chunk no member patches is
/// left for a whole fetch.
async fn patch_changes(
    shared: &Arc<Shared>,
    store: &Store,
    changes: &[Change],
    only: Option<HashSet<Hash>>,
) -> Result<usize, NetError> {
    let (cas, list) = (shared.node.cas().clone(), changes.to_vec());
    let pairs = blocking(move || {
        let mut pairs = Vec::new();
        for (before, now) in &list {
            // One file's unusable manifest only costs that file its patches.
            match cas.patch_bases(before, now) {
                Ok(found) => pairs.extend(
                    found
                        .into_iter()
                        .filter(|(chunk, ..)| only.as_ref().is_none_or(|o| o.contains(chunk))),
                ),
                Err(e) => tracing::info!("not patching a file's content: {e}"),
            }
            if pairs.len() >= MAX_PATCHES {
                break;
            }
        }
        pairs
    })
    .await?;
    let providers = shared.other_members(store);
    let mut patched = 0;
    for pair in pairs.into_iter().take(MAX_PATCHES) {
        if patch_one(shared, store, pair, &providers).await {
            patched += 1;
        }
    }
    Ok(patched)
}

/// Blobs being patched or downloaded now, each with the turn the next patch or download
/// of it waits for.
pub(crate) type Turns = Mutex<HashMap<Hash, Arc<tokio::sync::Mutex<()>>>>;

/// Runs `work` on blob `hash` once no other patch or download of it runs: a second one
/// waits for its turn and then finds the blob local, instead of fetching it again.
async fn in_turn<T>(turns: &Turns, hash: Hash, work: impl Future<Output = T>) -> T {
    let held = Held {
        turn: turns.lock().entry(hash).or_default().clone(),
        turns,
        hash,
    };
    let _turn = held.turn.lock().await;
    work.await
}

/// One caller's hold on a blob's turn; the last one to let go unlists the turn, also
/// when its task is dropped while it waits or works.
struct Held<'a> {
    turns: &'a Turns,
    hash: Hash,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut turns = self.turns.lock();
        // The list and this hold are the only ones left: no one else waits for it.
        if Arc::strong_count(&self.turn) == 2 {
            turns.remove(&self.hash);
        }
    }
}

/// Rebuilds `chunk` from `base` through the first online member of `providers` that
/// patches it; whether this call did.
async fn patch_one(
    shared: &Arc<Shared>,
    store: &Store,
    (chunk, base, len): (Hash, Hash, u64),
    providers: &[PublicKey],
) -> bool {
    in_turn(&shared.turns, chunk, async {
        let online = providers.iter().filter(|k| shared.peers.state(k).online);
        for peer in online {
            if is_local(shared.node.cas(), chunk).await {
                break;
            }
            match crate::net::client::patch_chunk(shared, store, *peer, chunk, base, len).await {
                Ok(()) => {
                    shared.patched.fetch_add(1, Ordering::Relaxed);
                    crate::net::progress::arrived(shared, store, vec![chunk]).await;
                    return true;
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.short(), "patch of chunk {chunk:?} failed: {e}")
                }
            }
        }
        false
    })
    .await
}

/// Whether the local store holds all of blob `hash`.
async fn is_local(cas: &Cas, hash: Hash) -> bool {
    let status = cas.blobs().status(crate::cas::to_iroh(hash)).await;
    matches!(status, Ok(BlobStatus::Complete { .. }))
}

/// Fetches what a read is waiting for, skipping blobs a read already asked for. A chunk
/// that a running fetch is due to patch is patched here too, not fetched whole.
pub(crate) async fn fetch_request(shared: &Arc<Shared>, request: FetchRequest) {
    let Some(store) = shared.node.store_by_id(request.store) else {
        return;
    };
    let asked: Vec<iroh_blobs::Hash> = {
        let mut asked = shared.read_fetches.lock();
        request
            .hashes
            .into_iter()
            .filter(|h| asked.insert(*h))
            .collect()
    };
    if asked.is_empty() {
        return;
    }
    let replica = shared.replicas.lock().get(&request.store).cloned();
    if let Some(replica) = replica {
        replica.caught_up(store.received(), CATCH_UP_WAIT).await;
    }
    let due: Vec<Arc<[Change]>> = shared
        .due_patches
        .lock()
        .running
        .iter()
        .filter(|(id, _)| *id == request.store)
        .map(|(_, changes)| changes.clone())
        .collect();
    let mut hashes = asked.clone();
    if !due.is_empty() {
        let only: HashSet<Hash> = asked.iter().map(|h| Hash(*h.as_bytes())).collect();
        for changes in due {
            if let Err(e) = patch_changes(shared, &store, &changes, Some(only.clone())).await {
                tracing::debug!("no patches for a read: {e}");
            }
        }
        let mut still = Vec::with_capacity(hashes.len());
        for h in hashes {
            if !is_local(shared.node.cas(), Hash(*h.as_bytes())).await {
                still.push(h);
            }
        }
        hashes = still;
    }
    if !hashes.is_empty() {
        if let Err(e) = download(shared, &store, hashes, &[], true).await {
            tracing::warn!(store = %request.store.to_hex(), "fetch for a read failed: {e}");
        }
    }
    let mut read_fetches = shared.read_fetches.lock();
    for h in &asked {
        read_fetches.remove(h);
    }
}

/// Downloads what `pieces` need, round by round (a manifest first reveals its chunks),
/// asking `writers` first; returns how many blobs were downloaded.
async fn fetch_pieces(
    shared: &Arc<Shared>,
    store: &Store,
    pieces: Vec<Content>,
    changes: &[Change],
    writers: &[PublicKey],
) -> Result<usize, NetError> {
    let mut fetched = 0;
    for _ in 0..FETCH_ROUNDS {
        if !changes.is_empty() {
            fetched += patch_changes(shared, store, changes, None).await?;
        }
        let (cas, p) = (shared.node.cas().clone(), pieces.clone());
        let missing = blocking(move || cas.missing(&p)).await??;
        if missing.is_empty() {
            return Ok(fetched);
        }
        fetched += download(shared, store, missing, writers, true).await?;
    }
    Ok(fetched)
}

/// Downloads `hashes` from members of `store`, a few at a time, asking online `writers`
/// of their content first. A blob found local (brought by another fetch meanwhile) is
/// claimed for `store` only if `claim_local`: only where a file of the store names it.
async fn download(
    shared: &Arc<Shared>,
    store: &Store,
    hashes: Vec<iroh_blobs::Hash>,
    writers: &[PublicKey],
    claim_local: bool,
) -> Result<usize, NetError> {
    let providers = providers(shared, store, writers);
    if providers.is_empty() {
        return Err(NetError::NoProvider);
    }
    let mut tasks = JoinSet::new();
    let mut queue = hashes.into_iter();
    let (mut done, mut failed) = (0, None);
    loop {
        while tasks.len() < FETCH_IN_FLIGHT {
            let Some(hash) = queue.next() else { break };
            let (shared, providers) = (shared.clone(), providers.clone());
            let (cas, owner) = (shared.node.cas().clone(), store.id());
            tasks.spawn(async move {
                let _held = cas.hold().await;
                let blob = Hash(*hash.as_bytes());
                let came = in_turn(&shared.turns, blob, async {
                    // A read, a patch or another fetch may have brought it meanwhile: it
                    // still needs this store's claim, but it did not come now.
                    if is_local(&cas, blob).await {
                        return Ok(false);
                    }
                    let got = shared.downloader.download(hash, providers).await;
                    if got.is_ok() {
                        cas.downloaded(blob).await;
                    }
                    got.map(|()| true).map_err(|e| format!("{e:#}"))
                })
                .await;
                let got = match came {
                    Ok(false) if !claim_local => Ok(false),
                    Ok(came) => cas
                        .claim(owner, &[blob])
                        .await
                        .map(|()| came)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                (hash, got)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined {
            Ok((hash, Ok(came))) => {
                let arrived = vec![Hash(*hash.as_bytes())];
                let bytes = crate::net::progress::arrived(shared, store, arrived).await;
                if came {
                    shared.fetched.fetch_add(bytes, Ordering::Relaxed);
                }
                done += 1;
            }
            Ok((hash, Err(e))) => {
                failed.get_or_insert_with(|| format!("blob {hash}: {e}"));
            }
            Err(e) => {
                failed.get_or_insert_with(|| format!("download task: {e}"));
            }
        }
    }
    match failed {
        Some(reason) => Err(NetError::Fetch(reason)),
        None => Ok(done),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{in_turn, provider_order, Turns};
    use crate::identity::PublicKey;
    use crate::ids::Hash;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_on_one_blob_runs_one_at_a_time_and_leaves_no_turn_behind() {
        let turns = Arc::new(Turns::default());
        // Per blob: running now, most running at once, runs done.
        let counts: Arc<[[AtomicUsize; 3]; 2]> = Arc::new(Default::default());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8usize {
            let (turns, counts) = (turns.clone(), counts.clone());
            let blob = i % 2;
            tasks.spawn(async move {
                in_turn(&turns, Hash([blob as u8; 32]), async {
                    let [running, most, runs] = &counts[blob];
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    runs.fetch_add(1, Ordering::SeqCst);
                })
                .await
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.unwrap();
        }
        for [_, most, runs] in counts.iter() {
            assert_eq!(runs.load(Ordering::SeqCst), 4);
            assert_eq!(
                most.load(Ordering::SeqCst),
                1,
                "two ran on one blob at once"
            );
        }
        assert!(turns.lock().is_empty(), "a finished turn stays listed");
    }

    #[test]
    fn online_writers_are_asked_first_and_offline_members_last() {
        let key = |b: u8| PublicKey([b; 32]);
        let online = [true, false, true, true, false];
        let members: Vec<_> = (1..=5).map(key).zip(online).collect();
        assert_eq!(
            provider_order(members.clone(), &[key(4), key(5)]),
            vec![key(4), key(1), key(3), key(5), key(2)]
        );
        assert_eq!(
            provider_order(members, &[]),
            vec![key(1), key(3), key(4), key(2), key(5)],
            "without writers: online first, each part in member order"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_dropped_while_they_wait_or_work_leave_no_turn_behind() {
        let turns = Arc::new(Turns::default());
        let blob = Hash([7; 32]);
        let (started, running) = tokio::sync::oneshot::channel();
        let working = tokio::spawn({
            let turns = turns.clone();
            async move {
                in_turn(&turns, blob, async {
                    started.send(()).unwrap();
                    std::future::pending::<()>().await;
                })
                .await
            }
        });
        running.await.unwrap();
        let waiting = tokio::spawn({
            let turns = turns.clone();
            async move { in_turn(&turns, blob, async {}).await }
        });
        while Arc::strong_count(&turns.lock()[&blob]) < 3 {
            tokio::task::yield_now().await;
        }
        for task in [waiting, working] {
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
        }
        assert!(
            turns.lock().is_empty(),
            "a turn stays listed after the tasks holding it were dropped"
        );
    }
}
