//! The store actor: the one thread that writes the redb database, drains the mailbox, seals
//! queued local ops into intentions, applies received ones, and commits each batch in
//! one write transaction, durably when a flush waits, every second, and at shutdown.

use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use redb::{Durability, ReadableDatabase, ReadableTable};

use crate::fs::op::{Op, OpBody};
use crate::fs::FsState;
use crate::hlc::Clock;
use crate::identity::{Identity, PublicKey};
use crate::ids::{FileId, Hash, StoreId};
use crate::intention::Intention;
use crate::store::apply::{apply_remote, is_refusal, release_due, seal_local, Counts, Ctx, Queued};
use crate::store::cut::revise;
use crate::store::error::StoreError;
use crate::store::frontier::{self, Standing};
use crate::store::index::Index;
use crate::store::pages;
use crate::store::projection::Projection;
use crate::store::tables::{Tables, CHAIN, FLOATING, HISTORY, INTENTIONS, REFUSED, SEQS, WITNESS};
use crate::store::{ApplyOutcome, HistoryItem, StoreEvent, WitnessBatch};
use crate::sync::frontier::{AttestError, Attestation};

/// How long the actor waits for more ops before sealing a batch.
pub(crate) const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Longest time non-durable commits stay non-durable.
pub(crate) const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// Longest time a sealed intention waits for the durable commit that lets it leave the
/// node: short enough for gossip to feel immediate, long enough to batch fsyncs.
pub(crate) const SEALED_DURABLE_WITHIN: Duration = Duration::from_millis(50);
/// Quiet after the newest sealed intention after which the held ones are made durable
/// without waiting out [`SEALED_DURABLE_WITHIN`]: longer than the gaps between the
/// batches of a stream of writes (which keep sharing one fsync), short enough that a
/// lone write leaves the node within it.
pub(crate) const SEALED_QUIET: Duration = Duration::from_millis(10);
/// Longest time the projection's changed records stay unwritten while intentions
/// arrive (they are replayed at open, and held in memory until written).
pub(crate) const PAGES_EVERY: Duration = Duration::from_secs(5);
/// Intentions applied after which the projection's changed records are written at
/// once: bounds both the replay at open and the records held in memory.
pub(crate) const PAGES_INTENTIONS: u64 = 1000;
/// Changed projection records held in memory after which they are written at once (an
/// intention may carry thousands of ops).
pub(crate) const PAGES_UNWRITTEN: usize = 8192;
/// Requests one commit takes at most: a clone queues thousands of intentions at once,
/// and one commit of them all would hold their records and redb's dirty pages in memory
/// together, past the checks above, which run between commits.
pub(crate) const MAX_BATCH_REQUESTS: usize = 256;
/// Witness entries [`Actor::witness`] looks through past a batch for this node's next
/// own intention, to attest to the joiner (bounded: the log may hold long runs of other
/// authors' intentions).
pub(crate) const PARTIAL_SCAN: usize = 4096;
/// Quiet after its last commit after which the actor hands the heap that work freed
/// back to the system (a clone or a big copy leaves most of its peak free but held).
pub(crate) const IDLE_TRIM: Duration = Duration::from_secs(1);
/// Longest a busy actor goes between trims: each write of pages frees an overlay, and a
/// trim walks the whole heap under the allocator's locks (milliseconds on a big store,
/// a stall for every thread allocating meanwhile), so it is not run at every write.
pub(crate) const BUSY_TRIM: Duration = Duration::from_secs(30);

/// A reply channel for one request.
pub(crate) type Reply<T> = SyncSender<Result<T, StoreError>>;

/// Work for the actor other than local ops.
pub(crate) enum Request {
    /// Apply a received intention, decoded and verified by the sender.
    Apply(Box<Intention>, Reply<ApplyOutcome>),
    /// Make every op queued before this request durable.
    Flush(Reply<()>),
    /// List the intentions touching a file.
    History(FileId, Reply<Vec<HistoryItem>>),
    /// Re-check the intentions holding these ops and the grants behind them.
    Verify(Vec<crate::ids::OpId>, Reply<crate::store::verify::Proof>),
    /// Read the stored bytes of these intentions (unknown ones are skipped).
    Get(Vec<Hash>, usize, Reply<Vec<Bytes>>),
    /// Read the witness log from a seq, bounded in bytes.
    Witness(u64, usize, bool, Reply<WitnessBatch>),
    /// List predecessors that floating intentions wait for.
    Missing(usize, Reply<Vec<Hash>>),
    /// The author-chain length of a key's applied intentions.
    ChainLen(PublicKey, Reply<u64>),
    /// This node's attestation, from a durable commit.
    Attest(Reply<Attestation>),
    /// Store a member's attestation.
    Attested(PublicKey, Attestation, SyncSender<Result<(), AttestError>>),
    /// Read the stored intention set, heads, floating set and witness check (tests).
    #[cfg(test)]
    Inspect(Reply<crate::store::tests::Digest>),
}

