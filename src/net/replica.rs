//! The driver of one store's [`Replica`] (the protocol itself is `sync::replica`): a
//! dedicated thread owns the replica and feeds it events one at a time (store calls
//! happen inside `handle`, so it runs off the async workers); an async task carries out
//! its actions in order. Inputs come from the store's event channel, the gossip
//! subscription, `serve.rs` (requests of other nodes, routed here by store id), the
//! opener streams of this node's conversations, the wake timer, `sync` and settings.
//!
//! Nothing here decides what to send, to whom or when: a `Send` opens (or reuses) the
//! stream of its conversation and returns the answer as `Event::Answer`; a `Reply` goes
//! to the stream task serving that conversation; `WakeAt` arms one timer; `Fetch` runs
//! `blobs`; `Subscribe`/`Broadcast`/`JoinPeers` use iroh-gossip. Transport limits stay
//! here: received gossip waits in a queue of at most [`GOSSIP_QUEUE`] messages (more are
//! dropped; anti-entropy brings what they announced).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use iroh::endpoint::{RecvStream, SendStream};
use iroh_gossip::api::{Event as GossipEvent, GossipSender};
use n0_future::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::hlc::now_ms;
use crate::identity::PublicKey;
use crate::ids::Hash;
use crate::net::client::open_stream;
use crate::net::peers::{endpoint_id, node_key};
use crate::net::settings::{FetchMode, Settings};
use crate::net::{
    blobs, progress, topic, NetError, Shared, StreamError, Violation, MAX_FRAME, PEER_TIMEOUT,
};
use crate::proto::peer::{self as pb, request, response};
use crate::store::{Store, StoreEvent};
use crate::sync::replica::{
    Action, Conv, Event, Failure, FetchOrder, Mode, Replica, SyncReport, Ticket,
};
use crate::sync::Refusal;
use crate::wire::{read_frame, write_frame};

/// Received gossip messages waiting for the store's replica; more are dropped (at most
/// this many × `GOSSIP_MAX` bytes wait per store).
pub(crate) const GOSSIP_QUEUE: usize = 256;

/// What the replica thread takes.
enum Input {
    /// An event for the replica, with the store's [`Store::received`] count it brings
    /// the driver up to once acted on.
    Event(Event, Option<u64>),
    /// A received gossip message (counted against [`GOSSIP_QUEUE`]).
    Gossip(Event),
    /// Stop the thread.
    Stop,
}

/// An answer for an acceptor-side stream.
pub(crate) enum Out {
    /// Write this answer; `last`: finish the stream after it.
    Reply(response::Kind, bool),
    /// Write this refusal and finish the stream.
    Refuse(Refusal),
}

/// The handle of a running replica driver.
#[derive(Clone)]
pub(crate) struct ReplicaHandle {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    inputs: mpsc::UnboundedSender<Input>,
    /// Gossip messages waiting in `inputs`.
    gossip_waiting: AtomicUsize,
    unsent: AtomicU64,
    /// Acceptor-side streams by (opener, conversation).
    routes: Mutex<HashMap<(PublicKey, Conv), mpsc::UnboundedSender<Out>>>,
    /// `sync` calls waiting for their report.
    tickets: Mutex<HashMap<Ticket, oneshot::Sender<SyncReport>>>,
    next_ticket: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The store's [`Store::received`] count whose events the driver has acted on (their
    /// fetches started, their changes listed).
    handled: AtomicU64,
    /// Signalled when `handled` grows.
    handled_grew: tokio::sync::Notify,
}

impl ReplicaHandle {
    fn event(&self, event: Event) {
        let _ = self.inner.inputs.send(Input::Event(event, None));
    }

