//! Store tests: convergence, idempotency, refusals, restart and crash durability.

use std::collections::BTreeSet;

use redb::{Database, ReadableDatabase, ReadableTable};

use crate::ids::{Hash, OpId, StoreId};
use crate::store::error::StoreError;
use crate::store::tables::{verify_witness, FLOATING, HEADS, INTENTIONS, REFUSED, WITNESS};

/// The stored sets a test compares between replicas.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Digest {
    pub intentions: BTreeSet<Hash>,
    pub heads: BTreeSet<Hash>,
    pub floating: BTreeSet<(Hash, Hash)>,
    pub refused: BTreeSet<Hash>,
    pub witness_len: u64,
}

/// Reads a digest and verifies the whole witness chain.
pub(crate) fn digest(db: &Database) -> Result<Digest, StoreError> {
    let txn = db.begin_read()?;
    let mut d = Digest {
        intentions: BTreeSet::new(),
        heads: BTreeSet::new(),
        floating: BTreeSet::new(),
        refused: BTreeSet::new(),
        witness_len: 0,
    };
    for e in txn.open_table(INTENTIONS)?.iter()? {
        d.intentions.insert(Hash(e?.0.value()));
    }
    for e in txn.open_table(HEADS)?.iter()? {
        d.heads.insert(Hash(e?.0.value()));
    }
    for e in txn.open_table(FLOATING)?.iter()? {
        let (m, h) = e?.0.value();
        d.floating.insert((Hash(m), Hash(h)));
    }
    for e in txn.open_table(REFUSED)?.iter()? {
        d.refused.insert(Hash(e?.0.value()));
    }
    d.witness_len = verify_witness(&txn.open_table(WITNESS)?, 1, [0; 32])?.0;
    Ok(d)
}

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::cas::Content;
use crate::fs::op::{Create, Kind, Op, OpBody, Role};
use crate::hlc::{Clock, Hlc};
use crate::identity::Identity;
use crate::intention::{Intention, IntentionError, MAX_INTENTION_BYTES};
use crate::store::tables::{PROJECTION, WITNESS as WITNESS_TABLE};
use crate::store::{ApplyOutcome, Store, DB_FILE};

/// A fresh node clock.
pub(crate) fn clock() -> Arc<Mutex<Clock>> {
    Arc::new(Mutex::new(Clock::new(Hlc::ZERO)))
}

/// Creating a file `name` under the root, its content its name.
pub(crate) fn create(name: &str) -> OpBody {
    OpBody::Create(Create {
        parent: OpId::ROOT,
        name: name.into(),
        kind: Kind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        mtime_ns: 0,
        content: Content::Inline(Bytes::from(name.to_owned())),
    })
}

/// A new store in `dir` founded by a fresh identity, named "s".
fn store_in(dir: &Path) -> Store {
    Store::create(
        dir,
        StoreId([6; 16]),
        Identity::generate(),
        clock(),
        "s",
        "me",
    )
    .unwrap()
}

fn write_body(file: OpId, data: &str) -> OpBody {
    OpBody::Write {
        file,
        supersedes: vec![],
        content: Content::Inline(Bytes::from(data.to_owned())),
        mtime_ns: 1,
    }
}

