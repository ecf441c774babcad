//! `watch` on the daemon side: the changes the node's stores apply (see
//! `lattice_mount::Node::changes`) as a stream of control responses, until its reader
//! goes away or the daemon stops. [`follow`] makes the stream; [`serve`] writes it to a
//! control connection, and the status page (`crate::web`) sends it as server-sent events.
//!
//! Each watched store has a forwarding task that turns its `StoreEvent`s (and a lagged
//! receiver) into one wake-up; on waking, the follower reads every store's witness log
//! from where it stopped, so no change is missed however the wake-ups coalesce.

use std::sync::Arc;

use lattice_mount::proto::control::{response, Response, WatchEvent, WatchRequest, WatchStarted};
use lattice_mount::{store_name, Change, Node, NodeError, Store};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use crate::control::write_frame;

/// Most changes gathered before they are written out: bounds the daemon's memory while
/// a large batch (a join's whole history) applies; the rest follows at once.
const MAX_CHANGES_PER_ROUND: usize = 4096;
/// Responses queued between a follower and its writer: enough to keep the writer busy,
/// few enough that a slow reader holds back the follower rather than memory.
pub const MAX_QUEUED_WATCH_RESPONSES: usize = 256;

/// One watched store and the witness seq to read from next.
struct Watched {
    store: Store,
    from: u64,
}

/// Serves one `watch` request on `stream` until the client leaves or the node fails.
pub async fn serve(node: Node, stream: &mut UnixStream, w: WatchRequest) {
    let (tx, mut rx) = mpsc::channel(MAX_QUEUED_WATCH_RESPONSES);
    let (mut reader, mut writer) = stream.split();
    let forward = async {
        while let Some(response) = rx.recv().await {
            if write_frame(&mut writer, &response).await.is_err() {
                return;
            }
        }
    };
    let mut probe = [0u8; 1];
    tokio::select! {
        _ = async { tokio::join!(follow(node, w, tx), forward) } => {}
        // The client sends nothing more: any read that returns means it left.
        _ = reader.read(&mut probe) => {}
    }
}

