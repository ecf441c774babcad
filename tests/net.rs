//! Multi-node tests in one process: real nodes (redb stores, iroh-blobs content stores)
//! with real iroh endpoints on loopback, relays disabled. No FUSE: files are written
//! and read through the store and content-store APIs the mount uses.

use std::time::{Duration, Instant};

use lattice_mount::fs::op::{Content, FileId, Kind, OpId, Role};
use lattice_mount::fs::Node as FsNode;
use lattice_mount::net::{Net, NetConfig, Relay};
use lattice_mount::node::Node;
use lattice_mount::store::Store;
use tokio::sync::mpsc;

/// How long a change may take to show up on another node before a test fails.
const CONVERGE: Duration = Duration::from_secs(20);

struct Peer {
    node: Node,
    net: Net,
    _dir: tempfile::TempDir,
}

impl Peer {
    async fn start(name: &str) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(name, dir).await
    }

    async fn start_in(name: &str, dir: tempfile::TempDir) -> Peer {
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
        Peer {
            node,
            net,
            _dir: dir,
        }
    }

    async fn stop(self) -> tempfile::TempDir {
        self.net.shutdown().await;
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || node.shutdown())
            .await
            .unwrap()
            .unwrap();
        self._dir
    }

    async fn create(&self, name: &str) {
        let (node, name) = (self.node.clone(), name.to_string());
        tokio::task::spawn_blocking(move || node.create_store(&name).unwrap())
            .await
            .unwrap();
    }

    fn store(&self, name: &str) -> Store {
        self.node.store_by_name(name).expect("store exists")
    }

    async fn invite(&self, store: &str, role: Role) -> String {
        self.net
            .invite(store, role, Duration::from_secs(3600))
            .await
            .unwrap()
    }

    async fn join(&self, token: &str) -> Result<String, lattice_mount::net::NetError> {
        let (tx, _rx) = mpsc::unbounded_channel();
        self.net.join(token, None, tx).await
    }
}

fn write_file(store: &Store, name: &str, content: Content) -> FileId {
    store
        .write(|tx| {
            let body =
                tx.state()
                    .plan_create(OpId::ROOT, name, Kind::File, 0o644, 0, 0, 0, content, 0)?;
            Ok(tx.push(body))
        })
        .unwrap()
}

/// Reads a file's bytes (blocking: the content store may wait for a fetch).
fn read_file(node: &Node, store: &Store, name: &str) -> Option<Vec<u8>> {
    tokio::task::block_in_place(|| read_file_blocking(node, store, name))
}

