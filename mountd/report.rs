//! The control-protocol form of what a node holds: the answers to `status`, `history`,
//! `restore`, `conflicts`, `resolve` and `verify`. The node keeps the data; this module decides how the CLI sees it.

use std::path::Path;

use lattice_mount::proto::control::{
    ConflictEntry, ConflictsResponse, ContentSpace, DeletedEntry, FrontierStatus, HistoryEntry,
    HistoryResponse, LiveVersionEntry, ResolveRequest, ResolveResponse, RestoreRequest,
    RestoreResponse, SignedIntentionEntry, StatusResponse, StoreStatus, UnreadableStore,
    VerifiedIntention, VerifiedOp, VerifiedVersion, VerifyResponse, VersionEntry,
};
use lattice_mount::{
    signed_parts, signing_message, store_name, Authority, Blocker, Content, Hash, HistoryOp,
    Holdback, Keep, Kind, Node, NodeError, OpBody, Passthrough, Pick, Role, Setting, Standing,
    Version, VersionOp, VersionState,
};

/// Where a store's stability frontier stands, and who holds it back.
fn frontier_status(s: &Standing) -> FrontierStatus {
    let reason = match s.holdback {
        Some(Holdback::Floor(_)) => "lowest-floor",
        Some(Holdback::Blocked(Blocker::NoAttestation(_))) => "never-attested",
        Some(Holdback::Blocked(Blocker::Behind(_))) => "ahead",
        None => "",
    };
    FrontierStatus {
        known: s.frontier.is_some(),
        behind_ms: s
            .frontier
            .as_ref()
            .map_or(0, |f| s.newest.wall_ms.saturating_sub(f.below.wall_ms)),
        behind_intentions: s.behind,
        held_by: s.holdback.map(|h| h.key().to_hex()).unwrap_or_default(),
        reason: reason.into(),
    }
}

/// The node's status with `mountpoint` and its `passthrough` mode; per-store network
/// fields are left to the caller.
pub fn status(node: &Node, mountpoint: &Path, passthrough: Passthrough) -> StatusResponse {
    let stores = node
        .stores()
        .iter()
        .map(|s| {
            let stats = s.stats();
            let quarantined = s.quarantined();
            let (local_files, local_bytes) = node.local_usage(s.id());
            let space = node.space(s);
            StoreStatus {
                name: store_name(s),
                id: s.id().to_hex(),
                intentions: stats.intentions,
                floating: stats.floating,
                files: stats.fs.files,
                directories: stats.fs.dirs,
                bytes: stats.fs.bytes,
                conflicts: stats.fs.conflicts,
                equivocators: s
                    .equivocators()
                    .unwrap_or_else(|e| {
                        tracing::warn!("equivocators unavailable: {e}");
                        Vec::new()
                    })
                    .iter()
                    .map(|q| q.key.to_hex())
                    .collect(),
                quarantined: quarantined.len() as u64,
                quarantined_hashes: quarantined.iter().map(|h| h.to_hex()).collect(),
                frontier: Some(frontier_status(&s.standing())),
                retention_days: s.retention_days(),
                horizon_days: s.setting(Setting::Horizon),
                deleted: s.is_deleted(),
                local_files,
                local_bytes,
                ignore_problems: node.ignore_problems(s.id()),
                space: space.last.map(|(sp, age)| ContentSpace {
                    live_bytes: sp.live,
                    retained_bytes: sp.retained,
                    reclaimable_bytes: sp.reclaimable,
                    age_secs: age.as_secs(),
                    current: space.current,
                }),
                space_error: space.error.unwrap_or_default(),
                ..StoreStatus::default()
            }
        })
        .collect();
    let (blobs, blob_bytes) = node.cas().stats().unwrap_or_else(|e| {
        tracing::warn!("content store statistics unavailable: {e}");
        (0, 0)
    });
    StatusResponse {
        node_id: node.identity().public().to_hex(),
        display_name: node.display_name().to_string(),
        data_dir: node.data_dir().display().to_string(),
        mountpoint: mountpoint.display().to_string(),
        passthrough: passthrough.describe().into(),
        stores,
        blobs,
        blob_bytes,
        unreadable: node
            .unreadable()
            .iter()
            .map(|u| UnreadableStore {
                dir: u.dir.display().to_string(),
                error: u.error.to_string(),
            })
            .collect(),
    }
}

