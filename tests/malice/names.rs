//! Display names, one validator for what is signed and what is received, and the
//! joiner scenario of issue 8: a hostile name never reaches a signature or a listing.

use lattice_mount::{Content, Kind, OpId, Role};

use crate::peers::*;
use lattice_mount::RefusalCode;

fn assert_every_name_opens(store: &lattice_mount::Store) {
    store.read(|s| {
        let mut dirs = vec![OpId::ROOT];
        while let Some(dir) = dirs.pop() {
            for (name, node) in s.readdir(dir).unwrap() {
                lattice_mount::validate_name(&name).unwrap();
                assert_eq!(s.lookup(dir, &name), Ok(node), "{name:?} does not resolve");
                let attr = s.attr(node).unwrap();
                if attr.kind == Kind::Dir {
                    dirs.push(node.file());
                }
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joiner_with_a_hostile_display_name_is_refused_and_the_inviter_keeps_running() {
    use tokio::sync::mpsc;

    let a = Peer::start("alice").await;
    a.create("team").await;
    let team = a.store("team");
    let token = a.invite("team", Role::Writer).await;
    let before = team.read(|s| s.canonical_dump());

    // Over the real wire: the inviter refuses to sign these names, and changes nothing.
    let j = Peer::start("joiner").await;
    for bad in ["x".repeat(300), "two\nlines".to_string(), "a/b".to_string()] {
        let (tx, _rx) = mpsc::unbounded_channel();
        let err = j
            .net
            .join(&token, Some(bad.as_str()), tx)
            .await
            .unwrap_err();
        assert_eq!(refused(&err), RefusalCode::Malformed, "{bad:?}: {err}");
        assert_eq!(team.read(|s| s.canonical_dump()), before, "{bad:?}");
    }
    // The same invite still works with a valid name.
    let (tx, _rx) = mpsc::unbounded_channel();
    j.net.join(&token, Some("joiner"), tx).await.unwrap();
    let joined = j.store("team");

    // The inviter's later writes reach the joiner, also after the inviter restarts.
    write_file(&team, "after-join.txt", Content::Inline("1".into()));
    eventually("the first write on the joiner", || {
        names(&joined)
            .contains(&"after-join.txt".to_string())
            .then_some(())
    })
    .await;
    let dir = a.stop().await;
    let a = Peer::start_in("alice", dir).await;
    let team = a.store("team");
    write_file(&team, "after-restart.txt", Content::Inline("2".into()));
    eventually("the write after the restart on the joiner", || {
        names(&joined)
            .contains(&"after-restart.txt".to_string())
            .then_some(())
    })
    .await;
    assert_every_name_opens(&team);
    assert_every_name_opens(&joined);
    j.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflict_copies_of_the_longest_names_by_the_longest_display_names_open_on_every_replica() {
    use tokio::sync::mpsc;

    let a = Peer::start(&"é".repeat(127)).await;
    a.create("team").await;
    let token = a.invite("team", Role::Writer).await;
    let b = Peer::start("bob").await;
    let (tx, _rx) = mpsc::unbounded_channel();
    b.net
        .join(&token, Some("ü".repeat(127).as_str()), tx)
        .await
        .unwrap();
    let (ta, tb) = (a.store("team"), b.store("team"));
    let long = format!("{}.txt", "n".repeat(251));
    let file = write_file(&ta, &long, Content::Inline("base".into()));
    eventually("the long name on bob", || {
        names(&tb).contains(&long).then_some(())
    })
    .await;
    // Two concurrent writes while paused make a conflict copy of the 255-byte name.
    a.net.set_paused(Some("team"), true).unwrap();
    b.net.set_paused(Some("team"), true).unwrap();
    for (store, what) in [(&ta, "alice"), (&tb, "bob")] {
        store
            .write(|tx| {
                let body = tx
                    .state()
                    .plan_write(file, Content::Inline(what.into()), 0)?;
                tx.push(body)?;
                Ok(())
            })
            .unwrap();
    }
    a.net.set_paused(Some("team"), false).unwrap();
    b.net.set_paused(Some("team"), false).unwrap();
    for store in [&ta, &tb] {
        eventually("the conflict copy", || {
            (names(store).len() == 2).then_some(())
        })
        .await;
        assert_every_name_opens(store);
    }
    b.stop().await;
    a.stop().await;
}
