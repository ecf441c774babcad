//! The apply pipeline inside one write transaction: verify, check the clock, park
//! floating and early intentions, check membership, integrate (witness, index, tips,
//! heads, history, chain seq, projection), wake dependents; and sealing of local ops
//! into signed intentions.
//!
//! Parking. An intention stamped more than [`MAX_CLOCK_SKEW_MS`] ahead of this node's
//! wall time waits in `early` until its time comes; one whose `prev` or a dep is not
//! known yet floats. Both count against its author's quota ([`MAX_FLOATING_PER_AUTHOR`]
//! and bytes); an author that is not a member in the projection (once the genesis
//! intention is applied) gets the smaller stranger quota, inside a pool all strangers
//! share, so no key nor set of keys can crowd out a member's out-of-order intentions. Over quota, the author's own oldest
//! parked intention is evicted. A revoked or equivocating author may not park at all.
//!
//! Admission of an intention by author A with author-chain seq s (seq(prev) + 1, 1
//! without prev), once its predecessors are known:
//! 1. `prev` must be A's own intention ([`StoreError::ForeignPrev`]).
//! 2. The founder's genesis intention is exempt from 3 to 6.
//! 3. Every op must be stamped after `prev` and every dep ([`StoreError::Stale`]): a
//!    chain's clocks increase, so one author's op ids never repeat, and nobody can
//!    stamp an op before what it has seen.
//! 4. If A is revoked, s must not exceed the revocation's cut ([`StoreError::Revoked`]);
//!    the refused hash is recorded (see `cut`), so dependents resolve and it is not
//!    fetched again. An intention holding a `RevokeMember` skips this check here and is
//!    judged with the others once integrated, so that of two admins revoking each other
//!    concurrently both revocations are voided on every replica whatever arrived first.
//! 5. One chain per author: a second known intention of A at seq s (a second root, or
//!    a fork) proves A equivocated ([`StoreError::Equivocation`]). The two
//!    smallest-hash intentions at A's lowest fork seq are kept as evidence: refused,
//!    yet in the reconciliation index, so every replica fetches them and reaches the
//!    same verdict. A is then treated as revoked just before its fork: its applied
//!    intentions from there on are voided (`cut`) and later ones refused and recorded.
//! 6. A's role at s must be Writer, or Admin if the intention holds a system op
//!    ([`StoreError::NotMember`], [`StoreError::NotAdmin`]); any role, Reader
//!    included, for an intention that only leaves. A `SetMember` for A has a
//!    position: the chain seq of A's latest intention that the intention holding it
//!    names (0 if none; an honest admin names A's tip). A's role at s is that of its
//!    latest counting `SetMember` (by op id) positioned before s. So a demotion takes
//!    rights from A's intentions past what the demoting admin had seen, and only
//!    those; a late demotion voids them like a late revocation (`cut`). Such refusals
//!    are not recorded, since an honest author's grant is always in its causal past,
//!    unless A once had a role covering the intention: then A was demoted, which is
//!    as final as a revocation ([`StoreError::Demoted`], recorded).
//! 7. A `Leave` is the only op of its intention and names the intention's own chain
//!    seq s ([`StoreError::BadLeave`]): its author is then cut at s like a revoked
//!    member, so every replica stops counting it once it holds the chain up to s.
//! 8. A deleted store (its projection holds a `DeleteStore`) admits nothing more
//!    ([`StoreError::Deleted`]): what a member keeps is the delete's causal past plus
//!    what it had already applied when the delete arrived. A refused intention is
//!    recorded (as past a cut), so dependents resolve and reconciliation stops
//!    offering it; the projection is unchanged.

use bytes::Bytes;
use parking_lot::Mutex;

use crate::store::projection::Projection;
use prost::Message;
use redb::ReadableTable;

use crate::fs::op::{Op, OpBody, Role};
use crate::fs::FsState;
use crate::hlc::Clock;
use crate::identity::{Identity, PublicKey};
use crate::ids::{FileId, Hash, StoreId};
use crate::intention::{Intention, MAX_INTENTION_OPS_BYTES};
use crate::store::error::StoreError;
use crate::store::index::Summary;
use crate::store::tables::{hlc_bytes, index_key, Tables, META_LAST_LOCAL_HLC, META_PARK_ORDER};
use crate::store::ApplyOutcome;

