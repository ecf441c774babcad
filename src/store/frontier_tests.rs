//! The store's side of the stability frontier: attestations kept across reopen, the
//! frontier never moving backwards, and the revocation and horizon rules, on real
//! stores with their injectable wall clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::fs::op::{OpBody, Role, Setting, DEFAULT_HORIZON_DAYS};
use crate::hlc::Hlc;
use crate::identity::{Identity, PublicKey};
use crate::ids::StoreId;
use crate::intention::Intention;
use crate::store::tests::{clock, create};
use crate::store::{Genesis, SettingError, Store, StoreOptions, MS_PER_DAY};
use crate::sync::frontier::{AttestError, Attestation, Blocker, Holdback};

const ID: StoreId = StoreId([5; 16]);
/// A recent wall time, Unix ms.
const T0: u64 = 1_767_225_600_000;

/// A store's wall clock that a test moves.
#[derive(Clone)]
struct Wall(Arc<AtomicU64>);

impl Wall {
    fn new() -> Wall {
        Wall(Arc::new(AtomicU64::new(T0)))
    }

    fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    fn opts(&self) -> StoreOptions {
        let w = self.0.clone();
        StoreOptions {
            wall: Arc::new(move || w.load(Ordering::SeqCst)),
            ..StoreOptions::default()
        }
    }
}

struct Node {
    id: Identity,
    store: Store,
    wall: Wall,
    dir: tempfile::TempDir,
}

impl Node {
    fn key(&self) -> PublicKey {
        self.id.public()
    }

    fn write(&self, name: &str) {
        self.store
            .write(|tx| Ok(tx.push(create(name))?))
            .expect("a member writes");
        self.store.flush().expect("flush");
    }

    fn reopen(&mut self) {
        self.store.shutdown().expect("shutdown");
        self.store = Store::open_with(self.dir.path(), self.id.clone(), clock(), self.wall.opts())
            .expect("reopen");
    }

    /// Hands every intention of `from` to this node.
    fn pull(&self, from: &Node) {
        let batch = from.store.witness(1, usize::MAX).expect("witness");
        for outcome in self.store.apply_remote_many(batch.intentions) {
            outcome.expect("applies");
        }
        self.store.flush().expect("flush");
    }

    fn below(&self) -> Hlc {
        self.store.frontier().expect("a frontier").below
    }
}

fn founder() -> Node {
    let id = Identity::generate();
    let wall = Wall::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let genesis = Genesis {
        id: ID,
        name: "s",
        display_name: "admin",
    };
    let store =
        Store::create_with(dir.path(), genesis, id.clone(), clock(), wall.opts()).expect("create");
    Node {
        id,
        store,
        wall,
        dir,
    }
}

/// A founder and a writer that holds everything the founder has.
fn pair() -> (Node, Node) {
    let a = founder();
    let b = admit(&a);
    (a, b)
}

/// A writer admitted by `a`, holding everything `a` has.
fn admit(a: &Node) -> Node {
    let b = granted(a);
    b.pull(a);
    b
}

/// A writer `a` granted membership, joining with nothing applied yet.
fn granted(a: &Node) -> Node {
    let id = Identity::generate();
    a.store
        .write(|tx| {
            Ok(tx.push(OpBody::SetMember {
                key: id.public(),
                role: Role::Writer,
                display_name: "b".into(),
                invite: None,
            })?)
        })
        .expect("admin writes");
    a.store.flush().expect("flush");
    let wall = Wall::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::join_with(dir.path(), ID, a.key(), id.clone(), clock(), wall.opts()).expect("join");
    Node {
        id,
        store,
        wall,
        dir,
    }
}

/// `from` attests to `to`.
fn attest(from: &Node, to: &Node) -> Attestation {
    let a = from.store.attestation().expect("attestation");
    to.store.attested(from.key(), a.clone()).expect("kept");
    a
}

