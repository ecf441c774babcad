//! Control socket framing: each message is a u32 big-endian length, then that many bytes
//! of a prost-encoded `lattice.control.Request` or `Response`.

use std::path::{Path, PathBuf};

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest encoded control message, checked when writing and before reading a body.
pub const MAX_CONTROL_FRAME: usize = 4 * 1024 * 1024;

/// File name of the control socket inside the data dir.
const SOCKET_FILE: &str = "control.sock";

/// The control socket path for `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Why a control frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The socket failed, or closed in the middle of a frame.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// A frame is larger than [`MAX_CONTROL_FRAME`].
    #[error("control message of {0} bytes exceeds the limit of {MAX_CONTROL_FRAME}")]
    TooLarge(usize),
    /// A frame body is not a valid message.
    #[error("malformed control message: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// Reads one framed message; `Ok(None)` on a clean end of stream before a frame starts.
pub async fn read_frame<M, R>(reader: &mut R) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
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
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(M::decode(body.as_slice())?))
}

/// Writes one framed message and flushes it.
pub async fn write_frame<M, W>(writer: &mut W, message: &M) -> Result<(), FrameError>
where
    M: Message,
    W: AsyncWrite + Unpin,
{
    let len = message.encoded_len();
    if len > MAX_CONTROL_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode(&mut frame).map_err(std::io::Error::other)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use lattice_mount::proto::control::{
        request, response, CreateRequest, HistoryEntry, HistoryResponse, Request, Response,
        StatusRequest,
    };

    use super::*;

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
                write_frame(&mut a, r).await.unwrap();
            }
        });
        for r in &requests {
            let got: Request = read_frame(&mut b).await.unwrap().unwrap();
            assert_eq!(&got, r);
        }
        writer.await.unwrap();
        assert_eq!(read_frame::<Request, _>(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_reading_the_body() {
        let header = ((MAX_CONTROL_FRAME + 1) as u32).to_be_bytes();
        let mut input: &[u8] = &header;
        let err = read_frame::<Request, _>(&mut input).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(n) if n == MAX_CONTROL_FRAME + 1));
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_before_writing() {
        let entry = HistoryEntry {
            op: "x".repeat(1024),
            ..Default::default()
        };
        let response = Response {
            kind: Some(response::Kind::History(HistoryResponse {
                entries: vec![entry; MAX_CONTROL_FRAME / 1024 + 1],
            })),
        };
        let mut out = Vec::new();
        let err = write_frame(&mut out, &response).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn a_garbage_body_is_malformed() {
        let mut frame = 3u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0xff, 0xff, 0xff]);
        let mut input: &[u8] = &frame;
        let err = read_frame::<Request, _>(&mut input).await.unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_a_clean_end() {
        for cut in [&[0u8, 0][..], &[0, 0, 0, 9, 1, 2][..]] {
            let mut input: &[u8] = cut;
            let err = read_frame::<Request, _>(&mut input).await.unwrap_err();
            assert!(matches!(err, FrameError::Io(_)), "{err}");
        }
    }
}
