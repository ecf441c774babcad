//! The status page (`up --web`): one small HTML page and a JSON API over HTTP, served
//! with axum. Every request needs the data dir's access token in its URL (`?token=`);
//! without it the answer is 401 and no data. The API answers what the CLI command of
//! the same name prints with `--json`, through the same control requests
//! ([`Handler::answer`]) and the same printers (`crate::output`):
//!
//! - `GET /api/status`: `status --json`
//! - `GET /api/peers?store=NAME`: `peers NAME --json`
//! - `GET /api/conflicts[?store=NAME]`: `conflicts --json`
//! - `GET /api/events[?path=PATH]`: `watch --json` as server-sent events (`started`,
//!   then a `change` per change; `watch-error` before the stream ends on a failure)
//! - `POST /api/invite` (form `store`, `role`, `expires`): `invite`, as `{"token":...}`
//!
//! Another web page open in the user's browser cannot use the API: it does not know the
//! token; a request through a DNS name it controls has a Host that is not an IP literal
//! or `localhost` (refused, 403); and a POST with a foreign `Origin` (or a cross-site
//! `Sec-Fetch-Site`) is refused (403). Responses are not cached, leak no referrer and
//! may not be framed; the page runs only its own inline script (a CSP nonce).

use std::convert::Infallible;
use std::fs::OpenOptions;
use std::future::IntoFuture;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Form, Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, ORIGIN, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::Router;
use lattice_mount::proto::control::{
    request, response, ConflictsRequest, InviteRequest, PeersRequest, Request, Response,
    StatusRequest, WatchRequest,
};
use serde::Deserialize;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::daemon::Handler;
use crate::output;

/// Where `up --web` without an address serves: loopback only, on a port the system picks.
pub const DEFAULT_ADDR: &str = "127.0.0.1:0";
/// File in the data dir holding the access token (mode 0600).
const TOKEN_FILE: &str = "web.token";
/// Random bytes in an access token: 256 bits, never guessed.
const TOKEN_BYTES: usize = 32;
/// Random bytes in a page's CSP nonce: 128 bits, as CSP asks.
const NONCE_BYTES: usize = 16;
/// Event streams open at once: each holds a task following the stores' logs; more get 503.
const MAX_EVENT_STREAMS: usize = 16;
/// Largest request body: an invite form takes a few dozen bytes.
const MAX_REQUEST_BODY: usize = 4 * 1024;
/// How often an idle event stream sends a comment, so a closed page is noticed.
const EVENT_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a stopping daemon waits for the page's requests in progress.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The page, its style and script inline: no build step, no external resources.
const PAGE: &str = include_str!("web/index.html");
/// Where the page takes the nonce that lets its inline style and script run.
const NONCE_PLACEHOLDER: &str = "{{nonce}}";
/// The policy of the page: its own inline style and script, requests to this origin only.
const PAGE_POLICY: &str = "default-src 'none'; style-src 'nonce-{{nonce}}'; \
     script-src 'nonce-{{nonce}}'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/// The policy of every other answer: nothing may load or frame it.
const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";

/// Why the status page cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The address cannot be bound.
    #[error("cannot serve the status page at {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The token file cannot be read or written.
    #[error("cannot keep the status page token in {}: {source}", path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The token file holds something else than a token.
    #[error(
        "{} does not hold a status page token: delete it and `up --web` makes a new one",
        path.display()
    )]
    MalformedToken { path: PathBuf },
    /// The token file may have been read by other users.
    #[error(
        "{} is readable by other users (mode {mode:03o}): delete it and `up --web` \
         makes a new one",
        path.display()
    )]
    TokenExposed { path: PathBuf, mode: u32 },
}

/// The status page's bound socket and access token, ready to serve.
pub struct Web {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    token: String,
}

impl Web {
    /// Binds `addr` and loads the data dir's access token (made on first use).
    pub fn open(data_dir: &Path, addr: SocketAddr) -> Result<Web, WebError> {
        let token = load_token(data_dir)?;
        let bind_error = |source| WebError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Web {
            listener,
            addr,
            token,
        })
    }

    /// The address to open: the bound one, loopback when bound to every interface.
    pub fn addr(&self) -> SocketAddr {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.addr.port())
    }

    /// The page's address with the access token.
    pub fn url(&self) -> String {
        format!("http://{}/?token={}", self.addr(), self.token)
    }
}

