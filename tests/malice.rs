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