#[test]
fn a_lone_founders_frontier_follows_its_newest_op_and_survives_reopen() {
    let mut a = founder();
    a.write("x");
    let own = a.store.attestation().expect("attestation");
    let f = a
        .store
        .frontier()
        .expect("a lone founder counts only itself");
    assert_eq!(f.members, 1);
    assert_eq!(f.below, own.floor);
    assert_eq!(f.vector, own.vector);
    a.reopen();
    assert_eq!(a.store.frontier(), Some(f));
}

#[test]
fn a_member_without_an_attestation_holds_the_frontier_until_it_attests() {
    let a = founder();
    a.write("first");
    let before = a.below();
    let b = admit(&a);
    a.write("x");
    assert_eq!(a.below(), before, "b never attested");
    assert_eq!(
        a.store.standing().holdback,
        Some(Holdback::Blocked(Blocker::NoAttestation(b.key())))
    );
    let from_b = attest(&b, &a);
    a.write("y");
    let f = a.store.frontier().expect("a frontier");
    assert_eq!(f.members, 2);
    assert_eq!(f.below, from_b.floor, "b has seen less than a");
    assert_eq!(a.store.standing().holdback, Some(Holdback::Floor(b.key())));
}

#[test]
fn an_attestation_naming_more_of_its_authors_chain_than_is_held_waits_for_it() {
    let (a, b) = pair();
    b.write("from-b");
    attest(&b, &a);
    a.write("x");
    assert_eq!(
        a.store.standing().holdback,
        Some(Holdback::Blocked(Blocker::Behind(b.key())))
    );
    a.pull(&b);
    assert_eq!(a.store.frontier().expect("usable now").members, 2);
}

#[test]
fn a_non_members_attestation_is_refused_and_changes_nothing() {
    let (a, b) = pair();
    attest(&b, &a);
    a.write("x");
    let before = a.store.standing();
    let stranger = Identity::generate().public();
    let low = Attestation {
        floor: Hlc::ZERO,
        ..Attestation::default()
    };
    assert!(matches!(
        a.store.attested(stranger, low),
        Err(AttestError::NotMember(_))
    ));
    assert_eq!(a.store.standing(), before);
}

#[test]
fn attestations_survive_reopen_and_the_frontier_never_moves_back() {
    let (mut a, b) = pair();
    let old = b.store.attestation().expect("attestation");
    attest(&b, &a);
    a.write("x");
    let f = a.store.frontier().expect("a frontier");
    a.reopen();
    assert_eq!(a.store.frontier(), Some(f.clone()));
    a.write("y");
    assert_eq!(a.store.frontier().expect("kept").members, 2, "b's is kept");
    b.pull(&a);
    attest(&b, &a);
    a.write("z");
    let higher = a.below();
    assert!(higher > f.below);
    // An older attestation (replayed, or from a restored backup) cannot pull it back.
    a.store.attested(b.key(), old).expect("kept as sent");
    a.write("w");
    assert_eq!(a.below(), higher);
    a.reopen();
    assert_eq!(a.below(), higher);
}

#[test]
fn a_revoked_member_counts_until_its_chain_is_held_up_to_the_cut() {
    let (a, b) = pair();
    b.write("one");
    a.pull(&b);
    let from_b = attest(&b, &a);
    b.write("two");
    a.store
        .write(|tx| {
            Ok(tx.push(OpBody::RevokeMember {
                key: b.key(),
                upto: 2,
            })?)
        })
        .expect("admin revokes");
    a.write("x");
    assert_eq!(
        a.below(),
        from_b.floor,
        "b's second intention may still come"
    );
    assert_eq!(a.store.frontier().expect("a frontier").members, 2);
    a.pull(&b);
    a.write("y");
    let f = a.store.frontier().expect("a frontier");
    assert_eq!(f.members, 1, "all of b up to the cut is here");
    assert!(f.below > from_b.floor);
}

