//! The client side of the control socket: one request, one response (a join also
//! streams progress before its answer; a watch streams changes until it ends).

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use lattice_mount::proto::control::{
    request, response, ConflictsRequest, ConflictsResponse, CreateRequest, CreateResponse,
    DownRequest, HistoryRequest, HistoryResponse, JoinProgress, JoinRequest, Request,
    ResolveRequest, ResolveResponse, Response, RestoreRequest, RestoreResponse, StatusRequest,
    StatusResponse, VerifyRequest, VerifyResponse, WatchEvent, WatchRequest, WatchStarted,
};
use tokio::net::UnixStream;

use crate::control::{read_frame, socket_path, write_frame};
use crate::daemon;
use crate::error::CliError;

/// How long a request may take, including connecting, before the CLI gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest silence from the daemon while a join runs.
const JOIN_SILENCE: Duration = Duration::from_secs(120);
/// How long `down` waits for the daemon to exit after it acknowledged the request.
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks the daemon for its status.
pub fn status(data_dir: &Path) -> Result<StatusResponse, CliError> {
    match call(data_dir, request::Kind::Status(StatusRequest {}))? {
        response::Kind::Status(s) => Ok(s),
        other => Err(unexpected(&other)),
    }
}

/// Asks the daemon to create a store.
pub fn create(data_dir: &Path, name: &str) -> Result<CreateResponse, CliError> {
    let request = request::Kind::Create(CreateRequest {
        name: name.to_string(),
    });
    match call(data_dir, request)? {
        response::Kind::Create(c) => Ok(c),
        other => Err(unexpected(&other)),
    }
}

/// Asks the daemon for the history of `path` (a path in the mount, absolute or relative
/// to the current directory), or with `deleted` for the deleted files under it. Returns
/// the path as sent (relative to the mount root).
pub fn history(
    data_dir: &Path,
    path: &Path,
    deleted: bool,
) -> Result<(String, HistoryResponse), CliError> {
    let sent = in_mount(data_dir, path)?;
    let request = request::Kind::History(HistoryRequest {
        path: sent.clone(),
        deleted,
    });
    match call(data_dir, request)? {
        response::Kind::History(h) => Ok((sent, h)),
        other => Err(unexpected(&other)),
    }
}

/// Asks the daemon to prove who wrote each live version of `path` (a path in the
/// mount, absolute or relative to the current directory).
pub fn verify(data_dir: &Path, path: &Path) -> Result<VerifyResponse, CliError> {
    let request = request::Kind::Verify(VerifyRequest {
        path: in_mount(data_dir, path)?,
    });
    match call(data_dir, request)? {
        response::Kind::Verify(v) => Ok(v),
        other => Err(unexpected(&other)),
    }
}

/// Asks the daemon to restore a version of `path` (in place, or at `to`); both are
/// paths in the mount, absolute or relative to the current directory.
pub fn restore(
    data_dir: &Path,
    path: &Path,
    version: Option<String>,
    at_ms: Option<u64>,
    to: Option<&Path>,
) -> Result<RestoreResponse, CliError> {
    let request = request::Kind::Restore(RestoreRequest {
        path: in_mount(data_dir, path)?,
        version: version.unwrap_or_default(),
        at_ms,
        to: to
            .map(|t| in_mount(data_dir, t))
            .transpose()?
            .unwrap_or_default(),
    });
    match call(data_dir, request)? {
        response::Kind::Restore(r) => Ok(r),
        other => Err(unexpected(&other)),
    }
}

/// Asks the daemon for the conflicted files of `store` (every store when `None`).
pub fn conflicts(data_dir: &Path, store: Option<&str>) -> Result<ConflictsResponse, CliError> {
    let request = request::Kind::Conflicts(ConflictsRequest {
        store: store.unwrap_or_default().to_string(),
    });
    match call(data_dir, request)? {
        response::Kind::Conflicts(c) => Ok(c),
        other => Err(unexpected(&other)),
    }
}

/// Asks the daemon to resolve the conflict of `path` (a path in the mount) keeping `keep`
/// (`mine`, `theirs`, `both` or a version id prefix).
pub fn resolve(data_dir: &Path, path: &Path, keep: &str) -> Result<ResolveResponse, CliError> {
    let request = request::Kind::Resolve(ResolveRequest {
        path: in_mount(data_dir, path)?,
        keep: keep.to_string(),
    });
    match call(data_dir, request)? {
        response::Kind::Resolve(r) => Ok(r),
        other => Err(unexpected(&other)),
    }
}

/// Watches the changes at or under `path` (a path in the mount; every store when `None`):
/// calls `started` once, then `event` per change, until `event` fails (the output went
/// away: a clean end) or the daemon stops (an error).
pub fn watch(
    data_dir: &Path,
    path: Option<&Path>,
    started: impl FnOnce(&WatchStarted),
    mut event: impl FnMut(&WatchEvent) -> std::io::Result<()>,
) -> Result<(), CliError> {
    let sent = path.map(|p| in_mount(data_dir, p)).transpose()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let request = Request {
        kind: Some(request::Kind::Watch(WatchRequest {
            path: sent.unwrap_or_default(),
        })),
    };
    rt.block_on(async {
        let mut stream = connect(data_dir).await?;
        write_frame(&mut stream, &request)
            .await
            .context("talking to the daemon")?;
        let mut started = Some(started);
        loop {
            let frame = read_frame::<Response, _>(&mut stream)
                .await
                .context("talking to the daemon")?;
            match frame.and_then(|r| r.kind) {
                Some(response::Kind::WatchStarted(w)) => {
                    if let Some(started) = started.take() {
                        started(&w);
                    }
                }
                Some(response::Kind::WatchEvent(e)) => {
                    if event(&e).is_err() {
                        return Ok(());
                    }
                }
                Some(response::Kind::Error(message)) => return Err(CliError::Refused(message)),
                Some(other) => return Err(unexpected(&other)),
                None => return Err(anyhow!("the daemon stopped; the watch ended").into()),
            }
        }
    })
}

