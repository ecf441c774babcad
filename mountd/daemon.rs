//! The daemon: `lattice-mount up`. Takes the data dir lock, prepares the mountpoint,
//! opens the node, mounts it, serves the control socket until SIGINT, SIGTERM or a
//! `down` request, then unmounts, shuts the node down and removes the socket.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use lattice_mount::proto::control::{
    request, response, CreateResponse, DownResponse, FetchModeResponse, GcResponse, GcStoreReport,
    InviteResponse, JoinProgress, JoinResponse, PauseResponse, PeerEntry, PeersResponse, Request,
    Response, RevokeResponse, SettingResponse, SnapshotEntry, SnapshotResponse, StoreSetting,
    SyncResponse, WebResponse,
};
use lattice_mount::{CacheBudget, Net, NetConfig, Node, Relay, Role, Setting};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, OwnedSemaphorePermit, RwLock, Semaphore};
use tokio::task::JoinSet;

use crate::control::{read_frame, socket_path, write_frame, FrameError};
use crate::error::CliError;
use crate::preflight::{self, MountProblem};
use crate::report;

/// Most control connections served at once; further ones are closed at once.
const MAX_CONTROL_CONNECTIONS: usize = 64;
/// How long a control connection may stay silent before the daemon closes it.
const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long runtime shutdown waits for stray tasks after the node is shut down.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the daemon collects the content of every store in the background: old
/// versions expire by the day, so an hour keeps the disk close to what is retained.
const BACKGROUND_GC_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// How long the daemon waits for a relay before saying it uses direct addresses only:
/// iroh's first net report and relay handshake take a second or two on a working
/// network (not measured here, where there is none); the rest is room for slow DNS.
const RELAY_WAIT: Duration = Duration::from_secs(10);
/// Lock file inside the data dir, held (flock) by the running daemon.
const LOCK_FILE: &str = "daemon.lock";

/// What `up` needs to know.
pub struct UpOptions {
    /// The node's data dir (absolute).
    pub data_dir: PathBuf,
    /// Where to mount (absolute; created if missing).
    pub mountpoint: PathBuf,
    /// Display name to set, if any.
    pub display_name: Option<String>,
    /// Let other users access the mount.
    pub allow_other: bool,
    /// Pass open files through to their backing files where the kernel allows it.
    pub passthrough: bool,
    /// Network endpoint setup.
    pub net: NetConfig,
    /// The cache budget.
    pub cache: CacheBudget,
    /// Where to serve the status page, if anywhere.
    pub web: Option<std::net::SocketAddr>,
}