/// b attests to a, then stays silent: a's frontier counts b up to `horizon_ms` of
/// silence and no longer after it.
fn silent_past(a: &Node, b: &Node, horizon_ms: u64) {
    let from_b = attest(b, a);
    a.write("x");
    assert_eq!(a.below(), from_b.floor);
    a.wall.set(T0 + horizon_ms);
    a.write("y");
    assert_eq!(a.below(), from_b.floor, "at the horizon b still counts");
    a.wall.set(T0 + horizon_ms + 1);
    a.write("z");
    let f = a.store.frontier().expect("a frontier");
    assert_eq!(f.members, 1);
    assert!(f.below.wall_ms > T0 + horizon_ms);
}

#[test]
fn a_member_silent_past_the_horizon_stops_holding_the_frontier() {
    let (a, b) = pair();
    silent_past(&a, &b, u64::from(DEFAULT_HORIZON_DAYS) * MS_PER_DAY);
}

#[test]
fn a_member_silent_past_the_horizon_an_admin_set_stops_holding_the_frontier() {
    let (a, b) = pair();
    assert!(matches!(
        b.store.set_setting(Setting::Horizon, 1),
        Err(SettingError::NotAdmin)
    ));
    a.store
        .set_setting(Setting::Horizon, 1)
        .expect("an admin sets");
    a.store.flush().expect("flush");
    silent_past(&a, &b, MS_PER_DAY);
}

#[test]
fn a_member_that_left_counts_until_its_chain_is_held_up_to_the_leave_then_never() {
    let (a, b) = pair();
    b.write("one");
    a.pull(&b);
    let from_b = attest(&b, &a);
    b.write("two");
    b.store.leave().expect("a member leaves");
    a.write("x");
    assert_eq!(
        a.below(),
        from_b.floor,
        "b's later intentions may still come"
    );
    assert_eq!(a.store.frontier().expect("a frontier").members, 2);
    a.pull(&b);
    assert!(a.store.read(|s| s.has_left(&b.key())));
    a.write("y");
    let f = a.store.frontier().expect("a frontier");
    assert_eq!(f.members, 1, "all of b up to its leave is here");
    assert!(f.below > from_b.floor);
}

#[test]
fn a_joiner_kept_the_founders_batch_attestations_and_purges_as_it_bootstraps() {
    let a = founder();
    for i in 0..30 {
        a.write(&format!("f{i}"));
    }
    let b = granted(&a);
    let mut batches = Vec::new();
    let mut next = 1;
    loop {
        let batch = a.store.bootstrap_batch(next, 600).expect("witness");
        if batch.intentions.is_empty() {
            break;
        }
        next = batch.next;
        batches.push(batch);
    }
    assert!(batches.len() > 4, "{} batches", batches.len());
    let mut purged_midway = false;
    for (i, batch) in batches.iter().enumerate() {
        if let Some(att) = &batch.attested {
            assert_eq!(att.vector.keys().collect::<Vec<_>>(), vec![&a.key()]);
            // What it claims: every op of a in the batches still to come is stamped at
            // or after its floor.
            for later in &batches[i + 1..] {
                for bytes in &later.intentions {
                    let later = Intention::decode(bytes.clone()).expect("decodes");
                    if later.author == a.key() {
                        assert!(later.ops.iter().all(|op| op.hlc >= att.floor));
                    }
                }
            }
        }
        for outcome in b.store.apply_remote_many(batch.intentions.clone()) {
            outcome.expect("applies");
        }
        if let Some(att) = batch.attested.clone() {
            b.store
                .attested(a.key(), att)
                .expect("the founder's attestation is kept");
        }
        b.store.flush().expect("flush");
        if i + 1 < batches.len() && b.store.read(|s| s.purged_below()) > Hlc::ZERO {
            purged_midway = true;
        }
    }
    assert!(purged_midway, "the joiner purged before its last batch");
    assert!(
        batches.last().expect("batches").attested.is_none(),
        "no own intention of a follows the log"
    );
    assert_eq!(
        b.store.read(|s| s.canonical_dump()),
        a.store.read(|s| s.canonical_dump())
    );
}
