//! [`Packed`]: how the `intentions` table stores an intention's signed bytes, LZ4
//! compressed when that makes them smaller.
//!
//! An intention repeats its author's key in the id of every op it names (32 of each
//! op id's 44 bytes), so a batch of creates compresses to about two fifths of its size.
//! Intentions are a kilobyte or so, a few to a 4 KiB page, and fewer bytes a row also
//! means fuller B-tree leaves. A row is a tag byte then either the bytes as they are
//! ([`RAW`]) or their length (u32 little-endian) and an LZ4 block ([`LZ4`]). The bytes
//! a table hands back are always the signed bytes exactly as received.

use std::fmt;

use bytes::Bytes;
use redb::{TypeName, Value};

use crate::intention::MAX_INTENTION_BYTES;

/// Tag of a row holding the bytes uncompressed.
const RAW: u8 = 0;
/// Tag of a row holding the length and an LZ4 block of the bytes.
const LZ4: u8 = 1;

/// An intention's signed bytes, stored compressed (see the module doc).
pub(crate) struct Packed;

impl fmt::Debug for Packed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Packed")
    }
}

/// The row stored for `bytes`: compressed when that is shorter.
fn pack(bytes: &[u8]) -> Vec<u8> {
    let block = lz4_flex::block::compress(bytes);
    if block.len() + 5 < bytes.len() + 1 {
        let len = u32::try_from(bytes.len()).expect("an intention is under 4 GiB");
        let mut row = Vec::with_capacity(block.len() + 5);
        row.push(LZ4);
        row.extend_from_slice(&len.to_le_bytes());
        row.extend_from_slice(&block);
        row
    } else {
        let mut row = Vec::with_capacity(bytes.len() + 1);
        row.push(RAW);
        row.extend_from_slice(bytes);
        row
    }
}

/// The bytes a row holds; empty (which no intention decodes from) for a corrupt row.
fn unpack(row: &[u8]) -> Bytes {
    match row.split_first() {
        Some((&RAW, bytes)) => Bytes::copy_from_slice(bytes),
        Some((&LZ4, rest)) if rest.len() >= 4 => {
            let (len, block) = rest.split_at(4);
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            if len > MAX_INTENTION_BYTES {
                return Bytes::new();
            }
            let mut out = vec![0; len];
            match lz4_flex::block::decompress_into(block, &mut out) {
                Ok(n) if n == len => Bytes::from(out),
                _ => Bytes::new(),
            }
        }
        _ => Bytes::new(),
    }
}

impl Value for Packed {
    type SelfType<'a> = Bytes;
    type AsBytes<'a> = Vec<u8>;

    fn fixed_width() -> Option<usize> {
        None
    }

    fn from_bytes<'a>(data: &'a [u8]) -> Bytes
    where
        Self: 'a,
    {
        unpack(data)
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a Bytes) -> Vec<u8>
    where
        Self: 'b,
    {
        pack(value)
    }

    fn type_name() -> TypeName {
        TypeName::new("lattice_mount::PackedIntention")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_give_back_the_bytes_they_were_made_from() {
        let repetitive: Vec<u8> = (0..1200).map(|i| (i % 44) as u8).collect();
        let noise: Vec<u8> = (0..10u8)
            .flat_map(|i| *blake3::hash(&[i]).as_bytes())
            .collect();
        for bytes in [&repetitive[..], &noise[..], b"", b"x"] {
            let row = pack(bytes);
            assert_eq!(unpack(&row), bytes);
            assert_eq!(pack(&unpack(&row)), row, "the encoding is canonical");
        }
        assert_eq!(pack(&repetitive)[0], LZ4);
        assert!(pack(&repetitive).len() < repetitive.len() / 4);
        assert_eq!(
            pack(&noise)[0],
            RAW,
            "incompressible bytes are kept as they are"
        );
    }

    #[test]
    fn a_corrupt_row_gives_bytes_no_intention_decodes_from() {
        let row = pack(&(0..1200).map(|i| (i % 44) as u8).collect::<Vec<_>>());
        let mut truncated = row.clone();
        truncated.truncate(row.len() - 10);
        let mut huge = row.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut wrong_len = row.clone();
        wrong_len[1..5].copy_from_slice(&7u32.to_le_bytes());
        for bad in [
            &[][..],
            &[9, 1, 2][..],
            &[LZ4, 1][..],
            &truncated,
            &huge,
            &wrong_len,
        ] {
            assert!(unpack(bad).is_empty(), "{bad:?}");
        }
        assert!(crate::intention::Intention::decode(Bytes::new()).is_err());
    }
}
