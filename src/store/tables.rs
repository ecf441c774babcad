//! The redb tables of one store and the small typed helpers over them.
//!
//! Every key is fixed-size bytes or a tuple of them, so byte order is the order that
//! range scans rely on. See the module doc of `store` for what each table means.
//!
//! Every table name but `meta` ends in `.vN`, N the schema version (see `schema`):
//! each migration step renames every table to its version (moving the rows of a table
//! whose layout changes), so no build ever reads a table under a layout it was not
//! written with; all tables are `.v4` today. `meta` keeps its name in every schema
//! because it holds the schema version itself.

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{FileId, Hash, StoreId};
use crate::intention::MAX_DEPS;
use crate::store::error::StoreError;
use crate::store::packed::Packed;
use crate::store::schema::{self, META_SCHEMA_VERSION, SCHEMA_VERSION};

/// Intention hash -> the exact signed bytes as received (stored [`Packed`]).
pub(crate) const INTENTIONS: TableDefinition<[u8; 32], Packed> =
    TableDefinition::new("intentions.v4");
/// Local witness seq (from 1) -> (intention hash, chain hash).
pub(crate) const WITNESS: TableDefinition<u64, ([u8; 32], [u8; 32])> =
    TableDefinition::new("witness.v4");
/// (missing hash, floating intention hash) -> the floating intention's signed bytes.
pub(crate) const FLOATING: TableDefinition<([u8; 32], [u8; 32]), &[u8]> =
    TableDefinition::new("floating.v4");
/// Author key -> (hash of the author's latest intention, its HLC wall ms, counter).
pub(crate) const TIPS: TableDefinition<[u8; 32], ([u8; 32], u64, u32)> =
    TableDefinition::new("tips.v4");
/// Intention hash named by no known intention -> its HLC (wall ms, counter).
pub(crate) const HEADS: TableDefinition<[u8; 32], (u64, u32)> = TableDefinition::new("heads.v4");
/// HLC wall ms (big-endian) || intention hash -> (); the reconciliation index.
pub(crate) const INDEX: TableDefinition<[u8; 40], ()> = TableDefinition::new("index.v4");
/// First key of a block of `index` -> (its row count, the sum of its rows' hashes as
/// little-endian bytes): the index's block summary as of the same commit.
pub(crate) const INDEX_BLOCKS: TableDefinition<[u8; 40], (u64, [u8; 32])> =
    TableDefinition::new("index_blocks.v4");
/// (file id bytes, witness seq of an intention with an op touching that file) -> ().
pub(crate) const HISTORY: TableDefinition<([u8; 44], u64), ()> = TableDefinition::new("history.v4");
/// Intention hash -> (author, author-chain seq) of every applied or refused intention.
pub(crate) const SEQS: TableDefinition<[u8; 32], ([u8; 32], u64)> = TableDefinition::new("seqs.v4");
/// (author, author-chain seq, intention hash) -> () for every applied intention.
pub(crate) const CHAIN: TableDefinition<([u8; 32], u64, [u8; 32]), ()> =
    TableDefinition::new("chain.v4");
/// Intention hash -> its signed bytes, refused on arrival or voided after being applied
/// (past its author's revocation cut or fork, or demoted); empty in stores of schema 1.
pub(crate) const REFUSED: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("refused.v4");
/// Author -> (fork seq, the two smallest-hash intentions of that author at that chain
/// seq): proof that it signed two intentions at one place in its chain (see `cut`).
pub(crate) const EVIDENCE: TableDefinition<[u8; 32], (u64, [u8; 32], [u8; 32])> =
    TableDefinition::new("evidence.v4");
/// Intention hash -> its HLC (wall ms, counter), for every applied, refused or evidence
/// intention: the clock order rule compares an intention with its predecessors.
pub(crate) const HLCS: TableDefinition<[u8; 32], (u64, u32)> = TableDefinition::new("hlcs.v4");
/// (wall ms at which it may be applied, hash) -> signed bytes of an intention stamped
/// too far ahead of this node's clock: it waits until its time comes.
pub(crate) const EARLY: TableDefinition<(u64, [u8; 32]), &[u8]> = TableDefinition::new("early.v4");
/// A parked intention: (park order, missing hash or zero, wall ms it waits for or zero,
/// bytes, 1 if counted in the strangers' pool).
pub(crate) type ParkedRow = (u64, [u8; 32], u64, u64, u8);
/// (author, hash) -> [`ParkedRow`] of every floating or early intention.
pub(crate) const PARKED: TableDefinition<([u8; 32], [u8; 32]), ParkedRow> =
    TableDefinition::new("parked.v4");
