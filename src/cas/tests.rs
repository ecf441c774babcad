//! Tests of the content store against a real iroh-blobs FsStore in a temp dir.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh_blobs::api::blobs::BlobStatus;
use parking_lot::Mutex;
use prost::Message;
use tempfile::TempDir;
use tokio::runtime::Runtime;

use super::chunker::{ChunkParams, StreamChunker, CHUNK_PARAMS};
use super::{Cas, CasError, Content, FetchRequest, Fetcher, INLINE_MAX};
use crate::ids::{Hash, StoreId};
use crate::proto::fs as pb;

/// The store the content of these tests belongs to.
const S: StoreId = StoreId([5; 16]);
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Sizes at which the content format changes, plus a few multi-chunk sizes.
const INTERESTING_SIZES: &[usize] = &[
    0,
    1,
    INLINE_MAX - 1,
    INLINE_MAX,
    INLINE_MAX + 1,
    CHUNK_PARAMS.min as usize - 1,
    CHUNK_PARAMS.min as usize,
    CHUNK_PARAMS.avg as usize,
    CHUNK_PARAMS.max as usize,
    CHUNK_PARAMS.max as usize + 1,
    3 * MIB + 7,
    9 * MIB + 12_345,
];

/// A store in a temp dir with its own multi-thread runtime.
struct Fixture {
    cas: Cas,
    rt: Runtime,
    dir: TempDir,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn fixture() -> Fixture {
    fixture_with(CHUNK_PARAMS)
}

/// A store in a temp dir that cuts new content with `params`.
fn fixture_with(params: ChunkParams) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cas = Cas::open_with(
        &dir.path().join("blobs"),
        rt.handle().clone(),
        params,
        &crate::budget::CacheBudget::default(),
    )
    .unwrap();
    Fixture { cas, rt, dir }
}

/// Deterministic pseudo-random bytes (blake3 XOF of the seed).
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// A tiny deterministic generator for offsets and lengths.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 {
            0
        } else {
            self.0 % n
        }
    }
}

