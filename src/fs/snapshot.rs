//! Snapshots of the projection.
//!
//! Format [`SNAPSHOT_VERSION`] (6) is the state itself, so opening a store costs the
//! size of what is live, not of its history: `MAGIC`, a u32 format version, a u32 count
//! of keys and that many 32-byte keys (every author and member named in the body, by
//! index), then the body: the purge point and late count, the applied ids still kept,
//! the store name register, the retention and horizon registers, the membership records,
//! the keys that left (a count, then their key indexes) and the delete record (a flag,
//! then the op id of the smallest `DeleteStore`), the labels of users' snapshots (a
//! count, then per label its name, the op id that wrote it and a flag with the
//! `Snapshot` op id it names; format 5 had none, and is read as a state without), the tree (entries with their locations
//! and deletion flags, then the move log suffix with undo records and the directory
//! times each record replaced), and every file record (kind, registers, touched and
//! listing ops, content groups with appends, heads, pending superseded ids). Integers in
//! the body are LEB128 varints (signed ones zigzag), an op id is its
//! HLC then its author's key index; the fixed-width header integers are little-endian.
//! See `fs::codec`. Encoding is deterministic (maps in key order), so encoding a decoded
//! snapshot gives the same bytes.
//!
//! Formats 3 and 4 (builds before directory times, leave and delete) lack each
//! directory's listing op and the move log's record of them, which only the ops can
//! give back: they are refused ([`FsState::must_rebuild`], which also names the page
//! header formats it rebuilds) and the store rebuilds the projection from its witness
//! log. Format 2 (releases before issue 9) was the op log: a u64 op count,
//! then per op the 32-byte author, a u32 length and that many bytes of `proto::fs::Op`,
//! in the order applied. It decodes by replaying the ops, and the store rewrites it.
//! Format 1 (the release at f143caf) had the format 2 body after the 8 bytes `LMFSNAP1`
//! and no version field; the store's schema migration rewrites it
//! ([`FsState::snapshot_v1_to_v2`]). A snapshot of another version is refused.

use prost::Message;

use crate::fs::codec::{corrupt, Reader, Writer};
use crate::fs::content::{FileRec, Lww};
use crate::fs::error::FsError;
use crate::fs::members::Members;
use crate::fs::op::{Kind, Op};
use crate::fs::paged::{Page, PageValue, Paged};
use crate::fs::pages::{HEADER_MAGIC, HEADER_REBUILT};
use crate::fs::state::FsState;
use crate::fs::tree::Tree;
use crate::identity::PublicKey;
use crate::ids::OpId;
use crate::proto::fs as pb;

/// First bytes of a snapshot, before its format version.
const MAGIC: &[u8; 8] = b"LMFSSNAP";
/// Format version of the snapshots this build writes.
const SNAPSHOT_VERSION: u32 = 6;
/// The format before snapshot labels: read as a state without any.
const SNAPSHOT_NO_LABELS: u32 = 5;
/// The state formats before directory times (format 3 also had no horizon register):
/// recognised, and rebuilt from the intentions.
const SNAPSHOT_NO_DIR_TIMES: [u32; 2] = [3, 4];
/// The op-log format, still read (by replay).
const SNAPSHOT_V2: u32 = 2;
/// First bytes of a format 1 snapshot, which had no version field.
const MAGIC_V1: &[u8; 8] = b"LMFSNAP1";
/// Largest encoded op accepted in a format 2 snapshot.
const MAX_SNAPSHOT_OP_BYTES: usize = 4 * 1024 * 1024;

impl FsState {
    /// Encodes the state as a format 6 snapshot.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.hlc(self.purged_below);
        w.uint(self.late);
        let applied: Vec<OpId> = self.applied.all().into_iter().map(|(id, ())| id).collect();
        w.ids(applied.iter());
        self.encode_registers(&mut w);
        self.tree.encode(&mut w);
        let files = self.files.all();
        w.len(files.len());
        for (id, f) in &files {
            w.id(id);
            f.put(id, &mut w);
        }
        seal(MAGIC, SNAPSHOT_VERSION, w)
    }

    /// The store name, retention and horizon registers, the members, the keys that
    /// left and the delete record.
    pub(crate) fn encode_registers(&self, w: &mut Writer) {
        match &self.store_name {
            None => w.u8(0),
            Some(reg) => {
                w.u8(1);
                w.id(&reg.at);
                w.bytes(reg.value.as_bytes());
            }
        }
        for register in [&self.retention, &self.horizon] {
            match register {
                None => w.u8(0),
                Some(reg) => {
                    w.u8(1);
                    w.id(&reg.at);
                    w.uint(u64::from(reg.value));
                }
            }
        }
        self.members.encode(w);
        self.members.encode_left(w);
        match &self.deleted {
            None => w.u8(0),
            Some(at) => {
                w.u8(1);
                w.id(at);
            }
        }
        w.len(self.snapshots.len());
        for (label, reg) in &self.snapshots {
            w.bytes(label.as_bytes());
            w.id(&reg.at);
            match &reg.value {
                None => w.u8(0),
                Some(at) => {
                    w.u8(1);
                    w.id(at);
                }
            }
        }
    }

    /// Rebuilds a state from a format 6, 5 or 2 snapshot.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<Self, FsError> {
        Ok(Self::decode_versioned(bytes)?.0)
    }

    /// Rebuilds a state from a snapshot; also returns true if it was in an older
    /// format (its owner should rewrite it).
    pub(crate) fn decode_versioned(bytes: &[u8]) -> Result<(Self, bool), FsError> {
        let mut r = Reader::new(bytes, Vec::new());
        if r.take(MAGIC.len())? != MAGIC {
            return Err(corrupt("bad magic"));
        }
        match u32::from_le_bytes(r.array()?) {
            SNAPSHOT_VERSION => Ok((decode_state(r, true)?, false)),
            SNAPSHOT_NO_LABELS => Ok((decode_state(r, false)?, true)),
            SNAPSHOT_V2 => Ok((decode_v2(r)?, true)),
            v if SNAPSHOT_NO_DIR_TIMES.contains(&v) => Err(rebuilt("format", v)),
            v => Err(corrupt(&format!(
                "format {v}, this build reads formats {SNAPSHOT_V2}, {SNAPSHOT_NO_LABELS} and {SNAPSHOT_VERSION}"
            ))),
        }
    }

    /// True if `bytes` are a stored projection (a snapshot or a page header) in a format
    /// of an earlier build that the store rebuilds from its intentions: those before
    /// directory times (only the ops say when each directory's entries last changed)
    /// and page header format 3 (its records name authors in a way this build does not
    /// read).
    pub fn must_rebuild(bytes: &[u8]) -> bool {
        let version = |magic: &[u8; 8]| {
            bytes
                .strip_prefix(magic)
                .and_then(|rest| rest.get(..4))
                .and_then(|v| v.try_into().ok())
                .map(u32::from_le_bytes)
        };
        version(MAGIC).is_some_and(|v| SNAPSHOT_NO_DIR_TIMES.contains(&v))
            || version(HEADER_MAGIC).is_some_and(|v| HEADER_REBUILT.contains(&v))
    }

    /// A format 1 snapshot rewritten as format 2 (the body is unchanged); `None` if
    /// `bytes` is not format 1.
    pub(crate) fn snapshot_v1_to_v2(bytes: &[u8]) -> Option<Vec<u8>> {
        let body = bytes.strip_prefix(MAGIC_V1)?;
        let mut out = Vec::with_capacity(bytes.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&SNAPSHOT_V2.to_le_bytes());
        out.extend_from_slice(body);
        Some(out)
    }
}

