//! One task per store: while not paused it subscribes to the store's gossip topic
//! (derived from its secret, `topic`), broadcasts each newly sealed intention (inline
//! when it fits in a gossip message, else its hash), applies or pulls what members
//! announce, reconciles with a neighbour that is a member when it appears and with every
//! member on an anti-entropy timer that backs off while nothing changes, fetches
//! referenced blobs (eager mode), and cuts off revoked peers.
//!
//! Gossip from a neighbour that is not a current member of the store is ignored: it is
//! never applied, pulled from or reconciled with. Received messages go through a queue
//! of [`GOSSIP_QUEUE`] handled by one worker; when it is full the message is dropped
//! (anti-entropy brings what it announced).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use iroh_gossip::api::{Event, GossipSender};
use iroh_gossip::proto::TopicId;
use n0_future::StreamExt;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cas::Content;
use crate::identity::PublicKey;
use crate::ids::{FileId, Hash};
use crate::net::client::{self, RoundReport};
use crate::net::peers::{endpoint_id, node_key};
use crate::net::settings::{FetchMode, Settings};
use crate::net::{blobs, blocking, topic, NetError, Shared, GOSSIP_MAX};
use crate::proto::peer::{gossip, Gossip};
use crate::store::{ApplyOutcome, Store, StoreEvent};

/// First anti-entropy interval, and the interval after a round that moved something.
pub const ANTI_ENTROPY_MIN: Duration = Duration::from_secs(2);
/// Longest anti-entropy interval while rounds find nothing to do.
pub const ANTI_ENTROPY_MAX: Duration = Duration::from_secs(30);
/// Received gossip messages waiting for the store's gossip worker; more are dropped
/// (at most this many × [`GOSSIP_MAX`] bytes wait per store).
pub const GOSSIP_QUEUE: usize = 256;

/// When the next anti-entropy pass is due.
#[derive(Debug)]
struct Schedule {
    interval: Duration,
    due: Instant,
}

impl Schedule {
    /// The first pass is due [`ANTI_ENTROPY_MIN`] after `now`.
    fn new(now: Instant) -> Self {
        Schedule {
            interval: ANTI_ENTROPY_MIN,
            due: now + ANTI_ENTROPY_MIN,
        }
    }

    /// A local change at `now`: a pass confirms it within [`ANTI_ENTROPY_MIN`], and a
    /// pass already due sooner is not put off, so a steady writer gets one every MIN.
    fn local_change(&mut self, now: Instant) {
        self.interval = ANTI_ENTROPY_MIN;
        self.due = self.due.min(now + ANTI_ENTROPY_MIN);
    }

    /// A pass ended at `now`: the next is due after MIN if it did anything (`busy`),
    /// else after twice the last interval, at most [`ANTI_ENTROPY_MAX`].
    fn passed(&mut self, now: Instant, busy: bool) {
        self.interval = if busy {
            ANTI_ENTROPY_MIN
        } else {
            (self.interval * 2).min(ANTI_ENTROPY_MAX)
        };
        self.due = now + self.interval;
    }
}

/// Orders for a replica task.
pub enum Cmd {
    /// Reconcile with every member now and report.
    Sync(oneshot::Sender<Result<SyncReport, NetError>>),
    /// New local settings (pause, resume, fetch mode).
    Settings(Settings),
    /// Stop the task.
    Stop(oneshot::Sender<()>),
}

/// What `sync` did for a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Members reconciled with.
    pub peers: u32,
    /// Members that could not be reached, with why.
    pub failed: Vec<(PublicKey, String)>,
    /// Totals over the rounds.
    pub total: RoundReport,
}

/// The handle of a running replica task.
#[derive(Clone)]
pub struct ReplicaHandle {
    cmds: mpsc::UnboundedSender<Cmd>,
    counters: Arc<Counters>,
    task: Arc<parking_lot::Mutex<Option<JoinHandle<()>>>>,
}

#[derive(Default)]
struct Counters {
    unsent: AtomicU64,
    missing: AtomicU64,
}