fn read_range(cas: &Cas, pieces: &[Content], offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = cas.read(S, pieces, offset, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn expected(all: &[u8], offset: u64, len: usize) -> &[u8] {
    let start = (offset as usize).min(all.len());
    let end = (start + len).min(all.len());
    &all[start..end]
}

/// Chunk start offsets of `content` (empty for inline content).
fn chunk_starts(cas: &Cas, content: &Content) -> Vec<u64> {
    match content {
        Content::Inline(_) => Vec::new(),
        Content::Manifest { hash, size } => cas
            .manifest(None, *hash, *size)
            .unwrap()
            .chunks()
            .map(|(_, start, _)| start)
            .collect(),
    }
}

/// Reads `pieces` (whose bytes are `all`) at boundary, random and past-the-end offsets.
fn check_reads(cas: &Cas, pieces: &[Content], all: &[u8], boundaries: &[u64]) {
    let size = all.len() as u64;
    let mut offsets = vec![0, 1, size / 3, size.saturating_sub(1), size, size + 5];
    for &b in boundaries {
        offsets.extend([b.saturating_sub(1), b, b + 1, b.saturating_sub(10)]);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ size);
    for _ in 0..20 {
        offsets.push(rng.below(size + 1));
    }
    for &offset in &offsets {
        for len in [0, 1, 20, 4 * KIB, 128 * KIB + 3, all.len() + 1] {
            let got = read_range(cas, pieces, offset, len);
            assert!(
                got == expected(all, offset, len),
                "read of {len} at {offset} of {size} differs"
            );
            let bytes = cas.read_bytes(S, pieces, offset, len).unwrap();
            assert!(
                bytes == got,
                "read_bytes of {len} at {offset} of {size} differs"
            );
        }
    }
    let mut sequential = Vec::with_capacity(all.len());
    let mut buf = vec![0u8; 128 * KIB];
    loop {
        let n = cas
            .read(S, pieces, sequential.len() as u64, &mut buf)
            .unwrap();
        if n == 0 {
            break;
        }
        sequential.extend_from_slice(&buf[..n]);
    }
    assert!(sequential == all, "sequential read of {size} differs");
}

fn check_export(cas: &Cas, dir: &Path, pieces: &[Content], all: &[u8]) {
    let path = dir.join("export");
    cas.export(S, pieces, &path).unwrap();
    assert!(std::fs::read(&path).unwrap() == all, "export differs");
}

#[test]
fn a_read_within_one_chunk_is_a_slice_of_the_cached_chunk() {
    let f = fixture();
    let cas = &f.cas;
    let data = data(41, 6 * MIB);
    let content = cas.put_bytes(S, &data).unwrap();
    let starts = chunk_starts(cas, &content);
    assert!(starts.len() > 2, "{starts:?}");
    let pieces = [content];
    let (at, len) = (starts[1] + 7, 4 * KIB);
    let first = cas.read_bytes(S, &pieces, at, len).unwrap();
    let again = cas.read_bytes(S, &pieces, at, len).unwrap();
    assert!(first == data[at as usize..][..len]);
    assert_eq!(
        first.as_ptr(),
        again.as_ptr(),
        "both are the cached chunk's bytes"
    );
    let across = cas.read_bytes(S, &pieces, starts[2] - 3, 6).unwrap();
    assert!(across == data[starts[2] as usize - 3..][..6]);
}

#[test]
fn interesting_sizes_round_trip_through_put_bytes_put_file_read_and_export() {
    let f = fixture();
    for (i, &size) in INTERESTING_SIZES.iter().enumerate() {
        let all = data(i as u64, size);
        let from_bytes = f.cas.put_bytes(S, &all).unwrap();
        let path = f.dir.path().join(format!("src{i}"));
        std::fs::write(&path, &all).unwrap();
        let from_file = f.cas.put_file(S, &path, None).unwrap();
        assert_eq!(from_bytes, from_file, "size {size}: file and bytes differ");
        assert_eq!(from_bytes.len(), size as u64);
        assert_eq!(matches!(from_bytes, Content::Inline(_)), size <= INLINE_MAX);
        let boundaries = chunk_starts(&f.cas, &from_bytes);
        if size > CHUNK_PARAMS.max as usize {
            assert!(boundaries.len() > 1, "size {size} has several chunks");
        }
        let pieces = [from_bytes];
        check_reads(&f.cas, &pieces, &all, &boundaries);
        check_export(&f.cas, f.dir.path(), &pieces, &all);
    }
}

#[test]
fn mixed_inline_and_manifest_pieces_read_as_their_concatenation() {
    let f = fixture();
    let parts = [
        data(1, 100),
        data(2, 2 * MIB + 17),
        data(3, INLINE_MAX),
        data(4, 5 * MIB + 1),
        data(5, 0),
        data(6, 1),
    ];
    let pieces: Vec<Content> = parts
        .iter()
        .map(|p| f.cas.put_bytes(S, p).unwrap())
        .collect();
    let all: Vec<u8> = parts.concat();
    let mut boundaries = Vec::new();
    let mut base = 0u64;
    for (p, c) in parts.iter().zip(&pieces) {
        boundaries.push(base);
        boundaries.extend(chunk_starts(&f.cas, c).iter().map(|s| base + s));
        base += p.len() as u64;
    }
    check_reads(&f.cas, &pieces, &all, &boundaries);
    check_export(&f.cas, f.dir.path(), &pieces, &all);
}

#[test]
fn rewriting_one_block_in_the_middle_stores_only_a_few_new_chunks() {
    let f = fixture();
    let mut all = data(7, 16 * MIB);
    let first = f.cas.put_bytes(S, &all).unwrap();
    let (blobs_before, bytes_before) = f.cas.stats().unwrap();
    all[8 * MIB..8 * MIB + 4 * KIB].copy_from_slice(&data(8, 4 * KIB));
    let second = f.cas.put_bytes(S, &all).unwrap();
    let (blobs_after, bytes_after) = f.cas.stats().unwrap();
    assert_ne!(first, second);
    // New blobs: the changed chunk(s), the manifest and its hash sequence.
    let new_blobs = blobs_after - blobs_before;
    assert!((3..=5).contains(&new_blobs), "{new_blobs} new blobs");
    let new_bytes = bytes_after - bytes_before;
    assert!(
        new_bytes <= 2 * CHUNK_PARAMS.max as u64 + 4 * KIB as u64,
        "{new_bytes} new bytes"
    );
    check_reads(&f.cas, &[second], &all, &[]);
}

#[test]
fn storing_the_same_content_twice_adds_no_blobs() {
    let f = fixture();
    let all = data(9, 6 * MIB);
    let first = f.cas.put_bytes(S, &all).unwrap();
    let before = f.cas.stats().unwrap();
    let path = f.dir.path().join("same");
    std::fs::write(&path, &all).unwrap();
    let second = f.cas.put_file(S, &path, None).unwrap();
    let third = f.cas.put_bytes(S, &all).unwrap();
    assert_eq!(first, second);
    assert_eq!(first, third);
    assert_eq!(f.cas.stats().unwrap(), before);
}

#[test]
fn identical_chunks_within_one_file_are_stored_once() {
    let f = fixture();
    let block = data(10, 3 * MIB);
    let all = [block.clone(), block.clone(), block].concat();
    let content = f.cas.put_bytes(S, &all).unwrap();
    let Content::Manifest { hash, size } = content else {
        panic!("large content is a manifest")
    };
    let manifest = f.cas.manifest(None, hash, size).unwrap();
    let mut distinct: Vec<Hash> = manifest.chunks().map(|(h, _, _)| h).collect();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() < manifest.len(),
        "repeated data shares chunks"
    );
    let (blobs, _) = f.cas.stats().unwrap();
    assert_eq!(blobs, distinct.len() as u64 + 2);
}

/// Stores a manifest blob listing `chunks` and returns content referring to it.
fn put_raw_manifest(f: &Fixture, chunks: &[(Hash, u64)]) -> Content {
    let manifest = pb::Manifest {
        chunks: chunks
            .iter()
            .map(|(h, s)| pb::Chunk {
                hash: Bytes::copy_from_slice(&h.0),
                size: *s,
            })
            .collect(),
    };
    let blobs = f.cas.blobs();
    let tt =
        f.rt.block_on(super::store::add(&blobs, manifest.encode_to_vec().into()))
            .unwrap();
    Content::Manifest {
        hash: super::store::from_iroh(tt.hash()),
        size: chunks.iter().map(|(_, s)| s).sum(),
    }
}

#[test]
fn manifest_naming_an_absent_chunk_reads_as_absent() {
    let f = fixture();
    let present = data(11, 2 * MIB);
    let Content::Manifest { hash, size } = f.cas.put_bytes(S, &present).unwrap() else {
        panic!("large content is a manifest")
    };
    let mut chunks: Vec<(Hash, u64)> = f
        .cas
        .manifest(None, hash, size)
        .unwrap()
        .chunks()
        .map(|(h, _, l)| (h, l))
        .collect();
    let absent = Hash::of(b"never stored");
    chunks.push((absent, 100_000));
    let content = put_raw_manifest(&f, &chunks);
    let pieces = [content];
    // The present prefix reads; any read touching the absent chunk fails.
    assert_eq!(read_range(&f.cas, &pieces, 0, 1000), &present[..1000]);
    let mut buf = vec![0u8; 10];
    let err = f.cas.read(S, &pieces, size + 5, &mut buf).unwrap_err();
    assert!(
        matches!(err, CasError::Absent { hash, .. } if hash == absent),
        "{err}"
    );
    let err = f.cas.read(S, &pieces, size - 5, &mut buf).unwrap_err();
    assert!(
        matches!(err, CasError::Absent { hash, .. } if hash == absent),
        "{err}"
    );
    let err = f
        .cas
        .export(S, &pieces, &f.dir.path().join("x"))
        .unwrap_err();
    assert!(
        matches!(err, CasError::Absent { hash, .. } if hash == absent),
        "{err}"
    );
}

#[test]
fn absent_manifest_reads_as_absent() {
    let f = fixture();
    let absent = Hash::of(b"no such manifest");
    let pieces = [Content::Manifest {
        hash: absent,
        size: 1 << 20,
    }];
    let mut buf = vec![0u8; 10];
    let err = f.cas.read(S, &pieces, 0, &mut buf).unwrap_err();
    assert!(
        matches!(err, CasError::Absent { hash, .. } if hash == absent),
        "{err}"
    );
}

#[test]
fn chunk_shorter_than_its_manifest_entry_reads_as_corrupt() {
    let f = fixture();
    let chunk = data(12, 100 * KIB);
    let blobs = f.cas.blobs();
    let tt =
        f.rt.block_on(super::store::add(&blobs, chunk.into()))
            .unwrap();
    let content = put_raw_manifest(
        &f,
        &[(super::store::from_iroh(tt.hash()), 200 * KIB as u64)],
    );
    let mut buf = vec![0u8; 10];
    let err = f.cas.read(S, &[content], 0, &mut buf).unwrap_err();
    assert!(matches!(err, CasError::Corrupt { .. }), "{err}");
}

#[test]
fn a_manifest_claiming_a_huge_chunk_is_refused_by_reads_fetches_and_patches() {
    let f = fixture();
    let base = f.cas.put_blob(S, data(14, 100 * KIB).into()).unwrap();
    let old = put_raw_manifest(&f, &[(base, 1 << 40)]);
    let new = put_raw_manifest(&f, &[(Hash::of(b"not here"), 1 << 40)]);
    let huge = |e: &CasError| matches!(e, CasError::ChunkTooLarge { size, .. } if *size == 1 << 40);
    let mut buf = vec![0u8; 10];
    let err = f
        .cas
        .read(S, std::slice::from_ref(&old), 0, &mut buf)
        .unwrap_err();
    assert!(huge(&err), "{err}");
    let err = f.cas.missing(std::slice::from_ref(&new)).unwrap_err();
    assert!(huge(&err), "{err}");
    let err = f.cas.patch_bases(&[old], &[new]).unwrap_err();
    assert!(huge(&err), "{err}");
}

#[test]
fn a_blob_longer_than_any_manifest_or_chunk_is_not_read_into_memory() {
    let f = fixture();
    let len = super::store::MAX_BLOB_READ as usize + 1;
    let hash = f.cas.put_blob(S, vec![3u8; len].into()).unwrap();
    let err = f
        .cas
        .local_blob(hash)
        .map(|b| b.map(|b| b.len()))
        .unwrap_err();
    assert!(
        matches!(err, CasError::BlobTooLarge { size, .. } if size == len as u64),
        "{err}"
    );
    let named = Content::Manifest {
        hash,
        size: 1 << 30,
    };
    let err = f.cas.read(S, &[named], 0, &mut [0u8; 8]).unwrap_err();
    assert!(matches!(err, CasError::BlobTooLarge { .. }), "{err}");
}

#[test]
fn reading_past_pieces_whose_sizes_overflow_u64_reads_nothing() {
    let f = fixture();
    let pieces = [
        Content::Manifest {
            hash: Hash::of(b"m"),
            size: u64::MAX,
        },
        Content::Inline("x".into()),
    ];
    let mut buf = [0u8; 4];
    assert_eq!(f.cas.read(S, &pieces, u64::MAX, &mut buf).unwrap(), 0);
    assert_eq!(f.cas.read(S, &pieces, u64::MAX - 1, &mut []).unwrap(), 0);
}

#[test]
fn content_size_disagreeing_with_its_manifest_reads_as_corrupt() {
    let f = fixture();
    let Content::Manifest { hash, size } = f.cas.put_bytes(S, &data(13, MIB)).unwrap() else {
        panic!("large content is a manifest")
    };
    let mut buf = vec![0u8; 10];
    let err = f
        .cas
        .read(
            S,
            &[Content::Manifest {
                hash,
                size: size + 1,
            }],
            0,
            &mut buf,
        )
        .unwrap_err();
    assert!(matches!(err, CasError::Corrupt { .. }), "{err}");
}

#[test]
fn content_is_found_after_the_store_is_dropped_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let blobs_dir = dir.path().join("blobs");
    let rt = runtime();
    let all = data(14, 7 * MIB + 3);
    let content = {
        let cas = Cas::open(&blobs_dir, rt.handle().clone()).unwrap();
        let content = cas.put_bytes(S, &all).unwrap();
        cas.sync().unwrap();
        cas.shutdown().unwrap();
        content
    };
    let rt2 = runtime();
    let cas = Cas::open(&blobs_dir, rt2.handle().clone()).unwrap();
    let boundaries = chunk_starts(&cas, &content);
    check_reads(&cas, std::slice::from_ref(&content), &all, &boundaries);
    let Content::Manifest { hash, .. } = content else {
        panic!("large content is a manifest")
    };
    let name = format!("{}{}", super::store::MANIFEST_TAG_PREFIX, hash.to_hex());
    let tag = rt2.block_on(cas.blobs().tags().get(name)).unwrap();
    let tag = tag.expect("a persistent tag roots the manifest");
    assert_eq!(tag.format, iroh_blobs::BlobFormat::HashSeq);
}

