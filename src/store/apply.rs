//! The apply pipeline inside one write transaction: verify, check membership, park
//! floating intentions, integrate (witness, index, tips, heads, history, chain seq,
//! projection), wake dependents; and sealing of local ops into signed intentions.
//!
//! Admission of an intention by author A with author-chain seq s (seq(prev) + 1, 1
//! without prev), once its predecessors are known:
//! 1. `prev` must be A's own intention ([`StoreError::ForeignPrev`]).
//! 2. The founder's genesis intention is exempt from 3 and 4.
//! 3. If A is revoked, s must not exceed the revocation's cut ([`StoreError::Revoked`]);
//!    the refused hash is recorded (see `cut`), so dependents resolve and it is not
//!    fetched again. An intention holding a `RevokeMember` skips this check here and is
//!    judged with the others once integrated, so that of two admins revoking each other
//!    concurrently both revocations are voided on every replica whatever arrived first.
//! 4. A's strongest granted role must be Writer, or Admin if the intention holds a
//!    system op ([`StoreError::NotMember`], [`StoreError::NotAdmin`]); such refusals are
//!    not recorded: an honest author's grant is always in its causal past.

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use redb::ReadableTable;

use crate::fs::op::{FileId, Op, OpBody, Role};
use crate::fs::FsState;
use crate::hlc::{now_ms, Clock};
use crate::identity::{Identity, PublicKey};
use crate::intention::{Hash, Intention, StoreId, MAX_INTENTION_OPS_BYTES};
use crate::store::error::StoreError;
use crate::store::index::Summary;
use crate::store::tables::{hlc_bytes, index_key, Tables, META_LAST_LOCAL_HLC};
use crate::store::ApplyOutcome;

/// Most intentions parked as floating; more are refused until some are woken.
pub const MAX_FLOATING: u64 = 100_000;
/// A remote HLC further ahead of local wall time than this is not observed by the clock.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// A local op applied to the projection at push time, waiting to be sealed.
#[derive(Debug)]
pub(crate) struct Queued {
    /// The op.
    pub op: Op,
    /// The file it touched, resolved before it was applied.
    pub touched: Option<FileId>,
}

/// What the pipeline needs besides the tables.
pub(crate) struct Ctx<'a> {
    /// This store's id.
    pub id: StoreId,
    /// The author of the genesis intention.
    pub founder: PublicKey,
    /// The projection.
    pub state: &'a RwLock<FsState>,
    /// The node clock, shared across stores.
    pub clock: &'a Mutex<Clock>,
    /// Hashes of refused and voided intentions, kept in step with the refused table.
    pub refused: &'a Mutex<std::collections::HashSet<Hash>>,
    /// The reconciliation index summary, kept in step with the index table.
    pub summary: &'a Mutex<Summary>,
    /// What this batch changed, published once it commits.
    pub effects: std::cell::RefCell<Effects>,
}

/// What one committed batch changed, for [`crate::store::StoreEvent`]s.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Bytes of intentions sealed from local ops.
    pub sealed: Vec<Bytes>,
    /// Remote intentions applied.
    pub applied: usize,
    /// Files touched by applied remote intentions or by voided ones.
    pub touched: Vec<FileId>,
    /// An integrated intention holds a `RevokeMember`: applied ones may now be void.
    pub revoked: bool,
}

/// Running counts kept in step with the tables.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    /// Rows in the intentions table.
    pub intentions: u64,
    /// Rows in the floating table.
    pub floating: u64,
}

/// True for errors that refuse one input and leave the store usable.
pub(crate) fn is_refusal(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Intention(_)
            | StoreError::WrongStore { .. }
            | StoreError::NotMember(_)
            | StoreError::NotAdmin(_)
            | StoreError::ForeignPrev { .. }
            | StoreError::Revoked { .. }
            | StoreError::FloatingFull(_)
    )
}

