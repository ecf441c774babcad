//! The joiner's side of a join, sans IO: redeem the invite with the inviter, begin the
//! join, then stream the inviter's witness log in batches, saving progress after each
//! durable batch, until the empty batch ends it. `net/client.rs` and the simulator
//! carry out its actions; neither decides anything about a join itself.

use bytes::Bytes;

use crate::identity::PublicKey;
use crate::proto::peer::{self as pb, request, response};
use crate::sync::frontier::{AttestError, Attestation};
use crate::sync::Refusal;

/// Where a fresh bootstrap starts: the witness log counts from 1.
pub(crate) const FIRST_WITNESS: u64 = 1;

/// What the joiner's driver must do next, in order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum JoinAction {
    /// Open a new conversation with the inviter and send this request on it.
    Send(request::Kind),
    /// Create the joining store, keep the gossip secret (if sent) and learn the peers.
    Begin {
        /// The store's founder.
        founder: PublicKey,
        /// The store's gossip secret, when the inviter sent one.
        topic_secret: Option<[u8; 32]>,
        /// Members the inviter named, with their addresses.
        peers: Vec<pb::PeerAddrs>,
    },
    /// Apply these intentions in order after the earlier batches (refusals are the
    /// store's business); once they are durable the bootstrap may resume from `next`.
    /// Then keep the inviter's attestation, if it sent one, as any other it sends.
    Apply {
        /// The batch's intentions, in witness order.
        intentions: Vec<Bytes>,
        /// The witness number after the batch's last one.
        next: u64,
        /// What the inviter attests about itself as of the batch (see `sync::frontier`).
        attested: Option<Attestation>,
    },
    /// The whole log is in: make the store visible.
    Finish,
}

/// Why a join stopped.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub(crate) enum JoinError {
    /// The inviter refused.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The inviter answered with something this stage does not expect.
    #[error("unexpected {0}")]
    Unexpected(&'static str),
    /// The founder key in the inviter's answer is not 32 bytes.
    #[error("founder key of {0} bytes")]
    BadFounder(usize),
    /// The attestation sent with a witness batch does not decode.
    #[error("witness batch: {0}")]
    BadAttestation(AttestError),
}

/// Where the join is.
#[derive(Clone, Debug, PartialEq)]
enum Stage {
    /// Waiting for the inviter to redeem the secret.
    Redeeming {
        secret: [u8; 32],
        display_name: String,
    },
    /// Streaming the witness log from `next`.
    Streaming { next: u64 },
    /// Finished (or failed): nothing more to do.
    Done,
}

/// The joiner's state machine.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Joiner {
    stage: Stage,
    /// Intentions received so far, counting those before a resume.
    intentions: u64,
    /// Bytes received since this machine started.
    bytes: u64,
    /// The inviter's witness length, as of its last batch.
    total: u64,
    /// Where this machine's streaming started (for rate estimates).
    first: u64,
}

impl Joiner {
    /// A join that redeems `secret` under `display_name`.
    pub(crate) fn redeem(secret: [u8; 32], display_name: String) -> Joiner {
        Joiner {
            stage: Stage::Redeeming {
                secret,
                display_name,
            },
            intentions: 0,
            bytes: 0,
            total: 0,
            first: FIRST_WITNESS,
        }
    }

    /// A redeemed join whose bootstrap goes on from witness `next`.
    pub(crate) fn resume(next: u64) -> Joiner {
        Joiner {
            stage: Stage::Streaming { next },
            intentions: next.saturating_sub(1),
            bytes: 0,
            total: 0,
            first: next,
        }
    }

    /// The request for the current stage, to send first or again after a broken
    /// conversation; `None` once done.
    pub(crate) fn request(&self) -> Option<request::Kind> {
        match &self.stage {
            Stage::Redeeming {
                secret,
                display_name,
            } => Some(request::Kind::Redeem(pb::Redeem {
                secret: Bytes::copy_from_slice(secret),
                display_name: display_name.clone(),
            })),
            Stage::Streaming { next } => {
                Some(request::Kind::Bootstrap(pb::Bootstrap { from: *next }))
            }
            Stage::Done => None,
        }
    }