#[test]
fn several_threads_read_the_same_content_at_once() {
    let f = fixture();
    let all = Arc::new(data(15, 12 * MIB));
    let content = Arc::new([f.cas.put_bytes(S, &all).unwrap()]);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (cas, all, content) = (f.cas.clone(), all.clone(), content.clone());
            s.spawn(move || {
                let mut rng = Rng(t + 1);
                for _ in 0..200 {
                    let offset = rng.below(all.len() as u64);
                    let len = 1 + rng.below(300 * KIB as u64) as usize;
                    let got = read_range(&cas, &content[..], offset, len);
                    assert!(
                        got == expected(&all, offset, len),
                        "thread {t} read differs"
                    );
                }
            });
        }
    });
}

/// Candidate chunk sizes compared by `chunk_sizes_measured`.
const CANDIDATES: &[ChunkParams] = &[
    ChunkParams {
        min: 16 * 1024,
        avg: 64 * 1024,
        max: 256 * 1024,
    },
    ChunkParams {
        min: 64 * 1024,
        avg: 256 * 1024,
        max: 1024 * 1024,
    },
    CHUNK_PARAMS,
];

/// Prints put_file and sequential read throughput and the bytes re-stored after a
/// 1-byte edit, per candidate. Size: `CAS_BENCH_MIB` (default 256).
#[test]
#[ignore = "measurement, run by hand"]
fn chunk_sizes_measured() {
    let mib: usize = std::env::var("CAS_BENCH_MIB").map_or(256, |v| v.parse().unwrap());
    let size = mib * MIB;
    let all = data(16, size);
    for &params in CANDIDATES {
        let Fixture { cas, rt: _rt, dir } = fixture_with(params);
        let path = dir.path().join("src");
        std::fs::write(&path, &all).unwrap();
        let t = Instant::now();
        let mut chunker = StreamChunker::new(std::fs::File::open(&path).unwrap(), params);
        while chunker.next_chunk().unwrap().is_some() {}
        let chunk_only = t.elapsed();
        let t = Instant::now();
        let content = cas.put_file(S, &path, None).unwrap();
        let put = t.elapsed();
        let t = Instant::now();
        let content_durable = cas.put_file(S, &path, None).unwrap();
        cas.sync().unwrap();
        let put_durable_again = t.elapsed();
        assert_eq!(content, content_durable);
        let pieces = [content];
        let t = Instant::now();
        let mut buf = vec![0u8; 128 * KIB];
        let mut offset = 0u64;
        loop {
            let n = cas.read(S, &pieces, offset, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            offset += n as u64;
        }
        let read = t.elapsed();
        assert_eq!(offset, size as u64);
        let (blobs, bytes) = cas.stats().unwrap();
        let mut edited = all.clone();
        edited[size / 2] ^= 1;
        let edit = cas.put_bytes(S, &edited).unwrap();
        let (blobs2, bytes2) = cas.stats().unwrap();
        let mb = size as f64 / 1e6;
        println!(
            "min {} avg {} max {} KiB: {} chunks, chunking alone {:.0} MB/s, put_file {:.0} MB/s, re-put durable {:.0} MB/s, \
             seq read 128K {:.0} MB/s, 1-byte edit adds {} blobs {} KiB",
            params.min / 1024,
            params.avg / 1024,
            params.max / 1024,
            blobs - 2,
            mb / chunk_only.as_secs_f64(),
            mb / put.as_secs_f64(),
            mb / put_durable_again.as_secs_f64(),
            mb / read.as_secs_f64(),
            blobs2 - blobs,
            (bytes2 - bytes) / 1024,
        );
        assert_ne!(edit, pieces[0]);
        cas.shutdown().unwrap();
    }
}

/// A fetcher that records requests and, unless `delay` is `None`, copies each requested
/// blob from `peer` into `local` after `delay` on its own thread, as a network fetch would.
fn fetcher_from(
    peer: &Fixture,
    local: &Fixture,
    delay: Option<Duration>,
) -> (Fetcher, Arc<Mutex<Vec<FetchRequest>>>) {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let (from, to, rt) = (
        peer.cas.blobs(),
        local.cas.blobs(),
        local.rt.handle().clone(),
    );
    let fetcher: Fetcher = Arc::new(move |req: FetchRequest| {
        seen.lock().push(req.clone());
        let Some(delay) = delay else {
            return;
        };
        let (from, to, rt) = (from.clone(), to.clone(), rt.clone());
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            rt.block_on(async {
                for hash in req.hashes {
                    let bytes = from.get_bytes(hash).await.unwrap();
                    super::store::add(&to, bytes).await.unwrap().leak();
                }
            });
        });
    });
    (fetcher, requests)
}

