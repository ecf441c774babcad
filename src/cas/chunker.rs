//! Content-defined chunking (FastCDC 2020) of byte slices and of streams.

use std::io::{self, Read};

use bytes::Bytes;
use fastcdc::v2020::FastCDC;

/// FastCDC size bounds in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkParams {
    /// No chunk (but the last) is shorter.
    pub min: u32,
    /// Expected chunk size.
    pub avg: u32,
    /// No chunk is longer.
    pub max: u32,
}

/// The chunk sizes this node writes (chosen by measurement: see the module docs of `cas`).
pub(crate) const CHUNK_PARAMS: ChunkParams = ChunkParams {
    min: 256 * 1024,
    avg: 1024 * 1024,
    max: 4 * 1024 * 1024,
};

/// Bytes read from a file per refill of the stream chunker (a multiple of `max`).
const STREAM_BUFFER: usize = 16 * 1024 * 1024;

/// Cuts `data` into chunks; the chunks concatenate to `data`.
pub(crate) fn chunk_slice(data: &[u8], p: ChunkParams) -> impl Iterator<Item = &[u8]> + '_ {
    FastCDC::new(data, p.min, p.avg, p.max).map(move |c| &data[c.offset..c.offset + c.length])
}

/// Cuts a stream into the same chunks `chunk_slice` gives for its whole contents,
/// holding at most `STREAM_BUFFER` bytes at a time.
pub(crate) struct StreamChunker<R> {
    source: R,
    params: ChunkParams,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    eof: bool,
}

impl<R: Read> StreamChunker<R> {
    /// Chunks everything `source` yields until end of file.
    pub(crate) fn new(source: R, params: ChunkParams) -> Self {
        assert!(STREAM_BUFFER > params.max as usize);
        StreamChunker {
            source,
            params,
            buf: Vec::with_capacity(STREAM_BUFFER),
            start: 0,
            eof: false,
        }
    }

    /// Moves the unconsumed tail to the front and reads until the buffer is full or EOF.
    fn refill(&mut self) -> io::Result<()> {
        self.buf.drain(..self.start);
        self.start = 0;
        let mut len = self.buf.len();
        self.buf.resize(STREAM_BUFFER, 0);
        while len < STREAM_BUFFER {
            match self.source.read(&mut self.buf[len..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(len);
        Ok(())
    }

    /// The length of the next chunk cut from the unconsumed bytes, if it is certain
    /// (it ends before the buffered data does, or the source is exhausted).
    fn next_cut(&self) -> Option<usize> {
        let rest = &self.buf[self.start..];
        if rest.is_empty() {
            return None;
        }
        let p = self.params;
        let chunk = FastCDC::new(rest, p.min, p.avg, p.max).next()?;
        // A cut at the end of a partial buffer might move once more data is seen.
        (chunk.length < rest.len() || self.eof).then_some(chunk.length)
    }

    /// The next chunk, `None` at end of stream.
    pub(crate) fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let len = match self.next_cut() {
            Some(len) => len,
            None if self.eof => return Ok(None),
            None => {
                self.refill()?;
                match self.next_cut() {
                    Some(len) => len,
                    None => return Ok(None),
                }
            }
        };
        let chunk = Bytes::copy_from_slice(&self.buf[self.start..self.start + len]);
        self.start += len;
        Ok(Some(chunk))
    }
}