/// Runs the daemon in the foreground until it is asked to stop.
pub fn up(opts: UpOptions) -> Result<(), CliError> {
    let data_dir = &opts.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let lock = DaemonLock::acquire(data_dir)?;
    let web = opts
        .web
        .map(|addr| crate::web::Web::open(data_dir, addr))
        .transpose()?;
    let mountpoint = prepare_mountpoint(&opts.mountpoint)?;
    preflight::diagnose(&preflight::gather(&mountpoint, opts.allow_other))?;
    // Whatever the node's libraries create from here on (redb files, blobs, staging, the
    // peer book) is readable by its owner only: files 0600, directories 0700.
    // SAFETY: umask only changes the process's file creation mask; one thread so far.
    unsafe { libc::umask(0o077) };
    // Bound while the process has a single thread, so the umask change is safe.
    let (listener, socket) = bind_socket(&socket_path(data_dir))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lattice-rt")
        .build()
        .context("cannot start the async runtime")?;
    let signals = {
        let _entered = rt.enter();
        Signals::new().context("cannot install signal handlers")?
    };
    let node = Node::open_within(
        data_dir,
        opts.display_name.as_deref(),
        rt.handle().clone(),
        opts.cache,
    )
    .with_context(|| format!("cannot open the node in {}", data_dir.display()))?;
    let mount_opts = lattice_mount::MountOptions {
        allow_other: opts.allow_other,
        passthrough: opts.passthrough,
    };
    let guard = match lattice_mount::mount(node.clone(), &mountpoint, mount_opts) {
        Ok(guard) => guard,
        Err(e) => {
            if let Err(e) = node.shutdown() {
                tracing::error!("shutting down after a failed mount: {e}");
            }
            return Err(MountProblem::from(e).into());
        }
    };
    let net = match rt.block_on(Net::start(node.clone(), opts.net.clone())) {
        Ok(net) => net,
        Err(e) => {
            drop(guard);
            if let Err(e) = node.shutdown() {
                tracing::error!("shutting down after a failed network start: {e}");
            }
            return Err(anyhow!(e).into());
        }
    };
    eprintln!(
        "mounted {} stores at {}; data in {}; node {} listening on {}",
        node.stores().len(),
        mountpoint.display(),
        data_dir.display(),
        node.identity().public().short(),
        net.direct_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(web) = &web {
        eprintln!(
            "status page on http://{}/ (`lattice-mount web` prints its address with the access token)",
            web.addr()
        );
    }
    if opts.net.relay != Relay::Disabled {
        let net = net.clone();
        rt.spawn(async move {
            if tokio::time::timeout(RELAY_WAIT, net.relay_online())
                .await
                .is_err()
            {
                eprintln!(
                    "no relay reachable within {} s: peers are reached by their direct \
                     addresses only until one answers (RUST_LOG=iroh=warn shows why)",
                    RELAY_WAIT.as_secs()
                );
            }
        });
    }

    let ctx = Arc::new(Ctx {
        node: node.clone(),
        net: net.clone(),
        mountpoint: mountpoint.clone(),
        passthrough: guard.passthrough(),
        rt: rt.handle().clone(),
        web_url: web.as_ref().map(|w| w.url()),
    });
    let reason = rt.block_on(async move {
        let listener = UnixListener::from_std(listener)?;
        anyhow::Ok(serve(listener, ctx, signals, web).await)
    });
    match &reason {
        Ok(reason) => tracing::info!("stopping: {reason}"),
        Err(e) => tracing::error!("control socket failed, stopping: {e:#}"),
    }
    rt.block_on(net.shutdown());
    // Dropping the guard unmounts and joins the FUSE session, so no callback is still
    // using the node when it shuts down.
    drop(guard);
    let shutdown = node.shutdown();
    drop(socket);
    rt.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    drop(lock);
    reason.context("control socket")?;
    shutdown.context("shutting down the node")?;
    Ok(())
}

/// True while a daemon holds the lock of `data_dir`.
pub fn is_running(data_dir: &Path) -> Result<bool, CliError> {
    let Some(file) = open_lock(data_dir)? else {
        return Ok(false);
    };
    match shared_lock(&file, libc::LOCK_NB) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(lock_error(data_dir, e)),
    }
}

/// Waits until no daemon holds the lock of `data_dir`, at most `timeout`; true once
/// none does. On a timeout the waiting thread stays blocked until the lock is freed or
/// the process exits.
pub fn wait_stopped(data_dir: &Path, timeout: Duration) -> Result<bool, CliError> {
    let Some(file) = open_lock(data_dir)? else {
        return Ok(true);
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let locked = loop {
            match shared_lock(&file, 0) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let _ = tx.send(locked);
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(lock_error(data_dir, e)),
        Err(_) => Ok(false),
    }
}

/// The lock file of `data_dir`, or None when no daemon ever ran there.
fn open_lock(data_dir: &Path) -> Result<Option<File>, CliError> {
    let path = data_dir.join(LOCK_FILE);
    match File::open(&path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!(e).context(format!("{}", path.display())).into()),
    }
}

/// Takes a shared flock on `file` (with `flags` added, e.g. `LOCK_NB`); it conflicts
/// with the daemon's exclusive one and is released when `file` closes.
fn shared_lock(file: &File, flags: i32) -> std::io::Result<()> {
    // SAFETY: flock on a file descriptor the caller owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A failed flock on the lock file of `data_dir`.
fn lock_error(data_dir: &Path, e: std::io::Error) -> CliError {
    anyhow!(e)
        .context(format!("locking {}", data_dir.join(LOCK_FILE).display()))
        .into()
}

/// The exclusive flock on `DATA_DIR/daemon.lock`, released when dropped or on exit.
struct DaemonLock {
    _file: File,
}

impl DaemonLock {
    fn acquire(data_dir: &Path) -> Result<Self, CliError> {
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == ErrorKind::WouldBlock {
                return Err(anyhow!(
                    "a daemon is already running for data dir {} (stop it with `lattice-mount down`)",
                    data_dir.display()
                )
                .into());
            }
            return Err(anyhow!(err)
                .context(format!("cannot lock {}", path.display()))
                .into());
        }
        Ok(Self { _file: file })
    }
}