#[test]
fn absent_blobs_fetched_while_a_read_waits_read_correctly() {
    let (peer, local) = (fixture(), fixture());
    let all = data(21, 3 * MIB);
    let content = peer.cas.put_bytes(S, &all).unwrap();
    let Content::Manifest { hash, .. } = content else {
        panic!("large content is a manifest")
    };
    let (fetcher, requests) = fetcher_from(&peer, &local, Some(Duration::from_millis(100)));
    local.cas.set_fetcher(fetcher);
    let pieces = [content];

    let t = Instant::now();
    assert_eq!(
        read_range(&local.cas, &pieces, MIB as u64 + 17, 4096),
        expected(&all, MIB as u64 + 17, 4096)
    );
    // What the read waited for arrived verified: it is read without hashing it again.
    assert_eq!(local.cas.inner.intact.hashed(), 0);
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let first = requests.lock()[0].clone();
    assert_eq!(first.store, S);
    assert_eq!(first.hashes, vec![super::store::to_iroh(hash)]);

    check_export(&local.cas, local.dir.path(), &pieces, &all);
    assert!(local.cas.missing(&pieces).unwrap().is_empty());
}

#[test]
fn blob_that_never_arrives_fails_as_absent_after_the_read_wait() {
    let (peer, local) = (fixture(), fixture());
    let content = peer.cas.put_bytes(S, &data(22, 2 * MIB)).unwrap();
    let Content::Manifest { hash, .. } = content else {
        panic!("large content is a manifest")
    };
    let pieces = [content];
    let mut buf = vec![0u8; 10];

    let t = Instant::now();
    let err = local.cas.read(S, &pieces, 0, &mut buf).unwrap_err();
    assert!(
        matches!(err, CasError::Absent { hash: h, waited } if h == hash && waited.is_zero()),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "no fetcher fails at once"
    );

    let (fetcher, requests) = fetcher_from(&peer, &local, None);
    local.cas.set_fetcher(fetcher);
    local.cas.set_read_wait(Duration::from_millis(300));
    let t = Instant::now();
    let err = local.cas.read(S, &pieces, 0, &mut buf).unwrap_err();
    let waited = match err {
        CasError::Absent { hash: h, waited } if h == hash => waited,
        e => panic!("{e}"),
    };
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(requests.lock().len(), 1);
    let err = local
        .cas
        .export(S, &pieces, &local.dir.path().join("x"))
        .unwrap_err();
    assert!(matches!(err, CasError::Absent { .. }), "{err}");
}

#[test]
fn missing_covers_inline_local_and_absent_content() {
    let f = fixture();
    let iroh = super::store::to_iroh;
    let inline = f.cas.put_bytes(S, b"small").unwrap();
    let local = f.cas.put_bytes(S, &data(23, 3 * MIB)).unwrap();
    let Content::Manifest { hash, size } = local else {
        panic!("large content is a manifest")
    };
    let chunks: Vec<(Hash, u64)> = f
        .cas
        .manifest(None, hash, size)
        .unwrap()
        .chunks()
        .map(|(h, _, l)| (h, l))
        .collect();
    assert!(chunks.len() > 1);
    let absent_manifest = Content::Manifest {
        hash: Hash::of(b"no such manifest"),
        size: 1 << 20,
    };
    let absent_chunk = Hash::of(b"no such chunk");
    let partial = put_raw_manifest(&f, &[chunks[0], (absent_chunk, 1000)]);

    assert!(f
        .cas
        .missing(std::slice::from_ref(&inline))
        .unwrap()
        .is_empty());
    let twice = [local.clone(), inline, local.clone()];
    assert!(f.cas.missing(&twice).unwrap().is_empty());

    let absent = [absent_manifest];
    assert_eq!(
        f.cas.missing(&absent).unwrap(),
        vec![iroh(Hash::of(b"no such manifest"))]
    );

    assert_eq!(
        f.cas.missing(std::slice::from_ref(&partial)).unwrap(),
        vec![iroh(absent_chunk)]
    );
}

#[test]
fn an_unhurried_add_stores_each_blob_whole_and_remembers_its_file() {
    let f = fixture();
    let blobs: Vec<Bytes> = [0, 100, 16 * KIB, 300 * KIB, MIB, 4 * MIB]
        .iter()
        .enumerate()
        .map(|(i, &len)| Bytes::from(data(40 + i as u64, len)))
        .collect();
    // All at once, as the put-ahead worker adds them.
    let tags = f.rt.block_on(async {
        let adds = blobs.iter().map(|b| f.cas.add_unhurried(b.clone()));
        n0_future::join_all(adds).await
    });
    for (blob, tt) in blobs.iter().zip(tags) {
        let hash = Hash::of(blob);
        assert_eq!(super::store::from_iroh(tt.unwrap().hash()), hash);
        let got = f.rt.block_on(super::store::fetch(
            &f.cas.blobs(),
            hash,
            Some(blob.len() as u64),
        ));
        assert!(got.unwrap() == *blob, "{} bytes read back", blob.len());
        // The store keeps blobs up to 16 KiB in its database, without a data file.
        assert_eq!(
            f.cas.inner.intact.knows(hash),
            blob.len() > 16 * KIB,
            "{} bytes",
            blob.len()
        );
    }
}

