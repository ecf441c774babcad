//! The store's side of the stability frontier (the rules and why they are safe are in
//! `sync::frontier`): this node's live attestation read from its tables, members'
//! attestations kept in the `attest` table, and the frontier recomputed inside every
//! commit, persisted in `meta` in the same transaction and never moved backwards.

use std::collections::BTreeMap;

use prost::Message;
use redb::{ReadableTable, Table};

use crate::fs::{FsState, Purged};
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::Hash;
use crate::proto::peer as pb;
use crate::store::error::StoreError;
use crate::store::retention::MS_PER_DAY;
use crate::store::tables::{hlc_bytes, hlc_from_bytes, Tables, META_ATTESTED, META_FRONTIER};
use crate::sync::frontier::{compute, Attestation, Frontier, Holdback, Inputs, Stored};

/// The frontier of a store as this node last computed it, for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// The frontier (the greatest ever computed), if any was.
    pub frontier: Option<Frontier>,
    /// Who holds it where it is (or blocks a newer one), once computed since open.
    pub holdback: Option<Holdback>,
    /// The greatest HLC applied here.
    pub newest: Hlc,
    /// Applied intentions the frontier's vector does not cover yet.
    pub behind: u64,
    /// The last sweep left rows due (it takes a bounded batch per commit).
    pub sweeping: bool,
}

/// The length of `author`'s applied chain.
pub(crate) fn chain_len(
    chain: &impl ReadableTable<([u8; 32], u64, [u8; 32]), ()>,
    author: &PublicKey,
) -> Result<u64, StoreError> {
    let last = chain
        .range((author.0, 0, [0u8; 32])..=(author.0, u64::MAX, [0xffu8; 32]))?
        .next_back()
        .transpose()?;
    Ok(last.map_or(0, |(k, _)| k.value().1))
}

/// This node's live attestation from the tables of the commit in progress: the chain
/// length of every author applied here, and as floor the greatest head (every applied
/// intention is a head or precedes a greater one) or the smallest stamp of the ops
/// pushed but not sealed (`pending`), whichever is smaller.
fn own(t: &Tables<'_>, pending: Option<Hlc>) -> Result<(Attestation, Hlc), StoreError> {
    let mut vector = BTreeMap::new();
    for entry in t.tips.iter()? {
        let author = PublicKey(entry?.0.value());
        let len = chain_len(&t.chain, &author)?;
        if len > 0 {
            vector.insert(author, len);
        }
    }
    let mut newest = Hlc::ZERO;
    for entry in t.heads.iter()? {
        let (wall_ms, counter) = entry?.1.value();
        newest = newest.max(Hlc { wall_ms, counter });
    }
    let floor = pending.map_or(newest, |p| p.min(newest));
    Ok((Attestation { vector, floor }, newest))
}

/// Every stored attestation (rows that do not decode are skipped: they were validated
/// when stored, so only a corrupt file has them).
fn stored(t: &Tables<'_>) -> Result<BTreeMap<PublicKey, Stored>, StoreError> {
    let mut out = BTreeMap::new();
    for entry in t.attest.iter()? {
        let (k, v) = entry?;
        let (at_ms, bytes) = v.value();
        let decoded = pb::Attestation::decode(bytes)
            .ok()
            .and_then(|a| Attestation::try_from(a).ok());
        if let Some(attestation) = decoded {
            out.insert(PublicKey(k.value()), Stored { attestation, at_ms });
        }
    }
    Ok(out)
}

/// Stores `from`'s attestation as sent, received at `at_ms`, replacing its last one.
pub(crate) fn record(
    attest: &mut Table<'_, [u8; 32], (u64, &'static [u8])>,
    from: &PublicKey,
    attestation: &Attestation,
    at_ms: u64,
) -> Result<(), StoreError> {
    let bytes = attestation.to_pb().encode_to_vec();
    attest.insert(from.0, (at_ms, &bytes[..]))?;
    Ok(())
}

/// The persisted frontier in a `meta` row, if it decodes.
pub(crate) fn decode(row: &[u8]) -> Option<Frontier> {
    let members = u32::from_be_bytes(row.get(..4)?.try_into().ok()?) as usize;
    let a = Attestation::try_from(pb::Attestation::decode(row.get(4..)?).ok()?).ok()?;
    Some(Frontier {
        below: a.floor,
        vector: a.vector,
        members,
    })
}