/// What callers hand to the actor; guarded by [`Shared::mailbox`].
#[derive(Default)]
pub(crate) struct Mailbox {
    /// Local ops applied to the projection and not yet taken for sealing.
    pub ops: Vec<Queued>,
    /// Pending requests, in arrival order.
    pub requests: Vec<Request>,
    /// `shutdown` was called.
    pub shutdown: bool,
    /// The actor has taken its last batch; nothing more is accepted.
    pub closed: bool,
    /// A commit failed; the projection is ahead of the database.
    pub failed: Option<String>,
}

impl Mailbox {
    /// The error for a caller when the actor accepts nothing more.
    pub(crate) fn refusal(&self) -> Option<StoreError> {
        if let Some(msg) = &self.failed {
            return Some(StoreError::Failed(msg.clone()));
        }
        (self.closed || self.shutdown).then_some(StoreError::Closed)
    }
}

/// State shared by store handles and the actor.
pub(crate) struct Shared {
    /// This store's id.
    pub id: StoreId,
    /// Founder key, author of the genesis intention.
    pub founder: PublicKey,
    /// This node's identity.
    pub identity: Identity,
    /// The projection.
    pub state: Projection,
    /// The node clock, shared across stores.
    pub clock: std::sync::Arc<Mutex<Clock>>,
    /// Queued ops and requests.
    pub mailbox: Mutex<Mailbox>,
    /// Signalled when the mailbox gains work.
    pub wake: Condvar,
    /// Hashes of refused and voided intentions (the refused table, in memory).
    pub refused: Mutex<std::collections::HashSet<Hash>>,
    /// Stored intentions that failed to decode at open: kept, not applied.
    pub quarantined: Mutex<Vec<Hash>>,
    /// Applied intentions (for stats).
    pub intentions: AtomicU64,
    /// Floating intentions (for stats).
    pub floating: AtomicU64,
    /// Where committed changes are published.
    pub events: tokio::sync::broadcast::Sender<StoreEvent>,
    /// The database and the reconciliation index summary.
    pub index: Index,
    /// Run before every durable commit (see [`crate::store::Store::set_before_durable`]).
    pub before_durable: RwLock<Option<BeforeDurable>>,
    /// Wall time in Unix ms: HLC stamps, the clock skew rule, invite expiry (tests and
    /// the simulator replace it).
    pub wall: RwLock<Wall>,
    /// Commit only when a request asks (see [`crate::store::StoreOptions::manual`]).
    pub manual: bool,
    /// The stability frontier as last computed (see `store::frontier`).
    pub standing: Mutex<Standing>,
    /// Snapshot trees built lately (see `store::snapshots`).
    pub snapshots: Mutex<crate::store::snapshots::SnapshotCache>,
}

/// A source of wall time in Unix ms.
pub(crate) type Wall = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

/// Makes what intentions refer to durable; an error names what could not be synced.
pub(crate) type BeforeDurable = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl Shared {
    /// Queues a request for the actor, or says why it cannot be accepted.
    pub(crate) fn send(&self, r: Request) -> Result<(), StoreError> {
        let mut mb = self.mailbox.lock();
        if let Some(e) = mb.refusal() {
            return Err(e);
        }
        mb.requests.push(r);
        self.wake.notify_one();
        Ok(())
    }

    /// The wall time now, in Unix ms.
    pub fn now_ms(&self) -> u64 {
        (self.wall.read())()
    }

    /// The apply pipeline's view of this store.
    pub(crate) fn ctx(&self) -> Ctx<'_> {
        Ctx {
            id: self.id,
            founder: self.founder,
            state: &self.state,
            clock: &self.clock,
            now_ms: self.now_ms(),
            refused: &self.refused,
            summary: &self.index.working,
            effects: Default::default(),
        }
    }
}