impl ReplicaHandle {
    /// Sends `cmd`; a stopped task drops it.
    pub fn send(&self, cmd: Cmd) {
        let _ = self.cmds.send(cmd);
    }

    /// (local intentions not yet confirmed sent, blobs known missing).
    pub fn counters(&self) -> (u64, u64) {
        (
            self.counters.unsent.load(Ordering::Relaxed),
            self.counters.missing.load(Ordering::Relaxed),
        )
    }

    /// Stops the task and waits for it.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Stop(tx));
        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

/// Starts the replica task of `store`.
pub fn spawn(shared: Weak<Shared>, store: Store, settings: Settings) -> ReplicaHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let counters = Arc::new(Counters::default());
    let task = tokio::spawn(run(shared, store, settings, rx, counters.clone()));
    ReplicaHandle {
        cmds: tx,
        counters,
        task: Arc::new(parking_lot::Mutex::new(Some(task))),
    }
}

struct Replica {
    shared: Weak<Shared>,
    store: Store,
    settings: Settings,
    counters: Arc<Counters>,
    /// Local intentions sealed since the last round that reached a peer.
    unsent: Vec<Bytes>,
    /// Each file's content pieces as last seen, so an edit's changed chunks can be
    /// patched from the chunks they replace (files with inline content only are left out).
    known: HashMap<FileId, Vec<Content>>,
}

async fn run(
    shared: Weak<Shared>,
    store: Store,
    settings: Settings,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    counters: Arc<Counters>,
) {
    let mut r = Replica {
        shared,
        store,
        settings,
        counters,
        unsent: Vec::new(),
        known: HashMap::new(),
    };
    r.known = r.store.read(|s| {
        s.file_ids()
            .into_iter()
            .map(|f| (f, s.blob_pieces(f)))
            .filter(|(_, pieces)| !pieces.is_empty())
            .collect()
    });
    loop {
        if r.settings.paused {
            match cmds.recv().await {
                None => return,
                Some(Cmd::Stop(done)) => {
                    let _ = done.send(());
                    return;
                }
                Some(Cmd::Settings(s)) => r.settings = s,
                Some(Cmd::Sync(reply)) => {
                    let name = crate::node::store_name(&r.store);
                    let _ = reply.send(Err(NetError::Paused(name)));
                }
            }
            continue;
        }
        match r.active(&mut cmds).await {
            Flow::Stop => return,
            Flow::Paused => {}
        }
    }
}

enum Flow {
    Stop,
    Paused,
}

