//! The store: one redb file per replicated folder, owned by one actor thread.
//!
//! ## Tables (`DIR/store.redb`, see `tables.rs`)
//! Names below omit the schema suffix (`intentions` is the table `intentions.v4`);
//! `schema.rs` has the versions and their migrations.
//! - `intentions`: intention hash -> the exact signed bytes as received (never re-encoded;
//!   stored LZ4-compressed when that is shorter, `packed.rs`).
//! - `witness`: local seq (from 1) -> (intention hash, chain hash), where
//!   `chain = blake3(previous chain || intention hash)` and the chain before seq 1 is
//!   zero: the append-only, hash-chained order in which this node applied intentions.
//! - `floating`: (missing hash, floating hash) -> signed bytes of an intention whose
//!   `prev` or a dep is not applied yet, filed under the first missing one (`prev`,
//!   then deps in order). It is in the table under exactly one key.
//! - `tips`: author key -> (hash, HLC) of that author's latest applied intention.
//! - `heads`: hash -> HLC of each applied intention that no applied intention names as
//!   `prev` or dep. The next local intention names the [`MAX_DEPS`] greatest-HLC heads.
//! - `index`: HLC wall ms (big-endian) || hash -> (): the reconciliation index, summarised
//!   in memory by blocks of rows with their count and hash sum (`index.rs`).
//! - `history`: (file id bytes, witness seq) -> (): the intention at that witness seq has
//!   an op that touched the file (per `FsState::touched`, resolved before the op was
//!   applied).
//! - `seqs`: hash -> (author, author-chain seq) of every applied or refused intention.
//! - `chain`: (author, seq, hash) -> () of every applied intention (revocation cuts).
//! - `refused`: hash -> bytes of an intention refused on arrival or voided past a
//!   revocation cut (empty in stores written before they were kept); counts as known,
//!   so deps naming it resolve (see `cut`), and is served, so a replica that never saw
//!   it can refuse it too.
//! - `evidence`: author -> (fork seq, the two smallest-hash intentions there): proof of
//!   equivocation; those stay in `index` so every replica fetches them (see `apply`).
//! - `hlcs`: hash -> HLC of every applied, refused or evidence intention (clock order).
//! - `early`: (due wall ms, hash) -> bytes of an intention stamped too far ahead.
//! - `parked`, `quota`: each floating or early intention by author, and per-author
//!   (count, bytes), for the floating quotas.
//! - `grant_pos`: `SetMember` op id -> its position in the member's chain (roles).
//! - `attest`: member key -> (wall ms it arrived, attestation as sent): each member's
//!   latest attestation, from which the stability frontier is computed (`frontier.rs`).
//! - `meta`: `schema_version` (see `schema.rs`), `store_id`, `founder` (author of the
//!   genesis intention), `last_local_hlc`, `park_order`, `quarantined` (hashes of
//!   stored intentions that failed to decode at an open), `frontier` (the greatest
//!   stability frontier computed, re-applied as a purge at open), `attested_floor`
//!   (the greatest floor handed out in an attestation; the clock starts past it).
//! - `projection`: witness seq -> the projection's header (`FsState::take_pages`)
//!   reflecting exactly the log up to that seq; one row. The projection's records are
//!   in the `page_*` tables of the same commit (`pages`).
//!
//! ## Apply pipeline
//! Received bytes: decode and verify ([`Intention::decode`]: limits, signature, ops) ->
//! store id must match -> a known hash is a no-op -> a missing `prev`/dep parks it as
//! early (stamped too far ahead: waits in `early`) -> a missing `prev`/dep parks it as
//! floating (both within per-author quotas) -> membership rules (`apply`: own `prev`,
//! revocation cut, one chain per author, role at its chain seq, ops stamped after
//! their predecessors; the founder's genesis intention is exempt) -> witness, intention,
//! index, tips, heads, history rows are written, the ops applied to the projection, and
//! floating dependents woken and applied the same way, transitively. A refusal returns
//! an error before any write. Membership is checked when an intention becomes
//! applicable, so intentions may float before the op that admits their author arrives;
//! a woken one whose author is not a member is dropped. A revocation, a proven fork or
//! a demotion applied after intentions it cuts voids them and rebuilds the projection
//! (`cut`). Members, invites
//! and revocation are driven through `members` (admin only); leaving (any member) and
//! deleting (admin only) through `leave`. A deleted store admits nothing more.
//! [`Store::verify`] runs
//! the same checks again, writing nothing, on the intentions behind given ops and the
//! grants behind their authors (`verify`).
//!
//! ## Local writes
//! [`Store::write`] runs a closure under the projection's write lock; each [`Tx::push`]
//! ticks the node clock, applies the op at once and queues it. The actor seals queued
//! ops (after up to [`BATCH_WINDOW`] for more) into as few intentions as fit
//! [`MAX_INTENTION_OPS_BYTES`], chained to this node's tip and naming the heads, and
//! commits each batch in one transaction: non-durable, or durable when a
//! [`Store::flush`] waits, [`DURABLE_EVERY`] at the latest, and at shutdown (a
//! durable commit makes the earlier non-durable ones durable too). The projection's
//! changed records are written as pages every [`PAGES_EVERY`] while intentions arrive,
//! after [`PAGES_INTENTIONS`] of them or [`PAGES_UNWRITTEN`] changed records, and at
//! shutdown; opening reads the header and replays (and chain-checks) the witness log
//! after it.
//!
//! [`Intention::decode`]: crate::intention::Intention::decode
//! [`MAX_DEPS`]: crate::intention::MAX_DEPS
//! [`MAX_INTENTION_OPS_BYTES`]: crate::intention::MAX_INTENTION_OPS_BYTES