/// Newest versions one `history` answer carries: at about 300 bytes each, well inside
/// the 4 MiB control frame next to the op lines.
const MAX_VERSIONS_LISTED: usize = 2_000;
/// Deleted files one `history --deleted` answer carries, each with its last version:
/// at about 500 bytes each, well inside the 4 MiB control frame.
const MAX_DELETED_LISTED: usize = 5_000;

/// The history of the file at `path` (see [`Node::history`]), a line per op, and its
/// newest versions; with `deleted`, the deleted files under the directory at `path`
/// instead, each with its last version.
pub fn history(node: &Node, path: &str, deleted: bool) -> Result<HistoryResponse, NodeError> {
    if deleted {
        let all = node.deleted(path)?;
        let deleted = all
            .iter()
            .take(MAX_DELETED_LISTED)
            .map(|d| DeletedEntry {
                path: d.path.clone(),
                deleted_wall_ms: d.removed_by.hlc.wall_ms,
                deleted_by: d.removed_by.author.to_hex(),
                deleted_by_name: d.removed_by_name.clone(),
                versions: d.versions.last().map(version_entry).into_iter().collect(),
            })
            .collect();
        return Ok(HistoryResponse {
            deleted,
            omitted: all.len().saturating_sub(MAX_DELETED_LISTED) as u64,
            ..HistoryResponse::default()
        });
    }
    let versions = node.versions(path)?;
    let skip = versions.len().saturating_sub(MAX_VERSIONS_LISTED);
    let ops = node.history(path)?;
    let (signed, signed_omitted) = signed_entries(&ops);
    Ok(HistoryResponse {
        entries: ops.iter().map(history_entry).collect(),
        versions: versions[skip..].iter().map(version_entry).collect(),
        deleted: Vec::new(),
        omitted: skip as u64,
        signed,
        signed_omitted,
    })
}

/// Body bytes of the signed intentions one `history` answer carries: 1 MiB leaves the
/// 4 MiB control frame room for the op lines and versions.
const MAX_SIGNED_BYTES_LISTED: usize = 1024 * 1024;

/// The signed form of each intention `ops` name, newest first, up to
/// [`MAX_SIGNED_BYTES_LISTED`] of bodies; and how many were left out.
fn signed_entries(ops: &[HistoryOp]) -> (Vec<SignedIntentionEntry>, u64) {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut omitted = 0;
    let mut size = 0;
    for h in ops.iter().rev().filter(|h| seen.insert(h.intention)) {
        let Some((body, signature)) = signed_parts(&h.bytes) else {
            omitted += 1;
            continue;
        };
        if size + body.len() > MAX_SIGNED_BYTES_LISTED {
            omitted += 1;
            continue;
        }
        size += body.len();
        out.push(SignedIntentionEntry {
            hash: h.intention.to_hex(),
            author: h.author.to_hex(),
            prev: h.prev.map(|p| p.to_hex()).unwrap_or_default(),
            deps: h.deps.iter().map(Hash::to_hex).collect(),
            body,
            signature,
            signing_message: signing_message(&h.intention).into(),
        });
    }
    (out, omitted)
}

/// Ops one `verify` answer lists (every op is checked): at about 200 bytes each with
/// an intention of about 500, a few MiB at most, inside the 4 MiB control frame.
const MAX_VERIFIED_OPS_LISTED: usize = 4_000;