fn seed() -> u64 {
    std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// `SetMember` ops admitting `authors` (the first as admin, the others as writers, named
/// `author<k>`), each stamped by `tick`.
pub(crate) fn grants(authors: &[Identity], tick: &mut impl FnMut() -> Hlc) -> Vec<Op> {
    authors
        .iter()
        .enumerate()
        .map(|(k, a)| Op {
            hlc: tick(),
            body: OpBody::SetMember {
                key: a.public(),
                role: if k == 0 { Role::Admin } else { Role::Writer },
                display_name: format!("author{k}"),
                invite: None,
            },
        })
        .collect()
}

/// A random DAG of intentions by three authors, the first being the founder.
struct Dag {
    id: StoreId,
    founder: Identity,
    items: Vec<Intention>,
}

impl Dag {
    fn build(seed: u64, n: usize) -> Dag {
        let mut rng = StdRng::seed_from_u64(seed);
        let authors: Vec<Identity> = (0..3u8).map(|i| Identity::from_seed([i + 1; 32])).collect();
        let id = StoreId([9; 16]);
        let mut wall = 1_000u64;
        let mut tick = || {
            wall += 1;
            Hlc {
                wall_ms: wall,
                counter: 0,
            }
        };
        let mut ops = vec![Op {
            hlc: tick(),
            body: OpBody::SetStoreName("dag".into()),
        }];
        ops.extend(grants(&authors, &mut tick));
        let genesis = Intention::create(&authors[0], id, None, vec![], ops).unwrap();
        let mut last = HashMap::from([(0usize, genesis.hash)]);
        let mut items = vec![genesis];
        let mut files: Vec<(OpId, Hash)> = Vec::new();
        for k in 0..n {
            let a = rng.random_range(0..authors.len());
            let mut deps: Vec<Hash> = (0..rng.random_range(1..=3))
                .map(|_| items[rng.random_range(0..items.len())].hash)
                .collect();
            let mut ops = Vec::new();
            for j in 0..rng.random_range(1..=3) {
                let hlc = tick();
                let body = if !files.is_empty() && rng.random_bool(0.4) {
                    let (file, creator) = files[rng.random_range(0..files.len())];
                    deps.push(creator);
                    write_body(file, &format!("w{k}.{j}"))
                } else {
                    create(&format!("f{k}.{j}"))
                };
                ops.push(Op { hlc, body });
            }
            let i = Intention::create(&authors[a], id, last.get(&a).copied(), deps, ops).unwrap();
            for op in &i.ops {
                if matches!(op.body, OpBody::Create(_)) {
                    files.push((op.id(i.author), i.hash));
                }
            }
            last.insert(a, i.hash);
            items.push(i);
        }
        Dag {
            id,
            founder: authors.into_iter().next().unwrap(),
            items,
        }
    }

    fn heads(&self) -> BTreeSet<Hash> {
        let named: BTreeSet<Hash> = self
            .items
            .iter()
            .flat_map(|i| i.prev.iter().chain(&i.deps).copied())
            .collect();
        self.items
            .iter()
            .map(|i| i.hash)
            .filter(|h| !named.contains(h))
            .collect()
    }

    fn replica(&self, dir: &Path) -> Store {
        Store::join(
            dir,
            self.id,
            self.founder.public(),
            Identity::generate(),
            clock(),
        )
        .unwrap()
    }
}

fn snapshot_of(store: &Store) -> (Digest, String, crate::store::StoreStats) {
    (
        store.digest().unwrap(),
        store.read(|s| s.canonical_dump()),
        store.stats(),
    )
}

#[test]
fn random_dag_delivered_in_any_order_with_duplicates_converges() {
    let seed = seed();
    let dag = Dag::build(seed, 60);
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut shuffled: Vec<&Intention> = dag.items.iter().chain(&dag.items).collect();
    shuffled.shuffle(&mut rng);
    let orders: Vec<Vec<&Intention>> = vec![
        dag.items.iter().collect(),
        dag.items.iter().rev().collect(),
        shuffled,
    ];
    let mut results = Vec::new();
    for (n, order) in orders.into_iter().enumerate() {
        let store = dag.replica(&tmp.path().join(format!("r{n}")));
        for i in order {
            store.apply_remote(i.bytes.clone()).unwrap();
        }
        let (digest, dump, stats) = snapshot_of(&store);
        assert_eq!(stats.intentions, dag.items.len() as u64, "seed {seed}");
        assert_eq!(stats.floating, 0, "seed {seed}");
        assert!(digest.floating.is_empty(), "seed {seed}");
        assert_eq!(digest.witness_len, dag.items.len() as u64, "seed {seed}");
        assert_eq!(digest.heads, dag.heads(), "seed {seed}");
        store.shutdown().unwrap();
        results.push((digest.intentions, dump));
    }
    for r in &results[1..] {
        assert_eq!(r, &results[0], "seed {seed}");
    }
}

#[test]
fn a_child_floats_until_its_parent_arrives() {
    let dag = Dag::build(7, 3);
    let tmp = tempfile::tempdir().unwrap();
    let store = dag.replica(tmp.path());
    let child = &dag.items[1];
    assert_eq!(
        store.apply_remote(child.bytes.clone()).unwrap(),
        ApplyOutcome::Floating {
            missing: dag.items[0].hash
        }
    );
    assert_eq!(store.stats().floating, 1);
    assert_eq!(store.stats().intentions, 0);
    assert_eq!(
        store.apply_remote(dag.items[0].bytes.clone()).unwrap(),
        ApplyOutcome::Applied { woken: 1 }
    );
    assert_eq!(store.stats().floating, 0);
    assert_eq!(store.stats().intentions, 2);
}

#[test]
fn applying_known_intentions_again_changes_nothing() {
    let dag = Dag::build(11, 20);
    let tmp = tempfile::tempdir().unwrap();
    let store = dag.replica(tmp.path());
    for i in &dag.items {
        store.apply_remote(i.bytes.clone()).unwrap();
    }
    let before = snapshot_of(&store);
    for i in &dag.items {
        assert_eq!(
            store.apply_remote(i.bytes.clone()).unwrap(),
            ApplyOutcome::Duplicate
        );
    }
    assert_eq!(snapshot_of(&store), before);
}

/// A store founded by `admin` with `writer` as Writer and `reader` as Reader.
pub(crate) fn founded_store(
    dir: &Path,
    admin: &Identity,
    writer: &Identity,
    reader: &Identity,
) -> Store {
    let store = Store::create(dir, StoreId([3; 16]), admin.clone(), clock(), "s", "admin").unwrap();
    store
        .write(|tx| {
            for (who, role) in [(writer, Role::Writer), (reader, Role::Reader)] {
                tx.push(OpBody::SetMember {
                    key: who.public(),
                    role,
                    display_name: "m".into(),
                    invite: None,
                })?;
            }
            Ok(())
        })
        .unwrap();
    store.flush().unwrap();
    store
}

fn intention_by(store: &Store, who: &Identity, id: StoreId, name: &str) -> Intention {
    let heads: Vec<Hash> = store.digest().unwrap().heads.into_iter().collect();
    let op = Op {
        hlc: Hlc {
            wall_ms: crate::hlc::now_ms(),
            counter: 0,
        },
        body: create(name),
    };
    Intention::create(who, id, None, heads, vec![op]).unwrap()
}

#[test]
fn every_refused_intention_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (admin, writer, reader) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let store = founded_store(tmp.path(), &admin, &writer, &reader);
    let before = snapshot_of(&store);

    let valid = intention_by(&store, &writer, store.id(), "ok");
    let mut signed = crate::proto::intention::SignedIntention::decode(valid.bytes.clone()).unwrap();
    let mut sig = signed.signature.to_vec();
    sig[10] ^= 1;
    signed.signature = sig.into();
    let forged = Bytes::from(signed.encode_to_vec());
    let other_store = intention_by(&store, &writer, StoreId([4; 16]), "x").bytes;
    let stranger = intention_by(&store, &Identity::generate(), store.id(), "x").bytes;
    let by_reader = intention_by(&store, &reader, store.id(), "x").bytes;
    let oversized = Bytes::from(vec![0u8; MAX_INTENTION_BYTES + 1]);
    let garbage = Bytes::from_static(b"\x0a\x03abc\x12\x02zz not an intention");

    assert!(matches!(
        store.apply_remote(forged),
        Err(StoreError::Intention(IntentionError::BadSignature))
    ));
    assert!(matches!(
        store.apply_remote(other_store),
        Err(StoreError::WrongStore { .. })
    ));
    assert!(matches!(
        store.apply_remote(stranger),
        Err(StoreError::NotMember(_))
    ));
    assert!(matches!(
        store.apply_remote(by_reader),
        Err(StoreError::NotMember(k)) if k == reader.public()
    ));
    assert!(matches!(
        store.apply_remote(oversized),
        Err(StoreError::Intention(IntentionError::TooLarge { .. }))
    ));
    assert!(matches!(
        store.apply_remote(garbage),
        Err(StoreError::Intention(_))
    ));
    assert_eq!(snapshot_of(&store), before);
    assert!(matches!(
        store.apply_remote(valid.bytes),
        Ok(ApplyOutcome::Applied { woken: 0 })
    ));
}