mod actor;
mod apply;
#[cfg(test)]
mod chain_tests;
mod cut;
mod error;
mod frontier;
#[cfg(test)]
mod frontier_tests;
mod index;
mod leave;
#[cfg(test)]
mod leave_tests;
#[cfg(test)]
mod member_tests;
mod members;
mod packed;
mod pages;
mod projection;
#[cfg(test)]
mod reconcile_tests;
mod replica_store;
pub(crate) use replica_store::received;
#[cfg(test)]
mod replica_tests;
pub(crate) mod retention;
#[cfg(test)]
mod retention_tests;
#[cfg(test)]
mod scale_tests;
mod schema;
#[cfg(test)]
mod snapshot_tests;
mod snapshots;
mod tables;
#[cfg(test)]
pub(crate) mod tests;
mod verify;
#[cfg(test)]
mod verify_tests;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};

pub(crate) use actor::{BeforeDurable, Wall};
pub(crate) use apply::is_refusal;
pub use apply::{MAX_CLOCK_SKEW_MS, MAX_FLOATING_PER_STRANGER};
#[cfg(any(test, feature = "bench"))]
pub(crate) use apply::{MAX_FLOATING_PER_AUTHOR, MAX_FLOATING_STRANGERS};
pub use error::{InviteError, LeaveError, StoreError};
pub use frontier::Standing;
#[cfg(any(test, feature = "bench"))]
pub(crate) use index::IndexSession;
pub use index::{BareIndex, IndexView};
pub(crate) use members::invite_id;
pub use members::Equivocator;
pub use retention::{is_retained, ContentPlan, SettingError, MS_PER_DAY};
pub use schema::SCHEMA_VERSION;
pub use verify::{Authority, CheckedIntention, Proof, VerifyFailure};

use crate::budget::CacheBudget;
use crate::cas::Content;
use crate::fs::op::{Op, OpBody, OpError, Role};
use crate::fs::{FsError, FsState, FsStats};
use crate::hlc::{now_ms, Clock, Hlc};
use crate::identity::{Identity, PublicKey};
use crate::ids::{FileId, Hash, OpId, StoreId};
use crate::intention::{Intention, MAX_INTENTION_OPS_BYTES};
use crate::sync::frontier::{AttestError, Attestation, Frontier};
use actor::{Request, Shared};
use apply::{op_size, Counts, Queued};
use index::Index;
use projection::Projection;
use tables::{
    chain_at, hashes_from_bytes, hashes_to_bytes, hlc_from_bytes, verify_witness, Tables, FLOATING,
    HEADS, INTENTIONS, META, META_ATTESTED, META_FOUNDER, META_FRONTIER, META_LAST_LOCAL_HLC,
    META_QUARANTINED, META_STORE_ID, PROJECTION, REFUSED, WITNESS,
};

/// The first intention of a new store: its id, name and the founder's display name.
pub(crate) struct Genesis<'a> {
    /// The new store's id.
    pub id: StoreId,
    /// The store name.
    pub name: &'a str,
    /// The founder's display name.
    pub display_name: &'a str,
}

/// Opens (or creates) the redb file at a path: how the simulator puts the file behind a
/// storage backend it can crash.
pub(crate) type Disk = Arc<dyn Fn(&Path) -> Result<Database, StoreError> + Send + Sync>;

/// How a store runs: production defaults, or under a simulator's control.
pub(crate) struct StoreOptions {
    /// Wall time in Unix ms: HLC stamps, the clock skew rule, invite expiry.
    pub wall: Wall,
    /// The actor commits only when a request asks it to (local ops are sealed with the
    /// next request, durably only on a flush or at shutdown): no timers, no batching
    /// window, so a caller decides which commits happen before a crash.
    pub manual: bool,
    /// Opens the database file instead of redb's plain file backend.
    pub disk: Option<Disk>,
    /// Bytes of redb page cache for the database (a share of the daemon's budget).
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            wall: Arc::new(now_ms),
            manual: false,
            disk: None,
            cache_bytes: CacheBudget::default().store_cache_bytes(1),
        }
    }
}

/// File name of a store's database inside its directory.
pub const DB_FILE: &str = "store.redb";

/// Received intentions queued by [`Store::submit_remote_many`], not yet waited for.
pub struct Applying(
    Vec<Result<std::sync::mpsc::Receiver<Result<ApplyOutcome, StoreError>>, StoreError>>,
);

impl Applying {
    /// Waits for the actor; one outcome per queued input, in order.
    pub fn outcomes(self) -> Vec<Result<ApplyOutcome, StoreError>> {
        self.0
            .into_iter()
            .map(|sent| sent.and_then(|rx| rx.recv().map_err(|_| StoreError::Closed)?))
            .collect()
    }
}

/// A received attestation queued by [`Store::submit_attested`], not yet waited for.
pub struct Attesting(Result<std::sync::mpsc::Receiver<Result<(), AttestError>>, AttestError>);

