//! Control socket framing: [`lattice_mount::wire`] frames of a prost-encoded
//! `lattice.control.Request` or `Response`, at most [`MAX_CONTROL_FRAME`] bytes.

use std::path::{Path, PathBuf};

use lattice_mount::wire;
pub use lattice_mount::wire::FrameError;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest encoded control message, checked when writing and before reading a body.
pub const MAX_CONTROL_FRAME: usize = 4 * 1024 * 1024;

/// File name of the control socket inside the data dir.
const SOCKET_FILE: &str = "control.sock";

/// The control socket path for `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Reads one control message; `Ok(None)` on a clean end of stream.
pub async fn read_frame<M, R>(reader: &mut R) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    wire::read_frame(reader, MAX_CONTROL_FRAME).await
}

/// Writes one control message and flushes it.
pub async fn write_frame<M, W>(writer: &mut W, message: &M) -> Result<(), FrameError>
where
    M: Message,
    W: AsyncWrite + Unpin,
{
    wire::write_frame(writer, message, MAX_CONTROL_FRAME).await
}

#[cfg(test)]
#[path = "control_fuzz.rs"]
mod fuzz;