/// The token in `DATA_DIR/web.token`, made (0600, written whole then renamed into
/// place) when missing; refused when other users may read it or it is malformed.
fn load_token(data_dir: &Path) -> Result<String, WebError> {
    let path = data_dir.join(TOKEN_FILE);
    let io = |source| WebError::Token {
        path: path.clone(),
        source,
    };
    match OpenOptions::new().read(true).open(&path) {
        Ok(mut file) => {
            let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(WebError::TokenExposed { path, mode });
            }
            let mut text = String::new();
            // One byte more than a token, so that a longer file is seen as malformed.
            let read = (&mut file)
                .take(2 * TOKEN_BYTES as u64 + 1)
                .read_to_string(&mut text);
            match read {
                Ok(_) if is_token(text.trim_end()) => Ok(text.trim_end().to_string()),
                Ok(_) => Err(WebError::MalformedToken { path }),
                Err(e) if e.kind() == ErrorKind::InvalidData => {
                    Err(WebError::MalformedToken { path })
                }
                Err(e) => Err(io(e)),
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let token = hex(&rand::random::<[u8; TOKEN_BYTES]>());
            let fresh = data_dir.join(format!("{TOKEN_FILE}.new"));
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&fresh)
                .map_err(io)?;
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            std::fs::rename(&fresh, &path).map_err(io)?;
            Ok(token)
        }
        Err(e) => Err(io(e)),
    }
}

/// Whether `s` is a token as [`load_token`] makes them: lowercase hex of [`TOKEN_BYTES`].
fn is_token(s: &str) -> bool {
    s.len() == 2 * TOKEN_BYTES && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the page's handlers share.
struct Shared {
    handler: Handler,
    /// The BLAKE3 hash of the token: a given token is hashed and compared with it, and
    /// `blake3::Hash` compares in constant time, so the time taken tells nothing.
    token: blake3::Hash,
    /// The port served: a request's Host must name it.
    port: u16,
    /// One permit per open event stream.
    streams: Arc<Semaphore>,
    /// Turns true when the daemon stops.
    stop: watch::Receiver<bool>,
}

/// Serves the page until `stop` turns true, then lets requests in progress finish (at
/// most [`STOP_GRACE`]); event streams end at once.
pub async fn serve(web: Web, handler: Handler, stop: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(web.listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("status page: {e}");
            return;
        }
    };
    let shared = Arc::new(Shared {
        handler,
        token: blake3::hash(web.token.as_bytes()),
        port: web.addr.port(),
        streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        stop: stop.clone(),
    });
    let server =
        axum::serve(listener, router(shared)).with_graceful_shutdown(stopped(stop.clone()));
    tokio::select! {
        served = server.into_future() => {
            if let Err(e) = served {
                tracing::error!("status page stopped: {e}");
            }
        }
        _ = async { stopped(stop).await; tokio::time::sleep(STOP_GRACE).await } => {
            tracing::warn!("status page requests still running {} s after stop; dropped", STOP_GRACE.as_secs());
        }
    }
}

/// Returns once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The routes, behind the token, Host and Origin checks.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/api/peers", get(peers))
        .route("/api/conflicts", get(conflicts))
        .route("/api/events", get(events))
        .route("/api/invite", post(invite))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// The query parameter every request carries.
#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Lets a request through only with the token, a Host naming this server, and (unless
/// it is a GET) no sign of coming from another origin; hardens every answer.
async fn guard(
    State(s): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: Next,
) -> HttpResponse {
    let given = Query::<TokenQuery>::try_from_uri(request.uri())
        .ok()
        .and_then(|q| q.0.token);
    let answer = if !given.is_some_and(|t| blake3::hash(t.as_bytes()) == s.token) {
        refusal(
            StatusCode::UNAUTHORIZED,
            "the status page needs its access token: open the address `lattice-mount web` prints",
        )
    } else {
        let host = request.headers().get(HOST).and_then(|h| h.to_str().ok());
        match host {
            Some(host) if names_us(host, s.port) => {
                if request.method() == Method::GET || same_origin(request.headers(), host) {
                    next.run(request).await
                } else {
                    refusal(StatusCode::FORBIDDEN, "cross-origin requests are refused")
                }
            }
            _ => refusal(
                StatusCode::FORBIDDEN,
                "the Host must be an IP address or localhost with this port",
            ),
        }
    };
    harden(answer)
}

