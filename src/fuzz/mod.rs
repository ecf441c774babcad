//! Structure-aware fuzz tests of every decoder of untrusted bytes, on stable Rust.
//!
//! Each decoder gets three kinds of input from proptest: valid encodings (built from
//! random domain values, so the fuzzer gets past the first checks: signed intentions
//! with random ops, tokens with a right checksum), those encodings after a few edits
//! ([`harness::Edit`]: bit flips, truncation, splices, a short run repeated many
//! times, length prefixes one off, huge varints, and edits of the protobuf field tree:
//! a repeated field made dense with empty entries, fields copied, dropped or resized),
//! and fully random bytes. The property: the decoder returns `Ok` or its typed error,
//! never panics, and never holds more memory at once than its [`Budget`] allows for
//! the input's size (a counting global allocator measures the peak per thread, see
//! [`alloc`]).
//!
//! CI runs [`harness::DEFAULT_CASES`] cases per test; a longer run is
//! `FUZZ_CASES=100000 cargo test --release fuzz`. A failure prints its seed and
//! proptest saves it under `proptest-regressions/fuzz/`, which is committed so every
//! later run replays it first.

mod alloc;
mod cas;
mod fields;
mod harness;
mod intention;
mod ops;
mod peer;
mod snapshot;
mod sync;

pub(crate) use harness::{
    apply_edits, config, edit, framed, hostile, hostile_frames, ready, within, Budget,
    PROTOBUF_PER_BYTE,
};

#[test]
fn the_counting_allocator_sees_this_threads_peak_and_not_another_threads() {
    let (_, peak) = alloc::peak_bytes(|| {
        let big = vec![1u8; 1 << 20];
        drop(big);
        vec![2u8; 1000]
    });
    assert!((1 << 20..(1 << 20) + 4096).contains(&peak), "{peak}");
    let (_, peak) =
        alloc::peak_bytes(|| std::thread::scope(|s| s.spawn(|| vec![3u8; 1 << 22].len()).join()));
    assert!(peak < 1 << 20, "{peak}");
}