/// Most intentions parked as floating or early; more are refused until some are woken.
pub(crate) const MAX_FLOATING: u64 = 100_000;
/// An intention stamped further ahead of local wall time than this waits until it is not.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;
/// Most parked intentions of one member: a long out-of-order sync of one busy writer.
pub(crate) const MAX_FLOATING_PER_AUTHOR: u64 = 8192;
/// Most parked bytes of one member: 64 full-size intentions, or thousands of usual ones.
pub(crate) const MAX_FLOATING_BYTES_PER_AUTHOR: u64 = 256 * 1024 * 1024;
/// Most parked intentions of one key that is not a member here (yet): a joiner whose
/// grant has not arrived needs a few, a stranger should get next to nothing.
pub const MAX_FLOATING_PER_STRANGER: u64 = 64;
/// Most parked bytes of one key that is not a member here.
pub(crate) const MAX_FLOATING_BYTES_PER_STRANGER: u64 = 16 * 1024 * 1024;
/// Most parked intentions of all non-members together, so many keys cannot fill the
/// table either.
pub(crate) const MAX_FLOATING_STRANGERS: u64 = 1024;
/// Most parked bytes of all non-members together.
pub(crate) const MAX_FLOATING_STRANGER_BYTES: u64 = 64 * 1024 * 1024;

/// The `quota` key of the strangers' pool (no Ed25519 key is all zeros and valid).
const POOL: [u8; 32] = [0; 32];

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
    pub state: &'a Projection,
    /// The node clock, shared across stores.
    pub clock: &'a Mutex<Clock>,
    /// Wall time (Unix ms) of this batch, for the clock skew rule.
    pub now_ms: u64,
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
    /// Directories whose entries applied remote intentions changed.
    pub dirs: Vec<FileId>,
    /// An integrated intention holds a `RevokeMember`, or a fork was proven: applied
    /// ones may now be void.
    pub revoked: bool,
}

/// Running counts kept in step with the tables.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    /// Rows in the intentions table.
    pub intentions: u64,
    /// Rows in the floating and early tables.
    pub floating: u64,
    /// Intentions replayed from the witness log past the snapshot when the store opened.
    pub replayed: u64,
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
            | StoreError::Equivocation { .. }
            | StoreError::Demoted { .. }
            | StoreError::Stale { .. }
            | StoreError::FloatingFull(_)
            | StoreError::BadLeave { .. }
            | StoreError::Deleted
    )
}