/// `SetMember` op id -> its position: the chain seq of the member's latest intention
/// that the intention holding it names as prev or dep (0 if none). The grant rules the
/// member's intentions past that position.
pub(crate) const GRANT_POS: TableDefinition<[u8; 44], u64> = TableDefinition::new("grant_pos.v4");
/// Author -> (count, bytes) of its parked intentions; the all-zero key holds the
/// strangers' pool.
pub(crate) const QUOTA: TableDefinition<[u8; 32], (u64, u64)> = TableDefinition::new("quota.v4");
/// Member key -> (store wall ms when it arrived, encoded `pb::Attestation` as sent): the
/// latest attestation of each member (see `sync::frontier`).
pub(crate) const ATTEST: TableDefinition<[u8; 32], (u64, &[u8])> =
    TableDefinition::new("attest.v4");
/// Named store facts; keys are the `META_*` constants.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Witness seq the snapshot reflects -> `FsState::encode_snapshot` bytes; one row at most.
pub(crate) const PROJECTION: TableDefinition<u64, &[u8]> = TableDefinition::new("projection.v4");

/// Meta key: the 16-byte store id.
pub(crate) const META_STORE_ID: &str = "store_id";
/// Meta key: the 32-byte founder key, the author of the genesis intention.
pub(crate) const META_FOUNDER: &str = "founder";
/// Meta key: the greatest HLC of a locally sealed op (wall ms BE || counter BE).
pub(crate) const META_LAST_LOCAL_HLC: &str = "last_local_hlc";
/// Meta key: the next park order (u64 BE), so eviction can find an author's oldest.
pub(crate) const META_PARK_ORDER: &str = "park_order";
/// `meta` key: the frontier (members counted, u32 BE || `pb::Attestation` holding its
/// vector and `below` as floor); absent until one was computed. Never moves backwards.
pub(crate) const META_FRONTIER: &str = "frontier";
/// `meta` key: the greatest floor this node handed out in an attestation (12 bytes, as
/// `last_local_hlc`); the clock starts past it.
pub(crate) const META_ATTESTED: &str = "attested_floor";
/// `meta` key: the concatenated hashes of stored intentions quarantined at an open.
pub(crate) const META_QUARANTINED: &str = "quarantined";

/// The chain hash of witness entry `hash` following chain hash `prev`.
pub(crate) fn chain(prev: &[u8; 32], hash: &Hash) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&hash.0);
    *h.finalize().as_bytes()
}

/// The reconciliation index key of an intention.
pub(crate) fn index_key(hlc: Hlc, hash: &Hash) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&hlc.wall_ms.to_be_bytes());
    k[8..].copy_from_slice(&hash.0);
    k
}

/// Encodes an HLC for the meta table.
pub(crate) fn hlc_bytes(hlc: Hlc) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&hlc.wall_ms.to_be_bytes());
    b[8..].copy_from_slice(&hlc.counter.to_be_bytes());
    b
}

/// Decodes an HLC from the meta table.
pub(crate) fn hlc_from_bytes(b: &[u8]) -> Result<Hlc, StoreError> {
    let b: [u8; 12] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt("meta HLC is not 12 bytes".into()))?;
    Ok(Hlc {
        wall_ms: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
        counter: u32::from_be_bytes(b[8..].try_into().expect("4 bytes")),
    })
}

/// Rows of the early table.
pub(crate) fn early_len(txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
    use redb::ReadableTableMetadata;
    Ok(txn.open_table(EARLY)?.len()?)
}

/// Every proven fork in a read transaction.
pub(crate) fn read_forks(
    txn: &redb::ReadTransaction,
) -> Result<Vec<(PublicKey, u64, [Hash; 2])>, StoreError> {
    let mut out = Vec::new();
    for entry in txn.open_table(EVIDENCE)?.iter()? {
        let (k, v) = entry?;
        let (seq, a, b) = v.value();
        out.push((PublicKey(k.value()), seq, [Hash(a), Hash(b)]));
    }
    Ok(out)
}

