//! The byte codec of format 3 snapshots: varints, length-prefixed bytes, and op ids
//! whose 32-byte author is written once in a key table and then named by its index.
//!
//! The reader refuses (never panics on) truncated input, overlong varints, invalid
//! UTF-8, unknown tags and author indexes past the table, and a count is never trusted
//! beyond the bytes left (every element takes at least one byte).

use std::borrow::Cow;
use std::collections::HashMap;

use crate::cas::Content;
use crate::fs::error::FsError;
use crate::fs::op::{kind_from_proto, kind_to_proto, role_from_proto, role_to_proto, Kind, Role};
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{Hash, OpId};

/// Most bytes a varint of a u64 takes.
const MAX_VARINT_BYTES: usize = 10;

/// A malformed-snapshot error.
pub(crate) fn corrupt(why: &str) -> FsError {
    FsError::Io(format!("malformed fs snapshot: {why}"))
}

/// Appends `v` to `out` as a LEB128 varint.
pub(crate) fn put_uint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes the body of a snapshot and collects the key table it refers to.
#[derive(Default)]
pub(crate) struct Writer {
    /// The body written so far.
    pub body: Vec<u8>,
    index: HashMap<PublicKey, u64>,
    /// The last key written with its index (most ids in a row share an author).
    last: Option<(PublicKey, u64)>,
    /// Keys in index order.
    pub keys: Vec<PublicKey>,
}

impl Writer {
    /// A writer whose key table starts with `keys`, each named by its index there.
    pub(crate) fn naming(keys: &[PublicKey]) -> Self {
        Writer {
            index: (0u64..).zip(keys).map(|(i, k)| (*k, i)).collect(),
            keys: keys.to_vec(),
            ..Writer::default()
        }
    }

    /// One byte.
    pub(crate) fn u8(&mut self, v: u8) {
        self.body.push(v);
    }

    /// A LEB128 varint.
    pub(crate) fn uint(&mut self, v: u64) {
        put_uint(&mut self.body, v);
    }

    /// A signed integer, zigzag-encoded.
    pub(crate) fn int(&mut self, v: i64) {
        self.uint(((v << 1) ^ (v >> 63)) as u64);
    }

    /// A collection length.
    pub(crate) fn len(&mut self, n: usize) {
        self.uint(n as u64);
    }

    /// Length-prefixed bytes.
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.body.extend_from_slice(b);
    }

    /// A key, as its index in the key table.
    pub(crate) fn key(&mut self, k: &PublicKey) {
        let i = match self.last {
            Some((last, i)) if last == *k => i,
            _ => {
                let next = self.keys.len() as u64;
                let i = *self.index.entry(*k).or_insert_with(|| {
                    self.keys.push(*k);
                    next
                });
                self.last = Some((*k, i));
                i
            }
        };
        self.uint(i);
    }

    /// A timestamp.
    pub(crate) fn hlc(&mut self, h: Hlc) {
        self.uint(h.wall_ms);
        self.uint(u64::from(h.counter));
    }

    /// An op id.
    pub(crate) fn id(&mut self, id: &OpId) {
        self.hlc(id.hlc);
        self.key(&id.author);
    }

    /// Op ids, with their count.
    pub(crate) fn ids<'a>(&mut self, ids: impl ExactSizeIterator<Item = &'a OpId>) {
        self.len(ids.len());
        for id in ids {
            self.id(id);
        }
    }

    /// File content.
    pub(crate) fn content(&mut self, c: &Content) {
        match c {
            Content::Inline(b) => {
                self.u8(0);
                self.bytes(b);
            }
            Content::Manifest { hash, size } => {
                self.u8(1);
                self.body.extend_from_slice(&hash.0);
                self.uint(*size);
            }
        }
    }

    /// A node kind.
    pub(crate) fn kind(&mut self, k: Kind) {
        self.uint(kind_to_proto(k) as u64);
    }

    /// A member role.
    pub(crate) fn role(&mut self, r: Role) {
        self.uint(role_to_proto(r) as u64);
    }
}

