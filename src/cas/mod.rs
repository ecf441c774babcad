//! The content store (CAS): file content as blake3-addressed blobs in an iroh-blobs
//! `FsStore` at `DATA_DIR/blobs`, behind a blocking API for FUSE threads.
//!
//! Format. Content of at most [`INLINE_MAX`] bytes is [`Content::Inline`] and never
//! touches the store. Larger content is cut with FastCDC 2020 ([`chunker`]), each chunk
//! stored as a raw blob (its address is the blake3 of its bytes), then a manifest blob,
//! the prost encoding of `proto::fs::Manifest { chunks: [{hash, size}] }`, whose hash
//! and the total size form [`Content::Manifest`]. Equal chunks are stored once.
//!
//! Chunk sizes (min 256 KiB, avg 1 MiB, max 4 MiB) were chosen by measurement on a
//! 2-core machine: every chunk is a separate import, file and read request in
//! iroh-blobs, so per-chunk overhead dominates below ~256 KiB, while a 1-byte edit
//! in a 256 MiB file still re-stores only 1–2 chunks (~1–2 MiB) plus the manifest.
//!
//! Retention. Each manifest put here is rooted by a persistent tag
//! `lattice/manifest/<hex>` pointing at a hash sequence `[manifest, chunks...]`, so
//! the manifest and its chunks survive garbage collection until [`Cas::collect`]
//! drops it with the last store's ownership of the manifest ([`gc`]); nothing is
//! deleted unless a collection is asked for.
//!
//! Ownership. Every blob imported or fetched for a store gets the tag
//! `lm/<store hex>/live/<blob hex>` ([`Cas::claim`]). A blob is served to a member of a
//! store only if that store owns it ([`Cas::owns`]): a manifest naming a hash gives no
//! right to it, so a writer of one store cannot read another store's blobs by naming
//! them. Equal content in two stores is stored once and tagged by each that imported or
//! fetched it; content already held for one store is not claimed by another merely
//! because the other's files name it.
//!
//! Durability. [`Cas::sync`] makes every blob put so far durable: the chunk, manifest
//! and sequence files are fsynced, the data directory is fsynced and the store's
//! metadata database has committed (`sync_db`), so the content survives `kill -9` and
//! power loss. Until then the blobs of a put are pending; each store of intentions runs one before every durable
//! commit, so no durable intention ever names content a crash could lose.
//!
//! Reads load whole chunks into a bounded LRU: straight from the blob's data file when
//! its blake3 matches its address (or the file is unchanged since it was written or
//! hashed: [`intact`]), else through the store, which verifies against the bao
//! outboard. Parsed manifests go into another LRU. Sequential reads load each chunk
//! once. A missing or short blob is an error, never zeros.
//!
//! Absent blobs. Content replicated from peers may refer to blobs not fetched yet. A
//! read or export that needs one asks the fetch hook installed with
//! [`Cas::set_fetcher`] and waits for the blob ([`fetch`]); [`Cas::missing`] lists
//! what content still lacks, for eager fetching; a [`Backlog`] keeps a store's count of
//! it (files, bytes, arrival rate) up to date as versions apply and blobs arrive.

mod ahead;
mod cache;
mod chunker;
mod content;
mod error;
mod fetch;
mod gc;
mod intact;
pub(crate) mod manifest;
pub(crate) mod patch;
mod store;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iroh_blobs::api::blobs::BlobStatus;
use iroh_blobs::api::TempTag;
use iroh_blobs::store::fs::options::{Options, PathOptions};
use iroh_blobs::store::fs::FsStore;
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

pub use ahead::{AheadHook, PutAhead};
pub use content::{Content, INLINE_MAX};
pub use error::CasError;
pub(crate) use fetch::Backlog;
pub use fetch::{FetchRequest, Fetcher, Need, Progress, READ_WAIT};
pub use gc::{GcReport, Space, PUT_GRACE};
pub(crate) use store::to_iroh;

use crate::budget::CacheBudget;
use crate::ids::{Hash, StoreId};
use cache::Lru;
pub use chunker::MAX_CHUNK_BYTES;
use chunker::{chunk_slice, ChunkParams, StreamChunker, CHUNK_PARAMS};
use intact::Intact;
use manifest::Manifest;

/// Chunk imports running at once while a file is stored.
const PUT_IN_FLIGHT: usize = 8;
/// Chunk fetches running at once while content is exported.
const EXPORT_IN_FLIGHT: usize = 4;

/// Chunks past the one a sequential read is in that are read ahead: about as many as
/// the kernel's readahead window of a mount by root holds requests (four of 1 MiB), so
/// the chunks its next requests need are loaded while it copies. A count, not bytes, so
/// that a manifest of tiny chunks cannot make one read start thousands of loads.
const READ_AHEAD: usize = 4;