/// The control socket file, removed when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

/// Binds the control socket with mode 0600 from the start (umask), replacing a stale
/// socket file (we hold the data dir lock, so no live daemon owns it).
fn bind_socket(path: &Path) -> Result<(std::os::unix::net::UnixListener, SocketFile), CliError> {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!("removed stale socket {}", path.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow!(e)
                .context(format!("cannot remove {}", path.display()))
                .into())
        }
    }
    // SAFETY: umask only changes the process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("cannot bind {}", path.display()))?;
    let socket = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    listener.set_nonblocking(true).context("control socket")?;
    Ok((listener, socket))
}

/// Cleans a stale FUSE mount, creates the mountpoint if missing, refuses a busy one,
/// and returns its canonical path.
fn prepare_mountpoint(mountpoint: &Path) -> Result<PathBuf, CliError> {
    let shown = mountpoint.display();
    if is_dead_mount(mountpoint) {
        tracing::warn!("cleaning a stale FUSE mount at {shown}");
        unmount_stale(mountpoint)?;
    }
    match std::fs::metadata(mountpoint) {
        Ok(m) if !m.is_dir() => return Err(anyhow!("mountpoint {shown} is not a directory").into()),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir_all(mountpoint)
                .with_context(|| format!("cannot create mountpoint {shown}"))?;
        }
        Err(e) => return Err(anyhow!(e).context(format!("mountpoint {shown}")).into()),
    }
    let canonical = mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {shown}"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    if is_mount_point(&mountinfo, &canonical) {
        return Err(anyhow!(
            "{} is already a mount point (unmount it or choose another mountpoint)",
            canonical.display()
        )
        .into());
    }
    Ok(canonical)
}

/// True if `mountpoint` is a FUSE mount whose daemon is gone. `statfs` always reaches
/// the daemon, unlike `stat`, which the kernel may answer from its attribute cache.
fn is_dead_mount(mountpoint: &Path) -> bool {
    let Ok(c) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

/// Unmounts a dead FUSE mount: directly when root, else with `fusermount3 -u -z`.
fn unmount_stale(mountpoint: &Path) -> Result<(), CliError> {
    let fail = |why: String| -> CliError {
        anyhow!(
            "cannot clean up the stale mount at {}: {why}",
            mountpoint.display()
        )
        .into()
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let c = CString::new(mountpoint.as_os_str().as_bytes())
            .map_err(|_| fail("path contains NUL".into()))?;
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(fail(std::io::Error::last_os_error().to_string()));
        }
        return Ok(());
    }
    let status = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mountpoint)
        .status()
        .map_err(|e| fail(format!("fusermount3: {e}")))?;
    if !status.success() {
        return Err(fail(format!("fusermount3 exited with {status}")));
    }
    Ok(())
}

/// True if `/proc/self/mountinfo` content `mountinfo` lists `path` as a mount point.
fn is_mount_point(mountinfo: &str, path: &Path) -> bool {
    let path = path.as_os_str().as_bytes();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|field| unescape_mountinfo(field) == path)
}

/// Decodes the `\ooo` octal escapes mountinfo uses for space, tab, newline and `\`.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// SIGINT and SIGTERM streams, installed before the node opens so that an early
/// signal still leads to a clean shutdown.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }
}

/// What request handlers share.
struct Ctx {
    node: Node,
    net: Net,
    mountpoint: PathBuf,
    /// The mount's passthrough mode.
    passthrough: lattice_mount::PassthroughMode,
    rt: tokio::runtime::Handle,
    /// The status page's address with its token, when `up --web` serves one.
    web_url: Option<String>,
}

/// Runs control requests on the node: what the control socket and the status page share.
#[derive(Clone)]
pub struct Handler {
    ctx: Arc<Ctx>,
    /// Held (read) by every request running on the node; `serve` takes it (write) to
    /// wait for them before the node shuts down.
    in_flight: Arc<RwLock<()>>,
}

impl Handler {
    /// The node requests run on.
    pub fn node(&self) -> &Node {
        &self.ctx.node
    }

    /// Answers one request (any but a join or a watch, which stream) off the async
    /// threads; the daemon waits for it before it stops.
    pub async fn answer(&self, request: Request) -> Response {
        let permit = self.in_flight.clone().read_owned().await;
        let ctx = self.ctx.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            handle(&ctx, request)
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!("control request handler failed: {e}");
            error_response("internal error while handling the request".into())
        })
    }
}

