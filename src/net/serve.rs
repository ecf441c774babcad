//! The acceptor side of the sync protocol: one task per stream, answering the opener's
//! requests about one store. Every request is checked before anything is read from or
//! written to the store: the store must exist here and not be paused, and the opener
//! must be a member (except for `Redeem`, which is how a non-member becomes one).
//!
//! Limits (constants in `net`): streams served at once per connection (fewer for a
//! stranger, raised once it is a member), a first frame that must arrive within the
//! first-frame timeout (a stranger's connection is closed when it opens no stream in
//! that time), a small first frame for strangers, and a per-peer budget of request bytes
//! in flight, taken before a body is read and given back once it is answered.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use tokio::sync::Semaphore;

use crate::identity::PublicKey;
use crate::ids::{Hash, StoreId};
use crate::net::gate::{CLOSE_LIMIT, MAX_CONNS_PER_PEER};
use crate::net::peers::node_key;
use crate::net::{
    blocking, NetError, Shared, MAX_FRAME, MAX_STRANGER_FRAME, MAX_STRANGER_STREAMS,
    MAX_STREAMS_PER_CONN, SYNC_ALPN,
};
use crate::proto::peer::{self as pb, request, response};
use crate::store::IndexSession as Session;
use crate::store::{ApplyOutcome, Store};
use crate::sync::reconcile::FRAME_LIMIT;
use crate::wire::{read_body, read_header, write_frame, FrameError};

/// Most hashes one `Want` may name.
pub const MAX_WANT: usize = 4096;
/// Target size of one answer carrying intentions (a single larger intention still goes).
pub const BATCH_BYTES: usize = 1024 * 1024;

/// The sync ALPN handler.
#[derive(Clone)]
pub struct SyncProtocol {
    shared: Weak<Shared>,
}

impl std::fmt::Debug for SyncProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncProtocol").finish_non_exhaustive()
    }
}

impl SyncProtocol {
    /// A handler serving the network state `shared`.
    pub fn new(shared: Weak<Shared>) -> Self {
        SyncProtocol { shared }
    }
}

impl ProtocolHandler for SyncProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = node_key(&conn.remote_id());
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let budget = shared.budget(peer);
        let mut member = shared.is_member_anywhere(&peer);
        let mut capacity = if member {
            MAX_STREAMS_PER_CONN
        } else {
            MAX_STRANGER_STREAMS
        };
        let streams = Arc::new(Semaphore::new(capacity));
        let wait = *shared.first_frame_timeout.lock();
        drop(shared);
        loop {
            let Ok(permit) = streams.clone().acquire_owned().await else {
                return Ok(());
            };
            let mut next = std::pin::pin!(conn.accept_bi());
            let accepted = loop {
                if member {
                    break next.await;
                }
                // A stranger's connection lives while it has a stream being served, and
                // for the first-frame timeout after.
                match tokio::time::timeout(wait, next.as_mut()).await {
                    Ok(accepted) => break accepted,
                    Err(_) if streams.available_permits() + 1 == capacity => {
                        tracing::info!(peer = %peer.short(), "closed a silent stranger's connection");
                        conn.close(CLOSE_LIMIT.into(), b"no request in time");
                        return Ok(());
                    }
                    Err(_) => {}
                }
            };
            let Ok((send, recv)) = accepted else {
                return Ok(());
            };
            let Some(shared) = self.shared.upgrade() else {
                return Ok(());
            };
            if !member && shared.is_member_anywhere(&peer) {
                // It redeemed an invite: a member's limits, and a place in the peer book.
                member = true;
                streams.add_permits(MAX_STREAMS_PER_CONN - capacity);
                capacity = MAX_STREAMS_PER_CONN;
                shared
                    .peers
                    .connected(peer, SYNC_ALPN, conn.weak_handle(), MAX_CONNS_PER_PEER);
            }
            if member {
                shared.peers.seen(peer);
            }
            let budget = budget.clone();
            tokio::spawn(async move {
                shared.serving.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = serve_stream(&shared, peer, send, recv, &budget).await {
                    tracing::debug!(peer = %peer.short(), "sync stream ended: {e}");
                }
                shared.serving.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
    }
}

/// Reads the next request of `peer` within `wait` (if given): at most [`MAX_FRAME`]
/// bytes from a member of some store here, [`MAX_STRANGER_FRAME`] from anyone else, its
/// body counted against `budget` (the returned permit) while it is read and answered.
async fn next_request(
    shared: &Shared,
    peer: PublicKey,
    recv: &mut RecvStream,
    budget: &Arc<Semaphore>,
    wait: Option<std::time::Duration>,
) -> Result<Option<(pb::Request, tokio::sync::OwnedSemaphorePermit)>, FrameError> {
    let limit = if shared.is_member_anywhere(&peer) {
        MAX_FRAME
    } else {
        MAX_STRANGER_FRAME
    };
    let read = async {
        let Some(size) = read_header(recv, limit).await? else {
            return Ok(None);
        };
        let held = u32::try_from(size).expect("a frame is at most MAX_FRAME, below u32::MAX");
        let permit = budget
            .clone()
            .acquire_many_owned(held)
            .await
            .map_err(|_| std::io::Error::other("the peer's budget is closed"))?;
        let request = read_body(recv, size).await?;
        Ok(Some((request, permit)))
    };
    match wait {
        None => read.await,
        Some(wait) => tokio::time::timeout(wait, read).await.unwrap_or_else(|_| {
            Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no request within {} ms", wait.as_millis()),
            )))
        }),
    }
}