/// Follows the changes `w` asks for into `out`: one `WatchStarted` (or an error), then a
/// `WatchEvent` per change, until `out` closes or the node fails (an error, then the end).
pub async fn follow(node: Node, w: WatchRequest, out: mpsc::Sender<Response>) {
    let prefix = w.path.trim_matches('/').to_string();
    let only = prefix.split('/').next().filter(|s| !s.is_empty());
    if let Some(name) = only {
        if node.store_by_name(name).is_none() {
            let e = NodeError::UnknownStore(name.to_string());
            let _ = out.send(error(e.to_string())).await;
            return;
        }
    }
    let wake = Arc::new(Notify::new());
    let mut forwarders = JoinSet::new();
    let mut stores_changed = node.watch_stores();
    let mut watched: Vec<Watched> = Vec::new();
    let added = match add_new(&node, only, &mut watched, &mut forwarders, &wake).await {
        Ok(added) => added,
        Err(e) => {
            let _ = out.send(error(e)).await;
            return;
        }
    };
    let started = Response {
        kind: Some(response::Kind::WatchStarted(WatchStarted { stores: added })),
    };
    if out.send(started).await.is_err() {
        return;
    }
    let me = node.identity().public();
    loop {
        let (changes, more) = match collect(&node, &mut watched).await {
            Ok(found) => found,
            Err(e) => {
                let _ = out.send(error(e)).await;
                return;
            }
        };
        for c in changes.iter().filter(|c| touches(c, &prefix)) {
            let event = WatchEvent {
                path: c.path.clone(),
                old_path: c.old_path.clone().unwrap_or_default(),
                op: c.op.to_string(),
                author: c.author.to_hex(),
                author_name: c.author_name.clone(),
                intention: c.intention.to_hex(),
                hlc_wall_ms: c.hlc.wall_ms,
                local: c.author == me,
            };
            let frame = Response {
                kind: Some(response::Kind::WatchEvent(event)),
            };
            if out.send(frame).await.is_err() {
                return;
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {}
            changed = stores_changed.changed(), if only.is_none() => {
                if changed.is_err() {
                    return;
                }
                if let Err(e) = add_new(&node, None, &mut watched, &mut forwarders, &wake).await {
                    let _ = out.send(error(e)).await;
                    return;
                }
            }
            _ = out.closed() => return,
        }
    }
}

/// True if `c` touched `prefix` (a path relative to the mount root) or a path under it.
fn touches(c: &Change, prefix: &str) -> bool {
    let under = |p: &str| {
        prefix.is_empty()
            || p == prefix
            || p.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    under(&c.path) || c.old_path.as_deref().is_some_and(under)
}

/// Starts following the node's stores not watched yet (only the one named `only`, if
/// given): subscribes to its events first, then starts at its witness log's end, so no
/// change falls between. Returns the names of the stores added.
async fn add_new(
    node: &Node,
    only: Option<&str>,
    watched: &mut Vec<Watched>,
    forwarders: &mut JoinSet<()>,
    wake: &Arc<Notify>,
) -> Result<Vec<String>, String> {
    let mut fresh = Vec::new();
    for store in node.stores() {
        if watched.iter().any(|w| w.store.id() == store.id()) {
            continue;
        }
        let name = store_name(&store);
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let mut events = store.subscribe();
        let wake = wake.clone();
        forwarders.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(_) | Err(RecvError::Lagged(_)) => wake.notify_one(),
                    Err(RecvError::Closed) => return,
                }
            }
        });
        fresh.push((store, name));
    }
    let node = node.clone();
    let started = tokio::task::spawn_blocking(move || {
        fresh
            .into_iter()
            .map(|(store, name)| Ok((node.watch_start(&store)?, store, name)))
            .collect::<Result<Vec<_>, NodeError>>()
    })
    .await
    .map_err(|e| format!("watch failed: {e}"))?
    .map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    for (from, store, name) in started {
        watched.push(Watched { store, from });
        names.push(name);
    }
    Ok(names)
}

/// The changes every watched store applied since last asked (at most about
/// [`MAX_CHANGES_PER_ROUND`]), and whether more are waiting.
async fn collect(node: &Node, watched: &mut Vec<Watched>) -> Result<(Vec<Change>, bool), String> {
    let node = node.clone();
    let list = std::mem::take(watched);
    let (list, found) = tokio::task::spawn_blocking(move || {
        let mut list = list;
        let mut out = Vec::new();
        for w in &mut list {
            while out.len() < MAX_CHANGES_PER_ROUND {
                let (changes, next) = match node.changes(&w.store, w.from) {
                    Ok(found) => found,
                    Err(e) => return (list, Err(e.to_string())),
                };
                out.extend(changes);
                if next == w.from {
                    break;
                }
                w.from = next;
            }
        }
        let more = out.len() >= MAX_CHANGES_PER_ROUND;
        (list, Ok((out, more)))
    })
    .await
    .map_err(|e| format!("watch failed: {e}"))?;
    *watched = list;
    found
}

fn error(message: String) -> Response {
    Response {
        kind: Some(response::Kind::Error(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_mount::{Hash, Hlc, PublicKey};

    fn change(path: &str, old_path: Option<&str>) -> Change {
        Change {
            path: path.into(),
            old_path: old_path.map(str::to_string),
            op: "move",
            author: PublicKey([1; 32]),
            author_name: String::new(),
            intention: Hash::of(b"i"),
            hlc: Hlc::default(),
        }
    }

    #[test]
    fn a_watched_path_matches_itself_and_what_is_under_it_not_a_longer_sibling() {
        assert!(touches(&change("team/docs", None), "team/docs"));
        assert!(touches(&change("team/docs/a", None), "team/docs"));
        assert!(!touches(&change("team/docsx", None), "team/docs"));
        assert!(!touches(&change("team/b", None), "team/docs"));
        assert!(touches(&change("team/b", Some("team/docs/a")), "team/docs"));
        assert!(touches(&change("other/x", None), ""));
    }
}