#[test]
fn a_node_that_is_not_a_writer_cannot_write_locally() {
    let tmp = tempfile::tempdir().unwrap();
    let dag = Dag::build(1, 0);
    let store = dag.replica(tmp.path());
    let r = store.write(|tx| {
        tx.push(create("x"))?;
        Ok(())
    });
    assert!(matches!(r, Err(crate::fs::FsError::ReadOnly)));
    store.apply_remote(dag.items[0].bytes.clone()).unwrap();
    assert_eq!(store.stats().intentions, 1);
}

#[test]
fn flushed_writes_survive_reopen_and_the_clock_does_not_go_backwards() {
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let store =
        Store::create(tmp.path(), StoreId([5; 16]), me.clone(), clock(), "s", "me").unwrap();
    let mut last = OpId::ROOT;
    for n in 0..50 {
        last = store
            .write(|tx| Ok(tx.push(create(&format!("f{n}")))?))
            .unwrap();
    }
    store.flush().unwrap();
    let dump = store.read(|s| s.canonical_dump());
    let digest = store.digest().unwrap();
    store.shutdown().unwrap();

    let fresh = clock();
    let reopened = Store::open(tmp.path(), me, fresh.clone()).unwrap();
    assert!(fresh.lock().last() >= last.hlc);
    assert_eq!(reopened.read(|s| s.canonical_dump()), dump);
    assert_eq!(reopened.digest().unwrap(), digest);
    let next = reopened.write(|tx| Ok(tx.push(create("after"))?)).unwrap();
    assert!(next.hlc > last.hlc);
    let valid = Dag::build(1, 0).items[0].bytes.clone();
    assert!(matches!(store.apply_remote(valid), Err(StoreError::Closed)));
}

#[test]
fn the_counts_kept_between_two_status_calls_follow_every_change() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_in(tmp.path());
    assert_eq!(store.stats().fs.files, 0);
    assert_eq!(store.stats().fs.files, 0, "asked again with no change");
    let file = store.write(|tx| Ok(tx.push(create("a"))?)).unwrap();
    let counted = store.stats().fs;
    assert_eq!((counted.files, counted.bytes), (1, 1));
    store
        .write(|tx| Ok(tx.push(write_body(file, "longer"))?))
        .unwrap();
    assert_eq!(store.stats().fs.bytes, 6);
    assert_eq!(store.stats().fs.bytes, 6, "asked again with no change");
}