impl Replica {
    fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.upgrade()
    }

    /// Runs while the store is not paused.
    async fn active(&mut self, cmds: &mut mpsc::UnboundedReceiver<Cmd>) -> Flow {
        let Some(shared) = self.shared() else {
            return Flow::Stop;
        };
        let mut events = self.store.subscribe();
        let Some(topic) = self.topic(&shared).await else {
            // Not subscribed until a member hands the secret over; anti-entropy goes on.
            sync_members(&shared, &self.store).await;
            tokio::time::sleep(ANTI_ENTROPY_MIN).await;
            return Flow::Paused;
        };
        let bootstrap: Vec<iroh::EndpointId> = shared
            .other_members(&self.store)
            .iter()
            .filter_map(endpoint_id)
            .collect();
        let (sender, mut receiver) = match shared.gossip.subscribe(topic, bootstrap).await {
            Ok(t) => t.split(),
            Err(e) => {
                tracing::warn!(store = %self.store.id().to_hex(), "cannot join the gossip topic: {e:#}");
                tokio::time::sleep(ANTI_ENTROPY_MIN).await;
                return Flow::Paused;
            }
        };
        drop(shared);
        let (queue, inbox) = mpsc::channel(GOSSIP_QUEUE);
        let _worker = AbortOnDrop(tokio::spawn(gossip_worker(
            self.shared.clone(),
            self.store.clone(),
            inbox,
        )));
        if self.settings.fetch == FetchMode::Eager {
            self.spawn_fetch_all();
        }
        self.spawn_sync_all(None);
        let mut schedule = Schedule::new(Instant::now());
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => return Flow::Stop,
                    Some(Cmd::Stop(done)) => {
                        let _ = done.send(());
                        return Flow::Stop;
                    }
                    Some(Cmd::Settings(s)) => {
                        let was_eager = self.settings.fetch == FetchMode::Eager;
                        self.settings = s;
                        if s.paused {
                            return Flow::Paused;
                        }
                        if !was_eager && s.fetch == FetchMode::Eager {
                            self.spawn_fetch_all();
                        }
                    }
                    Some(Cmd::Sync(reply)) => self.spawn_sync_all(Some(reply)),
                },
                event = events.recv() => match event {
                    Ok(StoreEvent::Sealed(list)) => {
                        self.unsent.extend(list.iter().cloned());
                        self.counters.unsent.store(self.unsent.len() as u64, Ordering::Relaxed);
                        self.broadcast(&sender, list).await;
                        schedule.local_change(Instant::now());
                    }
                    Ok(StoreEvent::Applied { files, .. }) => {
                        self.after_apply(files);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let all = self.store.read(|s| s.file_ids());
                        self.after_apply(all);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Flow::Stop,
                },
                ev = receiver.next() => match ev {
                    Some(Ok(ev)) => self.on_gossip(ev, &queue),
                    Some(Err(e)) => {
                        tracing::debug!("gossip receiver failed: {e:#}");
                        return Flow::Paused;
                    }
                    None => return Flow::Paused,
                },
                () = tokio::time::sleep_until(schedule.due) => {
                    let moved = self.sync_all().await;
                    if !self.unsent.is_empty() {
                        self.rejoin(&sender).await;
                    }
                    schedule.passed(Instant::now(), moved || !self.unsent.is_empty());
                }
            }
        }
    }

    /// Broadcasts sealed intentions on the topic, inline when they fit.
    async fn broadcast(&self, sender: &GossipSender, list: Vec<Bytes>) {
        for bytes in list {
            let kind = if bytes.len() + 16 <= GOSSIP_MAX {
                gossip::Kind::Intention(bytes)
            } else {
                let Some((_, hash)) = crate::intention::Intention::peek(&bytes) else {
                    continue;
                };
                gossip::Kind::Hash(Bytes::copy_from_slice(&hash.0))
            };
            let msg = Gossip { kind: Some(kind) }.encode_to_vec();
            if let Err(e) = sender.broadcast(msg.into()).await {
                tracing::debug!("gossip broadcast failed: {e:#}");
            }
        }
    }

    /// Redials members when local changes have not reached anyone.
    async fn rejoin(&self, sender: &GossipSender) {
        let Some(shared) = self.shared() else { return };
        let peers: Vec<iroh::EndpointId> = shared
            .other_members(&self.store)
            .iter()
            .filter_map(endpoint_id)
            .collect();
        if let Err(e) = sender.join_peers(peers).await {
            tracing::debug!("gossip rejoin failed: {e:#}");
        }
    }

    /// The store's gossip topic: from its secret, asked of members when this node lacks it.
    async fn topic(&self, shared: &Arc<Shared>) -> Option<TopicId> {
        let (sh, st) = (shared.clone(), self.store.clone());
        match blocking(move || sh.topic_secret(&st)).await.and_then(|r| r) {
            Ok(Some(secret)) => return Some(topic::topic(&secret)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(store = %self.store.id().to_hex(), "gossip secret: {e}");
                return None;
            }
        }
        for peer in shared.other_members(&self.store) {
            match client::topic_secret(shared, &self.store, peer).await {
                Ok(secret) => match shared.adopt_topic_secret(&self.store, secret) {
                    Ok(()) => return Some(topic::topic(&secret)),
                    Err(e) => tracing::warn!("{e}"),
                },
                Err(e) => tracing::debug!(peer = %peer.short(), "no gossip secret from it: {e}"),
            }
        }
        tracing::info!(store = %self.store.id().to_hex(), "no member has handed over the gossip secret yet");
        None
    }

    /// Acts on a gossip event if the neighbour is a current member of the store.
    fn on_gossip(&self, ev: Event, queue: &mpsc::Sender<(PublicKey, Bytes)>) {
        let Some(shared) = self.shared() else { return };
        let (from, content) = match ev {
            Event::NeighborUp(id) => (node_key(&id), None),
            Event::Received(msg) => (node_key(&msg.delivered_from), Some(msg.content)),
            Event::NeighborDown(_) | Event::Lagged => return,
        };
        if !shared.is_member(&self.store, &from) {
            tracing::info!(peer = %from.short(), store = %self.store.id().to_hex(), "ignoring gossip from a non-member");
            return;
        }
        shared.peers.seen(from);
        match content {
            None => self.spawn_sync_one(from),
            Some(content) => {
                if queue.try_send((from, content)).is_err() {
                    tracing::debug!(peer = %from.short(), "gossip queue full: dropped a message");
                }
            }
        }
    }

    fn after_apply(&mut self, files: Vec<FileId>) {
        let Some(shared) = self.shared() else { return };
        for key in shared.peers_to_cut(&self.store) {
            client::cut_off(&shared, &key);
        }
        let changes: Vec<(Vec<Content>, Vec<Content>)> = self.store.read(|s| {
            files
                .iter()
                .filter_map(|f| {
                    let now = s.blob_pieces(*f);
                    let before = if now.is_empty() {
                        self.known.remove(f)
                    } else {
                        self.known.insert(*f, now.clone())
                    };
                    Some((before?, now))
                })
                .collect()
        });
        if self.settings.fetch != FetchMode::Eager || files.is_empty() {
            return;
        }
        let (store, counters) = (self.store.clone(), self.counters.clone());
        tokio::spawn(async move {
            match blobs::fetch_files(&shared, &store, files, changes).await {
                Ok(n) if n > 0 => tracing::debug!(blobs = n, "fetched content"),
                Ok(_) => {}
                Err(e) => {
                    counters.missing.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("fetching content failed, will retry: {e}");
                }
            }
        });
    }

    fn spawn_fetch_all(&self) {
        let Some(shared) = self.shared() else { return };
        let (store, counters) = (self.store.clone(), self.counters.clone());
        tokio::spawn(async move {
            match blobs::fetch_all(&shared, &store).await {
                Ok(_) => counters.missing.store(0, Ordering::Relaxed),
                Err(e) => tracing::info!("fetching content failed, will retry: {e}"),
            }
        });
    }

    fn spawn_sync_one(&self, peer: PublicKey) {
        let (weak, store) = (self.shared.clone(), self.store.clone());
        tokio::spawn(async move {
            let Some(shared) = weak.upgrade() else { return };
            if let Err(e) = client::reconcile_hint(&shared, &store, peer).await {
                tracing::debug!(peer = %peer.short(), "reconcile failed: {e}");
            }
        });
    }

    /// Reconciles with every member in the background, answering `reply` when done.
    fn spawn_sync_all(&self, reply: Option<oneshot::Sender<Result<SyncReport, NetError>>>) {
        let (weak, store) = (self.shared.clone(), self.store.clone());
        tokio::spawn(async move {
            let Some(shared) = weak.upgrade() else { return };
            let report = sync_members(&shared, &store).await;
            if let Some(reply) = reply {
                let _ = reply.send(Ok(report));
            }
        });
    }

    /// One anti-entropy pass; true if anything moved or local changes reached a peer.
    async fn sync_all(&mut self) -> bool {
        let Some(shared) = self.shared() else {
            return false;
        };
        let report = sync_members(&shared, &self.store).await;
        if report.peers > 0 {
            self.unsent.clear();
            self.counters.unsent.store(0, Ordering::Relaxed);
        }
        if self.settings.fetch == FetchMode::Eager
            && self.counters.missing.load(Ordering::Relaxed) > 0
        {
            self.counters.missing.store(0, Ordering::Relaxed);
            self.spawn_fetch_all();
        }
        report.total.pulled + report.total.pushed > 0
    }
}