/// `magic`, the format `version`, the key table and the body of `w`.
pub(crate) fn seal(magic: &[u8; 8], version: u32, w: Writer) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + w.keys.len() * 32 + w.body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(w.keys.len() as u32).to_le_bytes());
    for k in &w.keys {
        out.extend_from_slice(&k.0);
    }
    out.extend_from_slice(&w.body);
    out
}

/// The error of a projection in an earlier build's format that this build rebuilds
/// (`what` `version`).
pub(crate) fn rebuilt(what: &str, version: u32) -> FsError {
    corrupt(&format!(
        "{what} {version} is an earlier build's; rebuild it from the intentions"
    ))
}

/// A reader of the body after the key table, which `r` is at.
pub(crate) fn unseal<'a>(mut r: Reader<'a>) -> Result<Reader<'a>, FsError> {
    let count = u32::from_le_bytes(r.array()?) as usize;
    if count > r.remaining() / 32 {
        return Err(corrupt("key table past the end"));
    }
    let keys = (0..count)
        .map(|_| r.array().map(PublicKey))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Reader::new(r.take(r.remaining())?, keys))
}

/// The body of a format 6 snapshot (5 without `labels`), after its version.
fn decode_state(r: Reader, labels: bool) -> Result<FsState, FsError> {
    let mut r = unseal(r)?;
    let mut state = FsState::new();
    state.purged_below = r.hlc()?;
    state.late = r.uint()?;
    for id in r.ids()? {
        state.applied.insert(id, ());
    }
    decode_registers(&mut state, &mut r, labels)?;
    state.tree = Tree::decode(&mut r, &state.authors)?;
    state.files = Paged::new(Page::Files, &state.authors);
    for _ in 0..r.len()? {
        let id = r.id()?;
        let f = FileRec::read(&id, &mut r)?;
        if state.files.insert(id, f).is_some() {
            return Err(corrupt("file listed twice"));
        }
    }
    if state
        .files
        .get(&OpId::ROOT)
        .is_none_or(|f| f.kind != Kind::Dir)
    {
        return Err(corrupt("no root directory"));
    }
    if !r.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    state.fill_sweep_tables();
    Ok(state)
}

/// Reads what `encode_registers` wrote (without the snapshot labels unless `labels`:
/// formats before them).
pub(crate) fn decode_registers(
    state: &mut FsState,
    r: &mut Reader,
    labels: bool,
) -> Result<(), FsError> {
    state.store_name = match r.bool()? {
        false => None,
        true => Some(Lww::new(r.id()?, r.string()?)),
    };
    state.retention = days_register(r)?;
    state.horizon = days_register(r)?;
    state.members = Members::decode(r)?;
    state.members.decode_left(r)?;
    state.deleted = match r.bool()? {
        false => None,
        true => Some(r.id()?),
    };
    if labels {
        for _ in 0..r.len()? {
            let label = r.string()?;
            let at = r.id()?;
            let value = match r.bool()? {
                false => None,
                true => Some(r.id()?),
            };
            if state.snapshots.insert(label, Lww::new(at, value)).is_some() {
                return Err(corrupt("snapshot label listed twice"));
            }
        }
    }
    Ok(())
}

/// An optional register of days.
fn days_register(r: &mut Reader) -> Result<Option<Lww<u32>>, FsError> {
    Ok(match r.bool()? {
        false => None,
        true => {
            let at = r.id()?;
            let days = u32::try_from(r.uint()?).map_err(|_| corrupt("setting days"))?;
            Some(Lww::new(at, days))
        }
    })
}

/// The body of a format 2 snapshot (the op log), replayed.
fn decode_v2(mut r: Reader) -> Result<FsState, FsError> {
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
    if !r.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    state.fill_sweep_tables();
    Ok(state)
}
