//! User-facing flows over the sync protocol: invites, joins with their bootstrap from
//! the inviter's witness log, revocation and cut-off, and chunk patches for `blobs`.
//! Reconciliation, pulls, pushes and the gossip secret are the replica's
//! (`sync::replica`); this module also keeps the connection cache they share.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use tokio::sync::mpsc;

use crate::fs::op::Role;
use crate::hlc::now_ms;
use crate::identity::PublicKey;
use crate::ids::{Hash, StoreId};
use crate::net::peers::endpoint_id;
use crate::net::{
    blocking, topic, DialError, NetError, Shared, StreamError, Violation, MAX_FRAME, PEER_TIMEOUT,
    SYNC_ALPN,
};
use crate::node::JoinState;
use crate::proto::peer::{self as pb, request, response};
use crate::store::{received, Applying, Attesting, Store, StoreError};
use crate::sync::frontier::Attestation;
use crate::sync::invite::InviteToken;
use crate::sync::join::{answer_name, JoinAction, JoinError, Joiner, FIRST_WITNESS};
use crate::sync::replica::tally;
use crate::wire::{read_frame, write_frame};

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

/// A sync connection to `peer`, reused while it is open.
pub(crate) async fn connection(shared: &Shared, peer: PublicKey) -> Result<Connection, NetError> {
    if let Some(c) = shared.conns.lock().get(&peer) {
        if c.close_reason().is_none() {
            return Ok(c.clone());
        }
    }
    let dial = |cause: DialError| NetError::Dial {
        peer: peer.short(),
        cause,
    };
    if endpoint_id(&peer).is_none() {
        return Err(dial(DialError::InvalidId));
    }
    let addr = shared.peers.addr(&peer);
    let conn = tokio::time::timeout(PEER_TIMEOUT, shared.endpoint.connect(addr, SYNC_ALPN))
        .await
        .map_err(|_| dial(DialError::TimedOut(PEER_TIMEOUT)))?
        .map_err(|e| dial(DialError::Connect(e)))?;
    shared.heard(peer);
    if !shared.stores_of(&peer).is_empty() {
        let cap = crate::net::gate::MAX_CONNS_PER_PEER;
        shared
            .peers
            .connected(peer, SYNC_ALPN, conn.weak_handle(), cap);
    }
    shared.conns.lock().insert(peer, conn.clone());
    Ok(conn)
}

