//! The acceptor side of the sync protocol, as transport: one task per stream reads the
//! opener's requests, hands each to the replica of the store it names
//! (`sync::replica` checks membership and answers; only `Redeem` is open to
//! non-members) and writes the answers the replica sends back. `Patch`, blob-level, is
//! answered here behind the same check (member of the store, store not paused).
//!
//! Limits (constants in `net`): streams served at once per connection (fewer for a
//! stranger, raised once it is a member), a first frame that must arrive within the
//! first-frame timeout (a stranger's connection is closed when it opens no stream in
//! that time), a small first frame for strangers, and a per-peer budget of request bytes
//! in flight, taken before a body is read and given back once it is answered.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::cas::CasError;
use crate::identity::PublicKey;
use crate::ids::{Hash, StoreId};
use crate::net::gate::{CLOSE_LIMIT, MAX_CONNS_PER_PEER};
use crate::net::peers::node_key;
use crate::net::replica::{Out, ReplicaHandle};
use crate::net::{
    blocking, NetError, Shared, MAX_FRAME, MAX_STRANGER_FRAME, MAX_STRANGER_STREAMS,
    MAX_STREAMS_PER_CONN, PEER_TIMEOUT, SYNC_ALPN,
};
use crate::proto::peer::{self as pb, request, response};
use crate::store::{Store, StoreError};
use crate::sync::replica::Conv;
use crate::sync::{Refusal, RefusalCode};
use crate::wire::{read_body, read_header, write_frame, FrameError};

/// The sync ALPN handler.
#[derive(Clone)]
pub(crate) struct SyncProtocol {
    shared: Weak<Shared>,
}

impl std::fmt::Debug for SyncProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncProtocol").finish_non_exhaustive()
    }
}

impl SyncProtocol {
    /// A handler serving the network state `shared`.
    pub(crate) fn new(shared: Weak<Shared>) -> Self {
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
                shared.heard(peer);
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

/// Serves one stream: its requests go to the replica of the store they name (a
/// `Patch` is answered here, behind the same membership check), its answers come back
/// through `Out` and are written in order; the first request must arrive within the
/// first-frame timeout. Ends when the opener finishes the stream, or after a refusal
/// or a last answer (for a stranger, once it has acknowledged what was written,
/// waiting at most the first-frame timeout for that).
async fn serve_stream(
    shared: &Arc<Shared>,
    peer: PublicKey,
    mut send: SendStream,
    mut recv: RecvStream,
    budget: &Arc<Semaphore>,
) -> Result<(), NetError> {
    let conv = Conv(shared.next_conv.fetch_add(1, Ordering::Relaxed));
    let (out, mut answers) = mpsc::unbounded_channel::<Out>();
    let answered = Notify::new();
    let replica: Mutex<Option<ReplicaHandle>> = Mutex::new(None);
    let frame_err = |source| NetError::Frame {
        peer: peer.short(),
        source,
    };
    let (answered, replica) = (&answered, &replica);
    let reader = async move {
        let mut wait = Some(*shared.first_frame_timeout.lock());
        loop {
            let (request, held) = match next_request(shared, peer, &mut recv, budget, wait).await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let _ = out.send(Out::Refuse(Refusal::from(&e)));
                    return Err(frame_err(e));
                }
            };
            wait = None;
            let notified = answered.notified();
            if let Some(request::Kind::Patch(p)) = request.kind {
                let answer = match route(shared, &request.store_id) {
                    Ok((store, _)) => match admitted(shared, &store, &peer) {
                        Ok(()) => patch(shared, &store, p).await,
                        Err(r) => Err(r),
                    },
                    Err(r) => Err(r),
                };
                let _ = out.send(match answer {
                    Ok(kind) => Out::Reply(kind, false),
                    Err(r) => Out::Refuse(r),
                });
            } else {
                let handle = match replica.lock().clone() {
                    Some(h) => Ok(h),
                    None => route(shared, &request.store_id).map(|(_, h)| h),
                };
                match handle {
                    Ok(h) => {
                        *replica.lock() = Some(h.clone());
                        h.request(peer, conv, request, &out);
                    }
                    Err(r) => {
                        let _ = out.send(Out::Refuse(r));
                    }
                }
            }
            if tokio::time::timeout(PEER_TIMEOUT, notified).await.is_err() {
                let name = replica.lock().as_ref().map(ReplicaHandle::name);
                return Err(NetError::NoReplica(name.unwrap_or_default()));
            }
            drop(held);
        }
    };
    let linger = (!shared.is_member_anywhere(&peer)).then(|| *shared.first_frame_timeout.lock());
    let writer = async move {
        let result = write_answers(&mut send, &mut answers, answered, replica, peer, conv).await;
        if let (Ok(()), Some(linger)) = (send.finish(), linger) {
            // A stranger's idle connection is closed once its streams' permits are back:
            // the permit is held until the opener has the last answer, so that close
            // never discards a refusal still in flight.
            let _ = tokio::time::timeout(linger, send.stopped()).await;
        }
        result
    };
    tokio::pin!(reader, writer);
    let result = tokio::select! {
        r = &mut writer => r,
        r = &mut reader => {
            // The opener is done sending: the replica drops the conversation, and what
            // it already answered is still written.
            if let Some(h) = replica.lock().take() {
                h.closed(peer, conv);
            }
            let written = writer.await;
            r.and(written)
        }
    };
    if let Some(h) = replica.lock().take() {
        h.closed(peer, conv);
    }
    result
}