/// Accepts control connections (and serves the status page, if any) until a signal or
/// a `down` request; then waits for requests in progress and closes every connection.
/// Returns why it stopped.
async fn serve(
    listener: UnixListener,
    ctx: Arc<Ctx>,
    mut signals: Signals,
    web: Option<crate::web::Web>,
) -> &'static str {
    let (down_tx, mut down_rx) = mpsc::channel::<()>(1);
    let in_flight = Arc::new(RwLock::new(()));
    let handler = Handler {
        ctx: ctx.clone(),
        in_flight: in_flight.clone(),
    };
    let (stop_web, web_stopped) = tokio::sync::watch::channel(false);
    let web_task = web.map(|w| tokio::spawn(crate::web::serve(w, handler.clone(), web_stopped)));
    let slots = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut gc_timer = tokio::time::interval_at(
        tokio::time::Instant::now() + BACKGROUND_GC_INTERVAL,
        BACKGROUND_GC_INTERVAL,
    );
    gc_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            _ = gc_timer.tick() => {
                let (node, busy) = (ctx.node.clone(), in_flight.clone().read_owned().await);
                connections.spawn(async move {
                    let _busy = busy;
                    match tokio::task::spawn_blocking(move || node.gc(None)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!("background content collection failed: {e}"),
                        Err(e) => tracing::error!("background content collection panicked: {e}"),
                    }
                });
            }
            _ = signals.interrupt.recv() => break "SIGINT",
            _ = signals.terminate.recv() => break "SIGTERM",
            _ = down_rx.recv() => break "down request",
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let conn = Connection {
                            handler: handler.clone(),
                            down: down_tx.clone(),
                            _slot: slot,
                        };
                        connections.spawn(conn.run(stream));
                    }
                    Err(_) => tracing::warn!(
                        "refusing a control connection: {MAX_CONTROL_CONNECTIONS} already open"
                    ),
                },
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    tracing::error!("control connection task failed: {e}");
                }
            }
        }
    };
    drop(listener);
    // The status page closes its event streams and finishes the requests it has begun.
    let _ = stop_web.send(true);
    if let Some(task) = web_task {
        if let Err(e) = task.await {
            tracing::error!("status page task failed: {e}");
        }
    }
    // Wait for requests already running on the node, then drop idle connections.
    let _quiet = in_flight.write().await;
    connections.shutdown().await;
    reason
}

/// One client connection: requests in, responses out, in order.
struct Connection {
    handler: Handler,
    down: mpsc::Sender<()>,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(self, mut stream: UnixStream) {
        loop {
            let read = tokio::time::timeout(CONTROL_IDLE_TIMEOUT, read_frame(&mut stream)).await;
            let request: Request = match read {
                Err(_) | Ok(Ok(None)) => return,
                Ok(Ok(Some(r))) => r,
                Ok(Err(e)) => {
                    tracing::warn!("bad control request: {e}");
                    // The stream may be mid-frame: answer once, then close.
                    let _ = write_frame(&mut stream, &error_response(e.to_string())).await;
                    return;
                }
            };
            if let Some(request::Kind::Join(j)) = request.kind {
                if !self.join(&mut stream, j).await {
                    return;
                }
                continue;
            }
            if let Some(request::Kind::Watch(w)) = request.kind {
                crate::watch::serve(self.handler.node().clone(), &mut stream, w).await;
                return;
            }
            let is_down = matches!(request.kind, Some(request::Kind::Down(_)));
            let response = self.handler.answer(request).await;
            match write_frame(&mut stream, &response).await {
                Ok(()) => {}
                Err(FrameError::TooLarge { size: n, .. }) => {
                    let message =
                        format!("the answer ({n} bytes) exceeds the control message limit");
                    if write_frame(&mut stream, &error_response(message))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!("control client went away: {e}");
                    return;
                }
            }
            if is_down {
                let _ = self.down.send(()).await;
                return;
            }
        }
    }
}