    /// Intentions received so far, counting those before a resume.
    pub(crate) fn intentions(&self) -> u64 {
        self.intentions
    }

    /// Bytes received since this machine started.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The inviter's witness length, as of its last batch.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Witnesses received since this machine started, and those still to come.
    pub(crate) fn done_and_left(&self) -> (u64, u64) {
        let next = match self.stage {
            Stage::Streaming { next } => next,
            _ => self.first,
        };
        let done = next.saturating_sub(self.first);
        (done, self.total.saturating_sub(next.saturating_sub(1)))
    }

    /// Takes the inviter's `answer`; returns what to do. An error ends the join's
    /// conversation and leaves the machine as it was, to be driven again later.
    pub(crate) fn handle(&mut self, answer: response::Kind) -> Result<Vec<JoinAction>, JoinError> {
        match (&self.stage, answer) {
            (_, response::Kind::Refusal(r)) => Err(JoinError::Refused(r.into())),
            (Stage::Redeeming { .. }, response::Kind::Redeemed(r)) => {
                let founder = <[u8; 32]>::try_from(&r.founder[..])
                    .map_err(|_| JoinError::BadFounder(r.founder.len()))?;
                self.stage = Stage::Streaming {
                    next: FIRST_WITNESS,
                };
                self.first = FIRST_WITNESS;
                let begin = JoinAction::Begin {
                    founder: PublicKey(founder),
                    topic_secret: <[u8; 32]>::try_from(&r.topic_secret[..]).ok(),
                    peers: r.peers,
                };
                let send = self.request().map(JoinAction::Send);
                Ok([Some(begin), send].into_iter().flatten().collect())
            }
            (Stage::Streaming { .. }, response::Kind::Batch(batch)) => {
                if batch.intentions.is_empty() {
                    self.stage = Stage::Done;
                    return Ok(vec![JoinAction::Finish]);
                }
                let attested = batch
                    .attested
                    .map(Attestation::try_from)
                    .transpose()
                    .map_err(JoinError::BadAttestation)?;
                self.intentions += batch.intentions.len() as u64;
                self.bytes += batch.intentions.iter().map(|b| b.len() as u64).sum::<u64>();
                self.total = batch.len;
                self.stage = Stage::Streaming { next: batch.next };
                Ok(vec![JoinAction::Apply {
                    intentions: batch.intentions,
                    next: batch.next,
                    attested,
                }])
            }
            (_, other) => Err(JoinError::Unexpected(answer_name(&other))),
        }
    }
}