/// Answers the requests of one stream until the opener finishes it or a request is
/// refused; the first must arrive within the first-frame timeout.
async fn serve_stream(
    shared: &Arc<Shared>,
    peer: PublicKey,
    mut send: SendStream,
    mut recv: RecvStream,
    budget: &Arc<Semaphore>,
) -> Result<(), NetError> {
    let frame_err = |source| NetError::Frame {
        peer: peer.short(),
        source,
    };
    let mut session: Option<Session> = None;
    let mut wait = Some(*shared.first_frame_timeout.lock());
    loop {
        let (request, held) = match next_request(shared, peer, &mut recv, budget, wait).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                let answer = refusal(format!("bad request: {e}"));
                write_frame(&mut send, &answer, MAX_FRAME).await.ok();
                let _ = send.finish();
                return Err(frame_err(e));
            }
        };
        wait = None;
        let answer = match answer(shared, peer, request, &mut session, &mut send).await {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(reason) => {
                tracing::info!(peer = %peer.short(), "refused a sync request: {reason}");
                write_frame(&mut send, &refusal(reason), MAX_FRAME)
                    .await
                    .map_err(frame_err)?;
                let _ = send.finish();
                return Ok(());
            }
        };
        write_frame(&mut send, &answer, MAX_FRAME)
            .await
            .map_err(frame_err)?;
        drop(held);
    }
}

fn refusal(reason: String) -> pb::Response {
    pb::Response {
        kind: Some(response::Kind::Error(reason)),
    }
}

fn reply(kind: response::Kind) -> Option<pb::Response> {
    Some(pb::Response { kind: Some(kind) })
}

