//! A hostile peer against real nodes: an in-process iroh endpoint speaking our ALPNs
//! with forged, foreign, oversized and malformed input. Every refusal must leave the
//! victim's state unchanged and the victim still serving its members. One module per
//! family of defences; `docs/security.md` maps each threat to its test.

#[path = "../peers/mod.rs"]
mod peers;

mod authority;
mod authz;
mod bounds;
mod fuzz;
mod names;

use lattice_mount::{Content, RefusalCode, Role};
use peers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input_is_refused_and_changes_nothing() {
    use lattice_mount::proto::peer::{request::Kind as Req, Frame, Intentions, Patch, Want};
    use lattice_mount::Identity;
    use lattice_mount::Intention;

    let a = Peer::start("alice").await;
    a.create("team").await;
    a.create("secret").await;
    let (team, secret) = (a.store("team"), a.store("secret"));
    let (cas, id) = (a.node.cas().clone(), secret.id());
    let hidden =
        tokio::task::spawn_blocking(move || cas.put_bytes(id, &random_bytes(1 << 20, 3)).unwrap())
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

    let op = |name: &str| {
        op_at(
            lattice_mount::now_ms(),
            root_file(name, Content::Inline("x".into())),
        )
    };
    let heads: Vec<lattice_mount::Hash> = Vec::new();
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
        assert_eq!(err.code, RefusalCode::NotMember, "{err}");
    }
    // A member may not patch a chunk only another store references, nor send bad hashes.
    let Content::Manifest {
        hash: hidden_hash, ..
    } = hidden.clone()
    else {
        panic!("1 MiB is a manifest")
    };
    for (chunk, why) in [
        (hidden_hash.0.to_vec(), RefusalCode::NotHeld),
        (vec![1, 2, 3], RefusalCode::Malformed),
    ] {
        let kind = Req::Patch(Patch {
            chunk: chunk.into(),
            base: bytes::Bytes::copy_from_slice(&hidden_hash.0),
        });
        let err = refusal(raw_exchange(&ep_m, &a, vec![frame(&request(&team, kind))]).await);
        assert_eq!(err.code, why, "{err}");
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
    let huge = ((lattice_mount::MAX_FRAME + 1) as u32)
        .to_be_bytes()
        .to_vec();
    let err = refusal(raw_exchange(&ep_m, &a, vec![huge]).await);
    assert_eq!(err.code, RefusalCode::TooLarge, "{err}");
    let garbage = vec![0, 0, 0, 3, 0xff, 0xff, 0xff];
    let err = refusal(raw_exchange(&ep_m, &a, vec![garbage]).await);
    assert_eq!(err.code, RefusalCode::Malformed, "{err}");
    let bad_neg = Req::Reconcile(Frame {
        frame: bytes::Bytes::from_static(&[0x61, 0x01, 0x21]),
    });
    let err = refusal(raw_exchange(&ep_m, &a, vec![frame(&request(&team, bad_neg))]).await);
    assert_eq!(err.code, RefusalCode::Malformed, "{err}");

    // Each refusal names its reason: an unknown store, too many hashes, a paused store.
    let mut elsewhere = request(&team, Req::Want(Want { hashes: vec![] }));
    elsewhere.store_id = bytes::Bytes::from_static(&[7; 16]);
    let err = refusal(raw_exchange(&ep_m, &a, vec![frame(&elsewhere)]).await);
    assert_eq!(err.code, RefusalCode::UnknownStore, "{err}");
    let too_many = Req::Want(Want {
        hashes: vec![bytes::Bytes::from_static(&[0; 32]); lattice_mount::MAX_WANT + 1],
    });
    let err = refusal(raw_exchange(&ep_m, &a, vec![frame(&request(&team, too_many))]).await);
    assert_eq!(err.code, RefusalCode::TooLarge, "{err}");
    a.net.set_paused(Some("team"), true).unwrap();
    let want = Req::Want(Want { hashes: vec![] });
    let err = refusal(raw_exchange(&ep_m, &a, vec![frame(&request(&team, want))]).await);
    assert_eq!(err.code, RefusalCode::Paused, "{err}");
    a.net.set_paused(Some("team"), false).unwrap();

    // A blob of a store mallory is not a member of is refused.
    let lattice_mount::Content::Manifest { hash, .. } = hidden else {
        panic!("not inline")
    };
    let conn = ep_m.connect(addr_of(&a), iroh_blobs::ALPN).await.unwrap();
    let got = iroh_blobs::get::request::get_blob(conn, iroh_blobs::Hash::from_bytes(hash.0))
        .bytes()
        .await;
    assert!(got.is_err(), "a blob of another store was served");

    // The replayed token is refused.
    let c = Peer::start("carol").await;
    let err = c.join(&token).await.unwrap_err();
    assert_eq!(refused(&err), RefusalCode::InviteUsed, "{err}");

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
