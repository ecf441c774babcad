//! Storing a file's chunks while it is being written front to back, so that committing
//! it cuts and stores only what follows the last certain cut instead of the whole file.
//!
//! FastCDC cuts depend only on the bytes since the previous cut, so a chunk cut from a
//! prefix of the file is the chunk a cut of the whole file gives, as long as that prefix
//! does not change. The owner promises that by writing through [`PutAhead::write_at`]
//! (or calling [`PutAhead::written`]) only bytes it will not write again, and by dropping
//! the `PutAhead` otherwise.
//!
//! Writes at the end of what is written are queued in memory for the worker instead of
//! written to the file: a large copy into the mount then costs no file write and read
//! back per byte. They are copied once, into the open segment of [`SEGMENT`] bytes; a
//! full segment is sealed and queued, and the worker cuts its chunks as views of it.
//! Queued bytes stay until their chunks are stored, and are written to the file whenever
//! the file must hold them (at a commit, for the tail not stored yet; before a write
//! elsewhere). Once a prefix of the file is stored as chunks it is freed:
//! punched out of the file and dropped from the queue, so a large copy holds its bytes
//! once in the data dir, and [`PutAhead::read_exact_at`] reads that prefix from its
//! chunks.
//!
//! A file of a store tells the [`AheadHook`] (installed by the network layer) of each
//! chunk as it is stored, in file order, so the store's members can fetch it before
//! the file is committed.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use iroh_blobs::api::TempTag;
use parking_lot::{Condvar, Mutex};

use crate::ids::{Hash, StoreId};

use super::chunker::{Buffers, Segment, Segments, StreamChunker};
use super::{store, Cas, CasError, PUT_IN_FLIGHT};

/// Bytes written front to back before chunks are stored ahead: below this, a commit
/// stores the file faster than a worker would start.
pub(crate) const AHEAD_MIN: u64 = 8 << 20;
/// Stored bytes gathered before they are freed from the file, to keep hole punches few.
pub(crate) const FREE_MIN: u64 = 4 << 20;
/// Most bytes written and not yet stored as chunks when a segment opens: a write that
/// needs a new segment beyond this waits for the worker. Well above a chunk's maximum,
/// so the worker always has bytes to go on with while a writer waits.
pub(crate) const QUEUE_MAX: u64 = 32 << 20;
/// Bytes a segment holds: each is copied into once and cut in place, and only the tail
/// of one that its chunks do not end on is copied again, into the next one's room.
pub(crate) const SEGMENT: usize = 16 << 20;
/// Spare segments kept for reuse, so a long copy does not touch new memory per segment.
const SPARE_MAX: usize = 2;
/// Workers running at once per content store; each holds up to ~100 MiB (its queue, its
/// open and spare segments, of which the chunks being imported are views), and files
/// beyond these are stored at commit.
pub(crate) const MAX_WORKERS: usize = 4;

/// The hook told of chunks of a file of a store, in file order, once stored while the
/// file is still written; like the fetch hook, it must return at once.
pub type AheadHook = Arc<dyn Fn(StoreId, Vec<Hash>) + Send + Sync>;

/// Chunks of one file stored ahead of its commit (see the module docs). Dropping it stops
/// the work.
pub struct PutAhead {
    cas: Cas,
    /// The file being stored; the worker reads a clone of it.
    file: File,
    shared: Arc<Shared>,
    started: bool,
    /// The bytes `[0, freed)` are read from their chunks: the file may not hold them.
    freed: u64,
    /// The segment written bytes are copied into, not yet queued.
    open: Option<Open>,
    /// Room before a segment's bytes: the longest chunk.
    room: usize,
    /// The store the file belongs to, whose members hear of its chunks.
    owner: Option<StoreId>,
}

/// A segment being written: its bytes `seg[room..]` are the file's at `at`.
struct Open {
    at: u64,
    seg: Vec<u8>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// The file's bytes `[0, written)` are final.
    written: u64,
    /// Where the open segment's bytes start, if there is one: the worker may read up to
    /// here (or to `written`).
    open: Option<u64>,
    /// How far the worker has read.
    read: u64,
    /// Whether the worker waits for more bytes, having started the import of every chunk
    /// it cut.
    idle: bool,
    /// Imports started and not finished.
    in_flight: usize,
    /// Stored chunks from the file's start, in order, with their temp tags.
    chunks: Vec<(TempTag, u64)>,
    /// The total length of `chunks`.
    stored: u64,
    /// Chunks stored out of order, by index, until those before them are.
    early: BTreeMap<usize, (TempTag, u64)>,
    /// The owner dropped this: the worker ends.
    stop: bool,
    /// A read or an import failed: only `chunks`, stored before it, is used.
    failed: bool,
    /// Sealed segments of written bytes the file does not hold, in order and not
    /// overlapping; what is neither here, in the open segment nor below
    /// `PutAhead::freed` is in the file.
    queue: VecDeque<Queued>,
    /// Segments dropped from the queue, for reuse once no chunk holds them.
    spare: Vec<Arc<Vec<u8>>>,
}