/// A new stream to `peer` on its sync connection (dialled if needed); a stream that
/// cannot be opened drops the cached connection.
pub(crate) async fn open_stream(
    shared: &Shared,
    peer: PublicKey,
) -> Result<(SendStream, RecvStream), NetError> {
    let conn = connection(shared, peer).await?;
    tokio::time::timeout(PEER_TIMEOUT, conn.open_bi())
        .await
        .map_err(|_| NetError::Stream {
            peer: peer.short(),
            cause: StreamError::OpenTimedOut,
        })?
        .map_err(|e| {
            shared.conns.lock().remove(&peer);
            NetError::Stream {
                peer: peer.short(),
                cause: StreamError::Open(e),
            }
        })
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
        let (send, recv) = open_stream(shared, peer).await?;
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
                    cause: StreamError::NoAnswer(PEER_TIMEOUT),
                })?
                .map_err(|source| NetError::Frame {
                    peer: peer.clone(),
                    source,
                })?
                .ok_or_else(|| NetError::Stream {
                    peer: peer.clone(),
                    cause: StreamError::Closed,
                })?;
        match msg.kind {
            Some(response::Kind::Refusal(r)) => Err(NetError::Refused {
                peer,
                refusal: r.into(),
            }),
            Some(kind) => Ok(kind),
            None => Err(NetError::Protocol {
                peer,
                violation: Violation::EmptyAnswer,
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
            violation: Violation::UnexpectedAnswer(answer_name(kind)),
        }
    }

    fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// Creates an invite to store `name`; returns the token.
pub(crate) async fn invite(
    shared: &Arc<Shared>,
    name: &str,
    role: Role,
    expires_in: Duration,
) -> Result<String, NetError> {
    let store = shared.store(name)?;
    let expires_ms = now_ms().saturating_add(expires_in.as_millis() as u64);
    let st = store.clone();
    let secret = blocking(move || -> Result<[u8; 32], NetError> {
        let secret = st.create_invite(role, expires_ms)?;
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
pub(crate) async fn join(
    shared: &Arc<Shared>,
    token: &str,
    display_name: Option<&str>,
    progress: mpsc::UnboundedSender<JoinProgress>,
) -> Result<Store, NetError> {
    let token = InviteToken::decode(token)?;
    if let Some(existing) = shared
        .node
        .stores()
        .into_iter()
        .find(|s| s.id() == token.store)
    {
        return Err(NetError::AlreadyJoined(crate::node::store_name(&existing)));
    }
    shared
        .peers
        .learn(token.inviter, token.addrs.iter().copied());
    let joining = shared
        .node
        .joining()
        .into_iter()
        .find(|(s, _)| s.id() == token.store);
    let mut claim = Claim::new(shared);
    let (run, joiner) = match joining {
        Some((store, state)) => {
            if !claim.take(store.id()) {
                return Err(NetError::Joining(crate::node::store_name(&store)));
            }
            let run = Run::new(state.inviter, token.store, Some(store), &token.store_name);
            (run, Joiner::resume(state.next))
        }
        None => {
            if token.expires_ms <= now_ms() {
                return Err(NetError::TokenExpired);
            }
            let name = display_name.unwrap_or(shared.node.display_name());
            let run = Run::new(token.inviter, token.store, None, &token.store_name);
            (run, Joiner::redeem(token.secret, name.to_string()))
        }
    };
    run.drive(shared, joiner, &mut claim, &progress).await
}

/// Keeps the restart-resume loop off a store while a join streams it; lets go when
/// dropped.
struct Claim<'a> {
    shared: &'a Shared,
    id: Option<StoreId>,
}

impl<'a> Claim<'a> {
    fn new(shared: &'a Shared) -> Claim<'a> {
        Claim { shared, id: None }
    }

    /// Claims store `id`, unless another flow already has it; true if this one does.
    fn take(&mut self, id: StoreId) -> bool {
        if self.id.is_none() && self.shared.resuming.lock().insert(id) {
            self.id = Some(id);
        }
        self.id == Some(id)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.resuming.lock().remove(&id);
        }
    }
}

/// One join carried out over iroh: the [`Joiner`] decides, this does.
struct Run {
    inviter: PublicKey,
    id: StoreId,
    store: Option<Store>,
    name: String,
}

impl Run {
    fn new(inviter: PublicKey, id: StoreId, store: Option<Store>, name: &str) -> Run {
        Run {
            inviter,
            id,
            store,
            name: name.to_string(),
        }
    }

    /// Carries out `joiner`'s actions until it finishes: redeems (when not yet
    /// redeemed), then streams the inviter's witness log into the store, saving
    /// progress as batches become durable, then makes the store visible.
    async fn drive(
        mut self,
        shared: &Arc<Shared>,
        joiner: Joiner,
        claim: &mut Claim<'_>,
        progress: &mpsc::UnboundedSender<JoinProgress>,
    ) -> Result<Store, NetError> {
        let mut applier = None;
        let streamed = self
            .stream(shared, joiner, claim, progress, &mut applier)
            .await;
        // Even when the stream broke, what was received is applied and its progress
        // saved before the claim is let go, so a resumed join starts after it.
        if let Some(applier) = applier {
            applier.finish().await?;
        }
        streamed?;
        let store = self.store()?.clone();
        let node = shared.node.clone();
        let id = self.id;
        blocking(move || node.finish_join(id)).await??;
        Ok(store)
    }

    /// Receives the whole witness log, handing its batches to `applier` (started at
    /// the first batch).
    async fn stream(
        &mut self,
        shared: &Arc<Shared>,
        mut joiner: Joiner,
        claim: &mut Claim<'_>,
        progress: &mpsc::UnboundedSender<JoinProgress>,
        applier: &mut Option<Applier>,
    ) -> Result<(), NetError> {
        let mut actions: VecDeque<JoinAction> =
            joiner.request().map(JoinAction::Send).into_iter().collect();
        let mut ex: Option<Exchange> = None;
        let mut started = Instant::now();
        loop {
            let Some(action) = actions.pop_front() else {
                let Some(open) = ex.as_mut() else {
                    return Err(self.violation(Violation::EmptyAnswer));
                };
                let answer = open.recv().await?;
                actions.extend(joiner.handle(answer).map_err(|e| self.error(e))?);
                continue;
            };
            match action {
                JoinAction::Send(kind) => {
                    if let Some(old) = ex.take() {
                        old.finish();
                    }
                    let mut open = Exchange::open(shared, self.inviter, self.id).await?;
                    open.send(kind).await?;
                    ex = Some(open);
                    started = Instant::now();
                }
                JoinAction::Begin {
                    founder,
                    topic_secret,
                    peers,
                } => {
                    for p in &peers {
                        if let Ok(id) = <[u8; 32]>::try_from(&p.id[..]) {
                            shared.peers.learn(
                                PublicKey(id),
                                p.addrs.iter().filter_map(|a| a.parse().ok()),
                            );
                        }
                    }
                    let state = JoinState {
                        inviter: self.inviter,
                        next: FIRST_WITNESS,
                    };
                    // Claimed before the store shows as joining: the restart-resume
                    // loop would otherwise stream it too, next to this join.
                    if !claim.take(self.id) {
                        return Err(NetError::Joining(self.name.clone()));
                    }
                    let node = shared.node.clone();
                    let id = self.id;
                    let store = blocking(move || node.begin_join(id, founder, &state)).await??;
                    match topic_secret {
                        Some(secret) => {
                            topic::save(&shared.node.store_dir(id), &secret).map_err(|source| {
                                NetError::Save {
                                    what: "the gossip secret",
                                    source,
                                }
                            })?
                        }
                        None => {
                            tracing::warn!(
                                "the inviter sent no gossip secret; asking members later"
                            )
                        }
                    }
                    self.store = Some(store);
                }
                JoinAction::Apply {
                    intentions,
                    next,
                    attested,
                } => {
                    let to = match applier {
                        Some(to) => to,
                        None => applier.insert(Applier::start(
                            shared,
                            self.store()?.clone(),
                            self.inviter,
                        )),
                    };
                    // A closed queue means the applier stopped on an error, which
                    // `drive` reports from `Applier::finish`.
                    if to.batches.send((intentions, next, attested)).await.is_err() {
                        return Err(StoreError::Closed.into());
                    }
                    let (done, left) = joiner.done_and_left();
                    let _ = progress.send(JoinProgress {
                        store: self.name.clone(),
                        intentions: joiner.intentions(),
                        total: joiner.total(),
                        bytes: joiner.bytes(),
                        eta: (done > 0)
                            .then(|| started.elapsed().mul_f64(left as f64 / done as f64)),
                    });
                }
                JoinAction::Finish => {
                    if let Some(open) = ex.take() {
                        open.finish();
                    }
                    return Ok(());
                }
            }
        }
    }

    /// The store being joined; the joiner begins it before any batch.
    fn store(&self) -> Result<&Store, NetError> {
        self.store
            .as_ref()
            .ok_or_else(|| self.violation(Violation::UnexpectedAnswer("witness batch")))
    }

    fn violation(&self, violation: Violation) -> NetError {
        NetError::Protocol {
            peer: self.inviter.short(),
            violation,
        }
    }

    fn error(&self, e: JoinError) -> NetError {
        match e {
            JoinError::Refused(refusal) => NetError::Refused {
                peer: self.inviter.short(),
                refusal,
            },
            JoinError::Unexpected(name) => self.violation(Violation::UnexpectedAnswer(name)),
            JoinError::BadFounder(_) => self.violation(Violation::BadLength {
                field: "founder",
                len: 32,
            }),
            JoinError::BadAttestation(e) => self.violation(Violation::BadAttestation(e)),
        }
    }
}

/// Received batches that may wait for the applier while it applies one.
const APPLY_AHEAD: usize = 2;

/// How often the applier makes what it applied durable and saves where to resume.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// A witness batch for the applier: its intentions, the witness number after it, and
/// the inviter's attestation as of it.
type Batch = (Vec<Bytes>, u64, Option<Attestation>);

/// Applies a join's batches in order on a blocking thread while the next ones are
/// received, and saves where the bootstrap resumes once the batches before are durable.
struct Applier {
    batches: mpsc::Sender<Batch>,
    done: tokio::task::JoinHandle<Result<(), NetError>>,
}

impl Applier {
    fn start(shared: &Arc<Shared>, store: Store, inviter: PublicKey) -> Applier {
        let (batches, mut queued) = mpsc::channel::<Batch>(APPLY_AHEAD);
        let node = shared.node.clone();
        let done = tokio::task::spawn_blocking(move || {
            let save = |next| -> Result<(), NetError> {
                store.flush()?;
                node.save_join_state(store.id(), &JoinState { inviter, next })?;
                Ok(())
            };
            let mut saved = Instant::now();
            let mut unsaved = None;
            let mut done = |(applying, next, attesting): (Applying, u64, Option<Attesting>)|
             -> Result<(), NetError> {
                let (applied, refused) = tally(applying.outcomes().into_iter().map(received))?;
                if refused > 0 {
                    tracing::warn!(refused, applied, "bootstrap batch had refused intentions");
                }
                // Refused when the inviter is not a member yet as of the batch: the
                // attestation is then only not kept.
                if let Some(Err(e)) = attesting.map(Attesting::outcome) {
                    tracing::debug!("the inviter's attestation was not kept: {e}");
                }
                unsaved = Some(next);
                if saved.elapsed() >= SAVE_EVERY {
                    save(next)?;
                    unsaved = None;
                    saved = Instant::now();
                }
                Ok(())
            };
            // One batch stays queued at the actor while the next is decoded and
            // checked, so the actor never waits for the signatures of the next.
            let mut queued_at_actor = None;
            while let Some((list, next, attested)) = queued.blocking_recv() {
                let applying = store.submit_remote_many(list);
                let attesting = attested.map(|a| store.submit_attested(inviter, a));
                if let Some(before) = queued_at_actor.replace((applying, next, attesting)) {
                    done(before)?;
                }
            }
            if let Some(last) = queued_at_actor {
                done(last)?;
            }
            unsaved.map_or(Ok(()), save)
        });
        Applier { batches, done }
    }

    /// Waits until every queued batch is applied, durable and saved.
    async fn finish(self) -> Result<(), NetError> {
        drop(self.batches);
        self.done.await?
    }
}

/// Restarts, in the background, bootstraps interrupted by a restart.
pub(crate) fn resume_joins(shared: &Arc<Shared>) {
    for (store, state) in shared.node.joining() {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut claim = Claim::new(&shared);
            if !claim.take(store.id()) {
                return;
            }
            let (tx, _rx) = mpsc::unbounded_channel();
            let name = crate::node::store_name(&store);
            let id = store.id();
            let run = Run::new(state.inviter, id, Some(store), &name);
            match run
                .drive(&shared, Joiner::resume(state.next), &mut claim, &tx)
                .await
            {
                Ok(_) => {
                    tracing::info!(store = %id.to_hex(), "resumed join completed");
                    shared.ensure_replicas();
                }
                Err(e) => {
                    tracing::warn!(store = %id.to_hex(), "resuming the join failed: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
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
pub(crate) async fn revoke(
    shared: &Arc<Shared>,
    name: &str,
    target: &str,
) -> Result<Revoked, NetError> {
    let store = shared.store(name)?;
    if target.trim().starts_with(crate::sync::invite::PREFIX) {
        let token = InviteToken::decode(target)?;
        if token.store != store.id() {
            return Err(NetError::TokenForOtherStore(name.to_string()));
        }
        let st = store.clone();
        blocking(move || -> Result<(), NetError> {
            st.revoke_invite(crate::store::invite_id(&token.secret))?;
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
            return Err(NetError::NoSuchMember {
                store: name.to_string(),
                target: target.to_string(),
            })
        }
        _ => {
            return Err(NetError::AmbiguousMember {
                store: name.to_string(),
                target: target.to_string(),
                count: matches.len(),
            })
        }
    };
    if key == shared.me() {
        return Err(NetError::RevokeSelf);
    }
    let st = store.clone();
    blocking(move || -> Result<(), NetError> {
        st.revoke_member(key)?;
        st.flush()?;
        Ok(())
    })
    .await??;
    // The replica cuts `key` off when it sees the sealed revocation.
    Ok(Revoked::Member(key))
}

/// Closes every connection to revoked `key` if it is no longer a member of any store
/// here, else its gossip connections (the gate admits no gossip from a revoked key).
pub(crate) fn cut_off(shared: &Shared, key: &PublicKey) {
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

/// Rebuilds chunk `chunk` (`len` bytes) of `store` from the local chunk `base` and the
/// blocks `peer` says differ, checks its hash and stores it. Fails (the caller then
/// fetches the whole chunk) if the peer refuses, the base is gone or the result does not
/// match.
pub(crate) async fn patch_chunk(
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
            violation: Violation::PatchSize {
                got: got.size,
                want: len,
            },
        });
    }
    let cas = shared.node.cas().clone();
    let (short, owner) = (peer.short(), store.id());
    blocking(move || {
        let old = cas.local_blob(base)?.ok_or(NetError::PatchBaseGone(base))?;
        let blocks: Vec<(u64, Bytes)> =
            got.blocks.into_iter().map(|b| (b.offset, b.data)).collect();
        let rebuilt = crate::cas::patch::apply(&old, got.size, &blocks)
            .filter(|data| Hash::of(data) == chunk)
            .ok_or_else(|| NetError::Protocol {
                peer: short,
                violation: Violation::BadPatch(chunk),
            })?;
        cas.put_blob(owner, rebuilt.into())?;
        Ok(())
    })
    .await?
}
