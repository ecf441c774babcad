//! The schema version of a store's redb file, checked at every open, and the steps
//! that migrate an older file to the current version.
//!
//! The version is a `u32` (big-endian) in the `meta` table under
//! [`META_SCHEMA_VERSION`]. `meta` and that row are the fixed point of every schema:
//! their name and encoding never change, so any build can tell which layout a file has
//! before it reads anything else. A file without the row is schema 1.
//!
//! | schema | written by | layout |
//! | --- | --- | --- |
//! | 1 | the release at f143caf and builds up to 0399322 | bare table names (`intentions`, ...); tables added after that release may be missing; projection snapshot format 1 |
//! | 2 | builds from 0399322 to c19e4be | every table name but `meta` ends in `.v2`; every table exists; every stored intention has its `hlcs` row; projection snapshot format 2 |
//! | 3 | builds from c19e4be to 5e97f0d | every table name but `meta` ends in `.v3`; the `attest` table (members' attestations) and the `frontier` meta row |
//! | 4 | this build | every table name but `meta` ends in `.v4`; `intentions` rows are [`Packed`] (LZ4 when shorter); a `history` row is its key alone, the intention named by the witness seq in it |
//!
//! Opening a file of the current version changes nothing. An older file is migrated
//! in one write transaction, one step per version ([`STEPS`]), so a crash leaves it
//! wholly old or wholly new. A newer file is refused with
//! [`StoreError::NewerSchema`] and left untouched. A step is frozen once released: it
//! names the tables as they were at its two versions, never through the current
//! constants of `tables.rs`, which a later schema may change.

use std::path::Path;

use bytes::Bytes;
use redb::{
    Database, DatabaseError, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition,
    TableError, TableHandle, WriteTransaction,
};

use crate::intention::Intention;
use crate::store::error::StoreError;
use crate::store::packed::Packed;
use crate::store::tables::{Tables, META};

/// The schema version this build writes, and the newest it reads.
pub const SCHEMA_VERSION: u32 = 4;
/// `meta` key: the schema version of the file (u32 BE); absent in schema 1.
pub(crate) const META_SCHEMA_VERSION: &str = "schema_version";

/// One migration step: rewrites a file of version `n` to version `n + 1` in `txn`.
type Step = fn(&WriteTransaction) -> Result<(), StoreError>;

/// `STEPS[n - 1]` migrates version `n` to `n + 1`.
const STEPS: [Step; SCHEMA_VERSION as usize - 1] = [v1_to_v2, v2_to_v3, v3_to_v4];

/// The `meta` row recording `version`.
pub(crate) fn version_bytes(version: u32) -> [u8; 4] {
    version.to_be_bytes()
}

/// The schema version recorded in `db` (1 if none is).
fn recorded(db: &impl ReadableDatabase) -> Result<u32, StoreError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(TableError::TableDoesNotExist(_)) => {
            return Err(StoreError::Corrupt("the meta table is missing".into()))
        }
        Err(e) => return Err(e.into()),
    };
    let Some(row) = meta.get(META_SCHEMA_VERSION)? else {
        return Ok(1);
    };
    let bytes: [u8; 4] = row
        .value()
        .try_into()
        .map_err(|_| StoreError::Corrupt("meta schema_version is not 4 bytes".into()))?;
    Ok(u32::from_be_bytes(bytes))
}

/// Opens the store file at `path` at [`SCHEMA_VERSION`], migrating an older file.
///
/// A file of a newer schema fails with [`StoreError::NewerSchema`] and is not written
/// to: its version is read through a read-only handle first, since opening a redb file
/// for writing rewrites its header. Only a file that was not closed cleanly (which redb
/// must repair before anything can read it) is opened for writing before the check.
pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    match ReadOnlyDatabase::open(path) {
        Ok(db) => {
            let found = recorded(&db);
            db.close()?;
            check(found?)?;
        }
        Err(DatabaseError::RepairAborted) => {}
        Err(e) => return Err(e.into()),
    }
    let db = Database::builder().set_cache_size(cache_bytes).open(path)?;
    upgrade(&db)?;
    Ok(db)
}

