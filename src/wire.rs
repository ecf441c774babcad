//! Length-prefixed prost framing shared by the control socket and the peer protocol:
//! each message is a u32 big-endian length, then that many bytes of its encoding.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream failed, or closed in the middle of a frame.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A frame is larger than the limit of its channel.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The announced or encoded size.
        size: usize,
        /// The channel's limit.
        limit: usize,
    },
    /// A frame body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// Most bytes of a frame body allocated before they arrive: a length prefix is a claim,
/// so memory grows with the bytes actually received, not with the claim.
pub const READ_STEP: usize = 64 * 1024;

/// Reads one framed message of at most `limit` bytes; `Ok(None)` on a clean end of
/// stream before a frame starts. An oversized length is refused before reading the body.
pub async fn read_frame<M, R>(reader: &mut R, limit: usize) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    let Some(size) = read_header(reader, limit).await? else {
        return Ok(None);
    };
    read_body(reader, size).await.map(Some)
}

/// Reads a frame's length prefix, refusing a length over `limit`; `Ok(None)` on a clean
/// end of stream before it starts.
pub async fn read_header<R>(reader: &mut R, limit: usize) -> Result<Option<usize>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            n => filled += n,
        }
    }
    let size = u32::from_be_bytes(header) as usize;
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    Ok(Some(size))
}

/// Reads and decodes a frame body of `size` bytes (its length prefix already read),
/// growing the buffer as bytes arrive (at most [`READ_STEP`] ahead of them).
pub async fn read_body<M, R>(reader: &mut R, size: usize) -> Result<M, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    let mut body = Vec::with_capacity(size.min(READ_STEP));
    while body.len() < size {
        let want = (size - body.len()).min(READ_STEP);
        let start = body.len();
        body.resize(start + want, 0);
        reader.read_exact(&mut body[start..]).await?;
    }
    Ok(M::decode(body.as_slice())?)
}

/// Writes one framed message of at most `limit` bytes and flushes it.
pub async fn write_frame<M, W>(writer: &mut W, message: &M, limit: usize) -> Result<(), FrameError>
where
    M: Message,
    W: AsyncWrite + Unpin,
{
    let size = message.encoded_len();
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    let mut frame = Vec::with_capacity(4 + size);
    frame.extend_from_slice(&(size as u32).to_be_bytes());
    message.encode(&mut frame).map_err(std::io::Error::other)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::proto::control::{
        request, response, CreateRequest, HistoryEntry, HistoryResponse, Request, Response,
        StatusRequest,
    };

    use super::*;

    const LIMIT: usize = 64 * 1024;

    #[tokio::test]
    async fn requests_and_responses_round_trip_through_frames() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let requests = [
            Request {
                kind: Some(request::Kind::Status(StatusRequest {})),
            },
            Request {
                kind: Some(request::Kind::Create(CreateRequest {
                    name: "docs".into(),
                })),
            },
        ];
        let sent = requests.clone();
        let writer = tokio::spawn(async move {
            for r in &sent {
                write_frame(&mut a, r, LIMIT).await.unwrap();
            }
        });
        for r in &requests {
            let got: Request = read_frame(&mut b, LIMIT).await.unwrap().unwrap();
            assert_eq!(&got, r);
        }
        writer.await.unwrap();
        assert_eq!(read_frame::<Request, _>(&mut b, LIMIT).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_reading_the_body() {
        let header = ((LIMIT + 1) as u32).to_be_bytes();
        let mut input: &[u8] = &header;
        let err = read_frame::<Request, _>(&mut input, LIMIT)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { size, .. } if size == LIMIT + 1));
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_before_writing() {
        let entry = HistoryEntry {
            op: "x".repeat(1024),
            ..Default::default()
        };
        let response = Response {
            kind: Some(response::Kind::History(HistoryResponse {
                entries: vec![entry; LIMIT / 1024 + 1],
                ..Default::default()
            })),
        };
        let mut out = Vec::new();
        let err = write_frame(&mut out, &response, LIMIT).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert!(out.is_empty());
    }

    /// A reader that yields `data` and then ends, recording the largest buffer it was
    /// asked to fill.
    struct Probe {
        data: std::io::Cursor<Vec<u8>>,
        largest: usize,
    }

    impl AsyncRead for Probe {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.largest = self.largest.max(buf.remaining());
            std::pin::Pin::new(&mut self.data).poll_read(cx, buf)
        }
    }

    #[tokio::test]
    async fn a_huge_claimed_length_allocates_only_as_the_bytes_arrive() {
        let limit = 8 * 1024 * 1024;
        let mut frame = (limit as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[0; 10]);
        let mut probe = Probe {
            data: std::io::Cursor::new(frame),
            largest: 0,
        };
        let err = read_frame::<Request, _>(&mut probe, limit)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Io(_)), "{err}");
        assert!(
            probe.largest <= READ_STEP,
            "a buffer of {} bytes was allocated for 10 that arrived",
            probe.largest
        );
    }

    #[tokio::test]
    async fn a_garbage_body_is_malformed() {
        let mut frame = 3u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0xff, 0xff, 0xff]);
        let mut input: &[u8] = &frame;
        let err = read_frame::<Request, _>(&mut input, LIMIT)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_a_clean_end() {
        for cut in [&[0u8, 0][..], &[0, 0, 0, 9, 1, 2][..]] {
            let mut input: &[u8] = cut;
            let err = read_frame::<Request, _>(&mut input, LIMIT)
                .await
                .unwrap_err();
            assert!(matches!(err, FrameError::Io(_)), "{err}");
        }
    }
}
