//! The replication protocol of one store as a state machine (sans IO).
//!
//! A [`Replica`] owns a store handle (a [`ReplicaStore`]) and nothing else of the
//! outside world. The driver (`net/` in production, the simulator in tests) turns
//! transport and time into [`Event`]s, calls [`Replica::handle`] with the time `now`,
//! and carries out the returned [`Action`]s in order. Store calls (apply, get, missing,
//! witness, reconcile view, redeem) happen inside `handle`: the store is the replica's
//! disk, so the driver calls `handle` off its async threads. There is no wall clock, no
//! randomness and no task in here; identical events at identical times give identical
//! actions.
//!
//! **Lifecycle.** Unpaused, a replica *starts*: it subscribes to the gossip topic if it
//! has the secret (`Subscribe`, answered by `GossipUp`), else asks the other members
//! for it one at a time (`AskSecret`; the first 32-byte answer is kept with
//! `SaveSecret`, then it subscribes); in eager mode it fetches every blob; and it begins
//! a pass. `Settings` with `paused` *stops* it: `Unsubscribe`, `Finish` of every
//! opener conversation, responder state dropped, waiting tickets answered with a
//! `paused` report; every request is then refused. Resuming starts it again. A failed
//! or ended subscription (`GossipUp(false)`) is retried after [`ANTI_ENTROPY_MIN`].
//!
//! **Passes and the schedule.** A pass runs one reconciliation round with every other
//! member at once and ends when all rounds ended (ok or failed); its [`SyncReport`]
//! answers the `Sync` tickets that asked for it. A `Sync` or timer arriving during a
//! pass queues one more pass after it. Passes are due on a schedule: first
//! [`ANTI_ENTROPY_MIN`] after start, then MIN after a pass that moved something (or
//! left local intentions unsent), else twice the last interval up to
//! [`ANTI_ENTROPY_MAX`]; a local seal pulls the due time in to at most MIN away. The
//! replica asks for its next wake with `WakeAt` whenever that time changes. A pass that
//! reached a member confirms the intentions sealed before it began (`unsent` drops to
//! those sealed since); while some stay unsent the replica asks the gossip layer to
//! dial the members again (`JoinPeers`). `NetworkChanged` (a link came up, an address
//! changed, a resume from sleep, a member found on the local network) starts the schedule
//! again from MIN, retries a failed subscription or redials the members of a live one,
//! and begins a pass at once. After a pass in eager mode, a blob fetch that
//! had failed is retried as a fetch of everything. A timer pass also asks for the
//! gossip secret again if it is still missing.
//!
//! **A round with one peer** is one opener conversation, its phases in order:
//! *Negotiate* (negentropy frames, `Reconcile` requests, until the initiator is done or
//! [`MAX_RECONCILE_DIFF`] hashes piled up on either side), *Want* (the hashes the peer
//! has, [`MAX_WANT`] per request, applied in HLC order; intentions not asked for are
//! dropped, and an answer with none of the asked ones ends this phase — a peer may hold
//! sealed intentions it does not send before they are durable — so the next pass asks
//! again), *Predecessors* (up to [`PREDECESSOR_ROUNDS`]
//! `Want`s of what floating intentions wait for, until none is missing or the peer has
//! none), *Push* (the hashes the peer lacks in batches of [`BATCH_BYTES`]), *Attest*
//! (this node's attestation, built from a durable commit, sent as `Attest`; the answer
//! `Attested` is the peer's, which the store keeps: see `sync::frontier`), then
//! `Finish`. A refused `Attest` (a peer that does not know the request) or an
//! attestation the store refuses ends the round as it stands: the intentions moved. Rounds with one peer never overlap: a hint (a gossiped intention that
//! floats, a member neighbour coming up) while one runs sets an *again* flag and one
//! more round follows; a pass finding a round running asks for a round of its own after
//! it. A transport failure (a stream or frame on an existing connection) restarts the
//! round once on a fresh connection (`Redial`); a refusal, an unreachable peer or a
//! second failure fails it, with a readable reason in the report.
//! Rounds, pulls and secret requests go to current members only.
//!
//! **Gossip.** Sealed intentions are broadcast while subscribed with a neighbour up
//! (without one they wait for the next round), inline when they fit in [`GOSSIP_MAX`],
//! else as their hash. A received message counts only if the
//! neighbour that delivered it is a current member (else it is ignored, and so is a
//! `NeighborUp` of a non-member): an inline intention is applied (floating: a hint
//! to reconcile with the sender), a hash is pulled from the sender with one `Want`.
//! Chunks of a file still being written here (`StoredAhead`, already claimed for the
//! store) are announced the same way, at most [`AHEAD_MAX`] per message; in eager mode
//! an announcement is fetched from its sender first (`Fetch(Ahead)`), so a large file
//! arrives while it is written. A message naming more chunks, or a malformed hash, is
//! dropped whole.
//!
//! **After apply** (`Applied`): every key revoked from the store is cut off
//! (`CutOff`; after a local seal, each newly revoked key once), each changed file's
//! blob pieces are remembered, and in eager mode the changed files' blobs are fetched
//! with their previous pieces for patching (`Fetch(Files)`). `Fetched` with `ok: false` counts one missing; a complete fetch of
//! everything resets the count.
//!
//! **Acceptor side.** Each request names the store; the driver routes it here. `Redeem`
//! is open to anyone: the invite is redeemed and flushed at `now` (so `now` is Unix ms
//! in production), and the answer lists this node and the other members (the driver
//! adds their addresses) and the gossip secret. Every other request needs the opener to
//! be a current member ([`RefusalCode::NotMember`] otherwise) and the store unpaused
//! ([`RefusalCode::Paused`]); a refused request reads and writes nothing. Addresses sent with a
//! request are passed on (`Learn`). `Reconcile` frames are answered by a responder
//! session kept per conversation until `Closed`; `Want` (at most [`MAX_WANT`] hashes)
//! by up to [`BATCH_BYTES`] of intentions; `Push` by applying; `Attest` by keeping the
//! opener's attestation (a malformed one, or one the store refuses, is refused with its
//! code and changes nothing) and answering with this node's own; `AskSecret` by the
//! secret; `Bootstrap` by the witness log in batches, one per `Drained`, the empty last
//! one ending the stream. Bad input is refused with a code and a line, and changes no
//! state. `Patch` (blob-level) is answered by the driver behind the same membership
//! check.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use prost::Message;

use crate::cas::Content;
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{FileId, Hash};
use crate::intention::Intention;
use crate::proto::peer::{self as pb, gossip, request, response};
use crate::sync::disk::{Received, ReplicaStore};
use crate::sync::frontier::{AttestError, Attestation};
use crate::sync::reconcile::{ReconcileStorage, Session, FRAME_LIMIT};
use crate::sync::{Refusal, RefusalCode};

/// Milliseconds on the driver's clock: Unix ms in production (the same clock decides
/// invite expiry), virtual in the simulator.
pub(crate) type Millis = u64;

/// One conversation: a bidirectional stream, opened by one side. The opener's replica
/// picks its ids; on the acceptor side the driver does, and keys them by `(peer, Conv)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Conv(pub u64);

/// A `sync` the user asked for; answered by [`Action::Synced`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Ticket(pub u64);

/// Local settings of a replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mode {
    /// No network activity: no gossip, no rounds, every request refused.
    pub paused: bool,
    /// Fetch the blobs of every file as soon as it changes.
    pub eager: bool,
}