/// Verifies and applies received bytes. A refusal returns before any write.
pub(crate) fn apply_remote(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    bytes: Bytes,
) -> Result<ApplyOutcome, StoreError> {
    let i = Intention::decode(bytes)?;
    if i.store_id != cx.id {
        return Err(StoreError::WrongStore {
            expected: cx.id,
            got: i.store_id,
        });
    }
    if t.is_known(&i.hash)? {
        return Ok(ApplyOutcome::Duplicate);
    }
    if let Some(missing) = first_missing(t, &i)? {
        park(t, counts, missing, &i)?;
        return Ok(ApplyOutcome::Floating { missing });
    }
    match admit(t, cx, counts, &i) {
        Ok(()) => {
            integrate(t, cx, counts, &i, None)?;
            let woken = wake(t, cx, counts, i.hash)?;
            Ok(ApplyOutcome::Applied { woken })
        }
        Err(e @ StoreError::Revoked { .. }) => {
            wake(t, cx, counts, i.hash)?;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Seals local ops (already applied to the projection) into as few intentions as fit,
/// each chained to this author's tip and naming the current heads; returns their count.
pub(crate) fn seal_local(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    identity: &Identity,
    batch: Vec<Queued>,
) -> Result<usize, StoreError> {
    let mut sealed = 0;
    let mut ops = Vec::new();
    let mut touched = Vec::new();
    let mut size = 0;
    for q in batch {
        let s = op_size(&q.op);
        if !ops.is_empty() && size + s > MAX_INTENTION_OPS_BYTES {
            seal_one(t, cx, counts, identity, std::mem::take(&mut ops), &touched)?;
            touched.clear();
            sealed += 1;
            size = 0;
        }
        size += s;
        ops.push(q.op);
        touched.push(q.touched);
    }
    if !ops.is_empty() {
        seal_one(t, cx, counts, identity, ops, &touched)?;
        sealed += 1;
    }
    Ok(sealed)
}

/// Encoded bytes `op` adds to an op batch (field tag, length, message).
pub(crate) fn op_size(op: &Op) -> usize {
    let len = op.to_proto().encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

fn seal_one(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    identity: &Identity,
    ops: Vec<Op>,
    touched: &[Option<FileId>],
) -> Result<(), StoreError> {
    let me = identity.public();
    let prev = t.tip(&me)?.map(|(h, _)| h);
    let deps = t.deps_for_next()?;
    let i = Intention::create(identity, cx.id, prev, deps, ops)?;
    integrate(t, cx, counts, &i, Some(touched))?;
    t.meta.insert(META_LAST_LOCAL_HLC, &hlc_bytes(i.hlc)[..])?;
    cx.effects.borrow_mut().sealed.push(i.bytes.clone());
    Ok(())
}

/// The first of `prev`, then `deps`, that is not yet applied.
fn first_missing(t: &Tables<'_>, i: &Intention) -> Result<Option<Hash>, StoreError> {
    for h in i.prev.iter().chain(&i.deps) {
        if !t.is_known(h)? {
            return Ok(Some(*h));
        }
    }
    Ok(None)
}

fn park(
    t: &mut Tables<'_>,
    counts: &mut Counts,
    missing: Hash,
    i: &Intention,
) -> Result<(), StoreError> {
    let key = (missing.0, i.hash.0);
    if t.floating.get(key)?.is_some() {
        return Ok(());
    }
    if counts.floating >= MAX_FLOATING {
        return Err(StoreError::FloatingFull(MAX_FLOATING));
    }
    t.floating.insert(key, &i.bytes[..])?;
    counts.floating += 1;
    Ok(())
}

/// The author-chain seq of `i`: 1 without `prev`, else one more than `prev`'s, which
/// must be known and by the same author.
pub(crate) fn chain_seq(t: &Tables<'_>, i: &Intention) -> Result<u64, StoreError> {
    let Some(prev) = i.prev else {
        return Ok(1);
    };
    match t.seq_of(&prev)? {
        Some((author, seq)) if author == i.author => Ok(seq + 1),
        Some(_) => Err(StoreError::ForeignPrev { hash: i.hash }),
        None => Err(StoreError::Corrupt(format!(
            "no chain seq for known {prev}"
        ))),
    }
}

/// True for the founder's first intention on an empty store.
pub(crate) fn is_genesis(cx: &Ctx<'_>, applied: u64, i: &Intention) -> bool {
    applied == 0 && i.prev.is_none() && i.deps.is_empty() && i.author == cx.founder
}

/// Rule 4 of the module doc: the author's strongest granted role covers the ops.
pub(crate) fn check_authority(state: &FsState, i: &Intention) -> Result<(), StoreError> {
    let strongest = state.strongest_role(&i.author);
    if !strongest.is_some_and(|r| r.covers(Role::Writer)) {
        return Err(StoreError::NotMember(i.author));
    }
    if i.ops.iter().any(|op| op.body.is_system()) && strongest != Some(Role::Admin) {
        return Err(StoreError::NotAdmin(i.author));
    }
    Ok(())
}

fn holds_revocation(i: &Intention) -> bool {
    i.ops
        .iter()
        .any(|op| matches!(op.body, OpBody::RevokeMember { .. }))
}

/// Rules 1-4 of the module doc. An intention past its author's cut is recorded as
/// refused before the error returns.
fn admit(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &Counts,
    i: &Intention,
) -> Result<(), StoreError> {
    let seq = chain_seq(t, i)?;
    if is_genesis(cx, counts.intentions, i) {
        return Ok(());
    }
    let state = cx.state.read();
    if let Some(upto) = state.revocation_cut(&i.author) {
        if seq > upto && !holds_revocation(i) {
            drop(state);
            t.seqs.insert(i.hash.0, (i.author.0, seq))?;
            t.add_refused(&i.hash, &[])?;
            cx.refused.lock().insert(i.hash);
            return Err(StoreError::Revoked {
                author: i.author,
                seq,
                upto,
            });
        }
    }
    check_authority(&state, i)
}

/// Writes an applicable intention to every table and, unless it is local (`touched`
/// given: its ops are already in the projection), applies its ops.
fn integrate(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    i: &Intention,
    local: Option<&[Option<FileId>]>,
) -> Result<(), StoreError> {
    let chain = chain_seq(t, i)?;
    t.add_chain(&i.author, chain, &i.hash)?;
    let seq = t.append_witness(&i.hash)?;
    t.intentions.insert(i.hash.0, &i.bytes[..])?;
    let key = index_key(i.hlc, &i.hash);
    if t.index.insert(key, ())?.is_none() {
        cx.summary.lock().insert(&t.index, key)?;
    }
    let newer = t
        .tip(&i.author)?
        .is_none_or(|(h, hlc)| (hlc, h) < (i.hlc, i.hash));
    if newer {
        t.tips
            .insert(i.author.0, (i.hash.0, i.hlc.wall_ms, i.hlc.counter))?;
    }
    for h in i.prev.iter().chain(&i.deps) {
        t.heads.remove(h.0)?;
    }
    t.heads.insert(i.hash.0, (i.hlc.wall_ms, i.hlc.counter))?;
    let touched: Vec<Option<FileId>> = match local {
        Some(touched) => touched.to_vec(),
        None => {
            let mut st = cx.state.write();
            i.ops
                .iter()
                .map(|op| {
                    let f = st.touched(i.author, op);
                    st.apply(i.author, op);
                    f
                })
                .collect()
        }
    };
    let mut effects = cx.effects.borrow_mut();
    effects.applied += usize::from(local.is_none());
    effects.revoked |= holds_revocation(i);
    for f in touched.into_iter().flatten() {
        t.add_history(f, seq, &i.hash)?;
        if local.is_none() {
            effects.touched.push(f);
        }
    }
    drop(effects);
    if local.is_none() && i.hlc.wall_ms <= now_ms().saturating_add(MAX_CLOCK_SKEW_MS) {
        cx.clock.lock().observe(i.hlc);
    }
    counts.intentions += 1;
    Ok(())
}

/// Applies, transitively, every floating intention that waited for `arrived` and now
/// has all its predecessors; re-parks those still missing one. Returns how many applied.
fn wake(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    arrived: Hash,
) -> Result<usize, StoreError> {
    let mut woken = 0;
    let mut queue = vec![arrived];
    while let Some(h) = queue.pop() {
        let mut parked = Vec::new();
        for entry in t.floating.range((h.0, [0u8; 32])..=(h.0, [0xff; 32]))? {
            let (k, v) = entry?;
            parked.push((k.value(), Bytes::copy_from_slice(v.value())));
        }
        for (key, bytes) in parked {
            t.floating.remove(key)?;
            counts.floating -= 1;
            let i = match Intention::decode(bytes) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(hash = %Hash(key.1), error = %e, "dropping undecodable floating intention");
                    continue;
                }
            };
            if t.is_known(&i.hash)? {
                continue;
            }
            if let Some(missing) = first_missing(t, &i)? {
                park(t, counts, missing, &i)?;
                continue;
            }
            if let Err(e) = admit(t, cx, counts, &i) {
                if !is_refusal(&e) {
                    return Err(e);
                }
                tracing::warn!(hash = %i.hash, error = %e, "dropping floating intention");
                if matches!(e, StoreError::Revoked { .. }) {
                    queue.push(i.hash);
                }
                continue;
            }
            integrate(t, cx, counts, &i, None)?;
            woken += 1;
            queue.push(i.hash);
        }
    }
    Ok(woken)
}
