//! What must hold on every live member after a run: the tree digest and the cycle check.

use crate::fs::op::Kind;
use crate::fs::FsState;
use crate::ids::{FileId, Hash, OpId};

/// The tree digest of a projection: blake3 of its canonical dump (store name, members,
/// revocations, invites, and every visible path with kind, mode, owner, times and
/// content hashes). Replicas that applied the same set of ops have the same digest.
pub fn digest(state: &FsState) -> Hash {
    Hash::of(state.canonical_dump().as_bytes())
}

/// A directory whose chain of parents leads back to itself, if the tree has a cycle.
pub(crate) fn cycle(state: &FsState) -> Option<FileId> {
    let mut dirs: Vec<FileId> = state
        .files
        .iter()
        .filter(|(_, f)| f.kind == Kind::Dir)
        .map(|(id, _)| *id)
        .collect();
    dirs.sort();
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
