//! Proof of who wrote what: re-checks, from this store's tables only, the signed
//! intentions that carry given ops, and the authority of each author back to the
//! store's genesis, with the code that admits intentions (`Intention::decode` for the
//! hash and signature, `apply::chain_seq`, `apply::cut_of`, `apply::check_authority`
//! and `apply::check_order` for rules 1 to 6).
//!
//! An op is found in its author's chain: the intention holding an op stamped `h` is the
//! first of the author's chain whose clock is at least `h` (a chain's clocks increase
//! and an intention's clock is its greatest op's), so a tampered byte cannot hide which
//! intention had to hold it. Each intention checked adds the one holding the grant that
//! gives its author its role at that place of its chain, until the genesis intention,
//! signed by the founder, is reached. A predecessor that is not held here is a failure,
//! unless it lies below the stability frontier: then the proof says it stops there.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};

use redb::ReadableTable;

use crate::fs::op::Role;
use crate::fs::FsState;
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{Hash, OpId};
use crate::intention::{Intention, IntentionError};
use crate::store::apply::{chain_seq, check_authority, check_order, cut_of, grant_at, is_genesis};
use crate::store::error::StoreError;
use crate::store::tables::Tables;

/// Why the author of a checked intention could write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authority {
    /// It is the store's genesis intention, signed by the founder.
    Genesis,
    /// A counting grant gave its author this role at its place in its chain.
    Granted {
        /// The role.
        role: Role,
        /// The `SetMember` op.
        grant: OpId,
        /// The intention holding the grant (checked too).
        by: Hash,
    },
}

/// One intention re-checked: its hash recomputed from its stored bytes, its signature
/// verified against its author key, and its author's authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedIntention {
    /// Its hash, recomputed from its bytes.
    pub hash: Hash,
    /// Its author.
    pub author: PublicKey,
    /// Its place in its author's chain (1 for the first).
    pub seq: u64,
    /// Its clock.
    pub hlc: Hlc,
    /// Its author's previous intention.
    pub prev: Option<Hash>,
    /// The store heads its author had seen.
    pub deps: Vec<Hash>,
    /// How many of `prev` and `deps` are held here.
    pub links_held: usize,
    /// Why its author could write it; `None` when that failed (see the failures).
    pub authority: Option<Authority>,
}

/// One thing that does not verify, as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyFailure {
    /// No intention of the op's author held here carries the op.
    #[error("op {} of {}: no intention of its author held here carries it", op_time(.0), .0.author.short())]
    NotHeld(OpId),
    /// The stored bytes do not hash to the hash they are stored under.
    #[error("intention {hash}: its stored bytes hash to {recomputed}: they were altered")]
    Altered {
        /// The hash it is stored under.
        hash: Hash,
        /// What its bytes hash to.
        recomputed: Hash,
    },
    /// The stored bytes are not a valid signed intention (bad signature, malformed).
    #[error("intention {hash}: {error}")]
    Invalid {
        /// The hash it is stored under.
        hash: Hash,
        /// What decoding refused.
        error: IntentionError,
    },
    /// Its author had no authority for it (not a member, not an admin, revoked).
    #[error("intention {hash}: {error}")]
    Unauthorised {
        /// The intention.
        hash: Hash,
        /// The admission rule it breaks.
        error: StoreError,
    },
    /// It names a predecessor that is not held here and not below the frontier.
    #[error("intention {hash} names {missing}, which is not held here")]
    MissingLink {
        /// The intention.
        hash: Hash,
        /// The predecessor.
        missing: Hash,
    },
}

/// What [`crate::store::Store::verify`] found.
#[derive(Debug)]
pub struct Proof {
    /// The store's founder, author of its genesis intention.
    pub founder: PublicKey,
    /// The intention found holding each op asked about, in the order asked.
    pub holders: Vec<(OpId, Option<Hash>)>,
    /// Every intention checked: those holding the ops, then those holding the grants
    /// behind them, back to the genesis.
    pub intentions: Vec<CheckedIntention>,
    /// What does not verify, one line each.
    pub failures: Vec<VerifyFailure>,
    /// The genesis intention, if the authority chain reached it.
    pub genesis: Option<Hash>,
    /// The stability frontier, if a predecessor was missing below it (purged there):
    /// the proof reaches back to there and no further.
    pub purged_below: Option<Hlc>,
}