/// Verifies and applies received bytes. A refusal writes nothing but the record of an
/// intention refused for good (past a cut, demoted, or fork evidence).
pub(crate) fn apply_remote(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    i: &Intention,
) -> Result<ApplyOutcome, StoreError> {
    if i.store_id != cx.id {
        return Err(StoreError::WrongStore {
            expected: cx.id,
            got: i.store_id,
        });
    }
    if t.is_known(&i.hash)? || t.parked.get((i.author.0, i.hash.0))?.is_some() {
        return Ok(ApplyOutcome::Duplicate);
    }
    if i.hlc.wall_ms > cx.now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        let until_ms = i.hlc.wall_ms - MAX_CLOCK_SKEW_MS;
        park(t, cx, counts, Wait::Until(until_ms), i)?;
        return Ok(ApplyOutcome::Early { until_ms });
    }
    let admitted = match first_missing(t, i)? {
        Some(missing) => park(t, cx, counts, Wait::For(missing), i)
            .map(|()| Some(ApplyOutcome::Floating { missing })),
        None => admit(t, cx, counts, i).map(|()| None),
    };
    match admitted {
        Ok(Some(floating)) => Ok(floating),
        Ok(None) => {
            integrate(t, cx, counts, i, None)?;
            let woken = wake(t, cx, counts, i.hash)?;
            Ok(ApplyOutcome::Applied { woken })
        }
        Err(
            e @ (StoreError::Revoked { .. }
            | StoreError::Equivocation { .. }
            | StoreError::Demoted { .. }
            | StoreError::Deleted),
        ) => {
            wake(t, cx, counts, i.hash)?;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Applies the early intentions whose time has come (at `cx.now_ms`); returns the wall
/// time at which the next one will be due, if any is left.
pub(crate) fn release_due(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
) -> Result<Option<u64>, StoreError> {
    let mut due = Vec::new();
    for entry in t.early.range((0, [0u8; 32])..=(cx.now_ms, [0xff; 32]))? {
        let (k, v) = entry?;
        due.push((k.value(), Bytes::copy_from_slice(v.value())));
    }
    for (key, bytes) in due {
        let i = match Intention::decode(bytes) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(hash = %Hash(key.1), error = %e, "dropping undecodable early intention");
                t.early.remove(key)?;
                counts.floating -= 1;
                continue;
            }
        };
        if !unpark(t, counts, &i.author, &i.hash)? {
            t.early.remove(key)?;
            counts.floating -= 1;
        }
        match apply_remote(t, cx, counts, &i) {
            Err(e) if !is_refusal(&e) => return Err(e),
            Err(e) => tracing::info!(hash = %Hash(key.1), error = %e, "refused an early intention"),
            Ok(_) => {}
        }
    }
    Ok(t.early.first()?.map(|(k, _)| k.value().0))
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
    let mut batch = batch.into_iter();
    for q in batch.by_ref() {
        if let OpBody::Leave { .. } = q.op.body {
            sealed += seal_pending(t, cx, counts, identity, &mut ops, &mut touched)?;
            seal_leave(t, cx, counts, identity, q.op)?;
            sealed += 1;
            break;
        }
        if let OpBody::Snapshot { .. } = q.op.body {
            sealed += seal_pending(t, cx, counts, identity, &mut ops, &mut touched)?;
            seal_one(t, cx, counts, identity, vec![q.op], Some(&[q.touched]))?;
            sealed += 1;
            size = 0;
            continue;
        }
        let s = op_size(&q.op);
        if size + s > MAX_INTENTION_OPS_BYTES {
            sealed += seal_pending(t, cx, counts, identity, &mut ops, &mut touched)?;
            size = 0;
        }
        size += s;
        ops.push(q.op);
        touched.push(q.touched);
    }
    let dropped = batch.count();
    if dropped > 0 {
        // Pushed in the instant before the leave applied: past the leave's cut, every
        // replica would refuse them, and the store's data is about to go.
        tracing::warn!(
            dropped,
            "local ops pushed after leaving the store are not sealed"
        );
    }
    sealed += seal_pending(t, cx, counts, identity, &mut ops, &mut touched)?;
    Ok(sealed)
}

/// Seals `ops` (with the files each touched) as one intention when there are any, and
/// empties both; returns how many intentions it sealed.
fn seal_pending(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    identity: &Identity,
    ops: &mut Vec<Op>,
    touched: &mut Vec<Option<FileId>>,
) -> Result<usize, StoreError> {
    if ops.is_empty() {
        return Ok(0);
    }
    seal_one(t, cx, counts, identity, std::mem::take(ops), Some(touched))?;
    touched.clear();
    Ok(1)
}

/// Seals this node's `Leave` alone at the next seq of its chain, which it names (rule
/// 7), and applies it to the projection (it was queued unapplied: see `Store::leave`).
fn seal_leave(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    identity: &Identity,
    mut op: Op,
) -> Result<(), StoreError> {
    let upto = crate::store::frontier::chain_len(&t.chain, &identity.public())? + 1;
    op.body = OpBody::Leave { upto };
    seal_one(t, cx, counts, identity, vec![op], None)
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
    touched: Option<&[Option<FileId>]>,
) -> Result<(), StoreError> {
    let me = identity.public();
    let prev = t.tip(&me)?.map(|(h, _)| h);
    // Ops were stamped when pushed; heads applied since then may be stamped later, and
    // naming them would break rule 3: they wait for the next intention.
    let first = ops.iter().map(|o| o.hlc).min().unwrap_or_default();
    let mut deps = Vec::new();
    // A grant names the member's tip: its position is what this admin has seen.
    for op in &ops {
        if let OpBody::SetMember { key, .. } = &op.body {
            if let Some((tip, hlc)) = t.tip(key)? {
                if hlc < first && !deps.contains(&tip) {
                    deps.push(tip);
                }
            }
        }
    }
    for h in t.deps_for_next(first)? {
        if !deps.contains(&h) {
            deps.push(h);
        }
    }
    deps.truncate(crate::intention::MAX_DEPS);
    let i = Intention::create(identity, cx.id, prev, deps, ops)?;
    if !is_genesis(&cx.founder, counts.intentions, &i) {
        check_order(t, &i)?;
    }
    integrate(t, cx, counts, &i, touched)?;
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

/// What a parked intention waits for.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// A predecessor to arrive.
    For(Hash),
    /// Wall time to reach this Unix ms.
    Until(u64),
}