    /// Waits, at most `wait`, until the driver has acted on the store's events up to the
    /// [`Store::received`] count `want`: every received change a reader has seen then
    /// has its fetch started.
    pub(crate) async fn caught_up(&self, want: u64, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let grew = self.inner.handled_grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            if self.inner.handled.load(Ordering::Acquire) >= want {
                return;
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                return;
            }
        }
    }

    /// Local intentions not yet confirmed sent.
    pub(crate) fn unsent(&self) -> u64 {
        self.inner.unsent.load(Ordering::Relaxed)
    }

    /// The name of the replica's store.
    pub(crate) fn name(&self) -> String {
        crate::node::store_name(&self.inner.store)
    }

    /// The network changed: sync now.
    pub(crate) fn network_changed(&self) {
        self.event(Event::NetworkChanged);
    }

    /// Chunks of a file still being written here, claimed for the store: announce them.
    pub(crate) fn stored_ahead(&self, chunks: Vec<Hash>) {
        self.event(Event::StoredAhead(chunks));
    }

    /// New local settings.
    pub(crate) fn settings(&self, s: Settings) {
        self.event(Event::Settings(mode(s)));
    }

    /// Runs a sync pass with every member and returns its report.
    pub(crate) async fn sync(&self) -> Result<SyncReport, NetError> {
        let ticket = Ticket(self.inner.next_ticket.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.inner.tickets.lock().insert(ticket, tx);
        self.event(Event::Sync(ticket));
        let report = rx
            .await
            .map_err(|_| NetError::NoReplica(crate::node::store_name(&self.inner.store)))?;
        if report.paused {
            return Err(NetError::Paused(crate::node::store_name(&self.inner.store)));
        }
        Ok(report)
    }

    /// Hands request `request` of `from` on `conv` to the replica; its answers go to
    /// `out` (registered on the conversation's first request).
    pub(crate) fn request(
        &self,
        from: PublicKey,
        conv: Conv,
        request: pb::Request,
        out: &mpsc::UnboundedSender<Out>,
    ) {
        self.inner
            .routes
            .lock()
            .entry((from, conv))
            .or_insert_with(|| out.clone());
        self.event(Event::Request {
            from,
            conv,
            request,
        });
    }

    /// A `Reply { last: false }` on `conv` of `to` was written.
    pub(crate) fn drained(&self, to: PublicKey, conv: Conv) {
        self.event(Event::Drained { to, conv });
    }

    /// The opener finished or dropped `conv`.
    pub(crate) fn closed(&self, from: PublicKey, conv: Conv) {
        self.inner.routes.lock().remove(&(from, conv));
        self.event(Event::Closed { from, conv });
    }

    /// Stops the driver and waits for its thread.
    pub(crate) async fn stop(&self) {
        let _ = self.inner.inputs.send(Input::Stop);
        for task in self.inner.tasks.lock().drain(..) {
            task.abort();
        }
        let thread = self.inner.thread.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::task::spawn_blocking(move || thread.join()),
            )
            .await;
        }
    }
}

fn mode(s: Settings) -> Mode {
    Mode {
        paused: s.paused,
        eager: s.fetch == FetchMode::Eager,
    }
}

/// Starts the driver of `store`'s replica.
pub(crate) fn spawn(shared: Weak<Shared>, store: Store, settings: Settings) -> ReplicaHandle {
    let (inputs, rx) = mpsc::unbounded_channel();
    let (acts_tx, acts_rx) = mpsc::unbounded_channel();
    let handle = ReplicaHandle {
        inner: Arc::new(Inner {
            store: store.clone(),
            inputs,
            gossip_waiting: AtomicUsize::new(0),
            unsent: AtomicU64::new(0),
            routes: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
            next_ticket: AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
            thread: Mutex::new(None),
            handled: AtomicU64::new(0),
            handled_grew: tokio::sync::Notify::new(),
        }),
    };
    let events = store.subscribe();
    // What came before the subscription was never this driver's to act on.
    handle
        .inner
        .handled
        .store(store.received(), Ordering::Release);
    let thread = {
        let (h, shared) = (Arc::downgrade(&handle.inner), shared.clone());
        std::thread::Builder::new()
            .name(format!("replica-{}", &store.id().to_hex()[..8]))
            .spawn(move || run(h, shared, store, settings, rx, acts_tx))
            .expect("the OS starts a thread for each store's replica")
    };
    *handle.inner.thread.lock() = Some(thread);
    let forward = tokio::spawn(forward_store_events(handle.clone(), events));
    let exec = tokio::spawn(execute(shared, handle.clone(), acts_rx));
    handle.inner.tasks.lock().extend([forward, exec]);
    handle
}