impl Connection {
    /// Runs a join, writing progress frames then the answer; false if the client left.
    async fn join(
        &self,
        stream: &mut UnixStream,
        j: lattice_mount::proto::control::JoinRequest,
    ) -> bool {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let net = self.handler.ctx.net.clone();
        let name = match (!j.name.is_empty())
            .then(|| lattice_mount::check_display_name(&j.name))
            .transpose()
        {
            Ok(name) => name,
            Err(e) => {
                return write_frame(stream, &error_response(e.to_string()))
                    .await
                    .is_ok()
            }
        };
        let task = tokio::spawn(async move { net.join(&j.token, name.as_deref(), tx).await });
        while let Some(p) = rx.recv().await {
            let msg = Response {
                kind: Some(response::Kind::JoinProgress(JoinProgress {
                    store: p.store,
                    intentions: p.intentions,
                    total: p.total,
                    bytes: p.bytes,
                    eta_ms: p.eta.map_or(0, |d| d.as_millis() as u64),
                })),
            };
            if write_frame(stream, &msg).await.is_err() {
                // The client left; the bootstrap goes on and resumes after a restart.
                return false;
            }
        }
        let response = match task.await {
            Ok(Ok(store)) => Response {
                kind: Some(response::Kind::Join(JoinResponse { store })),
            },
            Ok(Err(e)) => error_response(e.to_string()),
            Err(e) => error_response(format!("join failed: {e}")),
        };
        write_frame(stream, &response).await.is_ok()
    }
}

