//! Shared harness for multi-node tests in one process: real nodes (redb stores,
//! iroh-blobs content stores) with real iroh endpoints on loopback, relays disabled,
//! and a raw endpoint for speaking the peer protocol by hand as a hostile peer would.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use lattice_mount::{Content, FileId, Kind, Net, NetConfig, Node, OpId, Relay, Role, Store};
use tokio::sync::mpsc;

/// How long a change may take to show up on another node before a test fails.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// One node with its network, in its own temporary data dir.
pub struct Peer {
    pub node: Node,
    pub net: Net,
    pub dir: tempfile::TempDir,
}

impl Peer {
    pub async fn start(name: &str) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(name, dir).await
    }

    pub async fn start_in(name: &str, dir: tempfile::TempDir) -> Peer {
        let rt = tokio::runtime::Handle::current();
        let path = dir.path().to_path_buf();
        let n = name.to_string();
        let node = tokio::task::spawn_blocking(move || Node::open(&path, Some(&n), rt))
            .await
            .unwrap()
            .unwrap();
        let config = NetConfig {
            relay: Relay::Disabled,
            bind: Some("127.0.0.1:0".parse().unwrap()),
        };
        let net = Net::start(node.clone(), config).await.unwrap();
        Peer { node, net, dir }
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.net.shutdown().await;
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || node.shutdown())
            .await
            .unwrap()
            .unwrap();
        self.dir
    }

    pub async fn create(&self, name: &str) {
        let (node, name) = (self.node.clone(), name.to_string());
        tokio::task::spawn_blocking(move || node.create_store(&name).unwrap())
            .await
            .unwrap();
    }

    pub fn store(&self, name: &str) -> Store {
        self.node.store_by_name(name).expect("store exists")
    }

    pub async fn invite(&self, store: &str, role: Role) -> String {
        self.net
            .invite(store, role, Duration::from_secs(3600))
            .await
            .unwrap()
    }

    pub async fn join(&self, token: &str) -> Result<String, lattice_mount::NetError> {
        let (tx, _rx) = mpsc::unbounded_channel();
        self.net.join(token, None, tx).await
    }
}

pub fn write_file(store: &Store, name: &str, content: Content) -> FileId {
    store
        .write(|tx| {
            let body =
                tx.state()
                    .plan_create(OpId::ROOT, name, Kind::File, 0o644, 0, 0, 0, content, 0)?;
            Ok(tx.push(body)?)
        })
        .unwrap()
}

/// Reads a file's bytes (blocking: the content store may wait for a fetch).
pub fn read_file(node: &Node, store: &Store, name: &str) -> Option<Vec<u8>> {
    tokio::task::block_in_place(|| read_file_blocking(node, store, name))
}

pub fn read_file_blocking(node: &Node, store: &Store, name: &str) -> Option<Vec<u8>> {
    let view = store.read(|s| {
        let n = s.lookup(OpId::ROOT, name).ok()?;
        s.content(n).ok()
    })?;
    let mut buf = vec![0u8; view.size as usize];
    let n = node
        .cas()
        .read(store.id(), &view.pieces, 0, &mut buf)
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

pub fn names(store: &Store) -> Vec<String> {
    store.read(|s| {
        s.readdir(OpId::ROOT)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    })
}

pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < CONVERGE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub async fn team() -> (Peer, Peer) {
    let a = Peer::start("alice").await;
    let b = Peer::start("bob").await;
    a.create("team").await;
    let token = a.invite("team", Role::Writer).await;
    b.join(&token).await.unwrap();
    (a, b)
}

/// A raw endpoint with `identity`'s key, for speaking the protocols by hand.
pub async fn raw_endpoint(identity: &lattice_mount::Identity) -> iroh::Endpoint {
    iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .secret_key(iroh::SecretKey::from_bytes(&identity.seed()))
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .bind()
        .await
        .unwrap()
}

pub fn addr_of(p: &Peer) -> iroh::EndpointAddr {
    let id = iroh::EndpointId::from_bytes(&p.node.identity().public().0).unwrap();
    iroh::EndpointAddr::from_parts(
        id,
        p.net
            .direct_addrs()
            .into_iter()
            .map(iroh::TransportAddr::Ip),
    )
}

/// Sends raw frames on one sync stream and returns the first answer (None if the
/// stream ended without one).
pub async fn raw_exchange(
    ep: &iroh::Endpoint,
    to: &Peer,
    frames: Vec<Vec<u8>>,
) -> Option<lattice_mount::proto::peer::Response> {
    let conn = ep
        .connect(addr_of(to), lattice_mount::SYNC_ALPN)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    for f in frames {
        send.write_all(&f).await.unwrap();
    }
    lattice_mount::wire::read_frame(&mut recv, lattice_mount::MAX_FRAME)
        .await
        .ok()
        .flatten()
}

pub fn frame(request: &lattice_mount::proto::peer::Request) -> Vec<u8> {
    use prost::Message;
    let body = request.encode_to_vec();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

pub fn request(
    store: &Store,
    kind: lattice_mount::proto::peer::request::Kind,
) -> lattice_mount::proto::peer::Request {
    lattice_mount::proto::peer::Request {
        store_id: bytes::Bytes::copy_from_slice(&store.id().0),
        addrs: Vec::new(),
        kind: Some(kind),
    }
}

pub fn refusal(r: Option<lattice_mount::proto::peer::Response>) -> lattice_mount::Refusal {
    match r.and_then(|r| r.kind) {
        Some(lattice_mount::proto::peer::response::Kind::Refusal(e)) => e.into(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The code of a peer's refusal; panics on any other error.
pub fn refused(err: &lattice_mount::NetError) -> lattice_mount::RefusalCode {
    match err {
        lattice_mount::NetError::Refused { refusal, .. } => refusal.code,
        other => panic!("expected a refusal, got {other}"),
    }
}

pub fn pushed(r: Option<lattice_mount::proto::peer::Response>) -> (u32, u32) {
    match r.and_then(|r| r.kind) {
        Some(lattice_mount::proto::peer::response::Kind::Pushed(p)) => (p.applied, p.refused),
        other => panic!("expected Pushed, got {other:?}"),
    }
}

/// An op stamped at `wall_ms` (counter 0).
pub fn op_at(wall_ms: u64, body: lattice_mount::OpBody) -> lattice_mount::Op {
    lattice_mount::Op {
        hlc: lattice_mount::Hlc {
            wall_ms,
            counter: 0,
        },
        body,
    }
}

/// The body of a `Create` of a regular file `name` at the store root holding `content`.
pub fn root_file(name: &str, content: Content) -> lattice_mount::OpBody {
    lattice_mount::OpBody::Create(lattice_mount::Create {
        parent: OpId::ROOT,
        name: name.into(),
        kind: Kind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        mtime_ns: 0,
        content,
    })
}