/// The concatenation of `hashes`.
pub(crate) fn hashes_to_bytes(hashes: &[Hash]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.0).collect()
}

/// Parses [`hashes_to_bytes`] output (a torn last row is dropped).
pub(crate) fn hashes_from_bytes(b: &[u8]) -> Vec<Hash> {
    b.chunks_exact(32).filter_map(Hash::from_slice).collect()
}

/// Checks the witness chain of `table` from entry `from` (whose predecessor has chain
/// `prev`) to the end; returns the last seq and chain hash.
pub(crate) fn verify_witness(
    table: &impl ReadableTable<u64, ([u8; 32], [u8; 32])>,
    from: u64,
    mut prev: [u8; 32],
) -> Result<(u64, [u8; 32]), StoreError> {
    let mut seq = from.saturating_sub(1);
    for entry in table.range(from..)? {
        let (k, v) = entry?;
        let (hash, stored) = v.value();
        if k.value() != seq + 1 {
            return Err(StoreError::Corrupt(format!(
                "witness seq {} follows {seq}",
                k.value()
            )));
        }
        seq += 1;
        if chain(&prev, &Hash(hash)) != stored {
            return Err(StoreError::Corrupt(format!(
                "witness chain breaks at seq {seq}"
            )));
        }
        prev = stored;
    }
    Ok((seq, prev))
}

/// The chain hash recorded at witness `seq` (zero for seq 0).
pub(crate) fn chain_at(
    table: &impl ReadableTable<u64, ([u8; 32], [u8; 32])>,
    seq: u64,
) -> Result<[u8; 32], StoreError> {
    if seq == 0 {
        return Ok([0; 32]);
    }
    let entry = table
        .get(seq)?
        .ok_or_else(|| StoreError::Corrupt(format!("witness seq {seq} is missing")))?;
    Ok(entry.value().1)
}

/// All tables of a store, opened in one write transaction.
pub(crate) struct Tables<'t> {
    /// See [`INTENTIONS`].
    pub intentions: Table<'t, [u8; 32], Packed>,
    /// See [`WITNESS`].
    pub witness: Table<'t, u64, ([u8; 32], [u8; 32])>,
    /// See [`FLOATING`].
    pub floating: Table<'t, ([u8; 32], [u8; 32]), &'static [u8]>,
    /// See [`TIPS`].
    pub tips: Table<'t, [u8; 32], ([u8; 32], u64, u32)>,
    /// See [`HEADS`].
    pub heads: Table<'t, [u8; 32], (u64, u32)>,
    /// See [`INDEX`].
    pub index: Table<'t, [u8; 40], ()>,
    /// See [`HISTORY`].
    pub history: Table<'t, ([u8; 44], u64), ()>,
    /// See [`SEQS`].
    pub seqs: Table<'t, [u8; 32], ([u8; 32], u64)>,
    /// See [`CHAIN`].
    pub chain: Table<'t, ([u8; 32], u64, [u8; 32]), ()>,
    /// See [`REFUSED`].
    pub refused: Table<'t, [u8; 32], &'static [u8]>,
    /// See [`EVIDENCE`].
    pub evidence: Table<'t, [u8; 32], (u64, [u8; 32], [u8; 32])>,
    /// See [`HLCS`].
    pub hlcs: Table<'t, [u8; 32], (u64, u32)>,
    /// See [`EARLY`].
    pub early: Table<'t, (u64, [u8; 32]), &'static [u8]>,
    /// See [`PARKED`].
    pub parked: Table<'t, ([u8; 32], [u8; 32]), ParkedRow>,
    /// See [`GRANT_POS`].
    pub grant_pos: Table<'t, [u8; 44], u64>,
    /// See [`QUOTA`].
    pub quota: Table<'t, [u8; 32], (u64, u64)>,
    /// See [`META`].
    pub meta: Table<'t, &'static str, &'static [u8]>,
    /// See [`PROJECTION`].
    pub projection: Table<'t, u64, &'static [u8]>,
    /// See [`ATTEST`].
    pub attest: Table<'t, [u8; 32], (u64, &'static [u8])>,
}

