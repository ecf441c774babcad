//! The opener side of the sync protocol: invites and joins, bootstrap, reconciliation
//! rounds and the pulls and pushes that follow them, and revocation.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use tokio::sync::mpsc;

use crate::fs::op::Role;
use crate::hlc::now_ms;
use crate::identity::PublicKey;
use crate::ids::{Hash, StoreId};
use crate::intention::Intention;
use crate::net::peers::endpoint_id;
use crate::net::serve::{apply_all, BATCH_BYTES, MAX_WANT};
use crate::net::{blocking, topic, NetError, Shared, MAX_FRAME, PEER_TIMEOUT, SYNC_ALPN};
use crate::node::JoinState;
use crate::proto::peer::{self as pb, request, response};
use crate::store::Store;
use crate::sync::invite::InviteToken;
use crate::sync::reconcile::{Session, FRAME_LIMIT};
use crate::wire::{read_frame, write_frame};

/// Most hashes one reconciliation collects on either side (the peer has, or lacks)
/// before it stops to pull and push them (8 MiB of hashes); the next pass finds the rest.
pub const MAX_RECONCILE_DIFF: usize = 256 * 1024;

/// Most rounds of asking a peer for the predecessors of floating intentions.
const PREDECESSOR_ROUNDS: usize = 8;

/// Progress of a join's bootstrap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JoinProgress {
    /// The store's name.
    pub store: String,
    /// Intentions received so far.
    pub intentions: u64,
    /// The inviter's witness length.
    pub total: u64,
    /// Bytes received so far.
    pub bytes: u64,
    /// Estimated time left, once there is a rate to estimate from.
    pub eta: Option<Duration>,
}

/// What one reconciliation round with one peer moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Negentropy round trips.
    pub rounds: u32,
    /// Negentropy bytes sent plus received.
    pub reconcile_bytes: u64,
    /// Intentions pulled and applied (or parked).
    pub pulled: u64,
    /// Intentions pushed.
    pub pushed: u64,
}

/// A sync connection to `peer`, reused while it is open.
async fn connection(shared: &Shared, peer: PublicKey) -> Result<Connection, NetError> {
    if let Some(c) = shared.conns.lock().get(&peer) {
        if c.close_reason().is_none() {
            return Ok(c.clone());
        }
    }
    let dial = |reason: String| NetError::Dial {
        peer: peer.short(),
        reason,
    };
    if endpoint_id(&peer).is_none() {
        return Err(dial("not a valid endpoint id".into()));
    }
    let addr = shared.peers.addr(&peer);
    let conn = tokio::time::timeout(PEER_TIMEOUT, shared.endpoint.connect(addr, SYNC_ALPN))
        .await
        .map_err(|_| dial(format!("no answer within {} s", PEER_TIMEOUT.as_secs())))?
        .map_err(|e| dial(format!("{e:#}")))?;
    shared.peers.seen(peer);
    if !shared.stores_of(&peer).is_empty() {
        let cap = crate::net::gate::MAX_CONNS_PER_PEER;
        shared
            .peers
            .connected(peer, SYNC_ALPN, conn.weak_handle(), cap);
    }
    shared.conns.lock().insert(peer, conn.clone());
    Ok(conn)
}

/// One open stream to a peer about one store.
struct Exchange {
    peer: PublicKey,
    store: StoreId,
    addrs: Vec<String>,
    send: SendStream,
    recv: RecvStream,
}

impl Exchange {
    /// Opens a stream about `store` to `peer`, which must be a current member of it in
    /// this node's view: nothing of a store is sent to, or asked of, anyone else.
    async fn open_member(
        shared: &Shared,
        peer: PublicKey,
        store: &Store,
    ) -> Result<Exchange, NetError> {
        if !shared.is_member(store, &peer) {
            return Err(NetError::NotMember {
                peer: peer.short(),
                store: crate::node::store_name(store),
            });
        }
        Exchange::open(shared, peer, store.id()).await
    }

    async fn open(shared: &Shared, peer: PublicKey, store: StoreId) -> Result<Exchange, NetError> {
        let conn = connection(shared, peer).await?;
        let (send, recv) = tokio::time::timeout(PEER_TIMEOUT, conn.open_bi())
            .await
            .map_err(|_| NetError::Stream {
                peer: peer.short(),
                reason: "opening a stream timed out".into(),
            })?
            .map_err(|e| {
                shared.conns.lock().remove(&peer);
                NetError::Stream {
                    peer: peer.short(),
                    reason: e.to_string(),
                }
            })?;
        Ok(Exchange {
            peer,
            store,
            addrs: shared
                .direct_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            send,
            recv,
        })
    }

