//! Per-store authorization on every path, and what a peer costs before it is a member
//! (issue 8, findings 3, 4, 8 and 10).

use lattice_mount::{Content, RefusalCode, Role};

use crate::peers::*;

struct Listener {
    endpoint: iroh::Endpoint,
    gossip: iroh_gossip::net::Gossip,
    opened: std::sync::Arc<std::sync::Mutex<Vec<bytes::Bytes>>>,
    _router: iroh::protocol::Router,
}

#[derive(Clone, Debug)]
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<bytes::Bytes>>>);

impl iroh::protocol::ProtocolHandler for Recorder {
    async fn accept(
        &self,
        conn: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let first: Option<lattice_mount::proto::peer::Request> =
                lattice_mount::wire::read_frame(&mut recv, lattice_mount::MAX_FRAME)
                    .await
                    .ok()
                    .flatten();
            if let Some(r) = first {
                self.0.lock().unwrap().push(r.store_id);
            }
            // Refuse at once, so the victim's round ends instead of waiting for us.
            let refusal = lattice_mount::proto::peer::Response::from(lattice_mount::Refusal::new(
                RefusalCode::NotMember,
                "no",
            ));
            let _ = lattice_mount::wire::write_frame(&mut send, &refusal, 1024).await;
            let _ = send.finish();
        }
        Ok(())
    }
}

async fn listener(identity: &lattice_mount::Identity, victim: &Peer) -> Listener {
    let lookup = iroh::address_lookup::MemoryLookup::new();
    lookup.add_endpoint_info(addr_of(victim));
    let endpoint = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .secret_key(iroh::SecretKey::from_bytes(&identity.seed()))
        .address_lookup(lookup)
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .bind()
        .await
        .unwrap();
    let gossip = iroh_gossip::net::Gossip::builder().spawn(endpoint.clone());
    let opened = std::sync::Arc::default();
    let router = iroh::protocol::Router::builder(endpoint.clone())
        .accept(iroh_gossip::ALPN, gossip.clone())
        .accept(
            lattice_mount::SYNC_ALPN,
            Recorder(std::sync::Arc::clone(&opened)),
        )
        .spawn();
    Listener {
        endpoint,
        gossip,
        opened,
        _router: router,
    }
}

/// The gossip topic a store had when topics derived from its id alone.
fn guessable_topic(store: &lattice_mount::Store) -> iroh_gossip::proto::TopicId {
    let mut h = blake3::Hasher::new();
    h.update(b"lattice-mount gossip topic v1\0");
    h.update(&store.id().0);
    iroh_gossip::proto::TopicId::from_bytes(*h.finalize().as_bytes())
}

/// Mallory, a writer of alice's `team`, and alice's `secret` that mallory is not in.
async fn alice_and_mallory() -> (Peer, lattice_mount::Identity) {
    let a = Peer::start("alice").await;
    a.create("team").await;
    a.create("secret").await;
    let m = Peer::start("mallory").await;
    let token = a.invite("team", Role::Writer).await;
    m.join(&token).await.unwrap();
    let mallory = m.node.identity().clone();
    m.stop().await;
    (a, mallory)
}

/// The real gossip topic of `store` of `p`, from the secret in its data dir.
async fn real_topic(p: &Peer, store: &lattice_mount::Store) -> iroh_gossip::proto::TopicId {
    let file = p
        .dir
        .path()
        .join("stores")
        .join(store.id().to_hex())
        .join("gossip-secret");
    let text = eventually("the founder's gossip secret", || {
        std::fs::read_to_string(&file).ok()
    })
    .await;
    let key = lattice_mount::unhex(text.trim()).unwrap();
    let mut h = blake3::Hasher::new();
    h.update(b"lattice-mount gossip topic v2\0");
    h.update(&key);
    iroh_gossip::proto::TopicId::from_bytes(*h.finalize().as_bytes())
}

