//! Multi-node tests in one process: real nodes (redb stores, iroh-blobs content stores)
//! with real iroh endpoints on loopback, relays disabled. No FUSE: files are written
//! and read through the store and content-store APIs the mount uses.

mod peers;

use std::time::Duration;

use lattice_mount::{Content, NetError, OpId, RefusalCode, Role, Store};
use peers::*;
use tokio::sync::mpsc;

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
    let id = team_a.id();
    let content = tokio::task::spawn_blocking(move || cas.put_bytes(id, &big2).unwrap())
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
    let err = c.join(&token).await.unwrap_err();
    assert_eq!(refused(&err), RefusalCode::InviteUsed, "{err}");
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
    let err = a.net.sync("team").await.unwrap_err();
    assert!(
        matches!(err, NetError::Paused(ref s) if s == "team"),
        "{err}"
    );
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
    assert_eq!(revoked, lattice_mount::Revoked::Member(bob));
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
        .set_fetch_mode("team", lattice_mount::FetchMode::OnDemand)
        .unwrap();
    let data = random_bytes(2 * 1024 * 1024 + 5, 9);
    let cas = a.node.cas().clone();
    let d2 = data.clone();
    let id = a.store("team").id();
    let content = tokio::task::spawn_blocking(move || cas.put_bytes(id, &d2).unwrap())
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
    let to_fetch = b.net.store_net(&team_b).to_fetch;
    assert_eq!(to_fetch.files, 1, "{to_fetch:?}");
    assert_eq!(to_fetch.bytes, data.len() as u64, "{to_fetch:?}");
    assert_eq!(read_file(&b.node, &team_b, "lazy.bin").unwrap(), data);
    eventually("nothing left to fetch once read", || {
        let p = b.net.store_net(&team_b).to_fetch;
        (p.files == 0 && p.bytes == 0 && p.rate > 0).then_some(())
    })
    .await;

    let a_key = a.node.identity().public();
    let seen = |b: &Peer| {
        b.net
            .peers("team")
            .unwrap()
            .into_iter()
            .find(|p| p.key == a_key)
            .and_then(|p| p.last_seen)
    };
    let before = seen(&b).expect("A was heard from");
    b.net.set_paused(Some("team"), true).unwrap();
    let dir = b.stop().await;
    let b = Peer::start_in("bob", dir).await;
    let st = b.net.store_net(&b.store("team"));
    assert!(st.paused, "paused state survives a restart");
    assert_eq!(st.fetch, lattice_mount::FetchMode::OnDemand);
    let after = seen(&b).expect("A's last-seen time survives a restart");
    assert!(
        after <= before && before - after < 120_000,
        "{after} vs {before}"
    );
    b.stop().await;
    a.stop().await;
}

/// Polls `done` every 200 µs on a blocking thread until it holds, failing after
/// [`CONVERGE`]: for states that [`eventually`]'s 50 ms steps would miss.
async fn soon(what: &'static str, done: impl Fn() -> bool + Send + 'static) {
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + CONVERGE;
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    })
    .await
    .unwrap();
}

/// Stores `data` in `peer`'s content store for `store` and creates `name` at the
/// store's root with it.
async fn put_file(peer: &Peer, store: &Store, name: &str, data: &[u8]) {
    let (cas, id, bytes) = (peer.node.cas().clone(), store.id(), data.to_vec());
    let content = tokio::task::spawn_blocking(move || cas.put_bytes(id, &bytes).unwrap())
        .await
        .unwrap();
    write_file(store, name, content);
}

/// `peer`'s bytes fetched whole, once 100 ms pass without that count changing: its
/// fetches still running have counted what they downloaded.
async fn settled_fetched_bytes(peer: &Peer) -> u64 {
    let mut fetched = peer.net.fetched_bytes();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = peer.net.fetched_bytes();
        if now == fetched {
            return fetched;
        }
        fetched = now;
    }
}