/// Parks `i` (floating or early) within its author's quota, evicting the author's
/// oldest parked intentions to make room; see the module doc.
fn park(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    wait: Wait,
    i: &Intention,
) -> Result<(), StoreError> {
    if t.parked.get((i.author.0, i.hash.0))?.is_some() {
        return Ok(());
    }
    let cut = cut_of(t, &cx.state.read(), &i.author)?;
    if cut.is_some() {
        // Refused now, without waiting, if its place in the chain is known.
        let seq = match i.prev {
            None => Some(1),
            Some(prev) => t.seq_of(&prev)?.map(|(_, seq)| seq + 1),
        };
        if let Some(seq) = seq {
            check_cut(t, cx, i, seq)?;
        }
    }
    // Before the genesis intention nobody is known to be a member: a new replica
    // bootstrapping out of order gets the member quotas (and the global cap).
    let stranger = cut.is_some()
        || (counts.intentions > 0
            && !cx
                .state
                .read()
                .member(&i.author)
                .is_some_and(|(role, _)| role.covers(Role::Writer)));
    let (max_count, max_bytes) = if stranger {
        (MAX_FLOATING_PER_STRANGER, MAX_FLOATING_BYTES_PER_STRANGER)
    } else {
        (MAX_FLOATING_PER_AUTHOR, MAX_FLOATING_BYTES_PER_AUTHOR)
    };
    let len = i.bytes.len() as u64;
    loop {
        let (count, bytes) = quota(t, &i.author.0)?;
        if count < max_count && bytes + len <= max_bytes {
            break;
        }
        if !evict_oldest(t, counts, &i.author)? {
            return Err(StoreError::FloatingFull(max_count));
        }
    }
    if stranger {
        let (count, bytes) = quota(t, &POOL)?;
        if count >= MAX_FLOATING_STRANGERS || bytes + len > MAX_FLOATING_STRANGER_BYTES {
            return Err(StoreError::FloatingFull(MAX_FLOATING_STRANGERS));
        }
    }
    if counts.floating >= MAX_FLOATING {
        return Err(StoreError::FloatingFull(MAX_FLOATING));
    }
    let (missing, until) = match wait {
        Wait::For(h) => {
            t.floating.insert((h.0, i.hash.0), &i.bytes[..])?;
            (h.0, 0)
        }
        Wait::Until(ms) => {
            t.early.insert((ms, i.hash.0), &i.bytes[..])?;
            (Hash::ZERO.0, ms)
        }
    };
    let order = next_park_order(t)?;
    t.parked.insert(
        (i.author.0, i.hash.0),
        (order, missing, until, len, u8::from(stranger)),
    )?;
    add_quota(t, &i.author.0, 1, len)?;
    if stranger {
        add_quota(t, &POOL, 1, len)?;
    }
    counts.floating += 1;
    Ok(())
}

fn quota(t: &Tables<'_>, key: &[u8; 32]) -> Result<(u64, u64), StoreError> {
    Ok(t.quota.get(key)?.map_or((0, 0), |v| v.value()))
}

/// Adds (or with `count` 0, subtracts one intention of) `len` bytes to `key`'s quota.
fn add_quota(t: &mut Tables<'_>, key: &[u8; 32], count: u64, len: u64) -> Result<(), StoreError> {
    let (n, b) = quota(t, key)?;
    let (n, b) = if count > 0 {
        (n + count, b + len)
    } else {
        (n.saturating_sub(1), b.saturating_sub(len))
    };
    if n == 0 {
        t.quota.remove(key)?;
    } else {
        t.quota.insert(key, (n, b))?;
    }
    Ok(())
}