/// The content store: clone it freely (one store inside). Its methods block, so call
/// them from plain threads (FUSE threads, `spawn_blocking`), never from a tokio worker.
#[derive(Clone)]
pub struct Cas {
    inner: Arc<Inner>,
}

struct Inner {
    store: FsStore,
    rt: Handle,
    paths: PathOptions,
    params: ChunkParams,
    manifests: Mutex<Lru<Hash, Arc<Manifest>>>,
    chunks: Mutex<Lru<Hash, Bytes>>,
    /// Data files known to hold their blob, read without hashing.
    intact: Intact,
    /// Chunks being read ahead, so a sequential reader starts each fetch once.
    prefetching: Mutex<HashSet<Hash>>,
    /// Notified when a read-ahead ends, for a reader waiting for its chunk.
    prefetched: Condvar,
    /// The network layer's hook for fetching absent blobs.
    fetcher: RwLock<Option<Fetcher>>,
    /// The network layer's hook for chunks stored ahead of a commit.
    ahead_hook: RwLock<Option<AheadHook>>,
    /// How long a read waits for one absent blob.
    read_wait: Mutex<Duration>,
    /// Blobs put since the last [`Cas::sync`], whose files and metadata may not be
    /// durable yet.
    unsynced: Mutex<Vec<Hash>>,
    /// Held while a sync runs, so a second caller waits for the first to finish.
    syncing: Mutex<()>,
    /// [`PutAhead`] workers running.
    ahead_workers: AtomicUsize,
    /// Read by puts, claims and local reads, written by content collection ([`gc`]).
    turn: Arc<tokio::sync::RwLock<()>>,
    /// When the blob collector runs.
    gate: Arc<gc::Gate>,
    /// Blobs recently put, kept by collections for a while.
    recent: Mutex<gc::Recent>,
    /// How long every put is kept by collections.
    put_grace: Mutex<Duration>,
}

impl Cas {
    /// Opens (creating) the iroh-blobs FsStore at `dir`; `rt` runs its async work.
    pub fn open(dir: &Path, rt: Handle) -> Result<Cas, CasError> {
        Self::open_within(dir, rt, &CacheBudget::default())
    }

    /// [`Cas::open`] with its chunk and manifest caches sized from `budget`.
    pub fn open_within(dir: &Path, rt: Handle, budget: &CacheBudget) -> Result<Cas, CasError> {
        Self::open_with(dir, rt, CHUNK_PARAMS, budget)
    }

    /// Opens the store at `dir`, cutting new content with `params`.
    fn open_with(
        dir: &Path,
        rt: Handle,
        params: ChunkParams,
        budget: &CacheBudget,
    ) -> Result<Cas, CasError> {
        std::fs::create_dir_all(dir).map_err(CasError::io("create blob store directory"))?;
        let turn = Arc::new(tokio::sync::RwLock::new(()));
        let gate = Arc::new(gc::Gate::default());
        let mut options = Options::new(dir);
        options.gc = Some(gc::config(gate.clone(), turn.clone()));
        let paths = options.path.clone();
        let store = rt
            .block_on(FsStore::load_with_opts(dir.join("blobs.db"), options))
            .map_err(|e| CasError::Open(format!("{}: {e:#}", dir.display())))?;
        Ok(Cas {
            inner: Arc::new(Inner {
                store,
                rt,
                intact: Intact::new(paths.clone(), budget.intact_files()),
                paths,
                params,
                manifests: Mutex::new(Lru::new(budget.manifest_chunks())),
                chunks: Mutex::new(Lru::new(budget.chunk_bytes())),
                prefetching: Mutex::new(HashSet::new()),
                prefetched: Condvar::new(),
                fetcher: RwLock::new(None),
                ahead_hook: RwLock::new(None),
                read_wait: Mutex::new(READ_WAIT),
                unsynced: Mutex::new(Vec::new()),
                syncing: Mutex::new(()),
                ahead_workers: AtomicUsize::new(0),
                turn,
                gate,
                recent: Mutex::new(gc::Recent::default()),
                put_grace: Mutex::new(PUT_GRACE),
            }),
        })
    }

    /// Stores the whole file at `path` (read as a stream) for store `owner`: inline if
    /// <= INLINE_MAX, else FastCDC chunks + a manifest blob, reusing the chunks `ahead`
    /// stored of it. Durable after the next [`Cas::sync`].
    pub fn put_file(
        &self,
        owner: StoreId,
        path: &Path,
        ahead: Option<&mut PutAhead>,
    ) -> Result<Content, CasError> {
        let mut file = File::open(path).map_err(CasError::io("open file to store"))?;
        // Stored chunks are never inline, and their bytes may be gone from the file.
        let stored = match ahead {
            Some(a) => a.settled()?.unwrap_or_default(),
            None => Vec::new(),
        };
        if stored.is_empty() {
            let mut head = Vec::with_capacity(INLINE_MAX + 1);
            (&mut file)
                .take(INLINE_MAX as u64 + 1)
                .read_to_end(&mut head)
                .map_err(CasError::io("read file to store"))?;
            if head.len() <= INLINE_MAX {
                // A copy of exactly its length: the read buffer's capacity would stay
                // allocated for as long as the content is held.
                return Ok(Content::Inline(Bytes::copy_from_slice(&head)));
            }
        }
        let skip = stored.iter().map(|(_, len)| len).sum();
        file.seek(SeekFrom::Start(skip))
            .map_err(CasError::io("read file to store"))?;
        let mut chunker = StreamChunker::new(file, self.inner.params);
        self.put_chunks(
            owner,
            stored,
            || {
                chunker
                    .next_chunk()
                    .map_err(CasError::io("read file to store"))
            },
            Vec::new,
        )
    }

