//! One negentropy reconciliation of a store's intention set with one peer, sans IO.
//!
//! Items are `(HLC wall ms, intention hash)` read from any [`ReconcileStorage`] (a
//! store's index snapshot implements it in `store`). The initiator sends [`Session::initiate`]'s frame;
//! each side feeds every frame it receives to [`Session::step`] and sends the reply,
//! until the initiator's step returns no reply. Along the way the initiator learns
//! which hashes only it has (`have`, to push) and which only the peer has (`need`, to
//! pull); the responder learns nothing and only answers. Both sides must use the same
//! frame limit: a received frame longer than ours is refused before it is decoded.

use std::sync::Arc;

use negentropy::{Bound, Id, Item, Negentropy, NegentropyStorageBase, NegentropyStorageVector};

use crate::ids::Hash;

/// Default frame limit in bytes (both directions). Measured with `lattice-bench
/// reconcile` (100 K items, 10 K differences): rounds fall from 240 at 16 KiB and 63 at
/// 60 KiB to 16 at 256 KiB (1 MiB: 6), and every round re-reads the unmatched rest of
/// the index from redb, so wall time fell 10.2 s -> 5.2 s -> 2.8 s (1 MiB: 1.9 s).
/// 256 KiB takes most of that gain while a frame still fits comfortably in memory and
/// in one QUIC stream write; a small difference costs the same at every limit.
pub const FRAME_LIMIT: usize = 256 * 1024;

/// Most frames one session answers, on either side. `lattice-bench reconcile` takes 16
/// rounds for 10 K differences among 100 K items (see [`FRAME_LIMIT`]); 1024 leave room
/// for 64 times that, while a peer that never lets a session end is cut off after at
/// most `MAX_ROUNDS * 2 * FRAME_LIMIT` bytes.
pub const MAX_ROUNDS: u32 = 1024;

/// Smallest non-zero frame limit negentropy accepts.
const MIN_FRAME_LIMIT: usize = 4096;

/// A set a session can reconcile: negentropy storage that may have hit a storage error
/// inside a call that could not return it.
pub trait ReconcileStorage: NegentropyStorageBase + 'static {
    /// The storage's own error.
    type Fault: std::error::Error + Send + Sync + 'static;

    /// Takes the storage error behind the last failed call, if there was one.
    fn take_fault(&self) -> Option<Self::Fault>;
}

impl ReconcileStorage for NegentropyStorageVector {
    type Fault = std::convert::Infallible;

    fn take_fault(&self) -> Option<Self::Fault> {
        None
    }
}

/// Why a reconciliation step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// A received frame is longer than this session's frame limit.
    #[error("reconciliation frame of {len} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// The frame's length.
        len: usize,
        /// The session's limit.
        limit: usize,
    },
    /// The session already answered [`MAX_ROUNDS`] frames without ending.
    #[error("reconciliation did not end within {limit} rounds")]
    TooManyRounds {
        /// The round limit.
        limit: u32,
    },
    /// A non-zero frame limit below negentropy's minimum of 4096 bytes.
    #[error("frame limit {0} is below the minimum of 4096 bytes")]
    LimitTooSmall(usize),
    /// A received frame does not decode.
    #[error("malformed reconciliation frame: {0}")]
    Malformed(negentropy::Error),
    /// Reading the storage failed (the storage's [`ReconcileStorage::Fault`]).
    #[error("reconciliation storage: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// `initiate` on a responder or twice, or a frame after the session finished.
    #[error("reconciliation session misused: {0}")]
    Misuse(&'static str),
}

/// Counters of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received and answered (for the initiator: round trips).
    pub rounds: u32,
    /// Bytes of frames sent.
    pub bytes_sent: u64,
    /// Bytes of frames received.
    pub bytes_received: u64,
}

/// What one received frame produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// The frame to send back; `None` when the initiator is done.
    pub reply: Option<Vec<u8>>,
    /// Initiator: hashes found in this step that we have and the peer lacks.
    pub have: Vec<Hash>,
    /// Initiator: hashes found in this step that the peer has and we lack.
    pub need: Vec<Hash>,
}

/// One side of a reconciliation over a storage snapshot.
pub struct Session<S: ReconcileStorage> {
    neg: Negentropy<'static, Shared<S>>,
    storage: Arc<S>,
    limit: usize,
    initiator: bool,
    started: bool,
    done: bool,
    stats: Stats,
}

