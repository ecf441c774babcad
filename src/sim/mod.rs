//! A seeded, deterministic simulator of one store replicated on many nodes in one
//! process (FoundationDB and TigerBeetle style): every node is a real [`Store`] on a
//! real redb file in a temp dir, time is virtual, and the network, the disk and the
//! nodes' lives are decided by one RNG seeded from the run's seed, so a seed replays
//! its run exactly (`SEED=n cargo test sim`).
//!
//! A run ([`run`]) draws its shape from the seed ([`Config::new`]): 3 to 50 nodes, link
//! loss, duplication and delay (so reordering), partitions that come and go, crashes
//! between two commits (the disk refuses every write from the crash on, the process
//! state is dropped, the redb file is reopened: see `disk`), per-node clock skew,
//! members joining (invite, redeem, bootstrap or reconciliation), being revoked, and
//! leaving, and an adversary (`hostile`) that forks its chain, stamps minutes ahead,
//! forges signatures, sends oversized bytes and fills the strangers' floating quota.
//! Honest nodes run random file operations through the fs planners and the store's
//! write path (`workload`); a flush is an fsync, and a write is acknowledged when the
//! flush after it returned on a node that had not crashed in between.
//!
//! Replication ([`Transport`]): in three seeds of four every node runs the sans-IO
//! [`crate::sync::replica::Replica`] and the simulator is its driver (`driver`: streams,
//! gossip, timers, joins with bootstrap); in the fourth, the direct exchange tests the
//! stores alone: a sync is one negentropy session between two stores followed by the
//! transfer of both differences and of missing predecessors, and a flush gossips the
//! sealed intentions to every member. Both go over the faulty network. The adversary
//! hands its intentions to stores directly, past the transport's checks.
//!
//! After the run the simulator heals every partition, restarts crashed nodes, lets time
//! pass beyond every early intention, and syncs until the live members agree (replica
//! mode, [`QUIESCE_LIMIT`] of virtual time at most) or nothing changes (direct mode,
//! [`MAX_QUIESCE`] rounds at most); then it checks, on every live member: identical tree digests and
//! equivocator lists, every acknowledged write applied (unless its author was revoked
//! before it or equivocated at or before it: then refused everywhere), no forged
//! intention applied, no cycle in the tree, and no more floating intentions than the
//! strangers sent (within [`MAX_FLOATING_STRANGERS`]).

mod check;
mod disk;
mod driver;
mod hostile;
mod net;
mod node;
#[cfg(test)]
mod tests;
mod workload;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::fs::op::Role;
use crate::identity::{Identity, PublicKey};
use crate::ids::{Hash, StoreId};
use crate::intention::Intention;
use crate::store::{
    is_refusal, ApplyOutcome, IndexSession, Store, MAX_FLOATING_PER_AUTHOR, MAX_FLOATING_STRANGERS,
};
use crate::sync::reconcile::FRAME_LIMIT;
pub use check::digest;
use hostile::{stranger, Adversary, SHIFT_MS};
use net::{Faults, Msg, Net, Packet};
use node::{Life, Node};

/// Milliseconds of virtual time since the run began.
pub type Millis = u64;

/// Most nodes in one run.
pub const MAX_NODES: usize = 50;
/// Fewest nodes in one run (a founder and two others).
pub const MIN_NODES: usize = 3;
/// Most sync rounds after a run before the nodes must agree.
pub const MAX_QUIESCE: usize = 12;
/// Most predecessor rounds in one sync (floating intentions naming missing ones).
const PREDECESSOR_ROUNDS: usize = 3;
/// Most missing predecessors asked for in one round.
const MAX_MISSING: usize = 256;
/// Virtual time a leaving member's last sync may take.
const LEAVE_SETTLE: Millis = 3_000;
/// Longest virtual time the replica mode's quiescence may take.
pub const QUIESCE_LIMIT: Millis = 300_000;
/// Virtual time between two agreement checks during quiescence.
const QUIESCE_CHUNK: Millis = 1_000;
/// Virtual time that passes per loop while settling.
const SETTLE_TICK: Millis = 25;
/// How long invites stay valid: longer than any run.
const INVITE_TTL_MS: u64 = 3_600_000;
/// Distinct stranger keys the adversary signs orphans with.
const STRANGER_KEYS: usize = 7;
/// Trace lines kept for a failure report.
const TRACE_TAIL: usize = 40;

/// The shape of one run, all drawn from its seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The seed everything is drawn from.
    pub seed: u64,
    /// Nodes at the start, the founder included.
    pub nodes: usize,
    /// Simulation steps before quiescence.
    pub steps: usize,
    /// Link faults.
    faults: Faults,
    /// Largest clock skew of a node, in ms either way.
    pub max_skew_ms: u64,
    /// Chance per step that a node crashes, per mille.
    pub crash: u32,
    /// Nodes that join during the run.
    pub joins: usize,
    /// Members revoked during the run.
    pub revokes: usize,
    /// Members that leave during the run.
    pub leaves: usize,
    /// Whether an adversary takes part.
    pub hostile: bool,
    /// How the nodes replicate.
    pub transport: Transport,
}

/// How the simulated nodes replicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Each node runs the sans-IO [`crate::sync::replica::Replica`]; the simulator is
    /// its driver (`driver`).
    Replica,
    /// Direct exchange between stores (negentropy, pull, push, gossip of sealed
    /// intentions) with no replica: tests the stores alone.
    Direct,
}