/// What happened, as the driver tells it.
#[derive(Debug)]
pub(crate) enum Event {
    /// Local intentions sealed and durable (from `StoreEvent::Sealed`).
    Sealed(Vec<Bytes>),
    /// Chunks of a file still being written here, stored and claimed for this store.
    StoredAhead(Vec<Hash>),
    /// Intentions were applied; the files they changed (`None`: unknown, e.g. lagged).
    Applied(Option<Vec<FileId>>),
    /// The gossip subscription is up (after [`Action::Subscribe`]), or failed/ended.
    GossipUp(bool),
    /// A gossip neighbour came up.
    NeighborUp(PublicKey),
    /// A gossip neighbour went down.
    NeighborDown(PublicKey),
    /// A gossip message delivered by neighbour `from` (member check is the replica's).
    Gossip {
        /// The delivering neighbour.
        from: PublicKey,
        /// One encoded `pb::Gossip`.
        message: Bytes,
    },
    /// Acceptor side: a request on conversation `conv` opened by `from`. Transport
    /// limits (frame size, stranger budgets, first-frame timeout) were the driver's.
    Request {
        /// The opener.
        from: PublicKey,
        /// Its conversation.
        conv: Conv,
        /// The request.
        request: pb::Request,
    },
    /// Acceptor side: a `Reply { last: false }` on `conv` of `to` was written; the
    /// replica may go on (a bootstrap sends its next batch).
    Drained {
        /// The opener.
        to: PublicKey,
        /// Its conversation.
        conv: Conv,
    },
    /// Acceptor side: the opener finished or dropped conversation `conv`.
    Closed {
        /// The opener.
        from: PublicKey,
        /// Its conversation.
        conv: Conv,
    },
    /// Opener side: the answer on `conv`, or why there is none.
    Answer {
        /// The conversation.
        conv: Conv,
        /// The answer.
        answer: Result<response::Kind, Failure>,
    },
    /// The time of the last [`Action::WakeAt`] has come.
    Wake,
    /// A blob fetch ordered by [`Action::Fetch`] ended (`all`: it was
    /// [`FetchOrder::All`]; `ok`: it left nothing missing).
    Fetched {
        /// The order was [`FetchOrder::All`].
        all: bool,
        /// Nothing it was to fetch is missing.
        ok: bool,
    },
    /// The user asked for a sync pass now.
    Sync(Ticket),
    /// The network changed (a link came up, an address changed, the machine woke from
    /// sleep, a member was found on the local network): sync now, not at the next timer.
    NetworkChanged,
    /// New local settings.
    Settings(Mode),
}

/// Why an opener-side conversation got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The peer could not be dialed (not worth a redial: it is offline or unknown).
    Unreachable(String),
    /// The stream or a frame failed on an existing connection (worth one redial).
    Transport(String),
    /// The peer refused, with a typed code.
    Refused(Refusal),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(why) | Failure::Transport(why) => f.write_str(why),
            Failure::Refused(r) => write!(f, "refused: {r}"),
        }
    }
}

/// Which blobs to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FetchOrder {
    /// The blobs of these files; `changes` pairs files' previous content pieces with
    /// their new ones, so changed chunks can be patched from the chunks they replace.
    Files {
        /// Files whose blobs to fetch.
        files: Vec<FileId>,
        /// (pieces before, pieces now) of changed files.
        changes: Vec<(Vec<Content>, Vec<Content>)>,
    },
    /// The blobs of every file.
    All,
    /// Chunks a member announced ahead of the file naming them (no `Fetched` follows:
    /// nothing is missing until a file names them).
    Ahead {
        /// The member that announced them, asked first.
        from: PublicKey,
        /// The chunks.
        chunks: Vec<Hash>,
    },
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    /// Opener side: send `request` on `conv` to `peer`, opening the stream on first use.
    Send {
        /// The conversation.
        conv: Conv,
        /// Its peer.
        peer: PublicKey,
        /// The request.
        request: request::Kind,
    },
    /// Opener side: this replica is done with `conv`; finish the stream.
    Finish(Conv),
    /// Acceptor side: answer `conv` of `to`; `last`: end the stream after it. A
    /// `Redeemed` answer lists members with empty addresses: the driver fills in the
    /// ones its address book knows (its own for this node) and drops the rest.
    Reply {
        /// The opener.
        to: PublicKey,
        /// Its conversation.
        conv: Conv,
        /// The answer.
        response: response::Kind,
        /// End the stream after it.
        last: bool,
    },
    /// Acceptor side: refuse and end `conv` of `to`.
    Refuse {
        /// The opener.
        to: PublicKey,
        /// Its conversation.
        conv: Conv,
        /// Why.
        refusal: Refusal,
    },
    /// Subscribe to the store's gossip topic (derived from `secret`), bootstrapping from
    /// `peers`; the driver answers with [`Event::GossipUp`].
    Subscribe {
        /// The gossip secret.
        secret: [u8; 32],
        /// Members to join through.
        peers: Vec<PublicKey>,
    },
    /// Drop the gossip subscription (paused).
    Unsubscribe,
    /// Broadcast one encoded `pb::Gossip` on the topic.
    Broadcast(Bytes),
    /// Ask the gossip layer to dial these members again.
    JoinPeers(Vec<PublicKey>),
    /// Keep this gossip secret (adopted from a member) where the driver keeps secrets.
    SaveSecret([u8; 32]),
    /// Remember these addresses for a member that sent them with a request.
    Learn {
        /// The member.
        peer: PublicKey,
        /// Its addresses as it sent them.
        addrs: Vec<String>,
    },
    /// Fetch blobs.
    Fetch(FetchOrder),
    /// Close connections to revoked `key`.
    CutOff(PublicKey),
    /// Forget the cached connection to `peer` (the next Send dials afresh).
    Redial(PublicKey),
    /// Call `handle(Event::Wake, ..)` at this time (only the latest `WakeAt` counts).
    WakeAt(Millis),
    /// The answer to `Event::Sync(ticket)`.
    Synced(Ticket, SyncReport),
}

/// What one reconciliation round with one peer moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Negentropy round trips.
    pub rounds: u32,
    /// Negentropy bytes sent plus received.
    pub reconcile_bytes: u64,
    /// Intentions pulled and applied (or parked).
    pub pulled: u64,
    /// Intentions pushed.
    pub pushed: u64,
}

/// What a sync pass did for a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The store is paused: nothing was done.
    pub paused: bool,
    /// Members reconciled with.
    pub peers: u32,
    /// Members that could not be reached, with why.
    pub failed: Vec<(PublicKey, String)>,
    /// Those of `failed` that refused this node as not a member: they hold its leave
    /// (or a revocation of it).
    pub disowned: Vec<PublicKey>,
    /// Totals over the rounds.
    pub total: RoundReport,
}

/// First anti-entropy interval, and the interval after a pass that moved something.
pub(crate) const ANTI_ENTROPY_MIN: Millis = 2_000;
/// Longest anti-entropy interval while passes find nothing to do.
pub(crate) const ANTI_ENTROPY_MAX: Millis = 30_000;
/// Largest gossip message; intentions up to about this size travel inline.
pub(crate) const GOSSIP_MAX: usize = 32 * 1024;
/// Room left in a gossip message for its framing around an inline intention.
const GOSSIP_FRAMING: usize = 16;
/// Most chunks one gossiped announcement names.
pub(crate) const AHEAD_MAX: usize = 64;

/// The chunks an announcement names, or `None` if it names more than [`AHEAD_MAX`] or
/// one hash is not 32 bytes.
pub(crate) fn announced(a: &pb::Ahead) -> Option<Vec<Hash>> {
    if a.chunks.len() > AHEAD_MAX {
        return None;
    }
    a.chunks.iter().map(|h| Hash::from_slice(h)).collect()
}