fn encode(f: &Frontier) -> Vec<u8> {
    let a = Attestation {
        vector: f.vector.clone(),
        floor: f.below,
    };
    let mut row = (f.members as u32).to_be_bytes().to_vec();
    row.extend(a.to_pb().encode_to_vec());
    row
}

/// Recomputes the frontier in the commit in progress, with `st` the projection under
/// its write lock (so no local write is in flight) and `pending` the smallest stamp of
/// the ops pushed but not sealed. When `below` advances the frontier is persisted; the
/// projection is purged below it and swept below what is settled (each a no-op when
/// neither moved). Returns this node's live attestation.
pub(crate) fn advance(
    t: &mut Tables<'_>,
    st: &mut FsState,
    standing: &mut Standing,
    me: PublicKey,
    pending: Option<Hlc>,
    now_ms: u64,
) -> Result<Attestation, StoreError> {
    let (own, newest) = own(t, pending)?;
    let members: Vec<PublicKey> = st.members().into_iter().map(|m| m.key).collect();
    let revoked = st.revocation_cuts();
    let stored = stored(t)?;
    let held = |k: &PublicKey| own.len_of(k);
    let granted = |k: &PublicKey| st.grants(k).first().map_or(0, |(id, _)| id.hlc.wall_ms);
    let computed = compute(&Inputs {
        me,
        own: &own,
        members: &members,
        revoked: &revoked,
        stored: &stored,
        held: &held,
        granted: &granted,
        now_ms,
        horizon_ms: u64::from(st.horizon_days()) * MS_PER_DAY,
    });
    standing.newest = newest;
    match computed {
        Ok((frontier, lowest)) => {
            standing.holdback = Some(Holdback::Floor(lowest));
            let old = standing.frontier.as_ref().map(|f| f.below);
            if old.is_none_or(|below| frontier.below >= below) {
                if standing.frontier.as_ref() != Some(&frontier) {
                    t.meta.insert(META_FRONTIER, &encode(&frontier)[..])?;
                }
                standing.frontier = Some(frontier);
            }
        }
        Err(blocker) => standing.holdback = Some(Holdback::Blocked(blocker)),
    }
    standing.behind = match &standing.frontier {
        Some(f) => own
            .vector
            .iter()
            .map(|(a, len)| len.saturating_sub(f.vector.get(a).copied().unwrap_or(0)))
            .sum(),
        None => own.vector.values().sum(),
    };
    if let Some(f) = standing.frontier.as_ref() {
        let settled = settled(t, &own, f)?;
        let purged = st.purge(f.below, settled);
        standing.sweeping = purged.behind;
        if purged != Purged::default() {
            tracing::debug!(below = ?f.below, ?settled, ?purged, "purged the projection");
        }
    }
    Ok(own)
}

/// The stamp before which every op applied here was applied by every counted member too
/// (what `FsState::purge` sweeps below): the frontier's `below`, capped, for each author
/// this node holds more of than the frontier's vector covers, at the stamp of the last
/// intention covered (the ops of its next ones are stamped after it), or at zero when
/// none is.
fn settled(t: &Tables<'_>, own: &Attestation, f: &Frontier) -> Result<Hlc, StoreError> {
    let mut settled = f.below;
    for (author, &len) in &own.vector {
        let covered = f.vector.get(author).copied().unwrap_or(0);
        if len <= covered {
            continue;
        }
        let last = match covered {
            0 => None,
            seq => t
                .chain
                .range((author.0, seq, [0u8; 32])..=(author.0, seq, [0xffu8; 32]))?
                .next()
                .transpose()?
                .map(|(k, _)| Hash(k.value().2)),
        };
        let cap = match last {
            Some(hash) => t.hlc_of(&hash)?.unwrap_or(Hlc::ZERO),
            None => Hlc::ZERO,
        };
        settled = settled.min(cap);
    }
    Ok(settled)
}

/// Records `floor` as handed out in an attestation (in the durable commit that answers
/// it): the clock observes the greatest at open, so it never stamps below a floor this
/// node promised, even if a crash or a revocation took the head it came from.
pub(crate) fn handed_out(t: &mut Tables<'_>, floor: Hlc) -> Result<(), StoreError> {
    let old = match t.meta.get(META_ATTESTED)? {
        Some(v) => hlc_from_bytes(v.value())?,
        None => Hlc::ZERO,
    };
    if floor > old {
        t.meta.insert(META_ATTESTED, &hlc_bytes(floor)[..])?;
    }
    Ok(())
}
