//! Snapshots of the projection.
//!
//! The projection is a pure function of the set of applied ops, so a snapshot is that set:
//! every applied op with its author, in the order it was applied (a causal order), each as
//! its protobuf encoding. Decoding replays them, which rebuilds exactly the same state,
//! including the undo log of the move algorithm, so ops applied afterwards merge as if no
//! snapshot had been taken. Format: `MAGIC`, a u64 op count, then per op the 32-byte
//! author, a u32 length and that many bytes of `proto::fs::Op` (all integers little-endian).

use prost::Message;

use crate::fs::error::FsError;
use crate::fs::op::Op;
use crate::fs::state::FsState;
use crate::identity::PublicKey;
use crate::proto::fs as pb;

/// First bytes of a snapshot (format version 1).
const MAGIC: &[u8; 8] = b"LMFSNAP1";
/// Largest encoded op accepted in a snapshot.
const MAX_SNAPSHOT_OP_BYTES: usize = 4 * 1024 * 1024;

impl FsState {
    /// Encodes the state as a snapshot.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.log.len() * 128);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.log.len() as u64).to_le_bytes());
        for (author, op) in &self.log {
            let bytes = op.to_proto().encode_to_vec();
            out.extend_from_slice(&author.0);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// Rebuilds a state from `encode_snapshot` output.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<Self, FsError> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let count = u64::from_le_bytes(r.array()?);
        let mut state = FsState::new();
        for _ in 0..count {
            let author = PublicKey(r.array()?);
            let len = u32::from_le_bytes(r.array()?) as usize;
            if len > MAX_SNAPSHOT_OP_BYTES {
                return Err(corrupt("op too large"));
            }
            let msg = pb::Op::decode(r.take(len)?).map_err(|e| corrupt(&e.to_string()))?;
            let op = Op::from_proto(msg).map_err(|e| corrupt(&e.to_string()))?;
            state.apply(author, &op);
        }
        if !r.0.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(state)
    }
}

fn corrupt(why: &str) -> FsError {
    FsError::Io(format!("malformed fs snapshot: {why}"))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FsError> {
        if self.0.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FsError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}