/// One batch taken from the mailbox.
struct Batch {
    ops: Vec<Queued>,
    requests: Vec<Request>,
    last: bool,
}

/// The actor's own bookkeeping between batches.
struct Actor {
    shared: std::sync::Arc<Shared>,
    counts: Counts,
    dirty: bool,
    last_durable: Instant,
    /// Intentions applied since the projection's records were last written.
    since_pages: u64,
    last_pages: Instant,
    /// Wall ms at which the next early intention is due (0: check at the next pass).
    next_early: Option<u64>,
    /// Intentions sealed here whose commit is not durable yet, and when the first was
    /// sealed. They are neither announced nor served until it is: a crash would lose
    /// them, and the next intention sealed at the same chain seq would then be a fork.
    held: Held,
    /// When the last commit since the heap was last trimmed ran (`None`: none did).
    untrimmed: Option<Instant>,
    /// When the heap was last trimmed.
    trimmed: Instant,
}

/// What one commit answers.
#[derive(Default)]
struct Committed {
    /// One outcome per `Apply` request, in order.
    applied: Vec<Result<ApplyOutcome, StoreError>>,
    /// One outcome per `Attested` request, in order.
    attested: Vec<Result<(), AttestError>>,
    /// This node's live attestation as of the commit.
    own: Option<Attestation>,
}

/// Sealed intentions waiting for a durable commit (see [`SEALED_DURABLE_WITHIN`]).
#[derive(Default)]
struct Held {
    bytes: Vec<Bytes>,
    hashes: std::collections::HashSet<Hash>,
    /// When the oldest held intention was sealed (or its durable commit last failed).
    since: Option<Instant>,
    /// When the newest was sealed; `None` after a failed durable commit, which is
    /// retried at `since`'s deadline only.
    last: Option<Instant>,
}

impl Held {
    fn due(&self) -> Option<Instant> {
        let within = self.since? + SEALED_DURABLE_WITHIN;
        Some(
            self.last
                .map_or(within, |last| within.min(last + SEALED_QUIET)),
        )
    }
}

/// Runs the actor until shutdown or a failed commit, then lets the database close.
pub(crate) fn run(shared: std::sync::Arc<Shared>, counts: Counts) {
    serve(shared.clone(), counts);
    // The projection reads its pages through a read transaction, which would keep the
    // database open: a closed store shows an empty tree.
    *shared.state.write() = FsState::new();
    shared.index.close();
}

fn serve(shared: std::sync::Arc<Shared>, counts: Counts) {
    let now = Instant::now();
    let mut actor = Actor {
        shared,
        counts,
        dirty: false,
        last_durable: now,
        since_pages: 0,
        last_pages: now,
        next_early: Some(0),
        held: Held::default(),
        untrimmed: None,
        trimmed: now,
    };
    loop {
        let batch = actor.take();
        let last = batch.last;
        if let Err(e) = actor.process(batch) {
            tracing::error!(error = %e, "store commit failed; the store must be reopened");
            let mut mb = actor.shared.mailbox.lock();
            mb.failed = Some(e.to_string());
            mb.closed = true;
            for r in mem::take(&mut mb.requests) {
                fail(r, StoreError::Failed(e.to_string()));
            }
            return;
        }
        if last {
            return;
        }
    }
}

fn fail(r: Request, e: StoreError) {
    match r {
        Request::Apply(_, tx) => drop(tx.send(Err(e))),
        Request::Flush(tx) => drop(tx.send(Err(e))),
        Request::History(_, tx) => drop(tx.send(Err(e))),
        Request::Verify(_, tx) => drop(tx.send(Err(e))),
        Request::Get(_, _, tx) => drop(tx.send(Err(e))),
        Request::Witness(_, _, _, tx) => drop(tx.send(Err(e))),
        Request::Missing(_, tx) => drop(tx.send(Err(e))),
        Request::ChainLen(_, tx) => drop(tx.send(Err(e))),
        Request::Attest(tx) => drop(tx.send(Err(e))),
        Request::Attested(_, _, tx) => drop(tx.send(Err(AttestError::Store(e.to_string())))),
        #[cfg(test)]
        Request::Inspect(tx) => drop(tx.send(Err(e))),
    }
}

