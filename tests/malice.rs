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

// Authority: one chain per author, revocation on every chain, clocks, floating quotas.

mod authority {
    use std::time::Duration;

    use bytes::Bytes;
    use lattice_mount::fs::op::{Content, Create, Kind, Op, OpBody, OpId, Role};
    use lattice_mount::hlc::{now_ms, Hlc};
    use lattice_mount::identity::{Identity, PublicKey};
    use lattice_mount::intention::{Hash, Intention};
    use lattice_mount::proto::peer::{request::Kind as Req, Intentions};
    use lattice_mount::store::{Store, MAX_CLOCK_SKEW_MS, MAX_FLOATING_PER_STRANGER};

    use super::peers::*;

    fn op(wall_ms: u64, body: OpBody) -> Op {
        Op {
            hlc: Hlc {
                wall_ms,
                counter: 0,
            },
            body,
        }
    }

    fn file(name: &str) -> OpBody {
        OpBody::Create(Create {
            parent: OpId::ROOT,
            name: name.into(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            mtime_ns: 0,
            content: Content::Inline(Bytes::from(name.to_owned())),
        })
    }

    /// The applied intention of `store` with the greatest clock: a dep that names
    /// everything a hostile member has "seen".
    fn top(store: &Store) -> Intention {
        store
            .witness(1, usize::MAX)
            .unwrap()
            .intentions
            .into_iter()
            .map(|b| Intention::decode(b).unwrap())
            .max_by_key(|i| (i.hlc, i.hash))
            .unwrap()
    }

    fn sign(
        who: &Identity,
        store: &Store,
        prev: Option<Hash>,
        deps: Vec<Hash>,
        ops: Vec<Op>,
    ) -> Intention {
        Intention::create(who, store.id(), prev, deps, ops).unwrap()
    }

    /// Pushes `list` to `to` as `ep`'s key; returns (applied or parked, refused).
    async fn push(
        ep: &iroh::Endpoint,
        to: &Peer,
        store: &Store,
        list: &[&Intention],
    ) -> (u32, u32) {
        let kind = Req::Push(Intentions {
            intentions: list.iter().map(|i| i.bytes.clone()).collect(),
        });
        pushed(raw_exchange(ep, to, vec![frame(&request(store, kind))]).await)
    }

    /// A member of `a`'s store "team" with `role`, whose daemon is stopped: its key is
    /// the hostile peer's.
    async fn member(a: &Peer, name: &str, role: Role) -> Identity {
        let m = Peer::start(name).await;
        let token = a.invite("team", role).await;
        m.join(&token).await.unwrap();
        let id = m.node.identity().clone();
        m.stop().await;
        id
    }

    fn has(store: &Store, name: &str) -> bool {
        store.read(|s| s.lookup(OpId::ROOT, name).is_ok())
    }

    fn reported(p: &Peer, key: &PublicKey) -> bool {
        tokio::task::block_in_place(|| p.node.status())
            .stores
            .iter()
            .any(|s| s.equivocators.contains(&key.to_hex()))
    }

    async fn revoke(store: &Store, key: PublicKey) -> u64 {
        let st = store.clone();
        tokio::task::spawn_blocking(move || st.revoke_member(key).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn revoked_members_cannot_restart_or_fork_their_chains_and_a_revoked_admin_cannot_grant_admin(
    ) {
        let a = Peer::start("alice").await;
        a.create("team").await;
        let team = a.store("team");
        let writer = member(&a, "mallory", Role::Writer).await;
        let admin = member(&a, "xavier", Role::Admin).await;
        // Revoked keys are refused at the door; what they sign after reaches the
        // victim through a member that relays it (an accomplice, or an honest peer
        // that got it before it learnt of the revocation).
        let relay = member(&a, "carol", Role::Writer).await;
        let (ep_w, ep_x) = (raw_endpoint(&writer).await, raw_endpoint(&admin).await);
        let ep_r = raw_endpoint(&relay).await;
        let now = now_ms();
        let t = top(&team);
        let w1 = sign(
            &writer,
            &team,
            None,
            vec![t.hash],
            vec![op(now, file("w1"))],
        );
        let w2 = sign(
            &writer,
            &team,
            Some(w1.hash),
            vec![w1.hash],
            vec![op(now + 1, file("w2"))],
        );
        let x1 = sign(
            &admin,
            &team,
            None,
            vec![t.hash],
            vec![op(now + 2, file("x1"))],
        );
        assert_eq!(push(&ep_w, &a, &team, &[&w1, &w2]).await, (2, 0));
        assert_eq!(push(&ep_x, &a, &team, &[&x1]).await, (1, 0));
        assert_eq!(revoke(&team, writer.public()).await, 2);
        assert_eq!(revoke(&team, admin.public()).await, 1);
        let dump = team.read(|s| s.canonical_dump());

        let r = top(&team);
        let later = r.hlc.wall_ms + 1;
        let restart = sign(
            &writer,
            &team,
            None,
            vec![r.hash],
            vec![op(later, file("restart"))],
        );
        let fork = sign(
            &writer,
            &team,
            Some(w1.hash),
            vec![r.hash],
            vec![op(later + 1, file("fork"))],
        );
        let extend = sign(
            &writer,
            &team,
            Some(w2.hash),
            vec![r.hash],
            vec![op(later + 2, file("extend"))],
        );
        for i in [&fork, &restart, &extend] {
            assert_eq!(push(&ep_r, &a, &team, &[i]).await, (0, 1));
        }
        let y = Identity::generate();
        let grant = |at| {
            op(
                at,
                OpBody::SetMember {
                    key: y.public(),
                    role: Role::Admin,
                    display_name: "y".into(),
                    invite: None,
                },
            )
        };
        let x_extend = sign(
            &admin,
            &team,
            Some(x1.hash),
            vec![r.hash],
            vec![grant(later + 3)],
        );
        let x_restart = sign(&admin, &team, None, vec![r.hash], vec![grant(later + 4)]);
        for i in [&x_extend, &x_restart] {
            assert_eq!(push(&ep_r, &a, &team, &[i]).await, (0, 1));
        }
        let by_y = sign(
            &y,
            &team,
            None,
            vec![r.hash],
            vec![op(later + 5, file("y"))],
        );
        assert_eq!(push(&ep_r, &a, &team, &[&by_y]).await, (0, 1));
        assert!(team.read(|s| s.member(&y.public()).is_none()));
        for name in ["restart", "fork", "extend", "y"] {
            assert!(!has(&team, name), "{name}");
        }
        assert!(reported(&a, &writer.public()) && reported(&a, &admin.public()));
        // Both forks voided the branches they prove, pre-revocation ones too.
        assert!(!has(&team, "w2") && !has(&team, "x1"));
        assert_ne!(team.read(|s| s.canonical_dump()), dump);
        a.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_fork_pushed_to_two_replicas_is_detected_reported_there_and_both_converge() {
        let (a, b) = team().await;
        let mallory = member(&a, "mallory", Role::Writer).await;
        let (ta, tb) = (a.store("team"), b.store("team"));
        eventually("bob knows mallory", || {
            tb.read(|s| s.member(&mallory.public()).is_some())
                .then_some(())
        })
        .await;
        let ep = raw_endpoint(&mallory).await;
        let t = top(&ta);
        let now = now_ms();
        let root = sign(
            &mallory,
            &ta,
            None,
            vec![t.hash],
            vec![op(now, file("root"))],
        );
        let left = sign(
            &mallory,
            &ta,
            Some(root.hash),
            vec![root.hash],
            vec![op(now + 1, file("left"))],
        );
        let right = sign(
            &mallory,
            &ta,
            Some(root.hash),
            vec![root.hash],
            vec![op(now + 1, file("right"))],
        );
        assert_eq!(push(&ep, &a, &ta, &[&root, &left]).await, (2, 0));
        assert_eq!(push(&ep, &b, &tb, &[&root, &right]).await.1, 0);
        eventually("both replicas report the fork", || {
            (reported(&a, &mallory.public()) && reported(&b, &mallory.public())).then_some(())
        })
        .await;
        eventually("both replicas converge", || {
            let (da, db) = (
                ta.read(|s| s.canonical_dump()),
                tb.read(|s| s.canonical_dump()),
            );
            (da == db).then_some(())
        })
        .await;
        for s in [&ta, &tb] {
            assert!(has(s, "root") && !has(s, "left") && !has(s, "right"));
            assert_eq!(s.equivocators().unwrap()[0].seq, 2);
        }
        b.stop().await;
        a.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_far_future_intention_waits_for_its_time_and_one_older_than_its_deps_is_refused() {
        let a = Peer::start("alice").await;
        a.create("team").await;
        let team = a.store("team");
        let mallory = member(&a, "mallory", Role::Writer).await;
        let ep = raw_endpoint(&mallory).await;
        let t = top(&team);
        let stale = sign(
            &mallory,
            &team,
            None,
            vec![t.hash],
            vec![op(t.hlc.wall_ms, file("stale"))],
        );
        let ancient = sign(
            &mallory,
            &team,
            None,
            vec![t.hash],
            vec![op(1, file("ancient"))],
        );
        assert_eq!(push(&ep, &a, &team, &[&stale, &ancient]).await, (0, 2));
        let due = now_ms() + 2_000;
        let future = sign(
            &mallory,
            &team,
            None,
            vec![t.hash],
            vec![op(due + MAX_CLOCK_SKEW_MS, file("future"))],
        );
        let forever = sign(
            &mallory,
            &team,
            Some(future.hash),
            vec![future.hash],
            vec![op(u64::MAX, file("forever"))],
        );
        assert_eq!(push(&ep, &a, &team, &[&future, &forever]).await, (2, 0));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!has(&team, "future"), "applied before its time");
        let local = write_file(&team, "local", Content::Inline("l".into()));
        assert!(
            local.hlc.wall_ms < due,
            "the clock did not jump to the future op"
        );
        eventually("the future intention applies when its time comes", || {
            has(&team, "future").then_some(())
        })
        .await;
        assert!(now_ms() >= due);
        assert!(!has(&team, "forever") && !has(&team, "stale") && !has(&team, "ancient"));
        a.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_flood_of_parked_intentions_from_a_stranger_key_does_not_stop_a_members_out_of_order_intentions(
    ) {
        let a = Peer::start("alice").await;
        a.create("team").await;
        let team = a.store("team");
        let mallory = member(&a, "mallory", Role::Writer).await;
        let ep = raw_endpoint(&mallory).await;
        let stranger = Identity::generate();
        let now = now_ms();
        let flood: Vec<Intention> = (0..3 * MAX_FLOATING_PER_STRANGER)
            .map(|k| {
                let missing = Hash::of(&k.to_be_bytes());
                sign(
                    &stranger,
                    &team,
                    None,
                    vec![missing],
                    vec![op(now + k, file("flood"))],
                )
            })
            .collect();
        for chunk in flood.chunks(64) {
            let list: Vec<&Intention> = chunk.iter().collect();
            assert_eq!(push(&ep, &a, &team, &list).await, (64, 0));
        }
        assert_eq!(team.stats().floating, MAX_FLOATING_PER_STRANGER);
        let t = top(&team);
        let m1 = sign(
            &mallory,
            &team,
            None,
            vec![t.hash],
            vec![op(now + 1_000, file("m1"))],
        );
        let m2 = sign(
            &mallory,
            &team,
            Some(m1.hash),
            vec![m1.hash],
            vec![op(now + 1_001, file("m2"))],
        );
        assert_eq!(push(&ep, &a, &team, &[&m2]).await, (1, 0));
        assert_eq!(push(&ep, &a, &team, &[&m1]).await, (1, 0));
        assert!(has(&team, "m1") && has(&team, "m2"));
        assert_eq!(team.stats().floating, MAX_FLOATING_PER_STRANGER);
        a.stop().await;
    }
}