/// Writes the answers of conversation `conv` in order until a last one or a refusal.
async fn write_answers(
    send: &mut SendStream,
    answers: &mut mpsc::UnboundedReceiver<Out>,
    answered: &Notify,
    replica: &Mutex<Option<ReplicaHandle>>,
    peer: PublicKey,
    conv: Conv,
) -> Result<(), NetError> {
    while let Some(answer) = answers.recv().await {
        let (msg, end) = match answer {
            Out::Reply(kind, last) => (pb::Response { kind: Some(kind) }, last),
            Out::Refuse(r) => {
                tracing::info!(peer = %peer.short(), "refused a sync request: {r}");
                (pb::Response::from(r), true)
            }
        };
        write_frame(send, &msg, MAX_FRAME)
            .await
            .map_err(|source| NetError::Frame {
                peer: peer.short(),
                source,
            })?;
        answered.notify_one();
        if end {
            return Ok(());
        }
        if let Some(h) = replica.lock().clone() {
            h.drained(peer, conv);
        }
    }
    Ok(())
}

/// Whether `peer` may ask for blocks of `store`'s chunks: the membership check the
/// replica makes for every other request, made here for `Patch`, which is blob-level.
fn admitted(shared: &Shared, store: &Store, peer: &PublicKey) -> Result<(), Refusal> {
    if !shared.is_member(store, peer) {
        return Err(Refusal::new(
            RefusalCode::NotMember,
            "the opener is not a member of this store",
        ));
    }
    if shared.settings(store).paused {
        return Err(Refusal::new(
            RefusalCode::Paused,
            "the store is paused here",
        ));
    }
    Ok(())
}

/// The store a request names and its replica.
fn route(shared: &Arc<Shared>, store_id: &[u8]) -> Result<(Store, ReplicaHandle), Refusal> {
    let id = StoreId(
        store_id
            .try_into()
            .map_err(|_| malformed("store id is not 16 bytes"))?,
    );
    let none = || Refusal::new(RefusalCode::UnknownStore, "no such store here");
    let store = shared.node.store_by_id(id).ok_or_else(none)?;
    let running = || shared.replicas.lock().get(&id).cloned();
    let handle = match running() {
        Some(h) => h,
        None => {
            // A store created moments ago: its replica starts now, not at the next tick.
            shared.ensure_replicas();
            running().ok_or_else(none)?
        }
    };
    Ok((store, handle))
}

/// The blocks of chunk `p.chunk` that differ from chunk `p.base`. Both must be owned
/// by `store` (whose membership the caller checked): the answer reveals the chunk, and
/// which of its blocks equal the base's.
async fn patch(
    shared: &Arc<Shared>,
    store: &Store,
    p: pb::Patch,
) -> Result<response::Kind, Refusal> {
    let (chunk, base) = (hash(&p.chunk)?, hash(&p.base)?);
    let cas = shared.node.cas();
    for h in [chunk, base] {
        if !cas.owns(store.id(), h).await? {
            return Err(Refusal::new(
                RefusalCode::NotHeld,
                "this store owns no such chunk",
            ));
        }
    }
    let cas = shared.node.cas().clone();
    blocking(move || {
        let (Some(new), Some(old)) = (cas.local_blob(chunk)?, cas.local_blob(base)?) else {
            return Err(Refusal::new(
                RefusalCode::NotHeld,
                "chunk or base not held here",
            ));
        };
        let blocks = crate::cas::patch::diff(&old, &new).ok_or_else(|| {
            Refusal::new(
                RefusalCode::PatchImpossible,
                "the chunks differ too much for a patch",
            )
        })?;
        Ok(response::Kind::Blocks(pb::Blocks {
            size: new.len() as u64,
            blocks: blocks
                .into_iter()
                .map(|(offset, data)| pb::Block { offset, data })
                .collect(),
        }))
    })
    .await?
}

/// A refusal of a request field that is not valid.
fn malformed(text: &str) -> Refusal {
    Refusal::new(RefusalCode::Malformed, text)
}

/// A hash field of a request.
fn hash(bytes: &[u8]) -> Result<Hash, Refusal> {
    Hash::from_slice(bytes).ok_or_else(|| malformed("hash is not 32 bytes"))
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::new(RefusalCode::Internal, e.to_string())
    }
}

impl From<CasError> for Refusal {
    fn from(e: CasError) -> Self {
        Refusal::new(RefusalCode::Internal, e.to_string())
    }
}

impl From<NetError> for Refusal {
    fn from(e: NetError) -> Self {
        Refusal::new(RefusalCode::Internal, e.to_string())
    }
}