impl Attesting {
    /// Waits for the actor: whether the attestation was kept.
    pub fn outcome(self) -> Result<(), AttestError> {
        self.0.and_then(|rx| {
            rx.recv()
                .map_err(|_| AttestError::Store(StoreError::Closed.to_string()))?
        })
    }
}

/// What became of received intention bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Applied, followed by `woken` floating intentions that were waiting for it.
    Applied {
        /// Floating intentions applied after it.
        woken: usize,
    },
    /// Already applied, or refused earlier past a revocation cut; nothing changed.
    Duplicate,
    /// Parked until the intention `missing` arrives.
    Floating {
        /// The first predecessor not yet applied.
        missing: Hash,
    },
    /// Stamped too far ahead of this node's clock: parked until wall time `until_ms`.
    Early {
        /// Unix ms from which it may be applied.
        until_ms: u64,
    },
}

/// A change committed to a store, for subscribers (network, kernel cache).
#[derive(Clone, Debug)]
pub enum StoreEvent {
    /// Intentions sealed from local ops, as signed bytes, in seal order.
    Sealed(Vec<Bytes>),
    /// Received intentions were applied; these files were touched. Also sent with no
    /// intentions by [`Store::write`] for local ops.
    Applied {
        /// How many were applied.
        intentions: usize,
        /// Files the applied ops touched (created, written, moved, removed, changed).
        files: Vec<FileId>,
        /// Directories whose entries the applied ops changed (so their mtime and ctime).
        dirs: Vec<FileId>,
        /// [`Store::received`] when this was sent: it counts every received intention
        /// whose effect a reader could see before this event.
        received: u64,
    },
}

/// Events a slow subscriber may fall behind by before it sees `Lagged`.
pub(crate) const EVENT_BACKLOG: usize = 1024;

/// Files [`Store::pieces_of`] reads per hold of the projection's read lock.
const FILES_PER_READ: usize = 256;

/// One intention that touched a file, in local witness order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryItem {
    /// Witness seq at which this node applied it.
    pub seq: u64,
    /// Intention hash.
    pub hash: Hash,
    /// Its author.
    pub author: PublicKey,
    /// Its clock.
    pub hlc: Hlc,
    /// Its ops that name the file (by id, or as the entry they move or remove).
    pub ops: Vec<Op>,
    /// Its author's previous intention.
    pub prev: Option<Hash>,
    /// The store heads its author had seen.
    pub deps: Vec<Hash>,
    /// Its signed bytes as stored (see `intention::signed_parts`).
    pub bytes: Bytes,
}

/// A run of a store's witness log, for bootstrapping a new replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WitnessBatch {
    /// Stored intention bytes in witness order.
    pub intentions: Vec<Bytes>,
    /// The seq to ask for next.
    pub next: u64,
    /// The witness log's length when read.
    pub len: u64,
    /// What this node attests about itself to a joiner holding the log up to `next`
    /// (see `sync::frontier`), when it can; only in a [`Store::bootstrap_batch`].
    pub attested: Option<Attestation>,
}

/// Counts describing a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreStats {
    /// Applied intentions.
    pub intentions: u64,
    /// Intentions waiting for a missing predecessor.
    pub floating: u64,
    /// The projection's counts.
    pub fs: FsStats,
    /// Intentions replayed from the witness log past the snapshot when the store was
    /// opened (0 for a store created or joined in this process): what opening cost.
    pub replayed: u64,
}

/// A replicated store: its projection in memory and its redb file owned by one actor.
#[derive(Clone)]
pub struct Store {
    handle: Arc<Handle>,
}

/// The last `Store` clone to drop shuts the actor down.
struct Handle {
    shared: Arc<Shared>,
    actor: Mutex<Option<JoinHandle<()>>>,
    /// See [`StoreStats::replayed`].
    replayed: u64,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "store shutdown on drop failed");
        }
    }
}

impl Handle {
    fn shutdown(&self) -> Result<(), StoreError> {
        let Some(join) = self.actor.lock().take() else {
            return Ok(());
        };
        {
            let mut mb = self.shared.mailbox.lock();
            mb.shutdown = true;
            self.shared.wake.notify_one();
        }
        join.join()
            .map_err(|_| StoreError::Failed("store actor panicked".into()))?;
        match &self.shared.mailbox.lock().failed {
            Some(msg) => Err(StoreError::Failed(msg.clone())),
            None => Ok(()),
        }
    }
}

/// A local write in progress: pushed ops are applied to the projection at once and
/// queued for the actor when the `Tx` ends.
pub struct Tx<'a> {
    state: &'a mut FsState,
    shared: &'a Shared,
    me: PublicKey,
    ops: Vec<Queued>,
    /// Files the pushed ops touched and directories whose entries they changed.
    changed: Changed,
}

/// What the ops of one local write changed, for [`StoreEvent::Applied`].
#[derive(Default)]
struct Changed {
    ops: usize,
    files: Vec<FileId>,
    dirs: Vec<FileId>,
}

