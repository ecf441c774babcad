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

/// Longest chunk a manifest may name, written or received: the largest chunk this node
/// cuts, so a peer's manifest cannot make a reader or a patch allocate more per chunk.
pub const MAX_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// The chunk sizes this node writes (chosen by measurement: see the module docs of `cas`).
pub(crate) const CHUNK_PARAMS: ChunkParams = ChunkParams {
    min: 256 * 1024,
    avg: 1024 * 1024,
    max: MAX_CHUNK_BYTES as u32,
};

// Every chunk the chunker cuts must fit in a manifest.
const _: () = assert!(CHUNK_PARAMS.max as u64 == MAX_CHUNK_BYTES);

/// Bytes buffered by the stream chunker, in units of the largest chunk.
const STREAM_BUFFER_CHUNKS: usize = 4;

/// Cuts `data` into chunks; the chunks concatenate to `data`.
pub(crate) fn chunk_slice(data: &[u8], p: ChunkParams) -> impl Iterator<Item = &[u8]> + '_ {
    FastCDC::new(data, p.min, p.avg, p.max).map(move |c| &data[c.offset..c.offset + c.length])
}

/// Cuts a stream into the same chunks `chunk_slice` gives for its whole contents,
/// holding `STREAM_BUFFER_CHUNKS * max` bytes at a time.
pub(crate) struct StreamChunker<R> {
    source: R,
    params: ChunkParams,
    /// Fixed-size buffer; `buf[start..len]` holds the unconsumed bytes.
    buf: Vec<u8>,
    start: usize,
    len: usize,
    eof: bool,
}

impl<R: Read> StreamChunker<R> {
    /// Chunks everything `source` yields until end of file.
    pub(crate) fn new(source: R, params: ChunkParams) -> Self {
        StreamChunker {
            source,
            params,
            buf: vec![0; STREAM_BUFFER_CHUNKS * params.max as usize],
            start: 0,
            len: 0,
            eof: false,
        }
    }

    /// Moves the unconsumed tail to the front and reads until the buffer is full or EOF.
    fn refill(&mut self) -> io::Result<()> {
        self.buf.copy_within(self.start..self.len, 0);
        self.len -= self.start;
        self.start = 0;
        while self.len < self.buf.len() {
            match self.source.read(&mut self.buf[self.len..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The length of the next chunk cut from the unconsumed bytes, if it is certain
    /// (it ends before the buffered data does, or the source is exhausted).
    fn next_cut(&self) -> Option<usize> {
        let rest = &self.buf[self.start..self.len];
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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::{chunk_slice, ChunkParams, StreamChunker};

    const SMALL: ChunkParams = ChunkParams {
        min: 1024,
        avg: 4096,
        max: 16 * 1024,
    };

    /// A reader that returns at most 777 bytes per call.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(777).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn stream_chunker_cuts_where_slice_chunker_cuts_despite_short_reads() {
        let mut data = vec![0u8; 300 * 1024];
        blake3::Hasher::new().finalize_xof().fill(&mut data);
        let expected: Vec<&[u8]> = chunk_slice(&data, SMALL).collect();
        assert!(expected.len() > 20);
        let mut chunker = StreamChunker::new(Trickle(&data), SMALL);
        let mut got = Vec::new();
        while let Some(chunk) = chunker.next_chunk().unwrap() {
            assert!(chunk.len() <= SMALL.max as usize);
            got.push(chunk);
        }
        assert_eq!(got.len(), expected.len());
        assert!(got.iter().zip(&expected).all(|(g, e)| g[..] == e[..]));
    }
}