/// Joins `topic` through `l` via `via`; counts the messages received there.
async fn count_received(
    l: &Listener,
    topic: iroh_gossip::proto::TopicId,
    via: &Peer,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use n0_future::StreamExt;
    let id = iroh::EndpointId::from_bytes(&via.node.identity().public().0).unwrap();
    let mut sub = l.gossip.subscribe(topic, vec![id]).await.unwrap();
    // A topic the victim is not in is never joined; go on after a while.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), sub.joined()).await;
    let (sender, mut events) = sub.split();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&count);
    let task = tokio::spawn(async move {
        let _sender = sender;
        while let Some(Ok(ev)) = events.next().await {
            if matches!(ev, iroh_gossip::api::Event::Received(_)) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    (task, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_of_one_store_receives_nothing_of_another_by_gossip_or_reconcile() {
    let (a, mallory) = alice_and_mallory().await;
    let (team, secret) = (a.store("team"), a.store("secret"));
    let l = listener(&mallory, &a).await;
    // Mallory joins `team`'s topic, as a member may, and the topic `secret` would have
    // if topics derived from store ids.
    let team_topic = real_topic(&a, &team).await;
    let on_team = count_received(&l, team_topic, &a).await;
    let on_secret = count_received(&l, guessable_topic(&secret), &a).await;
    write_file(
        &secret,
        "plans.txt",
        Content::Inline("only for secret".into()),
    );
    write_file(&team, "notes.txt", Content::Inline("for team".into()));
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    on_secret.0.abort();
    on_team.0.abort();
    let load = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::SeqCst);
    let (on_secret, on_team) = (load(&on_secret.1), load(&on_team.1));
    assert_eq!(
        on_secret, 0,
        "mallory received gossip of a store she is not in"
    );
    let opened = l.opened.lock().unwrap().clone();
    assert!(
        !opened.iter().any(|id| id[..] == secret.id().0),
        "alice opened a sync stream about `secret` to mallory"
    );
    assert!(
        on_team > 0,
        "mallory, a member of team, heard nothing of it"
    );
    l.endpoint.close().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_neighbour_that_is_not_a_member_of_the_store_triggers_no_reconcile() {
    let (a, mallory) = alice_and_mallory().await;
    let secret = a.store("secret");
    let l = listener(&mallory, &a).await;
    let alice_id = iroh::EndpointId::from_bytes(&a.node.identity().public().0).unwrap();
    // Even knowing the real topic (a leaked secret), mallory is no neighbour to act on.
    let real = real_topic(&a, &secret).await;
    let _topic = l.gossip.subscribe(real, vec![alice_id]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let opened = l.opened.lock().unwrap().clone();
    assert!(
        !opened.iter().any(|id| id[..] == secret.id().0),
        "alice reconciled `secret` with a gossip neighbour that is not a member"
    );
    l.endpoint.close().await;
    a.stop().await;
}

async fn get_blob(ep: &iroh::Endpoint, from: &Peer, hash: lattice_mount::Hash) -> bool {
    let conn = ep.connect(addr_of(from), iroh_blobs::ALPN).await.unwrap();
    iroh_blobs::get::request::get_blob(conn, iroh_blobs::Hash::from_bytes(hash.0))
        .bytes()
        .await
        .is_ok()
}

/// The manifest hash and first chunk of large `content`, as held by `p`.
fn manifest_and_chunk(p: &Peer, content: &Content) -> (lattice_mount::Hash, lattice_mount::Hash) {
    use prost::Message;
    let Content::Manifest { hash, .. } = content else {
        panic!("large content is a manifest")
    };
    let bytes = tokio::task::block_in_place(|| p.node.cas().local_blob(*hash))
        .unwrap()
        .unwrap();
    let manifest = lattice_mount::proto::fs::Manifest::decode(bytes).unwrap();
    let chunk = lattice_mount::Hash::from_slice(&manifest.chunks[0].hash).unwrap();
    (*hash, chunk)
}

async fn put(p: &Peer, store: &lattice_mount::Store, seed: u64) -> Content {
    let (cas, id) = (p.node.cas().clone(), store.id());
    tokio::task::spawn_blocking(move || cas.put_bytes(id, &random_bytes(1 << 20, seed)).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_naming_another_stores_blob_in_a_manifest_does_not_get_it() {
    use lattice_mount::proto::peer::{request::Kind as Req, Intentions};
    use lattice_mount::Intention;

    let (a, mallory) = alice_and_mallory().await;
    let (team, secret) = (a.store("team"), a.store("secret"));
    let hidden = put(&a, &secret, 41).await;
    write_file(&secret, "hidden.bin", hidden.clone());
    let shared = put(&a, &team, 42).await;
    write_file(&team, "shared.bin", shared.clone());
    let (hidden_manifest, hidden_chunk) = manifest_and_chunk(&a, &hidden);
    let (team_manifest, team_chunk) = manifest_and_chunk(&a, &shared);

    // Mallory writes a file into `team` whose content names the hidden manifest.
    let op = op_at(
        lattice_mount::now_ms(),
        root_file("stolen.bin", hidden.clone()),
    );
    let naming = Intention::create(&mallory, team.id(), None, Vec::new(), vec![op]).unwrap();
    let ep = raw_endpoint(&mallory).await;
    let push = Req::Push(Intentions {
        intentions: vec![naming.bytes.clone()],
    });
    assert_eq!(
        pushed(raw_exchange(&ep, &a, vec![frame(&request(&team, push))]).await).1,
        0
    );
    eventually("the naming file in team", || {
        names(&team)
            .contains(&"stolen.bin".to_string())
            .then_some(())
    })
    .await;

    assert!(
        get_blob(&ep, &a, team_manifest).await,
        "team's own blob is served"
    );
    assert!(
        get_blob(&ep, &a, team_chunk).await,
        "team's own chunk is served"
    );
    assert!(
        !get_blob(&ep, &a, hidden_manifest).await,
        "secret's manifest was served"
    );
    assert!(
        !get_blob(&ep, &a, hidden_chunk).await,
        "secret's chunk was served"
    );
    // Nor as a patch of a team chunk against it.
    let patch = Req::Patch(lattice_mount::proto::peer::Patch {
        chunk: bytes::Bytes::copy_from_slice(&hidden_chunk.0),
        base: bytes::Bytes::copy_from_slice(&team_chunk.0),
    });
    let err = refusal(raw_exchange(&ep, &a, vec![frame(&request(&team, patch))]).await);
    assert_eq!(err.code, RefusalCode::NotHeld, "{err}");
    ep.close().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_size_manifest_does_not_stop_serving_the_stores_other_blobs() {
    let (a, mallory) = alice_and_mallory().await;
    let team = a.store("team");
    let good = put(&a, &team, 43).await;
    write_file(&team, "good.bin", good.clone());
    let Content::Manifest { hash, size } = good.clone() else {
        panic!("large content is a manifest")
    };
    write_file(
        &team,
        "bad.bin",
        Content::Manifest {
            hash,
            size: size + 1,
        },
    );
    let (manifest, chunk) = manifest_and_chunk(&a, &good);
    let ep = raw_endpoint(&mallory).await;
    assert!(
        get_blob(&ep, &a, manifest).await,
        "the good manifest is still served"
    );
    assert!(
        get_blob(&ep, &a, chunk).await,
        "the good chunk is still served"
    );
    ep.close().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_stranger_holds_nothing_past_the_first_frame_timeout() {
    let a = Peer::start("alice").await;
    a.create("team").await;
    a.net
        .set_first_frame_timeout(std::time::Duration::from_millis(300));
    let stranger = lattice_mount::Identity::generate();
    let ep = raw_endpoint(&stranger).await;

    // A connection that never opens a stream is closed.
    let idle = ep
        .connect(addr_of(&a), lattice_mount::SYNC_ALPN)
        .await
        .unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), idle.closed()).await;
    assert!(closed.is_ok(), "a silent stranger's connection stayed open");

    // A stream that starts a frame and stalls is answered with a refusal and dropped.
    let conn = ep
        .connect(addr_of(&a), lattice_mount::SYNC_ALPN)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        lattice_mount::wire::read_frame::<lattice_mount::proto::peer::Response, _>(
            &mut recv,
            lattice_mount::MAX_FRAME,
        ),
    )
    .await
    .expect("the stalled stream was held past the timeout")
    .ok()
    .flatten();
    let err = refusal(answer);
    assert_eq!(err.code, RefusalCode::TimedOut, "{err}");
    eventually("no stream served", || {
        (a.net.serving_streams() == 0).then_some(())
    })
    .await;
    ep.close().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_strangers_huge_length_prefix_is_refused_before_any_body() {
    let a = Peer::start("alice").await;
    a.create("team").await;
    let ep = raw_endpoint(&lattice_mount::Identity::generate()).await;
    let header = (lattice_mount::MAX_FRAME as u32).to_be_bytes().to_vec();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        raw_exchange(&ep, &a, vec![header]),
    )
    .await
    .expect("the victim waited for a stranger's 8 MiB body");
    let err = refusal(answer);
    assert_eq!(err.code, RefusalCode::TooLarge, "{err}");
    assert!(
        err.text
            .contains(&format!("limit of {}", lattice_mount::MAX_STRANGER_FRAME)),
        "the stranger's limit, not a member's: {err}"
    );
    ep.close().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_streams_and_connections_from_one_peer_is_capped() {
    use lattice_mount::proto::peer::{request::Kind as Req, Want};
    use lattice_mount::{MAX_STRANGER_STREAMS, MAX_STREAMS_PER_CONN};
    let (a, mallory) = alice_and_mallory().await;
    let team = a.store("team");
    a.net
        .set_first_frame_timeout(std::time::Duration::from_secs(20));
    let ep = raw_endpoint(&mallory).await;
    let stranger_ep = raw_endpoint(&lattice_mount::Identity::generate()).await;

    // Forty streams from a member, forty from a stranger, each stalled mid-header.
    let (mut held, mut conns) = (Vec::new(), Vec::new());
    for endpoint in [&ep, &stranger_ep] {
        let conn = endpoint
            .connect(addr_of(&a), lattice_mount::SYNC_ALPN)
            .await
            .unwrap();
        for _ in 0..40 {
            let Ok((mut send, recv)) = conn.open_bi().await else {
                break;
            };
            if send.write_all(&[0, 0]).await.is_err() {
                break;
            }
            held.push((send, recv));
        }
        conns.push(conn);
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let serving = a.net.serving_streams();
    assert!(
        serving <= MAX_STREAMS_PER_CONN + MAX_STRANGER_STREAMS,
        "{serving} streams served at once"
    );

    // A stranger gets two connections at most.
    let mut usable = 0;
    for _ in 0..4 {
        let Ok(conn) = stranger_ep
            .connect(addr_of(&a), lattice_mount::SYNC_ALPN)
            .await
        else {
            continue;
        };
        if tokio::time::timeout(std::time::Duration::from_secs(1), conn.closed())
            .await
            .is_err()
        {
            usable += 1;
        }
        conns.push(conn);
    }
    assert!(usable <= 1, "a stranger opened {usable} more connections");

    // The member is still served on a fresh connection.
    let want = Req::Want(Want { hashes: vec![] });
    let answer = raw_exchange(&ep, &a, vec![frame(&request(&team, want))]).await;
    assert!(
        matches!(
            answer.and_then(|r| r.kind),
            Some(lattice_mount::proto::peer::response::Kind::Intentions(_))
        ),
        "the victim stopped serving its member"
    );
    drop((held, conns));
    ep.close().await;
    stranger_ep.close().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_from_one_store_gets_no_gossip_connection_through_another() {
    let a = Peer::start("alice").await;
    a.create("team").await;
    a.create("secret").await;
    let m = Peer::start("mallory").await;
    for store in ["team", "secret"] {
        let token = a.invite(store, Role::Writer).await;
        m.join(&token).await.unwrap();
    }
    let mallory = m.node.identity().clone();
    m.stop().await;
    let ep = raw_endpoint(&mallory).await;
    let holds = |conn: iroh::endpoint::Connection| async move {
        tokio::time::timeout(std::time::Duration::from_secs(1), conn.closed())
            .await
            .is_err()
    };

    let before = ep.connect(addr_of(&a), iroh_gossip::ALPN).await.unwrap();
    assert!(
        holds(before.clone()).await,
        "a member's gossip connection is admitted"
    );
    a.net
        .revoke("secret", &mallory.public().to_hex())
        .await
        .unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), before.closed()).await;
    assert!(
        closed.is_ok(),
        "the revoked key's gossip connection stayed open"
    );
    // Still a member of `team`, mallory gets no new gossip connection either.
    let again = match ep.connect(addr_of(&a), iroh_gossip::ALPN).await {
        Ok(conn) => holds(conn).await,
        Err(_) => false,
    };
    assert!(!again, "a key revoked from `secret` was admitted to gossip");
    ep.close().await;
    a.stop().await;
}

/// Announcing chunks ahead of a file names no content of the store: a member announcing
/// another store's chunk does not make it the announced store's, here or anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_announcing_another_stores_chunks_does_not_get_them() {
    use prost::Message;

    let (a, mallory) = alice_and_mallory().await;
    let secret = a.store("secret");
    let hidden = put(&a, &secret, 43).await;
    write_file(&secret, "hidden.bin", hidden.clone());
    let (hidden_manifest, hidden_chunk) = manifest_and_chunk(&a, &hidden);
    let l = listener(&mallory, &a).await;
    let topic = real_topic(&a, &a.store("team")).await;
    let alice = iroh::EndpointId::from_bytes(&a.node.identity().public().0).unwrap();
    let mut sub = l.gossip.subscribe(topic, vec![alice]).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), sub.joined())
        .await
        .expect("mallory joins team's topic through alice")
        .unwrap();
    let chunks = [hidden_chunk, hidden_manifest]
        .iter()
        .map(|h| bytes::Bytes::copy_from_slice(&h.0))
        .collect();
    let announcement = lattice_mount::proto::peer::Gossip {
        kind: Some(lattice_mount::proto::peer::gossip::Kind::Ahead(
            lattice_mount::proto::peer::Ahead { chunks },
        )),
    };
    sub.broadcast(announcement.encode_to_vec().into())
        .await
        .unwrap();
    // Alice fetches what is announced from mallory, who serves no blobs, and finds
    // the chunks local: give her time to act on it before asking.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        !get_blob(&l.endpoint, &a, hidden_chunk).await,
        "secret's chunk was served after an announcement in team"
    );
    assert!(
        !get_blob(&l.endpoint, &a, hidden_manifest).await,
        "secret's manifest was served after an announcement in team"
    );
    l.endpoint.close().await;
    a.stop().await;
}