#[test]
fn a_flush_syncs_content_first_and_fails_while_the_content_cannot_be_synced() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(
        tmp.path(),
        StoreId([8; 16]),
        Identity::generate(),
        clock(),
        "s",
        "me",
    )
    .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let broken = Arc::new(AtomicBool::new(false));
    let (c, b) = (calls.clone(), broken.clone());
    store.set_before_durable(Arc::new(move || {
        c.fetch_add(1, Ordering::SeqCst);
        if b.load(Ordering::SeqCst) {
            Err("disk full".into())
        } else {
            Ok(())
        }
    }));
    store.write(|tx| Ok(tx.push(create("a"))?)).unwrap();
    store.flush().unwrap();
    let after_first = calls.load(Ordering::SeqCst);
    assert!(after_first >= 1, "the hook ran before the durable commit");

    broken.store(true, Ordering::SeqCst);
    store.write(|tx| Ok(tx.push(create("b"))?)).unwrap();
    let failed = store.flush();
    assert!(
        matches!(&failed, Err(StoreError::Unsynced(why)) if why == "disk full"),
        "{failed:?}"
    );
    assert!(calls.load(Ordering::SeqCst) > after_first);

    broken.store(false, Ordering::SeqCst);
    store.flush().unwrap();
    let digest = store.digest().unwrap();
    store.shutdown().unwrap();
    let reopened = Store::open(tmp.path(), Identity::generate(), clock()).unwrap();
    assert_eq!(reopened.digest().unwrap(), digest);
}

#[test]
fn ops_pushed_together_are_sealed_into_one_intention_naming_the_tip_and_heads() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_in(tmp.path());
    let genesis = store.digest().unwrap().heads;
    store
        .write(|tx| {
            for n in 0..100 {
                tx.push(create(&format!("f{n}")))?;
            }
            Ok(())
        })
        .unwrap();
    store.flush().unwrap();
    let d = store.digest().unwrap();
    assert_eq!(d.intentions.len(), 2);
    assert_eq!(d.heads.len(), 1);
    assert!(genesis.is_disjoint(&d.heads));
}

fn raw_db<R>(dir: &Path, f: impl FnOnce(&Database) -> R) -> R {
    f(&Database::open(dir.join(DB_FILE)).unwrap())
}

fn projection_row(dir: &Path) -> (u64, Vec<u8>) {
    raw_db(dir, |db| {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(PROJECTION).unwrap();
        let (k, v) = t.last().unwrap().unwrap();
        (k.value(), v.value().to_vec())
    })
}

fn set_projection(dir: &Path, row: Option<(u64, &[u8])>) {
    raw_db(dir, |db| {
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(PROJECTION).unwrap();
            t.retain(|_, _| false).unwrap();
            if let Some((seq, bytes)) = row {
                t.insert(seq, bytes).unwrap();
            }
        }
        txn.commit().unwrap();
    })
}

#[test]
fn snapshot_plus_replay_equals_full_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let store =
        Store::create(tmp.path(), StoreId([7; 16]), me.clone(), clock(), "s", "me").unwrap();
    for n in 0..20 {
        store
            .write(|tx| Ok(tx.push(create(&format!("a{n}")))?))
            .unwrap();
        store.flush().unwrap();
    }
    store.shutdown().unwrap();
    let early = projection_row(tmp.path());

    let store = Store::open(tmp.path(), me.clone(), clock()).unwrap();
    for n in 0..20 {
        store
            .write(|tx| Ok(tx.push(create(&format!("b{n}")))?))
            .unwrap();
        store.flush().unwrap();
    }
    let dump = store.read(|s| s.canonical_dump());
    store.shutdown().unwrap();
    let late = projection_row(tmp.path());
    assert!(late.0 > early.0 && early.0 > 1);

    set_projection(tmp.path(), Some((early.0, &early.1)));
    let replayed = Store::open(tmp.path(), me.clone(), clock()).unwrap();
    assert_eq!(replayed.read(|s| s.canonical_dump()), dump);
    replayed.shutdown().unwrap();

    set_projection(tmp.path(), None);
    let full = Store::open(tmp.path(), me, clock()).unwrap();
    assert_eq!(full.read(|s| s.canonical_dump()), dump);
}