impl Actor {
    /// Waits for work (or a timer), lets ops gather for [`BATCH_WINDOW`], and takes it.
    fn take(&mut self) -> Batch {
        let shared = self.shared.clone();
        let mut mb = shared.mailbox.lock();
        if shared.manual {
            while mb.requests.is_empty() && !mb.shutdown {
                shared.wake.wait(&mut mb);
            }
            return Batch {
                ops: mem::take(&mut mb.ops),
                requests: mem::take(&mut mb.requests),
                last: mb.shutdown,
            };
        }
        while mb.ops.is_empty() && mb.requests.is_empty() && !mb.shutdown {
            let deadline = self.next_timer();
            if shared.wake.wait_until(&mut mb, deadline).timed_out() {
                break;
            }
        }
        if !mb.ops.is_empty() && mb.requests.is_empty() && !mb.shutdown {
            let deadline = Instant::now() + BATCH_WINDOW;
            while mb.requests.is_empty()
                && !mb.shutdown
                && !shared.wake.wait_until(&mut mb, deadline).timed_out()
            {}
        }
        let take = mb.requests.len().min(MAX_BATCH_REQUESTS);
        let requests = mb.requests.drain(..take).collect();
        Batch {
            ops: mem::take(&mut mb.ops),
            requests,
            last: mb.shutdown && mb.requests.is_empty(),
        }
    }

    fn next_timer(&self) -> Instant {
        let mut t = Instant::now() + PAGES_EVERY;
        if self.dirty {
            t = t.min(self.last_durable + DURABLE_EVERY);
        }
        if self.since_pages > 0 {
            t = t.min(self.last_pages + PAGES_EVERY);
        }
        if let Some(due) = self.held.due() {
            t = t.min(due);
        }
        if let Some(last) = self.untrimmed {
            t = t.min(last + IDLE_TRIM);
        }
        if self.shared.standing.lock().sweeping {
            t = Instant::now();
        }
        if let Some(due) = self.next_early {
            let wall = self.shared.now_ms();
            t = t.min(Instant::now() + Duration::from_millis(due.saturating_sub(wall)));
        }
        t
    }