/// The answer to one request (`None` when it was already streamed), or a refusal line.
async fn answer(
    shared: &Arc<Shared>,
    peer: PublicKey,
    request: pb::Request,
    session: &mut Option<Session>,
    send: &mut SendStream,
) -> Result<Option<pb::Response>, String> {
    let id = StoreId(
        request.store_id[..]
            .try_into()
            .map_err(|_| "store id is not 16 bytes".to_string())?,
    );
    let store = shared
        .node
        .stores()
        .into_iter()
        .find(|s| s.id() == id)
        .ok_or_else(|| "no such store here".to_string())?;
    let kind = request.kind.ok_or_else(|| "empty request".to_string())?;
    if let request::Kind::Redeem(r) = kind {
        return redeem(shared, peer, &store, r).await.map(Some);
    }
    if !shared.may_sync(&peer, id) {
        return Err("not a member of this store, or the store is paused".into());
    }
    shared
        .peers
        .learn(peer, request.addrs.iter().filter_map(|a| a.parse().ok()));
    match kind {
        request::Kind::Redeem(_) => unreachable!("handled above"),
        request::Kind::Bootstrap(b) => {
            stream_witness(&store, b.from, send).await?;
            Ok(None)
        }
        request::Kind::Reconcile(f) => {
            let s = match session {
                Some(s) => s,
                None => {
                    let st = store.clone();
                    let view = blocking(move || st.reconcile_view())
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                    session
                        .insert(Session::responder(view, FRAME_LIMIT).map_err(|e| e.to_string())?)
                }
            };
            let step = s.step(&f.frame).map_err(|e| e.to_string())?;
            Ok(reply(response::Kind::Reconcile(pb::Frame {
                frame: step.reply.unwrap_or_default().into(),
            })))
        }
        request::Kind::Want(w) => {
            if w.hashes.len() > MAX_WANT {
                return Err(format!(
                    "want names {} hashes; at most {MAX_WANT}",
                    w.hashes.len()
                ));
            }
            let hashes = w
                .hashes
                .iter()
                .map(|h| Hash::from_slice(h).ok_or_else(|| "hash is not 32 bytes".to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            let st = store.clone();
            let found = blocking(move || st.get(hashes, BATCH_BYTES))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            Ok(reply(response::Kind::Intentions(pb::Intentions {
                intentions: found,
            })))
        }
        request::Kind::Patch(p) => patch(shared, &store, p).await.map(reply),
        request::Kind::AskSecret(_) => {
            let (sh, st) = (shared.clone(), store.clone());
            match blocking(move || sh.topic_secret(&st))
                .await
                .and_then(|r| r)
                .map_err(|e| e.to_string())?
            {
                Some(secret) => Ok(reply(response::Kind::TopicSecret(pb::TopicSecret {
                    secret: Bytes::copy_from_slice(&secret),
                }))),
                None => Err("this node has no gossip secret for the store yet".into()),
            }
        }
        request::Kind::Push(p) => {
            let (applied, refused) = apply_all(&store, p.intentions)
                .await
                .map_err(|e| e.to_string())?;
            Ok(reply(response::Kind::Pushed(pb::Pushed {
                applied,
                refused,
            })))
        }
    }
}

/// The blocks of chunk `p.chunk` that differ from chunk `p.base`. Both must be owned
/// by `store` (whose membership the caller checked): the answer reveals the chunk, and
/// which of its blocks equal the base's.
async fn patch(
    shared: &Arc<Shared>,
    store: &Store,
    p: pb::Patch,
) -> Result<response::Kind, String> {
    let hash = |b: &[u8]| Hash::from_slice(b).ok_or_else(|| "hash is not 32 bytes".to_string());
    let (chunk, base) = (hash(&p.chunk)?, hash(&p.base)?);
    let cas = shared.node.cas();
    for h in [chunk, base] {
        if !cas.owns(store.id(), h).await.map_err(|e| e.to_string())? {
            return Err("this store owns no such chunk".into());
        }
    }
    let cas = shared.node.cas().clone();
    blocking(move || {
        let held = |h| cas.local_blob(h).map_err(|e| e.to_string());
        let (Some(new), Some(old)) = (held(chunk)?, held(base)?) else {
            return Err("chunk or base not held here".to_string());
        };
        let blocks = crate::cas::patch::diff(&old, &new)
            .ok_or_else(|| "the chunks differ too much for a patch".to_string())?;
        Ok(response::Kind::Blocks(pb::Blocks {
            size: new.len() as u64,
            blocks: blocks
                .into_iter()
                .map(|(offset, data)| pb::Block { offset, data })
                .collect(),
        }))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Applies received intentions in order; returns (applied or floating, refused).
pub(crate) async fn apply_all(
    store: &Store,
    intentions: Vec<Bytes>,
) -> Result<(u32, u32), NetError> {
    let st = store.clone();
    blocking(move || {
        let (mut ok, mut refused) = (0, 0);
        for outcome in st.apply_remote_many(intentions) {
            match outcome {
                Ok(
                    ApplyOutcome::Applied { .. }
                    | ApplyOutcome::Floating { .. }
                    | ApplyOutcome::Early { .. },
                ) => ok += 1,
                Ok(ApplyOutcome::Duplicate) => {}
                Err(e) if crate::store::is_refusal(&e) => {
                    tracing::info!("refused a received intention: {e}");
                    refused += 1;
                }
                Err(e) => return Err(NetError::Store(e)),
            }
        }
        Ok((ok, refused))
    })
    .await?
}

/// Streams witness batches from seq `from` to the end, then an empty batch.
async fn stream_witness(store: &Store, from: u64, send: &mut SendStream) -> Result<(), String> {
    let mut next = from.max(1);
    loop {
        let st = store.clone();
        let batch = blocking(move || st.witness(next, BATCH_BYTES))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let end = batch.intentions.is_empty();
        next = batch.next;
        let msg = pb::Response {
            kind: Some(response::Kind::Batch(pb::WitnessBatch {
                intentions: batch.intentions,
                next: batch.next,
                len: batch.len,
            })),
        };
        write_frame(send, &msg, MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        if end {
            return Ok(());
        }
    }
}

/// Redeems an invite for `peer`: on success it is a member and learns the founder,
/// the store name, the witness length and members' addresses.
async fn redeem(
    shared: &Arc<Shared>,
    peer: PublicKey,
    store: &Store,
    r: pb::Redeem,
) -> Result<pb::Response, String> {
    let secret: [u8; 32] = r.secret[..]
        .try_into()
        .map_err(|_| "invite secret is not 32 bytes".to_string())?;
    let st = store.clone();
    let name = r.display_name.clone();
    blocking(move || -> Result<(), String> {
        st.redeem_invite(&secret, peer, &name, crate::hlc::now_ms())
            .map_err(|e| e.to_string())?;
        st.flush().map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    tracing::info!(peer = %peer.short(), store = %store.id().to_hex(), "invite redeemed");
    let me = shared.me();
    let mut peers = vec![pb::PeerAddrs {
        id: Bytes::copy_from_slice(&me.0),
        addrs: shared
            .direct_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect(),
    }];
    for key in shared.other_members(store) {
        let addrs = shared.peers.addrs(&key);
        if key != peer && !addrs.is_empty() {
            peers.push(pb::PeerAddrs {
                id: Bytes::copy_from_slice(&key.0),
                addrs: addrs.iter().map(|a| a.to_string()).collect(),
            });
        }
    }
    let (sh, st) = (shared.clone(), store.clone());
    let secret = blocking(move || sh.topic_secret(&st))
        .await
        .and_then(|r| r)
        .map_err(|e| e.to_string())?;
    Ok(pb::Response {
        kind: Some(response::Kind::Redeemed(pb::Redeemed {
            founder: Bytes::copy_from_slice(&store.founder().0),
            store_name: crate::node::store_name(store),
            peers,
            witness_len: store.applied(),
            topic_secret: secret
                .map(|s| Bytes::copy_from_slice(&s))
                .unwrap_or_default(),
        })),
    })
}
