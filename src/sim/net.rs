//! The simulated network: packets in flight with a delivery time (delay and reordering),
//! loss and duplication drawn from the run's seed, and partitions that cut links.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::Rng;

use crate::sim::Millis;

/// What travels between nodes in the direct-exchange mode.
#[derive(Clone, Debug)]
pub(crate) enum Msg {
    /// Intentions pushed to a neighbour (gossip).
    Push(Vec<Bytes>),
    /// A joiner presents its invite secret to an admin.
    Redeem([u8; 32]),
    /// The admin redeemed the joiner's invite.
    Redeemed,
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
    queue: BTreeMap<(Millis, u64), Packet>,
    next: u64,
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
            self.queue.insert((at, self.next), packet.clone());
            self.next += 1;
        }
    }

    /// Takes the next packet due by `now` (in delivery order); `None` when none is due.
    pub fn due(&mut self, now: Millis) -> Option<Packet> {
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