fn next_park_order(t: &mut Tables<'_>) -> Result<u64, StoreError> {
    let order = match t.meta.get(META_PARK_ORDER)? {
        Some(v) => u64::from_be_bytes(
            v.value()
                .try_into()
                .map_err(|_| StoreError::Corrupt("park order is not 8 bytes".into()))?,
        ),
        None => 0,
    };
    t.meta
        .insert(META_PARK_ORDER, &(order + 1).to_be_bytes()[..])?;
    Ok(order)
}

/// Removes a parked intention from every parking table; false if it was not parked.
fn unpark(
    t: &mut Tables<'_>,
    counts: &mut Counts,
    author: &PublicKey,
    hash: &Hash,
) -> Result<bool, StoreError> {
    let Some((_, missing, until, len, stranger)) =
        t.parked.remove((author.0, hash.0))?.map(|row| row.value())
    else {
        return Ok(false);
    };
    if until > 0 {
        t.early.remove((until, hash.0))?;
    } else {
        t.floating.remove((missing, hash.0))?;
    }
    add_quota(t, &author.0, 0, len)?;
    if stranger == 1 {
        add_quota(t, &POOL, 0, len)?;
    }
    counts.floating -= 1;
    Ok(true)
}

/// Drops the oldest parked intention of `author`; false if it has none.
fn evict_oldest(
    t: &mut Tables<'_>,
    counts: &mut Counts,
    author: &PublicKey,
) -> Result<bool, StoreError> {
    let mut oldest: Option<(u64, [u8; 32])> = None;
    for entry in t
        .parked
        .range((author.0, [0u8; 32])..=(author.0, [0xff; 32]))?
    {
        let (k, v) = entry?;
        let order = v.value().0;
        if oldest.is_none_or(|(o, _)| order < o) {
            oldest = Some((order, k.value().1));
        }
    }
    let Some((_, hash)) = oldest else {
        return Ok(false);
    };
    tracing::info!(author = %author.short(), hash = %Hash(hash), "evicting a parked intention over its author's quota");
    unpark(t, counts, author, &Hash(hash))
}

/// Drops every parked intention of `author` (revoked or equivocating).
pub(crate) fn purge_parked(
    t: &mut Tables<'_>,
    counts: &mut Counts,
    author: &PublicKey,
) -> Result<(), StoreError> {
    let mut hashes = Vec::new();
    for entry in t
        .parked
        .range((author.0, [0u8; 32])..=(author.0, [0xff; 32]))?
    {
        hashes.push(Hash(entry?.0.value().1));
    }
    for h in hashes {
        unpark(t, counts, author, &h)?;
    }
    Ok(())
}

