//! `verify`: who wrote which live version of a file, proven from the local store. Each
//! live version (the one the file's name shows and each conflict copy) is made by its
//! group's base op (the file's Create or a Write) and the group's appends; the store
//! re-checks the intentions holding those ops and the grants behind their authors
//! (`Store::verify`).

use std::collections::BTreeMap;

use crate::fs::op::Kind;
use crate::fs::Found;
use crate::identity::PublicKey;
use crate::ids::OpId;
use crate::store::Proof;

use super::conflicts::live_versions;
use super::paths::Names;
use super::restore::author_name;
use super::{LiveVersion, Node, NodeError, RestoreError};

/// Which op made (part of) a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionOp {
    /// The file's Create: the base of its first version.
    Create,
    /// A Write: the base of a later version.
    Write,
    /// An Append to the version's group.
    Append,
}

/// A live version of a file with the ops that made it, base first.
#[derive(Clone, Debug)]
pub struct ProvenVersion {
    /// The version.
    pub version: LiveVersion,
    /// Its base op, then its appends in op order.
    pub ops: Vec<(OpId, VersionOp)>,
}

/// What `verify` found for one file.
#[derive(Debug)]
pub struct FileProof {
    /// The file, relative to the mount root.
    pub path: String,
    /// Its live versions, the winner first.
    pub versions: Vec<ProvenVersion>,
    /// The store's re-check of the intentions behind them.
    pub proof: Proof,
    /// The display name of each author of a checked intention; empty for a non-member.
    pub names: BTreeMap<PublicKey, String>,
}

impl Node {
    /// Proves who wrote each live version of the regular file at `path` (relative to
    /// the mount root), from this node's store only (see the module doc).
    pub fn verify(&self, path: &str) -> Result<FileProof, NodeError> {
        let r = self.resolve_any(path)?;
        let not_a_file = || NodeError::from(RestoreError::NotAFile(r.shown.clone()));
        let Found::Live(file) = r.found else {
            return Err(not_a_file());
        };
        let (path, versions) = r
            .store
            .read(|s| {
                let f = s.file(file).filter(|f| f.kind == Kind::File)?;
                let (path, versions) =
                    live_versions(s, &mut Names::default(), &r.store_name, file)?;
                let versions: Vec<ProvenVersion> = versions
                    .into_iter()
                    .map(|version| {
                        let base = match version.group == file {
                            true => VersionOp::Create,
                            false => VersionOp::Write,
                        };
                        let appends = f.groups.get(&version.group).into_iter();
                        let appends = appends.flat_map(|g| g.appends.keys());
                        let ops = std::iter::once((version.group, base))
                            .chain(appends.map(|id| (*id, VersionOp::Append)))
                            .collect();
                        ProvenVersion { version, ops }
                    })
                    .collect();
                Some((path, versions))
            })
            .ok_or_else(not_a_file)?;
        let ops = versions
            .iter()
            .flat_map(|v| v.ops.iter().map(|(id, _)| *id))
            .collect();
        let proof = r.store.verify(ops).map_err(|source| NodeError::Store {
            store: r.store_name.clone(),
            source,
        })?;
        let names = r.store.read(|s| {
            proof
                .intentions
                .iter()
                .map(|i| (i.author, author_name(s, &i.author)))
                .collect()
        });
        Ok(FileProof {
            path,
            versions,
            proof,
            names,
        })
    }
}