/// Reads what a [`Writer`] wrote.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    keys: Cow<'a, [PublicKey]>,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes` whose keys are named by index into `keys`.
    pub(crate) fn new(bytes: &'a [u8], keys: Vec<PublicKey>) -> Self {
        Reader {
            rest: bytes,
            keys: Cow::Owned(keys),
        }
    }

    /// A reader of `bytes` whose keys are named by index into `keys`, borrowed.
    pub(crate) fn borrowing(bytes: &'a [u8], keys: &'a [PublicKey]) -> Self {
        Reader {
            rest: bytes,
            keys: Cow::Borrowed(keys),
        }
    }

    /// The key table.
    pub(crate) fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// How many bytes are left.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// True when every byte was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FsError> {
        if self.rest.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FsError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Result<u8, FsError> {
        Ok(self.take(1)?[0])
    }

    /// A LEB128 varint.
    pub(crate) fn uint(&mut self) -> Result<u64, FsError> {
        let mut v = 0u64;
        for i in 0..MAX_VARINT_BYTES {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if i == MAX_VARINT_BYTES - 1 && bits > 1 {
                return Err(corrupt("varint overflows"));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("varint too long"))
    }

    /// A varint that must fit a u32.
    pub(crate) fn u32(&mut self) -> Result<u32, FsError> {
        u32::try_from(self.uint()?).map_err(|_| corrupt("integer out of range"))
    }

    /// A zigzag-encoded signed integer.
    pub(crate) fn int(&mut self) -> Result<i64, FsError> {
        let v = self.uint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// A collection length, at most the bytes left.
    pub(crate) fn len(&mut self) -> Result<usize, FsError> {
        let n = self.uint()?;
        if n > self.rest.len() as u64 {
            return Err(corrupt("count past the end"));
        }
        Ok(n as usize)
    }

    /// A boolean byte.
    pub(crate) fn bool(&mut self) -> Result<bool, FsError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(corrupt("bad flag")),
        }
    }

    /// Length-prefixed bytes.
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], FsError> {
        let n = self.len()?;
        self.take(n)
    }

    /// A length-prefixed UTF-8 string.
    pub(crate) fn string(&mut self) -> Result<String, FsError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("name is not UTF-8"))
    }

    /// A key named by its index in the key table.
    pub(crate) fn key(&mut self) -> Result<PublicKey, FsError> {
        let i = self.uint()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| self.keys.get(i))
            .copied()
            .ok_or_else(|| corrupt("key index past the table"))
    }

    /// A timestamp.
    pub(crate) fn hlc(&mut self) -> Result<Hlc, FsError> {
        Ok(Hlc {
            wall_ms: self.uint()?,
            counter: self.u32()?,
        })
    }

    /// An op id.
    pub(crate) fn id(&mut self) -> Result<OpId, FsError> {
        Ok(OpId {
            hlc: self.hlc()?,
            author: self.key()?,
        })
    }

    /// Op ids written by [`Writer::ids`].
    pub(crate) fn ids(&mut self) -> Result<Vec<OpId>, FsError> {
        let n = self.len()?;
        (0..n).map(|_| self.id()).collect()
    }

    /// File content.
    pub(crate) fn content(&mut self) -> Result<Content, FsError> {
        match self.u8()? {
            0 => Ok(Content::Inline(self.bytes()?.to_vec().into())),
            1 => Ok(Content::Manifest {
                hash: Hash(self.array()?),
                size: self.uint()?,
            }),
            _ => Err(corrupt("bad content tag")),
        }
    }

    /// A node kind.
    pub(crate) fn kind(&mut self) -> Result<Kind, FsError> {
        let v = i32::try_from(self.uint()?).map_err(|_| corrupt("bad kind"))?;
        kind_from_proto(v).map_err(|_| corrupt("bad kind"))
    }

    /// A member role.
    pub(crate) fn role(&mut self) -> Result<Role, FsError> {
        let v = i32::try_from(self.uint()?).map_err(|_| corrupt("bad role"))?;
        role_from_proto(v).map_err(|_| corrupt("bad role"))
    }
}