impl<S: ReconcileStorage> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("initiator", &self.initiator)
            .field("limit", &self.limit)
            .field("done", &self.done)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<S: ReconcileStorage> Session<S> {
    /// The side that opens the session and learns the differences; `limit` 0 is unbounded.
    pub fn initiator(storage: S, limit: usize) -> Result<Self, ReconcileError> {
        Self::new(storage, limit, true)
    }

    /// The side that answers frames; `limit` 0 is unbounded.
    pub fn responder(storage: S, limit: usize) -> Result<Self, ReconcileError> {
        Self::new(storage, limit, false)
    }

    fn new(storage: S, limit: usize, initiator: bool) -> Result<Self, ReconcileError> {
        if limit != 0 && limit < MIN_FRAME_LIMIT {
            return Err(ReconcileError::LimitTooSmall(limit));
        }
        let storage = Arc::new(storage);
        let neg = Negentropy::owned(Shared(storage.clone()), limit as u64)
            .map_err(|_| ReconcileError::LimitTooSmall(limit))?;
        Ok(Session {
            neg,
            storage,
            limit,
            initiator,
            started: false,
            done: false,
            stats: Stats::default(),
        })
    }

    /// The initiator's first frame.
    pub fn initiate(&mut self) -> Result<Vec<u8>, ReconcileError> {
        if !self.initiator || self.started {
            return Err(ReconcileError::Misuse("initiate on a responder or twice"));
        }
        self.started = true;
        let frame = self.neg.initiate().map_err(|e| self.fail(e))?;
        self.stats.bytes_sent += frame.len() as u64;
        Ok(frame)
    }

    /// Handles one received frame: refuses it if longer than the limit, malformed, or
    /// past [`MAX_ROUNDS`], else returns the reply and, for the initiator, the
    /// differences it revealed.
    pub fn step(&mut self, frame: &[u8]) -> Result<Step, ReconcileError> {
        if self.done || (self.initiator && !self.started) {
            return Err(ReconcileError::Misuse(
                "frame before initiate or after the end",
            ));
        }
        if self.stats.rounds >= MAX_ROUNDS {
            return Err(ReconcileError::TooManyRounds { limit: MAX_ROUNDS });
        }
        if self.limit != 0 && frame.len() > self.limit {
            return Err(ReconcileError::FrameTooLarge {
                len: frame.len(),
                limit: self.limit,
            });
        }
        self.stats.bytes_received += frame.len() as u64;
        let step = if self.initiator {
            let (mut have, mut need) = (Vec::new(), Vec::new());
            let reply = self
                .neg
                .reconcile_with_ids(frame, &mut have, &mut need)
                .map_err(|e| self.fail(e))?;
            self.done = reply.is_none();
            // negentropy lists `need` in the order of a `HashSet` with a per-process
            // random seed: sorted, the same sets give the same pulls (the simulator
            // replays seeds).
            let mut need: Vec<Hash> = need.into_iter().map(hash).collect();
            need.sort_unstable();
            Step {
                reply,
                have: have.into_iter().map(hash).collect(),
                need,
            }
        } else {
            let reply = self.neg.reconcile(frame).map_err(|e| self.fail(e))?;
            Step {
                reply: Some(reply),
                ..Step::default()
            }
        };
        self.stats.rounds += 1;
        self.stats.bytes_sent += step.reply.as_ref().map_or(0, |r| r.len() as u64);
        Ok(step)
    }

    /// True once the initiator has received the last frame it needs.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Rounds and bytes so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The error to report for a failed negentropy call: the storage's, else the frame's.
    fn fail(&self, e: negentropy::Error) -> ReconcileError {
        match self.storage.take_fault() {
            Some(fault) => ReconcileError::Storage(Box::new(fault)),
            None => ReconcileError::Malformed(e),
        }
    }
}

fn hash(id: Id) -> Hash {
    Hash(id.to_bytes())
}

/// Storage shared between the session (for faults) and negentropy.
struct Shared<S>(Arc<S>);

impl<S: NegentropyStorageBase> NegentropyStorageBase for Shared<S> {
    fn size(&self) -> Result<usize, negentropy::Error> {
        self.0.size()
    }

    fn get_item(&self, i: usize) -> Result<Option<Item>, negentropy::Error> {
        self.0.get_item(i)
    }

    fn iterate(
        &self,
        begin: usize,
        end: usize,
        cb: &mut dyn FnMut(Item, usize) -> Result<bool, negentropy::Error>,
    ) -> Result<(), negentropy::Error> {
        self.0.iterate(begin, end, cb)
    }

    fn find_lower_bound(&self, first: usize, last: usize, value: &Bound) -> usize {
        self.0.find_lower_bound(first, last, value)
    }
}