/// Bytes written at `at` and held in memory: `seg[from..]`.
struct Queued {
    at: u64,
    seg: Arc<Vec<u8>>,
    from: usize,
}

impl Queued {
    fn bytes(&self) -> &[u8] {
        &self.seg[self.from..]
    }

    fn end(&self) -> u64 {
        self.at + self.bytes().len() as u64
    }
}

impl State {
    /// Queues the open segment, if any, whose bytes follow `room` bytes, for the worker.
    fn seal(&mut self, open: &mut Option<Open>, room: usize) {
        self.open = None;
        if let Some(Open { at, seg }) = open.take().filter(|o| o.seg.len() > room) {
            self.queue.push_back(Queued {
                at,
                seg: Arc::new(seg),
                from: room,
            });
        }
    }

    /// Where the bytes the worker may read end: the open segment is not for it yet.
    fn ready(&self) -> u64 {
        self.open.unwrap_or(self.written)
    }

    /// Whether nothing more happens until more bytes are written: the worker waits at
    /// the end of the final bytes with no import running, or it failed.
    fn settled(&self) -> bool {
        self.failed || (self.idle && self.read == self.written && self.in_flight == 0)
    }

    /// Copies the queued bytes at `pos` into the start of `buf`, returning how many; or,
    /// if no entry holds `pos`, where the next one (or the open segment) starts: the file
    /// holds the bytes up to there.
    fn copy_queued(&self, pos: u64, buf: &mut [u8]) -> Result<usize, u64> {
        let i = self.queue.partition_point(|q| q.end() <= pos);
        match self.queue.get(i) {
            Some(q) if q.at <= pos => {
                let from = &q.bytes()[(pos - q.at) as usize..];
                let n = from.len().min(buf.len());
                buf[..n].copy_from_slice(&from[..n]);
                Ok(n)
            }
            Some(q) => Err(q.at),
            None => Err(self.open.filter(|&at| at > pos).unwrap_or(u64::MAX)),
        }
    }

    /// Drops the queue entries wholly stored as chunks.
    fn drop_stored(&mut self) {
        while self.queue.front().is_some_and(|q| q.end() <= self.stored) {
            let q = self.queue.pop_front().expect("the front entry exists");
            self.retire(q.seg);
        }
    }

    /// Keeps `seg` for reuse if there is room.
    fn retire(&mut self, seg: Arc<Vec<u8>>) {
        if self.spare.len() < SPARE_MAX {
            self.spare.push(seg);
        }
    }

    /// A segment with `room` bytes before its (no) bytes: a spare one no chunk holds, or
    /// a new one.
    fn segment(&mut self, room: usize) -> Vec<u8> {
        let reused = self
            .spare
            .iter()
            .position(|s| Arc::strong_count(s) == 1)
            .and_then(|i| Arc::try_unwrap(self.spare.swap_remove(i)).ok());
        match reused {
            Some(mut seg) if seg.len() >= room => {
                seg.truncate(room);
                seg
            }
            _ => {
                let mut seg = Vec::with_capacity(room + SEGMENT);
                seg.resize(room, 0);
                seg
            }
        }
    }
}

impl PutAhead {
    /// Chunks of `file`, which is empty and will be written front to back (as content of
    /// store `owner`, if given).
    pub(crate) fn new(cas: &Cas, file: File, owner: Option<StoreId>) -> Self {
        PutAhead {
            cas: cas.clone(),
            file,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            started: false,
            freed: 0,
            open: None,
            room: cas.inner.params.max as usize,
            owner,
        }
    }

    /// The file's bytes `[0, end)` are final; starts the worker once there are
    /// [`AHEAD_MIN`] of them.
    pub fn written(&mut self, end: u64) {
        {
            let mut st = self.shared.state.lock();
            st.written = st.written.max(end);
        }
        self.shared.changed.notify_all();
        if end >= AHEAD_MIN && !self.started {
            self.started = self.start().is_ok();
        }
    }