/// The chain seq past which `author`'s intentions are void: the smallest of its
/// revocation's cut and the seq just before its proven fork.
pub(crate) fn cut_of(
    t: &Tables<'_>,
    state: &FsState,
    author: &PublicKey,
) -> Result<Option<u64>, StoreError> {
    let fork = t.fork_of(author)?.map(|(seq, _)| seq - 1);
    Ok(match (state.revocation_cut(author), fork) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// Every author with a cut (see [`cut_of`]).
pub(crate) fn cuts(t: &Tables<'_>, state: &FsState) -> Result<Vec<(PublicKey, u64)>, StoreError> {
    let mut out: std::collections::BTreeMap<PublicKey, u64> =
        state.revocation_cuts().into_iter().collect();
    for (author, seq, _) in t.forks()? {
        let c = out.entry(author).or_insert(seq - 1);
        *c = (*c).min(seq - 1);
    }
    Ok(out.into_iter().collect())
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

/// True for the founder's first intention on an empty store (`applied` intentions
/// before it).
pub(crate) fn is_genesis(founder: &PublicKey, applied: u64, i: &Intention) -> bool {
    applied == 0 && i.prev.is_none() && i.deps.is_empty() && i.author == *founder
}

/// Rule 6 of the module doc: the author's role at chain seq `seq` covers the ops.
pub(crate) fn check_authority(
    t: &Tables<'_>,
    state: &FsState,
    i: &Intention,
    seq: u64,
) -> Result<(), StoreError> {
    let role = grant_at(t, state, &i.author, seq)?.map(|(_, role)| role);
    let need = needed_role(i);
    let member = if need == Role::Reader {
        Role::Reader
    } else {
        Role::Writer
    };
    if !role.is_some_and(|r| r.covers(member)) {
        return Err(StoreError::NotMember(i.author));
    }
    if need == Role::Admin && role != Some(Role::Admin) {
        return Err(StoreError::NotAdmin(i.author));
    }
    Ok(())
}

/// The least role that may author `i`: Admin for a system op, Reader for an intention
/// that only leaves, Writer otherwise.
fn needed_role(i: &Intention) -> Role {
    if i.ops.iter().any(|op| op.body.is_system()) {
        Role::Admin
    } else if i
        .ops
        .iter()
        .all(|op| matches!(op.body, OpBody::Leave { .. }))
    {
        Role::Reader
    } else {
        Role::Writer
    }
}

/// Rule 7 of the module doc: a `Leave` is alone in its intention and names its seq.
fn check_leave(i: &Intention, seq: u64) -> Result<(), StoreError> {
    let leaves = i
        .ops
        .iter()
        .any(|op| matches!(op.body, OpBody::Leave { .. }));
    let alone = matches!(&i.ops[..], [Op { body: OpBody::Leave { upto }, .. }] if *upto == seq);
    if leaves && !alone {
        return Err(StoreError::BadLeave { hash: i.hash, seq });
    }
    Ok(())
}

/// The grant that rules `key`'s intention at chain seq `seq`, with its role: its latest
/// counting grant positioned before it (see the module doc).
pub(crate) fn grant_at(
    t: &Tables<'_>,
    state: &FsState,
    key: &PublicKey,
    seq: u64,
) -> Result<Option<(crate::ids::OpId, Role)>, StoreError> {
    for (id, role) in state.grants(key).into_iter().rev() {
        if grant_position(t, &id)? < seq {
            return Ok(Some((id, role)));
        }
    }
    Ok(None)
}

/// True if some counting grant of `i`'s author, wherever placed, covers `i`.
fn was_covered(state: &FsState, i: &Intention) -> bool {
    let need = needed_role(i);
    state
        .grants(&i.author)
        .iter()
        .any(|(_, role)| role.covers(need))
}

fn grant_position(t: &Tables<'_>, id: &crate::ids::OpId) -> Result<u64, StoreError> {
    Ok(t.grant_pos.get(id.to_bytes())?.map_or(0, |v| v.value()))
}

/// Records the position of each `SetMember` in `i`; true if one may take rights from
/// intentions already applied (a role below Admin, placed before the member's tip).
fn place_grants(t: &mut Tables<'_>, i: &Intention) -> Result<bool, StoreError> {
    let mut demotes = false;
    for op in &i.ops {
        let OpBody::SetMember { key, role, .. } = &op.body else {
            continue;
        };
        let mut position = 0;
        for h in i.prev.iter().chain(&i.deps) {
            if let Some((author, seq)) = t.seq_of(h)? {
                if author == *key {
                    position = position.max(seq);
                }
            }
        }
        t.grant_pos.insert(op.id(i.author).to_bytes(), position)?;
        demotes |= *role != Role::Admin && !t.chain_after(key, position)?.is_empty();
    }
    Ok(demotes)
}

/// Applied intentions whose author's role at their chain seq (by the grants in
/// `state`) no longer covers them: what a demotion takes.
pub(crate) fn demoted(t: &Tables<'_>, state: &FsState) -> Result<Vec<Hash>, StoreError> {
    let mut out = Vec::new();
    for key in state.granted() {
        let grants = state.grants(&key);
        // One grant rules all the key's intentions, which rebuilding checked already.
        if grants.len() < 2 || grants.iter().all(|(_, role)| *role == Role::Admin) {
            continue;
        }
        let mut from = u64::MAX;
        for (id, _) in &grants {
            from = from.min(grant_position(t, id)?);
        }
        for h in t.chain_after(&key, from)? {
            let Some(bytes) = t.intentions.get(h.0)? else {
                continue;
            };
            let i = Intention::decode(bytes.value())
                .map_err(|e| StoreError::Corrupt(format!("stored intention {h}: {e}")))?;
            let seq = t.seq_of(&h)?.map_or(0, |(_, s)| s);
            if check_authority(t, state, &i, seq).is_err() {
                out.push(h);
            }
        }
    }
    Ok(out)
}

fn holds_revocation(i: &Intention) -> bool {
    i.ops
        .iter()
        .any(|op| matches!(op.body, OpBody::RevokeMember { .. }))
}

/// Rule 3 of the module doc: every op of `i` is stamped after its `prev` and deps.
/// Sealing checks it too, so a node never signs what it would refuse.
pub(crate) fn check_order(t: &Tables<'_>, i: &Intention) -> Result<(), StoreError> {
    let Some(first) = i.ops.iter().map(|o| o.hlc).min() else {
        return Ok(());
    };
    for h in i.prev.iter().chain(&i.deps) {
        if let Some(hlc) = t.hlc_of(h)? {
            if first <= hlc {
                return Err(StoreError::Stale {
                    hash: i.hash,
                    before: *h,
                });
            }
        }
    }
    Ok(())
}

/// Rules 1-6 of the module doc, cheapest refusal first: a cut refuses without a role
/// check, and only an author with the rights to write can leave fork evidence (so a
/// stranger cannot grow the index). An intention past its author's cut is recorded as
/// refused before the error returns; a fork is recorded as evidence.
fn admit(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &Counts,
    i: &Intention,
) -> Result<(), StoreError> {
    let seq = chain_seq(t, i)?;
    if is_genesis(&cx.founder, counts.intentions, i) {
        return Ok(());
    }
    if cx.state.read().deleted().is_some() {
        refuse(t, cx, i, seq)?;
        return Err(StoreError::Deleted);
    }
    check_leave(i, seq)?;
    check_cut(t, cx, i, seq)?;
    let equivocation = StoreError::Equivocation {
        author: i.author,
        seq,
    };
    let fork = t.fork_of(&i.author)?;
    if let Err(e) = check_authority(t, &cx.state.read(), i, seq) {
        if !was_covered(&cx.state.read(), i) {
            return Err(e);
        }
        // Demoted: as final as a revocation, recorded so dependents resolve.
        refuse(t, cx, i, seq)?;
        return Err(StoreError::Demoted {
            author: i.author,
            seq,
        });
    }
    check_order(t, i)?;
    if let Some((at, pair)) = fork.filter(|(at, _)| *at == seq) {
        let mut all = [pair[0], pair[1], i.hash];
        all.sort();
        refuse(t, cx, i, seq)?;
        set_evidence(t, cx, &i.author, at, [all[0], all[1]])?;
        return Err(equivocation);
    }
    if let Some(other) = t.chain_holder(&i.author, seq, &i.hash)? {
        tracing::warn!(author = %i.author.short(), seq, "an author signed two intentions at one chain seq");
        refuse(t, cx, i, seq)?;
        let pair = if other < i.hash {
            [other, i.hash]
        } else {
            [i.hash, other]
        };
        set_evidence(t, cx, &i.author, seq, pair)?;
        cx.effects.borrow_mut().revoked = true;
        return Err(equivocation);
    }
    Ok(())
}

/// Rules 4 and 5 for an author already cut: refuses and records `i` (chain seq `seq`)
/// if it lies past its author's revocation cut or proven fork.
fn check_cut(t: &mut Tables<'_>, cx: &Ctx<'_>, i: &Intention, seq: u64) -> Result<(), StoreError> {
    let revoked = cx.state.read().revocation_cut(&i.author);
    if let Some(upto) = revoked {
        if seq > upto && !holds_revocation(i) {
            refuse(t, cx, i, seq)?;
            return Err(StoreError::Revoked {
                author: i.author,
                seq,
                upto,
            });
        }
    }
    if t.fork_of(&i.author)?.is_some_and(|(at, _)| seq > at) {
        refuse(t, cx, i, seq)?;
        return Err(StoreError::Equivocation {
            author: i.author,
            seq,
        });
    }
    Ok(())
}

/// Records `i` (chain seq `seq`) as refused, with its bytes.
fn refuse(t: &mut Tables<'_>, cx: &Ctx<'_>, i: &Intention, seq: u64) -> Result<(), StoreError> {
    t.seqs.insert(i.hash.0, (i.author.0, seq))?;
    t.add_hlc(&i.hash, i.hlc)?;
    // With its bytes: a replica that never saw it can fetch it and refuse it too, or
    // the intentions naming it (applied here, as it counts as known) would float there.
    t.add_refused(&i.hash, &i.bytes)?;
    cx.refused.lock().insert(i.hash);
    Ok(())
}

/// Makes `pair` (refused or about to be voided, bytes kept) the evidence of `author`'s
/// fork at `seq`, in the reconciliation index; what it replaces leaves the index.
pub(crate) fn set_evidence(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    author: &PublicKey,
    seq: u64,
    pair: [Hash; 2],
) -> Result<(), StoreError> {
    let old = t.fork_of(author)?.map(|(_, p)| p).unwrap_or_default();
    for h in old.iter().filter(|h| !pair.contains(h)) {
        unindex(t, cx, h)?;
    }
    for h in &pair {
        if let Some(hlc) = t.hlc_of(h)? {
            let key = index_key(hlc, h);
            if t.index.insert(key, ())?.is_none() {
                cx.summary.lock().insert(&t.index, key)?;
            }
        }
    }
    t.evidence.insert(author.0, (seq, pair[0].0, pair[1].0))?;
    Ok(())
}

/// Forgets `author`'s fork evidence (a revocation cuts before it, so it proves nothing
/// more), taking it out of the reconciliation index.
pub(crate) fn drop_evidence(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    author: &PublicKey,
) -> Result<(), StoreError> {
    if let Some((_, pair)) = t.fork_of(author)? {
        for h in &pair {
            unindex(t, cx, h)?;
        }
        t.evidence.remove(author.0)?;
    }
    Ok(())
}

/// Takes `hash` out of the reconciliation index, if it is there.
pub(crate) fn unindex(t: &mut Tables<'_>, cx: &Ctx<'_>, hash: &Hash) -> Result<(), StoreError> {
    if let Some(hlc) = t.hlc_of(hash)? {
        let key = index_key(hlc, hash);
        if t.index.remove(key)?.is_some() {
            cx.summary.lock().remove(key);
        }
    }
    Ok(())
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
    t.add_hlc(&i.hash, i.hlc)?;
    let demotes = place_grants(t, i)?;
    let seq = t.append_witness(&i.hash)?;
    t.intentions.insert(i.hash.0, &i.bytes)?;
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
    let mut dirs = Vec::new();
    let touched: Vec<Option<FileId>> = match local {
        Some(touched) => touched.to_vec(),
        None => {
            let mut st = cx.state.write_received();
            i.ops
                .iter()
                .map(|op| {
                    let f = st.touched(i.author, op);
                    dirs.extend(st.apply(i.author, op));
                    f
                })
                .collect()
        }
    };
    let mut effects = cx.effects.borrow_mut();
    effects.dirs.extend(dirs);
    effects.applied += usize::from(local.is_none());
    effects.revoked |= holds_revocation(i) || demotes;
    for f in touched.into_iter().flatten() {
        t.add_history(f, seq)?;
        if local.is_none() {
            effects.touched.push(f);
        }
    }
    drop(effects);
    if local.is_none() && i.hlc.wall_ms <= cx.now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
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
            let i = match Intention::decode(bytes) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(hash = %Hash(key.1), error = %e, "dropping undecodable floating intention");
                    t.floating.remove(key)?;
                    counts.floating -= 1;
                    continue;
                }
            };
            if !unpark(t, counts, &i.author, &i.hash)? {
                t.floating.remove(key)?;
                counts.floating -= 1;
            }
            if t.is_known(&i.hash)? {
                continue;
            }
            let admitted = match first_missing(t, &i)? {
                Some(missing) => park(t, cx, counts, Wait::For(missing), &i).map(|()| false),
                None => admit(t, cx, counts, &i).map(|()| true),
            };
            match admitted {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) if !is_refusal(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(hash = %i.hash, error = %e, "dropping floating intention");
                    if matches!(
                        e,
                        StoreError::Revoked { .. }
                            | StoreError::Equivocation { .. }
                            | StoreError::Demoted { .. }
                    ) {
                        queue.push(i.hash);
                    }
                    continue;
                }
            }
            integrate(t, cx, counts, &i, None)?;
            woken += 1;
            queue.push(i.hash);
        }
    }
    Ok(woken)
}