/// `found` if this build reads that schema version.
fn check(found: u32) -> Result<u32, StoreError> {
    if found == 0 {
        return Err(StoreError::Corrupt("meta schema_version is 0".into()));
    }
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Migrates `db` from the schema version it records to [`SCHEMA_VERSION`] in one write
/// transaction (nothing if it is current).
pub(crate) fn upgrade(db: &Database) -> Result<(), StoreError> {
    let found = check(recorded(db)?)?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let txn = db.begin_write()?;
    for step in &STEPS[found as usize - 1..] {
        step(&txn)?;
    }
    // Tables a step did not create are created empty: every table of the current
    // schema exists in every open store.
    drop(Tables::open(&txn)?);
    txn.open_table(META)?
        .insert(META_SCHEMA_VERSION, &version_bytes(SCHEMA_VERSION)[..])?;
    txn.commit()?;
    tracing::info!("migrated a store from schema {found} to {SCHEMA_VERSION}");
    Ok(())
}

/// Every table a schema 1 file may hold, but `meta`.
const V1_TABLES: [&str; 17] = [
    "intentions",
    "witness",
    "floating",
    "tips",
    "heads",
    "index",
    "history",
    "seqs",
    "chain",
    "refused",
    "evidence",
    "hlcs",
    "early",
    "parked",
    "grant_pos",
    "quota",
    "projection",
];

/// Schema 1 -> 2: table names gain the `.v2` suffix, every stored intention gets its
/// `hlcs` row (schema 1 files may predate that table), and the projection snapshot
/// gains its format header.
fn v1_to_v2(txn: &WriteTransaction) -> Result<(), StoreError> {
    let present: Vec<String> = txn
        .list_tables()?
        .map(|t| t.name().to_owned())
        .filter(|name| V1_TABLES.contains(&name.as_str()))
        .collect();
    for name in &present {
        let to = format!("{name}.v2");
        // Renaming looks only at names: the key and value types here are placeholders.
        txn.rename_table(
            TableDefinition::<&[u8], &[u8]>::new(name),
            TableDefinition::<&[u8], &[u8]>::new(&to),
        )?;
    }
    let bytes_by_hash = |name| TableDefinition::<[u8; 32], &[u8]>::new(name);
    let mut hlcs = txn.open_table(TableDefinition::<[u8; 32], (u64, u32)>::new("hlcs.v2"))?;
    // Applied intentions first: a hash in both tables keeps the HLC of its applied bytes.
    for name in ["intentions.v2", "refused.v2"] {
        for entry in txn.open_table(bytes_by_hash(name))?.iter()? {
            let (hash, bytes) = entry?;
            if hlcs.get(hash.value())?.is_some() {
                continue;
            }
            // Bytes that do not parse get no row: the open quarantines them.
            let peeked = Intention::peek(&Bytes::copy_from_slice(bytes.value()));
            if let Some((hlc, _)) = peeked {
                hlcs.insert(hash.value(), (hlc.wall_ms, hlc.counter))?;
            }
        }
    }
    drop(hlcs);
    let projection: TableDefinition<u64, &[u8]> = TableDefinition::new("projection.v2");
    let mut table = txn.open_table(projection)?;
    let row = table
        .last()?
        .map(|(k, v)| (k.value(), crate::fs::FsState::snapshot_v1_to_v2(v.value())));
    match row {
        Some((seq, Some(bytes))) => {
            table.insert(seq, &bytes[..])?;
        }
        // Not a format 1 snapshot: dropped, so the open rebuilds it from the witness log.
        Some((_, None)) => table.retain(|_, _| false)?,
        None => {}
    }
    Ok(())
}

/// Schema 2 -> 3: every table is renamed to `.v3` (no layout changes); the new
/// `attest.v3` table is created empty by the caller, and `meta` gains its `frontier` row
/// when a frontier is first computed.
fn v2_to_v3(txn: &WriteTransaction) -> Result<(), StoreError> {
    let present: Vec<String> = txn
        .list_tables()?
        .map(|t| t.name().to_owned())
        .filter(|name| {
            name.strip_suffix(".v2")
                .is_some_and(|bare| V1_TABLES.contains(&bare))
        })
        .collect();
    for name in &present {
        let to = name.replace(".v2", ".v3");
        // Renaming looks only at names: the key and value types here are placeholders.
        txn.rename_table(
            TableDefinition::<&[u8], &[u8]>::new(name),
            TableDefinition::<&[u8], &[u8]>::new(&to),
        )?;
    }
    Ok(())
}

/// Schema 3 -> 4: every table is renamed to `.v4`; `intentions` rows are rewritten
/// [`Packed`], and `history` rows lose their value (the intention hash, which the
/// witness row of the key's seq holds).
fn v3_to_v4(txn: &WriteTransaction) -> Result<(), StoreError> {
    let present: Vec<String> = txn
        .list_tables()?
        .map(|t| t.name().to_owned())
        .filter(|name| name.ends_with(".v3"))
        .collect();
    for name in &present {
        let to = name.replace(".v3", ".v4");
        match name.as_str() {
            "intentions.v3" => {
                let from = TableDefinition::<[u8; 32], &[u8]>::new(name);
                let mut packed = txn.open_table(TableDefinition::<[u8; 32], Packed>::new(&to))?;
                for entry in txn.open_table(from)?.iter()? {
                    let (hash, bytes) = entry?;
                    packed.insert(hash.value(), Bytes::copy_from_slice(bytes.value()))?;
                }
                txn.delete_table(from)?;
            }
            "history.v3" => {
                let from = TableDefinition::<([u8; 44], u64), [u8; 32]>::new(name);
                let mut keys = txn.open_table(TableDefinition::<([u8; 44], u64), ()>::new(&to))?;
                for entry in txn.open_table(from)?.iter()? {
                    keys.insert(entry?.0.value(), ())?;
                }
                txn.delete_table(from)?;
            }
            // Renaming looks only at names: the key and value types here are placeholders.
            _ => {
                txn.rename_table(
                    TableDefinition::<&[u8], &[u8]>::new(name),
                    TableDefinition::<&[u8], &[u8]>::new(&to),
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FsState;

    /// The store file of the previous release's fixture (see its README).
    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/f143caf/stores/e1036dd416af43f4dfa2bed31f41de53/store.redb"
    );

    /// The last projection row of table `name`.
    fn projection(db: &impl ReadableDatabase, name: &str) -> (u64, Vec<u8>) {
        let txn = db.begin_read().unwrap();
        let table = txn
            .open_table(TableDefinition::<u64, &[u8]>::new(name))
            .unwrap();
        let (k, v) = table.last().unwrap().unwrap();
        (k.value(), v.value().to_vec())
    }

    #[test]
    fn migrating_the_previous_release_renames_every_table_and_keeps_its_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("store.redb");
        std::fs::copy(FIXTURE, &path).unwrap();
        let (seq, old) = {
            let db = ReadOnlyDatabase::open(&path).unwrap();
            let txn = db.begin_read().unwrap();
            let names: Vec<String> = txn
                .list_tables()
                .unwrap()
                .map(|t| t.name().into())
                .collect();
            assert!(names.contains(&"intentions".into()), "{names:?}");
            assert!(
                !names.contains(&"hlcs".into()),
                "that release had no hlcs table"
            );
            projection(&db, "projection")
        };
        assert!(old.starts_with(b"LMFSNAP1"));

        let db = open(
            &path,
            crate::budget::CacheBudget::default().store_cache_bytes(1),
        )
        .unwrap();
        assert_eq!(recorded(&db).unwrap(), SCHEMA_VERSION);
        let (new_seq, new) = projection(&db, "projection.v4");
        assert_eq!(new_seq, seq);
        assert_eq!(Some(new.clone()), FsState::snapshot_v1_to_v2(&old));
        let state = FsState::decode_snapshot(&new).unwrap();
        let current = FsState::decode_snapshot(&state.encode_snapshot()).unwrap();
        assert_eq!(current.canonical_dump(), state.canonical_dump());
        let txn = db.begin_write().unwrap();
        let hlcs = txn
            .open_table(TableDefinition::<[u8; 32], (u64, u32)>::new("hlcs.v4"))
            .unwrap();
        let intentions = txn
            .open_table(TableDefinition::<[u8; 32], Packed>::new("intentions.v4"))
            .unwrap();
        let mut stored = 0;
        for entry in intentions.iter().unwrap() {
            let (hash, bytes) = entry.unwrap();
            let (hlc, _) = Intention::peek(&bytes.value()).unwrap();
            let row = hlcs.get(hash.value()).unwrap().unwrap().value();
            assert_eq!(row, (hlc.wall_ms, hlc.counter));
            stored += 1;
        }
        assert_eq!(stored, 13, "the fixture's intentions");
        drop((hlcs, intentions));
        let mut names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().into())
            .collect();
        names.sort();
        let mut want: Vec<String> = V1_TABLES.iter().map(|t| format!("{t}.v4")).collect();
        want.push("attest.v4".into());
        want.push("meta".into());
        want.sort();
        assert_eq!(names, want);
    }

    /// A schema 3 store file: the build at 1c192cb's fixture (see its README).
    const FIXTURE_V3: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/1c192cb/stores/1eee1c43a1edbf23092ab8721e3fef16/store.redb"
    );

    #[test]
    fn migrating_schema_3_packs_the_intentions_and_keys_history_by_witness_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("store.redb");
        std::fs::copy(FIXTURE_V3, &path).unwrap();
        type Rows<K, V> = Vec<(K, V)>;
        let db = ReadOnlyDatabase::open(&path).unwrap();
        assert_eq!(recorded(&db).unwrap(), 3);
        let txn = db.begin_read().unwrap();
        let intentions: Rows<[u8; 32], Vec<u8>> = txn
            .open_table(TableDefinition::<[u8; 32], &[u8]>::new("intentions.v3"))
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| e.map(|(k, v)| (k.value(), v.value().to_vec())).unwrap())
            .collect();
        let history: Rows<([u8; 44], u64), [u8; 32]> = txn
            .open_table(TableDefinition::<([u8; 44], u64), [u8; 32]>::new(
                "history.v3",
            ))
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| e.map(|(k, v)| (k.value(), v.value())).unwrap())
            .collect();
        let witness: std::collections::HashMap<u64, [u8; 32]> = txn
            .open_table(TableDefinition::<u64, ([u8; 32], [u8; 32])>::new(
                "witness.v3",
            ))
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| e.map(|(k, v)| (k.value(), v.value().0)).unwrap())
            .collect();
        drop(txn);
        db.close().unwrap();
        assert!(!intentions.is_empty() && !history.is_empty());

        let db = open(
            &path,
            crate::budget::CacheBudget::default().store_cache_bytes(1),
        )
        .unwrap();
        assert_eq!(recorded(&db).unwrap(), SCHEMA_VERSION);
        let txn = db.begin_read().unwrap();
        let packed: Rows<[u8; 32], Vec<u8>> = txn
            .open_table(TableDefinition::<[u8; 32], Packed>::new("intentions.v4"))
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| e.map(|(k, v)| (k.value(), v.value().to_vec())).unwrap())
            .collect();
        assert_eq!(
            packed, intentions,
            "every intention reads back byte for byte"
        );
        let keys: Vec<([u8; 44], u64)> = txn
            .open_table(TableDefinition::<([u8; 44], u64), ()>::new("history.v4"))
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value())
            .collect();
        let old: Vec<([u8; 44], u64)> = history.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, old);
        for ((_, seq), hash) in &history {
            assert_eq!(
                witness.get(seq),
                Some(hash),
                "the witness names the same intention"
            );
        }
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().into())
            .collect();
        assert!(
            names.iter().all(|n| n == "meta" || n.ends_with(".v4")),
            "{names:?}"
        );
        assert!(names.contains(&"page_files.v4".into()), "{names:?}");
    }
}
