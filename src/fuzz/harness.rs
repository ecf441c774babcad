//! The fuzz harness: case count, allocation budgets, byte edits and hostile-input
//! strategies. It uses only its sibling `alloc` module, so the daemon's test binary
//! includes both files too (for the control socket's decoder).

use proptest::prelude::*;
use proptest::sample::Index;

use super::alloc::peak_bytes;
use super::fields::{edit_field, FieldEdit};

/// Cases per fuzz test when `FUZZ_CASES` is unset: the suite stays well under a
/// minute in a debug build on two busy cores.
pub(crate) const DEFAULT_CASES: u32 = 256;

/// The proptest configuration of every fuzz test: `FUZZ_CASES` cases (default
/// [`DEFAULT_CASES`]), failures persisted next to the sources.
pub(crate) fn config() -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Bytes of memory per wire byte that decoding protobuf may take. prost turns a
/// repeated entry of two wire bytes (an empty `bytes` or message) into a struct of up
/// to 64 bytes (`proto::fs::Xattr`: two `Bytes`), and while a vector of them grows it
/// holds the old buffer and the new one of twice the size: 3 × 64 / 2 = 96, plus a
/// copy of the input. Larger structs (the 160-byte `proto::fs::Op`) must not sit in a
/// repeated field a decoder materialises whole: `Intention::decode` reads ops one by one.
pub(crate) const PROTOBUF_PER_BYTE: usize = 100;

/// What a decoder may hold at once: `per_byte` bytes per input byte plus `fixed`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// Bytes of memory per byte of input.
    pub per_byte: usize,
    /// Bytes of memory whatever the input (buffers of fixed size, error messages).
    pub fixed: usize,
}

impl Budget {
    /// The most bytes a decoder of this budget may hold for `input` bytes.
    pub(crate) fn limit(self, input: usize) -> usize {
        self.per_byte * input + self.fixed
    }
}

/// Runs `decode` on `input`, measuring it; fails the case if it held more than `budget`.
pub(crate) fn within<T>(
    budget: Budget,
    input: &[u8],
    decode: impl FnOnce() -> T,
) -> Result<T, TestCaseError> {
    let (out, peak) = peak_bytes(decode);
    let limit = budget.limit(input.len());
    prop_assert!(
        peak <= limit,
        "decoding {} bytes held {peak} bytes at once; the budget is {limit}",
        input.len()
    );
    Ok(out)
}

/// One byte-level edit of an encoding. Positions are fractions of the current length.
#[derive(Clone, Debug)]
pub(crate) enum Edit {
    /// Flips one bit.
    FlipBit(Index, u8),
    /// Overwrites one byte.
    SetByte(Index, u8),
    /// Cuts the input at a position.
    Truncate(Index),
    /// Inserts bytes.
    Insert(Index, Vec<u8>),
    /// Removes up to `n` bytes.
    Remove(Index, u8),
    /// Repeats a run of 1..=8 bytes many times in place: a repeated field made dense.
    Repeat(Index, u8, u16),
    /// Copies up to `n` bytes from one position to another (a field spliced elsewhere).
    Splice(Index, Index, u8),
    /// Overwrites from a position with the protobuf varint of a (usually huge) value.
    Varint(Index, u64),
    /// Adds a small signed delta to one byte (a length prefix one off).
    Nudge(Index, i8),
    /// Changes one protobuf field anywhere in the message tree, lengths kept right.
    Field(Index, FieldEdit),
}

/// A random edit.
pub(crate) fn edit() -> impl Strategy<Value = Edit> {
    let big = prop_oneof![
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(1u64 << 31),
        1u64..1 << 40,
    ];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::FlipBit(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::SetByte(i, b)),
        2 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => (any::<Index>(), 1u8..32).prop_map(|(i, n)| Edit::Remove(i, n)),
        2 => (any::<Index>(), 1u8..=8, 2u16..4096).prop_map(|(i, n, t)| Edit::Repeat(i, n, t)),
        1 => (any::<Index>(), any::<Index>(), 1u8..64).prop_map(|(a, b, n)| Edit::Splice(a, b, n)),
        2 => (any::<Index>(), big).prop_map(|(i, v)| Edit::Varint(i, v)),
        2 => (any::<Index>(), -3i8..=3).prop_map(|(i, d)| Edit::Nudge(i, d)),
        6 => (any::<Index>(), field_edit()).prop_map(|(i, e)| Edit::Field(i, e)),
    ]
}

