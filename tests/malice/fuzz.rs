//! Fuzzing over the real wire: edited and random sync-protocol frames from a member
//! and from a stranger. The decoders' own fuzz tests are in src/fuzz/; this checks
//! that the serving code around them, on a real node, never panics on such input,
//! answers or ends each stream, and keeps serving its members.

use lattice_mount::{OpId, Role};

use crate::peers::*;

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
        .connect(addr_of(to), lattice_mount::SYNC_ALPN)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    let read = lattice_mount::wire::read_frame(&mut recv, lattice_mount::MAX_FRAME);
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
    use lattice_mount::proto::peer::request::Kind as Req;
    use lattice_mount::proto::peer::{Bootstrap, Frame, Intentions, Patch, Redeem, Want};
    use lattice_mount::Identity;
    use lattice_mount::Intention;
    use lattice_mount::{Op, OpBody};
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
        hlc: lattice_mount::Hlc {
            wall_ms: lattice_mount::now_ms(),
            counter: 0,
        },
        body: OpBody::SetMeta(lattice_mount::SetMeta {
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