#[test]
fn content_put_for_one_store_is_owned_by_that_store_alone() {
    let f = fixture();
    let other = StoreId([6; 16]);
    let content = f.cas.put_bytes(S, &data(25, 3 * MIB)).unwrap();
    let Content::Manifest { hash, size } = content else {
        panic!("large content is a manifest")
    };
    let chunks: Vec<Hash> = f
        .cas
        .manifest(None, hash, size)
        .unwrap()
        .chunks()
        .map(|(h, _, _)| h)
        .collect();
    let owns = |store, h| f.rt.block_on(f.cas.owns(store, h)).unwrap();
    for h in std::iter::once(hash).chain(chunks.iter().copied()) {
        assert!(owns(S, h), "{h:?} was imported for S");
        assert!(
            !owns(other, h),
            "{h:?} was never imported or fetched for the other store"
        );
    }
    f.rt.block_on(f.cas.claim(other, &chunks[..1])).unwrap();
    assert!(owns(other, chunks[0]));
    assert!(!owns(other, hash));
}

#[test]
fn a_wrong_size_manifest_does_not_hide_what_other_content_needs() {
    let f = fixture();
    let good = f.cas.put_bytes(S, &data(26, 2 * MIB)).unwrap();
    let Content::Manifest { hash, size } = good else {
        panic!("large content is a manifest")
    };
    let absent = Content::Manifest {
        hash: Hash::of(b"not here"),
        size: MIB as u64,
    };
    let wrong = Content::Manifest {
        hash,
        size: size + 1,
    };
    assert_eq!(
        f.cas.missing(&[wrong, absent]).unwrap(),
        vec![super::store::to_iroh(Hash::of(b"not here"))]
    );
}

/// Regression: `export` failed about one run in three with `Io(entity not found)` for a
/// chunk a fetch completed between the export's read and the status check after it.
#[test]
fn blob_completing_between_a_failed_read_and_its_status_check_reads_correctly() {
    let f = fixture();
    let chunk = Bytes::from(data(24, 300 * KIB));
    let hash = Hash::of(&chunk);
    let blobs = f.cas.blobs();
    f.rt.block_on(async {
        let read = blobs.get_bytes(super::store::to_iroh(hash)).await;
        assert!(read.is_err(), "the blob is not stored yet");
        // The fetch lands after the read failed and before its failure is classified.
        super::store::add(&blobs, chunk.clone())
            .await
            .unwrap()
            .leak();
        let got = super::store::after_failed_read(&blobs, hash).await.unwrap();
        assert!(got == chunk, "the second read returns the blob");
    });
}

/// A blob that has only partly arrived (a download under way) reads as `Absent`, so a
/// reader waits for it, and the part that came is left as it is; its file is taken for
/// intact once the download ends with the blob whole, not before.
#[test]
fn a_blob_still_arriving_reads_as_absent_and_completes_afterwards_then_reads_as_intact() {
    use iroh_blobs::protocol::{ChunkRanges, ChunkRangesExt};
    let (a, b) = (fixture(), fixture());
    let chunk = Bytes::from(data(25, 300 * KIB));
    let hash = Hash::of(&chunk);
    let iroh = super::store::to_iroh(hash);
    let (from, to) = (a.cas.blobs(), b.cas.blobs());
    a.rt.block_on(super::store::add(&from, chunk.clone()))
        .unwrap()
        .leak();
    let first = ChunkRanges::bytes(..64 * KIB as u64);
    let encoded =
        a.rt.block_on(from.export_bao(iroh, first.clone()).bao_to_vec());
    b.rt.block_on(to.import_bao_bytes(iroh, first, encoded.unwrap()))
        .unwrap();
    assert!(matches!(
        b.rt.block_on(to.status(iroh)).unwrap(),
        BlobStatus::Partial { .. }
    ));
    let read =
        b.rt.block_on(super::store::fetch(&to, hash, Some(chunk.len() as u64)));
    assert!(
        matches!(read, Err(CasError::Absent { hash: h, .. }) if h == hash),
        "{read:?}"
    );
    b.rt.block_on(b.cas.downloaded(hash));
    assert!(
        !b.cas.inner.intact.knows(hash),
        "a partial blob's file is never taken for intact"
    );
    let rest =
        a.rt.block_on(from.export_bao(iroh, ChunkRanges::all()).bao_to_vec());
    b.rt.block_on(to.import_bao_bytes(iroh, ChunkRanges::all(), rest.unwrap()))
        .unwrap();
    let read =
        b.rt.block_on(super::store::fetch(&to, hash, Some(chunk.len() as u64)));
    assert!(read.unwrap() == chunk, "the completed blob reads whole");
    b.rt.block_on(b.cas.downloaded(hash));
    assert!(b.cas.inner.intact.knows(hash));
    assert!(b.cas.inner.intact.read(hash, Some(chunk.len() as u64)) == Some(chunk));
}

#[test]
fn an_edited_chunk_is_rebuilt_from_its_base_and_the_blocks_that_differ() {
    let (a, b) = (fixture(), fixture());
    let old = data(21, 6 * MIB);
    let mut new = old.clone();
    new[3 * MIB + 5] ^= 0x55;
    let (old_a, new_a) = (
        a.cas.put_bytes(S, &old).unwrap(),
        a.cas.put_bytes(S, &new).unwrap(),
    );
    let old_b = b.cas.put_bytes(S, &old).unwrap();
    assert_eq!(old_a, old_b);
    let Content::Manifest { hash: manifest, .. } = new_a.clone() else {
        panic!("large content is a manifest")
    };
    let manifest_bytes = a.cas.local_blob(manifest).unwrap().unwrap();
    assert_eq!(b.cas.put_blob(S, manifest_bytes).unwrap(), manifest);

    let pairs = b
        .cas
        .patch_bases(std::slice::from_ref(&old_b), std::slice::from_ref(&new_a))
        .unwrap();
    assert_eq!(pairs.len(), 1, "a 1-byte edit changes one chunk");
    let (chunk, base, len) = pairs[0];
    let blocks = super::patch::diff(
        &a.cas.local_blob(base).unwrap().unwrap(),
        &a.cas.local_blob(chunk).unwrap().unwrap(),
    )
    .unwrap();
    assert_eq!(blocks.len(), 1, "one block differs");
    let rebuilt =
        super::patch::apply(&b.cas.local_blob(base).unwrap().unwrap(), len, &blocks).unwrap();
    assert_eq!(b.cas.put_blob(S, rebuilt.into()).unwrap(), chunk);
    assert!(b
        .cas
        .missing(std::slice::from_ref(&new_a))
        .unwrap()
        .is_empty());
    assert!(read_range(&b.cas, std::slice::from_ref(&new_a), 0, new.len()) == new);
    assert!(b
        .cas
        .patch_bases(std::slice::from_ref(&old_b), std::slice::from_ref(&new_a))
        .unwrap()
        .is_empty());
}