/// Who wrote each live version of the file at `path`, proven (see [`Node::verify`]).
/// Past [`MAX_VERIFIED_OPS_LISTED`] ops, each version lists its base and its newest
/// appends, and only the intentions those and the grants need; the rest are counted.
pub fn verify(node: &Node, path: &str) -> Result<VerifyResponse, NodeError> {
    let f = node.verify(path)?;
    let holders: std::collections::HashMap<_, _> = f.proof.holders.iter().copied().collect();
    let per_version = (MAX_VERIFIED_OPS_LISTED / f.versions.len().max(1)).max(2);
    let mut ops_omitted = 0;
    let mut listed_holders = std::collections::HashSet::new();
    let versions = f
        .versions
        .iter()
        .map(|v| {
            let skip = v.ops.len().saturating_sub(per_version);
            ops_omitted += skip;
            let listed = v.ops[..1].iter().chain(&v.ops[1 + skip..]);
            let ops = listed
                .map(|(op, kind)| {
                    let holder = holders.get(op).copied().flatten();
                    listed_holders.extend(holder);
                    VerifiedOp {
                        op: match kind {
                            VersionOp::Create => "create",
                            VersionOp::Write => "write",
                            VersionOp::Append => "append",
                        }
                        .to_string(),
                        intention: holder.as_ref().map(Hash::to_hex).unwrap_or_default(),
                        author: op.author.to_hex(),
                        hlc_wall_ms: op.hlc.wall_ms,
                    }
                })
                .collect();
            VerifiedVersion {
                version: v.version.id.to_hex(),
                winner: v.version.winner,
                size: v.version.size,
                shown: v.version.shown.clone(),
                ops,
            }
        })
        .collect();
    // Holders of ops left out are left out too; grants and the genesis never are.
    let content: std::collections::HashSet<Hash> = holders.values().flatten().copied().collect();
    let shown = |h: &Hash| !content.contains(h) || listed_holders.contains(h);
    let intentions_omitted = f
        .proof
        .intentions
        .iter()
        .filter(|i| !shown(&i.hash))
        .count();
    let name = |key| f.names.get(key).cloned().unwrap_or_default();
    let intentions = f
        .proof
        .intentions
        .iter()
        .filter(|i| shown(&i.hash))
        .map(|i| {
            let (authority, granted_by) = match &i.authority {
                None => (String::new(), String::new()),
                Some(Authority::Genesis) => ("genesis".to_string(), String::new()),
                Some(Authority::Granted { role, by, .. }) => {
                    (role_name(*role).to_string(), by.to_hex())
                }
            };
            VerifiedIntention {
                hash: i.hash.to_hex(),
                author: i.author.to_hex(),
                author_name: name(&i.author),
                seq: i.seq,
                hlc_wall_ms: i.hlc.wall_ms,
                hlc_counter: i.hlc.counter,
                prev: i.prev.map(|p| p.to_hex()).unwrap_or_default(),
                deps: i.deps.iter().map(Hash::to_hex).collect(),
                links_held: i.links_held as u32,
                authority,
                granted_by,
            }
        })
        .collect();
    Ok(VerifyResponse {
        path: f.path.clone(),
        founder: f.proof.founder.to_hex(),
        founder_name: name(&f.proof.founder),
        genesis: f.proof.genesis.map(|g| g.to_hex()).unwrap_or_default(),
        versions,
        intentions,
        failures: f.proof.failures.iter().map(|e| e.to_string()).collect(),
        purged_below_ms: f.proof.purged_below.map(|b| b.wall_ms),
        ops_omitted: ops_omitted as u64,
        intentions_omitted: intentions_omitted as u64,
    })
}

/// Restores a version as `r` asks (see [`Node::restore`]).
pub fn restore(node: &Node, r: &RestoreRequest) -> Result<RestoreResponse, NodeError> {
    let pick = match (&r.at_ms, r.version.as_str()) {
        (Some(at), _) => Pick::At(*at),
        (None, "") => Pick::Default,
        (None, v) => Pick::Version(v.to_string()),
    };
    let to = (!r.to.is_empty()).then_some(r.to.as_str());
    let done = node.restore(&r.path, &pick, to)?;
    Ok(RestoreResponse {
        path: done.path,
        version: done.version.to_hex(),
        size: done.size,
        created: done.created,
    })
}

/// Conflicted files one `conflicts` answer carries: at about 600 bytes each (two
/// versions), well inside the 4 MiB control frame.
const MAX_CONFLICTS_LISTED: usize = 5_000;

/// The conflicted files of the store named `store` (every store when empty).
pub fn conflicts(node: &Node, store: &str) -> Result<ConflictsResponse, NodeError> {
    let all = node.conflicts((!store.is_empty()).then_some(store))?;
    let conflicts = all
        .iter()
        .take(MAX_CONFLICTS_LISTED)
        .map(|c| ConflictEntry {
            path: c.path.clone(),
            versions: c
                .versions
                .iter()
                .map(|v| LiveVersionEntry {
                    author: v.author().to_hex(),
                    author_name: v.author_name.clone(),
                    hlc_wall_ms: v.hlc().wall_ms,
                    size: v.size,
                    version: v.id.to_hex(),
                    winner: v.winner,
                    shown: v.shown.clone(),
                })
                .collect(),
        })
        .collect();
    Ok(ConflictsResponse {
        conflicts,
        omitted: all.len().saturating_sub(MAX_CONFLICTS_LISTED) as u64,
    })
}