/// A response kind's name, for messages.
pub(crate) fn answer_name(kind: &response::Kind) -> &'static str {
    match kind {
        response::Kind::Refusal(_) => "refusal",
        response::Kind::Redeemed(_) => "redeemed",
        response::Kind::Batch(_) => "witness batch",
        response::Kind::Reconcile(_) => "reconcile frame",
        response::Kind::Intentions(_) => "intentions",
        response::Kind::Pushed(_) => "pushed",
        response::Kind::Blocks(_) => "blocks",
        response::Kind::TopicSecret(_) => "topic secret",
        response::Kind::Attested(_) => "attestation",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::RefusalCode;

    fn redeemed(founder: &[u8]) -> response::Kind {
        response::Kind::Redeemed(pb::Redeemed {
            founder: Bytes::copy_from_slice(founder),
            topic_secret: Bytes::copy_from_slice(&[7; 32]),
            ..Default::default()
        })
    }

    fn batch(intentions: &[&'static [u8]], next: u64, len: u64) -> response::Kind {
        response::Kind::Batch(pb::WitnessBatch {
            intentions: intentions.iter().map(|b| Bytes::from_static(b)).collect(),
            next,
            len,
            attested: None,
        })
    }

    #[test]
    fn a_redeem_then_two_batches_then_the_empty_one_finish_the_join() {
        let mut j = Joiner::redeem([1; 32], "bob".into());
        assert!(matches!(j.request(), Some(request::Kind::Redeem(r)) if r.display_name == "bob"));
        let acts = j.handle(redeemed(&[9; 32])).expect("redeemed is expected");
        assert_eq!(
            acts,
            vec![
                JoinAction::Begin {
                    founder: PublicKey([9; 32]),
                    topic_secret: Some([7; 32]),
                    peers: Vec::new(),
                },
                JoinAction::Send(request::Kind::Bootstrap(pb::Bootstrap { from: 1 })),
            ]
        );
        let acts = j.handle(batch(&[b"ab", b"c"], 3, 3)).expect("a batch");
        assert_eq!(
            acts,
            vec![JoinAction::Apply {
                intentions: vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")],
                next: 3,
                attested: None,
            }]
        );
        assert_eq!((j.intentions(), j.bytes(), j.total()), (2, 3, 3));
        assert_eq!(j.done_and_left(), (2, 1));
        let acts = j.handle(batch(&[b"d"], 4, 3)).expect("a batch");
        assert!(matches!(acts[..], [JoinAction::Apply { next: 4, .. }]));
        assert_eq!(j.done_and_left(), (3, 0));
        assert_eq!(j.handle(batch(&[], 4, 3)), Ok(vec![JoinAction::Finish]));
        assert_eq!(j.request(), None);
    }

    #[test]
    fn a_batch_passes_its_attestation_on_and_one_that_does_not_decode_stops_the_join() {
        let mut j = Joiner::resume(1);
        let attested = |author: &'static [u8]| {
            response::Kind::Batch(pb::WitnessBatch {
                intentions: vec![Bytes::from_static(b"ab")],
                next: 2,
                len: 2,
                attested: Some(pb::Attestation {
                    vector: vec![pb::ChainLen {
                        author: Bytes::from_static(author),
                        len: 4,
                    }],
                    floor_wall_ms: 7,
                    floor_counter: 1,
                }),
            })
        };
        let before = j.clone();
        assert!(matches!(
            j.handle(attested(&[3; 5])),
            Err(JoinError::BadAttestation(AttestError::Malformed(_)))
        ));
        assert_eq!(j, before);
        let acts = j.handle(attested(&[3; 32])).expect("a batch");
        let [JoinAction::Apply {
            attested: Some(a), ..
        }] = &acts[..]
        else {
            panic!("{acts:?}");
        };
        assert_eq!(a.len_of(&PublicKey([3; 32])), 4);
        assert_eq!(a.floor.wall_ms, 7);
    }

    #[test]
    fn a_refusal_stops_the_join_and_changes_nothing() {
        let mut j = Joiner::redeem([1; 32], "bob".into());
        let before = j.clone();
        let refusal = Refusal::new(RefusalCode::NotMember, "spent invite");
        let err = j.handle(response::Kind::Refusal(refusal.clone().into()));
        assert_eq!(err, Err(JoinError::Refused(refusal)));
        assert_eq!(j, before);
    }

    #[test]
    fn an_unexpected_answer_or_a_short_founder_is_an_error_and_changes_nothing() {
        let mut j = Joiner::redeem([1; 32], "bob".into());
        let before = j.clone();
        assert_eq!(
            j.handle(batch(&[b"x"], 2, 1)),
            Err(JoinError::Unexpected("witness batch"))
        );
        assert_eq!(j.handle(redeemed(&[9; 5])), Err(JoinError::BadFounder(5)));
        assert_eq!(j, before);
        let mut s = Joiner::resume(1);
        assert_eq!(
            s.handle(redeemed(&[9; 32])),
            Err(JoinError::Unexpected("redeemed"))
        );
    }

    #[test]
    fn resuming_from_a_saved_next_asks_from_there_and_counts_what_came_before() {
        let mut j = Joiner::resume(5);
        assert_eq!(
            j.request(),
            Some(request::Kind::Bootstrap(pb::Bootstrap { from: 5 }))
        );
        assert_eq!(j.intentions(), 4);
        let acts = j.handle(batch(&[b"e"], 6, 5)).expect("a batch");
        assert!(matches!(acts[..], [JoinAction::Apply { next: 6, .. }]));
        assert_eq!(j.intentions(), 5);
        assert_eq!(j.done_and_left(), (1, 0));
    }
}