/// The replica thread: feeds inputs to the replica, hands its actions on.
fn run(
    handle: Weak<Inner>,
    shared: Weak<Shared>,
    store: Store,
    settings: Settings,
    mut inputs: mpsc::UnboundedReceiver<Input>,
    actions: mpsc::UnboundedSender<(Vec<Action>, Option<u64>)>,
) {
    let secret = match shared.upgrade().map(|sh| sh.topic_secret(&store)) {
        Some(Ok(secret)) => secret,
        Some(Err(e)) => {
            tracing::warn!(store = %store.id().to_hex(), "gossip secret: {e}");
            None
        }
        None => return,
    };
    let Some(me) = shared.upgrade().map(|sh| sh.me()) else {
        return;
    };
    let (mut replica, first) = Replica::new(store.clone(), me, secret, mode(settings), now_ms());
    if actions.send((first, None)).is_err() {
        return;
    }
    if let Some(sh) = shared.upgrade() {
        progress::count(&sh, &store, replica.pieces(None), true);
    }
    while let Some(input) = inputs.blocking_recv() {
        let (event, received) = match input {
            Input::Stop => return,
            Input::Event(e, received) => (e, received),
            Input::Gossip(e) => {
                if let Some(h) = handle.upgrade() {
                    h.gossip_waiting.fetch_sub(1, Ordering::Relaxed);
                }
                (e, None)
            }
        };
        let applied = match &event {
            Event::Applied(files) => Some(files.clone()),
            _ => None,
        };
        let out = replica.handle(event, now_ms());
        // The replica has just read the pieces of the applied files.
        if let (Some(files), Some(sh)) = (applied, shared.upgrade()) {
            progress::count(
                &sh,
                &store,
                replica.pieces(files.as_deref()),
                files.is_none(),
            );
        }
        if let Some(h) = handle.upgrade() {
            h.unsent.store(replica.unsent(), Ordering::Relaxed);
        }
        if (!out.is_empty() || received.is_some()) && actions.send((out, received)).is_err() {
            return;
        }
    }
}

