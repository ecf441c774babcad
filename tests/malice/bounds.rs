//! Bounds: a member's claimed sizes and a responder's endless answers cost a replica a
//! bounded amount of memory and time, and never abort it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use lattice_mount::proto::peer::{
    request::Kind as Req, response::Kind as Resp, Blocks, Frame, Intentions, Request, Response,
    Want,
};
use lattice_mount::wire::{read_frame, write_frame};
use lattice_mount::{
    now_ms, Content, Hash, Identity, Intention, OpBody, OpId, Refusal, RefusalCode, Role,
    MAX_FRAME, MAX_RECONCILE_DIFF, MAX_ROUNDS, SYNC_ALPN,
};
use parking_lot::Mutex;

use crate::peers::*;

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
                        _ => Resp::Refusal(
                            Refusal::new(RefusalCode::Malformed, "not served here").into(),
                        ),
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

async fn mallory(a: &Peer, hostile: Hostile, blobs: &iroh_blobs::store::mem::MemStore) -> Mallory {
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
    // Mallory answers every Want with nothing: each round's pull ends at its first Want
    // (a peer may withhold what is not yet durable) and nothing of the offer arrives.
    assert_eq!(report.total.pulled, 0, "{report:?}");
    let rounds = hostile.rounds.load(Ordering::Relaxed);
    let enough = (MAX_RECONCILE_DIFF as u32).div_ceil(IDS_PER_ROUND);
    assert!(rounds <= enough, "{rounds} rounds, {enough} hold the limit");
    let wants = hostile.wants.lock().clone();
    assert!(
        wants.iter().all(|n| *n <= lattice_mount::MAX_WANT),
        "{wants:?}"
    );
    still_serving(&a, &m.conn).await;
    m.router.shutdown().await.unwrap();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_publishing_a_two_to_the_forty_byte_chunk_does_not_abort_an_eager_replica() {
    let a = Peer::start("alice").await;
    a.create("team").await;
    let team = a.store("team");
    // A chunk alice holds, named by mallory's manifests as 2^40 bytes long: its first
    // version is a base for patching the second, whose chunk mallory "patches".
    let (cas, id) = (a.node.cas().clone(), team.id());
    let base_bytes = random_bytes(100_000, 21);
    let base = tokio::task::spawn_blocking(move || cas.put_blob(id, base_bytes.into()).unwrap())
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
    let create = op_at(
        t,
        root_file(
            "bomb.bin",
            Content::Manifest {
                hash: old_hash,
                size: 1 << 40,
            },
        ),
    );
    let file = OpId {
        hlc: create.hlc,
        author: m.identity.public(),
    };
    let first = Intention::create(&m.identity, team.id(), None, Vec::new(), vec![create]).unwrap();
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
    let local = |h: Hash| tokio::task::block_in_place(|| a.node.cas().local_blob(h).ok().flatten());
    eventually("alice fetched the first manifest", || local(old_hash)).await;

    let write = op_at(
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
        matches!(read, Err(lattice_mount::CasError::ChunkTooLarge { size, .. }) if size == 1 << 40),
        "{read:?}"
    );
    still_serving(&a, &m.conn).await;
    m.router.shutdown().await.unwrap();
    a.stop().await;
}