/// Resolves a conflict as `r` asks (see [`Node::resolve`]).
pub fn resolve(node: &Node, r: &ResolveRequest) -> Result<ResolveResponse, NodeError> {
    let keep = match r.keep.as_str() {
        "mine" => Keep::Mine,
        "theirs" => Keep::Theirs,
        "both" => Keep::Both,
        version => Keep::Version(version.to_string()),
    };
    let done = node.resolve(&r.path, &keep)?;
    Ok(ResolveResponse {
        path: done.path,
        kept: done.kept.to_hex(),
        copies: done.copies,
        dismissed: done.dismissed as u64,
    })
}

fn version_entry(v: &Version) -> VersionEntry {
    VersionEntry {
        intention: v.intention.to_hex(),
        author: v.author().to_hex(),
        author_name: v.author_name.clone(),
        hlc_wall_ms: v.hlc().wall_ms,
        hlc_counter: v.hlc().counter,
        size: v.size,
        content: match v.pieces.as_slice() {
            [] | [Content::Inline(_)] => "inline".to_string(),
            [Content::Manifest { .. }] => "manifest".to_string(),
            many => format!("{} pieces", many.len()),
        },
        version: v.id.to_hex(),
        retained: v.retained,
        state: match v.state {
            VersionState::Current => "current",
            VersionState::Conflict => "conflict",
            VersionState::Past => "past",
        }
        .to_string(),
        local: v.local,
    }
}

fn history_entry(h: &HistoryOp) -> HistoryEntry {
    HistoryEntry {
        intention: h.intention.to_hex(),
        author: h.author.to_hex(),
        author_name: h.author_name.clone(),
        hlc_wall_ms: h.op.hlc.wall_ms,
        hlc_counter: h.op.hlc.counter,
        op: describe(&h.op.body),
    }
}