#[test]
fn a_chunk_file_altered_on_disk_is_an_error_never_its_bytes() {
    let f = fixture();
    let original = data(14, MIB);
    let content = f.cas.put_bytes(S, &original).unwrap();
    f.cas.sync().unwrap();
    let Content::Manifest { hash, size } = content.clone() else {
        panic!("1 MiB is a manifest")
    };
    let first = f.cas.manifest(None, hash, size).unwrap().chunks().next();
    let first = first.expect("a manifest has chunks").0;
    assert!(
        f.cas.inner.intact.knows(first),
        "a put remembers its chunk's file as intact, so reads skip its hash"
    );
    let path = f.cas.inner.paths.data_path(&super::store::to_iroh(first));
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&path).expect("a 1 MiB chunk lives in its own data file");
    bytes[MIB / 2] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    // Same inode, same length, same modification time: only the change time tells.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();

    let mut buf = vec![0u8; 4096];
    let read = f.cas.read(S, &[content], (MIB / 2) as u64, &mut buf);
    assert!(
        read.is_err(),
        "read returned {read:?} from an altered chunk"
    );
    assert!(!f.cas.inner.intact.knows(first));
}

#[test]
fn a_blob_the_store_holds_from_elsewhere_is_hashed_once_then_read_as_intact() {
    let f = fixture();
    let chunk = data(15, 300 * KIB);
    let blobs = f.cas.blobs();
    let tt =
        f.rt.block_on(super::store::add(&blobs, chunk.clone().into()))
            .unwrap();
    let hash = super::store::from_iroh(tt.hash());
    let content = put_raw_manifest(&f, &[(hash, chunk.len() as u64)]);
    assert!(!f.cas.inner.intact.knows(hash));
    for _ in 0..2 {
        f.cas.inner.chunks.lock().remove(&hash);
        assert!(read_range(&f.cas, std::slice::from_ref(&content), 0, chunk.len()) == chunk);
        assert!(f.cas.inner.intact.knows(hash));
    }
}

/// A new, empty staging file in `f`'s dir: its path, the file, and its chunks stored
/// ahead (as content of store `owner`, if given).
fn staging(
    f: &Fixture,
    owner: Option<StoreId>,
) -> (std::path::PathBuf, std::fs::File, super::PutAhead) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = f.dir.path().join(format!("staging-{n}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let ahead = f.cas.put_ahead(file.try_clone().unwrap(), owner);
    (path, file, ahead)
}

/// Writes `len` bytes front to back into a staging file in random pieces, some after a
/// hole, reading back and committing with chunks stored ahead at random points: every
/// read gives the bytes written, every commit the content `put_bytes` stores for them.
fn write_ahead_and_commit(seed: u64, len: usize) -> u64 {
    let f = fixture();
    let source = data(seed, len);
    let mut written = vec![0u8; len];
    let (path, file, mut ahead) = staging(&f, None);
    let mut rng = Rng(seed);
    let mut at = 0usize;
    while at < len {
        if rng.below(10) == 0 {
            at += rng.below(MIB as u64) as usize;
        }
        let n = (1 + rng.below(2 * MIB as u64) as usize).min(len.saturating_sub(at));
        if n > 0 {
            written[at..at + n].copy_from_slice(&source[at..at + n]);
            ahead.write_at(&source[at..at + n], at as u64).unwrap();
        } else {
            // A hole at the end: the file's size says where the content ends.
            file.set_len(len as u64).unwrap();
            ahead.written(len as u64);
        }
        at = (at + n).min(len);
        if rng.below(4) == 0 {
            let from = rng.below(at as u64) as usize;
            let mut buf = vec![0u8; (1 + rng.below(3 * MIB as u64) as usize).min(at - from)];
            ahead.read_exact_at(&mut buf, from as u64).unwrap();
            assert!(buf == written[from..from + buf.len()], "read at {from}");
        }
        if rng.below(6) == 0 || at == len {
            let got = f.cas.put_file(S, &path, Some(&mut ahead)).unwrap();
            assert_eq!(got, f.cas.put_bytes(S, &written[..at]).unwrap(), "at {at}");
        }
    }
    let stored = ahead.settled().unwrap().expect("chunks were stored ahead");
    stored.iter().map(|(_, len)| len).sum()
}

#[test]
fn the_ahead_hook_hears_each_chunk_of_a_store_file_once_in_file_order() {
    let f = fixture();
    let heard: Arc<Mutex<Vec<(StoreId, Hash)>>> = Arc::default();
    let sink = heard.clone();
    f.cas
        .set_ahead_hook(Arc::new(move |store, hashes: Vec<Hash>| {
            sink.lock().extend(hashes.into_iter().map(|h| (store, h)));
        }));
    let source = data(7, 24 * MIB + 999);
    let store_ahead = |owner: Option<StoreId>| {
        let (_, _file, mut ahead) = staging(&f, owner);
        for (i, piece) in source.chunks(MIB).enumerate() {
            ahead.write_at(piece, (i * MIB) as u64).unwrap();
        }
        ahead.settled().unwrap().expect("chunks were stored ahead")
    };
    let stored = store_ahead(Some(S));
    assert!(
        stored.len() >= 12,
        "only {} chunks stored ahead",
        stored.len()
    );
    let want: Vec<(StoreId, Hash)> = stored.iter().map(|(h, _)| (S, *h)).collect();
    assert_eq!(*heard.lock(), want);

    heard.lock().clear();
    assert_eq!(store_ahead(None), stored);
    assert!(
        heard.lock().is_empty(),
        "chunks of a file of no store were told"
    );
}

#[test]
fn chunks_stored_ahead_of_a_front_to_back_write_give_the_same_content() {
    for seed in 1..=4 {
        let len = 20 * MIB + seed as usize * 12_345;
        let stored = write_ahead_and_commit(seed, len);
        assert!(
            stored >= (len / 2) as u64,
            "seed {seed}: only {stored} of {len} bytes stored ahead"
        );
    }
}

#[test]
fn a_staging_file_shorter_than_promised_is_stored_whole() {
    let f = fixture();
    let content = data(22, 12 * MIB);
    let path = f.dir.path().join("staging");
    std::fs::write(&path, &content).unwrap();
    let mut ahead = f.cas.put_ahead(std::fs::File::open(&path).unwrap(), None);
    ahead.written(30 * MIB as u64);
    // The worker fails at the missing bytes, before it cuts a chunk.
    assert_eq!(ahead.settled().unwrap(), Some(vec![]));
    let got = f.cas.put_file(S, &path, Some(&mut ahead)).unwrap();
    assert_eq!(got, f.cas.put_bytes(S, &content).unwrap());
}

/// Bytes of `file` that take space on its file system.
fn allocated(file: &std::fs::File) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(&file.metadata().unwrap()) * 512
}

