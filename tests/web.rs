//! The status page (`up --web`) end to end: its JSON API through a real HTTP client
//! against a real daemon, and (under `CI`) the page itself in Debian's headless
//! Chromium driven over WebDriver.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use common::{fuse_available, ok, Daemon};

/// How long a change may take to reach the page or the event stream.
const VISIBLE_WITHIN: Duration = Duration::from_secs(20);
/// How long chromedriver may take to start and to answer one command.
const DRIVER_WITHIN: Duration = Duration::from_secs(30);

type Http = Client<HttpConnector, Body>;

/// A daemon serving the status page, with a store `team`; returns it with the page's
/// `http://ADDR` and token as `lattice-mount web` prints them.
fn daemon_with_page(stores: &[&str]) -> (Daemon, String, String) {
    let d = Daemon::start_with("webby", &["--web"]);
    for s in stores {
        ok(d.run(&["create", s]));
    }
    let url = ok(d.run(&["web"])).trim().to_string();
    let (base, token) = url
        .split_once("/?token=")
        .unwrap_or_else(|| panic!("`web` printed {url:?}"));
    assert!(base.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(token.len(), 64, "{url}");
    (d, base.to_string(), token.to_string())
}

async fn send(http: &Http, request: Request<Body>) -> (StatusCode, Response<String>) {
    try_send(http, request).await.unwrap()
}

/// Sends `request` and reads the whole answer, or says why it failed.
async fn try_send(
    http: &Http,
    request: Request<Body>,
) -> Result<(StatusCode, Response<String>), String> {
    let response = http.request(request).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let text = String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())?;
    Ok((parts.status, Response::from_parts(parts, text)))
}

async fn get(http: &Http, uri: &str) -> (StatusCode, Response<String>) {
    send(http, Request::get(uri).body(Body::empty()).unwrap()).await
}