fn field_edit() -> impl Strategy<Value = FieldEdit> {
    prop_oneof![
        (1u16..4096).prop_map(FieldEdit::Empties),
        (1u16..64).prop_map(FieldEdit::Copies),
        Just(FieldEdit::Drop),
        prop_oneof![Just(u64::MAX), Just(u64::from(u32::MAX) + 1), any::<u64>()]
            .prop_map(FieldEdit::Value),
    ]
}

/// `bytes` after `edits`, in order.
pub(crate) fn apply_edits(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        // Positions within [0, len] for insertions, [0, len) for the rest.
        let at = |i: &Index| i.index(len + 1);
        let inside = |i: &Index| (len > 0).then(|| i.index(len));
        match e {
            Edit::FlipBit(i, bit) => {
                if let Some(p) = inside(i) {
                    bytes[p] ^= 1 << bit;
                }
            }
            Edit::SetByte(i, b) => {
                if let Some(p) = inside(i) {
                    bytes[p] = *b;
                }
            }
            Edit::Truncate(i) => bytes.truncate(at(i)),
            Edit::Insert(i, b) => {
                let p = at(i);
                bytes.splice(p..p, b.iter().copied());
            }
            Edit::Remove(i, n) => {
                let p = at(i);
                bytes.drain(p..(p + usize::from(*n)).min(len));
            }
            Edit::Repeat(i, n, times) => {
                let p = at(i);
                let run = bytes[p..(p + usize::from(*n)).min(len)].to_vec();
                let copies = run.repeat(usize::from(*times));
                bytes.splice(p..p, copies);
            }
            Edit::Splice(from, to, n) => {
                let p = at(from);
                let run = bytes[p..(p + usize::from(*n)).min(len)].to_vec();
                let q = at(to);
                bytes.splice(q..q, run);
            }
            Edit::Varint(i, v) => {
                let p = at(i);
                let mut varint = Vec::new();
                prost::encoding::encode_varint(*v, &mut varint);
                let end = (p + varint.len()).min(len);
                bytes.splice(p..end, varint);
            }
            Edit::Nudge(i, d) => {
                if let Some(p) = inside(i) {
                    bytes[p] = bytes[p].wrapping_add_signed(*d);
                }
            }
            Edit::Field(i, e) => bytes = edit_field(std::mem::take(&mut bytes), *i, e),
        }
    }
    bytes
}

/// Hostile input derived from valid encodings: mostly edited ones, some fully random.
pub(crate) fn hostile(
    valid: impl Strategy<Value = Vec<u8>> + 'static,
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (valid, prop::collection::vec(edit(), 1..5))
            .prop_map(|(bytes, edits)| apply_edits(bytes, &edits)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// `body` framed as `wire::write_frame` frames it: a u32 big-endian length, then the body.
pub(crate) fn framed(body: Vec<u8>) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Hostile frames around message encodings: hostile bodies under their right length
/// prefix, and valid frames after byte edits (headers included).
pub(crate) fn hostile_frames(
    valid_body: impl Strategy<Value = Vec<u8>> + 'static,
) -> impl Strategy<Value = Vec<u8>> {
    let valid_body = valid_body.boxed();
    prop_oneof![
        2 => hostile(valid_body.clone()).prop_map(framed),
        1 => hostile(valid_body.prop_map(framed)),
    ]
}

/// Runs a future that never waits (its I/O is an in-memory slice) to completion.
pub(crate) fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("reads from a slice never wait"),
    }
}