impl Tx<'_> {
    /// The projection, including the ops pushed so far.
    pub fn state(&self) -> &FsState {
        self.state
    }

    /// Stamps `body` with the next clock tick, applies it and queues it; returns its id.
    ///
    /// A supersede set larger than one op may carry is split first
    /// ([`FsState::bounded`]). Every resulting op is [validated](Op::validate) before
    /// any is applied: an op that no replica would accept (or that alone is larger than
    /// [`MAX_INTENTION_OPS_BYTES`]) is refused here, so sealing never meets one.
    pub fn push(&mut self, body: OpBody) -> Result<OpId, OpError> {
        if matches!(body, OpBody::Leave { .. }) {
            // Its seq is known only when sealed: `Store::leave` queues it.
            return Err(OpError::BadLeave);
        }
        let bodies = self.state.bounded(body);
        for body in &bodies {
            let op = Op {
                hlc: Hlc::ZERO,
                body: body.clone(),
            };
            op.validate()?;
            if op_size(&op) > MAX_INTENTION_OPS_BYTES {
                return Err(OpError::TooLarge {
                    what: "op",
                    limit: MAX_INTENTION_OPS_BYTES,
                });
            }
        }
        let mut last = None;
        for body in bodies {
            let hlc = self.shared.clock.lock().tick(self.shared.now_ms());
            let op = Op { hlc, body };
            let touched = self.state.touched(self.me, &op);
            self.changed.dirs.extend(self.state.apply(self.me, &op));
            self.changed.files.extend(touched);
            self.changed.ops += 1;
            self.ops.push(Queued { op, touched });
            last = Some(OpId {
                hlc,
                author: self.me,
            });
        }
        Ok(last.expect("bounded keeps the op itself, last"))
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        let mut mb = self.shared.mailbox.lock();
        if mb.ops.is_empty() {
            self.shared.wake.notify_one();
        }
        mb.ops.append(&mut self.ops);
    }
}

impl Store {
    /// Creates a store dir with a genesis intention: SetStoreName(name) + SetMember(self, Admin, display_name).
    pub fn create(
        dir: &Path,
        id: StoreId,
        identity: Identity,
        clock: Arc<Mutex<Clock>>,
        name: &str,
        display_name: &str,
    ) -> Result<Store, StoreError> {
        let genesis = Genesis {
            id,
            name,
            display_name,
        };
        Store::create_with(dir, genesis, identity, clock, StoreOptions::default())
    }