/// Aborts a task when dropped (the gossip worker ends with its subscription).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Handles received gossip messages of `store` one at a time: applies inline
/// intentions (a floating one hints a reconcile with the sender), pulls announced ones.
async fn gossip_worker(
    shared: Weak<Shared>,
    store: Store,
    mut inbox: mpsc::Receiver<(PublicKey, Bytes)>,
) {
    while let Some((from, content)) = inbox.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Ok(g) = Gossip::decode(content) else {
            tracing::info!(peer = %from.short(), "dropping a malformed gossip message");
            continue;
        };
        match g.kind {
            Some(gossip::Kind::Intention(bytes)) => {
                let st = store.clone();
                match blocking(move || st.apply_remote(bytes)).await {
                    Ok(Ok(ApplyOutcome::Floating { .. })) => {
                        let (sh, st) = (shared.clone(), store.clone());
                        tokio::spawn(async move {
                            if let Err(e) = client::reconcile_hint(&sh, &st, from).await {
                                tracing::debug!(peer = %from.short(), "reconcile failed: {e}");
                            }
                        });
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::info!(peer = %from.short(), "refused a gossiped intention: {e}")
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            Some(gossip::Kind::Hash(h)) => {
                let Some(hash) = Hash::from_slice(&h) else {
                    continue;
                };
                if let Err(e) = client::fetch_one(&shared, &store, from, hash).await {
                    tracing::debug!("pulling an announced intention failed: {e}");
                }
            }
            None => {}
        }
    }
}

/// Reconciles `store` with each other member in turn.
async fn sync_members(shared: &Arc<Shared>, store: &Store) -> SyncReport {
    let mut report = SyncReport::default();
    for peer in shared.other_members(store) {
        match client::reconcile(shared, store, peer).await {
            Ok(r) => {
                report.peers += 1;
                report.total.rounds += r.rounds;
                report.total.reconcile_bytes += r.reconcile_bytes;
                report.total.pulled += r.pulled;
                report.total.pushed += r.pushed;
            }
            Err(e) => report.failed.push((peer, e.to_string())),
        }
    }
    report
}

impl Shared {
    /// Keys revoked from `store`, whose connections `client::cut_off` closes (all of
    /// them, or the gossip ones of a key still a member of another store here).
    pub fn peers_to_cut(&self, store: &Store) -> Vec<PublicKey> {
        store
            .read(|s| s.revocation_cuts())
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_passes_back_off_to_the_longest_interval() {
        let t = Instant::now();
        let mut s = Schedule::new(t);
        assert_eq!(s.due, t + ANTI_ENTROPY_MIN);
        let mut gaps = Vec::new();
        let mut now = s.due;
        for _ in 0..6 {
            s.passed(now, false);
            gaps.push((s.due - now).as_secs());
            now = s.due;
        }
        assert_eq!(gaps, [4, 8, 16, 30, 30, 30]);
        s.passed(now, true);
        assert_eq!(s.due, now + ANTI_ENTROPY_MIN);
    }

    #[test]
    fn a_local_change_after_a_long_idle_is_confirmed_within_the_shortest_interval() {
        let t = Instant::now();
        let mut s = Schedule::new(t);
        let mut now = t;
        for _ in 0..5 {
            now = s.due;
            s.passed(now, false);
        }
        assert_eq!(s.due, now + ANTI_ENTROPY_MAX);
        let change = now + Duration::from_secs(1);
        s.local_change(change);
        assert_eq!(s.due, change + ANTI_ENTROPY_MIN);
    }

    #[test]
    fn a_steady_writer_does_not_put_the_next_pass_off() {
        let t = Instant::now();
        let mut s = Schedule::new(t);
        for ms in (0..5_000).step_by(100) {
            s.local_change(t + Duration::from_millis(ms));
        }
        assert_eq!(s.due, t + ANTI_ENTROPY_MIN);
    }
}