impl<'t> Tables<'t> {
    /// Opens (creating) every table in `txn`.
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            intentions: txn.open_table(INTENTIONS)?,
            witness: txn.open_table(WITNESS)?,
            floating: txn.open_table(FLOATING)?,
            tips: txn.open_table(TIPS)?,
            heads: txn.open_table(HEADS)?,
            index: txn.open_table(INDEX)?,
            history: txn.open_table(HISTORY)?,
            seqs: txn.open_table(SEQS)?,
            chain: txn.open_table(CHAIN)?,
            refused: txn.open_table(REFUSED)?,
            evidence: txn.open_table(EVIDENCE)?,
            hlcs: txn.open_table(HLCS)?,
            early: txn.open_table(EARLY)?,
            parked: txn.open_table(PARKED)?,
            grant_pos: txn.open_table(GRANT_POS)?,
            quota: txn.open_table(QUOTA)?,
            meta: txn.open_table(META)?,
            projection: txn.open_table(PROJECTION)?,
            attest: txn.open_table(ATTEST)?,
        })
    }

    /// True if the intention has been applied or refused past a revocation cut.
    pub(crate) fn is_known(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.intentions.get(hash.0)?.is_some() || self.is_refused(hash)?)
    }

    /// True if the intention was refused or voided past a revocation cut.
    pub(crate) fn is_refused(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.refused.get(hash.0)?.is_some())
    }

    /// The author and author-chain seq of an applied or refused intention.
    pub(crate) fn seq_of(&self, hash: &Hash) -> Result<Option<(PublicKey, u64)>, StoreError> {
        Ok(self.seqs.get(hash.0)?.map(|v| {
            let (author, seq) = v.value();
            (PublicKey(author), seq)
        }))
    }

    /// Records an applied intention's place in its author's chain.
    pub(crate) fn add_chain(
        &mut self,
        author: &PublicKey,
        seq: u64,
        hash: &Hash,
    ) -> Result<(), StoreError> {
        self.seqs.insert(hash.0, (author.0, seq))?;
        self.chain.insert((author.0, seq, hash.0), ())?;
        Ok(())
    }

    /// Applied intentions of `author` with a chain seq above `upto`, in seq order.
    pub(crate) fn chain_after(
        &self,
        author: &PublicKey,
        upto: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        let from = (author.0, upto.saturating_add(1), [0u8; 32]);
        let to = (author.0, u64::MAX, [0xffu8; 32]);
        let mut out = Vec::new();
        if upto == u64::MAX {
            return Ok(out);
        }
        for entry in self.chain.range(from..=to)? {
            out.push(Hash(entry?.0.value().2));
        }
        Ok(out)
    }

    /// The HLC recorded for an applied, refused or evidence intention (`None` for an
    /// unknown one, or one a schema 1 store refused on arrival without keeping bytes).
    pub(crate) fn hlc_of(&self, hash: &Hash) -> Result<Option<Hlc>, StoreError> {
        Ok(self.hlcs.get(hash.0)?.map(|v| {
            let (wall_ms, counter) = v.value();
            Hlc { wall_ms, counter }
        }))
    }

    /// Records the HLC of a known intention.
    pub(crate) fn add_hlc(&mut self, hash: &Hash, hlc: Hlc) -> Result<(), StoreError> {
        self.hlcs.insert(hash.0, (hlc.wall_ms, hlc.counter))?;
        Ok(())
    }

    /// The applied intention of `author` at chain seq `seq` other than `not`, if any.
    pub(crate) fn chain_holder(
        &self,
        author: &PublicKey,
        seq: u64,
        not: &Hash,
    ) -> Result<Option<Hash>, StoreError> {
        let range = (author.0, seq, [0u8; 32])..=(author.0, seq, [0xffu8; 32]);
        for entry in self.chain.range(range)? {
            let h = Hash(entry?.0.value().2);
            if h != *not {
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    /// The author's proven fork: its chain seq and the two evidence intentions.
    pub(crate) fn fork_of(
        &self,
        author: &PublicKey,
    ) -> Result<Option<(u64, [Hash; 2])>, StoreError> {
        Ok(self.evidence.get(author.0)?.map(|v| {
            let (seq, a, b) = v.value();
            (seq, [Hash(a), Hash(b)])
        }))
    }

    /// Every proven fork, by author.
    pub(crate) fn forks(&self) -> Result<Vec<(PublicKey, u64, [Hash; 2])>, StoreError> {
        let mut out = Vec::new();
        for entry in self.evidence.iter()? {
            let (k, v) = entry?;
            let (seq, a, b) = v.value();
            out.push((PublicKey(k.value()), seq, [Hash(a), Hash(b)]));
        }
        Ok(out)
    }

    /// True if `hash` is evidence of a fork of `author`.
    pub(crate) fn is_evidence(&self, author: &PublicKey, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self
            .fork_of(author)?
            .is_some_and(|(_, pair)| pair.contains(hash)))
    }

    /// Records an intention refused on arrival or voided, with its bytes.
    pub(crate) fn add_refused(&mut self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        self.refused.insert(hash.0, bytes)?;
        Ok(())
    }

    /// The last witness seq and its chain hash ((0, zero) when empty).
    pub(crate) fn witness_head(&self) -> Result<(u64, [u8; 32]), StoreError> {
        Ok(match self.witness.last()? {
            Some((k, v)) => (k.value(), v.value().1),
            None => (0, [0; 32]),
        })
    }

    /// Appends `hash` to the witness log; returns its seq.
    pub(crate) fn append_witness(&mut self, hash: &Hash) -> Result<u64, StoreError> {
        let (seq, prev) = self.witness_head()?;
        self.witness.insert(seq + 1, (hash.0, chain(&prev, hash)))?;
        Ok(seq + 1)
    }

    /// The deps of a new intention whose first op is stamped `first`: the heads, at
    /// most [`MAX_DEPS`], greatest HLC first. A head stamped at or after `first` arrived
    /// after the op was stamped, and naming it would break the clock order rule; its
    /// predecessors (what the op may have seen) are named in its place.
    pub(crate) fn deps_for_next(&self, first: Hlc) -> Result<Vec<Hash>, StoreError> {
        let mut stack = Vec::new();
        for entry in self.heads.iter()? {
            let (k, v) = entry?;
            let (wall_ms, counter) = v.value();
            stack.push((Hlc { wall_ms, counter }, Hash(k.value())));
        }
        let mut seen = std::collections::HashSet::new();
        let mut deps = Vec::new();
        while let Some((hlc, h)) = stack.pop() {
            if !seen.insert(h) {
                continue;
            }
            if hlc < first {
                deps.push((hlc, h));
                continue;
            }
            let Some(bytes) = self.intentions.get(h.0)? else {
                continue;
            };
            let i = crate::intention::Intention::decode(bytes.value())
                .map_err(|e| StoreError::Corrupt(format!("stored intention {h}: {e}")))?;
            for p in i.prev.iter().chain(&i.deps) {
                if let Some(hlc) = self.hlc_of(p)? {
                    stack.push((hlc, *p));
                }
            }
        }
        deps.sort_unstable_by(|a, b| b.cmp(a));
        deps.truncate(MAX_DEPS);
        Ok(deps.into_iter().map(|(_, h)| h).collect())
    }

    /// The latest known intention of `author`.
    pub(crate) fn tip(&self, author: &PublicKey) -> Result<Option<(Hash, Hlc)>, StoreError> {
        Ok(self.tips.get(author.0)?.map(|v| {
            let (hash, wall_ms, counter) = v.value();
            (Hash(hash), Hlc { wall_ms, counter })
        }))
    }

    /// Records `meta` facts of a new store.
    pub(crate) fn init_meta(&mut self, id: StoreId, founder: &PublicKey) -> Result<(), StoreError> {
        self.meta.insert(
            META_SCHEMA_VERSION,
            &schema::version_bytes(SCHEMA_VERSION)[..],
        )?;
        self.meta.insert(META_STORE_ID, &id.0[..])?;
        self.meta.insert(META_FOUNDER, &founder.0[..])?;
        Ok(())
    }

    /// Records that the intention at witness `seq` touches `file`.
    pub(crate) fn add_history(&mut self, file: FileId, seq: u64) -> Result<(), StoreError> {
        self.history.insert((file.to_bytes(), seq), ())?;
        Ok(())
    }
}