/// Runs one request on the node (blocking: call from `spawn_blocking`).
fn handle(ctx: &Ctx, request: Request) -> Response {
    let kind = match request.kind {
        None => return error_response("empty or unknown request".into()),
        Some(request::Kind::Status(_)) => {
            let mut status = report::status(&ctx.node, &ctx.mountpoint, ctx.passthrough.get());
            for s in &mut status.stores {
                let Some(store) = ctx
                    .node
                    .stores()
                    .into_iter()
                    .find(|st| st.id().to_hex() == s.id)
                else {
                    continue;
                };
                let n = ctx.net.store_net(&store);
                s.paused = n.paused;
                s.fetch_mode = n.fetch.as_str().to_string();
                s.peers_online = n.online as u64;
                s.members = n.members as u64;
                s.unsent = n.unsent;
                s.fetch_files = n.to_fetch.files;
                s.fetch_bytes = n.to_fetch.bytes;
                s.fetch_rate = n.to_fetch.rate;
                s.fetch_eta_secs = n.to_fetch.eta.map(|d| d.as_secs());
            }
            response::Kind::Status(status)
        }
        Some(request::Kind::Invite(i)) => {
            let role = match i.role.as_str() {
                "" | "writer" => Role::Writer,
                "admin" => Role::Admin,
                "reader" => Role::Reader,
                other => {
                    return error_response(format!(
                        "unknown role {other:?} (admin, writer or reader)"
                    ))
                }
            };
            let expires = Duration::from_secs(i.expires_secs);
            match ctx.rt.block_on(ctx.net.invite(&i.store, role, expires)) {
                Ok(token) => response::Kind::Invite(InviteResponse { token }),
                Err(e) => return error_response(e.to_string()),
            }
        }
        Some(request::Kind::Join(_)) => return error_response("join is handled on its own".into()),
        Some(request::Kind::Peers(p)) => match ctx.net.peers(&p.store) {
            Ok(list) => {
                let equivocators: Vec<_> = ctx
                    .node
                    .store_by_name(&p.store)
                    .and_then(|s| s.equivocators().ok())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|q| q.key)
                    .collect();
                response::Kind::Peers(PeersResponse {
                    peers: list
                        .into_iter()
                        .map(|p| PeerEntry {
                            key: p.key.to_hex(),
                            name: p.name,
                            role: match p.left {
                                true => "left".to_string(),
                                false => format!("{:?}", p.role).to_lowercase(),
                            },
                            me: p.me,
                            online: p.online,
                            last_seen_ms: p
                                .last_seen
                                .map(|at| lattice_mount::now_ms().saturating_sub(at)),
                            last_seen_unix_ms: p.last_seen,
                            addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
                            equivocator: equivocators.contains(&p.key),
                        })
                        .collect(),
                })
            }
            Err(e) => return error_response(e.to_string()),
        },
        Some(request::Kind::Revoke(r)) => {
            match ctx.rt.block_on(ctx.net.revoke(&r.store, &r.target)) {
                Ok(lattice_mount::Revoked::Member(key)) => {
                    response::Kind::Revoke(RevokeResponse { key: key.to_hex() })
                }
                Ok(lattice_mount::Revoked::Invite) => {
                    response::Kind::Revoke(RevokeResponse { key: String::new() })
                }
                Err(e) => return error_response(e.to_string()),
            }
        }
        Some(request::Kind::Sync(r)) => match ctx.rt.block_on(ctx.net.sync(&r.store)) {
            Ok(rep) => response::Kind::Sync(SyncResponse {
                peers: rep.peers,
                rounds: rep.total.rounds,
                reconcile_bytes: rep.total.reconcile_bytes,
                pulled: rep.total.pulled,
                pushed: rep.total.pushed,
                failed: rep
                    .failed
                    .iter()
                    .map(|(k, why)| format!("{}: {why}", k.short()))
                    .collect(),
            }),
            Err(e) => return error_response(e.to_string()),
        },
        Some(request::Kind::Pause(p)) => {
            let name = (!p.store.is_empty()).then_some(p.store.as_str());
            match ctx.net.set_paused(name, p.pause) {
                Ok(stores) => response::Kind::Pause(PauseResponse { stores }),
                Err(e) => return error_response(e.to_string()),
            }
        }
        Some(request::Kind::FetchMode(f)) => {
            let mode = match f.mode.parse() {
                Ok(m) => m,
                Err(e) => return error_response(e),
            };
            match ctx.net.set_fetch_mode(&f.store, mode) {
                Ok(()) => response::Kind::FetchMode(FetchModeResponse {}),
                Err(e) => return error_response(e.to_string()),
            }
        }
        Some(request::Kind::Gc(g)) => {
            let store = match g.store.as_str() {
                "" => None,
                name => match ctx.node.store_by_name(name) {
                    Some(s) => Some(s),
                    None => return error_response(format!("no store named {name:?}")),
                },
            };
            match ctx.node.gc(store.as_ref()) {
                Ok(freed) => response::Kind::Gc(GcResponse {
                    stores: freed
                        .into_iter()
                        .map(|(store, r)| GcStoreReport {
                            store,
                            blobs: r.blobs,
                            bytes: r.bytes,
                        })
                        .collect(),
                }),
                Err(e) => return error_response(e.to_string()),
            }
        }
        Some(request::Kind::Setting(r)) => {
            let Some(store) = ctx.node.store_by_name(&r.store) else {
                return error_response(format!("no store named {:?}", r.store));
            };
            let setting = match StoreSetting::try_from(r.setting) {
                Ok(StoreSetting::Retention) => Setting::Retention,
                Ok(StoreSetting::Horizon) => Setting::Horizon,
                Err(_) => return error_response(format!("unknown setting {}", r.setting)),
            };
            if let Some(days) = r.days {
                match store.set_setting(setting, days) {
                    Ok(()) => {}
                    Err(lattice_mount::SettingError::NotAdmin) => {
                        let role = store
                            .members()
                            .into_iter()
                            .find(|m| m.key == ctx.node.identity().public())
                            .map_or("not a member".to_string(), |m| {
                                format!("a {:?}", m.role).to_lowercase()
                            });
                        return error_response(format!(
                            "only an admin of {} may set its {}; this node is {role}",
                            r.store,
                            setting.name()
                        ));
                    }
                    Err(e) => return error_response(e.to_string()),
                }
            }
            response::Kind::Setting(SettingResponse {
                days: store.setting(setting),
            })
        }
        Some(request::Kind::Snapshot(r)) => {
            let Some(store) = ctx.node.store_by_name(&r.store) else {
                return error_response(format!("no store named {:?}", r.store));
            };
            let done = match (r.label.as_str(), r.remove) {
                ("", _) => Ok(()),
                (label, false) => store.snapshot(label),
                (label, true) => store.drop_snapshot(label),
            };
            match done {
                Ok(()) => {}
                Err(lattice_mount::FsError::ReadOnly) => {
                    return error_response(format!(
                        "only a writer of {} may record or drop its snapshots",
                        r.store
                    ))
                }
                Err(lattice_mount::FsError::NotFound) => {
                    return error_response(format!(
                        "{} has no snapshot named {:?}",
                        r.store, r.label
                    ))
                }
                Err(e) => return error_response(format!("snapshot {:?}: {e}", r.label)),
            }
            response::Kind::Snapshot(SnapshotResponse {
                snapshots: store.read(|s| {
                    s.snapshots()
                        .into_iter()
                        .map(|(label, at)| SnapshotEntry {
                            label: label.to_string(),
                            author: match s.member(&at.author) {
                                Some((_, name)) if !name.is_empty() => name.to_string(),
                                _ => at.author.short(),
                            },
                            time_ms: at.hlc.wall_ms,
                        })
                        .collect()
                }),
            })
        }
        Some(request::Kind::Create(c)) => match ctx.node.create_store(&c.name) {
            Ok(store) => response::Kind::Create(CreateResponse {
                id: store.id().to_hex(),
            }),
            Err(e) => return error_response(e.to_string()),
        },
        Some(request::Kind::History(h)) => match report::history(&ctx.node, &h.path, h.deleted) {
            Ok(history) => response::Kind::History(history),
            Err(e) => return error_response(e.to_string()),
        },
        Some(request::Kind::Verify(v)) => match report::verify(&ctx.node, &v.path) {
            Ok(verified) => response::Kind::Verify(verified),
            Err(e) => return error_response(e.to_string()),
        },
        Some(request::Kind::Restore(r)) => match report::restore(&ctx.node, &r) {
            Ok(restored) => response::Kind::Restore(restored),
            Err(e) => return error_response(e.to_string()),
        },
        Some(request::Kind::Conflicts(c)) => match report::conflicts(&ctx.node, &c.store) {
            Ok(conflicts) => response::Kind::Conflicts(conflicts),
            Err(e) => return error_response(e.to_string()),
        },
        Some(request::Kind::Resolve(r)) => match report::resolve(&ctx.node, &r) {
            Ok(resolved) => response::Kind::Resolve(resolved),
            Err(e) => return error_response(e.to_string()),
        },
        Some(request::Kind::Watch(_)) => {
            return error_response("watch is handled on its own".into())
        }
        Some(request::Kind::Leave(r)) => {
            match crate::leave::leave(&ctx.node, &ctx.net, &ctx.rt, &r) {
                Ok(left) => response::Kind::Leave(left),
                Err(e) => return error_response(e),
            }
        }
        Some(request::Kind::Delete(r)) => {
            match crate::leave::delete(&ctx.node, &ctx.net, &ctx.rt, &r) {
                Ok(deleted) => response::Kind::Delete(deleted),
                Err(e) => return error_response(e),
            }
        }
        Some(request::Kind::Down(_)) => response::Kind::Down(DownResponse {}),
        Some(request::Kind::Web(_)) => match &ctx.web_url {
            Some(url) => response::Kind::Web(WebResponse { url: url.clone() }),
            None => {
                return error_response(
                    "the status page is off (start the daemon with `lattice-mount up --web`)"
                        .into(),
                )
            }
        },
    };
    Response { kind: Some(kind) }
}

