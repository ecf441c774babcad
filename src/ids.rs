//! Identifiers shared by every layer: content hashes, store ids, op and file ids,
//! invite ids. Built only on the clock and key types, so any module can name them
//! without depending on intentions or the filesystem.

use std::fmt;

use crate::hlc::Hlc;
use crate::identity::{hex, unhex, PublicKey};

/// A 32-byte blake3 hash (intention ids, blob and manifest addresses).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash.
    pub const ZERO: Hash = Hash([0; 32]);

    /// blake3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Parses exactly 32 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Hash(b.try_into().ok()?))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", hex(&self.0[..6]))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A 16-byte store id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StoreId(pub [u8; 16]);

impl StoreId {
    /// A fresh random store id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::fill(&mut b);
        StoreId(b)
    }

    /// Lowercase hex (32 characters).
    pub fn to_hex(self) -> String {
        hex(&self.0)
    }

    /// Parses 32 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        Some(StoreId(unhex(s)?.try_into().ok()?))
    }
}

impl fmt::Debug for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreId({})", self.to_hex())
    }
}

/// An op id: the op's clock and its author. Orders by (HLC, author).
/// A file's id is the id of the op that created it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct OpId {
    /// The op's clock.
    pub hlc: Hlc,
    /// The op's author.
    pub author: PublicKey,
}

/// The id of a file, directory or other node (the id of its `Create` op).
pub type FileId = OpId;

impl OpId {
    /// The store's root directory.
    pub const ROOT: OpId = OpId {
        hlc: Hlc::ZERO,
        author: PublicKey([0; 32]),
    };
    /// Encoded length.
    pub const LEN: usize = 44;

    /// The 44-byte encoding, whose byte order is (HLC, author) order.
    pub fn to_bytes(&self) -> [u8; 44] {
        let mut b = [0u8; 44];
        b[..8].copy_from_slice(&self.hlc.wall_ms.to_be_bytes());
        b[8..12].copy_from_slice(&self.hlc.counter.to_be_bytes());
        b[12..].copy_from_slice(&self.author.0);
        b
    }

    /// The 88 lowercase hex characters of the 44-byte encoding.
    pub fn to_hex(&self) -> String {
        hex(&self.to_bytes())
    }

    /// Parses the 44-byte encoding.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 44 {
            return None;
        }
        Some(OpId {
            hlc: Hlc {
                wall_ms: u64::from_be_bytes(b[..8].try_into().ok()?),
                counter: u32::from_be_bytes(b[8..12].try_into().ok()?),
            },
            author: PublicKey(b[12..].try_into().ok()?),
        })
    }
}

impl fmt::Debug for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == OpId::ROOT {
            return f.write_str("ROOT");
        }
        write!(
            f,
            "{}.{}@{}",
            self.hlc.wall_ms,
            self.hlc.counter,
            hex(&self.author.0[..3])
        )
    }
}

/// The id of an invite: blake3 of its one-time secret.
pub(crate) type InviteId = [u8; 32];