    /// Writes `data` at `offset` of the file: queued for the worker when it lands at the
    /// end of what is written, else into the file (with the queue, so that the file holds
    /// every byte not stored). `[offset, offset + data.len())` is then final.
    pub(crate) fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if !(self.started && !data.is_empty() && self.queue(data, offset)) {
            self.spill()?;
            self.file.write_all_at(data, offset)?;
        }
        self.written(end);
        self.free_stored(FREE_MIN);
        Ok(())
    }

    /// Copies `data` written at `offset` into the open segment if that is the end of
    /// what is written and the worker goes on, opening one (and waiting while the queue
    /// is full) when there is none or it has no room; whether it did.
    fn queue(&mut self, data: &[u8], offset: u64) -> bool {
        if data.len() > SEGMENT {
            return false;
        }
        let mut st = self.shared.state.lock();
        if offset != st.written {
            return false;
        }
        let fits = |o: &Open| {
            o.at + (o.seg.len() - self.room) as u64 == offset
                && o.seg.len() + data.len() <= self.room + SEGMENT
        };
        if self.open.as_ref().is_some_and(|o| !fits(o)) {
            st.seal(&mut self.open, self.room);
            self.shared.changed.notify_all();
        }
        if self.open.is_none() {
            while !st.failed && st.written.saturating_sub(st.stored) >= QUEUE_MAX {
                self.shared.changed.wait(&mut st);
            }
            if st.failed {
                return false;
            }
            self.open = Some(Open {
                at: offset,
                seg: st.segment(self.room),
            });
            st.open = Some(offset);
        }
        drop(st);
        self.open
            .as_mut()
            .expect("a segment is open")
            .seg
            .extend_from_slice(data);
        true
    }

    /// Bytes the queue and the open segment hold.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> u64 {
        let st = self.shared.state.lock();
        let open = self.open.as_ref().map_or(0, |o| o.seg.len() - self.room);
        st.queue.iter().map(|q| q.bytes().len() as u64).sum::<u64>() + open as u64
    }

    /// Writes the queued bytes and the open segment's into the file (those not freed)
    /// and empties both.
    fn spill(&mut self) -> io::Result<()> {
        let mut st = self.shared.state.lock();
        st.seal(&mut self.open, self.room);
        // The worker, waiting at the open segment, reads the file from now on.
        self.shared.changed.notify_all();
        while let Some(q) = st.queue.front() {
            let from = self.freed.clamp(q.at, q.end());
            self.file
                .write_all_at(&q.bytes()[(from - q.at) as usize..], from)?;
            let q = st.queue.pop_front().expect("the front entry exists");
            st.retire(q.seg);
        }
        Ok(())
    }

    fn start(&self) -> io::Result<()> {
        let slot = Slot::take(&self.cas)?;
        let file = self.file.try_clone()?;
        let source = Source {
            file,
            shared: self.shared.clone(),
            pos: 0,
            room: self.room,
            buffers: Buffers::new(self.cas.inner.params),
        };
        let (cas, shared, owner) = (self.cas.clone(), self.shared.clone(), self.owner);
        // A thread of its own, not the runtime's blocking pool: it waits for the writer
        // for as long as the file stays open, and a full pool must not stall a commit.
        std::thread::Builder::new()
            .name("put-ahead".into())
            .spawn(move || {
                let _slot = slot;
                run(cas, source, shared, owner)
            })?;
        Ok(())
    }

    /// Waits until the worker has read every final byte and stored every chunk it cut,
    /// or failed; the chunks (hash, length) stored from the file's start, `None` when no
    /// worker started. The file then holds every byte after them: after a failure they
    /// are a prefix of the file's chunks, which cutting the rest of the file from their
    /// end completes.
    pub(crate) fn settled(&mut self) -> Result<Option<Vec<(Hash, u64)>>, CasError> {
        if !self.started {
            return Ok(None);
        }
        let chunks = {
            let mut st = self.shared.state.lock();
            st.seal(&mut self.open, self.room);
            self.shared.changed.notify_all();
            while !st.settled() {
                self.shared.changed.wait(&mut st);
            }
            chunk_list(&st.chunks)
        };
        self.free_stored(0);
        self.spill()
            .map_err(CasError::io("write queued bytes to the staging file"))?;
        Ok(Some(chunks))
    }

    /// Frees the stored prefix, once at least `min` bytes of it gathered: drops it from
    /// the queue and punches it out of the file. Where the file system cannot punch
    /// holes, the file keeps its bytes.
    fn free_stored(&mut self, min: u64) {
        let to = {
            let mut st = self.shared.state.lock();
            if st.stored < self.freed + min {
                return;
            }
            st.drop_stored();
            st.stored
        };
        if to > self.freed {
            let _ = punch_hole(&self.file, self.freed, to - self.freed);
            self.freed = to;
        }
    }

    /// Fills `buf` with the file's bytes at `offset`: freed ones from their chunks,
    /// queued ones from the queue.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), CasError> {
        let below = usize::try_from(self.freed.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (stored, mut rest) = buf.split_at_mut(below);
        self.read_stored(stored, offset)?;
        let mut pos = offset + below as u64;
        while !rest.is_empty() {
            let queued = match self.copy_open(pos, rest) {
                Some(n) => Ok(n),
                None => self.shared.state.lock().copy_queued(pos, rest),
            };
            let n = match queued {
                Ok(n) => n,
                Err(next) => {
                    let n = usize::try_from(next - pos).map_or(rest.len(), |n| n.min(rest.len()));
                    self.file
                        .read_exact_at(&mut rest[..n], pos)
                        .map_err(CasError::io("read staging file"))?;
                    n
                }
            };
            rest = &mut rest[n..];
            pos += n as u64;
        }
        Ok(())
    }

    /// Copies the open segment's bytes at `pos` into the start of `buf`, returning how
    /// many, if it holds `pos`.
    fn copy_open(&self, pos: u64, buf: &mut [u8]) -> Option<usize> {
        let o = self.open.as_ref()?;
        let bytes = &o.seg[self.room..];
        let from = bytes.get(usize::try_from(pos.checked_sub(o.at)?).ok()?..)?;
        let n = from.len().min(buf.len());
        (n > 0).then(|| {
            buf[..n].copy_from_slice(&from[..n]);
            n
        })
    }

    /// Writes the queued bytes and the freed prefix back into the file, so that it holds
    /// every byte again (before the owner drops this and writes anywhere).
    pub(crate) fn restore(&mut self) -> Result<(), CasError> {
        self.spill().map_err(CasError::io("restore staging file"))?;
        self.each_stored(0, self.freed, |start, bytes| {
            self.file
                .write_all_at(bytes, start)
                .map_err(CasError::io("restore staging file"))
        })?;
        self.freed = 0;
        Ok(())
    }

    /// Fills `buf` with the stored bytes at `offset`, all below `freed`.
    fn read_stored(&self, buf: &mut [u8], offset: u64) -> Result<(), CasError> {
        let end = offset + buf.len() as u64;
        self.each_stored(offset, end, |start, bytes| {
            let (from, to) = (offset.max(start), end.min(start + bytes.len() as u64));
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
            Ok(())
        })
    }

    /// Hands `f` each stored chunk overlapping the file's bytes `[from, to)`, with its
    /// offset in the file, in order.
    fn each_stored(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), CasError>,
    ) -> Result<(), CasError> {
        if from >= to {
            return Ok(());
        }
        let chunks = chunk_list(&self.shared.state.lock().chunks);
        let mut start = 0;
        for (hash, len) in chunks {
            if start >= to {
                break;
            }
            if start + len > from {
                f(start, &self.cas.chunk(None, hash, len)?)?;
            }
            start += len;
        }
        Ok(())
    }
}