/// Most hashes one reconciliation collects on either side (the peer has, or lacks)
/// before it stops to pull and push them (8 MiB of hashes); the next pass finds the rest.
pub const MAX_RECONCILE_DIFF: usize = 256 * 1024;
/// Most rounds of asking a peer for the predecessors of floating intentions.
pub(crate) const PREDECESSOR_ROUNDS: usize = 8;
/// Most hashes one `Want` may name.
pub const MAX_WANT: usize = 4096;
/// Target size of one answer carrying intentions (a single larger intention still goes).
pub(crate) const BATCH_BYTES: usize = 1024 * 1024;
/// Target size of one witness batch to a joiner: a joiner purges what a batch's
/// attestation covers once the batch is applied, and a store commit takes up to
/// `MAX_BATCH_REQUESTS` intentions, so a batch a fraction of a commit leaves few of
/// its records unpurged when a commit writes the projection's pages.
pub(crate) const WITNESS_BATCH_BYTES: usize = 128 * 1024;

/// When the next anti-entropy pass is due.
#[derive(Debug)]
struct Schedule {
    interval: Millis,
    due: Millis,
}

impl Schedule {
    /// The first pass is due [`ANTI_ENTROPY_MIN`] after `now`.
    fn new(now: Millis) -> Self {
        Schedule {
            interval: ANTI_ENTROPY_MIN,
            due: now + ANTI_ENTROPY_MIN,
        }
    }

    /// A local change at `now`: a pass confirms it within [`ANTI_ENTROPY_MIN`], and a
    /// pass already due sooner is not put off, so a steady writer gets one every MIN.
    fn local_change(&mut self, now: Millis) {
        self.interval = ANTI_ENTROPY_MIN;
        self.due = self.due.min(now + ANTI_ENTROPY_MIN);
    }

    /// A pass ended at `now`: the next is due after MIN if it did anything (`busy`),
    /// else after twice the last interval, at most [`ANTI_ENTROPY_MAX`].
    fn passed(&mut self, now: Millis, busy: bool) {
        self.interval = if busy {
            ANTI_ENTROPY_MIN
        } else {
            (self.interval * 2).min(ANTI_ENTROPY_MAX)
        };
        self.due = now + self.interval;
    }

    /// The due time, pulled in if it lies further than one interval after `now` (the
    /// clock stepped back).
    fn due(&mut self, now: Millis) -> Millis {
        self.due = self.due.min(now + self.interval);
        self.due
    }
}

/// The gossip subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topic {
    /// Not subscribed (paused, no secret yet, or it ended).
    Off,
    /// `Subscribe` emitted, `GossipUp` not yet received.
    Joining,
    /// Subscribed: sealed intentions are broadcast.
    Up,
}

/// The reconciliation round running with one peer. Rounds with one peer never overlap.
#[derive(Debug)]
struct Slot {
    /// The round counts for the running pass.
    for_pass: bool,
    /// A hint came while it ran: go once more after it.
    again: bool,
    /// The running pass wants a round of its own after this one.
    pass_again: bool,
    /// The round already redialed once after a transport failure.
    redialed: bool,
}

/// One sync pass: a round with every member, answered to its tickets when all ended.
#[derive(Debug)]
struct Pass {
    waiting: HashSet<PublicKey>,
    report: SyncReport,
    tickets: Vec<Ticket>,
    /// Intentions sealed when the pass began: those reached a member if any round did.
    sealed_at_start: u64,
}

/// Where a reconciliation round stands.
enum Phase<V: ReconcileStorage> {
    /// Exchanging negentropy frames; `have`/`need` collected so far.
    Negotiate {
        session: Session<V>,
        have: Vec<Hash>,
        need: Vec<Hash>,
    },
    /// Asked for a batch of `need`; then the rest, then predecessors, then `have`.
    Want { need: Vec<Hash>, have: Vec<Hash> },
    /// Asked for predecessors of floating intentions; `left` more such rounds allowed.
    Predecessors { left: usize, have: Vec<Hash> },
    /// Pushed a batch; `rest` still to push.
    Push { rest: Vec<Hash> },
    /// Sent this node's attestation; the peer's comes back.
    Attest,
}

/// An opener-side conversation.
enum Opener<V: ReconcileStorage> {
    /// A reconciliation round with `peer`.
    Round {
        peer: PublicKey,
        report: RoundReport,
        phase: Phase<V>,
    },
    /// A pull of intentions announced by hash in gossip.
    Pull { peer: PublicKey, hashes: Vec<Hash> },
    /// Asking `peer` for the gossip secret; `rest` are asked next.
    Secret {
        peer: PublicKey,
        rest: Vec<PublicKey>,
    },
}

/// An acceptor-side conversation with state between requests.
enum Served<V: ReconcileStorage> {
    /// A responder session of a reconciliation.
    Reconcile(Session<V>),
    /// Streaming the witness log from seq `next`.
    Bootstrap { next: u64 },
}

/// The replication protocol of one store.
pub(crate) struct Replica<S: ReplicaStore> {
    store: S,
    me: PublicKey,
    mode: Mode,
    secret: Option<[u8; 32]>,
    topic: Topic,
    /// Gossip neighbours up now: with none, a broadcast would only sit in gossip's
    /// cache, so sealed intentions wait for the next round instead.
    neighbours: HashSet<PublicKey>,
    resubscribe: Option<Millis>,
    schedule: Schedule,
    /// The wake time last asked of the driver.
    woken: Option<Millis>,
    /// Intentions sealed since start, and those of them no round has confirmed.
    sealed: u64,
    unsent: u64,
    /// Failed blob fetches since the last complete fetch of everything.
    missing: u64,
    /// Each file's content pieces as last seen, so an edit's changed chunks can be
    /// patched from the chunks they replace (files without blobs are left out).
    known: HashMap<FileId, Vec<Content>>,
    next_conv: u64,
    convs: HashMap<Conv, Opener<S::View>>,
    slots: HashMap<PublicKey, Slot>,
    pass: Option<Pass>,
    /// Tickets for the pass after the running one (`Some` also for a timer's pass).
    queued: Option<Vec<Ticket>>,
    /// Asking members for the gossip secret.
    asking: bool,
    /// Revoked keys already cut off.
    cut: HashSet<PublicKey>,
    served: HashMap<(PublicKey, Conv), Served<S::View>>,
}

impl<S: ReplicaStore> Replica<S> {
    /// A replica of `store` for node `me`, with the gossip secret if known, at `now`.
    /// Returns its first actions (subscribe or ask a member for the secret, first pass).
    pub(crate) fn new(
        store: S,
        me: PublicKey,
        secret: Option<[u8; 32]>,
        mode: Mode,
        now: Millis,
    ) -> (Replica<S>, Vec<Action>) {
        let known = store.file_pieces(None).into_iter().collect();
        let mut r = Replica {
            store,
            me,
            mode,
            secret,
            topic: Topic::Off,
            neighbours: HashSet::new(),
            resubscribe: None,
            schedule: Schedule::new(now),
            woken: None,
            sealed: 0,
            unsent: 0,
            missing: 0,
            known,
            next_conv: 0,
            convs: HashMap::new(),
            slots: HashMap::new(),
            pass: None,
            queued: None,
            asking: false,
            cut: HashSet::new(),
            served: HashMap::new(),
        };
        let mut out = Vec::new();
        if !mode.paused {
            r.start(now, &mut out);
        }
        r.wake(now, &mut out);
        (r, out)
    }