#[test]
fn witness_chain_verifies_and_a_tampered_entry_is_refused_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let store =
        Store::create(tmp.path(), StoreId([8; 16]), me.clone(), clock(), "s", "me").unwrap();
    for n in 0..5 {
        store
            .write(|tx| Ok(tx.push(create(&format!("f{n}")))?))
            .unwrap();
        store.flush().unwrap();
    }
    assert_eq!(store.digest().unwrap().witness_len, 6);
    store.shutdown().unwrap();
    set_projection(tmp.path(), None);
    raw_db(tmp.path(), |db| {
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(WITNESS_TABLE).unwrap();
            let (hash, mut chain) = t.get(3).unwrap().unwrap().value();
            chain[0] ^= 1;
            t.insert(3, (hash, chain)).unwrap();
        }
        txn.commit().unwrap();
    });
    assert!(matches!(
        Store::open(tmp.path(), me, clock()),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn history_lists_the_intentions_touching_a_file_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let store =
        Store::create(tmp.path(), StoreId([2; 16]), me.clone(), clock(), "s", "me").unwrap();
    let file = store.write(|tx| Ok(tx.push(create("f"))?)).unwrap();
    store.flush().unwrap();
    let other = store.write(|tx| Ok(tx.push(create("g"))?)).unwrap();
    store.flush().unwrap();
    for n in 0..2 {
        store
            .write(|tx| Ok(tx.push(write_body(file, &format!("v{n}")))?))
            .unwrap();
        store.flush().unwrap();
    }
    let h = store.history(file).unwrap();
    assert_eq!(h.len(), 3);
    assert!(h.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(h.iter().all(|i| i.author == me.public()));
    assert_eq!(h[0].hlc, file.hlc);
    assert_eq!(store.history(other).unwrap().len(), 1);
}

#[test]
fn ten_thousand_pushes_and_one_flush_are_fast_and_all_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(
        tmp.path(),
        StoreId([1; 16]),
        Identity::generate(),
        clock(),
        "s",
        "me",
    )
    .unwrap();
    let start = Instant::now();
    for n in 0..10_000 {
        store
            .write(|tx| Ok(tx.push(create(&format!("f{n}")))?))
            .unwrap();
    }
    let pushed = start.elapsed();
    store.flush().unwrap();
    let total = start.elapsed();
    let flushes = 50;
    let f0 = Instant::now();
    for n in 0..flushes {
        store
            .write(|tx| Ok(tx.push(create(&format!("g{n}")))?))
            .unwrap();
        store.flush().unwrap();
    }
    let per_flush = f0.elapsed() / flushes;
    println!(
        "10,000 pushes: {:?} ({:.0} ops/s pushing); with flush {:?} ({:.0} ops/s); push+flush {:?} each",
        pushed,
        10_000.0 / pushed.as_secs_f64(),
        total,
        10_000.0 / total.as_secs_f64(),
        per_flush
    );
    let d = store.digest().unwrap();
    assert!(d.intentions.len() < 1 + 10_000 / 2 + flushes as usize);
    let files = store.stats().fs.files;
    store.shutdown().unwrap();
    let reopened = Store::open(tmp.path(), Identity::generate(), clock()).unwrap();
    assert_eq!(reopened.stats().fs.files, files);
}

const CRASH_DIR_ENV: &str = "LATTICE_STORE_CRASH_DIR";
const CRASH_SEED: [u8; 32] = [42; 32];

#[test]
#[ignore = "a child process of kill_9_after_flush_keeps_every_flushed_write"]
fn crash_child_writes_and_flushes_until_killed() {
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&dir), Identity::from_seed(CRASH_SEED), clock()).unwrap();
    // Bounded, so a child whose parent died does not run forever.
    for n in 0..20_000 {
        store
            .write(|tx| Ok(tx.push(create(&format!("f{n}")))?))
            .unwrap();
        store.flush().unwrap();
        println!("flushed {n}");
        store
            .write(|tx| Ok(tx.push(create(&format!("u{n}")))?))
            .unwrap();
    }
}