    /// Commits one batch in one write transaction and answers its requests.
    fn process(&mut self, batch: Batch) -> Result<(), StoreError> {
        let flush = batch
            .requests
            .iter()
            .any(|r| matches!(r, Request::Flush(_)));
        let applies = batch.requests.iter().any(|r| {
            matches!(
                r,
                Request::Apply(..) | Request::Attest(_) | Request::Attested(..)
            )
        });
        // An attestation leaves this node: what it claims must survive a crash.
        let attest = batch
            .requests
            .iter()
            .any(|r| matches!(r, Request::Attest(_)));
        let timers = !self.shared.manual;
        let mut durable = batch.last
            || flush
            || attest
            || (timers && self.dirty && self.last_durable.elapsed() >= DURABLE_EVERY)
            || (timers && self.held.due().is_some_and(|due| due <= Instant::now()));
        let hook = self.shared.before_durable.read().clone();
        let mut unsynced = None;
        if let (true, Some(hook)) = (durable, hook) {
            if let Err(why) = hook() {
                tracing::warn!("content not durable, commit stays non-durable: {why}");
                durable = false;
                // Retry the held intentions' durable commit later, not at every pass.
                self.held.since = self.held.since.map(|_| Instant::now());
                self.held.last = None;
                unsynced = Some(why);
            }
        }
        let pages = batch.last
            || self.since_pages >= PAGES_INTENTIONS
            || self.shared.state.read().unwritten() >= PAGES_UNWRITTEN
            || (timers && self.since_pages > 0 && self.last_pages.elapsed() >= PAGES_EVERY);
        let early = self
            .next_early
            .is_some_and(|due| due <= self.shared.now_ms());
        let sweeping = self.shared.standing.lock().sweeping;
        let writes = !batch.ops.is_empty()
            || applies
            || early
            || sweeping
            || (durable && self.dirty)
            || (pages && self.since_pages > 0)
            || batch.last;
        let done = if writes {
            self.untrimmed = Some(Instant::now());
            self.commit(batch.ops, &batch.requests, durable, pages, batch.last)?
        } else {
            Committed::default()
        };
        let quiet =
            batch.requests.is_empty() && self.untrimmed.is_some_and(|t| t.elapsed() >= IDLE_TRIM);
        if quiet || (self.untrimmed.is_some() && self.trimmed.elapsed() >= BUSY_TRIM) {
            crate::budget::release_freed();
            self.untrimmed = None;
            self.trimmed = Instant::now();
        }
        let mut replies = done.applied.into_iter();
        let mut attested = done.attested.into_iter();
        for r in batch.requests {
            match r {
                Request::Apply(_, tx) => {
                    let outcome = replies.next().expect("one outcome per apply");
                    drop(tx.send(outcome));
                }
                Request::Flush(tx) => drop(tx.send(match &unsynced {
                    None => Ok(()),
                    Some(why) => Err(StoreError::Unsynced(why.clone())),
                })),
                Request::History(file, tx) => drop(tx.send(self.history(file))),
                Request::Verify(ops, tx) => drop(tx.send(self.verify(&ops))),
                Request::Get(hashes, max_bytes, tx) => drop(tx.send(self.get(&hashes, max_bytes))),
                Request::Witness(from, max_bytes, attest, tx) => {
                    drop(tx.send(self.witness(from, max_bytes, attest)))
                }
                Request::Missing(limit, tx) => drop(tx.send(self.missing(limit))),
                Request::ChainLen(key, tx) => drop(tx.send(self.chain_len(&key))),
                Request::Attest(tx) => drop(tx.send(match (&done.own, &unsynced) {
                    (Some(own), None) => Ok(own.clone()),
                    (_, Some(why)) => Err(StoreError::Unsynced(why.clone())),
                    (None, None) => Err(StoreError::Failed("no attestation computed".into())),
                })),
                Request::Attested(_, _, tx) => {
                    let outcome = attested.next().expect("one outcome per attestation");
                    drop(tx.send(outcome));
                }
                #[cfg(test)]
                Request::Inspect(tx) => drop(
                    tx.send(
                        self.shared
                            .index
                            .db()
                            .and_then(|db| crate::store::tests::digest(&db)),
                    ),
                ),
            }
        }
        Ok(())
    }

