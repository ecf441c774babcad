//! What must hold on every live member after a run: the tree digest, the cycle check,
//! the projection against a full replay of the witness log (a purge never changes the
//! projection), and the stability frontier covering everything once all attested.

use crate::fs::op::Kind;
use crate::fs::FsState;
use crate::ids::{FileId, Hash, OpId};
use crate::intention::Intention;
use crate::store::Store;

/// The tree digest of a projection: blake3 of its canonical dump (store name, members,
/// revocations, invites, and every visible path with kind, mode, owner, times and
/// content hashes). Replicas that applied the same set of ops have the same digest.
pub fn digest(state: &FsState) -> Hash {
    Hash::of(state.canonical_dump().as_bytes())
}

/// A directory whose chain of parents leads back to itself, if the tree has a cycle.
pub(crate) fn cycle(state: &FsState) -> Option<FileId> {
    let mut dirs: Vec<FileId> = Vec::new();
    state.files.each(|id, f| {
        if f.kind == Kind::Dir {
            dirs.push(*id);
        }
        true
    });
    let bound = state.tree.len() + 1;
    dirs.into_iter().find(|&dir| {
        let mut p = dir;
        for _ in 0..bound {
            match state.tree.entry(p) {
                Some(e) if p != OpId::ROOT => p = e.loc.parent,
                _ => return false,
            }
            if p == dir {
                return true;
            }
        }
        false
    })
}

/// The digest of a projection rebuilt by applying every intention of `store`'s witness
/// log in order, as a fresh open without a snapshot would (voided and refused
/// intentions left out).
pub(crate) fn replayed(store: &Store) -> Result<Hash, String> {
    store.flush().map_err(|e| e.to_string())?;
    let mut state = FsState::new();
    let mut from = 1;
    loop {
        let batch = store.witness(from, usize::MAX).map_err(|e| e.to_string())?;
        if batch.intentions.is_empty() {
            break;
        }
        for bytes in batch.intentions {
            let i = Intention::decode(bytes).map_err(|e| e.to_string())?;
            if store.is_refused(&i.hash) {
                continue;
            }
            for op in &i.ops {
                state.apply(i.author, op);
            }
        }
        from = batch.next;
    }
    Ok(digest(&state))
}

/// Whether `store`'s frontier covers every intention it applied (every member attested
/// after the last change).
pub(crate) fn frontier_covers(store: &Store) -> Result<(), String> {
    let own = store.attestation().map_err(|e| e.to_string())?;
    let standing = store.standing();
    let Some(f) = standing.frontier else {
        return Err(format!(
            "no frontier after quiescence (held by {:?})",
            standing.holdback
        ));
    };
    let purged = store.read(|st| st.purged_below());
    if purged != f.below {
        return Err(format!(
            "the projection is purged below {purged:?}, the frontier is at {:?}",
            f.below
        ));
    }
    if f.vector != own.vector {
        let short: Vec<String> = own
            .vector
            .iter()
            .filter(|(a, len)| f.vector.get(a) != Some(len))
            .map(|(a, len)| format!("{}: {} of {len}", a.short(), f.vector.get(a).unwrap_or(&0)))
            .collect();
        return Err(format!(
            "the frontier does not cover everything applied ({}; held by {:?})",
            short.join(", "),
            standing.holdback
        ));
    }
    Ok(())
}
