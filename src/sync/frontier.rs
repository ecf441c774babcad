//! The stability frontier of a store: a clock `below` which no op this node applies
//! from now on can be stamped, computed from what every member reports about itself.
//!
//! **Attestations.** Member j's attestation is what j says about itself, learned from
//! j directly (at the end of every reconciliation round, in both directions: see the
//! replica's module doc):
//! - `vector`: author -> length of that author's chain j has applied (j's applied set is
//!   causally closed, so it is the union of these chain prefixes);
//! - `floor`: an HLC such that every op j stamps from now on is stamped at or after it:
//!   the minimum of the greatest HLC j's store has applied or sealed (its greatest head)
//!   and the smallest stamp of the ops j pushed but has not sealed yet.
//!
//! j's attestation is *usable* at this node once this node has applied j's own chain up
//! to `vector[j]`: then every op j stamped before `floor` is here (see below). A received
//! attestation replaces the one stored for j and is stored as sent (an honest j's floor
//! never goes down); one claiming more of j's chain than this node holds simply waits.
//!
//! **The frontier** of a store at this node is computed over the *counted* members: the
//! current members (this node included, with its live attestation), plus each revoked
//! member until this node holds its chain up to its revocation's `upto` (after that no
//! op of it can be applied here: the store voids everything past the cut). A member
//! whose latest attestation arrived longer than the store's horizon ago (an admin
//! setting, [`crate::fs::op::OpBody::SetHorizon`], default 90 days), or that never
//! attested and was granted membership longer than that ago (by its first grant's
//! stamp), is *silent* and is not counted. While a counted member has no usable attestation there is no frontier
//! ([`Blocker`]). Otherwise `vector` is the pointwise minimum of the counted members'
//! vectors and `below` the minimum of their floors. The store keeps the greatest `below`
//! it ever computed (persisted), so the frontier never moves backwards.
//!
//! **Why purging below `below` is safe.** Claim: every op applied at this node after a
//! frontier was computed is stamped at or after its `below`, unless its author is
//! silent-past-horizon (or dishonest): those ops are *late*, and the projection applies
//! them by its late rule. Take an op x by author a, applied here later.
//! - a is a counted member other than this node. If x was stamped before a sent the
//!   attestation used, either x was sealed then, so it lies in a's chain prefix
//!   `vector[a]`, which this node already held when it used the attestation (usable):
//!   x is not applied *later*, contradiction; or x was pushed but not sealed then, so
//!   `floor_a <= stamp(x)` by the floor's second term. If x was stamped after the
//!   attestation, a's clock had passed everything a had applied or sealed (the HLC
//!   *observes* every applied intention before the store commits it, and ticks past
//!   every local stamp), so `stamp(x) > floor_a`. In both cases `stamp(x) >= floor_a >=
//!   below`. Durability: a builds its attestation from a durable commit (the store
//!   commits durably before answering, recording the floor it hands out), and at open
//!   its clock observes every stored head and that floor, so neither a crash after
//!   attesting nor a revocation voiding the head the floor came from can bring a's
//!   clock back below `floor_a`.
//! - a is this node: its live floor is computed under the projection's read lock (no
//!   local write in flight), so every op pushed but not sealed is in the mailbox and
//!   counted by the second term, and every later push ticks past the clock, which has
//!   observed every head.
//! - a is revoked and counted: as for a member, with its last stored attestation. Once
//!   this node holds its chain up to `upto`, nothing more of a is ever applied here.
//! - a is not a member when the frontier is computed (a joiner). Its grant was signed by
//!   an admin m: if the grant is applied here later it is an op of m, so stamped at or
//!   after `below` as above; if it was already applied, a is a current member and its
//!   usable attestation is required. A joiner bootstraps from its inviter's witness log
//!   and its clock observes everything it applies, its grant included, before it can
//!   write (a node writes only once its own grant is in its projection): each op of a
//!   is stamped after its grant, so after `below`.
//!
//! **Attestations with a batch.** An inviter serving its witness log to a joiner
//! attaches to each batch an attestation about itself as of the batch: `vector` names
//! only its own chain, up to (not including) the next of its own intentions the log
//! holds past the batch, and `floor` is that intention's smallest op stamp (none when no
//! durable own intention follows). All the proof above uses of an attestation of a is
//! that every op of a outside its chain prefix `vector[a]` is stamped at or after
//! `floor_a`, and this one says so too: a stamps ops in push order (each push ticks past
//! the clock) and seals its mailbox in that order, whole, so every op of a's later
//! intentions, and every op a has pushed but not sealed or pushes later, is stamped after
//! every op of that next intention. A crash does not undo it: the intention was durable
//! when served (the log serves no held intention), so the clock observes it at open. The
//! joiner keeps it like any other attestation, usable once it holds a's chain up to
//! `vector[a]`: so a joiner whose only counted member is its inviter purges as it
//! bootstraps, not after. Its other authors' entries are absent (zero), which only keeps
//! their ops from counting as applied everywhere.
//!
//! A frontier computed once stays valid: the claim is about every later apply, so a
//! frontier kept while a newer computation is blocked (a new member has not attested
//! yet) still holds.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::proto::peer as pb;