    /// Stores `data` for store `owner`: inline if <= INLINE_MAX, else chunks + a manifest
    /// blob. Durable after the next [`Cas::sync`].
    pub fn put_bytes(&self, owner: StoreId, data: &[u8]) -> Result<Content, CasError> {
        if data.len() <= INLINE_MAX {
            return Ok(Content::Inline(Bytes::copy_from_slice(data)));
        }
        let mut chunks = chunk_slice(data, self.inner.params);
        self.put_chunks(
            owner,
            Vec::new(),
            || Ok(chunks.next().map(Bytes::copy_from_slice)),
            Vec::new,
        )
    }

    /// Stores content of `size` bytes for store `owner` that equals the manifest content
    /// `base` (`base_size` bytes) except in `changed`, and is base's after it only when
    /// `changed` ends before `size` (then `size` is `base_size`). `read` fills a buffer
    /// with the new content at an offset. Only the chunks around `changed` are cut and
    /// stored: base's chunks before the one holding `changed.start` are kept, and so are
    /// its chunks from the first new cut past `changed.end` that is one of its own. The
    /// result is what [`Cas::put_file`] of the whole content gives: a chunk's cut depends
    /// only on its own bytes, and both cuttings start anew at a cut they share.
    pub fn put_edited(
        &self,
        owner: StoreId,
        base: Hash,
        base_size: u64,
        size: u64,
        changed: Range<u64>,
        read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> Result<Content, CasError> {
        let mut source = At {
            read,
            pos: 0,
            end: size,
        };
        if size <= INLINE_MAX as u64 {
            let mut data = Vec::with_capacity(size as usize);
            source
                .read_to_end(&mut data)
                .map_err(CasError::io("read content to store"))?;
            return self.put_bytes(owner, &data);
        }
        let chunks: Vec<(Hash, u64, u64)> = self
            .manifest(Some(owner), base, base_size)?
            .chunks()
            .collect();
        let first = chunks
            .iter()
            .rposition(|&(_, start, _)| start <= changed.start)
            .unwrap_or(0);
        source.pos = chunks.get(first).map_or(0, |&(_, start, _)| start);
        let before = chunks[..first]
            .iter()
            .map(|&(h, _, len)| (h, len))
            .collect();
        let resync = changed.end < size && size == base_size;
        let mut at = source.pos;
        let mut chunker = StreamChunker::new(source, self.inner.params);
        let after = std::cell::RefCell::new(None);
        self.put_chunks(
            owner,
            before,
            || {
                if after.borrow().is_some() {
                    return Ok(None);
                }
                let chunk = chunker
                    .next_chunk()
                    .map_err(CasError::io("read content to store"))?;
                if let Some(c) = &chunk {
                    at += c.len() as u64;
                    if resync && at >= changed.end {
                        if let Ok(i) = chunks.binary_search_by_key(&at, |&(_, start, _)| start) {
                            *after.borrow_mut() = Some(i);
                        }
                    }
                }
                Ok(chunk)
            },
            || {
                after.take().map_or_else(Vec::new, |i| {
                    chunks[i..].iter().map(|&(h, _, len)| (h, len)).collect()
                })
            },
        )
    }

    /// Imports the chunks `next` yields (several at once), then the manifest of the
    /// chunks `stored` (already in the store), then them, then the chunks `then` gives
    /// once `next` is done (already in the store too); all of it belongs to store `owner`.
    fn put_chunks(
        &self,
        owner: StoreId,
        stored: Vec<(Hash, u64)>,
        mut next: impl FnMut() -> Result<Option<Bytes>, CasError>,
        then: impl FnOnce() -> Vec<(Hash, u64)>,
    ) -> Result<Content, CasError> {
        let inner = &self.inner;
        let _turn = inner.turn.blocking_read();
        let mut pending: VecDeque<JoinHandle<Result<(TempTag, u64), CasError>>> = VecDeque::new();
        let mut added = Vec::new();
        while let Some(chunk) = next()? {
            let cas = self.clone();
            pending.push_back(inner.rt.spawn(async move {
                let len = chunk.len() as u64;
                Ok((cas.add(chunk).await?, len))
            }));
            if pending.len() >= PUT_IN_FLIGHT {
                added.push(self.join(pending.pop_front().expect("queue is not empty"))?);
            }
        }
        for task in pending {
            added.push(self.join(task)?);
        }
        let manifest = Manifest::new(
            stored
                .into_iter()
                .chain(
                    added
                        .iter()
                        .map(|(tt, len)| (store::from_iroh(tt.hash()), *len)),
                )
                .chain(then()),
        )?;
        let size = manifest.size();
        let encoded = manifest.encode();
        if encoded.len() as u64 > manifest::MAX_MANIFEST_BYTES {
            return Err(CasError::BlobTooLarge {
                hash: Hash::of(&encoded),
                size: encoded.len() as u64,
            });
        }
        let blobs = self.blobs();
        let (manifest_tt, seq_tt, owned) = inner.rt.block_on(async {
            let manifest_tt = self.add(encoded.into()).await?;
            let hash = store::from_iroh(manifest_tt.hash());
            let chunks = manifest.chunks().map(|(h, _, _)| h);
            let seq_tt = store::root_manifest(&blobs, hash, chunks).await?;
            let owned: Vec<Hash> = std::iter::once(hash)
                .chain(manifest.chunks().map(|(h, _, _)| h))
                .collect();
            store::claim(&blobs, owner, &owned).await?;
            Ok::<_, CasError>((manifest_tt, seq_tt, owned))
        })?;
        let hash = store::from_iroh(manifest_tt.hash());
        inner.recent.lock().put(hash, owned);
        {
            let mut unsynced = inner.unsynced.lock();
            unsynced.extend(manifest.chunks().map(|(h, _, _)| h));
            unsynced.extend([hash, store::from_iroh(seq_tt.hash())]);
        }
        let parsed = Arc::new(manifest);
        let weight = parsed.len() as u64 + 1;
        inner.manifests.lock().insert(hash, parsed, weight);
        Ok(Content::Manifest { hash, size })
    }

    /// Makes every blob put so far durable: fsyncs their files and the data directory,
    /// then commits the store's metadata database. Content that callers record elsewhere
    /// (an intention) must be synced before that record is made durable, or a crash
    /// could keep the record and lose the blobs it names.
    pub fn sync(&self) -> Result<(), CasError> {
        let _turn = self.inner.syncing.lock();
        let hashes = std::mem::take(&mut *self.inner.unsynced.lock());
        if hashes.is_empty() {
            return Ok(());
        }
        let synced = store::sync_files(&self.inner.paths, &hashes).and_then(|()| {
            self.inner
                .rt
                .block_on(self.blobs().sync_db())
                .map_err(|e| CasError::Blobs(e.into()))
        });
        if synced.is_err() {
            self.inner.unsynced.lock().extend(hashes);
        }
        synced
    }

    /// Stores the chunks of the staging file `file` (empty, to be written front to back
    /// through [`PutAhead::write_at`], as content of store `owner` if given) while it is
    /// written; pass the result to [`Cas::put_file`].
    pub fn put_ahead(&self, file: File, owner: Option<StoreId>) -> PutAhead {
        PutAhead::new(self, file, owner)
    }

    /// Waits for a spawned store task.
    fn join<T>(&self, task: JoinHandle<Result<T, CasError>>) -> Result<T, CasError> {
        self.inner
            .rt
            .block_on(task)
            .map_err(|e| CasError::Blobs(iroh_blobs::api::Error::other(e)))?
    }

    /// Installs the hook told of chunks stored ahead of a commit.
    pub fn set_ahead_hook(&self, hook: AheadHook) {
        *self.inner.ahead_hook.write() = Some(hook);
    }

    /// Installs the hook that fetches absent blobs; reads and exports then wait for them.
    pub fn set_fetcher(&self, f: Fetcher) {
        *self.inner.fetcher.write() = Some(f);
    }

    /// Sets how long a read waits for one absent blob (default [`READ_WAIT`]).
    pub fn set_read_wait(&self, wait: Duration) {
        *self.inner.read_wait.lock() = wait;
    }

    /// Reads from a sequence of pieces (a ContentView) of store `store` at `offset` into
    /// `buf`; returns bytes read. Reads short only at the end of the content. Waits for
    /// absent blobs while a fetcher is installed.
    pub fn read(
        &self,
        store: StoreId,
        pieces: &[Content],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, CasError> {
        let mut done = 0;
        self.parts(store, pieces, offset, buf.len(), &mut |part| {
            buf[done..done + part.len()].copy_from_slice(&part);
            done += part.len();
        })?;
        Ok(done)
    }

    /// Up to `len` bytes of `pieces` of store `store` at `offset`, as [`Cas::read`]
    /// reads them: a range within one inline piece or one chunk is a slice of it, not
    /// a copy.
    pub fn read_bytes(
        &self,
        store: StoreId,
        pieces: &[Content],
        offset: u64,
        len: usize,
    ) -> Result<Bytes, CasError> {
        let mut parts = Vec::new();
        self.parts(store, pieces, offset, len, &mut |part| parts.push(part))?;
        Ok(match parts.as_slice() {
            [one] => one.clone(),
            _ => {
                let mut joined = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
                for part in &parts {
                    joined.extend_from_slice(part);
                }
                Bytes::from(joined)
            }
        })
    }

    /// Hands `part` the bytes of `pieces` from `offset` on, in order, up to `len` of
    /// them: each a slice of one inline piece or one chunk.
    fn parts(
        &self,
        store: StoreId,
        pieces: &[Content],
        offset: u64,
        len: usize,
        part: &mut dyn FnMut(Bytes),
    ) -> Result<(), CasError> {
        let mut done = 0usize;
        let mut base = 0u64;
        for piece in pieces {
            if done == len {
                break;
            }
            // Pieces are sized by their authors: offsets past u64::MAX are unaddressable.
            let piece_len = piece.len();
            let pos = offset.saturating_add(done as u64);
            let end = base.saturating_add(piece_len);
            if pos >= end {
                base = end;
                continue;
            }
            let within = pos - base;
            let want = (len - done).min(usize::try_from(end - pos).unwrap_or(usize::MAX));
            match piece {
                Content::Inline(bytes) => {
                    let from = within as usize;
                    part(bytes.slice(from..from + want));
                }
                Content::Manifest { hash, size } => {
                    self.manifest_parts(store, *hash, *size, within, want as u64, part)?
                }
            }
            done += want;
            base = end;
        }
        Ok(())
    }

    /// Hands `part` the `len` bytes from `offset` of the manifest content `hash` of
    /// `size` bytes, chunk by chunk.
    fn manifest_parts(
        &self,
        store: StoreId,
        hash: Hash,
        size: u64,
        offset: u64,
        len: u64,
        part: &mut dyn FnMut(Bytes),
    ) -> Result<(), CasError> {
        let manifest = self.manifest(Some(store), hash, size)?;
        let end = offset + len;
        for (chunk, start, len) in manifest.overlapping(offset, end) {
            let bytes = self.chunk(Some(store), chunk, len)?;
            let from = offset.max(start);
            let to = end.min(start + len);
            part(bytes.slice((from - start) as usize..(to - start) as usize));
        }
        // A read ending in the second half of a chunk is likely sequential: fetch the
        // next READ_AHEAD chunks.
        if let Some((_, start, len)) = manifest.overlapping(end - 1, end).next() {
            if end - start > len / 2 {
                let ahead = manifest.overlapping(start + len, manifest.size());
                for (chunk, _, len) in ahead.take(READ_AHEAD) {
                    self.prefetch(store, chunk, len);
                }
            }
        }
        Ok(())
    }

    /// Starts fetching chunk `hash` of `store` into the cache in the background, asking
    /// the fetcher for it if it is absent. A failure is dropped here: the read that needs
    /// the chunk fetches it again and reports it.
    fn prefetch(&self, store: StoreId, hash: Hash, len: u64) {
        if self.inner.chunks.lock().contains(&hash) || !self.inner.prefetching.lock().insert(hash) {
            return;
        }
        // Made before the task, so a task the runtime drops unrun still ends it.
        let done = Prefetched {
            cas: self.clone(),
            hash,
        };
        self.inner.rt.spawn_blocking(move || {
            let cas = &done.cas;
            let inner = &cas.inner;
            match cas.load(hash, Some(len)) {
                Ok(bytes) => inner.chunks.lock().insert(hash, bytes, len),
                Err(CasError::Absent { .. }) => {
                    let fetcher = inner.fetcher.read().clone();
                    if let Some(fetcher) = fetcher {
                        fetcher(FetchRequest {
                            store,
                            hashes: vec![store::to_iroh(hash)],
                        });
                    }
                }
                Err(_) => {}
            }
        });
    }

    /// The whole blob `hash` (`expected` bytes long when given). If it is absent and
    /// `store` is given, waits for the fetcher to bring it; the store verified every
    /// piece it wrote, so the blob's file is then read as intact.
    fn get(
        &self,
        store: Option<StoreId>,
        hash: Hash,
        expected: Option<u64>,
    ) -> Result<Bytes, CasError> {
        match (self.load(hash, expected), store) {
            (Err(CasError::Absent { .. }), Some(store)) => {
                let fetcher = self.inner.fetcher.read().clone();
                let wait = *self.inner.read_wait.lock();
                let blobs = self.blobs();
                fetch::wait_for(&self.inner.rt, &blobs, fetcher.as_ref(), wait, store, hash)?;
                self.inner.intact.written(hash);
                self.load(hash, expected)
            }
            (loaded, _) => loaded,
        }
    }

    /// The whole local blob `hash` (`expected` bytes long when given): from its data
    /// file when that is known intact or verifies against its address ([`intact`]),
    /// else through the store.
    fn load(&self, hash: Hash, expected: Option<u64>) -> Result<Bytes, CasError> {
        let _turn = self.inner.turn.blocking_read();
        match self.inner.intact.read(hash, expected) {
            Some(bytes) => Ok(bytes),
            None => self
                .inner
                .rt
                .block_on(store::fetch(&self.blobs(), hash, expected)),
        }
    }

    /// The parsed manifest `hash`, from the cache or the store (waiting for it as `get`).
    fn manifest(
        &self,
        store: Option<StoreId>,
        hash: Hash,
        size: u64,
    ) -> Result<Arc<Manifest>, CasError> {
        let cached = self.inner.manifests.lock().get(&hash);
        let manifest = match cached {
            Some(m) => m,
            None => {
                let bytes = self.get(store, hash, None)?;
                let m = Arc::new(Manifest::decode(hash, &bytes, size)?);
                let weight = m.len() as u64 + 1;
                self.inner.manifests.lock().insert(hash, m.clone(), weight);
                m
            }
        };
        if manifest.size() != size {
            return Err(CasError::Corrupt {
                hash,
                reason: format!(
                    "manifest holds {} bytes, content is {size}",
                    manifest.size()
                ),
            });
        }
        Ok(manifest)
    }

    /// The chunk `hash` of `len` bytes, from the cache or the store; when `store` is
    /// given, an absent chunk is fetched for it.
    pub(crate) fn chunk(
        &self,
        store: Option<StoreId>,
        hash: Hash,
        len: u64,
    ) -> Result<Bytes, CasError> {
        if let Some(bytes) = self.cached_chunk(hash) {
            return Ok(bytes);
        }
        let bytes = self.get(store, hash, Some(len))?;
        self.inner.chunks.lock().insert(hash, bytes.clone(), len);
        Ok(bytes)
    }

    /// Chunk `hash` from the cache, once a read-ahead of it under way has ended: a reader
    /// catching up with the read-ahead waits for it rather than load the chunk twice.
    fn cached_chunk(&self, hash: Hash) -> Option<Bytes> {
        let mut prefetching = self.inner.prefetching.lock();
        while prefetching.contains(&hash) {
            self.inner.prefetched.wait(&mut prefetching);
        }
        drop(prefetching);
        self.inner.chunks.lock().get(&hash)
    }

    /// Writes the full content of `pieces` of store `store` into the file at `path` (for
    /// a write handle's staging). Asks the fetcher for every absent blob at once, then
    /// waits for each as `read` does.
    pub fn export(&self, store: StoreId, pieces: &[Content], path: &Path) -> Result<(), CasError> {
        let fetcher = self.inner.fetcher.read().clone();
        if let Some(fetcher) = fetcher {
            let hashes = self.missing(pieces)?;
            if !hashes.is_empty() {
                fetcher(FetchRequest { store, hashes });
            }
        }
        let mut file = File::create(path).map_err(CasError::io("create export file"))?;
        for piece in pieces {
            match piece {
                Content::Inline(bytes) => file
                    .write_all(bytes)
                    .map_err(CasError::io("write export file"))?,
                Content::Manifest { hash, size } => {
                    let manifest = self.manifest(Some(store), *hash, *size)?;
                    let mut pending = VecDeque::new();
                    let mut chunks = manifest.chunks();
                    loop {
                        while pending.len() < EXPORT_IN_FLIGHT {
                            let Some((chunk, _, len)) = chunks.next() else {
                                break;
                            };
                            let cas = self.clone();
                            let task = self
                                .inner
                                .rt
                                .spawn_blocking(move || cas.load(chunk, Some(len)));
                            pending.push_back((chunk, len, task));
                        }
                        let Some((chunk, len, task)) = pending.pop_front() else {
                            break;
                        };
                        let bytes = match self.join(task) {
                            Err(CasError::Absent { .. }) => {
                                self.get(Some(store), chunk, Some(len))?
                            }
                            fetched => fetched?,
                        };
                        file.write_all(&bytes)
                            .map_err(CasError::io("write export file"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The blobs `pieces` need that the local store lacks: each manifest not complete
    /// locally, and the chunks not complete locally of each manifest that is. A manifest
    /// that does not decode or does not match its content's size is skipped (reading that
    /// content fails on its own); it never hides what the other pieces need.
    pub fn missing(&self, pieces: &[Content]) -> Result<Vec<iroh_blobs::Hash>, CasError> {
        Ok(self
            .needs(pieces)?
            .into_iter()
            .map(|n| store::to_iroh(n.hash))
            .collect())
    }

    /// What [`Cas::missing`] lists, each blob with the content bytes it stands for: a
    /// chunk its length, an absent manifest the whole content it describes.
    pub fn needs(&self, pieces: &[Content]) -> Result<Vec<Need>, CasError> {
        let mut out = Vec::new();
        for (hash, size) in manifests(pieces) {
            if !self.complete(&[hash])?[0] {
                out.push(Need {
                    hash,
                    bytes: size,
                    manifest: true,
                });
                continue;
            }
            let manifest = match self.manifest(None, hash, size) {
                Ok(m) => m,
                Err(e @ CasError::Corrupt { .. }) => {
                    tracing::warn!("skipping content whose manifest is unusable: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let chunks: Vec<(Hash, u64)> = manifest.chunks().map(|(h, _, l)| (h, l)).collect();
            let hashes: Vec<Hash> = chunks.iter().map(|(h, _)| *h).collect();
            let complete = self.complete(&hashes)?;
            out.extend(chunks.iter().zip(complete).filter(|(_, c)| !c).map(
                |((hash, bytes), _)| Need {
                    hash: *hash,
                    bytes: *bytes,
                    manifest: false,
                },
            ));
        }
        let mut seen = HashSet::new();
        out.retain(|n| seen.insert(n.hash));
        Ok(out)
    }

    /// (new chunk, base chunk, length) for patching: chunks of the manifests in `new`
    /// that are not local, each with the local chunk at the same offset and of the same
    /// length in the manifest at the same place in `old` (the file's previous content).
    /// Manifests not held locally are skipped.
    pub fn patch_bases(
        &self,
        old: &[Content],
        new: &[Content],
    ) -> Result<Vec<(Hash, Hash, u64)>, CasError> {
        let mut out = Vec::new();
        for ((old_hash, old_size), (new_hash, new_size)) in manifests(old).zip(manifests(new)) {
            if old_hash == new_hash || !self.complete(&[old_hash, new_hash])?.iter().all(|c| *c) {
                continue;
            }
            let before: HashMap<(u64, u64), Hash> = self
                .manifest(None, old_hash, old_size)?
                .chunks()
                .map(|(h, at, len)| ((at, len), h))
                .collect();
            let candidates: Vec<(Hash, Hash, u64)> = self
                .manifest(None, new_hash, new_size)?
                .chunks()
                .filter_map(|(h, at, len)| Some((h, *before.get(&(at, len))?, len)))
                .filter(|(h, base, _)| h != base)
                .collect();
            let news: Vec<Hash> = candidates.iter().map(|c| c.0).collect();
            let bases: Vec<Hash> = candidates.iter().map(|c| c.1).collect();
            let (have_new, have_base) = (self.complete(&news)?, self.complete(&bases)?);
            out.extend(
                candidates
                    .into_iter()
                    .zip(have_new.into_iter().zip(have_base))
                    .filter(|(_, (have_new, have_base))| !have_new && *have_base)
                    .map(|(pair, _)| pair),
            );
        }
        Ok(out)
    }

    /// The whole blob `hash` if the local store holds it; never waits for a fetch.
    pub fn local_blob(&self, hash: Hash) -> Result<Option<Bytes>, CasError> {
        match self.get(None, hash, None) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(CasError::Absent { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores `data` as one raw blob of store `owner` (a chunk rebuilt from a patch);
    /// returns its hash. Durable after the next [`Cas::sync`].
    pub fn put_blob(&self, owner: StoreId, data: Bytes) -> Result<Hash, CasError> {
        let _turn = self.inner.turn.blocking_read();
        let blobs = self.blobs();
        let hash = self.inner.rt.block_on(async {
            let tt = self.add(data).await?;
            let hash = store::from_iroh(tt.hash());
            store::claim(&blobs, owner, &[hash]).await?;
            Ok::<_, CasError>(hash)
        })?;
        self.inner.unsynced.lock().push(hash);
        self.inner.recent.lock().put(hash, vec![hash]);
        Ok(hash)
    }

    /// Remembers the data file of blob `hash` as intact if the store now holds the blob
    /// whole: call when a download of it ended (the store verified each piece it wrote
    /// against the blob's hash), so its first read does not hash it again.
    pub async fn downloaded(&self, hash: Hash) {
        let status = self.blobs().status(store::to_iroh(hash)).await;
        if matches!(status, Ok(BlobStatus::Complete { .. })) {
            self.inner.intact.written(hash);
        }
    }

    /// Records that the blobs `hashes` (fetched for store `owner`) belong to it.
    pub async fn claim(&self, owner: StoreId, hashes: &[Hash]) -> Result<(), CasError> {
        let _turn = self.inner.turn.read().await;
        store::claim(&self.blobs(), owner, hashes).await
    }

    /// Claims for store `owner` the local blobs `pieces` reference: each complete manifest
    /// that decodes and every complete chunk it lists; returns how many tags it set (a
    /// chunk shared by two manifests counts twice), durable on return. A manifest that is absent or unusable is skipped (logged).
    ///
    /// Only for the one-time upgrade of a store whose blobs were stored before ownership
    /// tags existed (`node::claim_untagged_content`): anywhere else a reference must never
    /// grant a blob, or a writer could read another store's content by naming it.
    pub(crate) fn claim_referenced(
        &self,
        owner: StoreId,
        pieces: &[Content],
    ) -> Result<u64, CasError> {
        let blobs = self.blobs();
        let mut claimed = 0;
        for (hash, size) in manifests(pieces) {
            if !self.complete(&[hash])?[0] {
                continue;
            }
            let manifest = match self.manifest(None, hash, size) {
                Ok(m) => m,
                Err(
                    e @ (CasError::Corrupt { .. }
                    | CasError::ChunkTooLarge { .. }
                    | CasError::SizeOverflow { .. }
                    | CasError::BlobTooLarge { .. }),
                ) => {
                    tracing::warn!("not claiming content whose manifest is unusable: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let chunks: Vec<Hash> = manifest.chunks().map(|(h, _, _)| h).collect();
            let complete = self.complete(&chunks)?;
            let mut owned: Vec<Hash> = std::iter::once(hash)
                .chain(
                    chunks
                        .into_iter()
                        .zip(complete)
                        .filter(|(_, c)| *c)
                        .map(|(h, _)| h),
                )
                .collect();
            owned.sort_unstable_by_key(|h| h.0);
            owned.dedup();
            self.inner
                .rt
                .block_on(store::claim(&blobs, owner, &owned))?;
            claimed += owned.len() as u64;
        }
        self.inner
            .rt
            .block_on(blobs.sync_db())
            .map_err(iroh_blobs::api::Error::from)?;
        Ok(claimed)
    }

    /// Whether blob `hash` was imported or fetched for store `owner`.
    pub async fn owns(&self, owner: StoreId, hash: Hash) -> Result<bool, CasError> {
        store::owns(&self.blobs(), owner, hash).await
    }

    /// Whether each of `hashes` is complete in the local store.
    fn complete(&self, hashes: &[Hash]) -> Result<Vec<bool>, CasError> {
        let blobs = self.blobs();
        self.inner.rt.block_on(async {
            let mut out = Vec::with_capacity(hashes.len());
            for &h in hashes {
                let status = blobs
                    .status(store::to_iroh(h))
                    .await
                    .map_err(iroh_blobs::api::Error::from)?;
                out.push(matches!(status, BlobStatus::Complete { .. }));
            }
            Ok(out)
        })
    }

    /// Number and total bytes of the complete blobs in the store.
    pub fn stats(&self) -> Result<(u64 /*blobs*/, u64 /*bytes*/), CasError> {
        let blobs = self.blobs();
        self.inner.rt.block_on(store::stats(&blobs))
    }

    /// Adds one raw blob as [`store::add`] does, remembering its data file as intact.
    async fn add(&self, data: Bytes) -> Result<TempTag, CasError> {
        Ok(self.added(store::add(&self.blobs(), data).await?))
    }

    /// [`Cas::add`] through [`store::add_unhurried`], for work nobody waits on at once.
    async fn add_unhurried(&self, data: Bytes) -> Result<TempTag, CasError> {
        Ok(self.added(store::add_unhurried(&self.blobs(), data).await?))
    }

    /// Remembers the data file of the blob just added as intact.
    fn added(&self, tt: TempTag) -> TempTag {
        self.inner.intact.written(store::from_iroh(tt.hash()));
        tt
    }

    /// The iroh-blobs store API, for serving and fetching blobs over the network.
    pub fn blobs(&self) -> iroh_blobs::api::Store {
        iroh_blobs::api::Store::from(self.inner.store.clone())
    }

    /// Commits the store's metadata and stops its actor; later calls on any clone fail.
    pub fn shutdown(&self) -> Result<(), CasError> {
        let blobs = self.blobs();
        self.inner.rt.block_on(async {
            blobs
                .sync_db()
                .await
                .map_err(iroh_blobs::api::Error::from)?;
            blobs.shutdown().await.map_err(iroh_blobs::api::Error::from)
        })?;
        Ok(())
    }
}

/// The manifest pieces of `pieces`, as (hash, size).
/// Content read through a positioned read function, from `pos` to `end`.
struct At<F> {
    read: F,
    pos: u64,
    end: u64,
}

impl<F: FnMut(u64, &mut [u8]) -> io::Result<()>> Read for At<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        (self.read)(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn manifests(pieces: &[Content]) -> impl Iterator<Item = (Hash, u64)> + '_ {
    pieces.iter().filter_map(|p| match p {
        Content::Manifest { hash, size } => Some((*hash, *size)),
        Content::Inline(_) => None,
    })
}

/// Ends the read-ahead of chunk `hash` when dropped, even by a panic or with its task
/// never run: forgets it and wakes the readers waiting for it.
struct Prefetched {
    cas: Cas,
    hash: Hash,
}

impl Drop for Prefetched {
    fn drop(&mut self) {
        let inner = &self.cas.inner;
        inner.prefetching.lock().remove(&self.hash);
        inner.prefetched.notify_all();
    }
}