#[test]
fn a_front_to_back_write_is_held_once_and_reads_commits_and_restores_whole() {
    let f = fixture();
    let len = 72 * MIB + 4321;
    let source = data(24, len);
    let (path, file, mut ahead) = staging(&f, None);
    for (i, piece) in source.chunks(MIB).enumerate() {
        ahead.write_at(piece, (i * MIB) as u64).unwrap();
        // Past the first bytes, writes are queued, not written to the file, and the
        // queue never holds much more than its bound.
        assert!(allocated(&file) <= super::ahead::AHEAD_MIN + MIB as u64);
        assert!(
            ahead.queued()
                <= super::ahead::QUEUE_MAX + super::ahead::SEGMENT as u64 + super::ahead::FREE_MIN,
            "{} bytes queued",
            ahead.queued()
        );
    }
    let stored: u64 = ahead
        .settled()
        .unwrap()
        .unwrap()
        .iter()
        .map(|(_, l)| l)
        .sum();
    assert!(stored > 20 * MIB as u64, "only {stored} bytes stored ahead");
    assert!(
        allocated(&file) + stored <= len as u64 + MIB as u64,
        "{} of {len} bytes still allocated with {stored} stored",
        allocated(&file)
    );

    // Reads across the freed prefix, its end and the bytes kept come out whole.
    let mut rng = Rng(24);
    for _ in 0..40 {
        let at = rng.below(len as u64) as usize;
        let n = (1 + rng.below(3 * MIB as u64) as usize).min(len - at);
        let mut buf = vec![0u8; n];
        ahead.read_exact_at(&mut buf, at as u64).unwrap();
        assert!(buf == source[at..at + n], "read of {n} at {at}");
    }
    let mut whole = vec![0u8; len];
    ahead.read_exact_at(&mut whole, 0).unwrap();
    assert!(whole == source);

    let expected = f.cas.put_bytes(S, &source).unwrap();
    assert_eq!(
        f.cas.put_file(S, &path, Some(&mut ahead)).unwrap(),
        expected
    );

    ahead.restore().unwrap();
    assert!(
        std::fs::read(&path).unwrap() == source,
        "restored file differs"
    );
    assert_eq!(f.cas.put_file(S, &path, None).unwrap(), expected);
}

#[test]
fn files_beyond_the_worker_places_are_stored_whole_and_places_come_back() {
    let f = fixture();
    let content = data(23, 10 * MIB);
    let expected = f.cas.put_bytes(S, &content).unwrap();
    let ahead_of = |i: usize| {
        let path = f.dir.path().join(format!("staging{i}"));
        std::fs::write(&path, &content).unwrap();
        let mut ahead = f.cas.put_ahead(std::fs::File::open(&path).unwrap(), None);
        ahead.written(content.len() as u64);
        (path, ahead)
    };
    let mut aheads: Vec<_> = (0..=super::ahead::MAX_WORKERS).map(ahead_of).collect();
    for (i, (path, ahead)) in aheads.iter_mut().enumerate() {
        assert_eq!(
            ahead.settled().unwrap().is_some(),
            i < super::ahead::MAX_WORKERS,
            "file {i}"
        );
        assert_eq!(f.cas.put_file(S, path, Some(ahead)).unwrap(), expected);
    }
    drop(aheads);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, mut ahead) = ahead_of(99);
        if ahead.settled().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no worker place came back");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn backlog_counts_what_current_content_lacks_and_shrinks_as_blobs_arrive() {
    let (peer, local) = (fixture(), fixture());
    let all = data(31, 3 * MIB + 5);
    let content = peer.cas.put_bytes(S, &all).unwrap();
    let Content::Manifest { hash, size } = content else {
        panic!("large content is a manifest")
    };
    let small = peer
        .cas
        .put_bytes(S, b"inline content needs nothing")
        .unwrap();
    let file = crate::ids::FileId {
        hlc: crate::hlc::Hlc {
            wall_ms: 7,
            ..Default::default()
        },
        ..Default::default()
    };
    let pieces = [content, small];
    let mut backlog = super::Backlog::default();
    let t0 = Instant::now();
    backlog.set(file, local.cas.needs(&pieces).unwrap());
    let p = backlog.progress(t0);
    assert_eq!(
        (p.files, p.bytes),
        (1, size),
        "the absent manifest stands for the whole file"
    );
    assert_eq!(p.eta, None, "nothing arrives yet");

    // The manifest arrives: the file is looked at again and its chunks are counted.
    let manifest = peer.cas.local_blob(hash).unwrap().unwrap();
    local.cas.put_blob(S, manifest.clone()).unwrap();
    let again = backlog.arrived(hash, manifest.len() as u64, t0);
    assert_eq!(again, vec![file]);
    backlog.set(file, local.cas.needs(&pieces).unwrap());
    let chunks: Vec<(Hash, u64)> = peer
        .cas
        .manifest(None, hash, size)
        .unwrap()
        .chunks()
        .map(|(h, _, l)| (h, l))
        .collect();
    assert!(chunks.len() > 1);
    assert_eq!(backlog.progress(t0).bytes, size);

    // Each chunk strikes its bytes off without looking at the file again.
    let (first, rest) = chunks.split_first().unwrap();
    let bytes = peer.cas.local_blob(first.0).unwrap().unwrap();
    local.cas.put_blob(S, bytes).unwrap();
    let t1 = t0 + Duration::from_secs(2);
    assert!(backlog.arrived(first.0, first.1, t1).is_empty());
    let p = backlog.progress(t1);
    assert_eq!((p.files, p.bytes), (1, size - first.1));
    let rate = (manifest.len() as u64 + first.1) / super::fetch::RATE_WINDOW.as_secs();
    assert_eq!(p.rate, rate);
    let eta = p.eta.expect("something arrives").as_secs();
    assert_eq!(eta, (size - first.1).div_ceil(rate));
    assert_eq!(local.cas.needs(&pieces).unwrap().len(), rest.len());

    for (h, l) in rest {
        let bytes = peer.cas.local_blob(*h).unwrap().unwrap();
        local.cas.put_blob(S, bytes).unwrap();
        backlog.arrived(*h, *l, t1);
    }
    let p = backlog.progress(t1);
    assert_eq!((p.files, p.bytes, p.eta), (0, 0, None));
    assert!(local.cas.needs(&pieces).unwrap().is_empty());

    // Arrivals older than the window no longer count towards the rate.
    let later = t1 + super::fetch::RATE_WINDOW + Duration::from_secs(1);
    assert_eq!(backlog.progress(later).rate, 0);

    // A file that is gone needs nothing.
    backlog.set(file, peer.cas.needs(&pieces).unwrap());
    let absent = Content::Manifest {
        hash: Hash::of(b"no such manifest"),
        size: 99,
    };
    backlog.set(file, local.cas.needs(&[absent]).unwrap());
    assert_eq!(backlog.progress(later).bytes, 99);
    backlog.set(file, Vec::new());
    assert_eq!(backlog.progress(later).files, 0);
}