/// Whether `host` (a Host header) is an IP literal or `localhost`, with port `port`.
fn names_us(host: &str, port: u16) -> bool {
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    let ours = name.eq_ignore_ascii_case("localhost") || literal.parse::<IpAddr>().is_ok();
    ours && authority.port_u16().unwrap_or(80) == port
}

/// Whether a state-changing request came from the page itself (or from no browser):
/// its `Origin`, if any, is this server, and its `Sec-Fetch-Site`, if any, is
/// `same-origin` or `none` (typed by the user).
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let origin_ok = headers.get(ORIGIN).is_none_or(|o| {
        o.to_str()
            .is_ok_and(|o| o.eq_ignore_ascii_case(&format!("http://{host}")))
    });
    let site_ok = headers
        .get("sec-fetch-site")
        .is_none_or(|v| v == "same-origin" || v == "none");
    origin_ok && site_ok
}

/// `answer` with the headers every answer carries.
fn harden(mut answer: HttpResponse) -> HttpResponse {
    let h = answer.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(CONTENT_SECURITY_POLICY) {
        h.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(API_POLICY),
        );
    }
    answer
}

/// A JSON refusal: `{"error": message}` with `code`.
fn refusal(code: StatusCode, message: &str) -> HttpResponse {
    (code, json(output::error_json(message))).into_response()
}

/// A JSON body.
fn json(body: String) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], body)
}

/// The page, with a fresh nonce for its inline style and script.
async fn page() -> HttpResponse {
    let nonce = hex(&rand::random::<[u8; NONCE_BYTES]>());
    let policy = PAGE_POLICY.replace(NONCE_PLACEHOLDER, &nonce);
    let Ok(policy) = HeaderValue::from_str(&policy) else {
        return refusal(StatusCode::INTERNAL_SERVER_ERROR, "bad page policy");
    };
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (CONTENT_SECURITY_POLICY, policy),
        ],
        PAGE.replace(NONCE_PLACEHOLDER, &nonce),
    )
        .into_response()
}

