//! Storing a file's chunks while it is being written front to back, so that committing
//! it cuts and stores only what follows the last certain cut instead of the whole file.
//!
//! FastCDC cuts depend only on the bytes since the previous cut, so a chunk cut from a
//! prefix of the file is the chunk a cut of the whole file gives, as long as that prefix
//! does not change. The owner promises that by calling [`PutAhead::written`] only for
//! bytes it will not write again, and by dropping the `PutAhead` otherwise.
//!
//! Once a prefix of the file is stored as chunks, the owner may free it from the file
//! ([`PutAhead::free_stored`]): a large copy then holds its bytes once in the data dir,
//! not twice, and [`PutAhead::read_exact_at`] reads the freed prefix from its chunks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use iroh_blobs::api::TempTag;
use parking_lot::{Condvar, Mutex};

use crate::ids::Hash;

use super::chunker::StreamChunker;
use super::{store, Cas, CasError, PUT_IN_FLIGHT};

/// Bytes written front to back before chunks are stored ahead: below this, a commit
/// stores the file faster than a worker would start.
const AHEAD_MIN: u64 = 8 << 20;
/// Stored bytes gathered before they are freed from the file, to keep hole punches few.
const FREE_MIN: u64 = 4 << 20;
/// Workers running at once per content store; each holds up to ~48 MiB (its cutting
/// buffer and the chunks being imported), and files beyond these are stored at commit.
pub(crate) const MAX_WORKERS: usize = 4;

/// Chunks of one file stored ahead of its commit (see the module docs). Dropping it stops
/// the work.
pub struct PutAhead {
    cas: Cas,
    /// The file, until the worker takes it.
    file: Option<File>,
    shared: Arc<Shared>,
    started: bool,
    /// The file's bytes `[0, freed)` are holes: their chunks hold them.
    freed: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// The file's bytes `[0, written)` are final: the worker may read up to here.
    written: u64,
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
}

impl State {
    /// Whether nothing more happens until more bytes are written: the worker waits at
    /// the end of the final bytes with no import running, or it failed.
    fn settled(&self) -> bool {
        self.failed || (self.idle && self.read == self.written && self.in_flight == 0)
    }
}

impl PutAhead {
    /// Chunks of `file`, which is empty and will be written front to back.
    pub(crate) fn new(cas: &Cas, file: File) -> Self {
        PutAhead {
            cas: cas.clone(),
            file: Some(file),
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            started: false,
            freed: 0,
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
        if end >= AHEAD_MIN {
            if let Some(file) = self.file.take() {
                self.started = self.start(file).is_ok();
            }
        }
    }

    fn start(&self, file: File) -> io::Result<()> {
        let slot = Slot::take(&self.cas)?;
        let reader = Reader {
            file,
            shared: self.shared.clone(),
            pos: 0,
        };
        let (cas, shared) = (self.cas.clone(), self.shared.clone());
        // A thread of its own, not the runtime's blocking pool: it waits for the writer
        // for as long as the file stays open, and a full pool must not stall a commit.
        std::thread::Builder::new()
            .name("put-ahead".into())
            .spawn(move || {
                let _slot = slot;
                run(cas, reader, shared)
            })?;
        Ok(())
    }

    /// Waits until the worker has read every final byte and stored every chunk it cut,
    /// or failed; the chunks (hash, length) stored from the file's start, `None` when no
    /// worker started. After a failure they are a prefix of the file's chunks, which
    /// cutting the rest of the file from their end completes.
    pub(crate) fn settled(&self) -> Option<Vec<(Hash, u64)>> {
        if !self.started {
            return None;
        }
        let mut st = self.shared.state.lock();
        while !st.settled() {
            self.shared.changed.wait(&mut st);
        }
        Some(chunk_list(&st.chunks))
    }

    /// Frees the stored prefix from `file` (the file being stored) once enough of it
    /// gathered. Where the file system cannot punch holes, the file keeps its bytes.
    pub(crate) fn free_stored(&mut self, file: &File) {
        let stored = self.shared.state.lock().stored;
        if stored < self.freed + FREE_MIN {
            return;
        }
        if punch_hole(file, self.freed, stored - self.freed).is_ok() {
            self.freed = stored;
        }
    }

    /// Fills `buf` with `file`'s bytes at `offset`, those freed from it read from their
    /// chunks.
    pub(crate) fn read_exact_at(
        &self,
        file: &File,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), CasError> {
        let below = usize::try_from(self.freed.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (stored, rest) = buf.split_at_mut(below);
        self.read_stored(stored, offset)?;
        file.read_exact_at(rest, offset + below as u64)
            .map_err(CasError::io("read staging file"))
    }

    /// Writes the freed prefix back into `file` from its chunks, so that the file holds
    /// every byte again (before the owner drops this and writes anywhere).
    pub(crate) fn restore(&mut self, file: &File) -> Result<(), CasError> {
        self.each_stored(0, self.freed, |start, bytes| {
            file.write_all_at(bytes, start)
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

/// The worker: cuts what the reader yields and imports each chunk, a few at once.
fn run(cas: Cas, reader: Reader, shared: Arc<Shared>) {
    let mut chunker = StreamChunker::new(reader, cas.inner.params);
    for index in 0.. {
        let chunk = match chunker.next_chunk() {
            Ok(Some(chunk)) => chunk,
            // The reader never ends the stream: it fails once stopped.
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
        let (blobs, shared) = (cas.blobs(), shared.clone());
        cas.inner.rt.spawn(async move {
            let len = chunk.len() as u64;
            let added = store::add(&blobs, chunk).await;
            let mut st = shared.state.lock();
            st.in_flight -= 1;
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
            drop(st);
            shared.changed.notify_all();
        });
    }
    let mut st = shared.state.lock();
    st.failed |= !st.stop;
    drop(st);
    shared.changed.notify_all();
}

/// The file's final bytes as a stream that waits for more instead of ending.
struct Reader {
    file: File,
    shared: Arc<Shared>,
    pos: u64,
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let end = {
            let mut st = self.shared.state.lock();
            loop {
                if st.stop {
                    return Err(io::Error::other("stored ahead no longer"));
                }
                if self.pos < st.written {
                    break;
                }
                st.idle = true;
                self.shared.changed.notify_all();
                self.shared.changed.wait(&mut st);
            }
            st.idle = false;
            st.written
        };
        let want = buf.len().min((end - self.pos) as usize);
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "staging file shorter than written",
            ));
        }
        self.pos += n as u64;
        self.shared.state.lock().read = self.pos;
        Ok(n)
    }
}