    fn commit(
        &mut self,
        ops: Vec<Queued>,
        requests: &[Request],
        durable: bool,
        pages: bool,
        last: bool,
    ) -> Result<Committed, StoreError> {
        let shared = self.shared.clone();
        shared.index.pages().check()?;
        let cx = shared.ctx();
        let before = self.counts.intentions;
        let mut cut = None;
        let mut txn = shared.index.db()?.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        // Quick repair (two-phase durable commits) keeps reopening after kill -9 fast
        // instead of a full-file repair; it costs a second fsync per flush.
        txn.set_quick_repair(durable);
        let mut outcomes = Vec::new();
        let mut attested = Vec::new();
        let own;
        {
            let mut t = Tables::open(&txn)?;
            seal_local(&mut t, &cx, &mut self.counts, &shared.identity, ops)?;
            for r in requests {
                if let Request::Apply(i, _) = r {
                    match apply_remote(&mut t, &cx, &mut self.counts, i) {
                        Err(e) if !is_refusal(&e) => return Err(e),
                        outcome => outcomes.push(outcome),
                    }
                }
            }
            self.next_early = release_due(&mut t, &cx, &mut self.counts)?;
            let revised = cx.effects.borrow().revoked;
            // Under the write lock no Tx runs: every op pushed but not sealed is in the
            // mailbox, and the frontier's purge may change the projection.
            let mut st = shared.state.write();
            if revised {
                // Seal the ops pushed since the batch was taken, so the rebuilt
                // projection still holds them.
                let mut late = mem::take(&mut shared.mailbox.lock().ops);
                // A leave is applied when sealed, under the lock held here: it and what
                // follows it wait for the next batch.
                let leave = late
                    .iter()
                    .position(|q| matches!(q.op.body, OpBody::Leave { .. }));
                if let Some(at) = leave {
                    shared.mailbox.lock().ops = late.split_off(at);
                }
                seal_local(&mut t, &cx, &mut self.counts, &shared.identity, late)?;
                revise(&mut t, &cx, &mut self.counts, &mut st)?;
            }
            for r in requests {
                if let Request::Attested(from, attestation, _) = r {
                    attested.push(if st.member(from).is_none() {
                        Err(AttestError::NotMember(from.short()))
                    } else {
                        frontier::record(&mut t.attest, from, attestation, cx.now_ms)
                            .map_err(|e| AttestError::Store(e.to_string()))
                    });
                }
            }
            let pending = shared.mailbox.lock().ops.iter().map(|q| q.op.hlc).min();
            own = Some(frontier::advance(
                &mut t,
                &mut st,
                &mut shared.standing.lock(),
                shared.identity.public(),
                pending,
                cx.now_ms,
            )?);
            drop(st);
            if let Some(own) = own
                .as_ref()
                .filter(|_| requests.iter().any(|r| matches!(r, Request::Attest(_))))
            {
                frontier::handed_out(&mut t, own.floor)?;
            }
            if pages || revised {
                // Under the write lock no Tx runs, so every op in the projection is
                // either sealed already or in the mailbox: seal those too, so the
                // pages reflect exactly the witness log.
                let mut st = shared.state.write();
                let late = {
                    let mut mb = shared.mailbox.lock();
                    mb.closed |= last;
                    mem::take(&mut mb.ops)
                };
                seal_local(&mut t, &cx, &mut self.counts, &shared.identity, late)?;
                let (seq, _) = t.witness_head()?;
                let batch = st.take_pages();
                // The batch is taken: writing it needs no lock, so file operations
                // go on meanwhile (what they change is past the cut).
                drop(st);
                pages::write(&txn, &mut t.projection, seq, &batch)?;
                cut = Some(batch.cut());
            }
        }
        shared.index.commit(txn)?;
        if let Some(cut) = cut {
            shared.state.write().settle_pages(cut, shared.index.pages());
        }
        let effects = cx.effects.take();
        for bytes in effects.sealed {
            if let Some((_, hash)) = crate::intention::Intention::peek(&bytes) {
                self.held.hashes.insert(hash);
            }
            self.held.bytes.push(bytes);
            self.held.since.get_or_insert_with(Instant::now);
            self.held.last = Some(Instant::now());
        }
        if durable && !self.held.bytes.is_empty() {
            let sealed = mem::take(&mut self.held).bytes;
            drop(shared.events.send(StoreEvent::Sealed(sealed)));
        }
        if effects.applied > 0 || !effects.touched.is_empty() {
            let mut dirs = effects.dirs;
            dirs.sort();
            dirs.dedup();
            drop(shared.events.send(StoreEvent::Applied {
                intentions: effects.applied,
                files: effects.touched,
                dirs,
                received: shared.state.received(),
            }));
        }
        let now = Instant::now();
        if durable {
            self.dirty = false;
            self.last_durable = now;
        } else {
            self.dirty = true;
        }
        self.since_pages += self.counts.intentions.saturating_sub(before);
        if cut.is_some() {
            self.since_pages = 0;
            self.last_pages = now;
        }
        shared
            .intentions
            .store(self.counts.intentions, Ordering::Relaxed);
        shared
            .floating
            .store(self.counts.floating, Ordering::Relaxed);
        Ok(Committed {
            applied: outcomes,
            attested,
            own,
        })
    }