/// A 6 MiB file on A and B, then a one-byte edit of it on A; returns the peers, B's
/// store, the edited bytes, their pieces and B's bytes fetched whole before the edit,
/// once B's projection shows the edit.
async fn edited_on_a() -> (Peer, Peer, Store, Vec<u8>, Vec<Content>, u64) {
    let (a, b) = team().await;
    let (team_a, team_b) = (a.store("team"), b.store("team"));
    let old = random_bytes(6 * 1024 * 1024, 31);
    let put = |data: Vec<u8>| {
        let cas = a.node.cas().clone();
        let id = team_a.id();
        tokio::task::spawn_blocking(move || cas.put_bytes(id, &data).unwrap())
    };
    let file = write_file(&team_a, "big.bin", put(old.clone()).await.unwrap());
    let (bn, tb) = (b.node.clone(), team_b.clone());
    let got = eventually("big.bin on B", || read_file(&bn, &tb, "big.bin")).await;
    assert!(got == old);
    assert_eq!(b.net.patched_chunks(), 0);
    // The replica's own fetch of the file may still be counting what it downloaded.
    let fetched = settled_fetched_bytes(&b).await;

    let mut new = old.clone();
    new[4 * 1024 * 1024 + 99] ^= 1;
    let content = put(new.clone()).await.unwrap();
    let pieces = vec![content.clone()];
    team_a
        .write(|tx| {
            let body = tx.state().plan_write(file, content, 1)?;
            tx.push(body)?;
            Ok(())
        })
        .unwrap();
    let tb = team_b.clone();
    let shown = pieces.clone();
    soon("the edit on B", move || {
        tb.read(|s| {
            let n = s.lookup(OpId::ROOT, "big.bin").ok()?;
            s.content(n).ok()
        })
        .is_some_and(|c| c.pieces == shown)
    })
    .await;
    (a, b, team_b, new, pieces, fetched)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_edit_of_a_large_file_is_patched_not_fetched_whole() {
    let (a, b, team_b, new, pieces, _) = edited_on_a().await;
    let bn = b.node.clone();
    eventually(
        "the edit's chunks on B, without a read fetching them",
        || {
            let missing = tokio::task::block_in_place(|| bn.cas().missing(&pieces)).ok()?;
            missing.is_empty().then_some(())
        },
    )
    .await;
    let got = read_file(&b.node, &team_b, "big.bin").expect("the edit on B");
    assert!(got == new);
    assert_eq!(
        b.net.patched_chunks(),
        1,
        "the changed chunk came as a patch"
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_racing_the_patch_of_an_edit_waits_for_it() {
    let (a, b, team_b, new, _, before) = edited_on_a().await;
    // Read as soon as B's projection shows the edit: the read's fetch waits for B's
    // replica to list the change it saw, then patches the chunk.
    let got = read_file(&b.node, &team_b, "big.bin").expect("the edit on B");
    assert!(got == new);
    eventually("the changed chunk patched", || {
        (b.net.patched_chunks() == 1).then_some(())
    })
    .await;
    let whole = b.net.fetched_bytes() - before;
    assert!(
        whole < 64 * 1024,
        "only the new manifest came whole, not the changed chunk: {whole} bytes"
    );
    b.stop().await;
    a.stop().await;
}

/// A file B reads while its own fetch of it runs crosses the wire once: the reader's
/// fetches and the store's take turns per blob, and the later one finds it local.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_read_while_it_arrives_is_fetched_once() {
    let (a, b) = team().await;
    let (team_a, team_b) = (a.store("team"), b.store("team"));
    let data = random_bytes(24 * 1024 * 1024, 41);
    put_file(&a, &team_a, "big.bin", &data).await;
    let tb = team_b.clone();
    soon("big.bin on B", move || {
        names(&tb).contains(&"big.bin".to_string())
    })
    .await;
    let got = read_file(&b.node, &team_b, "big.bin").expect("big.bin reads on B");
    assert!(got == data);
    let fetched = settled_fetched_bytes(&b).await;
    // The content and its manifest (under 1 KiB for 24 chunks), each once.
    let once = data.len() as u64 + 4096;
    assert!(
        fetched >= data.len() as u64 && fetched <= once,
        "B fetched {fetched} bytes for {} bytes of content",
        data.len()
    );
    b.stop().await;
    a.stop().await;
}

/// Returns once a write on `a` reaches `b` at once, that is by gossip: chunks stored
/// ahead are announced to gossip neighbours only.
async fn gossip_flows(a: &Store, b: &Store) {
    for i in 0.. {
        assert!(i < 50, "no write of A reached B by gossip");
        let name = format!("ping-{i}");
        write_file(a, &name, Content::Inline("ping".into()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        if names(b).contains(&name) {
            return;
        }
    }
}

/// `data` written front to back into a staging file of `peer` for `store`, kept open
/// (uncommitted): its chunks stored ahead, the file's path, and the dir holding it.
fn written_ahead(
    peer: &Peer,
    store: &Store,
    data: &[u8],
) -> (
    lattice_mount::PutAhead,
    std::path::PathBuf,
    tempfile::TempDir,
) {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let mut ahead = peer
        .node
        .cas()
        .put_ahead(file.try_clone().unwrap(), Some(store.id()));
    let mut end = 0;
    for piece in data.chunks(1024 * 1024) {
        file.write_all_at(piece, end as u64).unwrap();
        end += piece.len();
        ahead.written(end as u64);
    }
    (ahead, path, dir)
}

/// `peer`'s bytes fetched whole, once at least `least`.
async fn fetched_at_least(peer: &Peer, least: u64) -> u64 {
    eventually("chunks of the uncommitted file on B", || {
        let fetched = peer.net.fetched_bytes();
        (fetched >= least).then_some(fetched)
    })
    .await
}

/// Chunks of a file still being written on A reach B before the file does: A announces
/// each chunk as it stores it, B fetches it, and the file's own fetch then finds it
/// local, so nothing crosses twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_being_written_reaches_members_before_its_commit() {
    let (a, b) = team().await;
    let (team_a, team_b) = (a.store("team"), b.store("team"));
    gossip_flows(&team_a, &team_b).await;
    let data = random_bytes(24 * 1024 * 1024, 43);
    let (mut ahead, path, _dir) = written_ahead(&a, &team_a, &data);
    let early = fetched_at_least(&b, 8 * 1024 * 1024).await;
    assert!(!names(&team_b).contains(&"big.bin".to_string()));
    let (cas, id) = (a.node.cas().clone(), team_a.id());
    let content = tokio::task::spawn_blocking(move || cas.put_file(id, &path, Some(&mut ahead)))
        .await
        .unwrap()
        .unwrap();
    write_file(&team_a, "big.bin", content);
    let (bn, tb) = (b.node.clone(), team_b.clone());
    let got = eventually("big.bin on B", || read_file(&bn, &tb, "big.bin")).await;
    assert!(got == data);
    let fetched = settled_fetched_bytes(&b).await;
    assert!(
        fetched >= data.len() as u64 && fetched <= data.len() as u64 + 4096,
        "B fetched {fetched} bytes ({early} before the commit) for {} bytes of content",
        data.len()
    );
    b.stop().await;
    a.stop().await;
}

/// Chunks B fetched ahead of a file A never commits are named by no version: B's next
/// collection frees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_fetched_ahead_of_a_file_never_committed_are_freed_by_a_collection() {
    let (a, b) = team().await;
    let (team_a, team_b) = (a.store("team"), b.store("team"));
    gossip_flows(&team_a, &team_b).await;
    let data = random_bytes(24 * 1024 * 1024, 47);
    let (ahead, _path, _dir) = written_ahead(&a, &team_a, &data);
    fetched_at_least(&b, 8 * 1024 * 1024).await;
    drop(ahead);
    let fetched = settled_fetched_bytes(&b).await;
    let (bn, tb) = (b.node.clone(), team_b.clone());
    let freed = tokio::task::spawn_blocking(move || bn.gc(Some(&tb)))
        .await
        .unwrap()
        .unwrap();
    let bytes: u64 = freed.iter().map(|(_, r)| r.bytes).sum();
    assert!(
        bytes >= fetched,
        "B fetched {fetched} bytes ahead and its collection freed {bytes}"
    );
    b.stop().await;
    a.stop().await;
}

/// Two members fetching a new file ask its writer for it first, not each other: a member
/// still fetching holds none of it to give, and each such request is refused. The writer
/// has the greatest key, so members listed by key put the other reader first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_fetching_a_new_file_ask_its_writer_first() {
    let mut peers = vec![
        Peer::start("one").await,
        Peer::start("two").await,
        Peer::start("three").await,
    ];
    peers.sort_by_key(|p| p.node.identity().public());
    let writer = peers.pop().unwrap();
    writer.create("team").await;
    for p in &peers {
        let token = writer.invite("team", Role::Writer).await;
        p.join(&token).await.unwrap();
    }
    let team = writer.store("team");
    let data = random_bytes(16 * 1024 * 1024, 43);
    put_file(&writer, &team, "big.bin", &data).await;
    for p in &peers {
        let (node, store) = (p.node.clone(), p.store("team"));
        eventually("big.bin on every reader", || {
            let content = store.read(|s| {
                let n = s.lookup(OpId::ROOT, "big.bin").ok()?;
                s.content(n).ok()
            })?;
            let pieces = tokio::task::block_in_place(|| node.cas().missing(&content.pieces));
            pieces.ok()?.is_empty().then_some(())
        })
        .await;
        assert!(read_file(&p.node, &p.store("team"), "big.bin").unwrap() == data);
    }
    for p in &peers {
        assert_eq!(
            p.net.refused_blob_requests(),
            0,
            "a reader was asked for a blob it was still fetching"
        );
    }
    for p in peers {
        p.stop().await;
    }
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_member_fetches_a_file_stored_before_ownership_tags_after_the_upgrade() {
    let a = Peer::start("alice").await;
    a.create("team").await;
    let team_a = a.store("team");
    let id = team_a.id();
    let big = random_bytes(3 * 1024 * 1024 + 5, 11);
    let (cas, data) = (a.node.cas().clone(), big.clone());
    let content = tokio::task::spawn_blocking(move || {
        let content = cas.put_bytes(id, &data).unwrap();
        cas.sync().unwrap();
        content
    })
    .await
    .unwrap();
    write_file(&team_a, "old.bin", content);
    // What an older version left behind: blobs with no ownership tags, no marker.
    a.node
        .cas()
        .blobs()
        .tags()
        .delete_prefix(format!("lm/{}/", id.to_hex()))
        .await
        .unwrap();
    std::fs::remove_file(a.node.store_dir(id).join("blobs-claimed")).unwrap();
    let a = Peer::start_in("alice", a.stop().await).await;

    let b = Peer::start("bob").await;
    let token = a.invite("team", Role::Reader).await;
    assert_eq!(b.join(&token).await.unwrap(), "team");
    let (bn, tb) = (b.node.clone(), b.store("team"));
    let got = eventually("old.bin on B", || read_file(&bn, &tb, "old.bin")).await;
    assert!(got == big, "B reads the old file's bytes");
    b.stop().await;
    a.stop().await;
}