    /// [`Store::create`] with non-default [`StoreOptions`].
    pub(crate) fn create_with(
        dir: &Path,
        genesis: Genesis<'_>,
        identity: Identity,
        clock: Arc<Mutex<Clock>>,
        opts: StoreOptions,
    ) -> Result<Store, StoreError> {
        let Genesis {
            id,
            name,
            display_name,
        } = genesis;
        let me = identity.public();
        let index = Index::open(new_db(dir, &opts)?)?;
        let genesis = {
            let mut c = clock.lock();
            let ops = vec![
                Op {
                    hlc: c.tick((opts.wall)()),
                    body: OpBody::SetStoreName(name.to_owned()),
                },
                Op {
                    hlc: c.tick((opts.wall)()),
                    body: OpBody::SetMember {
                        key: me,
                        role: Role::Admin,
                        display_name: display_name.to_owned(),
                        invite: None,
                    },
                },
            ];
            Intention::create(&identity, id, None, Vec::new(), ops)?
        };
        let shared = Arc::new(new_shared(
            id,
            me,
            identity,
            FsState::new(),
            clock,
            index,
            opts,
        ));
        let mut counts = Counts::default();
        let mut txn = shared.index.db()?.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut t = Tables::open(&txn)?;
            t.init_meta(id, &me)?;
            let outcome = apply::apply_remote(&mut t, &shared.ctx(), &mut counts, &genesis)?;
            debug_assert_eq!(outcome, ApplyOutcome::Applied { woken: 0 });
            t.meta
                .insert(META_LAST_LOCAL_HLC, &tables::hlc_bytes(genesis.hlc)[..])?;
        }
        shared.index.commit(txn)?;
        start(shared, counts)
    }

    /// Creates an empty replica of store `id` founded by `founder`, to be filled by
    /// received intentions starting with the founder's genesis intention.
    pub fn join(
        dir: &Path,
        id: StoreId,
        founder: PublicKey,
        identity: Identity,
        clock: Arc<Mutex<Clock>>,
    ) -> Result<Store, StoreError> {
        Store::join_with(dir, id, founder, identity, clock, StoreOptions::default())
    }

    /// [`Store::join`] with non-default [`StoreOptions`].
    pub(crate) fn join_with(
        dir: &Path,
        id: StoreId,
        founder: PublicKey,
        identity: Identity,
        clock: Arc<Mutex<Clock>>,
        opts: StoreOptions,
    ) -> Result<Store, StoreError> {
        let db = new_db(dir, &opts)?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        Tables::open(&txn)?.init_meta(id, &founder)?;
        txn.commit()?;
        let index = Index::open(db)?;
        let shared = Arc::new(new_shared(
            id,
            founder,
            identity,
            FsState::new(),
            clock,
            index,
            opts,
        ));
        start(shared, Counts::default())
    }

    /// Opens the store in `dir`: migrates an older schema (refusing a newer one with
    /// [`StoreError::NewerSchema`]), loads the projection snapshot, replays the witness
    /// log after it, and moves the clock past the last local HLC.
    ///
    /// One bad record does not stop the store: a snapshot that does not decode is
    /// rebuilt from the whole witness log, and a stored intention that does not decode
    /// (or whose bytes are missing) is quarantined: kept, not applied, recorded in
    /// `meta` and listed by [`Store::quarantined`].
    pub fn open(
        dir: &Path,
        identity: Identity,
        clock: Arc<Mutex<Clock>>,
    ) -> Result<Store, StoreError> {
        Store::open_with(dir, identity, clock, StoreOptions::default())
    }

    /// [`Store::open`] with non-default [`StoreOptions`].
    pub(crate) fn open_with(
        dir: &Path,
        identity: Identity,
        clock: Arc<Mutex<Clock>>,
        opts: StoreOptions,
    ) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::Missing(path));
        }
        let db = match &opts.disk {
            Some(disk) => {
                let db = disk(&path)?;
                schema::upgrade(&db)?;
                db
            }
            None => schema::open(&path, opts.cache_bytes)?,
        };
        let index = Index::open(db)?;
        let txn = index.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |key: &str| -> Result<Vec<u8>, StoreError> {
            Ok(meta
                .get(key)?
                .ok_or_else(|| StoreError::Corrupt(format!("meta {key} is missing")))?
                .value()
                .to_vec())
        };
        let id = StoreId(
            get(META_STORE_ID)?
                .try_into()
                .map_err(|_| StoreError::Corrupt("store id is not 16 bytes".into()))?,
        );
        let founder = PublicKey(
            get(META_FOUNDER)?
                .try_into()
                .map_err(|_| StoreError::Corrupt("founder is not 32 bytes".into()))?,
        );
        let frontier = meta
            .get(META_FRONTIER)?
            .and_then(|v| frontier::decode(v.value()));
        let last_local = match meta.get(META_LAST_LOCAL_HLC)? {
            Some(v) => hlc_from_bytes(v.value())?,
            None => Hlc::ZERO,
        };
        let attested = match meta.get(META_ATTESTED)? {
            Some(v) => hlc_from_bytes(v.value())?,
            None => Hlc::ZERO,
        };
        // The clock must also pass every applied intention, as it did when each was
        // applied: a local op stamped before one it follows would not name it as a dep.
        let mut newest = Hlc::ZERO;
        for entry in txn.open_table(HEADS)?.iter()? {
            let (wall_ms, counter) = entry?.1.value();
            newest = newest.max(Hlc { wall_ms, counter });
        }
        let (mut state, snap_seq, rewrite) = match txn.open_table(PROJECTION)?.last()? {
            Some((_, v)) if FsState::must_rebuild(v.value()) => {
                // The projection is a pure function of the intentions: rebuild it.
                tracing::info!(
                    store = %id.to_hex(),
                    "projection in an earlier build's format; rebuilding it from the witness log"
                );
                (FsState::new(), 0, true)
            }
            Some((k, v)) => match load_projection(v.value(), &index) {
                Ok((state, old)) => (state, k.value(), old),
                Err(e) => {
                    // The projection is a pure function of the intentions: rebuild it.
                    tracing::warn!(
                        store = %id.to_hex(),
                        error = %e,
                        "projection snapshot does not decode; rebuilding it from the witness log"
                    );
                    (FsState::new(), 0, true)
                }
            },
            None => (FsState::new(), 0, false),
        };
        let witness = txn.open_table(WITNESS)?;
        let intentions = txn.open_table(INTENTIONS)?;
        let mut refused = std::collections::HashSet::new();
        for entry in txn.open_table(REFUSED)?.iter()? {
            refused.insert(Hash(entry?.0.value()));
        }
        let mut quarantined = match meta.get(META_QUARANTINED)? {
            Some(v) => hashes_from_bytes(v.value()),
            None => Vec::new(),
        };
        let known_quarantined = quarantined.len();
        let mut replayed = 0;
        verify_witness(&witness, snap_seq + 1, chain_at(&witness, snap_seq)?)?;
        for entry in witness.range(snap_seq + 1..)? {
            let (_, v) = entry?;
            let hash = Hash(v.value().0);
            if refused.contains(&hash) || quarantined.contains(&hash) {
                continue;
            }
            let decoded = match intentions.get(hash.0)? {
                Some(bytes) => Intention::decode(bytes.value()).map_err(|e| e.to_string()),
                None => Err("its bytes are missing".to_string()),
            };
            match decoded {
                Ok(i) => {
                    replayed += 1;
                    for op in &i.ops {
                        state.apply(i.author, op);
                    }
                }
                Err(why) => {
                    tracing::error!(
                        store = %id.to_hex(),
                        intention = %hash,
                        "quarantined a stored intention that does not decode: {why}"
                    );
                    quarantined.push(hash);
                }
            }
        }
        let counts = Counts {
            intentions: intentions.len()?,
            floating: txn.open_table(FLOATING)?.len()? + tables::early_len(&txn)?,
            replayed,
        };
        let head_seq = witness.last()?.map_or(0, |(k, _)| k.value());
        drop((meta, witness, intentions, txn));
        if rewrite {
            // A snapshot of an earlier build (or a rebuilt projection): write it as
            // pages now, so the next open reads them instead of replaying history.
            let txn = index.db()?.begin_write()?;
            let batch = state.take_pages();
            pages::write(&txn, &mut txn.open_table(PROJECTION)?, head_seq, &batch)?;
            index.commit(txn)?;
            state.settle_pages(batch.cut(), index.pages());
        }
        if quarantined.len() > known_quarantined {
            // Persisted, so the set survives the next snapshot (which no longer replays them).
            let txn = index.db()?.begin_write()?;
            txn.open_table(META)?
                .insert(META_QUARANTINED, &hashes_to_bytes(&quarantined)[..])?;
            index.commit(txn)?;
        }
        {
            let mut c = clock.lock();
            c.observe(last_local);
            c.observe(newest);
            c.observe(attested);
        }
        if let Some(f) = &frontier {
            // Bookkeeping only: the first commit sweeps, with what the tables say is settled.
            state.purge(f.below, Hlc::ZERO);
        }
        let shared = Arc::new(new_shared(id, founder, identity, state, clock, index, opts));
        shared.standing.lock().frontier = frontier;
        *shared.refused.lock() = refused;
        *shared.quarantined.lock() = quarantined;
        start(shared, counts)
    }

    /// The store id.
    pub fn id(&self) -> StoreId {
        self.handle.shared.id
    }

    /// Stored intentions that failed to decode when the store was opened, in the order
    /// found: kept, not applied (see [`Store::open`]).
    pub fn quarantined(&self) -> Vec<Hash> {
        self.handle.shared.quarantined.lock().clone()
    }

    /// Runs `f` with a read lock on the projection.
    pub fn read<R>(&self, f: impl FnOnce(&FsState) -> R) -> R {
        f(&self.handle.shared.state.read())
    }

    /// The blob-backed pieces of each of `files`, or, if `None`, of every regular file
    /// that has any, read a few hundred files per hold of the read lock, so the actor
    /// applying a clone is not held off while a replica counts what a batch's files need.
    pub fn pieces_of(&self, files: Option<Vec<FileId>>) -> Vec<(FileId, Vec<Content>)> {
        let pieces = |s: &FsState, f: FileId| (f, s.blob_pieces(f));
        let Some(files) = files else {
            return self.read_files(FsState::blob_pieces_after);
        };
        files
            .chunks(FILES_PER_READ)
            .flat_map(|chunk| {
                self.read(|s| chunk.iter().map(|f| pieces(s, *f)).collect::<Vec<_>>())
            })
            .collect()
    }

    /// What `page` finds in every file of the projection, asked for
    /// [`FILES_PER_READ`] files per hold of the read lock (`page(state, after, limit)`
    /// answers for up to `limit` files after `after`, and the last one it looked at), so
    /// a long pass holds off neither the actor nor a file operation for long.
    pub(crate) fn read_files<T>(
        &self,
        page: impl Fn(&FsState, Option<FileId>, usize) -> (Option<FileId>, Vec<T>),
    ) -> Vec<T> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let (last, found) = self.read(|s| page(s, after, FILES_PER_READ));
            out.extend(found);
            match last {
                Some(last) => after = Some(last),
                None => return out,
            }
        }
    }

    /// Who wrote the content of `files`' visible versions ([`FsState::content_authors`]),
    /// read [`FILES_PER_READ`] files per hold of the read lock.
    pub fn content_authors(&self, files: &[FileId]) -> BTreeSet<PublicKey> {
        files
            .chunks(FILES_PER_READ)
            .flat_map(|chunk| {
                self.read(|s| {
                    chunk
                        .iter()
                        .flat_map(|f| s.content_authors(*f))
                        .collect::<BTreeSet<_>>()
                })
            })
            .collect()
    }

    /// Every blob piece of `files` (`None`: of every regular file), in one list.
    pub fn blobs_of(&self, files: Option<Vec<FileId>>) -> Vec<Content> {
        self.pieces_of(files)
            .into_iter()
            .flat_map(|(_, pieces)| pieces)
            .collect()
    }

    /// Runs `f` under the write lock; each `tx.push(body)` ticks the clock, applies the op to
    /// the projection at once and queues it for the next intention (sealed within a few ms).
    /// Ops pushed before `f` fails stay applied and are sealed too, and subscribers hear
    /// of the files and directories they changed (`StoreEvent::Applied`, no intentions).
    /// Fails with `ReadOnly` unless this node is an Admin or Writer, `Io` if the store
    /// is closed.
    pub fn write<R>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, FsError>,
    ) -> Result<R, FsError> {
        self.write_writer(true, f)
    }

    /// [`Store::write`] for a caller whose own caches already follow the ops it pushes
    /// (the FUSE layer, whose kernel made the request): subscribers are not told.
    pub(crate) fn write_unannounced<R>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, FsError>,
    ) -> Result<R, FsError> {
        self.write_writer(false, f)
    }

    /// [`Store::write`], telling subscribers of the changes if `announce`.
    fn write_writer<R>(
        &self,
        announce: bool,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, FsError>,
    ) -> Result<R, FsError> {
        self.write_as(
            |role| match role {
                Some(Role::Admin | Role::Writer) => Ok(()),
                _ => Err(FsError::ReadOnly),
            },
            |e| match e {
                StoreError::Deleted => FsError::ReadOnly,
                e => FsError::Io(e.to_string()),
            },
            announce,
            f,
        )
    }

    /// [`Store::write`] with the role check `allowed` (given this node's current role)
    /// and the error `closed` for a store that accepts nothing more; subscribers hear of
    /// the changes if `announce`.
    fn write_as<R, E>(
        &self,
        allowed: impl FnOnce(Option<Role>) -> Result<(), E>,
        closed: impl FnOnce(StoreError) -> E,
        announce: bool,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let shared = &self.handle.shared;
        let me = shared.identity.public();
        let mut state = shared.state.write();
        if let Some(e) = shared.mailbox.lock().refusal() {
            return Err(closed(e));
        }
        if state.deleted().is_some() {
            return Err(closed(StoreError::Deleted));
        }
        allowed(state.member(&me).map(|(role, _)| role))?;
        let mut tx = Tx {
            state: &mut state,
            shared,
            me,
            ops: Vec::new(),
            changed: Changed::default(),
        };
        let r = f(&mut tx);
        let changed = std::mem::take(&mut tx.changed);
        drop(tx);
        drop(state);
        if announce {
            self.announce(changed);
        }
        r
    }

    /// True if the intention was refused or voided past a revocation cut: it counts as
    /// known (deps naming it resolve) and should not be fetched again.
    pub fn is_refused(&self, hash: &Hash) -> bool {
        self.handle.shared.refused.lock().contains(hash)
    }

    /// Installs `hook`, run before every durable commit; while it fails, commits stay
    /// non-durable and flushes fail. The node uses it to sync the content store first.
    pub fn set_before_durable(&self, hook: BeforeDurable) {
        *self.handle.shared.before_durable.write() = Some(hook);
    }

    /// Returns once every op pushed before the call is in a durably committed intention.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.shared.send(Request::Flush(tx))?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Verifies and applies received intention bytes (floating if deps are missing).
    pub fn apply_remote(&self, bytes: Bytes) -> Result<ApplyOutcome, StoreError> {
        self.apply_remote_many(vec![bytes])
            .pop()
            .expect("one outcome per input")
    }

    /// Applies many received intentions in order, queued together so the actor commits
    /// them in as few transactions as it can; one outcome per input.
    pub fn apply_remote_many(&self, list: Vec<Bytes>) -> Vec<Result<ApplyOutcome, StoreError>> {
        self.submit_remote_many(list).outcomes()
    }

    /// Queues many received intentions for the actor, in order, without waiting for
    /// them. Each is decoded and its signature checked here, on the caller's thread,
    /// while the actor applies what was queued before.
    pub fn submit_remote_many(&self, list: Vec<Bytes>) -> Applying {
        Applying(
            list.into_iter()
                .map(|bytes| {
                    let i = Intention::decode(bytes)?;
                    let (tx, rx) = std::sync::mpsc::sync_channel(1);
                    self.handle
                        .shared
                        .send(Request::Apply(Box::new(i), tx))
                        .map(|()| rx)
                })
                .collect(),
        )
    }

    /// The stored bytes of those of `hashes` this store has (applied or voided), in
    /// order, up to about `max_bytes` (the first found is always included).
    pub fn get(&self, hashes: Vec<Hash>, max_bytes: usize) -> Result<Vec<Bytes>, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle
            .shared
            .send(Request::Get(hashes, max_bytes, tx))?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Up to `limit` predecessors that floating intentions are waiting for.
    pub fn missing(&self, limit: usize) -> Result<Vec<Hash>, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.shared.send(Request::Missing(limit, tx))?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// The witness log from seq `from` (1-based) on, up to about `max_bytes`.
    pub fn witness(&self, from: u64, max_bytes: usize) -> Result<WitnessBatch, StoreError> {
        self.witness_batch(from, max_bytes, false)
    }

    /// [`Store::witness`] as served to a joiner: with this node's attestation about
    /// itself as of the batch, when it can give one.
    pub fn bootstrap_batch(&self, from: u64, max_bytes: usize) -> Result<WitnessBatch, StoreError> {
        self.witness_batch(from, max_bytes, true)
    }

    fn witness_batch(
        &self,
        from: u64,
        max_bytes: usize,
        attest: bool,
    ) -> Result<WitnessBatch, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle
            .shared
            .send(Request::Witness(from, max_bytes, attest, tx))?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// The store's founder, author of its genesis intention.
    pub fn founder(&self) -> PublicKey {
        self.handle.shared.founder
    }

    /// The intentions with ops that touched `file`, in local witness order.
    pub fn history(&self, file: FileId) -> Result<Vec<HistoryItem>, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.shared.send(Request::History(file, tx))?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Re-checks, from the tables only, the intentions holding `ops` and the grants
    /// that gave their authors the right to write them, back to the genesis.
    pub fn verify(&self, ops: Vec<crate::ids::OpId>) -> Result<Proof, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.shared.send(Request::Verify(ops, tx))?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Tells subscribers that local ops touched `changed.files` and changed the entries
    /// of `changed.dirs`, as received ones would have.
    fn announce(&self, mut changed: Changed) {
        if changed.ops == 0 {
            return;
        }
        changed.dirs.sort();
        changed.dirs.dedup();
        let event = StoreEvent::Applied {
            intentions: 0,
            files: changed.files,
            dirs: changed.dirs,
            received: self.handle.shared.state.received(),
        };
        drop(self.handle.shared.events.send(event));
    }

    /// Changes committed from now on; a receiver that falls behind gets `Lagged`.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreEvent> {
        self.handle.shared.events.subscribe()
    }

    /// How many received intentions the projection has taken in: a reader that saw the
    /// effect of one reads at least its count, and the [`StoreEvent::Applied`] that
    /// announces it carries at least that count too.
    pub fn received(&self) -> u64 {
        self.handle.shared.state.received()
    }

    /// Intentions applied so far: it grows with every apply, so it also dates the
    /// projection. Unlike [`Store::stats`] it costs nothing to ask.
    pub fn applied(&self) -> u64 {
        self.handle.shared.intentions.load(Ordering::Relaxed)
    }

    /// Intention counts and the projection's counts.
    pub fn stats(&self) -> StoreStats {
        let shared = &self.handle.shared;
        StoreStats {
            intentions: self.applied(),
            floating: shared.floating.load(Ordering::Relaxed),
            fs: shared.state.stats(),
            replayed: self.handle.replayed,
        }
    }

    /// A consistent snapshot of the reconciliation index as of the last commit, for a
    /// negentropy session; the store keeps applying while it is in use.
    pub fn reconcile_view(&self) -> Result<IndexView, StoreError> {
        self.handle.shared.index.view()
    }

    /// This node's attestation for this store, after a durable commit (see
    /// `sync::frontier`).
    pub fn attestation(&self) -> Result<Attestation, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.shared.send(Request::Attest(tx))?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Keeps member `from`'s attestation (replacing its last one); a non-member's is
    /// refused and changes nothing.
    pub fn attested(&self, from: PublicKey, attestation: Attestation) -> Result<(), AttestError> {
        self.submit_attested(from, attestation).outcome()
    }

    /// Queues member `from`'s attestation after everything queued so far, without
    /// waiting (see [`Store::attested`]).
    pub fn submit_attested(&self, from: PublicKey, attestation: Attestation) -> Attesting {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        Attesting(
            self.handle
                .shared
                .send(Request::Attested(from, attestation, tx))
                .map(|()| rx)
                .map_err(|e| AttestError::Store(e.to_string())),
        )
    }

    /// The stability frontier: no op applied here from now on is stamped before its
    /// `below` (but late ones); `None` until every counted member attested.
    pub fn frontier(&self) -> Option<Frontier> {
        self.handle.shared.standing.lock().frontier.clone()
    }

    /// The frontier with who holds it back and how far behind the newest op it is.
    pub fn standing(&self) -> Standing {
        self.handle.shared.standing.lock().clone()
    }

    /// Seals queued ops, commits durably, writes a snapshot and joins the actor.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        self.handle.shutdown()
    }

    /// Whether the store was shut down (its database is closed).
    pub fn is_shut_down(&self) -> bool {
        self.handle.shared.mailbox.lock().shutdown
    }

    /// Replaces the wall clock the store reads (tests).
    #[cfg(test)]
    fn set_wall(&self, wall: actor::Wall) {
        *self.handle.shared.wall.write() = wall;
    }

    /// The actor's digest of the stored tables (tests).
    #[cfg(test)]
    fn digest(&self) -> Result<tests::Digest, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.shared.send(Request::Inspect(tx))?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }
}