/// Most authors one attestation may list: far more than a store has members over its
/// life, and 40 bytes each stays well inside one frame.
pub const MAX_ATTESTED_AUTHORS: usize = 16_384;

/// What a member reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attestation {
    /// Author -> length of that author's chain the attester has applied (no zeros).
    pub vector: BTreeMap<PublicKey, u64>,
    /// Every op the attester stamps from now on is stamped at or after this.
    pub floor: Hlc,
}

/// The stability frontier of a store at this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontier {
    /// No op applied here from now on is stamped before this (but late ones).
    pub below: Hlc,
    /// Author -> chain length every counted member has applied.
    pub vector: BTreeMap<PublicKey, u64>,
    /// How many members were counted.
    pub members: usize,
}

/// Why a received attestation was refused; nothing was stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    /// The attestation does not decode (an author key that is not 32 bytes, an author
    /// listed twice).
    #[error("malformed attestation: {0}")]
    Malformed(String),
    /// The attestation lists more authors than [`MAX_ATTESTED_AUTHORS`].
    #[error("attestation lists {authors} authors; at most {MAX_ATTESTED_AUTHORS}")]
    TooLarge {
        /// Authors listed.
        authors: usize,
    },
    /// The attester is not a current member of the store.
    #[error("{0} is not a member of the store")]
    NotMember(String),
    /// The store failed to record it.
    #[error("store: {0}")]
    Store(String),
}

impl Attestation {
    /// Its wire form.
    pub(crate) fn to_pb(&self) -> pb::Attestation {
        pb::Attestation {
            vector: self
                .vector
                .iter()
                .map(|(k, len)| pb::ChainLen {
                    author: Bytes::copy_from_slice(&k.0),
                    len: *len,
                })
                .collect(),
            floor_wall_ms: self.floor.wall_ms,
            floor_counter: self.floor.counter,
        }
    }

    /// Chain length of `author` in it (0 if not listed).
    pub fn len_of(&self, author: &PublicKey) -> u64 {
        self.vector.get(author).copied().unwrap_or(0)
    }
}

impl TryFrom<pb::Attestation> for Attestation {
    type Error = AttestError;

    fn try_from(a: pb::Attestation) -> Result<Self, AttestError> {
        if a.vector.len() > MAX_ATTESTED_AUTHORS {
            return Err(AttestError::TooLarge {
                authors: a.vector.len(),
            });
        }
        let mut vector = BTreeMap::new();
        for c in a.vector {
            let key = <[u8; 32]>::try_from(&c.author[..])
                .map(PublicKey)
                .map_err(|_| AttestError::Malformed("an author key is not 32 bytes".into()))?;
            if c.len == 0 {
                continue;
            }
            if vector.insert(key, c.len).is_some() {
                return Err(AttestError::Malformed(format!(
                    "author {} is listed twice",
                    key.short()
                )));
            }
        }
        Ok(Attestation {
            vector,
            floor: Hlc {
                wall_ms: a.floor_wall_ms,
                counter: a.floor_counter,
            },
        })
    }
}

/// A stored attestation and when it arrived (the store's wall clock, Unix ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The attestation as sent.
    pub attestation: Attestation,
    /// When it arrived.
    pub at_ms: u64,
}

/// Why there is no frontier now: a counted member whose attestation cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// It never attested to this node.
    NoAttestation(PublicKey),
    /// Its attestation names more of its own chain than this node holds.
    Behind(PublicKey),
}

/// Who holds the frontier where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holdback {
    /// No frontier can be computed now (see [`Blocker`]).
    Blocked(Blocker),
    /// The counted member with the smallest floor.
    Floor(PublicKey),
}

impl Holdback {
    /// The member it names.
    pub fn key(&self) -> PublicKey {
        match self {
            Holdback::Blocked(Blocker::NoAttestation(k) | Blocker::Behind(k))
            | Holdback::Floor(k) => *k,
        }
    }
}

