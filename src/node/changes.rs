//! Changes as they apply, for `watch`: every op of every intention a store applies,
//! local or received, with the path it touched, the author and the intention.
//!
//! A watcher follows the store's witness log (the order this node applied intentions
//! in, local ones once durable): it starts at the log's end ([`Node::watch_start`]) and
//! reads on from there whenever the store announces a change ([`Node::changes`]). The
//! log is on disk, so a watcher that wakes late, or whose event receiver lagged, misses
//! nothing. Paths are derived when the change is read (`node::paths`): a created, linked
//! or moved name is its directory's current path and the op's name; a written file is its
//! current path; a removed entry, a moved entry's old place, and a file that is gone by
//! then are read from the entry's history (its last place before the op). Ops of one
//! kind on one path in a row within one intention are one change.

use crate::fs::op::{Op, OpBody};
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{FileId, Hash, OpId};
use crate::intention::{stored, Intention, Stored};
use crate::store::Store;

use super::paths::{dir_names, place_before, Names};
use super::restore::{author_name, shown_path};
use super::{store_name, Node, NodeError};

/// Bytes of intentions one [`Node::changes`] call reads from the witness log: a few
/// hundred typical intentions, so that changes are reported while a large batch applies.
const MAX_WATCH_READ_BYTES: usize = 1024 * 1024;

/// One op as it applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The path it touched, relative to the mount root (`<store>/a/b`); the store's name
    /// for store-wide ops (members, invites, settings).
    pub path: String,
    /// For a move, the path before it.
    pub old_path: Option<String>,
    /// What the op did: `create`, `link`, `move`, `remove`, `write`, `append`, `dismiss`,
    /// `meta`, `snapshot`, `drop-snapshot`, `store-name`, `member`, `revoke-member`,
    /// `invite`, `revoke-invite`, `retention`, `horizon`, `leave` or `delete-store`.
    pub op: &'static str,
    /// The intention's author.
    pub author: PublicKey,
    /// The author's display name in the store; empty when it is not a member.
    pub author_name: String,
    /// The intention that carried the op.
    pub intention: Hash,
    /// The op's clock.
    pub hlc: Hlc,
}

impl Node {
    /// Where a watcher of `store` starts: just past the end of its witness log.
    pub fn watch_start(&self, store: &Store) -> Result<u64, NodeError> {
        let end = store
            .witness(u64::MAX, 0)
            .map_err(|source| NodeError::Store {
                store: store_name(store),
                source,
            })?;
        Ok(end.len + 1)
    }

    /// The changes of the intentions `store` applied from witness seq `from` on (up to
    /// [`MAX_WATCH_READ_BYTES`] of them), and the seq to read from next: equal to `from`
    /// when there was nothing new.
    pub fn changes(&self, store: &Store, from: u64) -> Result<(Vec<Change>, u64), NodeError> {
        let name = store_name(store);
        let batch = store
            .witness(from, MAX_WATCH_READ_BYTES)
            .map_err(|source| NodeError::Store {
                store: name.clone(),
                source,
            })?;
        let mut names = Names::default();
        let mut out = Vec::new();
        for bytes in batch.intentions {
            let Some((_, hash)) = Intention::peek(&bytes) else {
                continue;
            };
            let Ok(Stored { author, ops, .. }) = stored(bytes) else {
                tracing::warn!("watch: stored intention {hash} does not decode; skipped");
                continue;
            };
            let who = store.read(|s| author_name(s, &author));
            for op in &ops {
                let (path, old_path) = paths(store, &name, &mut names, author, op);
                let op_kind = kind(&op.body);
                // Ops of one kind on one path in a row (a truncate, then the write that
                // follows it) are one change of the intention: shown once, at the last.
                if let Some(last) = out.last_mut().filter(|c: &&mut Change| {
                    c.intention == hash
                        && c.op == op_kind
                        && c.path == path
                        && c.old_path == old_path
                }) {
                    last.hlc = op.hlc;
                    continue;
                }
                out.push(Change {
                    path,
                    old_path,
                    op: op_kind,
                    author,
                    author_name: who.clone(),
                    intention: hash,
                    hlc: op.hlc,
                });
            }
        }
        Ok((out, batch.next))
    }
}

/// The path `op` (by `author`) touched and, for a move, the old path.
fn paths(
    store: &Store,
    store_name: &str,
    names: &mut Names,
    author: PublicKey,
    op: &Op,
) -> (String, Option<String>) {
    let id = op.id(author);
    let at = |names: &mut Names, dir: FileId, name: &str| -> String {
        match dir_names(store, names, dir, id) {
            Some(mut path) => {
                path.push(name.to_string());
                shown_path(store_name, &path)
            }
            None => unknown(store_name, name),
        }
    };
    let before = |names: &mut Names, entry: OpId| match place_before(store, entry, id) {
        Some((dir, name)) => at(names, dir, &name),
        None => format!("{store_name}/?"),
    };
    match &op.body {
        OpBody::Create(c) => (at(names, c.parent, &c.name), None),
        OpBody::Link { parent, name, .. } => (at(names, *parent, name), None),
        OpBody::Move {
            entry,
            parent,
            name,
        } => (at(names, *parent, name), Some(before(names, *entry))),
        OpBody::Remove { entry, .. } => (before(names, *entry), None),
        OpBody::Write { file, .. }
        | OpBody::Append { file, .. }
        | OpBody::Dismiss { file, .. }
        | OpBody::SetMeta(crate::fs::op::SetMeta { file, .. }) => {
            match store.read(|s| names.of(s, *file)) {
                Some(path) => (shown_path(store_name, &path), None),
                None => (before(names, *file), None),
            }
        }
        OpBody::Snapshot { label } | OpBody::DropSnapshot { label } => (
            format!("{store_name}/{}/{label}", crate::fs::SNAPSHOTS_DIR),
            None,
        ),
        OpBody::SetStoreName(_)
        | OpBody::SetMember { .. }
        | OpBody::RevokeMember { .. }
        | OpBody::Invite { .. }
        | OpBody::RevokeInvite { .. }
        | OpBody::SetRetention { .. }
        | OpBody::SetHorizon { .. }
        | OpBody::Leave { .. }
        | OpBody::DeleteStore => (store_name.to_string(), None),
    }
}

/// A path whose directory is not known any more: the store, `?`, and the last name
/// (only the store and `?` when the name is not known either).
fn unknown(store_name: &str, name: &str) -> String {
    format!("{store_name}/?/{name}")
}

/// The one-word kind of an op.
fn kind(body: &OpBody) -> &'static str {
    match body {
        OpBody::Create(_) => "create",
        OpBody::Link { .. } => "link",
        OpBody::Move { .. } => "move",
        OpBody::Remove { .. } => "remove",
        OpBody::Write { .. } => "write",
        OpBody::Append { .. } => "append",
        OpBody::Dismiss { .. } => "dismiss",
        OpBody::SetMeta(_) => "meta",
        OpBody::Snapshot { .. } => "snapshot",
        OpBody::DropSnapshot { .. } => "drop-snapshot",
        OpBody::SetStoreName(_) => "store-name",
        OpBody::SetMember { .. } => "member",
        OpBody::RevokeMember { .. } => "revoke-member",
        OpBody::Invite { .. } => "invite",
        OpBody::RevokeInvite { .. } => "revoke-invite",
        OpBody::SetRetention { .. } => "retention",
        OpBody::SetHorizon { .. } => "horizon",
        OpBody::Leave { .. } => "leave",
        OpBody::DeleteStore => "delete-store",
    }
}