#[test]
fn a_reader_catching_up_with_a_read_ahead_waits_for_it_and_reads_ahead_past_it() {
    let f = fixture();
    let all = data(41, 9 * MIB);
    let content = f.cas.put_bytes(S, &all).unwrap();
    let Content::Manifest { hash, size } = content else {
        panic!("9 MiB stored inline");
    };
    let manifest = f.cas.manifest(None, hash, size).unwrap();
    let chunks: Vec<(Hash, u64, u64)> = manifest.chunks().collect();
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    let (first, start, len) = chunks[1];

    // Loads wait for the turn: the read-ahead is still under way when the reader asks.
    let turn = f.cas.inner.turn.clone();
    let held = turn.blocking_write();
    f.cas.prefetch(S, first, len);
    let (tx, rx) = std::sync::mpsc::channel();
    let cas = f.cas.clone();
    let reader = std::thread::spawn(move || tx.send(cas.cached_chunk(first)).unwrap());
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "the reader did not wait for the read-ahead"
    );
    drop(held);
    let got = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    reader.join().unwrap();
    let want = &all[start as usize..(start + len) as usize];
    assert!(
        got.is_some_and(|b| b[..] == *want),
        "the read-ahead's chunk differs"
    );

    // A read ending in the second half of chunk 1 reads the next READ_AHEAD chunks ahead.
    let end = start + len;
    read_range(&f.cas, std::slice::from_ref(&content), end - 1, 1);
    for &(c, cs, cl) in &chunks[2..2 + super::READ_AHEAD] {
        let got = f.cas.cached_chunk(c).expect("a chunk ahead was not read");
        assert!(got[..] == all[cs as usize..(cs + cl) as usize]);
    }
    assert!(f.cas.inner.prefetching.lock().is_empty());
}

/// The first byte where `a` and `b` differ (the shorter length if one is the other's
/// start), and the end of what differs: past the last differing byte when both are as
/// long, else the end of `b`.
fn differing(a: &[u8], b: &[u8]) -> std::ops::Range<u64> {
    let start = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let end = if a.len() == b.len() {
        a.iter()
            .zip(b)
            .rposition(|(x, y)| x != y)
            .map_or(start, |i| i + 1)
    } else {
        b.len()
    };
    start as u64..end as u64
}

#[test]
fn an_edit_stored_from_the_chunks_around_it_is_the_whole_content_stored_anew() {
    let Fixture { cas, .. } = &fixture_with(ChunkParams {
        min: 512,
        avg: 2048,
        max: 8192,
    });
    let mut rng = Rng(0x5eed_ed17);
    for case in 0..150u64 {
        let len = INLINE_MAX + 1 + rng.below(120 * KIB as u64) as usize;
        let before = data(1000 + case, len);
        let Content::Manifest { hash, size } = cas.put_bytes(S, &before).unwrap() else {
            panic!("{len} bytes are stored as a manifest");
        };
        let mut after = before.clone();
        for _ in 0..1 + rng.below(3) {
            match rng.below(4) {
                0 => after.truncate(rng.below(after.len() as u64 + 1) as usize),
                1 => after.resize(after.len() + rng.below(20 * KIB as u64) as usize, 0),
                _ => {
                    let at = rng.below(after.len() as u64 + 4096) as usize;
                    let most = if rng.below(2) == 0 { 16 } else { 30_000 };
                    let n = 1 + rng.below(most) as usize;
                    if after.len() < at + n {
                        after.resize(at + n, 0);
                    }
                    after[at..at + n].copy_from_slice(&data(5000 + case, n));
                }
            }
        }
        let exact = differing(&before, &after);
        // A range wider than what differs must give the same content too.
        let wider = exact.start.saturating_sub(rng.below(5000))
            ..if exact.end < after.len() as u64 && after.len() == before.len() {
                (exact.end + rng.below(5000)).min(after.len() as u64)
            } else {
                exact.end
            };
        let whole = cas.put_bytes(S, &after).unwrap();
        for changed in [exact, wider] {
            let edited = cas
                .put_edited(
                    S,
                    hash,
                    size,
                    after.len() as u64,
                    changed.clone(),
                    |at, buf| {
                        buf.copy_from_slice(&after[at as usize..at as usize + buf.len()]);
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(
                edited,
                whole,
                "case {case}: {len} bytes, now {}, changed {changed:?}",
                after.len()
            );
        }
        if !whole.is_empty() {
            assert_eq!(read_range(cas, &[whole], 0, after.len()), after);
        }
    }
}

#[test]
fn a_one_byte_edit_cuts_and_stores_only_the_chunks_around_it() {
    let f = fixture();
    let mut all = data(21, 16 * MIB);
    let Content::Manifest { hash, size } = f.cas.put_bytes(S, &all).unwrap() else {
        panic!("16 MiB is a manifest");
    };
    all[8 * MIB] ^= 0xff;
    let read = std::cell::Cell::new(0u64);
    let edited = f
        .cas
        .put_edited(
            S,
            hash,
            size,
            size,
            8 * MIB as u64..8 * MIB as u64 + 1,
            |at, buf| {
                read.set(read.get() + buf.len() as u64);
                buf.copy_from_slice(&all[at as usize..at as usize + buf.len()]);
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(edited, f.cas.put_bytes(S, &all).unwrap());
    // The chunk holding the edit and what the chunker reads ahead to cut it: a few
    // chunks at most, never the file.
    assert!(
        read.get() <= 4 * CHUNK_PARAMS.max as u64,
        "{} bytes read to store a 1-byte edit",
        read.get()
    );
}