#[test]
fn kill_9_after_flush_keeps_every_flushed_write() {
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::from_seed(CRASH_SEED);
    Store::create(
        tmp.path(),
        StoreId([10; 16]),
        me.clone(),
        clock(),
        "s",
        "me",
    )
    .unwrap()
    .shutdown()
    .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::crash_child_writes_and_flushes_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, tmp.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = None;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(n) = line.unwrap().strip_prefix("flushed ") {
            acked = Some(n.parse::<u64>().unwrap());
            if acked >= Some(30) {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let acked = acked.expect("the child acknowledged flushes");
    let store = Store::open(tmp.path(), me, clock()).unwrap();
    for n in 0..=acked {
        assert!(
            store.read(|s| s.lookup(OpId::ROOT, &format!("f{n}")).is_ok()),
            "acknowledged f{n} lost"
        );
    }
    assert!(store.digest().unwrap().witness_len > acked);
}

#[test]
fn subscribers_see_sealed_bytes_and_applied_files_after_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let dag = Dag::build(seed(), 20);
    let b = dag.replica(&tmp.path().join("b"));
    let mut events = b.subscribe();
    assert!(matches!(
        b.apply_remote(dag.items[1].bytes.clone()).unwrap(),
        ApplyOutcome::Floating { .. }
    ));
    assert!(
        events.try_recv().is_err(),
        "nothing applied, nothing published"
    );
    b.apply_remote(dag.items[0].bytes.clone()).unwrap();
    match events.try_recv().unwrap() {
        crate::store::StoreEvent::Applied {
            intentions,
            files,
            dirs,
            received,
        } => {
            assert_eq!(intentions, 2, "genesis and the woken child");
            assert_eq!(received, 2, "both were taken into the projection");
            assert_eq!(b.received(), 2);
            assert!(!files.is_empty());
            assert_eq!(dirs, [OpId::ROOT], "the child created files in the root");
        }
        other => panic!("expected Applied, got {other:?}"),
    }

    let a = store_in(&tmp.path().join("a"));
    let mut events = a.subscribe();
    let before = a.received();
    let file = a.write(|tx| Ok(tx.push(create("hello"))?)).unwrap();
    // The FUSE layer's writes are not announced: its kernel made them.
    a.write_unannounced(|tx| Ok(tx.push(create("quiet"))?))
        .unwrap();
    a.flush().unwrap();
    let (mut applied, mut sealed_ops) = (Vec::new(), 0);
    while let Ok(event) = events.try_recv() {
        match event {
            crate::store::StoreEvent::Applied {
                intentions,
                files,
                dirs,
                received,
            } => {
                assert_eq!(received, before, "local writes are not received ones");
                applied.push((intentions, files, dirs))
            }
            crate::store::StoreEvent::Sealed(sealed) => {
                for bytes in sealed {
                    sealed_ops += Intention::decode(bytes).unwrap().ops.len();
                }
            }
        }
    }
    // A local write is announced as applied with no intentions.
    assert_eq!(applied, [(0, vec![file], vec![OpId::ROOT])]);
    assert_eq!(sealed_ops, 2, "both writes sealed once durable");
}

#[test]
fn an_intention_sealed_here_is_neither_announced_nor_served_before_its_commit_is_durable() {
    // A crash would lose a non-durable intention; had a peer received it, the next one
    // sealed at the same chain seq would be a fork and this node an equivocator.
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(
        tmp.path(),
        StoreId([9; 16]),
        Identity::generate(),
        clock(),
        "s",
        "me",
    )
    .unwrap();
    use std::sync::atomic::{AtomicBool, Ordering};
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    store.set_before_durable(Arc::new(move || {
        if b.load(Ordering::SeqCst) {
            Err("disk full".into())
        } else {
            Ok(())
        }
    }));
    let mut events = store.subscribe();
    let served = |s: &Store| s.witness(1, usize::MAX).unwrap().intentions.len();
    let before = served(&store);
    store
        .write_unannounced(|tx| Ok(tx.push(create("a"))?))
        .unwrap();
    std::thread::sleep(crate::store::actor::SEALED_DURABLE_WITHIN * 6);
    assert!(
        events.try_recv().is_err(),
        "a non-durable intention was announced"
    );
    assert_eq!(served(&store), before, "a non-durable intention was served");

    broken.store(false, Ordering::SeqCst);
    store.flush().unwrap();
    match events.try_recv().unwrap() {
        crate::store::StoreEvent::Sealed(sealed) => assert_eq!(sealed.len(), 1),
        other => panic!("expected Sealed, got {other:?}"),
    }
    assert_eq!(served(&store), before + 1);
}

#[test]
fn witness_batches_replay_into_a_new_replica_without_floating() {
    let tmp = tempfile::tempdir().unwrap();
    let dag = Dag::build(seed(), 200);
    let a = dag.replica(&tmp.path().join("a"));
    let mut shuffled = dag.items.clone();
    shuffled.shuffle(&mut StdRng::seed_from_u64(seed()));
    for i in &shuffled {
        a.apply_remote(i.bytes.clone()).unwrap();
    }
    let b = dag.replica(&tmp.path().join("b"));
    let (mut next, mut batches) = (1, 0);
    loop {
        let batch = a.witness(next, 4096).unwrap();
        assert_eq!(batch.len, dag.items.len() as u64);
        if batch.intentions.is_empty() {
            break;
        }
        batches += 1;
        assert!(
            batch.intentions.len() == 1
                || batch.intentions.iter().map(|b| b.len()).sum::<usize>() <= 4096
        );
        for bytes in batch.intentions {
            assert!(matches!(
                b.apply_remote(bytes).unwrap(),
                ApplyOutcome::Applied { woken: 0 }
            ));
        }
        next = batch.next;
    }
    assert!(batches > 1, "bounded batches");
    assert_eq!(snapshot_of(&a).1, snapshot_of(&b).1);

    let wanted = vec![dag.items[5].hash, Hash([7; 32]), dag.items[3].hash];
    let got = a.get(wanted, usize::MAX).unwrap();
    assert_eq!(
        got,
        vec![dag.items[5].bytes.clone(), dag.items[3].bytes.clone()]
    );
    assert_eq!(
        a.get(vec![dag.items[5].hash, dag.items[3].hash], 1)
            .unwrap()
            .len(),
        1
    );
}

/// A snapshot as an older node wrote it: `ops` by `author`, no validation.
fn raw_snapshot(author: &Identity, ops: &[crate::proto::fs::Op]) -> Vec<u8> {
    let mut out = b"LMFSNAP1".to_vec();
    out.extend_from_slice(&(ops.len() as u64).to_le_bytes());
    for op in ops {
        let bytes = op.encode_to_vec();
        out.extend_from_slice(&author.public().0);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    crate::fs::FsState::snapshot_v1_to_v2(&out).expect("written as format 1")
}

/// A signed intention holding `ops` as they are, as a node without validation signed it.
fn signed_unchecked(
    author: &Identity,
    store: StoreId,
    prev: Hash,
    ops: Vec<crate::proto::fs::Op>,
) -> (Hash, Bytes) {
    use crate::proto::intention as pb;
    let hlc = Hlc {
        wall_ms: ops.iter().map(|o| o.hlc_wall_ms).max().unwrap_or(0),
        counter: 0,
    };
    let body = pb::IntentionBody {
        author: Bytes::copy_from_slice(&author.public().0),
        hlc_wall_ms: hlc.wall_ms,
        hlc_counter: hlc.counter,
        store_id: Bytes::copy_from_slice(&store.0),
        prev: Bytes::copy_from_slice(&prev.0),
        deps: vec![],
        ops: crate::proto::fs::OpBatch { ops }.encode_to_vec().into(),
    }
    .encode_to_vec();
    let hash = Hash::of(&body);
    let signature = author.sign(&[crate::intention::SIGNING_DOMAIN, &hash.0].concat());
    let signed = pb::SignedIntention {
        body: body.into(),
        signature: Bytes::copy_from_slice(&signature),
    };
    (hash, signed.encode_to_vec().into())
}

/// A SetMember with a display name no replica accepts (300 bytes), as a Redeem put it.
fn long_named_member(key: &Identity, wall_ms: u64) -> crate::proto::fs::Op {
    Op {
        hlc: Hlc {
            wall_ms,
            counter: 0,
        },
        body: OpBody::SetMember {
            key: key.public(),
            role: Role::Writer,
            display_name: "x".repeat(300),
            invite: None,
        },
    }
    .to_proto()
}

#[test]
fn a_snapshot_that_does_not_decode_is_rebuilt_from_the_witness_log() {
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let store =
        Store::create(tmp.path(), StoreId([9; 16]), me.clone(), clock(), "s", "me").unwrap();
    for n in 0..5 {
        store
            .write(|tx| Ok(tx.push(create(&format!("f{n}")))?))
            .unwrap();
    }
    let dump = store.read(|s| s.canonical_dump());
    store.shutdown().unwrap();
    let bad_snapshots = [
        raw_snapshot(&me, &[long_named_member(&Identity::generate(), 1)]),
        b"garbage bytes".to_vec(),
    ];
    for bad in bad_snapshots {
        {
            let db = Database::open(tmp.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(PROJECTION).unwrap();
                let seq = t.last().unwrap().unwrap().0.value();
                t.insert(seq, &bad[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        let reopened = Store::open(tmp.path(), me.clone(), clock()).unwrap();
        assert_eq!(reopened.read(|s| s.canonical_dump()), dump);
        assert!(reopened.quarantined().is_empty());
        reopened.shutdown().unwrap();
    }
}

#[test]
fn snapshots_of_earlier_builds_open_and_are_rewritten_as_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let store = Store::create(
        tmp.path(),
        StoreId([11; 16]),
        me.clone(),
        clock(),
        "s",
        "me",
    )
    .unwrap();
    for n in 0..3 {
        store
            .write(|tx| Ok(tx.push(create(&format!("f{n}")))?))
            .unwrap();
    }
    let dump = store.read(|s| s.canonical_dump());
    let format_5 = store.read(|s| s.encode_snapshot());
    store.shutdown().unwrap();
    let (head, header) = projection_row(tmp.path());
    let versioned = |bytes: &[u8], version: u32| {
        let mut out = bytes.to_vec();
        out[8..12].copy_from_slice(&version.to_le_bytes());
        out
    };
    // The op log of nothing at seq 0 (format 2): the witness log after it replays
    // everything; then the state itself at the head (format 5); then projections of
    // builds before directory times, which are rebuilt from the witness log: snapshot
    // formats 3 and 4 and page header formats 1 and 2.
    for (seq, snapshot) in [
        (0, raw_snapshot(&me, &[])),
        (head, format_5.clone()),
        (head, versioned(&format_5, 3)),
        (head, versioned(&format_5, 4)),
        (head, versioned(&header, 1)),
        (head, versioned(&header, 2)),
    ] {
        set_projection(tmp.path(), Some((seq, &snapshot[..])));
        let reopened = Store::open(tmp.path(), me.clone(), clock()).unwrap();
        assert_eq!(reopened.read(|s| s.canonical_dump()), dump);
        // Read before shutdown, which writes pages of its own.
        let (seq, bytes) = {
            let db = reopened.handle.shared.index.db().unwrap();
            let txn = db.begin_read().unwrap();
            let t = txn.open_table(PROJECTION).unwrap();
            let (k, v) = t.last().unwrap().unwrap();
            (k.value(), v.value().to_vec())
        };
        reopened.shutdown().unwrap();
        assert_eq!(seq, head);
        assert!(crate::fs::FsState::is_pages_header(&bytes));
        let again = Store::open(tmp.path(), me.clone(), clock()).unwrap();
        assert_eq!(again.read(|s| s.canonical_dump()), dump);
        assert_eq!(again.stats().replayed, 0);
        again.shutdown().unwrap();
    }
}

#[test]
fn a_stored_intention_that_does_not_decode_is_quarantined_kept_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let id = StoreId([10; 16]);
    let store = Store::create(tmp.path(), id, me.clone(), clock(), "s", "me").unwrap();
    store.write(|tx| Ok(tx.push(create("before"))?)).unwrap();
    store.flush().unwrap();
    let tip = {
        let db = store.handle.shared.index.db().unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(crate::store::tables::TIPS).unwrap();
        Hash(t.get(me.public().0).unwrap().unwrap().value().0)
    };
    store.shutdown().unwrap();
    // What an older node signed for a joiner's 300-byte name, and plain garbage.
    let (bad_hash, bad) = signed_unchecked(
        &me,
        id,
        tip,
        vec![long_named_member(
            &Identity::generate(),
            crate::hlc::now_ms(),
        )],
    );
    let garbage = Bytes::from_static(b"not an intention");
    let garbage_hash = Hash::of(&garbage);
    {
        let db = Database::open(tmp.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = crate::store::tables::Tables::open(&txn).unwrap();
            for (h, b) in [(bad_hash, &bad), (garbage_hash, &garbage)] {
                t.intentions.insert(h.0, b).unwrap();
                t.append_witness(&h).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let reopened = Store::open(tmp.path(), me.clone(), clock()).unwrap();
    assert_eq!(reopened.quarantined(), vec![bad_hash, garbage_hash]);
    let names = reopened.read(|s| {
        s.readdir(OpId::ROOT)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    });
    assert_eq!(names, vec!["before".to_string()]);
    assert_eq!(reopened.read(|s| s.members().len()), 1);
    // Writes still seal, and the quarantine outlives the next snapshot.
    reopened.write(|tx| Ok(tx.push(create("after"))?)).unwrap();
    reopened.flush().unwrap();
    let dump = reopened.read(|s| s.canonical_dump());
    reopened.shutdown().unwrap();
    let again = Store::open(tmp.path(), me, clock()).unwrap();
    assert_eq!(again.quarantined(), vec![bad_hash, garbage_hash]);
    assert_eq!(again.read(|s| s.canonical_dump()), dump);
    let kept = again.get(vec![bad_hash], usize::MAX).unwrap();
    assert_eq!(kept, vec![bad], "a quarantined intention is kept as stored");
}

#[test]
fn a_local_write_of_a_file_with_more_heads_than_one_op_names_still_seals_and_reopens() {
    use crate::fs::op::MAX_SUPERSEDES;
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let other = Identity::generate();
    let id = StoreId([11; 16]);
    let store = Store::create(tmp.path(), id, me.clone(), clock(), "s", "me").unwrap();
    store
        .write(|tx| {
            tx.push(OpBody::SetMember {
                key: other.public(),
                role: Role::Writer,
                display_name: "other".into(),
                invite: None,
            })?;
            Ok(())
        })
        .unwrap();
    let file = store.write(|tx| Ok(tx.push(create("f"))?)).unwrap();
    store.flush().unwrap();
    // Another writer's concurrent versions, more than one op may supersede.
    let deps = {
        let db = store.handle.shared.index.db().unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(HEADS).unwrap();
        t.iter()
            .unwrap()
            .map(|e| Hash(e.unwrap().0.value()))
            .collect::<Vec<_>>()
    };
    let base = crate::hlc::now_ms();
    let versions: Vec<Op> = (0..MAX_SUPERSEDES + 100)
        .map(|n| Op {
            hlc: Hlc {
                wall_ms: base,
                counter: n as u32,
            },
            body: OpBody::Write {
                file,
                supersedes: vec![],
                content: Content::empty(),
                mtime_ns: 0,
            },
        })
        .collect();
    let i = Intention::create(&other, id, None, deps, versions).unwrap();
    store.apply_remote(i.bytes).unwrap();
    assert!(store.read(|s| s.file(file).unwrap().heads.len()) > MAX_SUPERSEDES);
    store
        .write(|tx| {
            let body = tx
                .state()
                .plan_write(file, Content::Inline("v".into()), 0)?;
            tx.push(body)?;
            Ok(())
        })
        .unwrap();
    store.flush().unwrap();
    assert_eq!(store.read(|s| s.file(file).unwrap().heads.len()), 1);
    let dump = store.read(|s| s.canonical_dump());
    store.shutdown().unwrap();
    let reopened = Store::open(tmp.path(), me, clock()).unwrap();
    assert_eq!(reopened.read(|s| s.canonical_dump()), dump);
    assert!(reopened.quarantined().is_empty());
}
