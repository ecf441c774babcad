//! Authority: one chain per author, revocation on every chain, clocks, floating quotas.

use std::time::Duration;

use bytes::Bytes;
use lattice_mount::proto::peer::{request::Kind as Req, Intentions};
use lattice_mount::{
    now_ms, Content, Hash, Identity, Intention, Op, OpBody, OpId, PublicKey, Role, Store,
    MAX_CLOCK_SKEW_MS, MAX_FLOATING_PER_STRANGER,
};

use crate::peers::*;

fn op(wall_ms: u64, body: OpBody) -> Op {
    op_at(wall_ms, body)
}

fn file(name: &str) -> OpBody {
    root_file(name, Content::Inline(Bytes::from(name.to_owned())))
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
async fn push(ep: &iroh::Endpoint, to: &Peer, store: &Store, list: &[&Intention]) -> (u32, u32) {
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

/// True when one of `p`'s stores lists `key` as an equivocator (what `status` shows).
fn reported(p: &Peer, key: &PublicKey) -> bool {
    tokio::task::block_in_place(|| {
        p.node
            .stores()
            .iter()
            .any(|s| s.equivocators().unwrap().iter().any(|q| q.key == *key))
    })
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
