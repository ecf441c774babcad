//! The simulated network: packets in flight with a delivery time (delay and reordering),
//! loss and duplication drawn from the run's seed, and partitions that cut links.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::Rng;

use crate::proto::peer::{self as pb, response};
use crate::sim::Millis;
use crate::sync::replica::{Conv, Failure};

/// What travels between nodes in the direct-exchange mode.
#[derive(Clone, Debug)]
pub(crate) enum Msg {
    /// Intentions pushed to a neighbour (gossip).
    Push(Vec<Bytes>),
    /// A joiner presents its invite secret to an admin.
    Redeem([u8; 32]),
    /// The admin redeemed the joiner's invite.
    Redeemed,
    /// Replica mode: a gossip message.
    Gossip(Bytes),
    /// Replica mode: a request on an opener's conversation.
    Request {
        /// The opener's conversation.
        conv: Conv,
        /// The request.
        request: pb::Request,
    },
    /// Replica mode: an answer (or refusal) on an opener's conversation.
    Answer {
        /// The opener's conversation.
        conv: Conv,
        /// The answer.
        answer: Result<response::Kind, Failure>,
    },
    /// Replica mode: the opener finished its conversation.
    Closed {
        /// The opener's conversation.
        conv: Conv,
    },
}

/// One packet in flight.
#[derive(Clone, Debug)]
pub(crate) struct Packet {
    /// Sending node.
    pub from: usize,
    /// Receiving node.
    pub to: usize,
    /// Its content.
    pub msg: Msg,
}

/// Faults of the links, per mille.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Faults {
    /// Chance that a packet is lost.
    pub loss: u32,
    /// Chance that a packet is delivered twice.
    pub dup: u32,
    /// Longest delivery delay in ms (delays are uniform, so packets overtake each other).
    pub max_delay: Millis,
}

/// Links between nodes and the packets on them.
pub(crate) struct Net {
    /// Current faults.
    pub faults: Faults,
    queue: BTreeMap<(Millis, u64), (Packet, bool)>,
    next: u64,
    /// Delivery time of the last ordered packet per link, so streams keep their order.
    streams: BTreeMap<(usize, usize), Millis>,
    /// Partition side of each node; nodes on different sides cannot reach each other.
    side: Vec<u8>,
}

impl Net {
    /// A network with these faults and no partition.
    pub fn new(faults: Faults) -> Net {
        Net {
            faults,
            queue: BTreeMap::new(),
            next: 0,
            streams: BTreeMap::new(),
            side: Vec::new(),
        }
    }

    /// Whether `a` and `b` can reach each other now.
    pub fn linked(&self, a: usize, b: usize) -> bool {
        self.side_of(a) == self.side_of(b)
    }

    fn side_of(&self, n: usize) -> u8 {
        self.side.get(n).copied().unwrap_or(0)
    }

    /// Whether a partition is in force.
    pub fn partitioned(&self) -> bool {
        self.side.iter().any(|&s| s != 0)
    }

    /// Splits `nodes` nodes into two random sides.
    pub fn partition(&mut self, rng: &mut StdRng, nodes: usize) {
        self.side = (0..nodes).map(|_| rng.random_range(0..2u8)).collect();
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.side.clear();
    }

    /// Whether one exchange fails, per the loss rate.
    pub fn lost(&self, rng: &mut StdRng) -> bool {
        rng.random_range(0..1000) < self.faults.loss
    }

    /// Sends a packet at `now`: it may be lost, delayed, or duplicated.
    pub fn send(&mut self, rng: &mut StdRng, now: Millis, packet: Packet) {
        if self.lost(rng) {
            return;
        }
        let copies = if rng.random_range(0..1000) < self.faults.dup {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = now + rng.random_range(0..=self.faults.max_delay);
            self.queue.insert((at, self.next), (packet.clone(), false));
            self.next += 1;
        }
    }

    /// Sends a stream packet at `now`: delayed, never overtaking the previous packet on
    /// its link; `lost` marks it to break its conversation on arrival instead.
    pub fn send_ordered(&mut self, rng: &mut StdRng, now: Millis, packet: Packet, lost: bool) {
        let link = (packet.from, packet.to);
        let after = self.streams.get(&link).copied().unwrap_or(0);
        let at = (now + rng.random_range(0..=self.faults.max_delay)).max(after);
        self.streams.insert(link, at);
        self.queue.insert((at, self.next), (packet, lost));
        self.next += 1;
    }

    /// Whether no packet is in flight.
    pub fn idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes the next packet due by `now` (in delivery order) and whether it was lost
    /// on the way; `None` when none is due.
    pub fn due(&mut self, now: Millis) -> Option<(Packet, bool)> {
        let (&key, _) = self.queue.iter().next()?;
        if key.0 > now {
            return None;
        }
        self.queue.remove(&key)
    }

    /// When the last packet in flight is due.
    pub fn last_due(&self) -> Option<Millis> {
        self.queue.keys().next_back().map(|k| k.0)
    }
}