impl Config {
    /// The run of `seed`; `nodes` overrides the drawn node count.
    pub fn new(seed: u64, nodes: Option<usize>) -> Config {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_c0f1_9000_0000);
        let nodes = nodes
            .unwrap_or_else(|| match rng.random_range(0..40) {
                0 => rng.random_range(10..=20),
                _ => rng.random_range(MIN_NODES..=8),
            })
            .clamp(MIN_NODES, MAX_NODES);
        Config {
            seed,
            nodes,
            steps: 120 + 25 * nodes.min(12),
            faults: Faults {
                loss: rng.random_range(0..250),
                dup: rng.random_range(0..100),
                max_delay: rng.random_range(1..200),
            },
            max_skew_ms: rng.random_range(0..30_000),
            crash: rng.random_range(0..30),
            joins: rng.random_range(0..=2),
            revokes: rng.random_range(0..=1),
            leaves: rng.random_range(0..=1),
            hostile: rng.random_bool(0.5),
            transport: if seed % 4 == 3 {
                Transport::Direct
            } else {
                Transport::Replica
            },
        }
    }
}

/// Where one node ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Final {
    /// Its name.
    pub name: String,
    /// Its state at the end (`live`, `revoked`, `left`, `joining`, `adversary`).
    pub status: &'static str,
    /// Its tree digest, if it has a store.
    pub digest: Option<Hash>,
    /// Intentions it holds, if it has a store.
    pub intentions: Option<u64>,
}

/// What one run found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The run's shape.
    pub config: Config,
    /// Every node's end.
    pub nodes: Vec<Final>,
    /// Broken invariants, empty if the run passed.
    pub failures: Vec<String>,
    /// The last steps of the run, for a failure report.
    pub trace: Vec<String>,
    /// Writes acknowledged during the run.
    pub acked: usize,
}

impl Outcome {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "sim seed={} {:?} nodes={} steps={} loss={}‰ dup={}‰ delay<={}ms skew<={}ms crash={}‰ \
             joins={} revokes={} leaves={} hostile={} acked={}: {}",
            c.seed,
            c.transport,
            c.nodes,
            c.steps,
            c.faults.loss,
            c.faults.dup,
            c.faults.max_delay,
            c.max_skew_ms,
            c.crash,
            c.joins,
            c.revokes,
            c.leaves,
            c.hostile,
            self.acked,
            if self.passed() { "ok" } else { "FAILED" }
        )?;
        for n in &self.nodes {
            let d = n
                .digest
                .map_or("-".to_string(), |d| d.to_hex()[..16].to_string());
            let i = n.intentions.map_or("-".to_string(), |i| i.to_string());
            writeln!(f, "  {} {} intentions={i} digest={d}", n.name, n.status)?;
        }
        for x in &self.failures {
            writeln!(f, "  FAILURE: {x}")?;
        }
        if !self.passed() {
            writeln!(f, "  last steps:")?;
            for t in &self.trace {
                writeln!(f, "    {t}")?;
            }
        }
        Ok(())
    }
}

/// Runs the simulation of `config` and checks it.
pub fn run(config: &Config) -> Outcome {
    match World::new(config.clone()) {
        Ok(mut w) => {
            w.simulate();
            w.quiesce();
            w.check();
            w.outcome()
        }
        Err(e) => Outcome {
            config: config.clone(),
            nodes: Vec::new(),
            failures: vec![format!("setup failed: {e}")],
            trace: Vec::new(),
            acked: 0,
        },
    }
}

/// What the simulator knows about intentions it saw leave a node.
#[derive(Default)]
struct Ledger {
    /// Acknowledged writes: durable local intentions, with author and chain seq.
    acked: BTreeMap<Hash, (PublicKey, u64)>,
    /// Chain seq of every intention the ledger saw, to number the next.
    seqs: HashMap<Hash, u64>,
    /// Hashes forged intentions claim: never to be applied.
    forged: Vec<Hash>,
    /// The two branches of each fork the adversary sent.
    forks: Vec<[Hash; 2]>,
    /// Stranger intentions sent.
    strangers: u64,
    /// Intentions the adversary sent (each may float for good if its chain broke).
    crafted: u64,
    /// What each valid intention of the adversary was.
    hostile: BTreeMap<Hash, &'static str>,
}

impl Ledger {
    /// Records durable intention bytes sealed by a node.
    fn ack(&mut self, bytes: &Bytes) {
        let Ok(i) = Intention::decode(bytes.clone()) else {
            return;
        };
        let seq = i
            .prev
            .map_or(1, |p| self.seqs.get(&p).copied().unwrap_or(0) + 1);
        self.seqs.insert(i.hash, seq);
        self.acked.insert(i.hash, (i.author, seq));
    }
}

struct World {
    cfg: Config,
    rng: StdRng,
    now: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
    id: StoreId,
    nodes: Vec<Node>,
    net: Net,
    adversary: Option<(usize, Adversary)>,
    ledger: Ledger,
    joins: usize,
    revokes: usize,
    leaves: usize,
    failures: Vec<String>,
    trace: Vec<String>,
    /// Failures found while the ledger is borrowed.
    later: Vec<String>,
    /// Sync tickets handed out.
    tickets: u64,
    /// Join conversations opened.
    joins_sent: u64,
}

/// Seeds of node identities: distinct per run and node.
fn key_seed(run: u64, n: usize) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&run.to_le_bytes());
    s[8..16].copy_from_slice(&(n as u64).to_le_bytes());
    s[16] = 0x51;
    s
}

/// A temp dir on a RAM disk when there is one (fsyncs are then cheap).
fn temp_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    let b = {
        let mut b = tempfile::Builder::new();
        b.prefix("lattice-sim");
        b
    };
    if shm.is_dir() {
        if let Ok(d) = b.tempdir_in(shm) {
            return Ok(d);
        }
    }
    b.tempdir()
}

