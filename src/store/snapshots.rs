//! Snapshots: labelled, read-only trees of a store as of a frontier of its DAG.
//!
//! A `Snapshot` op is sealed alone in its intention, after every op pushed before it
//! (`apply::seal_local`; `Intention::decode` refuses one that shares its intention). Its
//! tree is the projection of that intention's causal past: the applied intentions its
//! `prev` and deps reach, transitively, replayed in witness order into a fresh state.
//! Labels are last-writer-wins registers of the projection (`FsState::snapshots`), so a
//! later `Snapshot` or `DropSnapshot` of a label wins. A replica holding the same
//! intentions builds the same state, so the tree is byte-identical on every replica. A
//! built state is cached ([`CACHED`] of them), keyed by its op and by the count of
//! refused intentions, since a revocation cut may void part of the past. Content the
//! current versions of a snapshot need is kept by collection (`retention`) until the
//! snapshot is dropped.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable};

use crate::fs::op::OpBody;
use crate::fs::{FsError, FsState};
use crate::ids::{Hash, OpId};
use crate::intention::{stored, Stored};
use crate::store::error::StoreError;
use crate::store::tables::{index_key, INDEX, INTENTIONS, REFUSED, WITNESS};
use crate::store::Store;

/// Built snapshot states kept in memory, most recently used last.
pub(crate) const CACHED: usize = 2;

/// Built snapshot states: (the `Snapshot` op, refused count when built, the state).
pub(crate) type SnapshotCache = Vec<(OpId, usize, Arc<FsState>)>;

impl Store {
    /// Records the snapshot `label` of everything this node holds now (a signed op,
    /// replicated like any edit) and returns once it is durable. A snapshot already
    /// named `label` is replaced.
    pub fn snapshot(&self, label: &str) -> Result<(), FsError> {
        self.write(|tx| {
            tx.push(OpBody::Snapshot {
                label: label.to_string(),
            })?;
            Ok(())
        })?;
        self.flush().map_err(|e| FsError::Io(e.to_string()))
    }

    /// Drops the snapshot `label` (a signed op) and returns once it is durable; its
    /// content is collected by the next `gc` unless something else needs it.
    pub fn drop_snapshot(&self, label: &str) -> Result<(), FsError> {
        self.write(|tx| {
            if tx.state().snapshot(label).is_none() {
                return Err(FsError::NotFound);
            }
            tx.push(OpBody::DropSnapshot {
                label: label.to_string(),
            })?;
            Ok(())
        })?;
        self.flush().map_err(|e| FsError::Io(e.to_string()))
    }

    /// The tree of the snapshot recorded by the `Snapshot` op `at` (see the module doc).
    pub fn snapshot_state(&self, at: OpId) -> Result<Arc<FsState>, StoreError> {
        let shared = &self.handle.shared;
        let refused = shared.refused.lock().len();
        {
            let mut cache = shared.snapshots.lock();
            if let Some(i) = cache
                .iter()
                .position(|(op, r, _)| *op == at && *r == refused)
            {
                let hit = cache.remove(i);
                let state = hit.2.clone();
                cache.push(hit);
                return Ok(state);
            }
        }
        let state = Arc::new(self.build_snapshot(at)?);
        let mut cache = shared.snapshots.lock();
        cache.retain(|(op, _, _)| *op != at);
        if cache.len() == CACHED {
            cache.remove(0);
        }
        cache.push((at, refused, state.clone()));
        Ok(state)
    }

    /// Replays the causal past of the intention holding the `Snapshot` op `at`.
    fn build_snapshot(&self, at: OpId) -> Result<FsState, StoreError> {
        let shared = &self.handle.shared;
        let txn = shared.index.db()?.begin_read()?;
        let intentions = txn.open_table(INTENTIONS)?;
        let refused = txn.open_table(REFUSED)?;
        let parse = |hash: &Hash| -> Result<Option<Stored>, StoreError> {
            Ok(match intentions.get(hash.0)? {
                Some(bytes) => stored(bytes.value()).ok(),
                None => None,
            })
        };
        // A voided intention is not replayed, but what it names is still in the past.
        let links = |hash: &Hash| -> Result<Vec<Hash>, StoreError> {
            let bytes = match intentions.get(hash.0)? {
                Some(b) => Some(b.value()),
                None => refused
                    .get(hash.0)?
                    .map(|b| Bytes::copy_from_slice(b.value())),
            };
            Ok(bytes
                .and_then(|b| stored(b).ok())
                .map(|i| i.prev.into_iter().chain(i.deps).collect())
                .unwrap_or_default())
        };
        // Alone in its intention, the op's clock is the intention's: its index rows.
        let mut holder = None;
        let index = txn.open_table(INDEX)?;
        let from = index_key(at.hlc, &Hash([0; 32]));
        let to = index_key(at.hlc, &Hash([0xff; 32]));
        for row in index.range(from..=to)? {
            let hash = Hash(row?.0.value()[8..].try_into().expect("40-byte key"));
            if let Some(i) = parse(&hash)? {
                let holds = i.author == at.author
                    && i.ops
                        .iter()
                        .any(|op| op.hlc == at.hlc && matches!(op.body, OpBody::Snapshot { .. }));
                if holds {
                    holder = Some(i);
                    break;
                }
            }
        }
        let holder = holder.ok_or(StoreError::NotSealed)?;
        let mut past: HashSet<Hash> = HashSet::new();
        let mut todo: Vec<Hash> = holder.prev.into_iter().chain(holder.deps).collect();
        while let Some(hash) = todo.pop() {
            if !past.insert(hash) {
                continue;
            }
            todo.extend(links(&hash)?);
        }
        let quarantined = shared.quarantined.lock().clone();
        let mut state = FsState::new();
        for row in txn.open_table(WITNESS)?.iter()? {
            let hash = Hash(row?.1.value().0);
            if !past.contains(&hash) || quarantined.contains(&hash) {
                continue;
            }
            // A voided intention's bytes are no longer stored: it is not replayed.
            if let Some(i) = parse(&hash)? {
                for op in &i.ops {
                    state.apply(i.author, op);
                }
            }
        }
        Ok(state)
    }
}