    async fn send(&mut self, kind: request::Kind) -> Result<(), NetError> {
        let msg = pb::Request {
            store_id: Bytes::copy_from_slice(&self.store.0),
            addrs: std::mem::take(&mut self.addrs),
            kind: Some(kind),
        };
        write_frame(&mut self.send, &msg, MAX_FRAME)
            .await
            .map_err(|source| NetError::Frame {
                peer: self.peer.short(),
                source,
            })
    }

    async fn recv(&mut self) -> Result<response::Kind, NetError> {
        let peer = self.peer.short();
        let msg: pb::Response =
            tokio::time::timeout(PEER_TIMEOUT, read_frame(&mut self.recv, MAX_FRAME))
                .await
                .map_err(|_| NetError::Stream {
                    peer: peer.clone(),
                    reason: format!("no answer within {} s", PEER_TIMEOUT.as_secs()),
                })?
                .map_err(|source| NetError::Frame {
                    peer: peer.clone(),
                    source,
                })?
                .ok_or_else(|| NetError::Stream {
                    peer: peer.clone(),
                    reason: "the peer closed the stream".into(),
                })?;
        match msg.kind {
            Some(response::Kind::Error(reason)) => Err(NetError::Refused { peer, reason }),
            Some(kind) => Ok(kind),
            None => Err(NetError::Protocol {
                peer,
                what: "empty answer".into(),
            }),
        }
    }

    async fn ask(&mut self, kind: request::Kind) -> Result<response::Kind, NetError> {
        self.send(kind).await?;
        self.recv().await
    }

    fn unexpected(&self, kind: &response::Kind) -> NetError {
        NetError::Protocol {
            peer: self.peer.short(),
            what: format!("unexpected answer {kind:?}"),
        }
    }

    fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// Creates an invite to store `name`; returns the token.
pub async fn invite(
    shared: &Arc<Shared>,
    name: &str,
    role: Role,
    expires_in: Duration,
) -> Result<String, NetError> {
    let store = shared.store(name)?;
    let expires_ms = now_ms().saturating_add(expires_in.as_millis() as u64);
    let st = store.clone();
    let secret = blocking(move || -> Result<[u8; 32], NetError> {
        let secret = st
            .create_invite(role, expires_ms)
            .map_err(|e| NetError::Token(e.to_string()))?;
        st.flush()?;
        Ok(secret)
    })
    .await??;
    let token = InviteToken {
        store: store.id(),
        inviter: shared.me(),
        addrs: shared.direct_addrs(),
        secret,
        role,
        expires_ms,
        store_name: crate::node::store_name(&store),
    };
    Ok(token.encode())
}

/// Redeems `token` (unless this node is already joining that store), then bootstraps.
pub async fn join(
    shared: &Arc<Shared>,
    token: &str,
    display_name: Option<&str>,
    progress: mpsc::UnboundedSender<JoinProgress>,
) -> Result<Store, NetError> {
    let token = InviteToken::decode(token).map_err(|e| NetError::Token(e.to_string()))?;
    if let Some(existing) = shared
        .node
        .stores()
        .into_iter()
        .find(|s| s.id() == token.store)
    {
        return Err(NetError::Token(format!(
            "already a member of store {:?}",
            crate::node::store_name(&existing)
        )));
    }
    shared
        .peers
        .learn(token.inviter, token.addrs.iter().copied());
    let joining = shared
        .node
        .joining()
        .into_iter()
        .find(|(s, _)| s.id() == token.store);
    let (store, state) = match joining {
        Some(found) => found,
        None => {
            if token.expires_ms <= now_ms() {
                return Err(NetError::Token("the invite token has expired".into()));
            }
            let mut ex = Exchange::open(shared, token.inviter, token.store).await?;
            let answer = ex
                .ask(request::Kind::Redeem(pb::Redeem {
                    secret: Bytes::copy_from_slice(&token.secret),
                    display_name: display_name
                        .unwrap_or(shared.node.display_name())
                        .to_string(),
                }))
                .await?;
            let response::Kind::Redeemed(r) = answer else {
                return Err(ex.unexpected(&answer));
            };
            ex.finish();
            let founder = PublicKey(r.founder[..].try_into().map_err(|_| NetError::Protocol {
                peer: token.inviter.short(),
                what: "founder is not 32 bytes".into(),
            })?);
            for p in &r.peers {
                if let Ok(id) = <[u8; 32]>::try_from(&p.id[..]) {
                    shared
                        .peers
                        .learn(PublicKey(id), p.addrs.iter().filter_map(|a| a.parse().ok()));
                }
            }
            let state = JoinState {
                inviter: token.inviter,
                next: 1,
            };
            let node = shared.node.clone();
            let (id, st) = (token.store, state.clone());
            let store = blocking(move || node.begin_join(id, founder, &st)).await??;
            match <[u8; 32]>::try_from(&r.topic_secret[..]) {
                Ok(secret) => topic::save(&shared.node.store_dir(id), &secret)
                    .map_err(|e| NetError::Local(format!("cannot save the gossip secret: {e}")))?,
                Err(_) => tracing::warn!("the inviter sent no gossip secret; asking members later"),
            }
            (store, state)
        }
    };
    // Keeps the restart-resume loop off this store while this join streams it.
    let fresh = shared.resuming.lock().insert(store.id());
    let result = bootstrap(shared, &store, state, &token.store_name, progress).await;
    if fresh {
        shared.resuming.lock().remove(&store.id());
    }
    result.map(|()| store)
}

/// Streams the inviter's witness log into `store` from `state.next`, saving progress
/// after each durable batch, then makes the store visible.
async fn bootstrap(
    shared: &Arc<Shared>,
    store: &Store,
    mut state: JoinState,
    name: &str,
    progress: mpsc::UnboundedSender<JoinProgress>,
) -> Result<(), NetError> {
    let mut ex = Exchange::open(shared, state.inviter, store.id()).await?;
    ex.send(request::Kind::Bootstrap(pb::Bootstrap { from: state.next }))
        .await?;
    let started = Instant::now();
    let first = state.next;
    let mut report = JoinProgress {
        store: name.to_string(),
        intentions: state.next.saturating_sub(1),
        ..JoinProgress::default()
    };
    loop {
        let answer = ex.recv().await?;
        let response::Kind::Batch(batch) = answer else {
            return Err(ex.unexpected(&answer));
        };
        if batch.intentions.is_empty() {
            break;
        }
        let n = batch.intentions.len() as u64;
        report.bytes += batch.intentions.iter().map(|b| b.len() as u64).sum::<u64>();
        let (applied, refused) = apply_all(store, batch.intentions).await?;
        if refused > 0 {
            tracing::warn!(refused, applied, "bootstrap batch had refused intentions");
        }
        let st = store.clone();
        blocking(move || st.flush()).await??;
        state.next = batch.next;
        shared.node.save_join_state(store.id(), &state)?;
        report.intentions += n;
        report.total = batch.len;
        let done = state.next.saturating_sub(first);
        let left = batch.len.saturating_sub(state.next.saturating_sub(1));
        report.eta = (done > 0).then(|| started.elapsed().mul_f64(left as f64 / done as f64));
        let _ = progress.send(report.clone());
    }
    ex.finish();
    let node = shared.node.clone();
    let id = store.id();
    blocking(move || node.finish_join(id)).await??;
    Ok(())
}

/// Restarts, in the background, bootstraps interrupted by a restart.
pub fn resume_joins(shared: &Arc<Shared>) {
    for (store, state) in shared.node.joining() {
        if !shared.resuming.lock().insert(store.id()) {
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let (tx, _rx) = mpsc::unbounded_channel();
            let name = crate::node::store_name(&store);
            match bootstrap(&shared, &store, state, &name, tx).await {
                Ok(()) => {
                    tracing::info!(store = %store.id().to_hex(), "resumed join completed");
                    shared.ensure_replicas();
                }
                Err(e) => {
                    tracing::warn!(store = %store.id().to_hex(), "resuming the join failed: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
            shared.resuming.lock().remove(&store.id());
        });
    }
}

/// What `revoke` took back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// A member, now cut off.
    Member(PublicKey),
    /// An invite token, now refused.
    Invite,
}

/// Revokes what `target` names in store `name`: an invite token (`lm1…`), or a member
/// (a key hex prefix or its display name), which is also disconnected.
pub async fn revoke(shared: &Arc<Shared>, name: &str, target: &str) -> Result<Revoked, NetError> {
    let store = shared.store(name)?;
    if target.trim().starts_with(crate::sync::invite::PREFIX) {
        let token = InviteToken::decode(target).map_err(|e| NetError::Token(e.to_string()))?;
        if token.store != store.id() {
            return Err(NetError::Token(format!(
                "that token is not for store {name:?}"
            )));
        }
        let st = store.clone();
        blocking(move || -> Result<(), NetError> {
            st.revoke_invite(crate::store::invite_id(&token.secret))
                .map_err(|e| NetError::Token(e.to_string()))?;
            st.flush()?;
            Ok(())
        })
        .await??;
        return Ok(Revoked::Invite);
    }
    let matches: Vec<PublicKey> = store.read(|s| {
        s.members()
            .into_iter()
            .filter(|m| {
                m.display_name == target || m.key.to_hex().starts_with(&target.to_lowercase())
            })
            .map(|m| m.key)
            .collect()
    });
    let key = match matches[..] {
        [one] => one,
        [] => {
            return Err(NetError::Local(format!(
                "no member of {name:?} matches {target:?}"
            )))
        }
        _ => {
            return Err(NetError::Local(format!(
                "{target:?} matches {} members of {name:?}; give more of the key",
                matches.len()
            )))
        }
    };
    if key == shared.me() {
        return Err(NetError::Local("a node cannot revoke itself".into()));
    }
    let st = store.clone();
    blocking(move || -> Result<(), NetError> {
        st.revoke_member(key)
            .map_err(|e| NetError::Local(e.to_string()))?;
        st.flush()?;
        Ok(())
    })
    .await??;
    cut_off(shared, &key);
    Ok(Revoked::Member(key))
}

/// Closes every connection to revoked `key` if it is no longer a member of any store
/// here, else its gossip connections (the gate admits no gossip from a revoked key).
pub fn cut_off(shared: &Shared, key: &PublicKey) {
    let n = if shared.stores_of(key).is_empty() {
        shared.conns.lock().remove(key);
        shared.peers.disconnect(key, None, "revoked")
    } else {
        shared
            .peers
            .disconnect(key, Some(iroh_gossip::ALPN), "revoked")
    };
    if n > 0 {
        tracing::info!(peer = %key.short(), connections = n, "disconnected a revoked peer");
    }
}

/// Reconciles `store` with `peer`: negentropy rounds, then pulls what the peer has and
/// pushes what it lacks, in bounded batches. Rounds with one peer about one store never
/// overlap: this waits for a running one, then runs its own.
pub async fn reconcile(
    shared: &Arc<Shared>,
    store: &Store,
    peer: PublicKey,
) -> Result<RoundReport, NetError> {
    let slot = shared.reconcile_slot(store.id(), peer);
    let _turn = slot.turn.lock().await;
    slot.again.store(false, Ordering::Relaxed);
    reconcile_redialing(shared, store, peer).await
}

/// Like [`reconcile`], for hints (a gossiped intention that floats, a new neighbour):
/// when a round is running it only asks that one to go once more, so a burst of hints
/// costs one or two rounds.
pub async fn reconcile_hint(
    shared: &Arc<Shared>,
    store: &Store,
    peer: PublicKey,
) -> Result<RoundReport, NetError> {
    let slot = shared.reconcile_slot(store.id(), peer);
    let Ok(_turn) = slot.turn.try_lock() else {
        slot.again.store(true, Ordering::Relaxed);
        return Ok(RoundReport::default());
    };
    let mut total = RoundReport::default();
    loop {
        slot.again.store(false, Ordering::Relaxed);
        let r = reconcile_redialing(shared, store, peer).await?;
        total.rounds += r.rounds;
        total.reconcile_bytes += r.reconcile_bytes;
        total.pulled += r.pulled;
        total.pushed += r.pushed;
        if !slot.again.load(Ordering::Relaxed) {
            return Ok(total);
        }
    }
}

/// One reconciliation; after a stream failure (most likely a kept connection the peer
/// has since closed) it dials afresh, once.
async fn reconcile_redialing(
    shared: &Arc<Shared>,
    store: &Store,
    peer: PublicKey,
) -> Result<RoundReport, NetError> {
    match reconcile_once(shared, store, peer).await {
        Err(NetError::Frame { .. } | NetError::Stream { .. }) => {
            shared.conns.lock().remove(&peer);
            reconcile_once(shared, store, peer).await
        }
        other => other,
    }
}

async fn reconcile_once(
    shared: &Arc<Shared>,
    store: &Store,
    peer: PublicKey,
) -> Result<RoundReport, NetError> {
    let mut ex = Exchange::open_member(shared, peer, store).await?;
    let st = store.clone();
    let view = blocking(move || st.reconcile_view()).await??;
    let mut session =
        Session::initiator(view, FRAME_LIMIT).map_err(|e| NetError::Local(e.to_string()))?;
    let mut report = RoundReport::default();
    let mut frame = session
        .initiate()
        .map_err(|e| NetError::Local(e.to_string()))?;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    loop {
        report.rounds += 1;
        report.reconcile_bytes += frame.len() as u64;
        let answer = ex
            .ask(request::Kind::Reconcile(pb::Frame {
                frame: frame.into(),
            }))
            .await?;
        let response::Kind::Reconcile(f) = answer else {
            return Err(ex.unexpected(&answer));
        };
        report.reconcile_bytes += f.frame.len() as u64;
        let step = session
            .step(&f.frame)
            .map_err(|source| NetError::Reconcile {
                peer: peer.short(),
                source,
            })?;
        have.extend(step.have);
        need.extend(step.need);
        if have.len() >= MAX_RECONCILE_DIFF || need.len() >= MAX_RECONCILE_DIFF {
            have.truncate(MAX_RECONCILE_DIFF);
            need.truncate(MAX_RECONCILE_DIFF);
            break;
        }
        match step.reply {
            Some(next) => frame = next,
            None => break,
        }
    }
    report.pulled = pull(&mut ex, store, need).await?;
    report.pulled += pull_predecessors(&mut ex, store).await?;
    report.pushed = push(&mut ex, store, have).await?;
    ex.finish();
    shared.peers.seen(peer);
    Ok(report)
}

/// Fetches `hashes` from the peer of `ex` and applies them; returns how many arrived.
async fn pull(ex: &mut Exchange, store: &Store, mut hashes: Vec<Hash>) -> Result<u64, NetError> {
    let mut got = 0;
    while !hashes.is_empty() {
        let ask: Vec<Hash> = hashes.iter().take(MAX_WANT).copied().collect();
        let answer = ex
            .ask(request::Kind::Want(pb::Want {
                hashes: ask.iter().map(|h| Bytes::copy_from_slice(&h.0)).collect(),
            }))
            .await?;
        let response::Kind::Intentions(list) = answer else {
            return Err(ex.unexpected(&answer));
        };
        if list.intentions.is_empty() {
            return Err(NetError::Protocol {
                peer: ex.peer.short(),
                what: "it offered intentions it does not send".into(),
            });
        }
        let arrived: std::collections::HashSet<Hash> = list
            .intentions
            .iter()
            .filter_map(|b| Intention::peek(b).map(|(_, h)| h))
            .collect();
        let before = hashes.len();
        hashes.retain(|h| !arrived.contains(h));
        if hashes.len() == before {
            return Err(NetError::Protocol {
                peer: ex.peer.short(),
                what: "it sent intentions that were not asked for".into(),
            });
        }
        got += list.intentions.len() as u64;
        let mut sorted = list.intentions;
        sort_by_hlc(&mut sorted);
        apply_all(store, sorted).await?;
    }
    Ok(got)
}

/// Asks the peer of `ex` for predecessors that floating intentions wait for (they are
/// not in reconciliation when voided); returns how many arrived.
async fn pull_predecessors(ex: &mut Exchange, store: &Store) -> Result<u64, NetError> {
    let mut got = 0;
    for _ in 0..PREDECESSOR_ROUNDS {
        let st = store.clone();
        let missing = blocking(move || st.missing(MAX_WANT)).await??;
        if missing.is_empty() {
            break;
        }
        let answer = ex
            .ask(request::Kind::Want(pb::Want {
                hashes: missing
                    .iter()
                    .map(|h| Bytes::copy_from_slice(&h.0))
                    .collect(),
            }))
            .await?;
        let response::Kind::Intentions(list) = answer else {
            return Err(ex.unexpected(&answer));
        };
        if list.intentions.is_empty() {
            break;
        }
        got += list.intentions.len() as u64;
        apply_all(store, list.intentions).await?;
    }
    Ok(got)
}

/// Sends the intentions `hashes` to the peer of `ex` in bounded batches.
async fn push(ex: &mut Exchange, store: &Store, hashes: Vec<Hash>) -> Result<u64, NetError> {
    let mut sent = 0;
    let mut rest = hashes;
    while !rest.is_empty() {
        let st = store.clone();
        let ask = rest.clone();
        let batch = blocking(move || st.get(ask, BATCH_BYTES)).await??;
        if batch.is_empty() {
            break;
        }
        let shipped: std::collections::HashSet<Hash> = batch
            .iter()
            .filter_map(|b| Intention::peek(b).map(|(_, h)| h))
            .collect();
        let before = rest.len();
        rest.retain(|h| !shipped.contains(h));
        if rest.len() == before {
            return Err(NetError::Local(
                "stored intention bytes do not match their hashes".into(),
            ));
        }
        sent += batch.len() as u64;
        let answer = ex
            .ask(request::Kind::Push(pb::Intentions { intentions: batch }))
            .await?;
        if !matches!(answer, response::Kind::Pushed(_)) {
            return Err(ex.unexpected(&answer));
        }
    }
    Ok(sent)
}

/// Orders intention bytes by their HLC, so causal predecessors mostly come first.
fn sort_by_hlc(list: &mut [Bytes]) {
    list.sort_by_cached_key(Intention::peek);
}

/// Fetches one intention `hash` announced by `peer` and applies it.
pub async fn fetch_one(
    shared: &Arc<Shared>,
    store: &Store,
    peer: PublicKey,
    hash: Hash,
) -> Result<u64, NetError> {
    let mut ex = Exchange::open_member(shared, peer, store).await?;
    let n = pull(&mut ex, store, vec![hash]).await?;
    ex.finish();
    Ok(n)
}

/// Rebuilds chunk `chunk` (`len` bytes) of `store` from the local chunk `base` and the
/// blocks `peer` says differ, checks its hash and stores it. Fails (the caller then
/// fetches the whole chunk) if the peer refuses, the base is gone or the result does not
/// match.
pub async fn patch_chunk(
    shared: &Arc<Shared>,
    store: &Store,
    peer: PublicKey,
    chunk: Hash,
    base: Hash,
    len: u64,
) -> Result<(), NetError> {
    let mut ex = Exchange::open_member(shared, peer, store).await?;
    let answer = ex
        .ask(request::Kind::Patch(pb::Patch {
            chunk: Bytes::copy_from_slice(&chunk.0),
            base: Bytes::copy_from_slice(&base.0),
        }))
        .await?;
    let response::Kind::Blocks(got) = answer else {
        return Err(ex.unexpected(&answer));
    };
    ex.finish();
    if got.size != len {
        return Err(NetError::Protocol {
            peer: peer.short(),
            what: format!("its patch is for {} bytes, the chunk has {len}", got.size),
        });
    }
    let cas = shared.node.cas().clone();
    let (short, owner) = (peer.short(), store.id());
    blocking(move || {
        let local = |e: crate::cas::CasError| NetError::Local(e.to_string());
        let old = cas
            .local_blob(base)
            .map_err(local)?
            .ok_or_else(|| NetError::Local("patch base is no longer held".into()))?;
        let blocks: Vec<(u64, Bytes)> =
            got.blocks.into_iter().map(|b| (b.offset, b.data)).collect();
        let rebuilt = crate::cas::patch::apply(&old, got.size, &blocks)
            .filter(|data| Hash::of(data) == chunk)
            .ok_or_else(|| NetError::Protocol {
                peer: short,
                what: format!("its patch does not rebuild chunk {chunk:?}"),
            })?;
        cas.put_blob(owner, rebuilt.into()).map_err(local)?;
        Ok(())
    })
    .await?
}

/// Asks member `peer` for the gossip secret of `store` (for a member that lacks it).
pub async fn topic_secret(
    shared: &Arc<Shared>,
    store: &Store,
    peer: PublicKey,
) -> Result<[u8; 32], NetError> {
    let mut ex = Exchange::open_member(shared, peer, store).await?;
    let answer = ex.ask(request::Kind::AskSecret(pb::AskSecret {})).await?;
    let response::Kind::TopicSecret(t) = answer else {
        return Err(ex.unexpected(&answer));
    };
    ex.finish();
    t.secret[..].try_into().map_err(|_| NetError::Protocol {
        peer: peer.short(),
        what: "its gossip secret is not 32 bytes".into(),
    })
}
