//! The adversary: a member with no store that signs what an honest node never would:
//! forks of its own chain sent to different nodes, intentions stamped minutes ahead,
//! forged signatures, oversized bytes; and a stranger key sending intentions that name
//! predecessors nobody has, to fill the floating quotas.

use bytes::{BufMut, Bytes, BytesMut};

use crate::cas::Content;
use crate::fs::op::{Create, Kind, Op, OpBody};
use crate::hlc::Hlc;
use crate::identity::Identity;
use crate::ids::{Hash, OpId, StoreId};
use crate::intention::{Intention, MAX_INTENTION_BYTES};
use crate::store::MAX_CLOCK_SKEW_MS;

/// How far ahead a time-shifted intention is stamped: past the skew rule, so it waits.
pub(crate) const SHIFT_MS: u64 = 3 * MAX_CLOCK_SKEW_MS;

/// How many of its latest chain intentions the adversary sends with each new one.
const RESEND: usize = 8;

/// A hostile author's chain as it signs it.
pub(crate) struct Adversary {
    identity: Identity,
    id: StoreId,
    tip: Option<(Hash, Hlc)>,
    made: u32,
    /// Its chain so far, to send again with each next one.
    chain: Vec<Bytes>,
}

impl Adversary {
    /// An adversary signing with `identity` for store `id`.
    pub fn new(identity: Identity, id: StoreId) -> Adversary {
        Adversary {
            identity,
            id,
            tip: None,
            made: 0,
            chain: Vec::new(),
        }
    }

    /// A signed intention creating a file, stamped at `wall_ms` (or just after the tip),
    /// chained to `prev`.
    fn sign(&mut self, prev: Option<(Hash, Hlc)>, wall_ms: u64) -> Intention {
        self.made += 1;
        let floor = prev.map_or(Hlc::ZERO, |(_, h)| h);
        let hlc = if wall_ms > floor.wall_ms {
            Hlc {
                wall_ms,
                counter: 0,
            }
        } else {
            Hlc {
                wall_ms: floor.wall_ms,
                counter: floor.counter + 1,
            }
        };
        let op = Op {
            hlc,
            body: OpBody::Create(Create {
                parent: OpId::ROOT,
                name: format!("h{}", self.made),
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                mtime_ns: hlc.as_nanos(),
                content: Content::Inline(Bytes::from(vec![0x68; 8])),
            }),
        };
        Intention::create(
            &self.identity,
            self.id,
            prev.map(|p| p.0),
            Vec::new(),
            vec![op],
        )
        .expect("a one-op create with a short name is a valid intention")
    }

    /// The next intention of its chain; `shift` stamps it [`SHIFT_MS`] ahead.
    pub fn next(&mut self, wall_ms: u64, shift: bool) -> Intention {
        let wall = if shift { wall_ms + SHIFT_MS } else { wall_ms };
        let i = self.sign(self.tip, wall);
        self.tip = Some((i.hash, i.hlc));
        self.chain.push(i.bytes.clone());
        i
    }

    /// The last few intentions of its chain, oldest first (a node that missed some can
    /// still apply the newest).
    pub fn recent(&self) -> Vec<Bytes> {
        let from = self.chain.len().saturating_sub(RESEND);
        self.chain[from..].to_vec()
    }

    /// Two different intentions at the same place of its chain; it goes on from the first.
    pub fn fork(&mut self, wall_ms: u64) -> (Intention, Intention) {
        let a = self.sign(self.tip, wall_ms);
        let b = self.sign(self.tip, wall_ms);
        self.tip = Some((a.hash, a.hlc));
        self.chain.push(a.bytes.clone());
        (a, b)
    }

    /// Intention bytes whose signature does not verify, and the hash they claim.
    pub fn forged(&mut self, wall_ms: u64) -> (Hash, Bytes) {
        let i = self.sign(self.tip, wall_ms);
        let mut bytes = i.bytes.to_vec();
        if let Some(last) = bytes.last_mut() {
            *last ^= 0x01;
        }
        (i.hash, Bytes::from(bytes))
    }

    /// A valid intention padded with an unknown field past [`MAX_INTENTION_BYTES`].
    pub fn oversized(&mut self, wall_ms: u64) -> Bytes {
        let i = self.sign(self.tip, wall_ms);
        let mut out = BytesMut::from(&i.bytes[..]);
        out.put_u8(15 << 3 | 2);
        let mut len = MAX_INTENTION_BYTES as u64;
        while len >= 0x80 {
            out.put_u8((len as u8) | 0x80);
            len >>= 7;
        }
        out.put_u8(len as u8);
        out.put_bytes(0, MAX_INTENTION_BYTES);
        out.freeze()
    }
}

/// An intention by a key that is no member, naming a predecessor that does not exist:
/// it can only float, within the strangers' quota.
pub(crate) fn stranger(identity: &Identity, id: StoreId, wall_ms: u64, n: u32) -> Bytes {
    let mut missing = [0u8; 32];
    missing[..4].copy_from_slice(&n.to_be_bytes());
    let op = Op {
        hlc: Hlc {
            wall_ms,
            counter: 0,
        },
        body: OpBody::SetStoreName(format!("s{n}")),
    };
    Intention::create(identity, id, Some(Hash(missing)), Vec::new(), vec![op])
        .expect("a one-op intention is valid")
        .bytes
}