/// Turns the store's events into replica events.
async fn forward_store_events(
    handle: ReplicaHandle,
    mut events: tokio::sync::broadcast::Receiver<StoreEvent>,
) {
    loop {
        let (event, received) = match events.recv().await {
            Ok(StoreEvent::Sealed(list)) => (Event::Sealed(list), None),
            Ok(StoreEvent::Applied {
                files, received, ..
            }) => (Event::Applied(Some(files)), Some(received)),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                let received = handle.inner.store.received();
                (Event::Applied(None), Some(received))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let _ = handle.inner.inputs.send(Input::Event(event, received));
    }
}

/// The action side of one driver: transport state and the order actions came in.
struct Exec {
    shared: Weak<Shared>,
    handle: ReplicaHandle,
    /// Opener-side conversations: where their next requests go.
    convs: HashMap<Conv, mpsc::UnboundedSender<request::Kind>>,
    gossip: Option<(GossipSender, JoinHandle<()>)>,
    timer: Option<JoinHandle<()>>,
}

impl Drop for Exec {
    fn drop(&mut self) {
        if let Some((_, task)) = self.gossip.take() {
            task.abort();
        }
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }
}

async fn execute(
    shared: Weak<Shared>,
    handle: ReplicaHandle,
    mut actions: mpsc::UnboundedReceiver<(Vec<Action>, Option<u64>)>,
) {
    let mut x = Exec {
        shared,
        handle,
        convs: HashMap::new(),
        gossip: None,
        timer: None,
    };
    while let Some((list, received)) = actions.recv().await {
        let Some(shared) = x.shared.upgrade() else {
            return;
        };
        for action in list {
            x.act(&shared, action).await;
        }
        if let Some(received) = received {
            let inner = &x.handle.inner;
            inner.handled.fetch_max(received, Ordering::Release);
            inner.handled_grew.notify_waiters();
        }
    }
}

impl Exec {
    async fn act(&mut self, shared: &Arc<Shared>, action: Action) {
        let store = &self.handle.inner.store;
        match action {
            Action::Send {
                conv,
                peer,
                request,
            } => {
                let tx = self.convs.entry(conv).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let (sh, h) = (Arc::downgrade(shared), self.handle.clone());
                    tokio::spawn(open_conversation(sh, h, conv, peer, rx));
                    tx
                });
                let _ = tx.send(request);
            }
            Action::Finish(conv) => {
                self.convs.remove(&conv);
            }
            Action::Reply {
                to,
                conv,
                mut response,
                last,
            } => {
                if let response::Kind::Redeemed(r) = &mut response {
                    fill_addrs(shared, &mut r.peers);
                }
                let routes = &self.handle.inner.routes;
                let out = if last {
                    routes.lock().remove(&(to, conv))
                } else {
                    routes.lock().get(&(to, conv)).cloned()
                };
                if let Some(out) = out {
                    let _ = out.send(Out::Reply(response, last));
                }
            }
            Action::Refuse { to, conv, refusal } => {
                if let Some(out) = self.handle.inner.routes.lock().remove(&(to, conv)) {
                    let _ = out.send(Out::Refuse(refusal));
                }
            }
            Action::Subscribe { secret, peers } => self.subscribe(shared, secret, peers).await,
            Action::Unsubscribe => {
                if let Some((_, task)) = self.gossip.take() {
                    task.abort();
                }
            }
            Action::Broadcast(msg) => {
                if let Some((sender, _)) = &self.gossip {
                    if let Err(e) = sender.broadcast(msg).await {
                        tracing::debug!("gossip broadcast failed: {e:#}");
                    }
                }
            }
            Action::JoinPeers(peers) => {
                if let Some((sender, _)) = &self.gossip {
                    let ids = peers.iter().filter_map(endpoint_id).collect();
                    if let Err(e) = sender.join_peers(ids).await {
                        tracing::debug!("gossip rejoin failed: {e:#}");
                    }
                }
            }
            Action::SaveSecret(secret) => {
                if let Err(e) = shared.adopt_topic_secret(store, secret) {
                    tracing::warn!("{e}");
                }
            }
            Action::Learn { peer, addrs } => {
                shared
                    .peers
                    .learn(peer, addrs.iter().filter_map(|a| a.parse().ok()));
            }
            Action::Fetch(order) => {
                let (sh, st, h) = (shared.clone(), store.clone(), self.handle.clone());
                // Listed before this action counts as acted on (`caught_up`), so a read
                // that saw the changes finds them.
                let order = match order {
                    FetchOrder::Ahead { from, chunks } => {
                        tokio::spawn(
                            async move { blobs::fetch_ahead(&sh, &st, from, chunks).await },
                        );
                        return;
                    }
                    FetchOrder::All => None,
                    FetchOrder::Files { files, changes } => {
                        let changes: Arc<[blobs::Change]> = changes.into();
                        let listed = blobs::Listed::new(shared, store.id(), &changes);
                        Some((files, changes, listed))
                    }
                };
                tokio::spawn(async move {
                    let all = order.is_none();
                    let result = match order {
                        None => blobs::fetch_all(&sh, &st).await,
                        Some((files, changes, _listed)) => {
                            blobs::fetch_files(&sh, &st, files, &changes).await
                        }
                    };
                    match &result {
                        Ok(n) if *n > 0 => tracing::debug!(blobs = n, "fetched content"),
                        Ok(_) => {}
                        Err(e) => tracing::info!("fetching content failed, will retry: {e}"),
                    }
                    h.event(Event::Fetched {
                        all,
                        ok: result.is_ok(),
                    });
                });
            }
            Action::CutOff(key) => crate::net::client::cut_off(shared, &key),
            Action::Redial(peer) => {
                shared.conns.lock().remove(&peer);
            }
            Action::WakeAt(at) => {
                if let Some(t) = self.timer.take() {
                    t.abort();
                }
                let h = self.handle.clone();
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                self.timer = Some(tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    h.event(Event::Wake);
                }));
            }
            Action::Synced(ticket, report) => {
                if let Some(tx) = self.handle.inner.tickets.lock().remove(&ticket) {
                    let _ = tx.send(report);
                }
            }
        }
    }

    /// Joins the gossip topic of `secret` through `peers` and pumps what it receives
    /// into the replica.
    async fn subscribe(&mut self, shared: &Arc<Shared>, secret: [u8; 32], peers: Vec<PublicKey>) {
        if let Some((_, task)) = self.gossip.take() {
            task.abort();
        }
        let bootstrap = peers.iter().filter_map(endpoint_id).collect();
        match shared
            .gossip
            .subscribe(topic::topic(&secret), bootstrap)
            .await
        {
            Ok(topic) => {
                let (sender, receiver) = topic.split();
                let pump = tokio::spawn(pump_gossip(
                    Arc::downgrade(shared),
                    self.handle.clone(),
                    receiver,
                ));
                self.gossip = Some((sender, pump));
                self.handle.event(Event::GossipUp(true));
            }
            Err(e) => {
                let store = &self.handle.inner.store;
                tracing::warn!(store = %store.id().to_hex(), "cannot join the gossip topic: {e:#}");
                self.handle.event(Event::GossipUp(false));
            }
        }
    }
}