    /// The stored bytes of `hashes`, in order, skipping unknown ones, stopping before
    /// the total would pass `max_bytes` (but always including the first found).
    /// Voided intentions (kept in `refused` with their bytes) are served too, so a
    /// replica that never saw one can resolve intentions that name it.
    fn get(&self, hashes: &[Hash], max_bytes: usize) -> Result<Vec<Bytes>, StoreError> {
        let txn = self.shared.index.db()?.begin_read()?;
        let intentions = txn.open_table(INTENTIONS)?;
        let refused = txn.open_table(REFUSED)?;
        let mut out = Vec::new();
        let mut size = 0;
        for h in hashes.iter().filter(|h| !self.held.hashes.contains(h)) {
            let found = match intentions.get(h.0)? {
                Some(v) => Some(v.value()),
                None => refused
                    .get(h.0)?
                    .map(|v| Bytes::copy_from_slice(v.value()))
                    .filter(|v| !v.is_empty()),
            };
            if let Some(v) = found {
                let len = v.len();
                if !out.is_empty() && size + len > max_bytes {
                    break;
                }
                size += len;
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Up to `limit` distinct hashes that floating intentions wait for.
    fn missing(&self, limit: usize) -> Result<Vec<Hash>, StoreError> {
        let txn = self.shared.index.db()?.begin_read()?;
        let floating = txn.open_table(FLOATING)?;
        let mut out: Vec<Hash> = Vec::new();
        for entry in floating.iter()? {
            let missing = Hash(entry?.0.value().0);
            if out.last() != Some(&missing) {
                if out.len() == limit {
                    break;
                }
                out.push(missing);
            }
        }
        Ok(out)
    }

    /// Witness entries from seq `from` on, as stored bytes, up to `max_bytes` (at least one),
    /// with this node's attestation about itself as of them if `attest`.
    fn witness(
        &self,
        from: u64,
        max_bytes: usize,
        attest: bool,
    ) -> Result<WitnessBatch, StoreError> {
        let txn = self.shared.index.db()?.begin_read()?;
        let witness = txn.open_table(WITNESS)?;
        let intentions = txn.open_table(INTENTIONS)?;
        let len = witness.last()?.map_or(0, |(k, _)| k.value());
        let mut batch = WitnessBatch {
            intentions: Vec::new(),
            next: from.max(1),
            len,
            attested: None,
        };
        let mut size = 0;
        for entry in witness.range(from.max(1)..)? {
            let (k, v) = entry?;
            let hash = Hash(v.value().0);
            if self.held.hashes.contains(&hash) {
                break;
            }
            batch.next = k.value() + 1;
            // A voided intention (its author revoked before it) stays in the witness log
            // but is no longer stored: nothing to send.
            let Some(bytes) = intentions.get(hash.0)? else {
                continue;
            };
            let bytes = bytes.value();
            let n = bytes.len();
            if !batch.intentions.is_empty() && size + n > max_bytes {
                batch.next = k.value();
                break;
            }
            size += n;
            batch.intentions.push(bytes);
        }
        if attest {
            batch.attested = self.attested_after(&txn, batch.next)?;
        }
        Ok(batch)
    }

    /// What this node can attest about itself to a joiner holding its witness log up to
    /// `next`: its chain up to the next of its own intentions the log holds from `next`
    /// on, and that intention's smallest op stamp as the floor (see `sync::frontier`).
    /// `None` when no durable own intention follows within [`PARTIAL_SCAN`] entries.
    fn attested_after(
        &self,
        txn: &redb::ReadTransaction,
        next: u64,
    ) -> Result<Option<Attestation>, StoreError> {
        let me = self.shared.identity.public();
        let witness = txn.open_table(WITNESS)?;
        let seqs = txn.open_table(SEQS)?;
        let intentions = txn.open_table(INTENTIONS)?;
        for entry in witness.range(next..)?.take(PARTIAL_SCAN) {
            let (_, v) = entry?;
            let hash = Hash(v.value().0);
            if self.held.hashes.contains(&hash) {
                return Ok(None);
            }
            let Some(row) = seqs.get(hash.0)? else {
                continue;
            };
            let (author, seq) = row.value();
            if author != me.0 {
                continue;
            }
            let Some(bytes) = intentions.get(hash.0)? else {
                return Ok(None);
            };
            let stored = crate::intention::stored(bytes.value())
                .map_err(|e| StoreError::Corrupt(format!("stored intention {hash:?}: {e}")))?;
            let Some(floor) = stored.ops.iter().map(|op| op.hlc).min() else {
                return Ok(None);
            };
            let vector = (seq > 1).then_some((me, seq - 1)).into_iter().collect();
            return Ok(Some(Attestation { vector, floor }));
        }
        Ok(None)
    }

    fn chain_len(&self, key: &PublicKey) -> Result<u64, StoreError> {
        let txn = self.shared.index.db()?.begin_read()?;
        let chain = txn.open_table(CHAIN)?;
        let last = chain
            .range((key.0, 0, [0u8; 32])..=(key.0, u64::MAX, [0xffu8; 32]))?
            .next_back()
            .transpose()?;
        Ok(last.map_or(0, |(k, _)| k.value().1))
    }

    /// See [`crate::store::verify::prove`]. The admission checks it reuses read the
    /// tables of a write transaction, which is dropped without a commit: it writes
    /// nothing.
    fn verify(&self, ops: &[crate::ids::OpId]) -> Result<crate::store::verify::Proof, StoreError> {
        let below = self
            .shared
            .standing
            .lock()
            .frontier
            .as_ref()
            .map(|f| f.below);
        let txn = self.shared.index.db()?.begin_write()?;
        let proof = {
            let t = crate::store::tables::Tables::open(&txn)?;
            let state = self.shared.state.read();
            crate::store::verify::prove(&t, &state, self.shared.founder, below, ops)
        };
        txn.abort()?;
        proof
    }

    fn history(&self, file: FileId) -> Result<Vec<HistoryItem>, StoreError> {
        let txn = self.shared.index.db()?.begin_read()?;
        let history = txn.open_table(HISTORY)?;
        let intentions = txn.open_table(INTENTIONS)?;
        let witness = txn.open_table(WITNESS)?;
        let key = file.to_bytes();
        let mut items = Vec::new();
        for entry in history.range((key, 0)..=(key, u64::MAX))? {
            let seq = entry?.0.value().1;
            let hash = Hash(
                witness
                    .get(seq)?
                    .ok_or_else(|| StoreError::Corrupt(format!("history names witness {seq}")))?
                    .value()
                    .0,
            );
            let bytes = intentions
                .get(hash.0)?
                .ok_or_else(|| StoreError::Corrupt(format!("history names unknown {hash}")))?;
            let Ok(i) = Intention::decode(bytes.value()) else {
                continue; // quarantined at open: never applied, so no part of the history
            };
            items.push(HistoryItem {
                seq,
                hash,
                author: i.author,
                hlc: i.hlc,
                ops: i
                    .ops
                    .into_iter()
                    .filter(|op| names_file(i.author, op, file))
                    .collect(),
                prev: i.prev,
                deps: i.deps,
                bytes: i.bytes,
            });
        }
        Ok(items)
    }
}

/// Whether `op` by `author` names `file`: creates it, or targets it or its first entry.
fn names_file(author: crate::identity::PublicKey, op: &Op, file: FileId) -> bool {
    match &op.body {
        OpBody::Create(_) => op.id(author) == file,
        OpBody::Link { file: f, .. }
        | OpBody::Write { file: f, .. }
        | OpBody::Append { file: f, .. }
        | OpBody::Dismiss { file: f, .. } => *f == file,
        OpBody::SetMeta(m) => m.file == file,
        OpBody::Move { entry, .. } | OpBody::Remove { entry, .. } => *entry == file,
        OpBody::SetStoreName(_)
        | OpBody::Snapshot { .. }
        | OpBody::DropSnapshot { .. }
        | OpBody::SetMember { .. }
        | OpBody::RevokeMember { .. }
        | OpBody::Invite { .. }
        | OpBody::RevokeInvite { .. }
        | OpBody::SetRetention { .. }
        | OpBody::SetHorizon { .. }
        | OpBody::Leave { .. }
        | OpBody::DeleteStore => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{Held, SEALED_DURABLE_WITHIN, SEALED_QUIET};

    fn held(since: Instant, last: Option<Instant>) -> Held {
        Held {
            since: Some(since),
            last,
            ..Held::default()
        }
    }

    #[test]
    fn a_lone_sealed_intention_is_due_after_the_quiet_and_a_stream_after_the_window() {
        let t = Instant::now();
        assert_eq!(Held::default().due(), None, "nothing held, nothing due");
        assert_eq!(held(t, Some(t)).due(), Some(t + SEALED_QUIET));
        // Batches sealed closer together than the quiet keep sharing one durable
        // commit, up to the window after the first.
        let mut h = held(t, Some(t));
        let step = SEALED_QUIET / 2;
        let mut at = t;
        while at < t + SEALED_DURABLE_WITHIN {
            at += step;
            h.last = Some(at);
            assert!(h.due().unwrap() <= t + SEALED_DURABLE_WITHIN);
        }
        assert_eq!(h.due(), Some(t + SEALED_DURABLE_WITHIN));
        // After a failed durable commit, it is retried at the window only.
        assert_eq!(held(t, None).due(), Some(t + SEALED_DURABLE_WITHIN));
        assert!(SEALED_QUIET >= 4 * super::BATCH_WINDOW && SEALED_QUIET < SEALED_DURABLE_WITHIN);
    }
}