impl Proof {
    /// True when every check passed.
    pub fn verified(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Checks the intentions holding `ops` and the grants behind them (see the module doc).
/// `frontier_below` is the stability frontier's `below`, if there is one.
pub(crate) fn prove(
    t: &Tables<'_>,
    state: &FsState,
    founder: PublicKey,
    frontier_below: Option<Hlc>,
    ops: &[OpId],
) -> Result<Proof, StoreError> {
    let mut proof = Proof {
        founder,
        holders: Vec::with_capacity(ops.len()),
        intentions: Vec::new(),
        failures: Vec::new(),
        genesis: None,
        purged_below: None,
    };
    let first = t.witness.get(1)?.map(|v| Hash(v.value().0));
    let mut chains = Chains::default();
    let mut queue = VecDeque::new();
    let mut seen: HashSet<Hash> = HashSet::new();
    for op in ops {
        let holder = chains.holder_of(t, op)?;
        match holder {
            Some(h) => {
                if seen.insert(h) {
                    queue.push_back((h, Some(*op)));
                }
            }
            None => proof.failures.push(VerifyFailure::NotHeld(*op)),
        }
        proof.holders.push((*op, holder));
    }
    while let Some((hash, op)) = queue.pop_front() {
        let Some(i) = check_bytes(t, hash, &mut proof.failures)? else {
            continue;
        };
        if let Some(op) = op {
            if !i.ops.iter().any(|o| o.id(i.author) == op) {
                proof.failures.push(VerifyFailure::NotHeld(op));
            }
        }
        let seq = chain_seq(t, &i)?;
        let mut links_held = 0;
        for h in i.prev.iter().chain(&i.deps) {
            if t.is_known(h)? {
                links_held += 1;
            } else if frontier_below.is_some_and(|below| i.hlc < below) {
                proof.purged_below = frontier_below;
            } else {
                proof
                    .failures
                    .push(VerifyFailure::MissingLink { hash, missing: *h });
            }
        }
        let authority = if is_genesis(&founder, u64::from(first != Some(hash)), &i) {
            proof.genesis = Some(hash);
            Some(Authority::Genesis)
        } else {
            let admitted = match cut_of(t, state, &i.author)? {
                Some(upto) if seq > upto => Err(StoreError::Revoked {
                    author: i.author,
                    seq,
                    upto,
                }),
                _ => check_authority(t, state, &i, seq).and_then(|()| check_order(t, &i)),
            };
            match (admitted, grant_at(t, state, &i.author, seq)?) {
                (Err(error), _) => {
                    proof
                        .failures
                        .push(VerifyFailure::Unauthorised { hash, error });
                    None
                }
                (Ok(()), None) => {
                    return Err(StoreError::Corrupt(format!(
                        "{hash} is admitted without a grant"
                    )))
                }
                (Ok(()), Some((grant, role))) => {
                    let by = chains.holder_of(t, &grant)?;
                    match by {
                        Some(by) => {
                            if seen.insert(by) {
                                queue.push_back((by, Some(grant)));
                            }
                            Some(Authority::Granted { role, grant, by })
                        }
                        None => {
                            proof.failures.push(VerifyFailure::NotHeld(grant));
                            None
                        }
                    }
                }
            }
        };
        proof.intentions.push(CheckedIntention {
            hash,
            author: i.author,
            seq,
            hlc: i.hlc,
            prev: i.prev,
            deps: i.deps.clone(),
            links_held,
            authority,
        });
    }
    Ok(proof)
}

/// The stored intention `hash`, its hash recomputed and its signature and ops checked
/// by [`Intention::decode`]; `None`, with the failure recorded, when that fails.
fn check_bytes(
    t: &Tables<'_>,
    hash: Hash,
    failures: &mut Vec<VerifyFailure>,
) -> Result<Option<Intention>, StoreError> {
    let Some(bytes) = t.intentions.get(hash.0)? else {
        return Err(StoreError::Corrupt(format!(
            "{hash} is in its author's chain but not stored"
        )));
    };
    let bytes = bytes.value();
    if let Some((_, recomputed)) = Intention::peek(&bytes) {
        if recomputed != hash {
            failures.push(VerifyFailure::Altered { hash, recomputed });
            return Ok(None);
        }
    }
    match Intention::decode(bytes) {
        Ok(i) => Ok(Some(i)),
        Err(error) => {
            failures.push(VerifyFailure::Invalid { hash, error });
            Ok(None)
        }
    }
}

/// Each author's applied chain with clocks, in chain order (so in clock order), read
/// once per author: a file of many appends asks about many ops of one chain.
#[derive(Default)]
struct Chains(HashMap<PublicKey, Vec<(Hlc, Hash)>>);

impl Chains {
    /// The applied intention of `op`'s author that must hold `op`: the first of its
    /// chain stamped no earlier than the op (see the module doc).
    fn holder_of(&mut self, t: &Tables<'_>, op: &OpId) -> Result<Option<Hash>, StoreError> {
        let chain = match self.0.entry(op.author) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let key = op.author.0;
                let mut chain = Vec::new();
                for entry in t
                    .chain
                    .range((key, 1, [0u8; 32])..=(key, u64::MAX, [0xff; 32]))?
                {
                    let hash = Hash(entry?.0.value().2);
                    let hlc = t.hlc_of(&hash)?.ok_or_else(|| {
                        StoreError::Corrupt(format!("no clock for applied {hash}"))
                    })?;
                    chain.push((hlc, hash));
                }
                e.insert(chain)
            }
        };
        let at = chain.partition_point(|(hlc, _)| *hlc < op.hlc);
        Ok(chain.get(at).map(|(_, hash)| *hash))
    }
}

/// An op's time as `history` prints it (wall ms.counter).
fn op_time(op: &OpId) -> String {
    format!("{}.{}", op.hlc.wall_ms, op.hlc.counter)
}
