//! One simulated node: a real store in its own directory on a crashable disk, its
//! identity, its skewed view of the virtual clock, and whether it is up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::broadcast::Receiver;

use crate::hlc::{Clock, Hlc};
use crate::identity::{Identity, PublicKey};
use crate::ids::StoreId;
use crate::sim::disk::crashable;
use crate::sim::Millis;
use crate::store::{Genesis, Store, StoreError, StoreEvent, StoreOptions, Wall};
use crate::sync::join::Joiner;
use crate::sync::replica::{Conv, Replica};

/// Unix ms at virtual time 0: any fixed recent date (2026-01-01).
pub(crate) const EPOCH_MS: u64 = 1_767_225_600_000;

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Life {
    /// Running with its store open.
    Up,
    /// Crashed: no process; its directory waits to be reopened.
    Down,
    /// Invited, waiting for an admin to redeem its secret; no store yet.
    Joining([u8; 32]),
    /// Redeemed: its store is filled from the founder's witness log (replica mode).
    Bootstrapping,
    /// Left the store for good (shut down cleanly, then revoked).
    Left,
    /// A hostile key with no store: it only sends crafted intentions.
    Adversary,
}

/// One node of the simulation.
pub(crate) struct Node {
    /// Short name for reports (`n0` is the founder).
    pub name: String,
    /// Its signing identity (from the run's seed).
    pub identity: Identity,
    /// Its public key.
    pub key: PublicKey,
    /// Its store directory.
    pub dir: PathBuf,
    /// Its clock's offset from virtual time, in ms.
    pub skew: i64,
    /// Where it is in its life.
    pub life: Life,
    /// Its store while up.
    pub store: Option<Store>,
    /// The admin revoked it (the simulator's knowledge; its store may not know yet).
    pub revoked: bool,
    /// Its replica while up (replica mode).
    pub replica: Option<Replica<Store>>,
    /// When its replica asked to be woken, on its own clock.
    pub wake_at: Option<Millis>,
    /// The gossip secret, kept outside the store (survives crashes).
    pub secret: Option<[u8; 32]>,
    /// Subscribed to the store's gossip topic.
    pub subscribed: bool,
    /// Opener-side conversations and their peers.
    pub opened: BTreeMap<Conv, PublicKey>,
    /// Acceptor-side conversations being served.
    pub served: BTreeSet<(PublicKey, Conv)>,
    /// A joiner's redeem or bootstrap conversation in flight.
    pub boot_conv: Option<Conv>,
    /// A joiner's join, from its first request until it is done.
    pub joiner: Option<Joiner>,
    events: Option<Receiver<StoreEvent>>,
    crashed: Arc<AtomicBool>,
    now: Arc<AtomicU64>,
}

impl Node {
    /// A node with no store yet.
    pub fn new(name: String, seed: [u8; 32], dir: PathBuf, skew: i64, now: Arc<AtomicU64>) -> Node {
        let identity = Identity::from_seed(seed);
        Node {
            name,
            key: identity.public(),
            identity,
            dir,
            skew,
            life: Life::Down,
            store: None,
            revoked: false,
            replica: None,
            wake_at: None,
            secret: None,
            subscribed: false,
            opened: BTreeMap::new(),
            served: BTreeSet::new(),
            boot_conv: None,
            joiner: None,
            events: None,
            crashed: Arc::new(AtomicBool::new(false)),
            now,
        }
    }

    /// This node's wall time in Unix ms.
    pub fn wall_ms(&self) -> u64 {
        wall_at(self.now.load(Ordering::SeqCst), self.skew)
    }

    fn options(&self) -> StoreOptions {
        let now = self.now.clone();
        let skew = self.skew;
        let wall: Wall = Arc::new(move || wall_at(now.load(Ordering::SeqCst), skew));
        StoreOptions {
            wall,
            manual: true,
            disk: Some(crashable(self.crashed.clone())),
            ..StoreOptions::default()
        }
    }

    fn clock() -> Arc<Mutex<Clock>> {
        Arc::new(Mutex::new(Clock::new(Hlc::ZERO)))
    }

    fn up(&mut self, store: Store) {
        self.events = Some(store.subscribe());
        self.store = Some(store);
        self.life = Life::Up;
    }

    /// Founds the store.
    pub fn found(&mut self, id: StoreId) -> Result<(), StoreError> {
        let genesis = Genesis {
            id,
            name: "sim",
            display_name: &self.name,
        };
        let store = Store::create_with(
            &self.dir,
            genesis,
            self.identity.clone(),
            Node::clock(),
            self.options(),
        )?;
        self.up(store);
        Ok(())
    }

    /// Creates an empty replica of store `id` founded by `founder`.
    pub fn join(&mut self, id: StoreId, founder: PublicKey) -> Result<(), StoreError> {
        let store = Store::join_with(
            &self.dir,
            id,
            founder,
            self.identity.clone(),
            Node::clock(),
            self.options(),
        )?;
        self.up(store);
        Ok(())
    }

    /// Reopens the store from what its file holds.
    pub fn restart(&mut self) -> Result<(), StoreError> {
        self.crashed = Arc::new(AtomicBool::new(false));
        let store = Store::open_with(
            &self.dir,
            self.identity.clone(),
            Node::clock(),
            self.options(),
        )?;
        self.up(store);
        Ok(())
    }

    /// Crashes the process: the disk refuses every further write, the store is dropped
    /// without a flush, and whatever the last durable commit left is what stays.
    pub fn crash(&mut self) {
        self.crashed.store(true, Ordering::SeqCst);
        self.replica = None;
        self.wake_at = None;
        self.subscribed = false;
        self.opened.clear();
        self.served.clear();
        self.events = None;
        self.store = None;
        self.life = Life::Down;
    }

    /// Shuts the store down cleanly for good.
    pub fn leave(&mut self) -> Result<(), StoreError> {
        self.replica = None;
        self.subscribed = false;
        if let Some(store) = self.store.take() {
            store.shutdown()?;
        }
        self.events = None;
        self.life = Life::Left;
        Ok(())
    }

    /// Store events since the last call.
    pub fn events(&mut self) -> Vec<StoreEvent> {
        let mut out = Vec::new();
        let Some(rx) = self.events.as_mut() else {
            return out;
        };
        loop {
            match rx.try_recv() {
                Ok(e) => out.push(e),
                Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty | TryRecvError::Closed) => return out,
            }
        }
    }

    /// Intentions sealed and made durable since the last call.
    pub fn sealed(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        for e in self.events() {
            if let StoreEvent::Sealed(list) = e {
                out.extend(list);
            }
        }
        out
    }
}

/// Unix ms on a clock `skew` ms off virtual time `now`.
fn wall_at(now: u64, skew: i64) -> u64 {
    EPOCH_MS.saturating_add(now).saturating_add_signed(skew)
}
