//! Snapshots of the projection.
//!
//! The projection is a pure function of the set of applied ops, so a snapshot is that set:
//! every applied op with its author, in the order it was applied (a causal order), each as
//! its protobuf encoding. Decoding replays them, which rebuilds exactly the same state,
//! including the undo log of the move algorithm, so ops applied afterwards merge as if no
//! snapshot had been taken.
//!
//! Format [`SNAPSHOT_VERSION`] (2): `MAGIC`, a u32 format version, a u64 op count, then
//! per op the 32-byte author, a u32 length and that many bytes of `proto::fs::Op` (all
//! integers little-endian). Format 1 (the release at f143caf) had the same body after
//! the 8 bytes `LMFSNAP1` and no version field; the store's schema migration rewrites
//! it ([`FsState::snapshot_v1_to_v2`]). A snapshot of another version is refused.

use prost::Message;

use crate::fs::error::FsError;
use crate::fs::op::Op;
use crate::fs::state::FsState;
use crate::identity::PublicKey;
use crate::proto::fs as pb;

/// First bytes of a snapshot, before its format version.
const MAGIC: &[u8; 8] = b"LMFSSNAP";
/// Format version of the snapshots this build writes, the only one it reads.
const SNAPSHOT_VERSION: u32 = 2;
/// First bytes of a format 1 snapshot, which had no version field.
const MAGIC_V1: &[u8; 8] = b"LMFSNAP1";
/// Largest encoded op accepted in a snapshot.
const MAX_SNAPSHOT_OP_BYTES: usize = 4 * 1024 * 1024;

impl FsState {
    /// Encodes the state as a snapshot.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.log.len() * 128);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
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
        let version = u32::from_le_bytes(r.array()?);
        if version != SNAPSHOT_VERSION {
            return Err(corrupt(&format!(
                "format {version}, this build reads format {SNAPSHOT_VERSION}"
            )));
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

    /// A format 1 snapshot rewritten as format 2 (the body is unchanged); `None` if
    /// `bytes` is not format 1.
    pub(crate) fn snapshot_v1_to_v2(bytes: &[u8]) -> Option<Vec<u8>> {
        let body = bytes.strip_prefix(MAGIC_V1)?;
        let mut out = Vec::with_capacity(bytes.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(body);
        Some(out)
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