impl World {
    fn new(cfg: Config) -> Result<World, String> {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let dir = temp_dir().map_err(|e| format!("temp dir: {e}"))?;
        let mut id = [0u8; 16];
        rng.fill(&mut id);
        let mut w = World {
            rng,
            now: Arc::new(AtomicU64::new(0)),
            _dir: dir,
            id: StoreId(id),
            nodes: Vec::new(),
            net: Net::new(cfg.faults),
            adversary: None,
            ledger: Ledger::default(),
            joins: cfg.joins,
            revokes: cfg.revokes,
            leaves: cfg.leaves,
            failures: Vec::new(),
            trace: Vec::new(),
            later: Vec::new(),
            tickets: 0,
            joins_sent: 0,
            cfg,
        };
        let secret: [u8; 32] = w.rng.random();
        let founder = w.add_node();
        w.nodes[founder].secret = Some(secret);
        w.nodes[founder].found(w.id).map_err(|e| e.to_string())?;
        let genesis = w.nodes[founder]
            .store
            .as_ref()
            .expect("the founder is up")
            .witness(1, usize::MAX)
            .map_err(|e| e.to_string())?;
        for bytes in &genesis.intentions {
            w.ledger.ack(bytes);
        }
        for _ in 1..w.cfg.nodes {
            let n = w.add_node();
            w.admit(n, Role::Writer)?;
            let founder_key = w.nodes[0].key;
            w.nodes[n]
                .join(w.id, founder_key)
                .map_err(|e| e.to_string())?;
            w.nodes[n].secret = Some(secret);
        }
        if w.cfg.hostile {
            let n = w.add_node();
            w.nodes[n].life = Life::Adversary;
            w.admit(n, Role::Writer)?;
            let adv = Adversary::new(w.nodes[n].identity.clone(), w.id);
            w.adversary = Some((n, adv));
        }
        if let Some(store) = &w.nodes[founder].store {
            store.flush().map_err(|e| e.to_string())?;
        }
        for b in w.nodes[founder].sealed() {
            w.ledger.ack(&b);
        }
        // The members admitted at setup joined before the run: they start from the
        // founder's log, as a bootstrap leaves them.
        let log = w.nodes[founder]
            .store
            .as_ref()
            .map(|s| s.witness(1, usize::MAX))
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        for n in w.up() {
            let Some(store) = w.store(n).filter(|_| n != founder) else {
                continue;
            };
            for outcome in store.apply_remote_many(log.intentions.clone()) {
                outcome.map_err(|e| e.to_string())?;
            }
            store.flush().map_err(|e| e.to_string())?;
            w.nodes[n].events();
        }
        if w.replicas() {
            for n in w.up() {
                w.start_replica(n);
            }
        }
        Ok(w)
    }

    /// Adds a node with no store; returns its index.
    fn add_node(&mut self) -> usize {
        let n = self.nodes.len();
        let skew = match self.cfg.max_skew_ms {
            0 => 0,
            m => self.rng.random_range(-(m as i64)..=m as i64),
        };
        let dir = self._dir.path().join(format!("n{n}"));
        self.nodes.push(Node::new(
            format!("n{n}"),
            key_seed(self.cfg.seed, n),
            dir,
            skew,
            self.now.clone(),
        ));
        n
    }

