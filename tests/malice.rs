//! A hostile peer against real nodes: an in-process iroh endpoint speaking our ALPNs
//! with forged, foreign, oversized and malformed input. Every refusal must leave the
//! victim's state unchanged and the victim still serving its members.

mod peers;

use lattice_mount::fs::op::{Content, Kind, OpId, Role};
use peers::*;

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

// ---------------------------------------------------------------------------------
// Fuzzing over the real wire: edited and random sync-protocol frames from a member
// and from a stranger. The decoders' own fuzz tests are in src/fuzz/; this checks
// that the serving code around them, on a real node, never panics on such input,
// answers or ends each stream, and keeps serving its members.

/// Panics seen in the nodes' threads (tokio workers, store actors) of this process
/// since the hook was installed; tests' own assertion panics are not counted.
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One hostile byte string sent on a fresh sync stream, which is then finished; the
/// first answer (None if the node ended the stream without one). Err if the node
/// neither answers nor ends the stream in time.
async fn hostile_exchange(
    ep: &iroh::Endpoint,
    to: &Peer,
    bytes: &[u8],
) -> Result<Option<lattice_mount::proto::peer::Response>, tokio::time::error::Elapsed> {
    let conn = ep
        .connect(addr_of(to), lattice_mount::net::SYNC_ALPN)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    let read = lattice_mount::wire::read_frame(&mut recv, lattice_mount::net::MAX_FRAME);
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .map(|r| r.ok().flatten())
}

/// `valid` after a few random byte edits drawn from `rng`: bit flips, truncation, a
/// run repeated many times, a byte nudged (length prefixes one off), random bytes.
fn edited(valid: &[u8], rng: &mut impl rand::Rng) -> Vec<u8> {
    let mut b = valid.to_vec();
    for _ in 0..rng.random_range(1..3) {
        let at = rng.random_range(0..=b.len());
        match rng.random_range(0..5) {
            0 if at < b.len() => b[at] ^= 1 << rng.random_range(0..8),
            1 => b.truncate(at),
            2 => {
                let run = b[at..(at + rng.random_range(1..8)).min(b.len())].to_vec();
                let copies = run.repeat(rng.random_range(2..2000));
                b.splice(at..at, copies);
            }
            3 if at < b.len() => b[at] = b[at].wrapping_add(rng.random_range(1..4)),
            _ => {
                let noise: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
                b.splice(at..at, noise);
            }
        }
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edited_and_random_sync_frames_never_panic_the_node_and_it_keeps_serving() {
    use lattice_mount::fs::op::{Op, OpBody};
    use lattice_mount::identity::Identity;
    use lattice_mount::intention::Intention;
    use lattice_mount::proto::peer::request::Kind as Req;
    use lattice_mount::proto::peer::{Bootstrap, Frame, Intentions, Patch, Redeem, Want};
    use rand::SeedableRng;

    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or_default();
        if name.starts_with("tokio-") || name.starts_with("store-") {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        default_hook(info)
    }));

    let a = Peer::start("alice").await;
    a.create("team").await;
    let team = a.store("team");
    let m = Peer::start("mallory").await;
    m.join(&a.invite("team", Role::Writer).await).await.unwrap();
    let mallory = m.node.identity().clone();
    m.stop().await;
    let (ep_m, ep_s) = (
        raw_endpoint(&mallory).await,
        raw_endpoint(&Identity::generate()).await,
    );

    let op = Op {
        hlc: lattice_mount::hlc::Hlc {
            wall_ms: lattice_mount::hlc::now_ms(),
            counter: 0,
        },
        body: OpBody::SetMeta(lattice_mount::fs::op::SetMeta {
            file: OpId::ROOT,
            mtime_ns: Some(1),
            ..Default::default()
        }),
    };
    let valid = Intention::create(&mallory, team.id(), None, vec![], vec![op]).unwrap();
    let bytes32 = || bytes::Bytes::from_static(&[7; 32]);
    let kinds = [
        Req::Redeem(Redeem {
            secret: bytes32(),
            display_name: "eve".into(),
        }),
        Req::Bootstrap(Bootstrap { from: 1 }),
        Req::Reconcile(Frame {
            frame: bytes::Bytes::from_static(&[0x61, 0x00, 0x00, 0x01, 0x00]),
        }),
        Req::Want(Want {
            hashes: vec![bytes32(); 3],
        }),
        Req::Push(Intentions {
            intentions: vec![valid.bytes.clone()],
        }),
        Req::Patch(Patch {
            chunk: bytes32(),
            base: bytes32(),
        }),
    ];
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..120 {
        let kind = kinds[round % kinds.len()].clone();
        let input = edited(&frame(&request(&team, kind)), &mut rng);
        let ep = if round % 4 == 3 { &ep_s } else { &ep_m };
        let answered = hostile_exchange(ep, &a, &input).await;
        assert!(
            answered.is_ok(),
            "seed {seed} round {round}: no answer, no end"
        );
    }

    assert_eq!(
        PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "seed {seed}"
    );
    let want = Req::Want(Want { hashes: vec![] });
    let still = hostile_exchange(&ep_m, &a, &frame(&request(&team, want))).await;
    assert!(
        matches!(
            still.ok().flatten().and_then(|r| r.kind),
            Some(lattice_mount::proto::peer::response::Kind::Intentions(_))
        ),
        "the node stopped serving its members"
    );
    a.stop().await;
}