fn error_response(message: String) -> Response {
    Response {
        kind: Some(response::Kind::Error(message)),
    }
}

#[cfg(test)]
mod tests {
    use lattice_mount::proto::control::{CreateRequest, StatusRequest};
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn mountinfo_mount_points_are_found_with_escaped_spaces() {
        let info = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    90 27 0:50 / /mnt/my\\040box rw - fuse x rw\n";
        assert!(is_mount_point(info, Path::new("/proc")));
        assert!(is_mount_point(info, Path::new("/mnt/my box")));
        assert!(!is_mount_point(info, Path::new("/mnt")));
        assert!(!is_mount_point(info, Path::new("/mnt/my\\040box")));
    }

    #[test]
    fn a_second_lock_on_the_same_data_dir_is_refused_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!is_running(tmp.path()).unwrap());
        let lock = DaemonLock::acquire(tmp.path()).unwrap();
        assert!(is_running(tmp.path()).unwrap());
        let err = DaemonLock::acquire(tmp.path()).err().unwrap();
        assert!(err.to_string().contains("already running"), "{err}");
        drop(lock);
        assert!(!is_running(tmp.path()).unwrap());
        DaemonLock::acquire(tmp.path()).unwrap();
    }

    #[test]
    fn wait_stopped_returns_when_the_lock_is_dropped_and_not_before() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(wait_stopped(tmp.path(), Duration::ZERO).unwrap());
        let lock = DaemonLock::acquire(tmp.path()).unwrap();
        assert!(!wait_stopped(tmp.path(), Duration::from_millis(50)).unwrap());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            rx.recv().unwrap();
            drop(lock);
        });
        tx.send(()).unwrap();
        assert!(wait_stopped(tmp.path(), Duration::from_secs(60)).unwrap());
        assert!(!is_running(tmp.path()).unwrap());
        holder.join().unwrap();
    }

    #[test]
    fn the_control_socket_is_created_0600_and_removed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let path = socket_path(tmp.path());
        std::fs::write(&path, b"stale").unwrap();
        let (_listener, socket) = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(socket);
        assert!(!path.exists());
    }

    #[test]
    fn a_missing_mountpoint_is_created_and_a_busy_one_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mp = tmp.path().join("a/Lattice");
        let canonical = prepare_mountpoint(&mp).unwrap();
        assert!(canonical.is_dir());
        let err = prepare_mountpoint(Path::new("/proc")).unwrap_err();
        assert!(err.to_string().contains("already a mount point"), "{err}");
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let err = prepare_mountpoint(&file).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    /// Serves one connection of a node in `dir` over an in-memory stream.
    fn serve_one(dir: &Path, client: impl AsyncFnOnce(UnixStream)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let node = Node::open(dir, Some("laptop"), rt.handle().clone()).unwrap();
        let config = NetConfig {
            relay: lattice_mount::Relay::Disabled,
            bind: Some("127.0.0.1:0".parse().unwrap()),
        };
        let net = rt.block_on(Net::start(node.clone(), config)).unwrap();
        let ctx = Arc::new(Ctx {
            node: node.clone(),
            net: net.clone(),
            mountpoint: PathBuf::from("/mnt/lattice"),
            passthrough: lattice_mount::PassthroughMode::new(lattice_mount::Passthrough::Disabled),
            rt: rt.handle().clone(),
            web_url: None,
        });
        rt.block_on(async {
            let (a, b) = UnixStream::pair().unwrap();
            let (down, _down_rx) = mpsc::channel(1);
            let conn = Connection {
                handler: Handler {
                    ctx,
                    in_flight: Arc::new(RwLock::new(())),
                },
                down,
                _slot: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            };
            let server = tokio::spawn(conn.run(b));
            client(a).await;
            server.await.unwrap();
            net.shutdown().await;
        });
        node.shutdown().unwrap();
    }

    async fn ask(stream: &mut UnixStream, kind: request::Kind) -> response::Kind {
        write_frame(stream, &Request { kind: Some(kind) })
            .await
            .unwrap();
        let response: Response = read_frame(stream).await.unwrap().unwrap();
        response.kind.unwrap()
    }

    #[test]
    fn requests_on_one_connection_create_a_store_and_report_it() {
        let tmp = tempfile::tempdir().unwrap();
        serve_one(tmp.path(), async |mut s| {
            let created = ask(
                &mut s,
                request::Kind::Create(CreateRequest {
                    name: "docs".into(),
                }),
            )
            .await;
            let response::Kind::Create(created) = created else {
                panic!("{created:?}")
            };
            let again = ask(
                &mut s,
                request::Kind::Create(CreateRequest {
                    name: "docs".into(),
                }),
            )
            .await;
            assert_eq!(
                again,
                response::Kind::Error("a store named \"docs\" already exists".into())
            );
            let status = ask(&mut s, request::Kind::Status(StatusRequest {})).await;
            let response::Kind::Status(status) = status else {
                panic!("{status:?}")
            };
            assert_eq!(status.mountpoint, "/mnt/lattice");
            assert_eq!(status.stores.len(), 1);
            assert_eq!(status.stores[0].id, created.id);
        });
    }

    #[test]
    fn a_malformed_frame_gets_an_error_answer_and_the_connection_closes() {
        let tmp = tempfile::tempdir().unwrap();
        serve_one(tmp.path(), async |mut s| {
            s.write_all(&[0, 0, 0, 2, 0xff, 0xff]).await.unwrap();
            let response: Response = read_frame(&mut s).await.unwrap().unwrap();
            assert!(
                matches!(response.kind, Some(response::Kind::Error(ref m)) if m.contains("malformed"))
            );
            assert_eq!(read_frame::<Response, _>(&mut s).await.unwrap(), None);
        });
    }

    #[test]
    fn an_oversized_frame_header_gets_an_error_answer_without_reading_the_body() {
        let tmp = tempfile::tempdir().unwrap();
        serve_one(tmp.path(), async |mut s| {
            s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
            let response: Response = read_frame(&mut s).await.unwrap().unwrap();
            assert!(
                matches!(response.kind, Some(response::Kind::Error(ref m)) if m.contains("exceeds"))
            );
        });
    }
}