/// Hashes and lengths of stored chunks.
fn chunk_list(chunks: &[(TempTag, u64)]) -> Vec<(Hash, u64)> {
    chunks
        .iter()
        .map(|(tt, len)| (store::from_iroh(tt.hash()), *len))
        .collect()
}

/// Deallocates `len` bytes of `file` at `offset`, keeping its size; they read as zeros.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for PutAhead {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.changed.notify_all();
    }
}

/// One of the store's [`MAX_WORKERS`] worker places, given back when dropped.
struct Slot(Cas);

impl Slot {
    fn take(cas: &Cas) -> io::Result<Slot> {
        let running = &cas.inner.ahead_workers;
        if running.fetch_add(1, Ordering::AcqRel) >= MAX_WORKERS {
            running.fetch_sub(1, Ordering::AcqRel);
            return Err(io::Error::other("every worker place is taken"));
        }
        Ok(Slot(cas.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inner.ahead_workers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The worker: cuts what the source yields and imports each chunk, a few at once, and
/// tells the hook of `owner`'s chunks as they are stored in order.
fn run(cas: Cas, source: Source, shared: Arc<Shared>, owner: Option<StoreId>) {
    let hook = owner.and_then(|o| Some((o, cas.inner.ahead_hook.read().clone()?)));
    let mut chunker = StreamChunker::over(source, cas.inner.params);
    for index in 0.. {
        let chunk = match chunker.next_chunk() {
            Ok(Some(chunk)) => chunk,
            // The source never ends the stream: it fails once stopped.
            Ok(None) | Err(_) => break,
        };
        {
            let mut st = shared.state.lock();
            while st.in_flight >= PUT_IN_FLIGHT && !st.stop {
                shared.changed.wait(&mut st);
            }
            if st.stop {
                break;
            }
            st.in_flight += 1;
        }
        let (adder, shared, hook) = (cas.clone(), shared.clone(), hook.clone());
        cas.inner.rt.spawn(async move {
            let len = chunk.len() as u64;
            let added = adder.add_unhurried(chunk).await;
            let mut st = shared.state.lock();
            st.in_flight -= 1;
            let before = st.chunks.len();
            match added {
                Ok(tt) => {
                    let st = &mut *st;
                    st.early.insert(index, (tt, len));
                    while let Some(next) = st.early.remove(&st.chunks.len()) {
                        st.stored += next.1;
                        st.chunks.push(next);
                    }
                }
                Err(_) => st.failed = true,
            }
            let stored: Vec<Hash> = st.chunks[before..]
                .iter()
                .map(|(tt, _)| store::from_iroh(tt.hash()))
                .collect();
            // Told under the lock: the hook hears the chunks in file order, and before
            // `settled` can report them.
            if let Some((owner, hook)) = hook.filter(|_| !stored.is_empty()) {
                hook(owner, stored);
            }
            drop(st);
            shared.changed.notify_all();
        });
    }
    let mut st = shared.state.lock();
    st.failed |= !st.stop;
    drop(st);
    shared.changed.notify_all();
}

/// The file's final bytes as segments that wait for more instead of ending: the queue's
/// sealed segments as they are, the bytes only the file holds read into buffers.
struct Source {
    file: File,
    shared: Arc<Shared>,
    /// Where the next segment starts in the file.
    pos: u64,
    /// Room before a queued segment's bytes.
    room: usize,
    /// Buffers for the bytes read from the file.
    buffers: Buffers,
}

impl Segments for Source {
    fn next_segment(&mut self, tail: &[u8]) -> io::Result<Option<Segment>> {
        let mut st = self.shared.state.lock();
        loop {
            if st.stop {
                return Err(io::Error::other("stored ahead no longer"));
            }
            if self.pos < st.ready() {
                break;
            }
            st.idle = true;
            self.shared.changed.notify_all();
            self.shared.changed.wait(&mut st);
        }
        st.idle = false;
        let i = st.queue.partition_point(|q| q.end() <= self.pos);
        let start = self.room - tail.len();
        if let Some(q) = st.queue.get_mut(i).filter(|q| q.at == self.pos) {
            // Sealed and seen by nobody else until now: the tail goes into its room.
            if let Some(seg) = Arc::get_mut(&mut q.seg) {
                seg[start..self.room].copy_from_slice(tail);
                let seg = Segment {
                    buf: q.seg.clone(),
                    start,
                    end: q.seg.len(),
                };
                self.pos = q.end();
                st.read = self.pos;
                return Ok(Some(seg));
            }
        }
        // Bytes only the file holds, up to the next queued segment; or a queued segment
        // that cannot take the tail, copied.
        let until = match st.queue.get(i) {
            Some(q) if q.at <= self.pos => q.end(),
            Some(q) => q.at,
            None => st.ready(),
        };
        let n = usize::try_from(until - self.pos)
            .map_or(self.buffers.size(), |n| n.min(self.buffers.size()));
        let (file, pos) = (&self.file, self.pos);
        let seg = self
            .buffers
            .fill(tail, |buf| match st.copy_queued(pos, &mut buf[..n]) {
                Ok(k) => Ok(k),
                Err(_) => {
                    drop(st);
                    file.read_exact_at(&mut buf[..n], pos).map(|()| n)
                }
            })?;
        self.pos += (seg.end - self.room) as u64;
        self.shared.state.lock().read = self.pos;
        Ok(Some(seg))
    }
}
