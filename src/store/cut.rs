//! Cuts: voiding applied intentions that a revocation or a proven fork puts past a cut.
//!
//! `RevokeMember { key, upto }` makes every intention of `key` with author-chain seq
//! above `upto` invalid (the smallest `upto` holds if there are several). A proven
//! fork of `key` at chain seq `s` (two of its intentions there, see `apply`) cuts it at
//! `s - 1` the same way: an equivocator is treated as revoked just before its fork,
//! which every replica holding the evidence computes alike. Arrival checks refuse
//! such intentions (see `apply`); this module handles the other order, a cut learnt
//! after post-cut intentions were applied (a concurrent revocation, or the second
//! branch of a fork):
//! [`revise`] moves them from `intentions`, `index` and `chain` to `refused` (with
//! their bytes, so they can still be served to replicas resolving deps), then rebuilds
//! the projection by applying every remaining intention in witness order to a fresh
//! `FsState`. The rebuild re-checks each author's authority against the state built so
//! far, so grants made by a voided intention fall too (and are voided in turn). Heads
//! are recomputed, history rows of voided intentions dropped, and a snapshot of the new
//! projection is written in the same transaction, so `Store::open` (which replays the
//! witness log after the snapshot, skipping refused entries) gives the same state. The
//! witness log itself is never rewritten: its hash chain stays intact.
//!
//! A demotion (a `SetMember` below Admin, positioned in the member's chain, see
//! `apply` rule 6) applied after intentions it takes rights from voids them the same
//! way: [`revise`] also voids what the final grants no longer cover.
//!
//! Fork evidence stays in the reconciliation index even when voided, so replicas
//! exchange it; evidence of a fork past a revocation's cut proves nothing more and is
//! dropped, as a replica that learnt the revocation first never records it. Parked
//! intentions of a cut author are dropped.
//!
//! The projection being a function of the set of intentions, two replicas holding the
//! same set reach the same state whether a revocation or a fork's second branch
//! arrived before or after the intentions it cuts.

use std::collections::{BTreeMap, HashSet};

use redb::ReadableTable;

use crate::fs::FsState;
use crate::hlc::Hlc;
use crate::ids::Hash;
use crate::intention::Intention;
use crate::store::apply::{
    check_authority, cuts, demoted, drop_evidence, is_genesis, purge_parked, Counts, Ctx,
};
use crate::store::error::StoreError;
use crate::store::tables::{index_key, Tables};

/// Voids applied intentions past a revocation cut and rebuilds `state` (held under
/// its write lock by the caller) until no cut is violated; returns how many were voided.
pub(crate) fn revise(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    state: &mut FsState,
) -> Result<usize, StoreError> {
    let mut voided = 0;
    loop {
        for (key, at, _) in t.forks()? {
            if state.revocation_cut(&key).is_some_and(|upto| upto < at) {
                drop_evidence(t, cx, &key)?;
            }
        }
        let mut past = Vec::new();
        for (key, upto) in cuts(t, state)? {
            purge_parked(t, counts, &key)?;
            past.extend(t.chain_after(&key, upto)?);
        }
        for h in demoted(t, state)? {
            if !past.contains(&h) {
                past.push(h);
            }
        }
        if past.is_empty() {
            break;
        }
        for h in &past {
            void(t, cx, counts, h)?;
        }
        voided += past.len() + rebuild(t, cx, counts, state)?;
    }
    if voided > 0 {
        tracing::info!(voided, "revocation voided applied intentions");
    }
    Ok(voided)
}

/// Moves one applied intention to `refused`.
fn void(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    hash: &Hash,
) -> Result<(), StoreError> {
    let bytes = t
        .intentions
        .remove(hash.0)?
        .ok_or_else(|| StoreError::Corrupt(format!("voiding unknown {hash}")))?
        .value();
    let i = Intention::decode(bytes)
        .map_err(|e| StoreError::Corrupt(format!("stored intention {hash}: {e}")))?;
    let seq = t
        .seq_of(hash)?
        .ok_or_else(|| StoreError::Corrupt(format!("no chain seq for {hash}")))?
        .1;
    t.chain.remove((i.author.0, seq, hash.0))?;
    if !t.is_evidence(&i.author, hash)? {
        let key = index_key(i.hlc, hash);
        if t.index.remove(key)?.is_some() {
            cx.summary.lock().remove(key);
        }
    }
    t.heads.remove(hash.0)?;
    t.add_refused(hash, &i.bytes)?;
    cx.refused.lock().insert(*hash);
    counts.intentions -= 1;
    Ok(())
}

/// Replaces `state` with the projection of the remaining intentions, voiding those whose
/// author lost its authority; recomputes heads and drops history rows of voided ones.
fn rebuild(
    t: &mut Tables<'_>,
    cx: &Ctx<'_>,
    counts: &mut Counts,
    state: &mut FsState,
) -> Result<usize, StoreError> {
    let mut fresh = FsState::new();
    let mut heads: BTreeMap<Hash, Hlc> = BTreeMap::new();
    let mut named: HashSet<Hash> = HashSet::new();
    let mut lost = Vec::new();
    let mut applied = 0;
    for entry in t.witness.iter()? {
        let hash = Hash(entry?.1.value().0);
        let Some(bytes) = t.intentions.get(hash.0)? else {
            continue;
        };
        let Ok(i) = Intention::decode(bytes.value()) else {
            continue; // quarantined at open (see `Store::open`): kept, never applied
        };
        let seq = t.seq_of(&hash)?.map_or(0, |(_, seq)| seq);
        if !is_genesis(&cx.founder, applied, &i) && check_authority(t, &fresh, &i, seq).is_err() {
            lost.push(hash);
            continue;
        }
        applied += 1;
        for op in &i.ops {
            fresh.apply(i.author, op);
        }
        named.extend(i.prev.iter().chain(&i.deps).copied());
        heads.insert(hash, i.hlc);
    }
    for h in &lost {
        void(t, cx, counts, h)?;
    }
    t.heads.retain(|_, _| false)?;
    for (h, hlc) in heads.iter().filter(|(h, _)| !named.contains(h)) {
        t.heads.insert(h.0, (hlc.wall_ms, hlc.counter))?;
    }
    let refused = cx.refused.lock().clone();
    let mut voided = HashSet::new();
    for entry in t.witness.iter()? {
        let (seq, row) = entry?;
        if refused.contains(&Hash(row.value().0)) {
            voided.insert(seq.value());
        }
    }
    let mut touched = Vec::new();
    for entry in t.history.iter()? {
        let (file, seq) = entry?.0.value();
        if voided.contains(&seq) {
            touched.extend(crate::ids::OpId::from_bytes(&file));
        }
    }
    t.history.retain(|(_, seq), ()| !voided.contains(&seq))?;
    cx.effects.borrow_mut().touched.extend(touched);
    *state = fresh;
    Ok(lost.len())
}