    /// The founder invites and at once redeems for node `n` (setup, before any fault).
    fn admit(&mut self, n: usize, role: Role) -> Result<(), String> {
        let secret: [u8; 32] = self.rng.random();
        let key = self.nodes[n].key;
        let name = self.nodes[n].name.clone();
        let founder = &self.nodes[0];
        let store = founder.store.as_ref().ok_or("the founder is down")?;
        let wall = founder.wall_ms();
        store
            .record_invite(secret, role, wall + INVITE_TTL_MS)
            .map_err(|e| e.to_string())?;
        store
            .redeem_invite(&secret, key, &name, wall)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Whether the nodes run replicas.
    fn replicas(&self) -> bool {
        self.cfg.transport == Transport::Replica
    }

    fn now(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_TAIL {
            self.trace.remove(0);
        }
        self.trace.push(format!("t={} {line}", self.now()));
    }

    /// Records a broken invariant.
    fn fail(&mut self, what: String) {
        if self.failures.len() < 50 {
            self.failures.push(what);
        }
    }

    /// Indices of nodes with an open store.
    fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| self.nodes[n].life == Life::Up)
            .collect()
    }

    fn store(&self, n: usize) -> Option<Store> {
        self.nodes[n].store.clone()
    }

    /// Whether node `x` talks to `y`: `y` is a member in `x`'s projection, or `x` has
    /// nothing yet and `y` is the founder (who admitted it).
    fn trusts(&self, x: usize, y: usize) -> bool {
        let Some(s) = &self.nodes[x].store else {
            return false;
        };
        let key = self.nodes[y].key;
        s.read(|st| st.member(&key).is_some()) || (s.applied() == 0 && y == 0)
    }

    // ---- the run ----

    fn simulate(&mut self) {
        for _ in 0..self.cfg.steps {
            let dt = self.rng.random_range(1..=20);
            self.now.fetch_add(dt, Ordering::SeqCst);
            self.deliver();
            if self.replicas() {
                self.wake_due();
            }
            self.step();
        }
    }

    fn step(&mut self) {
        let up = self.up();
        let roll = self.rng.random_range(0..1000u32);
        let pick = |rng: &mut StdRng, list: &[usize]| list.choose(rng).copied();
        match roll {
            0..400 => {
                if let Some(n) = pick(&mut self.rng, &up) {
                    self.write(n);
                }
            }
            400..550 => {
                if let Some(n) = pick(&mut self.rng, &up) {
                    self.flush(n);
                }
            }
            550..750 => {
                if let (Some(a), Some(b)) = (pick(&mut self.rng, &up), pick(&mut self.rng, &up)) {
                    if self.replicas() {
                        self.ask_sync(a);
                    } else if a != b {
                        self.sync(a, b, true);
                    }
                }
            }
            750..800 => {
                let down: Vec<usize> = (0..self.nodes.len())
                    .filter(|&n| self.nodes[n].life == Life::Down)
                    .collect();
                if let Some(n) = pick(&mut self.rng, &down) {
                    self.restart(n);
                }
            }
            800..830 => {
                if self.net.partitioned() {
                    self.net.heal();
                    self.note("partition healed".into());
                    if self.replicas() {
                        self.links_up();
                    }
                } else {
                    let n = self.nodes.len();
                    self.net.partition(&mut self.rng, n);
                    self.note("partitioned".into());
                }
            }
            830..850 => self.join_step(),
            850..860 => self.revoke_step(),
            860..870 => self.leave_step(),
            870..930 => self.hostile_step(),
            _ => {}
        }
        if self.rng.random_range(0..1000) < self.cfg.crash {
            if let Some(n) = pick(&mut self.rng, &up) {
                self.crash(n);
            }
        }
    }

    /// Node `n`'s process dies between two commits.
    fn crash(&mut self, n: usize) {
        self.nodes[n].crash();
        if self.replicas() {
            self.hang_up(n);
        }
        self.note(format!("{} crashed", self.nodes[n].name));
    }

    fn write(&mut self, n: usize) {
        let Some(store) = self.store(n) else {
            return;
        };
        let mtime = (self.nodes[n].wall_ms() as i64).saturating_mul(1_000_000);
        match workload::random_op(&mut self.rng, &store, mtime) {
            Ok(true) => self.note(format!("{} wrote", self.nodes[n].name)),
            Ok(false) | Err(crate::fs::FsError::ReadOnly) => {}
            Err(e) => {
                let name = self.nodes[n].name.clone();
                self.fail(format!("{name}: write failed: {e}"));
            }
        }
    }

    /// Fsyncs node `n`; what became durable is acknowledged and gossiped to members.
    fn flush(&mut self, n: usize) {
        let Some(store) = self.store(n) else {
            return;
        };
        if let Err(e) = store.flush() {
            let name = self.nodes[n].name.clone();
            self.fail(format!("{name}: flush failed: {e}"));
            return;
        }
        if self.replicas() {
            for e in self.store_events(n) {
                self.feed(n, e);
            }
            return;
        }
        let sealed = self.nodes[n].sealed();
        if sealed.is_empty() {
            return;
        }
        for b in &sealed {
            self.ledger.ack(b);
        }
        self.note(format!(
            "{} flushed {} intentions",
            self.nodes[n].name,
            sealed.len()
        ));
        self.gossip(n, sealed);
    }

    /// Pushes `list` from `from` to every node it counts as a member.
    fn gossip(&mut self, from: usize, list: Vec<Bytes>) {
        let now = self.now();
        for to in 0..self.nodes.len() {
            if to != from && self.nodes[to].life != Life::Adversary && self.trusts(from, to) {
                let packet = Packet {
                    from,
                    to,
                    msg: Msg::Push(list.clone()),
                };
                self.net.send(&mut self.rng, now, packet);
            }
        }
    }

    fn deliver(&mut self) {
        let now = self.now();
        while let Some((p, lost)) = self.net.due(now) {
            if self.replicas() {
                self.deliver_replica(p, lost);
                continue;
            }
            if !self.net.linked(p.from, p.to) {
                continue;
            }
            match p.msg {
                Msg::Push(list) => {
                    if self.nodes[p.to].life == Life::Up
                        && (self.nodes[p.from].life == Life::Adversary || self.trusts(p.to, p.from))
                    {
                        self.apply(p.to, list);
                    }
                }
                Msg::Redeem(secret) => self.redeem(p.to, p.from, secret),
                Msg::Gossip(_) | Msg::Request { .. } | Msg::Answer { .. } | Msg::Closed { .. } => {}
                Msg::Redeemed => {
                    if let Life::Joining(_) = self.nodes[p.to].life {
                        let founder = self.nodes[0].key;
                        match self.nodes[p.to].join(self.id, founder) {
                            Ok(()) => {
                                self.note(format!("{} joined", self.nodes[p.to].name));
                            }
                            Err(e) => {
                                let name = self.nodes[p.to].name.clone();
                                self.fail(format!("{name}: join failed: {e}"));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Node `n` applies received intentions; a refusal is the store's business, any
    /// other error is a failure. Returns how many it accepted (applied or parked) and
    /// how many it applied.
    fn apply(&mut self, n: usize, list: Vec<Bytes>) -> (usize, usize) {
        let Some(store) = self.store(n) else {
            return (0, 0);
        };
        let mut accepted = 0;
        let mut applied = 0;
        for bytes in list {
            match store.apply_remote(bytes) {
                Ok(outcome) => {
                    accepted += 1;
                    applied += usize::from(matches!(outcome, ApplyOutcome::Applied { .. }));
                }
                Err(e) if is_refusal(&e) => {
                    let name = self.nodes[n].name.clone();
                    self.note(format!("{name} refused: {e}"));
                }
                Err(e) => {
                    let name = self.nodes[n].name.clone();
                    self.fail(format!("{name}: apply failed: {e}"));
                }
            }
        }
        if self.replicas() {
            for e in self.store_events(n) {
                self.feed(n, e);
            }
        }
        (accepted, applied)
    }

    /// One sync of `a` with `b`: reconcile, pull, push, fetch missing predecessors. With
    /// `faults`, the exchange may be cut short by loss or by a crash of either side.
    fn sync(&mut self, a: usize, b: usize, faults: bool) {
        if !self.net.linked(a, b) || !self.trusts(a, b) || !self.trusts(b, a) {
            return;
        }
        let (Some(sa), Some(sb)) = (self.store(a), self.store(b)) else {
            return;
        };
        // Loss cuts the exchange after `budget` transfers; a crash of one side too.
        let mut budget = usize::MAX;
        let mut crash = None;
        if faults && self.net.lost(&mut self.rng) {
            budget = self.rng.random_range(0..8);
        }
        if faults && self.rng.random_range(0..1000) < self.cfg.crash * 3 {
            budget = self.rng.random_range(0..8);
            crash = Some(if self.rng.random_bool(0.5) { a } else { b });
        }
        let diff = match reconcile(&sa, &sb) {
            Ok(d) => d,
            Err(e) => {
                let (na, nb) = (self.nodes[a].name.clone(), self.nodes[b].name.clone());
                self.fail(format!("{na} reconciling with {nb}: {e}"));
                return;
            }
        };
        let mut moved = 0;
        let mut steps: Vec<(bool, Hash)> = diff.need.iter().map(|h| (true, *h)).collect();
        steps.extend(diff.have.iter().map(|h| (false, *h)));
        for (pull, hash) in steps {
            if moved >= budget {
                break;
            }
            let (from, to) = if pull { (&sb, a) } else { (&sa, b) };
            match from.get(vec![hash], usize::MAX) {
                Ok(list) => {
                    self.apply(to, list);
                }
                Err(e) => {
                    self.fail(format!("get {hash} failed: {e}"));
                    return;
                }
            }
            moved += 1;
        }
        if moved < budget {
            for _ in 0..PREDECESSOR_ROUNDS {
                let Ok(missing) = sa.missing(MAX_MISSING) else {
                    break;
                };
                let Ok(list) = sb.get(missing, usize::MAX) else {
                    break;
                };
                if list.is_empty() || self.apply(a, list).0 == 0 {
                    break;
                }
            }
        }
        let line = format!(
            "{} synced with {}: need {} have {}{}",
            self.nodes[a].name,
            self.nodes[b].name,
            diff.need.len(),
            diff.have.len(),
            if moved >= budget { " (cut short)" } else { "" }
        );
        self.note(line);
        if let Some(c) = crash {
            self.nodes[c].crash();
            self.note(format!("{} crashed during the sync", self.nodes[c].name));
        }
    }

    fn restart(&mut self, n: usize) {
        match self.nodes[n].restart() {
            Ok(()) => {
                self.note(format!("{} restarted", self.nodes[n].name));
                if self.replicas() {
                    self.start_replica(n);
                }
            }
            Err(e) => {
                let name = self.nodes[n].name.clone();
                self.fail(format!("{name}: reopen after crash failed: {e}"));
            }
        }
    }

    /// A new node is invited by the founder and asks it to redeem the secret.
    fn join_step(&mut self) {
        let joining: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| matches!(self.nodes[n].life, Life::Joining(_) | Life::Bootstrapping))
            .collect();
        if let Some(&n) = joining.first() {
            if self.replicas() {
                self.join_request(n);
                return;
            }
            if let Life::Joining(secret) = self.nodes[n].life {
                let now = self.now();
                let packet = Packet {
                    from: n,
                    to: 0,
                    msg: Msg::Redeem(secret),
                };
                self.net.send(&mut self.rng, now, packet);
            }
            return;
        }
        if self.joins == 0 || self.nodes.len() >= MAX_NODES {
            return;
        }
        let Some(founder) = self.store(0) else {
            return;
        };
        let secret: [u8; 32] = self.rng.random();
        let expires = self.nodes[0].wall_ms() + INVITE_TTL_MS;
        if founder
            .record_invite(secret, Role::Writer, expires)
            .is_err()
        {
            return;
        }
        self.flush(0);
        self.joins -= 1;
        let n = self.add_node();
        self.nodes[n].life = Life::Joining(secret);
        self.note(format!("{} invited", self.nodes[n].name));
    }

    /// The founder (`admin`) redeems `joiner`'s secret and answers.
    fn redeem(&mut self, admin: usize, joiner: usize, secret: [u8; 32]) {
        let Some(store) = self.store(admin) else {
            return;
        };
        let key = self.nodes[joiner].key;
        let name = self.nodes[joiner].name.clone();
        let wall = self.nodes[admin].wall_ms();
        if let Err(e) = store.redeem_invite(&secret, key, &name, wall) {
            self.note(format!("redeem for {name} refused: {e}"));
            return;
        }
        self.flush(admin);
        let now = self.now();
        let packet = Packet {
            from: admin,
            to: joiner,
            msg: Msg::Redeemed,
        };
        self.net.send(&mut self.rng, now, packet);
    }

    /// Honest members other than the founder that are up.
    fn members_up(&self) -> Vec<usize> {
        (1..self.nodes.len())
            .filter(|&n| self.nodes[n].life == Life::Up && !self.nodes[n].revoked)
            .collect()
    }

    /// The founder revokes a member, which may go on writing until it learns of it.
    fn revoke_step(&mut self) {
        if self.revokes == 0 {
            return;
        }
        let Some(n) = self.members_up().choose(&mut self.rng).copied() else {
            return;
        };
        if self.revoke(n) {
            self.revokes -= 1;
        }
    }

    fn revoke(&mut self, n: usize) -> bool {
        let Some(founder) = self.store(0) else {
            return false;
        };
        let key = self.nodes[n].key;
        match founder.revoke_member(key) {
            Ok(upto) => {
                self.nodes[n].revoked = true;
                self.note(format!("{} revoked after #{upto}", self.nodes[n].name));
                self.flush(0);
                true
            }
            Err(e) => {
                self.note(format!("revoking {} refused: {e}", self.nodes[n].name));
                false
            }
        }
    }

    /// A member flushes, hands its writes to the founder, shuts down and is revoked.
    fn leave_step(&mut self) {
        if self.leaves == 0 || self.nodes[0].life != Life::Up {
            return;
        }
        let Some(n) = self.members_up().choose(&mut self.rng).copied() else {
            return;
        };
        if !self.net.linked(n, 0) {
            return;
        }
        self.flush(n);
        if self.replicas() {
            self.ask_sync(n);
            self.settle(LEAVE_SETTLE);
            if self.nodes[n].life != Life::Up {
                return;
            }
            self.hang_up(n);
        } else {
            self.sync(n, 0, false);
        }
        if let Err(e) = self.nodes[n].leave() {
            let name = self.nodes[n].name.clone();
            self.fail(format!("{name}: shutdown failed: {e}"));
        }
        self.note(format!("{} left", self.nodes[n].name));
        self.leaves -= 1;
        self.revoke(n);
    }

    /// The adversary sends something no honest node would.
    fn hostile_step(&mut self) {
        let Some((me, mut adv)) = self.adversary.take() else {
            return;
        };
        let up: Vec<usize> = self.members_up();
        let wall = self.nodes[me].wall_ms();
        let roll = self.rng.random_range(0..100);
        match roll {
            0..40 => {
                let shift = self.rng.random_range(0..10) == 0;
                let i = adv.next(wall, shift);
                self.ledger.hostile.insert(i.hash, "its chain");
                self.push_to(me, &up, adv.recent(), 2);
                self.note(format!("adversary sent its next (shifted: {shift})"));
            }
            40..60 => {
                let (x, y) = adv.fork(wall);
                let with_x = adv.recent();
                let mut with_y = with_x.clone();
                with_y.pop();
                with_y.push(y.bytes);
                let a = self.push_to(me, &up, with_x, 1) > 0;
                let b = self.push_to(me, &up, with_y, 1) > 0;
                self.ledger.forks.push([x.hash, y.hash]);
                self.ledger
                    .hostile
                    .insert(x.hash, "a fork branch it went on from");
                self.ledger.hostile.insert(y.hash, "a fork branch it left");
                self.note(format!("adversary forked (delivered {a} {b})"));
            }
            60..85 => {
                let (hash, bytes) = adv.forged(wall);
                self.ledger.forged.push(hash);
                self.push_to(me, &up, vec![bytes], 2);
                self.note("adversary sent a forged signature".into());
            }
            85..88 => {
                let bytes = adv.oversized(wall);
                self.push_to(me, &up, vec![bytes], 1);
                self.note("adversary sent an oversized intention".into());
            }
            _ => {
                let n = self.ledger.strangers as u32;
                let seed = key_seed(self.cfg.seed, MAX_NODES + 1 + (n as usize % STRANGER_KEYS));
                let bytes = stranger(&Identity::from_seed(seed), self.id, wall, n);
                self.ledger.strangers += 1;
                self.push_to(me, &up, vec![bytes], 1);
                self.note("a stranger sent an orphan".into());
            }
        }
        self.adversary = Some((me, adv));
    }

    /// Delivers `list` from `from` straight to `count` random nodes of `to` (the
    /// adversary talks to whom it likes, links permitting); returns to how many nodes
    /// the last of `list` was applied.
    fn push_to(&mut self, from: usize, to: &[usize], list: Vec<Bytes>, count: usize) -> usize {
        self.ledger.crafted += list.len() as u64;
        let mut applied = 0;
        for _ in 0..count {
            if let Some(&n) = to.choose(&mut self.rng) {
                if self.net.linked(from, n) {
                    let (earlier, last) = list.split_at(list.len().saturating_sub(1));
                    self.apply(n, earlier.to_vec());
                    applied += usize::from(self.apply(n, last.to_vec()).1 > 0);
                }
            }
        }
        applied
    }

    // ---- the end ----

    /// Heals, restarts, lets time pass and syncs until nothing changes.
    fn quiesce(&mut self) {
        self.net.heal();
        self.net.faults.loss = 0;
        self.net.faults.dup = 0;
        for n in 0..self.nodes.len() {
            if self.nodes[n].life == Life::Down {
                self.restart(n);
            }
        }
        if self.replicas() {
            return self.quiesce_replicas();
        }
        if let Some(last) = self.net.last_due() {
            self.now.store(last.max(self.now()), Ordering::SeqCst);
        }
        self.deliver();
        for n in 0..self.nodes.len() {
            if let Life::Joining(secret) = self.nodes[n].life {
                self.redeem(0, n, secret);
            }
        }
        let later = self.now() + SHIFT_MS + 2 * self.cfg.max_skew_ms + 1000;
        self.now.store(later, Ordering::SeqCst);
        self.deliver();
        for n in self.up() {
            self.flush(n);
            if let Some(s) = self.store(n) {
                // Any request lets the actor release early intentions now due.
                let _ = s.missing(1);
            }
        }
        self.note("quiescence".into());
        let mut last = Vec::new();
        for round in 0..MAX_QUIESCE {
            let live = self.up();
            for &a in &live {
                // Every pair: a predecessor that some peers refused on arrival (and so
                // cannot serve) is served only by those that applied it before they
                // learned that its author was revoked or equivocated.
                for &b in &live {
                    if a != b {
                        self.sync(a, b, false);
                    }
                }
            }
            for &n in &live {
                if n != 0 {
                    self.sync(n, 0, false);
                }
                self.flush(n);
            }
            let now: Vec<(usize, u64, u64)> = live
                .iter()
                .filter_map(|&n| {
                    let s = self.store(n)?;
                    let st = s.stats();
                    Some((n, st.intentions, st.floating))
                })
                .collect();
            if now == last {
                self.note(format!("quiet after {round} rounds"));
                return;
            }
            last = now;
        }
        self.fail(format!("no quiescence after {MAX_QUIESCE} sync rounds"));
    }

    /// Runs the network and the replicas' timers until no packet is in flight (after
    /// at least one tick), or for `limit` of virtual time.
    fn settle(&mut self, limit: Millis) {
        let end = self.now() + limit;
        loop {
            self.now.fetch_add(SETTLE_TICK, Ordering::SeqCst);
            self.deliver();
            self.wake_due();
            if self.net.idle() || self.now() >= end {
                return;
            }
        }
    }

    /// The replica mode's quiescence: every node asks for a sync pass, then the
    /// network and the replicas' timers run until the live members agree, for
    /// [`QUIESCE_LIMIT`] of virtual time at most.
    fn quiesce_replicas(&mut self) {
        self.links_up();
        let later = self.now() + SHIFT_MS + 2 * self.cfg.max_skew_ms + 1000;
        self.now.store(later, Ordering::SeqCst);
        self.note("quiescence".into());
        for n in self.up() {
            self.flush(n);
            if let Some(s) = self.store(n) {
                // Any request lets the actor release early intentions now due.
                let _ = s.missing(1);
            }
            self.ask_sync(n);
        }
        let end = self.now() + QUIESCE_LIMIT;
        while self.now() < end {
            for n in 0..self.nodes.len() {
                if matches!(self.nodes[n].life, Life::Joining(_) | Life::Bootstrapping) {
                    self.join_request(n);
                }
            }
            self.settle(QUIESCE_CHUNK);
            if self.agreed() {
                self.note("the live members agree".into());
                self.attest_all();
                return;
            }
        }
        self.fail(format!(
            "the live members did not agree within {QUIESCE_LIMIT} ms of quiescence"
        ));
    }

    /// Two more sync passes of every node once they agree, so that each round's closing
    /// attestations reflect the state everyone ended in.
    fn attest_all(&mut self) {
        for _ in 0..2 {
            for n in self.up() {
                self.ask_sync(n);
            }
            self.settle(QUIESCE_LIMIT);
        }
    }

    /// Whether every live member holds as many intentions, with the same digest.
    fn agreed(&self) -> bool {
        let live = self.live();
        let mut seen = live.iter().filter_map(|&n| {
            let s = self.store(n)?;
            Some((s.applied(), s.read(digest)))
        });
        let Some(first) = seen.next() else {
            return true;
        };
        seen.all(|x| x == first) && self.joining() == 0
    }

    /// Nodes still joining.
    fn joining(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n.life, Life::Joining(_) | Life::Bootstrapping))
            .count()
    }

    /// Live members: up, never revoked, a member in the founder's view.
    fn live(&self) -> Vec<usize> {
        let Some(founder) = self.store(0) else {
            return Vec::new();
        };
        self.up()
            .into_iter()
            .filter(|&n| {
                let key = self.nodes[n].key;
                !self.nodes[n].revoked && founder.read(|st| st.member(&key).is_some())
            })
            .collect()
    }

    fn check(&mut self) {
        let live = self.live();
        let Some(founder) = self.store(0) else {
            self.fail("the founder is not up at the end".into());
            return;
        };
        let (cuts, equivocators) = match founder.equivocators() {
            Ok(e) => (founder.read(|st| st.revocation_cuts()), e),
            Err(e) => {
                self.fail(format!("equivocators: {e}"));
                return;
            }
        };
        let cut: BTreeMap<PublicKey, u64> = cuts.into_iter().collect();
        let forked: BTreeMap<PublicKey, u64> =
            equivocators.iter().map(|e| (e.key, e.seq)).collect();
        let mut digests: BTreeMap<Hash, Vec<String>> = BTreeMap::new();
        let mut dumps: BTreeMap<Hash, String> = BTreeMap::new();
        let acked: Vec<Hash> = self.ledger.acked.keys().copied().collect();
        for &n in &live {
            let name = self.nodes[n].name.clone();
            let Some(store) = self.store(n) else { continue };
            let d = store.read(digest);
            digests.entry(d).or_default().push(name.clone());
            dumps
                .entry(d)
                .or_insert_with(|| store.read(|st| st.canonical_dump()));
            if let Some(dir) = store.read(check::cycle) {
                self.fail(format!("{name}: directory {dir:?} is in a cycle"));
            }
            match check::replayed(&store) {
                Ok(full) if full == d => {}
                Ok(full) => self.fail(format!(
                    "{name}: the projection ({}) is not a full replay of the witness log ({})",
                    &d.to_hex()[..12],
                    &full.to_hex()[..12]
                )),
                Err(e) => self.fail(format!("{name}: replaying the witness log: {e}")),
            }
            if self.replicas() && !self.cfg.hostile {
                if let Err(e) = check::frontier_covers(&store) {
                    self.fail(format!("{name}: {e}"));
                }
            }
            match store.equivocators() {
                Ok(e) if e == equivocators => {}
                Ok(e) => self.fail(format!(
                    "{name}: equivocators {:?}, the founder has {:?}",
                    e.iter().map(|x| (x.key, x.seq)).collect::<Vec<_>>(),
                    equivocators
                        .iter()
                        .map(|x| (x.key, x.seq))
                        .collect::<Vec<_>>()
                )),
                Err(e) => self.fail(format!("{name}: equivocators: {e}")),
            }
            let found: BTreeSet<Hash> = match store.get(acked.clone(), usize::MAX) {
                Ok(list) => list
                    .iter()
                    .filter_map(|b| Intention::peek(b).map(|(_, h)| h))
                    .filter(|h| !store.is_refused(h))
                    .collect(),
                Err(e) => {
                    self.fail(format!("{name}: get: {e}"));
                    continue;
                }
            };
            for (hash, (author, seq)) in &self.ledger.acked {
                let who = self.name_of(author);
                let refused_by = if let Some(c) = cut.get(author).filter(|c| seq > c) {
                    Some(format!("its author was revoked after #{c}"))
                } else {
                    forked
                        .get(author)
                        .filter(|f| seq >= f)
                        .map(|f| format!("its author equivocated at #{f}"))
                };
                let applied = found.contains(hash);
                match (&refused_by, applied) {
                    (None, false) => self.later.push(format!(
                        "{name}: acknowledged write {} by {who} (#{seq}) is missing",
                        &hash.to_hex()[..12]
                    )),
                    (Some(why), true) => self.later.push(format!(
                        "{name}: write {} by {who} (#{seq}) is applied, but {why}",
                        &hash.to_hex()[..12]
                    )),
                    _ => {}
                }
            }
            for f in std::mem::take(&mut self.later) {
                self.fail(f);
            }
            let forged: Vec<Hash> = self.ledger.forged.clone();
            if let Ok(list) = store.get(forged, usize::MAX) {
                if !list.is_empty() {
                    self.fail(format!("{name}: holds {} forged intentions", list.len()));
                }
            }
            if let Some((adv, _)) = &self.adversary {
                let key = self.nodes[*adv].key;
                let proven = self
                    .ledger
                    .forks
                    .iter()
                    .any(|f| f.iter().all(|h| self.known_somewhere(h)));
                let listed = equivocators.iter().any(|e| e.key == key);
                if proven && !listed {
                    self.fail(format!(
                        "{name}: both branches of a fork survive on live nodes, the adversary is not an equivocator"
                    ));
                }
            }
            let floating = store.stats().floating;
            let bound = self.ledger.strangers.min(MAX_FLOATING_STRANGERS)
                + self.ledger.crafted.min(MAX_FLOATING_PER_AUTHOR);
            if floating > bound {
                self.fail(format!(
                    "{name}: {floating} floating intentions, more than the {bound} the adversary and strangers sent"
                ));
            }
        }
        if digests.len() > 1 {
            let split: Vec<String> = digests
                .iter()
                .map(|(d, names)| format!("{}: {}", &d.to_hex()[..12], names.join(",")))
                .collect();
            self.fail(format!("live members disagree: {}", split.join(" | ")));
            let mut texts = dumps.values();
            if let (Some(x), Some(y)) = (texts.next(), texts.next()) {
                let (xs, ys): (BTreeSet<&str>, BTreeSet<&str>) =
                    (x.lines().collect(), y.lines().collect());
                for line in xs.symmetric_difference(&ys).take(6) {
                    let side = if xs.contains(line) { "first" } else { "second" };
                    self.fail(format!("only the {side} has: {line}"));
                }
            }
        }
        if !self.failures.is_empty() {
            self.explain_floating(&live);
        }
        self.failures.truncate(50);
    }

    /// Says, for each live member with floating intentions, what they wait for and
    /// what the others know of it.
    fn explain_floating(&mut self, live: &[usize]) {
        for &n in live {
            let Some(store) = self.store(n) else { continue };
            let Ok(missing) = store.missing(1000) else {
                continue;
            };
            let total = missing.len();
            let mut shown = 0;
            for h in missing {
                if shown == 3 {
                    break;
                }
                let mut seen = Vec::new();
                for &m in live {
                    let Some(other) = self.store(m) else { continue };
                    let has = other.get(vec![h], usize::MAX).is_ok_and(|l| !l.is_empty());
                    let state = match (has, other.is_refused(&h)) {
                        (true, false) => "applied",
                        (true, true) => "voided",
                        (false, true) => "refused without bytes",
                        (false, false) => "unknown",
                    };
                    seen.push(format!("{}: {state}", self.nodes[m].name));
                }
                let bytes = live.iter().find_map(|&m| {
                    let l = self.store(m)?.get(vec![h], usize::MAX).ok()?;
                    l.into_iter().next()
                });
                match bytes.map(|b| store.apply_remote(b)) {
                    Some(Ok(ApplyOutcome::Duplicate)) => continue,
                    Some(outcome) => seen.push(format!("applying it here: {outcome:?}")),
                    None => {}
                }
                shown += 1;
                seen.push(format!("{total} missing in all"));
                if let Some((author, seq)) = self.ledger.acked.get(&h) {
                    seen.push(format!(
                        "an acknowledged write by {} #{seq}",
                        self.name_of(author)
                    ));
                }
                if let Some(what) = self.ledger.hostile.get(&h) {
                    seen.push(format!("the adversary's: {what}"));
                }
                let name = self.nodes[n].name.clone();
                self.fail(format!(
                    "{name} floats intentions waiting for {} ({})",
                    &h.to_hex()[..12],
                    seen.join(", ")
                ));
            }
        }
    }

    /// Whether some live member holds or refused intention `hash`.
    fn known_somewhere(&self, hash: &Hash) -> bool {
        self.live().into_iter().any(|n| {
            self.store(n).is_some_and(|s| {
                s.is_refused(hash) || s.get(vec![*hash], usize::MAX).is_ok_and(|l| !l.is_empty())
            })
        })
    }

    fn name_of(&self, key: &PublicKey) -> String {
        self.nodes
            .iter()
            .find(|n| n.key == *key)
            .map_or_else(|| format!("{key:?}"), |n| n.name.clone())
    }

    fn outcome(&self) -> Outcome {
        let live = self.live();
        let nodes = (0..self.nodes.len())
            .map(|n| {
                let node = &self.nodes[n];
                let status = match node.life {
                    Life::Adversary => "adversary",
                    Life::Left => "left",
                    Life::Joining(_) | Life::Bootstrapping => "joining",
                    _ if node.revoked => "revoked",
                    _ if live.contains(&n) => "live",
                    Life::Up => "up",
                    Life::Down => "down",
                };
                Final {
                    name: node.name.clone(),
                    status,
                    digest: node.store.as_ref().map(|s| s.read(digest)),
                    intentions: node.store.as_ref().map(|s| s.applied()),
                }
            })
            .collect();
        Outcome {
            config: self.cfg.clone(),
            nodes,
            failures: self.failures.clone(),
            trace: self.trace.clone(),
            acked: self.ledger.acked.len(),
        }
    }
}

/// What a reconciliation of `a` (initiator) with `b` found.
struct Diff {
    need: Vec<Hash>,
    have: Vec<Hash>,
}

/// Runs one negentropy session between two stores to its end; an error says which
/// step failed.
fn reconcile(a: &Store, b: &Store) -> Result<Diff, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let view = |s: &Store| s.reconcile_view().map_err(|e| text(&e));
    let mut init = IndexSession::initiator(view(a)?, FRAME_LIMIT).map_err(|e| text(&e))?;
    let mut resp = IndexSession::responder(view(b)?, FRAME_LIMIT).map_err(|e| text(&e))?;
    let mut frame = init.initiate().map_err(|e| text(&e))?;
    let mut diff = Diff {
        need: Vec::new(),
        have: Vec::new(),
    };
    loop {
        let Some(reply) = resp.step(&frame).map_err(|e| text(&e))?.reply else {
            return Ok(diff);
        };
        let step = init.step(&reply).map_err(|e| text(&e))?;
        diff.need.extend(step.need);
        diff.have.extend(step.have);
        match step.reply {
            Some(f) => frame = f,
            None => return Ok(diff),
        }
    }
}