/// `path` (absolute or relative to the current directory, existing or not) as a path
/// from the root of the daemon's mount, with a leading `/`.
fn in_mount(data_dir: &Path, path: &Path) -> Result<String, CliError> {
    let status = status(data_dir)?;
    if status.mountpoint.is_empty() {
        return Err(anyhow!("the daemon reports no mountpoint").into());
    }
    let mountpoint = PathBuf::from(&status.mountpoint);
    let absolute =
        std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let resolved = canonicalize_existing_prefix(&absolute);
    let relative = resolved.strip_prefix(&mountpoint).map_err(|_| {
        anyhow!(
            "{} is not inside the mount at {}",
            path.display(),
            mountpoint.display()
        )
    })?;
    let relative = relative
        .to_str()
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", path.display()))?;
    Ok(format!("/{relative}"))
}

/// Asks the daemon to stop, then waits until it has unmounted and exited.
pub fn down(data_dir: &Path) -> Result<(), CliError> {
    match call(data_dir, request::Kind::Down(DownRequest {}))? {
        response::Kind::Down(_) => {}
        other => return Err(unexpected(&other)),
    }
    if daemon::wait_stopped(data_dir, DOWN_TIMEOUT)? {
        Ok(())
    } else {
        Err(anyhow!(
            "the daemon accepted `down` but did not exit within {} s",
            DOWN_TIMEOUT.as_secs()
        )
        .into())
    }
}

/// Sends `token` to the daemon to join a store, calling `progress` for each progress
/// message; returns the joined store's name. Frames may be minutes apart on a slow link,
/// so only a silence of [`JOIN_SILENCE`] counts as a failure.
pub fn join(
    data_dir: &Path,
    token: &str,
    name: Option<&str>,
    mut progress: impl FnMut(&JoinProgress),
) -> Result<String, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let request = Request {
        kind: Some(request::Kind::Join(JoinRequest {
            token: token.trim().to_string(),
            name: name.unwrap_or_default().to_string(),
        })),
    };
    rt.block_on(async {
        let mut stream = connect(data_dir).await?;
        write_frame(&mut stream, &request)
            .await
            .context("talking to the daemon")?;
        loop {
            let frame = tokio::time::timeout(JOIN_SILENCE, read_frame::<Response, _>(&mut stream))
                .await
                .map_err(|_| {
                    anyhow!(
                        "the daemon reported nothing for {} s",
                        JOIN_SILENCE.as_secs()
                    )
                })?
                .context("talking to the daemon")?;
            match frame.and_then(|r| r.kind) {
                Some(response::Kind::JoinProgress(p)) => progress(&p),
                Some(response::Kind::Join(j)) => return Ok(j.store),
                Some(response::Kind::Error(message)) => return Err(CliError::Refused(message)),
                Some(other) => return Err(unexpected(&other)),
                None => {
                    return Err(
                        anyhow!("the daemon closed the connection without an answer").into(),
                    )
                }
            }
        }
    })
}

/// Sends one request and returns its answer (for commands without a helper of their own).
pub fn ask(data_dir: &Path, kind: request::Kind) -> Result<response::Kind, CliError> {
    call(data_dir, kind)
}

async fn connect(data_dir: &Path) -> Result<UnixStream, CliError> {
    let socket = socket_path(data_dir);
    match UnixStream::connect(&socket).await {
        Ok(s) => Ok(s),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            Err(CliError::NoDaemon(data_dir.display().to_string()))
        }
        Err(e) => Err(anyhow!(e)
            .context(format!("cannot connect to {}", socket.display()))
            .into()),
    }
}

/// Sends one request and returns the daemon's answer; an error answer becomes `Refused`.
fn call(data_dir: &Path, kind: request::Kind) -> Result<response::Kind, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let request = Request { kind: Some(kind) };
    let response = rt.block_on(async {
        let mut stream = connect(data_dir).await?;
        let exchange = async {
            write_frame(&mut stream, &request).await?;
            read_frame::<Response, _>(&mut stream).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                anyhow!(
                    "the daemon did not answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )
            })?
            .context("talking to the daemon")
            .map_err(CliError::from)
    })?;
    match response.and_then(|r| r.kind) {
        Some(response::Kind::Error(message)) => Err(CliError::Refused(message)),
        Some(kind) => Ok(kind),
        None => Err(anyhow!("the daemon closed the connection without an answer").into()),
    }
}

pub fn unexpected(kind: &response::Kind) -> CliError {
    anyhow!("the daemon sent an unexpected answer: {kind:?}").into()
}

/// `path` (absolute) with `.` and `..` removed lexically, then its longest existing
/// prefix canonicalized (symlinks resolved) and the rest appended unchanged.
fn canonicalize_existing_prefix(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            c => normal.push(c),
        }
    }
    let mut head = normal.as_path();
    let mut tail = Vec::new();
    loop {
        if let Ok(mut canonical) = head.canonicalize() {
            canonical.extend(tail.iter().rev());
            return canonical;
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name);
                head = parent;
            }
            _ => return normal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tail_is_appended_to_the_canonical_existing_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("mnt")).unwrap();
        std::os::unix::fs::symlink(real.join("mnt"), real.join("link")).unwrap();
        let got = canonicalize_existing_prefix(&real.join("link/./docs/x/../a.txt"));
        assert_eq!(got, real.join("mnt/docs/a.txt"));
    }
}