/// POSTs a form; `origin` as the Origin header, if any.
async fn post_form(
    http: &Http,
    uri: &str,
    form: &str,
    origin: Option<&str>,
) -> (StatusCode, Response<String>) {
    let mut request =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    send(http, request.body(Body::from(form.to_string())).unwrap()).await
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_the_token_lists_stores_makes_invites_and_streams_changes_from_the_mount() {
    if !fuse_available() {
        return;
    }
    let (d, base, token) = tokio::task::spawn_blocking(|| daemon_with_page(&["team"]))
        .await
        .unwrap();
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let with = |path: &str| format!("{base}{path}?token={token}");

    // Without the token (or with another), every path is 401 and says nothing.
    // The token with its last digit changed (to 0, or to 1 if it already ends in 0).
    let last = if token.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &token[..63]);
    for uri in [
        format!("{base}/"),
        format!("{base}/api/status"),
        format!("{base}/api/status?token="),
        format!("{base}/api/status?token={wrong}"),
        format!("{base}/api/events"),
        format!("{base}/no/such/path"),
    ] {
        let (status, response) = get(&http, &uri).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(!response.body().contains("team"), "{uri}: {response:?}");
        assert!(response.body().contains("access token"), "{uri}");
    }
    let (status, _) = post_form(&http, &format!("{base}/api/invite"), "store=team", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The page: inline, with a fresh nonce as its only script source.
    let (status, page) = get(&http, &with("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.body().contains("<title>lattice-mount</title>"));
    let policy = page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    let nonce = policy
        .split("script-src 'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("{policy}"));
    assert!(page.body().contains(&format!("<script nonce=\"{nonce}\">")));
    assert!(!page.body().contains("{{nonce}}"));
    assert!(!page.body().contains("src=\"http"), "no external resources");
    assert_eq!(page.headers()[header::REFERRER_POLICY], "no-referrer");

    // Status and peers: what `status --json` and `peers --json` print.
    let (status, body) = get(&http, &with("/api/status")).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let state = json_of(body.body());
    assert_eq!(state["stores"][0]["name"], "team");
    assert_eq!(state["display_name"], "webby");
    assert_eq!(body.headers()[header::CACHE_CONTROL], "no-store");
    let (status, body) = get(&http, &format!("{}&store=team", with("/api/peers"))).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let peers = json_of(body.body());
    assert_eq!(peers["peers"][0]["me"], true, "{peers}");
    let (status, body) = get(&http, &format!("{}&store=nope", with("/api/peers"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json_of(body.body())["error"]
        .as_str()
        .unwrap()
        .contains("nope"));
    let (status, body) = get(&http, &with("/api/conflicts")).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(json_of(body.body())["conflicts"], json!([]));

    // Invites: the same path as `invite`, refused from another origin.
    let invite = with("/api/invite");
    let form = "store=team&role=reader&expires=1h";
    let (status, body) = post_form(&http, &invite, form, Some("http://evil.example")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
    let (status, body) = post_form(&http, &invite, "store=nope", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
    let (status, body) = post_form(&http, &invite, "store=team&expires=soon", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
    let (status, body) = post_form(&http, &invite, &"x".repeat(8192), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body:?}");
    let own_origin = base.clone();
    let (status, body) = post_form(&http, &invite, form, Some(&own_origin)).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let invite_token = json_of(body.body())["token"].as_str().unwrap().to_string();
    assert!(invite_token.starts_with("lm1"), "{invite_token}");
    // The daemon knows it as an open invite of `team`: revoking it works.
    let revoked = ok(d.run(&["revoke", "team", &invite_token]));
    assert_eq!(revoked, "revoked the invite token for team\n");

    // A request naming this server by another name (DNS rebinding) is refused.
    let port = base.rsplit(':').next().unwrap();
    let rebound = Request::get(with("/api/status"))
        .header(header::HOST, format!("evil.example:{port}"))
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&http, rebound).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");

    // Changes made through the mount arrive as server-sent events.
    let response = http
        .request(
            Request::get(with("/api/events"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut events = response.into_body();
    let mut seen = String::new();
    let mut wrote = false;
    let deadline = Instant::now() + VISIBLE_WITHIN;
    while !seen.contains("\"path\":\"team/hello.txt\"") {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, events.frame())
            .await
            .unwrap_or_else(|_| panic!("no change event within {VISIBLE_WITHIN:?}: {seen}"))
            .expect("the event stream ended")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(std::str::from_utf8(&data).unwrap());
        }
        if !wrote && seen.contains("event: started") {
            assert!(seen.contains("data: {\"stores\":[\"team\"]}"), "{seen}");
            let file = d.path("team/hello.txt");
            tokio::task::spawn_blocking(move || std::fs::write(file, b"hello"))
                .await
                .unwrap()
                .unwrap();
            wrote = true;
        }
    }
    let line = seen.lines().find(|l| l.contains("team/hello.txt")).unwrap();
    let change = json_of(line.strip_prefix("data: ").unwrap());
    assert_eq!(change["local"], true, "{change}");
    assert!(seen.contains("event: change"), "{seen}");
    drop(events);
    tokio::task::spawn_blocking(move || drop(d)).await.unwrap();
}

/// chromedriver and the Chromium it starts, killed (with any process still using
/// this run's profile dir) when dropped, whatever happened.
struct Browser {
    driver: Child,
    profile: PathBuf,
    base: String,
    session: Option<String>,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session.
    fn start(profile: PathBuf) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so that Chromium's processes go with it.
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut browser = Browser {
            driver,
            profile,
            base: format!("http://127.0.0.1:{port}"),
            session: None,
        };
        let start = Instant::now();
        while webdriver(&browser.base, "GET", "/status", None).is_err() {
            assert!(
                start.elapsed() < DRIVER_WITHIN,
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", browser.profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let session = webdriver(&browser.base, "POST", "/session", Some(caps)).unwrap();
        browser.session = Some(session["sessionId"].as_str().unwrap().to_string());
        browser
    }

    /// Runs a WebDriver command of the session; its `value`.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let session = self.session.as_deref().expect("a session");
        let path = format!("/session/{session}{path}");
        webdriver(&self.base, method, &path, body).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The text of the element `selector` (empty while it does not exist).
    fn text(&self, selector: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';";
        let v = self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": [selector]})),
        );
        v.as_str().unwrap_or_default().to_string()
    }

    /// Waits until the text of `selector` holds every one of `parts`; returns it.
    fn wait_text(&self, selector: &str, parts: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let text = self.text(selector);
            if parts.iter().all(|p| text.contains(p)) {
                return text;
            }
            assert!(
                start.elapsed() < VISIBLE_WITHIN,
                "{selector} did not show {parts:?} within {VISIBLE_WITHIN:?}: {text:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = webdriver(&self.base, "DELETE", &format!("/session/{session}"), None);
        }
        // SAFETY: kill(2) on the process group this test started (chromedriver's pid).
        unsafe { libc::kill(-(self.driver.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.driver.wait();
        kill_users_of(&self.profile);
    }
}

/// Kills (by pid) every process whose command line names `profile`: Chromium helpers
/// that left the driver's process group.
fn kill_users_of(profile: &Path) {
    let needle = profile.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            // SAFETY: kill(2) on a process of this test's own Chromium.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// One WebDriver request over plain HTTP JSON; the answer's `value`, or its error.
fn webdriver(base: &str, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http: Http = Client::builder(TokioExecutor::new()).build_http();
        let request = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        let (status, response) = tokio::time::timeout(DRIVER_WITHIN, try_send(&http, request))
            .await
            .map_err(|_| format!("no answer within {DRIVER_WITHIN:?}"))??;
        let value = serde_json::from_str::<Value>(response.body())
            .map_err(|e| format!("{e}: {}", response.body()))?["value"]
            .take();
        match status.is_success() {
            true => Ok(value),
            false => Err(format!("{status}: {value}")),
        }
    })
}

/// Whether the Chromium test runs: under `CI` it must (a missing Chromium fails it).
fn chromium_available() -> bool {
    let installed = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| Path::new(p).exists());
    match std::env::var_os("CI") {
        None => {
            eprintln!("skipping: the Chromium test runs when CI is set");
            false
        }
        Some(_) if !installed => {
            panic!("CI is set but /usr/bin/chromium or /usr/bin/chromedriver is missing (apt-get install chromium chromium-driver)")
        }
        Some(_) => true,
    }
}

#[test]
fn under_ci_headless_chromium_shows_the_stores_and_a_change_made_in_the_mount_live() {
    if !chromium_available() || !fuse_available() {
        return;
    }
    let (d, base, token) = daemon_with_page(&["team", "photos"]);
    std::fs::write(d.path("team/notes.txt"), b"first notes").unwrap();
    let browser = Browser::start(d.dir.path().join("chromium-profile"));
    browser.command(
        "POST",
        "/url",
        Some(json!({"url": format!("{base}/?token={token}")})),
    );
    browser.wait_text("#stores tbody", &["team", "photos"]);
    browser.wait_text("#members", &["webby", "admin"]);
    browser.wait_text("#live", &["live"]);
    std::fs::write(d.path("team/from-the-mount.txt"), b"made in the mount").unwrap();
    let changes = browser.wait_text("#changes", &["team/from-the-mount.txt", "this node"]);
    eprintln!("changes on the page:\n{changes}");
    // A change also refreshes the stores: both files, 11 + 17 bytes.
    let row = browser.wait_text("#stores tr[data-store=team]", &["28 B", "syncing, eager"]);
    assert!(
        !row.contains("false") && !row.contains("deleted"),
        "no raw field on the page: {row}"
    );
    // Kept after the test (the daemon's temp dir goes): the one file it leaves.
    let shots = tempfile::Builder::new()
        .prefix("lattice-web-screenshot")
        .tempdir()
        .unwrap()
        .keep();
    let png = shots.join("status-page.png");
    let shot = browser.command("GET", "/screenshot", None);
    let bytes = base64_decode(shot.as_str().unwrap());
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    std::fs::write(&png, bytes).unwrap();
    println!("screenshot of the status page: {}", png.display());
    eprintln!("screenshot of the status page: {}", png.display());
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}