/// What the frontier computation reads.
pub(crate) struct Inputs<'a> {
    /// This node.
    pub me: PublicKey,
    /// This node's live attestation.
    pub own: &'a Attestation,
    /// The current members, this node possibly among them.
    pub members: &'a [PublicKey],
    /// Revoked keys with the smallest `upto` of their revocations.
    pub revoked: &'a [(PublicKey, u64)],
    /// The stored attestations of other members.
    pub stored: &'a BTreeMap<PublicKey, Stored>,
    /// The length of an author's chain applied here.
    pub held: &'a dyn Fn(&PublicKey) -> u64,
    /// Wall ms of a member's first grant (0 if none is known).
    pub granted: &'a dyn Fn(&PublicKey) -> u64,
    /// The store's wall clock now (Unix ms).
    pub now_ms: u64,
    /// Silence after which a member stops counting.
    pub horizon_ms: u64,
}

/// The frontier of `inputs` with the counted member of smallest floor, or what blocks it.
pub(crate) fn compute(inputs: &Inputs<'_>) -> Result<(Frontier, PublicKey), Blocker> {
    let mut counted: Vec<(PublicKey, &Attestation)> = vec![(inputs.me, inputs.own)];
    let revoked = inputs
        .revoked
        .iter()
        .filter(|(k, upto)| (inputs.held)(k) < *upto)
        .map(|(k, _)| *k);
    let mut others: Vec<PublicKey> = inputs
        .members
        .iter()
        .copied()
        .chain(revoked)
        .filter(|k| *k != inputs.me)
        .collect();
    others.sort();
    others.dedup();
    for key in others {
        let Some(s) = inputs.stored.get(&key) else {
            if (inputs.granted)(&key).saturating_add(inputs.horizon_ms) < inputs.now_ms {
                continue;
            }
            return Err(Blocker::NoAttestation(key));
        };
        if s.at_ms.saturating_add(inputs.horizon_ms) < inputs.now_ms {
            continue;
        }
        if (inputs.held)(&key) < s.attestation.len_of(&key) {
            return Err(Blocker::Behind(key));
        }
        counted.push((key, &s.attestation));
    }
    let (lowest, below) = counted
        .iter()
        .map(|(k, a)| (*k, a.floor))
        .min_by_key(|(k, floor)| (*floor, *k))
        .expect("this node is always counted");
    let vector = inputs
        .own
        .vector
        .keys()
        .filter_map(|author| {
            let min = counted.iter().map(|(_, a)| a.len_of(author)).min()?;
            (min > 0).then_some((*author, min))
        })
        .collect();
    let frontier = Frontier {
        below,
        vector,
        members: counted.len(),
    };
    Ok((frontier, lowest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The horizon these tests compute with (a store's default).
    const HORIZON_MS: u64 = crate::fs::op::DEFAULT_HORIZON_DAYS as u64 * crate::store::MS_PER_DAY;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn hlc(wall_ms: u64) -> Hlc {
        Hlc {
            wall_ms,
            counter: 0,
        }
    }

    fn att(floor: u64, vector: &[(u8, u64)]) -> Attestation {
        Attestation {
            vector: vector.iter().map(|(k, n)| (key(*k), *n)).collect(),
            floor: hlc(floor),
        }
    }

    fn stored(list: &[(u8, Attestation, u64)]) -> BTreeMap<PublicKey, Stored> {
        list.iter()
            .map(|(k, a, at_ms)| {
                (
                    key(*k),
                    Stored {
                        attestation: a.clone(),
                        at_ms: *at_ms,
                    },
                )
            })
            .collect()
    }

    fn run(
        own: &Attestation,
        members: &[u8],
        revoked: &[(u8, u64)],
        stored: &BTreeMap<PublicKey, Stored>,
        held: &[(u8, u64)],
        now_ms: u64,
    ) -> Result<(Frontier, PublicKey), Blocker> {
        let members: Vec<PublicKey> = members.iter().map(|n| key(*n)).collect();
        let revoked: Vec<(PublicKey, u64)> = revoked.iter().map(|(n, u)| (key(*n), *u)).collect();
        let held: BTreeMap<PublicKey, u64> = held.iter().map(|(n, l)| (key(*n), *l)).collect();
        let held = move |k: &PublicKey| held.get(k).copied().unwrap_or(0);
        let granted = |_: &PublicKey| 1_000;
        compute(&Inputs {
            me: key(1),
            own,
            members: &members,
            revoked: &revoked,
            stored,
            held: &held,
            granted: &granted,
            now_ms,
            horizon_ms: HORIZON_MS,
        })
    }

    #[test]
    fn the_frontier_is_the_smallest_floor_and_the_pointwise_smallest_vector() {
        let own = att(50, &[(1, 4), (2, 3)]);
        let s = stored(&[(2, att(40, &[(1, 2), (2, 3)]), 0)]);
        let (f, lowest) = run(&own, &[1, 2], &[], &s, &[(1, 4), (2, 3)], 0).unwrap();
        assert_eq!(f.below, hlc(40));
        assert_eq!(lowest, key(2));
        assert_eq!(f.members, 2);
        assert_eq!(f.vector, att(0, &[(1, 2), (2, 3)]).vector);
    }

    #[test]
    fn a_member_without_an_attestation_blocks_the_frontier() {
        let own = att(50, &[(1, 4)]);
        let got = run(&own, &[1, 2], &[], &BTreeMap::new(), &[(1, 4)], 0);
        assert_eq!(got, Err(Blocker::NoAttestation(key(2))));
    }

    #[test]
    fn an_attestation_is_unusable_until_its_authors_chain_is_held_that_far() {
        let own = att(50, &[(1, 4), (2, 2)]);
        let s = stored(&[(2, att(60, &[(1, 4), (2, 3)]), 0)]);
        let got = run(&own, &[1, 2], &[], &s, &[(1, 4), (2, 2)], 0);
        assert_eq!(got, Err(Blocker::Behind(key(2))));
        assert!(run(&own, &[1, 2], &[], &s, &[(1, 4), (2, 3)], 0).is_ok());
    }

    #[test]
    fn a_revoked_member_counts_until_its_chain_is_held_up_to_the_cut() {
        let own = att(50, &[(1, 4), (3, 1)]);
        let s = stored(&[(3, att(10, &[(1, 1), (3, 1)]), 0)]);
        let (f, _) = run(&own, &[1], &[(3, 2)], &s, &[(1, 4), (3, 1)], 0).unwrap();
        assert_eq!(f.below, hlc(10), "its chain is held up to 1 of 2");
        let (f, _) = run(&own, &[1], &[(3, 2)], &s, &[(1, 4), (3, 2)], 0).unwrap();
        assert_eq!(f.below, hlc(50), "its chain is held up to the cut");
        assert_eq!(f.members, 1);
    }

    #[test]
    fn a_member_silent_past_the_horizon_stops_counting() {
        let own = att(50, &[(1, 4)]);
        let s = stored(&[(2, att(10, &[]), 1_000)]);
        let (f, _) = run(&own, &[1, 2], &[], &s, &[(1, 4)], 1_000 + HORIZON_MS).unwrap();
        assert_eq!(f.below, hlc(10), "exactly at the horizon it still counts");
        let (f, _) = run(&own, &[1, 2], &[], &s, &[(1, 4)], 1_001 + HORIZON_MS).unwrap();
        assert_eq!(f.below, hlc(50));
        assert_eq!(f.members, 1);
    }

    #[test]
    fn a_member_that_never_attested_stops_counting_a_horizon_after_its_grant() {
        let own = att(50, &[(1, 4)]);
        let none = BTreeMap::new();
        let got = run(&own, &[1, 2], &[], &none, &[(1, 4)], 1_000 + HORIZON_MS);
        assert_eq!(got, Err(Blocker::NoAttestation(key(2))));
        let (f, _) = run(&own, &[1, 2], &[], &none, &[(1, 4)], 1_001 + HORIZON_MS).unwrap();
        assert_eq!((f.below, f.members), (hlc(50), 1));
    }

    #[test]
    fn malformed_or_oversized_attestations_are_refused() {
        let one = |author: Vec<u8>| pb::ChainLen {
            author: author.into(),
            len: 1,
        };
        let short = pb::Attestation {
            vector: vec![one(vec![1; 31])],
            ..Default::default()
        };
        assert!(matches!(
            Attestation::try_from(short),
            Err(AttestError::Malformed(_))
        ));
        let twice = pb::Attestation {
            vector: vec![one(vec![1; 32]), one(vec![1; 32])],
            ..Default::default()
        };
        assert!(matches!(
            Attestation::try_from(twice),
            Err(AttestError::Malformed(_))
        ));
        let huge = pb::Attestation {
            vector: (0..=MAX_ATTESTED_AUTHORS)
                .map(|n| one((n as u64).to_be_bytes().repeat(4)))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            Attestation::try_from(huge),
            Err(AttestError::TooLarge {
                authors: MAX_ATTESTED_AUTHORS + 1
            })
        );
        let good = att(7, &[(1, 3), (2, 9)]);
        assert_eq!(Attestation::try_from(good.to_pb()), Ok(good));
    }
}