fn new_db(dir: &Path, opts: &StoreOptions) -> Result<Database, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(DB_FILE);
    if path.exists() {
        return Err(StoreError::AlreadyExists(path));
    }
    match &opts.disk {
        Some(disk) => disk(&path),
        None => Ok(Database::builder()
            .set_cache_size(opts.cache_bytes)
            .create(&path)?),
    }
}

/// The projection stored as `bytes` (a page header, or a snapshot of an earlier build)
/// with the page tables of `index`; true if it must be written as pages.
fn load_projection(bytes: &[u8], index: &Index) -> Result<(FsState, bool), FsError> {
    if !FsState::is_pages_header(bytes) {
        return FsState::decode_versioned(bytes).map(|(state, _)| (state, true));
    }
    FsState::open_pages(bytes, index.pages()).map(|state| (state, false))
}

#[allow(clippy::too_many_arguments)]
fn new_shared(
    id: StoreId,
    founder: PublicKey,
    identity: Identity,
    state: FsState,
    clock: Arc<Mutex<Clock>>,
    index: Index,
    opts: StoreOptions,
) -> Shared {
    Shared {
        id,
        founder,
        identity,
        state: Projection::new(state),
        clock,
        mailbox: Mutex::default(),
        wake: parking_lot::Condvar::new(),
        refused: Mutex::default(),
        quarantined: Mutex::default(),
        intentions: AtomicU64::new(0),
        floating: AtomicU64::new(0),
        events: tokio::sync::broadcast::channel(EVENT_BACKLOG).0,
        index,
        before_durable: RwLock::new(None),
        wall: RwLock::new(opts.wall),
        manual: opts.manual,
        standing: Mutex::default(),
        snapshots: Mutex::default(),
    }
}

fn start(shared: Arc<Shared>, counts: Counts) -> Result<Store, StoreError> {
    shared
        .intentions
        .store(counts.intentions, Ordering::Relaxed);
    shared.floating.store(counts.floating, Ordering::Relaxed);
    let replayed = counts.replayed;
    let actor_shared = shared.clone();
    let join = std::thread::Builder::new()
        .name(format!("store-{}", &shared.id.to_hex()[..8]))
        .spawn(move || actor::run(actor_shared, counts))
        .map_err(|source| StoreError::Io {
            path: "store actor thread".into(),
            source,
        })?;
    Ok(Store {
        handle: Arc::new(Handle {
            shared,
            actor: Mutex::new(Some(join)),
            replayed,
        }),
    })
}