    /// Feeds one event; returns what the driver must do, in order.
    pub(crate) fn handle(&mut self, event: Event, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Sealed(list) => self.sealed(list, now, &mut out),
            Event::StoredAhead(chunks) => self.stored_ahead(chunks, &mut out),
            Event::Applied(files) => self.applied(files, &mut out),
            Event::GossipUp(up) => {
                if self.topic == Topic::Joining && up {
                    self.topic = Topic::Up;
                } else if !up && self.topic != Topic::Off {
                    self.topic = Topic::Off;
                    self.neighbours.clear();
                    self.resubscribe = Some(now + ANTI_ENTROPY_MIN);
                }
            }
            Event::NeighborUp(peer) => {
                self.neighbours.insert(peer);
                if !self.mode.paused && self.is_member(&peer) {
                    self.hint(peer, &mut out);
                }
            }
            Event::NeighborDown(peer) => {
                self.neighbours.remove(&peer);
            }
            Event::Gossip { from, message } => self.gossip(from, message, &mut out),
            Event::Request {
                from,
                conv,
                request,
            } => self.request(from, conv, request, now, &mut out),
            Event::Drained { to, conv } => {
                if let Some(Served::Bootstrap { next }) = self.served.get(&(to, conv)) {
                    let next = *next;
                    self.witness_batch(to, conv, next, &mut out);
                }
            }
            Event::Closed { from, conv } => {
                self.served.remove(&(from, conv));
            }
            Event::Answer { conv, answer } => self.answer(conv, answer, now, &mut out),
            Event::Wake => self.woke(now, &mut out),
            Event::Fetched { all, ok } => {
                if !ok {
                    self.missing += 1;
                } else if all {
                    self.missing = 0;
                }
            }
            Event::Sync(ticket) => {
                if self.mode.paused {
                    out.push(Action::Synced(ticket, paused_report()));
                } else {
                    self.begin_pass(vec![ticket], now, &mut out);
                }
            }
            Event::Settings(mode) => self.settings(mode, now, &mut out),
            Event::NetworkChanged => self.network_changed(now, &mut out),
        }
        self.maybe_end_pass(now, &mut out);
        self.wake(now, &mut out);
        out
    }

    /// The blob pieces last seen of `files` (`None`: of every file that has any).
    pub(crate) fn pieces(&self, files: Option<&[FileId]>) -> Vec<(FileId, Vec<Content>)> {
        match files {
            Some(files) => files
                .iter()
                .map(|f| (*f, self.known.get(f).cloned().unwrap_or_default()))
                .collect(),
            None => self.known.iter().map(|(f, p)| (*f, p.clone())).collect(),
        }
    }

    /// Local intentions sealed but not yet confirmed sent to any member.
    pub(crate) fn unsent(&self) -> u64 {
        self.unsent
    }

    /// Starts network activity: the gossip topic (or asking for its secret), a first
    /// pass, and in eager mode a fetch of everything.
    fn start(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.schedule = Schedule::new(now);
        match self.secret {
            Some(_) => self.subscribe(out),
            None => self.ask_secret(out),
        }
        if self.mode.eager {
            out.push(Action::Fetch(FetchOrder::All));
        }
        self.begin_pass(Vec::new(), now, out);
    }

    /// Stops network activity: the subscription, every conversation, waiting tickets.
    fn stop(&mut self, out: &mut Vec<Action>) {
        if self.topic != Topic::Off {
            out.push(Action::Unsubscribe);
        }
        self.topic = Topic::Off;
        self.neighbours.clear();
        self.resubscribe = None;
        let mut convs: Vec<Conv> = self.convs.drain().map(|(c, _)| c).collect();
        convs.sort();
        out.extend(convs.into_iter().map(Action::Finish));
        self.slots.clear();
        self.served.clear();
        self.asking = false;
        let mut tickets = self.pass.take().map(|p| p.tickets).unwrap_or_default();
        tickets.extend(self.queued.take().unwrap_or_default());
        out.extend(
            tickets
                .into_iter()
                .map(|t| Action::Synced(t, paused_report())),
        );
    }

    fn settings(&mut self, mode: Mode, now: Millis, out: &mut Vec<Action>) {
        let old = std::mem::replace(&mut self.mode, mode);
        match (old.paused, mode.paused) {
            (false, true) => self.stop(out),
            (true, false) => self.start(now, out),
            (true, true) => {}
            (false, false) => {
                if !old.eager && mode.eager {
                    out.push(Action::Fetch(FetchOrder::All));
                }
            }
        }
    }

    /// After a network change: the schedule starts again from [`ANTI_ENTROPY_MIN`], a
    /// failed subscription is retried and a live one redials its members now, and a pass
    /// begins (or follows the running one).
    fn network_changed(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.mode.paused {
            return;
        }
        self.schedule = Schedule::new(now);
        match self.topic {
            Topic::Off => {
                self.resubscribe = None;
                self.subscribe(out);
            }
            Topic::Up => out.push(Action::JoinPeers(self.others())),
            Topic::Joining => {}
        }
        if self.secret.is_none() {
            self.ask_secret(out);
        }
        self.begin_pass(Vec::new(), now, out);
    }

    /// Asks the driver to wake it at the earliest due time, if that changed.
    fn wake(&mut self, now: Millis, out: &mut Vec<Action>) {
        let mut due = self.resubscribe;
        if !self.mode.paused && self.pass.is_none() && !self.store.is_deleted() {
            let pass = self.schedule.due(now);
            due = Some(due.map_or(pass, |d| d.min(pass)));
        }
        if due.is_some() && due != self.woken {
            self.woken = due;
            out.extend(due.map(Action::WakeAt));
        }
    }

    fn woke(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.woken = None;
        if self.mode.paused {
            return;
        }
        if self.resubscribe.is_some_and(|at| at <= now) {
            self.resubscribe = None;
            self.subscribe(out);
        }
        // A deleted store starts no pass of its own: it admits nothing more, and still
        // answers (and runs an asked-for `sync`) so the delete reaches every member.
        if self.pass.is_none() && self.schedule.due(now) <= now && !self.store.is_deleted() {
            if self.secret.is_none() {
                self.ask_secret(out);
            }
            self.begin_pass(Vec::new(), now, out);
        }
    }

    fn subscribe(&mut self, out: &mut Vec<Action>) {
        let Some(secret) = self.secret else { return };
        if self.mode.paused || self.topic != Topic::Off {
            return;
        }
        self.topic = Topic::Joining;
        out.push(Action::Subscribe {
            secret,
            peers: self.others(),
        });
    }

    fn conv(&mut self) -> Conv {
        self.next_conv += 1;
        Conv(self.next_conv)
    }

    /// Members of the store other than this node, in key order.
    fn others(&self) -> Vec<PublicKey> {
        let me = self.me;
        self.store
            .members()
            .into_iter()
            .filter(|k| *k != me)
            .collect()
    }

    fn is_member(&self, key: &PublicKey) -> bool {
        self.store.is_member(key)
    }

    // ---- local changes

    fn sealed(&mut self, list: Vec<Bytes>, now: Millis, out: &mut Vec<Action>) {
        self.sealed += list.len() as u64;
        self.unsent += list.len() as u64;
        // A local revocation: its key is cut off at once.
        for key in self.store.revoked() {
            if self.cut.insert(key) {
                out.push(Action::CutOff(key));
            }
        }
        if self.mode.paused {
            return;
        }
        self.schedule.local_change(now);
        if self.topic != Topic::Up || self.neighbours.is_empty() {
            return;
        }
        for bytes in list {
            let kind = if bytes.len() + GOSSIP_FRAMING <= GOSSIP_MAX {
                gossip::Kind::Intention(bytes)
            } else {
                let Some((_, hash)) = Intention::peek(&bytes) else {
                    continue;
                };
                gossip::Kind::Hash(Bytes::copy_from_slice(&hash.0))
            };
            let msg = pb::Gossip { kind: Some(kind) }.encode_to_vec();
            out.push(Action::Broadcast(msg.into()));
        }
    }

    /// Announces chunks stored ahead of a local file's commit to the neighbours.
    fn stored_ahead(&mut self, chunks: Vec<Hash>, out: &mut Vec<Action>) {
        if self.mode.paused || self.topic != Topic::Up || self.neighbours.is_empty() {
            return;
        }
        for part in chunks.chunks(AHEAD_MAX) {
            let ahead = pb::Ahead {
                chunks: part.iter().map(|h| Bytes::copy_from_slice(&h.0)).collect(),
            };
            let msg = pb::Gossip {
                kind: Some(gossip::Kind::Ahead(ahead)),
            };
            out.push(Action::Broadcast(msg.encode_to_vec().into()));
        }
    }

    /// After applied intentions: cut off revoked keys, remember the files' content
    /// pieces, and in eager mode fetch their blobs.
    fn applied(&mut self, files: Option<Vec<FileId>>, out: &mut Vec<Action>) {
        let cuts = self.store.revoked();
        self.cut.extend(cuts.iter().copied());
        out.extend(cuts.into_iter().map(Action::CutOff));
        let every = files.is_none();
        let pieces = self.store.file_pieces(files);
        let files: Vec<FileId> = pieces.iter().map(|(f, _)| *f).collect();
        if every {
            // Every file with pieces is listed: the others have none now.
            let listed: HashSet<FileId> = files.iter().copied().collect();
            self.known.retain(|f, _| listed.contains(f));
        }
        let known = &mut self.known;
        let changes: Vec<(Vec<Content>, Vec<Content>)> = pieces
            .into_iter()
            .filter_map(|(f, now)| {
                let before = if now.is_empty() {
                    known.remove(&f)
                } else {
                    known.insert(f, now.clone())
                };
                Some((before?, now))
            })
            .collect();
        if self.mode.eager && !self.mode.paused && !files.is_empty() {
            out.push(Action::Fetch(FetchOrder::Files { files, changes }));
        }
    }

    // ---- gossip

    fn gossip(&mut self, from: PublicKey, message: Bytes, out: &mut Vec<Action>) {
        if self.mode.paused {
            return;
        }
        if !self.is_member(&from) {
            tracing::info!(peer = %from.short(), store = %self.store.id().to_hex(), "ignoring gossip from a non-member");
            return;
        }
        let Ok(g) = pb::Gossip::decode(message) else {
            tracing::info!(peer = %from.short(), "dropping a malformed gossip message");
            return;
        };
        match g.kind {
            Some(gossip::Kind::Intention(bytes)) => match self.store.apply(bytes) {
                Ok(Received::Floating) => self.hint(from, out),
                Ok(Received::Refused(e)) => {
                    tracing::info!(peer = %from.short(), "refused a gossiped intention: {e}")
                }
                Ok(_) => {}
                Err(e) => tracing::info!(peer = %from.short(), "refused a gossiped intention: {e}"),
            },
            Some(gossip::Kind::Hash(h)) => {
                if let Some(hash) = Hash::from_slice(&h) {
                    let conv = self.conv();
                    out.push(want(conv, from, std::slice::from_ref(&hash)));
                    self.convs.insert(
                        conv,
                        Opener::Pull {
                            peer: from,
                            hashes: vec![hash],
                        },
                    );
                }
            }
            Some(gossip::Kind::Ahead(a)) => {
                if !self.mode.eager {
                    return;
                }
                match announced(&a) {
                    Some(chunks) if !chunks.is_empty() => {
                        out.push(Action::Fetch(FetchOrder::Ahead { from, chunks }))
                    }
                    Some(_) => {}
                    None => {
                        tracing::info!(peer = %from.short(), "dropping a malformed chunk announcement")
                    }
                }
            }
            None => {}
        }
    }

    /// A hint that `peer` has something: a round with it, or once more after its
    /// running one (so a burst of hints costs one or two rounds).
    fn hint(&mut self, peer: PublicKey, out: &mut Vec<Action>) {
        match self.slots.get_mut(&peer) {
            Some(slot) => slot.again = true,
            None => self.begin_round(peer, false, false, out),
        }
    }

    fn ask_secret(&mut self, out: &mut Vec<Action>) {
        if self.asking || self.mode.paused || self.secret.is_some() {
            return;
        }
        self.asking = true;
        let rest = self.others();
        self.next_secret(rest, out);
    }

    fn next_secret(&mut self, mut rest: Vec<PublicKey>, out: &mut Vec<Action>) {
        if rest.is_empty() {
            self.asking = false;
            tracing::info!(store = %self.store.id().to_hex(), "no member has handed over the gossip secret yet");
            return;
        }
        let peer = rest.remove(0);
        let conv = self.conv();
        out.push(Action::Send {
            conv,
            peer,
            request: request::Kind::AskSecret(pb::AskSecret {}),
        });
        self.convs.insert(conv, Opener::Secret { peer, rest });
    }

    // ---- passes and rounds

    /// Starts a pass with every member answering `tickets`, or queues it after the
    /// running one.
    fn begin_pass(&mut self, tickets: Vec<Ticket>, now: Millis, out: &mut Vec<Action>) {
        if self.pass.is_some() {
            self.queued.get_or_insert_with(Vec::new).extend(tickets);
            return;
        }
        let members = self.others();
        self.pass = Some(Pass {
            waiting: members.iter().copied().collect(),
            report: SyncReport::default(),
            tickets,
            sealed_at_start: self.sealed,
        });
        for peer in members {
            match self.slots.get_mut(&peer) {
                Some(slot) => slot.pass_again = true,
                None => self.begin_round(peer, true, false, out),
            }
        }
        self.maybe_end_pass(now, out);
    }

    fn maybe_end_pass(&mut self, now: Millis, out: &mut Vec<Action>) {
        if !self.pass.as_ref().is_some_and(|p| p.waiting.is_empty()) {
            return;
        }
        let Some(pass) = self.pass.take() else { return };
        let report = pass.report;
        if report.peers > 0 {
            self.unsent = self.sealed - pass.sealed_at_start;
        }
        if self.mode.eager && self.missing > 0 {
            self.missing = 0;
            out.push(Action::Fetch(FetchOrder::All));
        }
        let moved = report.total.pulled + report.total.pushed > 0;
        self.schedule.passed(now, moved || self.unsent > 0);
        if self.unsent > 0 && self.topic == Topic::Up {
            out.push(Action::JoinPeers(self.others()));
        }
        out.extend(
            pass.tickets
                .into_iter()
                .map(|t| Action::Synced(t, report.clone())),
        );
        if let Some(tickets) = self.queued.take() {
            self.begin_pass(tickets, now, out);
        }
    }

    /// Starts a round with `peer` (no round with it may be running).
    fn begin_round(
        &mut self,
        peer: PublicKey,
        for_pass: bool,
        redialed: bool,
        out: &mut Vec<Action>,
    ) {
        let conv = self.conv();
        self.slots.insert(
            peer,
            Slot {
                for_pass,
                again: false,
                pass_again: false,
                redialed,
            },
        );
        if !self.is_member(&peer) {
            let name = self.store_name();
            let why = format!("peer {} is not a member of store {name:?}", peer.short());
            self.end_round(peer, Err(why), out);
            return;
        }
        let first = self
            .store
            .reconcile_view()
            .map_err(|e| e.to_string())
            .and_then(|view| Session::initiator(view, FRAME_LIMIT).map_err(|e| e.to_string()))
            .and_then(|mut s| s.initiate().map(|f| (s, f)).map_err(|e| e.to_string()));
        let (session, frame) = match first {
            Ok(found) => found,
            Err(why) => return self.end_round(peer, Err(why), out),
        };
        let report = RoundReport {
            rounds: 1,
            reconcile_bytes: frame.len() as u64,
            ..RoundReport::default()
        };
        out.push(Action::Send {
            conv,
            peer,
            request: request::Kind::Reconcile(pb::Frame {
                frame: frame.into(),
            }),
        });
        self.convs.insert(
            conv,
            Opener::Round {
                peer,
                report,
                phase: Phase::Negotiate {
                    session,
                    have: Vec::new(),
                    need: Vec::new(),
                },
            },
        );
    }

    /// A round with `peer` ended: its pass learns how, and a round asked for while it
    /// ran starts.
    fn end_round(
        &mut self,
        peer: PublicKey,
        result: Result<RoundReport, String>,
        out: &mut Vec<Action>,
    ) {
        let Some(slot) = self.slots.remove(&peer) else {
            return;
        };
        if let Err(why) = &result {
            tracing::debug!(peer = %peer.short(), "reconcile failed: {why}");
        }
        if slot.for_pass {
            if let Some(pass) = &mut self.pass {
                match result {
                    Ok(r) => {
                        pass.report.peers += 1;
                        pass.report.total.rounds += r.rounds;
                        pass.report.total.reconcile_bytes += r.reconcile_bytes;
                        pass.report.total.pulled += r.pulled;
                        pass.report.total.pushed += r.pushed;
                    }
                    Err(why) => pass.report.failed.push((peer, why)),
                }
                pass.waiting.remove(&peer);
            }
        }
        if slot.pass_again {
            self.begin_round(peer, true, false, out);
        } else if slot.again {
            self.begin_round(peer, false, false, out);
        }
    }

    fn answer(
        &mut self,
        conv: Conv,
        answer: Result<response::Kind, Failure>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let Some(opener) = self.convs.remove(&conv) else {
            return;
        };
        match opener {
            Opener::Round {
                peer,
                report,
                phase,
            } => {
                let outcome = match answer {
                    Ok(kind) => self.round_step(conv, peer, report, phase, kind, out),
                    Err(Failure::Refused(r)) if matches!(phase, Phase::Attest) => {
                        tracing::debug!(peer = %peer.short(), "attestation refused: {r}");
                        out.push(Action::Finish(conv));
                        Some(Ok(report))
                    }
                    Err(failure) => {
                        out.push(Action::Finish(conv));
                        let redialed = self.slots.get(&peer).is_none_or(|s| s.redialed);
                        if matches!(failure, Failure::Transport(_)) && !redialed {
                            // Most likely a kept connection the peer has since closed.
                            out.push(Action::Redial(peer));
                            self.redial_round(peer, out);
                            return;
                        }
                        if let (Failure::Refused(r), Some(pass)) = (&failure, &mut self.pass) {
                            if r.code == RefusalCode::NotMember {
                                pass.report.disowned.push(peer);
                            }
                        }
                        Some(Err(failure_text(&peer, &failure)))
                    }
                };
                if let Some(result) = outcome {
                    self.end_round(peer, result, out);
                    self.maybe_end_pass(now, out);
                }
            }
            Opener::Pull { peer, hashes } => {
                let result = match answer {
                    Ok(response::Kind::Intentions(list)) => {
                        self.pulled(hashes, list.intentions).map(|_| ())
                    }
                    Ok(other) => Err(unexpected(&peer, &other)),
                    Err(f) => Err(failure_text(&peer, &f)),
                };
                out.push(Action::Finish(conv));
                if let Err(why) = result {
                    tracing::debug!("pulling an announced intention failed: {why}");
                }
            }
            Opener::Secret { peer, rest } => {
                out.push(Action::Finish(conv));
                let secret = match answer {
                    Ok(response::Kind::TopicSecret(t)) => <[u8; 32]>::try_from(&t.secret[..])
                        .map_err(|_| {
                            format!(
                                "peer {} broke the protocol: its gossip secret is not 32 bytes",
                                peer.short()
                            )
                        }),
                    Ok(other) => Err(unexpected(&peer, &other)),
                    Err(f) => Err(failure_text(&peer, &f)),
                };
                match secret {
                    Ok(secret) => {
                        self.asking = false;
                        self.secret = Some(secret);
                        out.push(Action::SaveSecret(secret));
                        self.subscribe(out);
                    }
                    Err(why) => {
                        tracing::debug!(peer = %peer.short(), "no gossip secret from it: {why}");
                        self.next_secret(rest, out);
                    }
                }
            }
        }
    }

    /// One answer in a round; `Some` when the round ended.
    fn round_step(
        &mut self,
        conv: Conv,
        peer: PublicKey,
        mut report: RoundReport,
        phase: Phase<S::View>,
        kind: response::Kind,
        out: &mut Vec<Action>,
    ) -> Option<Result<RoundReport, String>> {
        let attesting = matches!(phase, Phase::Attest);
        let next = match (phase, kind) {
            (
                Phase::Negotiate {
                    mut session,
                    mut have,
                    mut need,
                },
                response::Kind::Reconcile(f),
            ) => {
                report.reconcile_bytes += f.frame.len() as u64;
                match session.step(&f.frame) {
                    Err(e) => Err(format!("reconciliation with peer {}: {e}", peer.short())),
                    Ok(step) => {
                        have.extend(step.have);
                        need.extend(step.need);
                        let full =
                            have.len() >= MAX_RECONCILE_DIFF || need.len() >= MAX_RECONCILE_DIFF;
                        match step.reply {
                            Some(frame) if !full => {
                                report.rounds += 1;
                                report.reconcile_bytes += frame.len() as u64;
                                out.push(Action::Send {
                                    conv,
                                    peer,
                                    request: request::Kind::Reconcile(pb::Frame {
                                        frame: frame.into(),
                                    }),
                                });
                                Ok(Some(Phase::Negotiate {
                                    session,
                                    have,
                                    need,
                                }))
                            }
                            _ => {
                                have.truncate(MAX_RECONCILE_DIFF);
                                need.truncate(MAX_RECONCILE_DIFF);
                                self.pull_next(conv, peer, need, have, &mut report, out)
                            }
                        }
                    }
                }
            }
            (Phase::Want { need, have }, response::Kind::Intentions(list)) => {
                match self.pulled(need, list.intentions) {
                    Err(why) => Err(why),
                    Ok((got, rest)) => {
                        report.pulled += got;
                        self.pull_next(conv, peer, rest, have, &mut report, out)
                    }
                }
            }
            (Phase::Predecessors { left, have }, response::Kind::Intentions(list)) => {
                if list.intentions.is_empty() {
                    self.push_next(conv, peer, have, &mut report, out)
                } else {
                    report.pulled += list.intentions.len() as u64;
                    match apply_all(&self.store, list.intentions) {
                        Err(e) => Err(e.to_string()),
                        Ok(_) => self.predecessors(conv, peer, left, have, &mut report, out),
                    }
                }
            }
            (Phase::Push { rest }, response::Kind::Pushed(_)) => {
                self.push_next(conv, peer, rest, &mut report, out)
            }
            (Phase::Attest, response::Kind::Attested(a)) => {
                let kept = Attestation::try_from(a).and_then(|a| self.store.attested(peer, a));
                if let Err(e) = kept {
                    tracing::info!(peer = %peer.short(), "not keeping its attestation: {e}");
                }
                Ok(None)
            }
            (_, other) => Err(unexpected(&peer, &other)),
        };
        match next {
            Ok(Some(phase)) => {
                self.convs.insert(
                    conv,
                    Opener::Round {
                        peer,
                        report,
                        phase,
                    },
                );
                None
            }
            Ok(None) if !attesting => match self.store.attestation() {
                Ok(own) => {
                    out.push(Action::Send {
                        conv,
                        peer,
                        request: request::Kind::Attest(own.to_pb()),
                    });
                    let phase = Phase::Attest;
                    self.convs.insert(
                        conv,
                        Opener::Round {
                            peer,
                            report,
                            phase,
                        },
                    );
                    None
                }
                Err(e) => {
                    tracing::info!("no attestation to send: {e}");
                    out.push(Action::Finish(conv));
                    Some(Ok(report))
                }
            },
            Ok(None) => {
                out.push(Action::Finish(conv));
                Some(Ok(report))
            }
            Err(why) => {
                out.push(Action::Finish(conv));
                Some(Err(why))
            }
        }
    }

    /// Starts a round with `peer` again after a transport failure, keeping what was
    /// asked of the failed one.
    fn redial_round(&mut self, peer: PublicKey, out: &mut Vec<Action>) {
        let Some(old) = self.slots.remove(&peer) else {
            return;
        };
        self.begin_round(peer, old.for_pass, true, out);
        if let Some(slot) = self.slots.get_mut(&peer) {
            slot.again |= old.again;
            slot.pass_again |= old.pass_again;
        }
    }

    /// Asks for the next batch of `need`, or goes on to predecessors.
    fn pull_next(
        &mut self,
        conv: Conv,
        peer: PublicKey,
        need: Vec<Hash>,
        have: Vec<Hash>,
        report: &mut RoundReport,
        out: &mut Vec<Action>,
    ) -> Result<Option<Phase<S::View>>, String> {
        if need.is_empty() {
            return self.predecessors(conv, peer, PREDECESSOR_ROUNDS, have, report, out);
        }
        out.push(want(conv, peer, &need[..need.len().min(MAX_WANT)]));
        Ok(Some(Phase::Want { need, have }))
    }

    /// Applies the intentions of `list` that were `asked` for (others are dropped);
    /// returns how many arrived and what is still to ask. When none of the asked ones
    /// came (the peer holds intentions it cannot send before they are durable, or it
    /// withholds them), nothing more is asked: the next pass tries again.
    fn pulled(&self, asked: Vec<Hash>, list: Vec<Bytes>) -> Result<(u64, Vec<Hash>), String> {
        let mut wanted: HashSet<Hash> = asked.iter().copied().collect();
        let mut arrived: Vec<(Hlc, Bytes)> = list
            .into_iter()
            .filter_map(|b| {
                let (hlc, hash) = Intention::peek(&b)?;
                wanted.remove(&hash).then_some((hlc, b))
            })
            .collect();
        if arrived.is_empty() {
            return Ok((0, Vec::new()));
        }
        arrived.sort_by_key(|(hlc, _)| *hlc);
        let got = arrived.len() as u64;
        let list = arrived.into_iter().map(|(_, b)| b).collect();
        apply_all(&self.store, list).map_err(|e| e.to_string())?;
        let rest = asked.into_iter().filter(|h| wanted.contains(h)).collect();
        Ok((got, rest))
    }

    /// Asks for predecessors that floating intentions wait for (they are not in
    /// reconciliation when voided), at most `left` more times; then pushes `have`.
    fn predecessors(
        &mut self,
        conv: Conv,
        peer: PublicKey,
        left: usize,
        have: Vec<Hash>,
        report: &mut RoundReport,
        out: &mut Vec<Action>,
    ) -> Result<Option<Phase<S::View>>, String> {
        if left == 0 {
            return self.push_next(conv, peer, have, report, out);
        }
        let missing = self.store.missing(MAX_WANT).map_err(|e| e.to_string())?;
        if missing.is_empty() {
            return self.push_next(conv, peer, have, report, out);
        }
        out.push(want(conv, peer, &missing));
        Ok(Some(Phase::Predecessors {
            left: left - 1,
            have,
        }))
    }

    /// Pushes the next batch of `rest`; `None` when all went.
    fn push_next(
        &mut self,
        conv: Conv,
        peer: PublicKey,
        mut rest: Vec<Hash>,
        report: &mut RoundReport,
        out: &mut Vec<Action>,
    ) -> Result<Option<Phase<S::View>>, String> {
        if rest.is_empty() {
            return Ok(None);
        }
        let batch = self
            .store
            .get(rest.clone(), BATCH_BYTES)
            .map_err(|e| e.to_string())?;
        if batch.is_empty() {
            return Ok(None);
        }
        let shipped: HashSet<Hash> = batch
            .iter()
            .filter_map(|b| Intention::peek(b).map(|(_, h)| h))
            .collect();
        let before = rest.len();
        rest.retain(|h| !shipped.contains(h));
        if rest.len() == before {
            return Err("stored intention bytes do not match their hashes".into());
        }
        report.pushed += batch.len() as u64;
        out.push(Action::Send {
            conv,
            peer,
            request: request::Kind::Push(pb::Intentions { intentions: batch }),
        });
        Ok(Some(Phase::Push { rest }))
    }

    // ---- acceptor side

    fn request(
        &mut self,
        from: PublicKey,
        conv: Conv,
        request: pb::Request,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let refuse = |code, text: String| Action::Refuse {
            to: from,
            conv,
            refusal: Refusal { code, text },
        };
        if request.store_id[..] != self.store.id().0[..] {
            out.push(refuse(
                RefusalCode::UnknownStore,
                "no such store here".into(),
            ));
            return;
        }
        let Some(kind) = request.kind else {
            out.push(refuse(RefusalCode::Malformed, "empty request".into()));
            return;
        };
        if let request::Kind::Redeem(r) = kind {
            return self.redeem(from, conv, r, now, out);
        }
        let closed = if !self.is_member(&from) {
            Some((
                RefusalCode::NotMember,
                "the opener is not a member of this store",
            ))
        } else if self.mode.paused {
            Some((RefusalCode::Paused, "the store is paused here"))
        } else {
            None
        };
        if let Some((code, text)) = closed {
            self.served.remove(&(from, conv));
            out.push(refuse(code, text.into()));
            return;
        }
        if !request.addrs.is_empty() {
            out.push(Action::Learn {
                peer: from,
                addrs: request.addrs,
            });
        }
        let reply = |response| Action::Reply {
            to: from,
            conv,
            response,
            last: false,
        };
        let answer: Result<response::Kind, (RefusalCode, String)> = match kind {
            request::Kind::Bootstrap(b) => {
                return self.witness_batch(from, conv, b.from.max(1), out);
            }
            request::Kind::Reconcile(f) => self.respond(from, conv, &f.frame),
            request::Kind::Want(w) => self.wanted(&w),
            request::Kind::Push(p) => apply_all(&self.store, p.intentions)
                .map(|(applied, refused)| response::Kind::Pushed(pb::Pushed { applied, refused }))
                .map_err(|e| (RefusalCode::Internal, e.to_string())),
            request::Kind::Attest(a) => self.attest(from, a),
            request::Kind::AskSecret(_) => match self.secret {
                Some(secret) => Ok(response::Kind::TopicSecret(pb::TopicSecret {
                    secret: Bytes::copy_from_slice(&secret),
                })),
                None => Err((
                    RefusalCode::NoSecret,
                    "this node has no gossip secret for the store yet".into(),
                )),
            },
            request::Kind::Patch(_) | request::Kind::Redeem(_) => Err((
                RefusalCode::Malformed,
                "this request is not served here".into(),
            )),
        };
        match answer {
            Ok(response) => out.push(reply(response)),
            Err((code, text)) => {
                self.served.remove(&(from, conv));
                out.push(refuse(code, text));
            }
        }
    }

    /// Answers one reconciliation frame in the responder session of `conv`.
    fn respond(
        &mut self,
        from: PublicKey,
        conv: Conv,
        frame: &[u8],
    ) -> Result<response::Kind, (RefusalCode, String)> {
        let local = |e: String| (RefusalCode::Internal, e);
        let session = match self.served.entry((from, conv)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let view = self
                    .store
                    .reconcile_view()
                    .map_err(|e| local(e.to_string()))?;
                let session =
                    Session::responder(view, FRAME_LIMIT).map_err(|e| local(e.to_string()))?;
                e.insert(Served::Reconcile(session))
            }
        };
        let Served::Reconcile(session) = session else {
            return Err((
                RefusalCode::Malformed,
                "a reconciliation frame in a bootstrap".into(),
            ));
        };
        let step = session.step(frame).map_err(|e| {
            let r = Refusal::from(e);
            (r.code, r.text)
        })?;
        Ok(response::Kind::Reconcile(pb::Frame {
            frame: step.reply.unwrap_or_default().into(),
        }))
    }

    /// Keeps `from`'s attestation and answers with this node's own.
    fn attest(
        &self,
        from: PublicKey,
        a: pb::Attestation,
    ) -> Result<response::Kind, (RefusalCode, String)> {
        let refused = |e: AttestError| {
            let code = match &e {
                AttestError::Malformed(_) => RefusalCode::Malformed,
                AttestError::TooLarge { .. } => RefusalCode::TooLarge,
                AttestError::NotMember(_) => RefusalCode::NotMember,
                AttestError::Store(_) => RefusalCode::Internal,
            };
            (code, e.to_string())
        };
        let a = Attestation::try_from(a).map_err(refused)?;
        self.store.attested(from, a).map_err(refused)?;
        let own = self
            .store
            .attestation()
            .map_err(|e| (RefusalCode::Internal, e.to_string()))?;
        Ok(response::Kind::Attested(own.to_pb()))
    }

    /// The intentions a `Want` names (at most [`BATCH_BYTES`] of them).
    fn wanted(&self, w: &pb::Want) -> Result<response::Kind, (RefusalCode, String)> {
        if w.hashes.len() > MAX_WANT {
            return Err((
                RefusalCode::TooLarge,
                format!("want names {} hashes; at most {MAX_WANT}", w.hashes.len()),
            ));
        }
        let hashes = w
            .hashes
            .iter()
            .map(|h| {
                Hash::from_slice(h)
                    .ok_or((RefusalCode::Malformed, "hash is not 32 bytes".to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let found = self
            .store
            .get(hashes, BATCH_BYTES)
            .map_err(|e| (RefusalCode::Internal, e.to_string()))?;
        Ok(response::Kind::Intentions(pb::Intentions {
            intentions: found,
        }))
    }

    /// Sends the witness batch from seq `next` on `conv`; the empty one ends it.
    fn witness_batch(&mut self, to: PublicKey, conv: Conv, next: u64, out: &mut Vec<Action>) {
        match self.store.witness(next, WITNESS_BATCH_BYTES) {
            Ok(batch) => {
                let last = batch.intentions.is_empty();
                if last {
                    self.served.remove(&(to, conv));
                } else {
                    self.served
                        .insert((to, conv), Served::Bootstrap { next: batch.next });
                }
                out.push(Action::Reply {
                    to,
                    conv,
                    response: response::Kind::Batch(batch),
                    last,
                });
            }
            Err(e) => {
                self.served.remove(&(to, conv));
                out.push(Action::Refuse {
                    to,
                    conv,
                    refusal: Refusal::new(RefusalCode::Internal, e.to_string()),
                });
            }
        }
    }

    /// Redeems an invite for `from` at `now`: on success it is a member and learns the
    /// founder, the store name, the witness length, the members and the gossip secret.
    fn redeem(
        &mut self,
        from: PublicKey,
        conv: Conv,
        r: pb::Redeem,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let done = <[u8; 32]>::try_from(&r.secret[..])
            .map_err(|_| {
                (
                    RefusalCode::Malformed,
                    "invite secret is not 32 bytes".to_string(),
                )
            })
            .and_then(|secret| {
                self.store
                    .redeem_invite(&secret, from, &r.display_name, now)
                    .map_err(|r| (r.code, r.text))?;
                self.store
                    .flush()
                    .map_err(|e| (RefusalCode::Internal, e.to_string()))
            });
        if let Err((code, text)) = done {
            out.push(Action::Refuse {
                to: from,
                conv,
                refusal: Refusal { code, text },
            });
            return;
        }
        tracing::info!(peer = %from.short(), store = %self.store.id().to_hex(), "invite redeemed");
        let peers = std::iter::once(self.me)
            .chain(self.others().into_iter().filter(|k| *k != from))
            .map(|k| pb::PeerAddrs {
                id: Bytes::copy_from_slice(&k.0),
                addrs: Vec::new(),
            })
            .collect();
        out.push(Action::Reply {
            to: from,
            conv,
            response: response::Kind::Redeemed(pb::Redeemed {
                founder: Bytes::copy_from_slice(&self.store.founder().0),
                store_name: self.store_name(),
                peers,
                witness_len: self.store.applied(),
                topic_secret: self
                    .secret
                    .map(|s| Bytes::copy_from_slice(&s))
                    .unwrap_or_default(),
            }),
            last: false,
        });
    }

    /// The store's name, or its id in hex before its genesis arrived.
    fn store_name(&self) -> String {
        self.store
            .store_name()
            .unwrap_or_else(|| self.store.id().to_hex())
    }
}

/// The report of a sync asked of a paused replica.
fn paused_report() -> SyncReport {
    SyncReport {
        paused: true,
        ..SyncReport::default()
    }
}

/// A `Want` of `hashes` on `conv`.
fn want(conv: Conv, peer: PublicKey, hashes: &[Hash]) -> Action {
    Action::Send {
        conv,
        peer,
        request: request::Kind::Want(pb::Want {
            hashes: hashes
                .iter()
                .map(|h| Bytes::copy_from_slice(&h.0))
                .collect(),
        }),
    }
}

fn protocol(peer: &PublicKey, what: &str) -> String {
    format!("peer {} broke the protocol: {what}", peer.short())
}

fn unexpected(peer: &PublicKey, kind: &response::Kind) -> String {
    protocol(peer, &format!("unexpected answer {kind:?}"))
}

fn failure_text(peer: &PublicKey, failure: &Failure) -> String {
    match failure {
        Failure::Unreachable(why) | Failure::Transport(why) => why.clone(),
        Failure::Refused(r) => format!("peer {} refused: {r}", peer.short()),
    }
}

/// Applies received intentions in order; returns (applied or parked, refused). An
/// intention the store refuses is counted, not an error; a failing store is.
pub(crate) fn apply_all<S: ReplicaStore>(
    store: &S,
    intentions: Vec<Bytes>,
) -> Result<(u32, u32), S::Error> {
    tally(store.apply_many(intentions))
}

/// Counts received intentions' outcomes as (applied or parked, refused); the first
/// failure of the store is the error.
pub(crate) fn tally<E>(
    outcomes: impl IntoIterator<Item = Result<Received, E>>,
) -> Result<(u32, u32), E> {
    let (mut ok, mut refused) = (0, 0);
    for outcome in outcomes {
        match outcome? {
            Received::Applied | Received::Floating | Received::Early => ok += 1,
            Received::Duplicate => {}
            Received::Refused(e) => {
                tracing::info!("refused a received intention: {e}");
                refused += 1;
            }
        }
    }
    Ok((ok, refused))
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