/// Feeds received gossip to the replica, dropping messages beyond [`GOSSIP_QUEUE`].
async fn pump_gossip(
    shared: Weak<Shared>,
    handle: ReplicaHandle,
    mut receiver: iroh_gossip::api::GossipReceiver,
) {
    loop {
        match receiver.next().await {
            Some(Ok(GossipEvent::NeighborUp(id))) => {
                handle.event(Event::NeighborUp(node_key(&id)));
            }
            Some(Ok(GossipEvent::Received(msg))) => {
                if let Some(sh) = shared.upgrade() {
                    sh.heard(node_key(&msg.delivered_from));
                }
                let waiting = &handle.inner.gossip_waiting;
                if waiting.fetch_add(1, Ordering::Relaxed) >= GOSSIP_QUEUE {
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    tracing::debug!("gossip queue full: dropped a message");
                    continue;
                }
                let event = Event::Gossip {
                    from: node_key(&msg.delivered_from),
                    message: msg.content,
                };
                if handle.inner.inputs.send(Input::Gossip(event)).is_err() {
                    return;
                }
            }
            Some(Ok(GossipEvent::NeighborDown(id))) => {
                handle.event(Event::NeighborDown(node_key(&id)));
            }
            Some(Ok(GossipEvent::Lagged)) => {}
            Some(Err(e)) => {
                tracing::debug!("gossip receiver failed: {e:#}");
                handle.event(Event::GossipUp(false));
                return;
            }
            None => {
                handle.event(Event::GossipUp(false));
                return;
            }
        }
    }
}

/// Gives the members a `Redeemed` answer lists the addresses this node knows (its own
/// for itself), dropping those it knows none for.
fn fill_addrs(shared: &Shared, peers: &mut Vec<pb::PeerAddrs>) {
    let me = shared.me();
    for p in peers.iter_mut() {
        let Ok(id) = <[u8; 32]>::try_from(&p.id[..]) else {
            continue;
        };
        let key = PublicKey(id);
        let addrs = if key == me {
            shared.direct_addrs()
        } else {
            shared.peers.addrs(&key)
        };
        p.addrs = addrs.iter().map(|a| a.to_string()).collect();
    }
    peers.retain(|p| !p.addrs.is_empty());
}

/// One opener-side conversation: dials `peer` (or reuses the connection), opens a
/// stream, and for each request the replica sends writes it and returns the answer
/// as `Event::Answer`. Ends when the replica finishes the conversation or it fails.
async fn open_conversation(
    shared: Weak<Shared>,
    handle: ReplicaHandle,
    conv: Conv,
    peer: PublicKey,
    mut requests: mpsc::UnboundedReceiver<request::Kind>,
) {
    let Some(first) = requests.recv().await else {
        return;
    };
    let opened = match shared.upgrade() {
        Some(sh) => open_stream(&sh, peer).await.map(|s| (s, sh)),
        None => return,
    };
    let ((mut send, mut recv), sh) = match opened {
        Ok(s) => s,
        Err(e) => {
            let failure = match e {
                NetError::Dial { .. } => Failure::Unreachable(e.to_string()),
                e => Failure::Transport(e.to_string()),
            };
            return handle.event(Event::Answer {
                conv,
                answer: Err(failure),
            });
        }
    };
    let mut addrs: Vec<String> = sh.direct_addrs().iter().map(|a| a.to_string()).collect();
    drop(sh);
    let store_id = Bytes::copy_from_slice(&handle.inner.store.id().0);
    let mut next = Some(first);
    while let Some(kind) = next.take() {
        let msg = pb::Request {
            store_id: store_id.clone(),
            addrs: std::mem::take(&mut addrs),
            kind: Some(kind),
        };
        let answer = ask(peer, &mut send, &mut recv, &msg).await;
        let failed = answer.is_err();
        handle.event(Event::Answer { conv, answer });
        if failed {
            return;
        }
        next = requests.recv().await;
    }
    let _ = send.finish();
}

/// Writes one request and reads its answer.
async fn ask(
    peer: PublicKey,
    send: &mut SendStream,
    recv: &mut RecvStream,
    msg: &pb::Request,
) -> Result<response::Kind, Failure> {
    let short = peer.short();
    let transport = |e: NetError| Failure::Transport(e.to_string());
    write_frame(send, msg, MAX_FRAME).await.map_err(|source| {
        transport(NetError::Frame {
            peer: short.clone(),
            source,
        })
    })?;
    let answer: Option<pb::Response> =
        tokio::time::timeout(PEER_TIMEOUT, read_frame(recv, MAX_FRAME))
            .await
            .map_err(|_| {
                transport(NetError::Stream {
                    peer: short.clone(),
                    cause: StreamError::NoAnswer(PEER_TIMEOUT),
                })
            })?
            .map_err(|source| {
                transport(NetError::Frame {
                    peer: short.clone(),
                    source,
                })
            })?;
    let Some(answer) = answer else {
        return Err(transport(NetError::Stream {
            peer: short,
            cause: StreamError::Closed,
        }));
    };
    match answer.kind {
        Some(response::Kind::Refusal(r)) => Err(Failure::Refused(Refusal::from(r))),
        Some(kind) => Ok(kind),
        None => Err(transport(NetError::Protocol {
            peer: short,
            violation: Violation::EmptyAnswer,
        })),
    }
}