fn read_file_blocking(node: &Node, store: &Store, name: &str) -> Option<Vec<u8>> {
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

fn names(store: &Store) -> Vec<String> {
    store.read(|s| {
        s.readdir(OpId::ROOT)
            .unwrap()
            .into_iter()
            .map(|(n, _): (String, FsNode)| n)
            .collect()
    })
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < CONVERGE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_share_a_store_through_an_invite() {
    let a = Peer::start("alice").await;
    let b = Peer::start("bob").await;
    a.create("team").await;
    let team_a = a.store("team");
    write_file(
        &team_a,
        "before.txt",
        Content::Inline("written before the join".into()),
    );
    let big = random_bytes(3 * 1024 * 1024 + 17, 7);
    let cas = a.node.cas().clone();
    let big2 = big.clone();
    let content = tokio::task::spawn_blocking(move || cas.put_bytes(&big2).unwrap())
        .await
        .unwrap();
    write_file(&team_a, "big.bin", content);

    let token = a.invite("team", Role::Writer).await;
    assert_eq!(b.join(&token).await.unwrap(), "team");
    let team_b = b.store("team");
    assert!(names(&team_b).contains(&"before.txt".to_string()));

    // Content arrives eagerly.
    let (bn, tb) = (b.node.clone(), team_b.clone());
    let got = eventually("big.bin on B", || read_file(&bn, &tb, "big.bin")).await;
    assert_eq!(got, big);

    // A change on B reaches A by gossip.
    write_file(
        &team_b,
        "from-b.txt",
        Content::Inline("hello from b".into()),
    );
    let (an, ta) = (a.node.clone(), team_a.clone());
    let got = eventually("from-b.txt on A", || read_file(&an, &ta, "from-b.txt")).await;
    assert_eq!(got, b"hello from b");

    // The token is single use.
    let c = Peer::start("carol").await;
    let err = c.join(&token).await.unwrap_err().to_string();
    assert!(err.contains("used") || err.contains("redeemed"), "{err}");
    assert!(c.node.store_by_name("team").is_none());

    // Identical trees.
    let dump = |s: &Store| s.read(|s| s.canonical_dump());
    eventually("identical trees", || {
        (dump(&team_a) == dump(&team_b)).then_some(())
    })
    .await;
    c.stop().await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_stores_diverge_and_merge_on_resume() {
    let (a, b) = team().await;
    let (team_a, team_b) = (a.store("team"), b.store("team"));
    a.net.set_paused(Some("team"), true).unwrap();
    b.net.set_paused(Some("team"), true).unwrap();
    write_file(&team_a, "a-offline.txt", Content::Inline("a".into()));
    write_file(&team_b, "b-offline.txt", Content::Inline("b".into()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !names(&team_b).contains(&"a-offline.txt".to_string()),
        "paused stores stay apart"
    );
    let err = a.net.sync("team").await.unwrap_err().to_string();
    assert!(err.contains("paused"), "{err}");
    a.net.set_paused(Some("team"), false).unwrap();
    b.net.set_paused(Some("team"), false).unwrap();
    let dump = |s: &Store| s.read(|s| s.canonical_dump());
    eventually("merged trees", || {
        let both = names(&team_a).contains(&"b-offline.txt".to_string())
            && names(&team_b).contains(&"a-offline.txt".to_string());
        (both && dump(&team_a) == dump(&team_b)).then_some(())
    })
    .await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_member_is_cut_off_and_its_later_writes_refused() {
    let (a, b) = team().await;
    let (team_a, team_b) = (a.store("team"), b.store("team"));
    let bob = b.node.identity().public();
    write_file(&team_b, "before-revoke.txt", Content::Inline("ok".into()));
    let (an, ta) = (a.node.clone(), team_a.clone());
    eventually("bob's write before the revocation", || {
        read_file(&an, &ta, "before-revoke.txt")
    })
    .await;
    // Bob is offline when he is revoked, so he still writes as a member.
    b.net.set_paused(Some("team"), true).unwrap();
    let revoked = a.net.revoke("team", &bob.to_hex()[..10]).await.unwrap();
    assert_eq!(revoked, lattice_mount::net::Revoked::Member(bob));
    write_file(&team_b, "after-revoke.txt", Content::Inline("x".into()));
    b.net.set_paused(Some("team"), false).unwrap();
    // Alice refuses to sync with bob from now on; his later write never reaches her.
    let report = b.net.sync("team").await.unwrap();
    assert_eq!(report.peers, 0);
    assert!(
        report
            .failed
            .iter()
            .any(|(_, why)| why.contains("not a member")),
        "{report:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!names(&team_a).contains(&"after-revoke.txt".to_string()));
    assert!(names(&team_a).contains(&"before-revoke.txt".to_string()));
    assert!(team_a.read(|s| s.member(&bob).is_none()));
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_addresses_and_joined_stores_survive_a_restart() {
    let (a, b) = team().await;
    let a_key = a.node.identity().public();
    let dir = b.stop().await;
    let book = std::fs::read_to_string(dir.path().join("peers")).unwrap();
    assert!(book.contains(&a_key.to_hex()), "{book}");
    let b = Peer::start_in("bob", dir).await;
    let team_b = b.store("team");
    write_file(
        &a.store("team"),
        "later.txt",
        Content::Inline("after restart".into()),
    );
    let (bn, tb) = (b.node.clone(), team_b.clone());
    let got = eventually("later.txt on restarted B", || {
        read_file(&bn, &tb, "later.txt")
    })
    .await;
    assert_eq!(got, b"after restart");
    b.stop().await;
    a.stop().await;
}

/// Alice creates store `team` and bob joins it as a writer.
async fn team() -> (Peer, Peer) {
    let a = Peer::start("alice").await;
    let b = Peer::start("bob").await;
    a.create("team").await;
    let token = a.invite("team", Role::Writer).await;
    b.join(&token).await.unwrap();
    (a, b)
}

/// A raw endpoint with `identity`'s key, for speaking the protocols by hand.
async fn raw_endpoint(identity: &lattice_mount::identity::Identity) -> iroh::Endpoint {
    iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .secret_key(iroh::SecretKey::from_bytes(&identity.seed()))
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .bind()
        .await
        .unwrap()
}

fn addr_of(p: &Peer) -> iroh::EndpointAddr {
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
async fn raw_exchange(
    ep: &iroh::Endpoint,
    to: &Peer,
    frames: Vec<Vec<u8>>,
) -> Option<lattice_mount::proto::peer::Response> {
    let conn = ep
        .connect(addr_of(to), lattice_mount::net::SYNC_ALPN)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    for f in frames {
        send.write_all(&f).await.unwrap();
    }
    lattice_mount::wire::read_frame(&mut recv, lattice_mount::net::MAX_FRAME)
        .await
        .ok()
        .flatten()
}

fn frame(request: &lattice_mount::proto::peer::Request) -> Vec<u8> {
    use prost::Message;
    let body = request.encode_to_vec();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

fn request(
    store: &Store,
    kind: lattice_mount::proto::peer::request::Kind,
) -> lattice_mount::proto::peer::Request {
    lattice_mount::proto::peer::Request {
        store_id: bytes::Bytes::copy_from_slice(&store.id().0),
        addrs: Vec::new(),
        kind: Some(kind),
    }
}

fn refusal(r: Option<lattice_mount::proto::peer::Response>) -> String {
    match r.and_then(|r| r.kind) {
        Some(lattice_mount::proto::peer::response::Kind::Error(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn pushed(r: Option<lattice_mount::proto::peer::Response>) -> (u32, u32) {
    match r.and_then(|r| r.kind) {
        Some(lattice_mount::proto::peer::response::Kind::Pushed(p)) => (p.applied, p.refused),
        other => panic!("expected Pushed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input_is_refused_and_changes_nothing() {
    use lattice_mount::fs::op::{Op, OpBody};
    use lattice_mount::hlc::Hlc;
    use lattice_mount::identity::Identity;
    use lattice_mount::intention::Intention;
    use lattice_mount::proto::peer::{request::Kind as Req, Frame, Intentions, Patch, Want};

    let a = Peer::start("alice").await;
    a.create("team").await;
    a.create("secret").await;
    let (team, secret) = (a.store("team"), a.store("secret"));
    let cas = a.node.cas().clone();
    let hidden =
        tokio::task::spawn_blocking(move || cas.put_bytes(&random_bytes(1 << 20, 3)).unwrap())
            .await
            .unwrap();
    write_file(&secret, "hidden.bin", hidden.clone());

    // Mallory is a legitimate writer of `team` only; a stranger is nobody.
    let m = Peer::start("mallory").await;
    let token = a.invite("team", Role::Writer).await;
    m.join(&token).await.unwrap();
    let mallory = m.node.identity().clone();
    m.stop().await;
    let stranger = Identity::generate();
    let before = team.stats().intentions;
    let dump = team.read(|s| s.canonical_dump());

    let op = |name: &str| Op {
        hlc: Hlc {
            wall_ms: lattice_mount::hlc::now_ms(),
            counter: 0,
        },
        body: OpBody::Create(lattice_mount::fs::op::Create {
            parent: OpId::ROOT,
            name: name.into(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            mtime_ns: 0,
            content: Content::Inline("x".into()),
        }),
    };
    let heads: Vec<lattice_mount::intention::Hash> = Vec::new();
    let by_stranger =
        Intention::create(&stranger, team.id(), None, heads.clone(), vec![op("s")]).unwrap();
    let valid = Intention::create(&mallory, team.id(), None, heads.clone(), vec![op("m")]).unwrap();
    let mut forged = valid.bytes.to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;

    let ep_m = raw_endpoint(&mallory).await;
    let ep_s = raw_endpoint(&stranger).await;

    // A stranger may not sync, pull or push.
    for kind in [
        Req::Want(Want { hashes: vec![] }),
        Req::Reconcile(Frame {
            frame: bytes::Bytes::from_static(&[0x61]),
        }),
        Req::Push(Intentions {
            intentions: vec![by_stranger.bytes.clone()],
        }),
        Req::Patch(Patch {
            chunk: bytes::Bytes::from_static(&[0; 32]),
            base: bytes::Bytes::from_static(&[0; 32]),
        }),
    ] {
        let err = refusal(raw_exchange(&ep_s, &a, vec![frame(&request(&team, kind))]).await);
        assert!(err.contains("not a member"), "{err}");
    }
    // A member may not patch a chunk only another store references, nor send bad hashes.
    let Content::Manifest {
        hash: hidden_hash, ..
    } = hidden.clone()
    else {
        panic!("1 MiB is a manifest")
    };
    for (chunk, why) in [
        (hidden_hash.0.to_vec(), "references no such chunk"),
        (vec![1, 2, 3], "not 32 bytes"),
    ] {
        let kind = Req::Patch(Patch {
            chunk: chunk.into(),
            base: bytes::Bytes::copy_from_slice(&hidden_hash.0),
        });
        let err = refusal(raw_exchange(&ep_m, &a, vec![frame(&request(&team, kind))]).await);
        assert!(err.contains(why), "{err}");
    }
    // Nor open gossip or blob connections.
    let conn = ep_s.connect(addr_of(&a), iroh_blobs::ALPN).await;
    if let Ok(conn) = conn {
        let got = iroh_blobs::get::request::get_blob(conn, iroh_blobs::Hash::from_bytes([0; 32]))
            .bytes()
            .await;
        assert!(got.is_err());
    }

    // A member pushing forged or foreign intentions: refused, nothing stored.
    let forged_push = Req::Push(Intentions {
        intentions: vec![bytes::Bytes::from(forged)],
    });
    assert_eq!(
        pushed(raw_exchange(&ep_m, &a, vec![frame(&request(&team, forged_push))]).await),
        (0, 1)
    );
    let foreign = Req::Push(Intentions {
        intentions: vec![by_stranger.bytes.clone()],
    });
    assert_eq!(
        pushed(raw_exchange(&ep_m, &a, vec![frame(&request(&team, foreign))]).await),
        (0, 1)
    );

    // Oversized and malformed frames get an error answer.
    let huge = ((lattice_mount::net::MAX_FRAME + 1) as u32)
        .to_be_bytes()
        .to_vec();
    let err = refusal(raw_exchange(&ep_m, &a, vec![huge]).await);
    assert!(err.contains("exceeds"), "{err}");
    let garbage = vec![0, 0, 0, 3, 0xff, 0xff, 0xff];
    let err = refusal(raw_exchange(&ep_m, &a, vec![garbage]).await);
    assert!(err.contains("bad request"), "{err}");
    let bad_neg = Req::Reconcile(Frame {
        frame: bytes::Bytes::from_static(&[0x61, 0x01, 0x21]),
    });
    let err = refusal(raw_exchange(&ep_m, &a, vec![frame(&request(&team, bad_neg))]).await);
    assert!(err.contains("malformed"), "{err}");

    // A blob of a store mallory is not a member of is refused.
    let lattice_mount::fs::op::Content::Manifest { hash, .. } = hidden else {
        panic!("not inline")
    };
    let conn = ep_m.connect(addr_of(&a), iroh_blobs::ALPN).await.unwrap();
    let got = iroh_blobs::get::request::get_blob(conn, iroh_blobs::Hash::from_bytes(hash.0))
        .bytes()
        .await;
    assert!(got.is_err(), "a blob of another store was served");

    // The replayed token is refused.
    let c = Peer::start("carol").await;
    let err = c.join(&token).await.unwrap_err().to_string();
    assert!(err.contains("used") || err.contains("redeemed"), "{err}");

    // Nothing changed, and the daemon still serves its members.
    assert_eq!(team.stats().intentions, before);
    assert_eq!(team.read(|s| s.canonical_dump()), dump);
    let ok = Req::Push(Intentions {
        intentions: vec![valid.bytes.clone()],
    });
    assert_eq!(
        pushed(raw_exchange(&ep_m, &a, vec![frame(&request(&team, ok))]).await).1,
        0
    );
    eventually("mallory's valid intention", || {
        (team.stats().intentions > before).then_some(())
    })
    .await;
    c.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_join_resumes_after_a_restart() {
    let a = Peer::start("alice").await;
    a.create("big").await;
    let store = a.store("big");
    // About 4 MiB of history: several bootstrap batches.
    for k in 0..400 {
        let body = random_bytes(10 * 1024, k);
        write_file(&store, &format!("f{k}"), Content::Inline(body.into()));
    }
    store.flush().unwrap();
    let token = a.invite("big", Role::Writer).await;

    let b = Peer::start("bob").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let net = b.net.clone();
    let join = tokio::spawn(async move { net.join(&token, None, tx).await });
    let first = rx.recv().await.expect("progress before the end");
    assert!(first.intentions < first.total, "{first:?}");
    join.abort();
    let dir = b.stop().await;
    assert!(std::fs::read_dir(dir.path().join("stores"))
        .unwrap()
        .any(|e| e.unwrap().path().join("joining").exists()));

    let b = Peer::start_in("bob", dir).await;
    let bn = b.node.clone();
    eventually("the resumed join to finish", || {
        bn.store_by_name("big").map(|_| ())
    })
    .await;
    let dump = |s: &Store| s.read(|s| s.canonical_dump());
    let (ta, tb) = (a.store("big"), b.store("big"));
    eventually("identical trees", || (dump(&ta) == dump(&tb)).then_some(())).await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_demand_stores_fetch_content_on_first_read_and_pause_survives_a_restart() {
    let (a, b) = team().await;
    b.net
        .set_fetch_mode("team", lattice_mount::net::settings::FetchMode::OnDemand)
        .unwrap();
    let data = random_bytes(2 * 1024 * 1024 + 5, 9);
    let cas = a.node.cas().clone();
    let d2 = data.clone();
    let content = tokio::task::spawn_blocking(move || cas.put_bytes(&d2).unwrap())
        .await
        .unwrap();
    write_file(&a.store("team"), "lazy.bin", content.clone());
    let team_b = b.store("team");
    eventually("lazy.bin listed on B", || {
        names(&team_b)
            .contains(&"lazy.bin".to_string())
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cas_b = b.node.cas().clone();
    let pieces = vec![content];
    let missing = tokio::task::block_in_place(|| cas_b.missing(&pieces).unwrap());
    assert!(
        !missing.is_empty(),
        "on-demand: nothing fetched before a read"
    );
    assert_eq!(read_file(&b.node, &team_b, "lazy.bin").unwrap(), data);

    b.net.set_paused(Some("team"), true).unwrap();
    let dir = b.stop().await;
    let b = Peer::start_in("bob", dir).await;
    let st = b.net.store_net(&b.store("team"));
    assert!(st.paused, "paused state survives a restart");
    assert_eq!(st.fetch, lattice_mount::net::settings::FetchMode::OnDemand);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_edit_of_a_large_file_is_patched_not_fetched_whole() {
    let (a, b) = team().await;
    let (team_a, team_b) = (a.store("team"), b.store("team"));
    let old = random_bytes(6 * 1024 * 1024, 31);
    let put = |data: Vec<u8>| {
        let cas = a.node.cas().clone();
        tokio::task::spawn_blocking(move || cas.put_bytes(&data).unwrap())
    };
    let file = write_file(&team_a, "big.bin", put(old.clone()).await.unwrap());
    let (bn, tb) = (b.node.clone(), team_b.clone());
    let got = eventually("big.bin on B", || read_file(&bn, &tb, "big.bin")).await;
    assert!(got == old);
    assert_eq!(b.net.patched_chunks(), 0);

    let mut new = old.clone();
    new[4 * 1024 * 1024 + 99] ^= 1;
    let content = put(new.clone()).await.unwrap();
    team_a
        .write(|tx| {
            let body = tx.state().plan_write(file, content, 1)?;
            tx.push(body);
            Ok(())
        })
        .unwrap();
    let (bn, tb) = (b.node.clone(), team_b.clone());
    let want = new.clone();
    let got = eventually("the edit on B", || {
        read_file(&bn, &tb, "big.bin").filter(|got| *got == want)
    })
    .await;
    assert!(got == new);
    assert_eq!(
        b.net.patched_chunks(),
        1,
        "the changed chunk came as a patch"
    );
    b.stop().await;
    a.stop().await;
}