// Bounds: a member's claimed sizes and a responder's endless answers cost a replica a
// bounded amount of memory and time, and never abort it.

mod bounds {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use iroh::endpoint::Connection;
    use iroh::protocol::{AcceptError, ProtocolHandler, Router};
    use lattice_mount::fs::op::{Content, Create, Kind, Op, OpBody, OpId, Role};
    use lattice_mount::hlc::{now_ms, Hlc};
    use lattice_mount::identity::Identity;
    use lattice_mount::intention::{Hash, Intention};
    use lattice_mount::net::{MAX_FRAME, MAX_RECONCILE_DIFF, SYNC_ALPN};
    use lattice_mount::proto::peer::{
        request::Kind as Req, response::Kind as Resp, Blocks, Frame, Intentions, Request, Response,
        Want,
    };
    use lattice_mount::sync::reconcile::MAX_ROUNDS;
    use lattice_mount::wire::{read_frame, write_frame};
    use parking_lot::Mutex;

    use super::peers::*;

    /// What a hostile member answers on the sync protocol.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// Every reconciliation frame: "nothing differs".
        InSync,
        /// Every reconciliation frame: "the whole range differs", so it never ends.
        EndlessRounds,
        /// Every reconciliation frame: 8000 ids only it has, and "the rest differs".
        EndlessNeeds,
    }

    /// IDs a hostile frame of [`Answer::EndlessNeeds`] claims per round.
    const IDS_PER_ROUND: u32 = 8000;

    /// A hostile member's sync handler, counting what it was asked.
    #[derive(Clone, Debug)]
    struct Hostile {
        answer: Answer,
        /// Most reconciliation frames asked on one stream.
        rounds: Arc<AtomicU32>,
        /// Hashes named by each `Want`.
        wants: Arc<Mutex<Vec<usize>>>,
        /// Patch requests answered with a claimed 2^40-byte chunk.
        patches: Arc<AtomicU32>,
        /// Ids handed out so far, so each round claims new ones.
        next_id: Arc<AtomicU32>,
    }

    impl Hostile {
        fn new(answer: Answer) -> Self {
            Hostile {
                answer,
                rounds: Arc::default(),
                wants: Arc::default(),
                patches: Arc::default(),
                next_id: Arc::default(),
            }
        }

        fn frame(&self) -> Vec<u8> {
            // Negentropy v1: version, then ranges of (bound, mode, payload). A bound is a
            // timestamp varint (0 = infinity, else delta + 1) and an id-prefix length.
            let mut f = vec![0x61];
            if let Answer::InSync = self.answer {
                return f;
            }
            if let Answer::EndlessNeeds = self.answer {
                f.extend([0x02, 0x00, 0x02]); // up to timestamp 1: an id list
                f.extend([
                    0x80 | (IDS_PER_ROUND >> 7) as u8,
                    (IDS_PER_ROUND & 0x7f) as u8,
                ]);
                let first = self.next_id.fetch_add(IDS_PER_ROUND, Ordering::Relaxed);
                for i in first..first + IDS_PER_ROUND {
                    f.extend_from_slice(Hash::of(&i.to_le_bytes()).0.as_slice());
                }
            }
            f.extend([0x00, 0x00, 0x01]); // up to infinity: a fingerprint
            f.extend([0xab; 16]);
            f
        }
    }

    impl ProtocolHandler for Hostile {
        async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let me = self.clone();
                tokio::spawn(async move {
                    let mut rounds = 0;
                    while let Ok(Some(req)) = read_frame::<Request, _>(&mut recv, MAX_FRAME).await {
                        let kind = match req.kind {
                            Some(Req::Reconcile(_)) => {
                                rounds += 1;
                                me.rounds.fetch_max(rounds, Ordering::Relaxed);
                                Resp::Reconcile(Frame {
                                    frame: me.frame().into(),
                                })
                            }
                            Some(Req::Want(w)) => {
                                me.wants.lock().push(w.hashes.len());
                                Resp::Intentions(Intentions::default())
                            }
                            Some(Req::Patch(_)) => {
                                me.patches.fetch_add(1, Ordering::Relaxed);
                                Resp::Blocks(Blocks {
                                    size: 1 << 40,
                                    blocks: Vec::new(),
                                })
                            }
                            _ => Resp::Error("no".into()),
                        };
                        let answer = Response { kind: Some(kind) };
                        if write_frame(&mut send, &answer, MAX_FRAME).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Ok(())
        }
    }

    /// A member of alice's `team` (joined as a writer, then gone) whose key now speaks
    /// through a hostile router serving `hostile` on the sync ALPN and `blobs` on the
    /// blob ALPN. Alice has learned its address and holds a connection from it.
    struct Mallory {
        identity: Identity,
        router: Router,
        conn: Connection,
    }

    async fn mallory(
        a: &Peer,
        hostile: Hostile,
        blobs: &iroh_blobs::store::mem::MemStore,
    ) -> Mallory {
        let m = Peer::start("mallory").await;
        let token = a.invite("team", Role::Writer).await;
        m.join(&token).await.unwrap();
        let identity = m.node.identity().clone();
        m.stop().await;
        let ep = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
            .relay_mode(iroh::RelayMode::Disabled)
            .secret_key(iroh::SecretKey::from_bytes(&identity.seed()))
            .alpns(vec![SYNC_ALPN.to_vec(), iroh_blobs::ALPN.to_vec()])
            .bind_addr("127.0.0.1:0")
            .unwrap()
            .bind()
            .await
            .unwrap();
        let addrs: Vec<String> = ep.bound_sockets().iter().map(|a| a.to_string()).collect();
        let router = Router::builder(ep.clone())
            .accept(SYNC_ALPN, hostile)
            .accept(
                iroh_blobs::ALPN,
                iroh_blobs::BlobsProtocol::new(blobs, None),
            )
            .spawn();
        let conn = ep.connect(addr_of(a), SYNC_ALPN).await.unwrap();
        // Any request teaches alice where mallory is now.
        let want = Request {
            addrs,
            ..request(&a.store("team"), Req::Want(Want::default()))
        };
        ask(&conn, &want).await;
        Mallory {
            identity,
            router,
            conn,
        }
    }

    /// Sends `req` on a new stream of `conn` and returns the answer.
    async fn ask(conn: &Connection, req: &Request) -> Response {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        write_frame(&mut send, req, MAX_FRAME).await.unwrap();
        let answer = read_frame(&mut recv, MAX_FRAME).await.unwrap().unwrap();
        let _ = send.finish();
        answer
    }

    /// Alice still answers a member and still reconciles with nobody stuck.
    async fn still_serving(a: &Peer, conn: &Connection) {
        let req = request(&a.store("team"), Req::Want(Want::default()));
        let answer = ask(conn, &req).await;
        assert!(
            matches!(answer.kind, Some(Resp::Intentions(_))),
            "{answer:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_responder_that_never_ends_a_reconciliation_is_cut_off_at_the_round_limit() {
        let a = Peer::start("alice").await;
        a.create("team").await;
        let hostile = Hostile::new(Answer::EndlessRounds);
        let blobs = iroh_blobs::store::mem::MemStore::new();
        let m = mallory(&a, hostile.clone(), &blobs).await;
        let report = tokio::time::timeout(Duration::from_secs(120), a.net.sync("team"))
            .await
            .expect("the reconciliation ended")
            .unwrap();
        let (_, why) = report
            .failed
            .iter()
            .find(|(k, _)| *k == m.identity.public())
            .expect("mallory's reconciliation failed");
        assert!(
            why.contains(&format!("within {MAX_ROUNDS} rounds")),
            "{why}"
        );
        let rounds = hostile.rounds.load(Ordering::Relaxed);
        assert!(rounds <= MAX_ROUNDS + 1, "{rounds} rounds");
        still_serving(&a, &m.conn).await;
        m.router.shutdown().await.unwrap();
        a.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_responder_claiming_endless_intentions_is_asked_for_a_bounded_few() {
        let a = Peer::start("alice").await;
        a.create("team").await;
        let hostile = Hostile::new(Answer::EndlessNeeds);
        let blobs = iroh_blobs::store::mem::MemStore::new();
        let m = mallory(&a, hostile.clone(), &blobs).await;
        let report = tokio::time::timeout(Duration::from_secs(120), a.net.sync("team"))
            .await
            .expect("the reconciliation ended")
            .unwrap();
        assert!(
            report.failed.iter().any(|(k, _)| *k == m.identity.public()),
            "{report:?}"
        );
        let rounds = hostile.rounds.load(Ordering::Relaxed);
        let enough = (MAX_RECONCILE_DIFF as u32).div_ceil(IDS_PER_ROUND);
        assert!(rounds <= enough, "{rounds} rounds, {enough} hold the limit");
        let wants = hostile.wants.lock().clone();
        assert!(
            wants.iter().all(|n| *n <= lattice_mount::net::MAX_WANT),
            "{wants:?}"
        );
        still_serving(&a, &m.conn).await;
        m.router.shutdown().await.unwrap();
        a.stop().await;
    }

    /// One op by mallory at `wall_ms`.
    fn op(wall_ms: u64, body: OpBody) -> Op {
        Op {
            hlc: Hlc {
                wall_ms,
                counter: 0,
            },
            body,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_member_publishing_a_two_to_the_forty_byte_chunk_does_not_abort_an_eager_replica() {
        let a = Peer::start("alice").await;
        a.create("team").await;
        let team = a.store("team");
        // A chunk alice holds, named by mallory's manifests as 2^40 bytes long: its first
        // version is a base for patching the second, whose chunk mallory "patches".
        let cas = a.node.cas().clone();
        let base_bytes = random_bytes(100_000, 21);
        let base = tokio::task::spawn_blocking(move || cas.put_blob(base_bytes.into()).unwrap())
            .await
            .unwrap();
        let manifest = |chunk: Hash| {
            use prost::Message;
            lattice_mount::proto::fs::Manifest {
                chunks: vec![lattice_mount::proto::fs::Chunk {
                    hash: Bytes::copy_from_slice(&chunk.0),
                    size: 1 << 40,
                }],
            }
            .encode_to_vec()
        };
        let (old, new) = (manifest(base), manifest(Hash::of(b"never stored")));
        let (old_hash, new_hash) = (Hash::of(&old), Hash::of(&new));
        let blobs = iroh_blobs::store::mem::MemStore::new();
        blobs.add_bytes(old).await.unwrap();
        blobs.add_bytes(new).await.unwrap();
        let hostile = Hostile::new(Answer::InSync);
        let m = mallory(&a, hostile.clone(), &blobs).await;

        let t = now_ms();
        let create = op(
            t,
            OpBody::Create(Create {
                parent: OpId::ROOT,
                name: "bomb.bin".into(),
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                mtime_ns: 0,
                content: Content::Manifest {
                    hash: old_hash,
                    size: 1 << 40,
                },
            }),
        );
        let file = OpId {
            hlc: create.hlc,
            author: m.identity.public(),
        };
        let first =
            Intention::create(&m.identity, team.id(), None, Vec::new(), vec![create]).unwrap();
        let push = |i: &Intention| {
            request(
                &team,
                Req::Push(Intentions {
                    intentions: vec![i.bytes.clone()],
                }),
            )
        };
        let answer = ask(&m.conn, &push(&first)).await;
        assert!(
            matches!(answer.kind, Some(Resp::Pushed(p)) if p.applied == 1),
            "{answer:?}"
        );
        let local =
            |h: Hash| tokio::task::block_in_place(|| a.node.cas().local_blob(h).ok().flatten());
        eventually("alice fetched the first manifest", || local(old_hash)).await;

        let write = op(
            t + 1,
            OpBody::Write {
                file,
                supersedes: vec![file],
                content: Content::Manifest {
                    hash: new_hash,
                    size: 1 << 40,
                },
                mtime_ns: 0,
            },
        );
        let second = Intention::create(
            &m.identity,
            team.id(),
            Some(first.hash),
            vec![first.hash],
            vec![write],
        )
        .unwrap();
        let answer = ask(&m.conn, &push(&second)).await;
        assert!(
            matches!(answer.kind, Some(Resp::Pushed(p)) if p.applied == 1),
            "{answer:?}"
        );
        eventually("alice fetched the second manifest", || local(new_hash)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Alice lives, refuses to read the file, and serves her members.
        assert_eq!(hostile.patches.load(Ordering::Relaxed), 0);
        let view = team
            .read(|s| s.content(s.lookup(OpId::ROOT, "bomb.bin")?))
            .unwrap();
        assert_eq!(view.size, 1 << 40);
        let (cas, id) = (a.node.cas().clone(), team.id());
        let read = tokio::task::spawn_blocking(move || cas.read(id, &view.pieces, 0, &mut [0; 16]))
            .await
            .unwrap();
        assert!(
            matches!(read, Err(lattice_mount::cas::CasError::ChunkTooLarge { size, .. }) if size == 1 << 40),
            "{read:?}"
        );
        still_serving(&a, &m.conn).await;
        m.router.shutdown().await.unwrap();
        a.stop().await;
    }
}