/// Asks the node `kind` and renders the answer with `render` (which returns `None` for
/// an answer of another kind); a refusal becomes 400 with its reason.
async fn ask(
    s: &Shared,
    kind: request::Kind,
    render: impl FnOnce(response::Kind) -> Option<String>,
) -> HttpResponse {
    let answer = s.handler.answer(Request { kind: Some(kind) }).await;
    match answer.kind {
        Some(response::Kind::Error(message)) => refusal(StatusCode::BAD_REQUEST, &message),
        Some(kind) => match render(kind) {
            Some(body) => json(body).into_response(),
            None => refusal(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer"),
        },
        None => refusal(StatusCode::INTERNAL_SERVER_ERROR, "empty answer"),
    }
}

async fn status(State(s): State<Arc<Shared>>) -> HttpResponse {
    ask(&s, request::Kind::Status(StatusRequest {}), |k| match k {
        response::Kind::Status(st) => Some(output::status_json(&st)),
        _ => None,
    })
    .await
}

/// `?store=NAME`, optional where the CLI's is.
#[derive(Deserialize)]
struct StoreQuery {
    #[serde(default)]
    store: String,
}

async fn peers(State(s): State<Arc<Shared>>, Query(q): Query<StoreQuery>) -> HttpResponse {
    ask(
        &s,
        request::Kind::Peers(PeersRequest { store: q.store }),
        |k| match k {
            response::Kind::Peers(p) => Some(output::peers_json(&p.peers)),
            _ => None,
        },
    )
    .await
}

async fn conflicts(State(s): State<Arc<Shared>>, Query(q): Query<StoreQuery>) -> HttpResponse {
    let kind = request::Kind::Conflicts(ConflictsRequest { store: q.store });
    ask(&s, kind, |k| match k {
        response::Kind::Conflicts(c) => Some(output::conflicts_json(&c)),
        _ => None,
    })
    .await
}

/// The invite form: as `lattice-mount invite STORE --role ROLE --expires EXPIRES`.
#[derive(Deserialize)]
struct InviteForm {
    store: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    expires: String,
}

async fn invite(State(s): State<Arc<Shared>>, Form(f): Form<InviteForm>) -> HttpResponse {
    let expires = match f.expires.as_str() {
        "" => crate::cli::DEFAULT_INVITE_EXPIRY,
        e => e,
    };
    let expires = match crate::cli::parse_duration(expires) {
        Ok(d) => d,
        Err(e) => return refusal(StatusCode::BAD_REQUEST, &e),
    };
    let kind = request::Kind::Invite(InviteRequest {
        store: f.store,
        role: f.role,
        expires_secs: expires.as_secs(),
    });
    ask(&s, kind, |k| match k {
        response::Kind::Invite(i) => Some(output::invite_json(&i.token)),
        _ => None,
    })
    .await
}

/// `?path=PATH` (relative to the mount root) for the event stream.
#[derive(Deserialize)]
struct PathQuery {
    #[serde(default)]
    path: String,
}

/// An event stream's state: what it reads, and what it holds until the page leaves.
struct Following {
    from: mpsc::Receiver<Response>,
    stop: watch::Receiver<bool>,
    _follower: AbortOnDrop,
    _slot: OwnedSemaphorePermit,
}

/// A task aborted when this handle is dropped (the page left, the daemon stops).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn events(State(s): State<Arc<Shared>>, Query(q): Query<PathQuery>) -> HttpResponse {
    let Ok(slot) = s.streams.clone().try_acquire_owned() else {
        let message = format!("{MAX_EVENT_STREAMS} event streams are open already");
        return refusal(StatusCode::SERVICE_UNAVAILABLE, &message);
    };
    let (tx, from) = mpsc::channel(crate::watch::MAX_QUEUED_WATCH_RESPONSES);
    let follower = tokio::spawn(crate::watch::follow(
        s.handler.node().clone(),
        WatchRequest { path: q.path },
        tx,
    ));
    let state = Following {
        from,
        stop: s.stop.clone(),
        _follower: AbortOnDrop(follower),
        _slot: slot,
    };
    let stream = n0_future::stream::unfold(state, |mut st| async move {
        let next = tokio::select! {
            next = st.from.recv() => next,
            _ = stopped(st.stop.clone()) => None,
        };
        next.map(|r| (Ok::<_, Infallible>(event(r)), st))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(EVENT_KEEP_ALIVE))
        .into_response()
}

/// One watch response as a server-sent event.
fn event(r: Response) -> Event {
    let (name, data) = match r.kind {
        Some(response::Kind::WatchStarted(w)) => ("started", output::watch_started_json(&w)),
        Some(response::Kind::WatchEvent(e)) => ("change", output::watch_json(&e)),
        Some(response::Kind::Error(m)) => ("watch-error", output::error_json(&m)),
        other => (
            "watch-error",
            output::error_json(&format!("unexpected answer {other:?}")),
        ),
    };
    Event::default().event(name).data(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_must_be_an_ip_literal_or_localhost_with_our_port() {
        assert!(names_us("127.0.0.1:8080", 8080));
        assert!(names_us("[::1]:8080", 8080));
        assert!(names_us("LocalHost:8080", 8080));
        assert!(names_us("192.168.1.9:8080", 8080));
        assert!(names_us("127.0.0.1", 80));
        assert!(!names_us("127.0.0.1:8081", 8080));
        assert!(!names_us("evil.example:8080", 8080));
        assert!(!names_us("localhost.evil.example:8080", 8080));
        assert!(!names_us("", 8080));
    }

    #[test]
    fn a_post_from_another_origin_or_site_is_cross_origin() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let host = "127.0.0.1:8080";
        assert!(same_origin(&headers(&[]), host));
        assert!(same_origin(
            &headers(&[
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin")
            ]),
            host
        ));
        assert!(!same_origin(
            &headers(&[("origin", "http://evil.example")]),
            host
        ));
        assert!(!same_origin(&headers(&[("origin", "null")]), host));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "cross-site")]),
            host
        ));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "same-site")]),
            host
        ));
    }

    #[test]
    fn the_token_is_made_once_0600_and_kept_and_a_readable_or_bad_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let token = load_token(tmp.path()).unwrap();
        assert!(is_token(&token), "{token}");
        let path = tmp.path().join(TOKEN_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_token(tmp.path()).unwrap(), token);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_token(other.path()).unwrap(), token);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_token(tmp.path()).unwrap_err();
        assert!(
            matches!(err, WebError::TokenExposed { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, format!("{token}0")).unwrap();
        let err = load_token(tmp.path()).unwrap_err();
        assert!(matches!(err, WebError::MalformedToken { .. }), "{err}");
        std::fs::write(&path, b"\xff\xfe").unwrap();
        let err = load_token(tmp.path()).unwrap_err();
        assert!(matches!(err, WebError::MalformedToken { .. }), "{err}");
    }
}