/// One line describing an op for `history`.
fn describe(body: &OpBody) -> String {
    match body {
        OpBody::Create(c) => match (c.kind, &c.content) {
            (Kind::File, content) => {
                format!("create file {:?} ({} bytes)", c.name, content.len())
            }
            (Kind::Symlink, Content::Inline(target)) => format!(
                "create symlink {:?} -> {:?}",
                c.name,
                String::from_utf8_lossy(target)
            ),
            (kind, _) => format!("create {} {:?}", kind_name(kind), c.name),
        },
        OpBody::Link { name, .. } => format!("link as {name:?}"),
        OpBody::Move { name, .. } => format!("move to {name:?}"),
        OpBody::Remove { .. } => "remove".to_string(),
        OpBody::Write { content, .. } => format!("write {} bytes", content.len()),
        OpBody::Append { data, .. } => format!("append {} bytes", data.len()),
        OpBody::Dismiss { supersedes, .. } => {
            format!("dismiss {} conflict copies", supersedes.len())
        }
        OpBody::SetMeta(m) => {
            let mut changes = Vec::new();
            if let Some(mode) = m.mode {
                changes.push(format!("mode {mode:04o}"));
            }
            if m.uid.is_some() || m.gid.is_some() {
                changes.push("owner".to_string());
            }
            if m.mtime_ns.is_some() || m.atime_ns.is_some() {
                changes.push("times".to_string());
            }
            if !m.xattr_set.is_empty() || !m.xattr_remove.is_empty() {
                changes.push(format!(
                    "{} xattrs",
                    m.xattr_set.len() + m.xattr_remove.len()
                ));
            }
            format!("set {}", changes.join(", "))
        }
        OpBody::SetStoreName(name) => format!("name store {name:?}"),
        OpBody::Snapshot { label } => format!("record snapshot {label:?}"),
        OpBody::DropSnapshot { label } => format!("drop snapshot {label:?}"),
        OpBody::SetMember {
            key,
            role,
            display_name,
            ..
        } => format!(
            "add member {} ({display_name:?}) as {}",
            key.short(),
            role_name(*role)
        ),
        OpBody::RevokeMember { key, .. } => format!("revoke member {}", key.short()),
        OpBody::Invite { role, .. } => format!("invite a {}", role_name(*role)),
        OpBody::RevokeInvite { .. } => "withdraw an invite".to_string(),
        OpBody::SetRetention { days } => format!("keep old versions {days} days"),
        OpBody::SetHorizon { days } => format!("wait {days} days for a silent member"),
        OpBody::Leave { upto } => format!("leave the store after {upto} intentions"),
        OpBody::DeleteStore => "delete the store for every member".to_string(),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::File => "file",
        Kind::Dir => "directory",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
        Kind::CharDev => "character device",
        Kind::BlockDev => "block device",
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Writer => "writer",
        Role::Reader => "reader",
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lattice_mount::{hex, OpId};

    use super::*;

    /// A runtime (kept alive for the content store) and a node opened on `dir`.
    fn open(dir: &Path) -> (tokio::runtime::Runtime, Node) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let node = Node::open(dir, Some("laptop"), rt.handle().clone()).unwrap();
        (rt, node)
    }

    #[test]
    fn status_names_the_node_and_lists_its_stores_sorted_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path());
        node.create_store("photos").unwrap();
        let docs = node.create_store("docs").unwrap().id();
        let status = status(&node, Path::new("/mnt/lattice"), Passthrough::Disabled);
        assert_eq!(status.node_id, node.identity().public().to_hex());
        assert_eq!(status.display_name, "laptop");
        assert_eq!(status.mountpoint, "/mnt/lattice");
        assert_eq!(status.stores.len(), 2);
        assert_eq!(status.stores[0].name, "docs");
        assert_eq!(status.stores[0].id, docs.to_hex());
        assert!(status.unreadable.is_empty());
        node.shutdown().unwrap();
    }

    #[test]
    fn an_unreadable_store_is_reported_in_status_with_its_dir_and_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path());
        let broken = node.create_store("photos").unwrap();
        let dir = node.store_dir(broken.id());
        node.shutdown().unwrap();
        drop(node);
        std::fs::write(dir.join(lattice_mount::DB_FILE), b"not a redb file").unwrap();
        let (_rt2, node) = open(tmp.path());
        let status = status(&node, Path::new("/mnt/lattice"), Passthrough::Disabled);
        assert!(status.stores.is_empty());
        assert_eq!(status.unreadable.len(), 1);
        assert_eq!(status.unreadable[0].dir, dir.display().to_string());
        assert!(!status.unreadable[0].error.is_empty());
        node.shutdown().unwrap();
    }

    /// Creates the store `docs` holding `a.txt` ("hi"), durably.
    fn docs_with_a_file(node: &Node) {
        let store = node.create_store("docs").unwrap();
        store
            .write(|tx| {
                let body = tx.state().plan_create(
                    OpId::ROOT,
                    "a.txt",
                    Kind::File,
                    0o644,
                    0,
                    0,
                    0,
                    Content::Inline(Bytes::from_static(b"hi")),
                    0,
                )?;
                tx.push(body)?;
                Ok(())
            })
            .unwrap();
        store.flush().unwrap();
    }

    #[test]
    fn history_describes_the_creation_of_a_file_by_this_node() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path());
        docs_with_a_file(&node);
        let h = history(&node, "docs/a.txt", false).unwrap();
        assert_eq!(h.versions.len(), 1);
        assert_eq!(
            (h.versions[0].size, h.versions[0].state.as_str()),
            (2, "current")
        );
        assert_eq!(h.versions[0].content, "inline");
        let entries = h.entries;
        let create = entries
            .iter()
            .find(|e| e.op.starts_with("create file"))
            .unwrap_or_else(|| panic!("no create in {entries:?}"));
        assert_eq!(create.op, "create file \"a.txt\" (2 bytes)");
        assert_eq!(create.author, node.identity().public().to_hex());
        assert_eq!(create.author_name, "laptop");
        assert_eq!(create.intention.len(), 64);
        assert!(create.hlc_wall_ms > 0);
        node.shutdown().unwrap();
    }

    /// The hex values of `"key":"..."` in `json`, decoded, in order.
    fn hex_values(json: &str, key: &str) -> Vec<Vec<u8>> {
        let pat = format!("\"{key}\":\"");
        json.match_indices(&pat)
            .map(|(i, _)| {
                let rest = &json[i + pat.len()..];
                lattice_mount::unhex(&rest[..rest.find('"').unwrap()]).unwrap()
            })
            .collect()
    }

    #[test]
    fn history_json_carries_signatures_an_independent_ed25519_check_accepts_and_verify_proves_them()
    {
        use ed25519_dalek::{Signature, Verifier, VerifyingKey};
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path());
        docs_with_a_file(&node);
        let h = history(&node, "docs/a.txt", false).unwrap();
        let json = crate::output::history_json("/docs/a.txt", &h);
        let json = &json[json.find("\"intentions\":").unwrap()..];
        let hashes = hex_values(json, "hash");
        let bodies = hex_values(json, "body");
        let messages = hex_values(json, "signing_message");
        let signatures = hex_values(json, "signature");
        let authors = hex_values(json, "author");
        assert_eq!(hashes.len(), 1, "{json}");
        for k in 0..hashes.len() {
            assert_eq!(blake3::hash(&bodies[k]).as_bytes()[..], hashes[k][..]);
            assert_eq!(
                messages[k],
                [&b"lattice-mount intention v1\0"[..], &hashes[k]].concat()
            );
            let key = VerifyingKey::from_bytes(&authors[k].clone().try_into().unwrap()).unwrap();
            let signature = Signature::from_slice(&signatures[k]).unwrap();
            key.verify(&messages[k], &signature).unwrap();
            let mut forged = messages[k].clone();
            *forged.last_mut().unwrap() ^= 1;
            assert!(key.verify(&forged, &signature).is_err());
        }
        let v = verify(&node, "docs/a.txt").unwrap();
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        assert_eq!(v.versions.len(), 1);
        assert_eq!(v.versions[0].ops[0].op, "create");
        assert_eq!(v.versions[0].ops[0].intention, hex(&hashes[0]));
        assert!(v.intentions.iter().any(|i| i.authority == "genesis"));
        assert_eq!(v.genesis.len(), 64);
        let human = crate::output::verify_human(&v);
        assert!(
            human.starts_with("docs/a.txt: verified: 1 live version(s)"),
            "{human}"
        );
        assert!(human.contains("verified back to the genesis"), "{human}");
        node.shutdown().unwrap();
    }

    #[test]
    fn verify_checks_every_append_of_a_long_log_and_lists_the_base_and_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, node) = open(tmp.path());
        let store = node.create_store("docs").unwrap();
        let file = store
            .write(|tx| {
                let empty = Content::Inline(Bytes::new());
                let body = tx.state().plan_create(
                    OpId::ROOT,
                    "log",
                    Kind::File,
                    0o644,
                    0,
                    0,
                    0,
                    empty,
                    0,
                )?;
                Ok(tx.push(body)?)
            })
            .unwrap();
        let appends = MAX_VERIFIED_OPS_LISTED + 100;
        store
            .write(|tx| {
                for k in 0..appends {
                    let line = Content::Inline(Bytes::from(format!("{k}\n")));
                    let body = tx.state().plan_append(file, line, 0)?;
                    tx.push(body)?;
                }
                Ok(())
            })
            .unwrap();
        store.flush().unwrap();
        let v = verify(&node, "docs/log").unwrap();
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        let ops = &v.versions[0].ops;
        assert_eq!(ops.len(), MAX_VERIFIED_OPS_LISTED);
        assert_eq!(v.ops_omitted, 101);
        assert_eq!(ops[0].op, "create");
        assert!(ops[1..]
            .iter()
            .all(|o| o.op == "append" && o.intention.len() == 64));
        // The newest appends, from the intentions on disk.
        let mut appended: Vec<_> = store
            .history(file)
            .unwrap()
            .iter()
            .flat_map(|i| &i.ops)
            .filter(|op| matches!(op.body, OpBody::Append { .. }))
            .map(|op| op.hlc)
            .collect();
        appended.sort();
        let appended: Vec<u64> = appended.iter().map(|hlc| hlc.wall_ms).collect();
        let listed: Vec<u64> = ops[1..].iter().map(|o| o.hlc_wall_ms).collect();
        assert_eq!(listed, appended[appended.len() - listed.len()..]);
        node.shutdown().unwrap();
    }

    #[test]
    fn op_descriptions_are_single_lines() {
        let bodies = [
            OpBody::Move {
                entry: OpId::ROOT,
                parent: OpId::ROOT,
                name: "new\nline".into(),
            },
            OpBody::SetMeta(lattice_mount::SetMeta {
                mode: Some(0o640),
                mtime_ns: Some(1),
                ..Default::default()
            }),
            OpBody::Write {
                file: OpId::ROOT,
                supersedes: vec![],
                content: Content::Inline(Bytes::from_static(b"abc")),
                mtime_ns: 0,
            },
        ];
        let lines: Vec<String> = bodies.iter().map(describe).collect();
        assert_eq!(
            lines,
            [
                "move to \"new\\nline\"",
                "set mode 0640, times",
                "write 3 bytes"
            ]
        );
    }
}
