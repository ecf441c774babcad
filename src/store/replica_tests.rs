//! `sync::replica` over real stores in temp dirs, wired by a small in-memory driver
//! loop (here, not in `sync/`, because `sync` does not see `Store`).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use prost::Message;
use tokio::sync::broadcast;

use crate::fs::op::Role;
use crate::identity::{Identity, PublicKey};
use crate::ids::{Hash, OpId, StoreId};
use crate::proto::peer::{self as pb, gossip, request, response};
use crate::store::tests::{clock, create};
use crate::store::{Store, StoreEvent};
use crate::sync::replica::*;
use crate::sync::{Refusal, RefusalCode};

const ID: StoreId = StoreId([7; 16]);
/// Long enough after start for the first anti-entropy pass.
const LATER: Millis = 10 * ANTI_ENTROPY_MAX;

struct Node {
    key: PublicKey,
    store: Store,
    replica: Replica<Store>,
    events: broadcast::Receiver<StoreEvent>,
    subscribed: bool,
    wake: Option<Millis>,
    _dir: tempfile::TempDir,
}

/// Nodes wired by in-memory links: every action is carried out at once, in order.
struct World {
    nodes: Vec<Node>,
    now: Millis,
    queue: VecDeque<(usize, Event)>,
    /// Opener-side conversations: (opener, conv) -> acceptor.
    links: HashMap<(usize, Conv), usize>,
    /// Every action taken, by node.
    log: Vec<(usize, Action)>,
    /// Nodes whose streams fail.
    down: Vec<usize>,
    /// Nodes that cannot be dialed.
    offline: Vec<usize>,
    /// Nodes that answer every `Want` with no intentions.
    withholding: Vec<usize>,
}

impl World {
    fn new() -> World {
        World {
            nodes: Vec::new(),
            now: 1_000,
            queue: VecDeque::new(),
            links: HashMap::new(),
            log: Vec::new(),
            down: Vec::new(),
            offline: Vec::new(),
            withholding: Vec::new(),
        }
    }

    /// Adds a node with `store`; returns its index.
    fn add(&mut self, store: Store, who: &Identity, dir: tempfile::TempDir) -> usize {
        let events = store.subscribe();
        let secret = Some([9; 32]);
        let (replica, first) = Replica::new(
            store.clone(),
            who.public(),
            secret,
            Mode::default(),
            self.now,
        );
        self.nodes.push(Node {
            key: who.public(),
            store,
            replica,
            events,
            subscribed: false,
            wake: None,
            _dir: dir,
        });
        let i = self.nodes.len() - 1;
        self.act(i, first);
        i
    }

    fn index(&self, key: &PublicKey) -> Option<usize> {
        self.nodes.iter().position(|n| n.key == *key)
    }

    fn act(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            self.log.push((i, a.clone()));
            match a {
                Action::Send {
                    conv,
                    peer,
                    request,
                } => match self.index(&peer).filter(|j| !self.down.contains(j)) {
                    Some(j) if self.offline.contains(&j) => self.queue.push_back((
                        i,
                        Event::Answer {
                            conv,
                            answer: Err(Failure::Unreachable("offline".into())),
                        },
                    )),
                    Some(j) => {
                        self.links.insert((i, conv), j);
                        let request = pb::Request {
                            store_id: Bytes::copy_from_slice(&ID.0),
                            addrs: Vec::new(),
                            kind: Some(request),
                        };
                        let from = self.nodes[i].key;
                        self.queue.push_back((
                            j,
                            Event::Request {
                                from,
                                conv,
                                request,
                            },
                        ));
                    }
                    None => self.queue.push_back((
                        i,
                        Event::Answer {
                            conv,
                            answer: Err(Failure::Transport("no such peer".into())),
                        },
                    )),
                },
                Action::Finish(conv) => {
                    if let Some(j) = self.links.remove(&(i, conv)) {
                        let from = self.nodes[i].key;
                        self.queue.push_back((j, Event::Closed { from, conv }));
                    }
                }
                Action::Reply {
                    to,
                    conv,
                    mut response,
                    last,
                } => {
                    if let response::Kind::Intentions(list) = &mut response {
                        if self.withholding.contains(&i) {
                            list.intentions.clear();
                        }
                    }
                    let j = self.index(&to).expect("replies go to a node of this world");
                    self.queue.push_back((
                        j,
                        Event::Answer {
                            conv,
                            answer: Ok(response),
                        },
                    ));
                    if !last {
                        self.queue.push_back((i, Event::Drained { to, conv }));
                    }
                }
                Action::Refuse { to, conv, refusal } => {
                    let j = self
                        .index(&to)
                        .expect("refusals go to a node of this world");
                    self.queue.push_back((
                        j,
                        Event::Answer {
                            conv,
                            answer: Err(Failure::Refused(refusal)),
                        },
                    ));
                }
                Action::Subscribe { .. } => {
                    self.nodes[i].subscribed = true;
                    self.queue.push_back((i, Event::GossipUp(true)));
                    let me = self.nodes[i].key;
                    for j in 0..self.nodes.len() {
                        if j != i && self.nodes[j].subscribed {
                            let other = self.nodes[j].key;
                            self.queue.push_back((i, Event::NeighborUp(other)));
                            self.queue.push_back((j, Event::NeighborUp(me)));
                        }
                    }
                }
                Action::Unsubscribe => self.nodes[i].subscribed = false,
                Action::Broadcast(message) => {
                    let from = self.nodes[i].key;
                    for j in 0..self.nodes.len() {
                        if j != i && self.nodes[j].subscribed {
                            let message = message.clone();
                            self.queue.push_back((j, Event::Gossip { from, message }));
                        }
                    }
                }
                Action::WakeAt(at) => self.nodes[i].wake = Some(at),
                Action::JoinPeers(_)
                | Action::SaveSecret(_)
                | Action::Learn { .. }
                | Action::Fetch(_)
                | Action::CutOff(_)
                | Action::Redial(_)
                | Action::Synced(..) => {}
            }
        }
    }

    /// Feeds store events of every node to its replica.
    fn store_events(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.nodes.len() {
            while let Ok(e) = self.nodes[i].events.try_recv() {
                any = true;
                let event = match e {
                    StoreEvent::Sealed(list) => Event::Sealed(list),
                    StoreEvent::Applied { files, .. } => Event::Applied(Some(files)),
                };
                self.queue.push_back((i, event));
            }
        }
        any
    }

    /// Runs until nothing is left to deliver.
    fn run(&mut self) {
        loop {
            self.store_events();
            let Some((i, event)) = self.queue.pop_front() else {
                for n in &self.nodes {
                    n.store.flush().expect("flush");
                }
                if self.store_events() {
                    continue;
                }
                return;
            };
            let now = self.now;
            let actions = self.nodes[i].replica.handle(event, now);
            self.act(i, actions);
        }
    }

    /// Feeds `event` to node `i` and runs to quiescence; returns the actions it took.
    fn feed(&mut self, i: usize, event: Event) -> Vec<Action> {
        self.run();
        let now = self.now;
        let actions = self.nodes[i].replica.handle(event, now);
        self.act(i, actions.clone());
        self.run();
        actions
    }

    /// Moves the clock to `at` and wakes every node whose wake time came.
    fn advance(&mut self, at: Millis) {
        self.now = at;
        for i in 0..self.nodes.len() {
            if self.nodes[i].wake.is_some_and(|w| w <= at) {
                self.nodes[i].wake = None;
                self.queue.push_back((i, Event::Wake));
            }
        }
        self.run();
    }

    fn synced(&self, i: usize) -> Vec<SyncReport> {
        self.log
            .iter()
            .filter_map(|(n, a)| match a {
                Action::Synced(_, r) if *n == i => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A key that is no member of the store and the intentions creating `name` it signed
/// in a store of its own under the same id.
fn stranger_writes(name: &str) -> (Identity, Vec<Bytes>) {
    let stranger = Identity::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let other = Store::create(dir.path(), ID, stranger.clone(), clock(), "s", "x").expect("create");
    write(&other, name);
    let signed = other.witness(1, usize::MAX).expect("witness").intentions;
    (stranger, signed)
}

fn write(store: &Store, name: &str) {
    store
        .write(|tx| Ok(tx.push(create(name))?))
        .expect("a member writes");
    store.flush().expect("flush");
}

fn has(store: &Store, name: &str) -> bool {
    store.read(|s| s.lookup(OpId::ROOT, name).is_ok())
}

fn digest(store: &Store) -> ([u8; 16], u64) {
    let view = store.reconcile_view().expect("view");
    (view.digest(), view.len())
}

/// A founder with a store and `joiners` admitted by invites (redeemed through the
/// founder's replica) and bootstrapped from its witness log.
fn team(joiners: usize) -> (World, Vec<Identity>) {
    let mut w = World::new();
    let admin = Identity::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::create(dir.path(), ID, admin.clone(), clock(), "s", "admin").expect("create");
    w.add(store, &admin, dir);
    let mut ids = vec![admin.clone()];
    for n in 0..joiners {
        let who = Identity::generate();
        let secret = w.nodes[0]
            .store
            .create_invite(Role::Writer, u64::MAX)
            .expect("invite");
        let acts = w.nodes[0].replica.handle(
            Event::Request {
                from: who.public(),
                conv: Conv(100 + n as u64),
                request: pb::Request {
                    store_id: Bytes::copy_from_slice(&ID.0),
                    addrs: Vec::new(),
                    kind: Some(request::Kind::Redeem(pb::Redeem {
                        secret: Bytes::copy_from_slice(&secret),
                        display_name: format!("j{n}"),
                    })),
                },
            },
            w.now,
        );
        assert!(
            matches!(
                &acts[..],
                [
                    Action::Reply {
                        response: response::Kind::Redeemed(_),
                        ..
                    },
                    ..
                ]
            ),
            "{acts:?}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::join(dir.path(), ID, admin.public(), who.clone(), clock()).expect("join");
        let log = w.nodes[0].store.witness(1, usize::MAX).expect("witness");
        apply_all(&store, log.intentions).expect("bootstrap");
        store.flush().expect("flush");
        w.add(store, &who, dir);
        ids.push(who);
    }
    w.run();
    (w, ids)
}

#[test]
fn two_replicas_converge_through_a_sync_pass() {
    let (mut w, _) = team(1);
    write(&w.nodes[0].store, "from-a");
    write(&w.nodes[1].store, "from-b");
    w.feed(1, Event::Sync(Ticket(1)));
    for n in &w.nodes {
        assert!(has(&n.store, "from-a") && has(&n.store, "from-b"));
    }
    assert_eq!(digest(&w.nodes[0].store), digest(&w.nodes[1].store));
    let reports = w.synced(1);
    let last = reports.last().expect("the ticket is answered");
    assert_eq!(last.peers, 1);
    assert!(last.failed.is_empty(), "{last:?}");
    assert_eq!(w.nodes[1].replica.unsent(), 0);
}

#[test]
fn a_sealed_intention_reaches_a_subscribed_member_by_gossip_alone() {
    let (mut w, _) = team(1);
    write(&w.nodes[0].store, "gossiped");
    w.run();
    assert!(has(&w.nodes[1].store, "gossiped"));
    let broadcast = w
        .log
        .iter()
        .any(|(i, a)| *i == 0 && matches!(a, Action::Broadcast(_)));
    assert!(broadcast);
}

#[test]
fn without_a_gossip_neighbour_a_sealed_intention_waits_for_a_round_not_a_broadcast() {
    let (mut w, _) = team(1);
    w.run();
    let peer = w.nodes[1].key;
    let down = w.nodes[0].replica.handle(Event::NeighborDown(peer), w.now);
    w.act(0, down);
    w.log.clear();
    write(&w.nodes[0].store, "quiet");
    w.run();
    let broadcasts = |w: &World| {
        w.log
            .iter()
            .filter(|(i, a)| *i == 0 && matches!(a, Action::Broadcast(_)))
            .count()
    };
    assert_eq!(broadcasts(&w), 0);
    w.advance(LATER);
    assert!(has(&w.nodes[1].store, "quiet"));
    let up = w.nodes[0].replica.handle(Event::NeighborUp(peer), w.now);
    w.act(0, up);
    w.run();
    write(&w.nodes[0].store, "heard");
    w.run();
    assert_eq!(broadcasts(&w), 1);
    assert!(has(&w.nodes[1].store, "heard"));
}

#[test]
fn the_anti_entropy_timer_brings_what_gossip_lost() {
    let (mut w, _) = team(1);
    w.nodes[1].subscribed = false;
    write(&w.nodes[0].store, "late");
    w.run();
    assert!(!has(&w.nodes[1].store, "late"));
    w.advance(LATER);
    assert!(has(&w.nodes[1].store, "late"));
}

#[test]
fn gossip_from_a_non_member_is_ignored() {
    let (mut w, _) = team(0);
    let (stranger, bytes) = stranger_writes("forged");
    for b in bytes {
        let message = pb::Gossip {
            kind: Some(gossip::Kind::Intention(b)),
        }
        .encode_to_vec();
        let acts = w.feed(
            0,
            Event::Gossip {
                from: stranger.public(),
                message: message.into(),
            },
        );
        assert!(acts.is_empty(), "{acts:?}");
    }
    assert!(!has(&w.nodes[0].store, "forged"));
}

#[test]
fn a_non_members_requests_are_refused_as_not_member_and_change_nothing() {
    let (mut w, _) = team(0);
    let (stranger, pushed) = stranger_writes("pushed");
    let before = digest(&w.nodes[0].store);
    let kinds = [
        request::Kind::Push(pb::Intentions { intentions: pushed }),
        request::Kind::Want(pb::Want { hashes: Vec::new() }),
        request::Kind::Reconcile(pb::Frame {
            frame: Bytes::new(),
        }),
        request::Kind::Bootstrap(pb::Bootstrap { from: 1 }),
        request::Kind::AskSecret(pb::AskSecret {}),
        request::Kind::Attest(pb::Attestation::default()),
    ];
    let standing = w.nodes[0].store.standing();
    for (n, kind) in kinds.into_iter().enumerate() {
        let acts = w.nodes[0].replica.handle(
            Event::Request {
                from: stranger.public(),
                conv: Conv(n as u64),
                request: pb::Request {
                    store_id: Bytes::copy_from_slice(&ID.0),
                    addrs: vec!["127.0.0.1:1".into()],
                    kind: Some(kind),
                },
            },
            w.now,
        );
        assert!(
            matches!(
                &acts[..],
                [Action::Refuse {
                    refusal: Refusal {
                        code: RefusalCode::NotMember,
                        ..
                    },
                    ..
                }]
            ),
            "{acts:?}"
        );
    }
    assert_eq!(digest(&w.nodes[0].store), before);
    assert!(!has(&w.nodes[0].store, "pushed"));
    assert_eq!(w.nodes[0].store.standing(), standing);
}

#[test]
fn a_floating_gossiped_intention_starts_a_round_with_its_sender() {
    let (mut w, _) = team(1);
    w.nodes[0].subscribed = false;
    w.nodes[1].subscribed = false;
    write(&w.nodes[1].store, "one");
    write(&w.nodes[1].store, "two");
    w.run();
    let log = w.nodes[1]
        .store
        .witness(1, usize::MAX)
        .expect("witness")
        .intentions;
    let last = log.last().expect("two intentions").clone();
    let message = pb::Gossip {
        kind: Some(gossip::Kind::Intention(last)),
    }
    .encode_to_vec();
    let from = w.nodes[1].key;
    let acts = w.nodes[0].replica.handle(
        Event::Gossip {
            from,
            message: message.into(),
        },
        w.now,
    );
    assert!(
        acts.iter().any(|a| matches!(
            a,
            Action::Send { peer, request: request::Kind::Reconcile(_), .. } if *peer == from
        )),
        "{acts:?}"
    );
    w.act(0, acts);
    w.run();
    assert!(has(&w.nodes[0].store, "one") && has(&w.nodes[0].store, "two"));
}

#[test]
fn a_member_revoked_elsewhere_is_cut_off_once_the_revocation_arrives() {
    let (mut w, ids) = team(2);
    let revoked = ids[2].public();
    w.nodes[0].store.revoke_member(revoked).expect("revoke");
    w.nodes[0].store.flush().expect("flush");
    w.feed(1, Event::Sync(Ticket(1)));
    assert!(w
        .log
        .iter()
        .any(|(i, a)| *i == 1 && *a == Action::CutOff(revoked)));
}

#[test]
fn a_paused_replica_refuses_members_and_answers_sync_at_once() {
    let (mut w, _) = team(1);
    let paused = Mode {
        paused: true,
        eager: false,
    };
    let acts = w.feed(0, Event::Settings(paused));
    assert!(acts.contains(&Action::Unsubscribe), "{acts:?}");
    let acts = w.feed(0, Event::Sync(Ticket(7)));
    assert!(
        matches!(&acts[..], [Action::Synced(Ticket(7), r)] if r.paused),
        "{acts:?}"
    );
    w.feed(1, Event::Sync(Ticket(8)));
    let report = w.synced(1).pop().expect("answered");
    assert_eq!(report.peers, 0);
    assert!(report.failed[0].1.contains("paused"), "{report:?}");
}

#[test]
fn a_bootstrap_streams_one_batch_per_drained_reply() {
    let (mut w, ids) = team(1);
    for n in 0..3 {
        write(&w.nodes[0].store, &format!("f{n}"));
    }
    let from = ids[1].public();
    let ask = |w: &mut World, event| w.nodes[0].replica.handle(event, w.now);
    let mut acts = ask(
        &mut w,
        Event::Request {
            from,
            conv: Conv(1),
            request: pb::Request {
                store_id: Bytes::copy_from_slice(&ID.0),
                addrs: Vec::new(),
                kind: Some(request::Kind::Bootstrap(pb::Bootstrap { from: 1 })),
            },
        },
    );
    let mut got = 0;
    loop {
        let [Action::Reply {
            response: response::Kind::Batch(b),
            last,
            ..
        }] = &acts[..]
        else {
            panic!("one batch per step: {acts:?}");
        };
        got += b.intentions.len();
        if *last {
            break;
        }
        acts = ask(
            &mut w,
            Event::Drained {
                to: from,
                conv: Conv(1),
            },
        );
    }
    assert_eq!(got as u64, w.nodes[0].store.applied());
}

#[test]
fn a_transport_failure_redials_once_then_fails_the_round() {
    let (mut w, ids) = team(1);
    w.down.push(1);
    w.feed(0, Event::Sync(Ticket(1)));
    let redials: Vec<&Action> = w
        .log
        .iter()
        .filter(|(i, a)| *i == 0 && matches!(a, Action::Redial(_)))
        .map(|(_, a)| a)
        .collect();
    assert_eq!(redials, [&Action::Redial(ids[1].public())]);
    let report = w.synced(0).pop().expect("answered");
    assert_eq!((report.peers, report.failed.len()), (0, 1), "{report:?}");
}

#[test]
fn hints_during_a_round_cost_one_more_round_not_one_each() {
    let (mut w, ids) = team(1);
    w.log.clear();
    let peer = ids[1].public();
    let first = w.nodes[0].replica.handle(Event::NeighborUp(peer), w.now);
    assert_eq!(first.len(), 1, "{first:?}");
    for _ in 0..5 {
        let more = w.nodes[0].replica.handle(Event::NeighborUp(peer), w.now);
        assert!(more.is_empty(), "{more:?}");
    }
    w.act(0, first);
    w.run();
    let opened: std::collections::HashSet<Conv> = w
        .log
        .iter()
        .filter_map(|(i, a)| match a {
            Action::Send {
                conv,
                request: request::Kind::Reconcile(_),
                ..
            } if *i == 0 => Some(*conv),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 2, "{opened:?}");
}

#[test]
fn a_local_revocation_cuts_the_key_off_at_once() {
    let (mut w, ids) = team(1);
    let revoked = ids[1].public();
    w.nodes[0].store.revoke_member(revoked).expect("revoke");
    w.nodes[0].store.flush().expect("flush");
    w.run();
    let cuts = w
        .log
        .iter()
        .filter(|(i, a)| *i == 0 && *a == Action::CutOff(revoked))
        .count();
    assert_eq!(cuts, 1);
}

#[test]
fn an_unreachable_peer_fails_its_round_without_a_redial() {
    let (mut w, _) = team(1);
    w.offline.push(1);
    w.feed(0, Event::Sync(Ticket(1)));
    let redials = w
        .log
        .iter()
        .filter(|(_, a)| matches!(a, Action::Redial(_)))
        .count();
    assert_eq!(redials, 0);
    let report = w.synced(0).pop().expect("answered");
    assert_eq!(report.failed.len(), 1, "{report:?}");
}

#[test]
fn a_peer_withholding_what_it_offered_ends_the_pull_not_the_round() {
    let (mut w, _) = team(1);
    w.nodes[0].subscribed = false;
    w.nodes[1].subscribed = false;
    write(&w.nodes[1].store, "held");
    w.withholding.push(1);
    w.feed(0, Event::Sync(Ticket(1)));
    let report = w.synced(0).pop().expect("answered");
    assert_eq!((report.peers, report.failed.len()), (1, 0), "{report:?}");
    assert!(!has(&w.nodes[0].store, "held"));
    w.withholding.clear();
    w.feed(0, Event::Sync(Ticket(2)));
    assert!(has(&w.nodes[0].store, "held"));
}

/// Each node asks for a sync pass, in turn, `times` times over.
fn sync_all(w: &mut World, times: usize) {
    for t in 0..times {
        for i in 0..w.nodes.len() {
            w.feed(i, Event::Sync(Ticket((t * w.nodes.len() + i) as u64)));
        }
    }
}

#[test]
fn after_sync_passes_every_members_frontier_covers_everything_applied() {
    let (mut w, _) = team(2);
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        write(&w.nodes[i].store, name);
    }
    sync_all(&mut w, 2);
    for n in &w.nodes {
        let own = n.store.attestation().expect("attestation");
        let f = n.store.frontier().expect("every member attested");
        assert_eq!(f.members, 3);
        assert_eq!(f.vector, own.vector, "the frontier covers all applied");
        assert!(f.below <= own.floor);
    }
    let attests = w
        .log
        .iter()
        .filter(|(_, a)| {
            matches!(
                a,
                Action::Send {
                    request: request::Kind::Attest(_),
                    ..
                }
            )
        })
        .count();
    assert!(
        attests >= 6,
        "every round ends with an attestation: {attests}"
    );
}

#[test]
fn a_members_malformed_attestation_is_refused_as_malformed_and_changes_nothing() {
    let (mut w, _) = team(1);
    let before = w.nodes[0].store.standing();
    let bad = pb::Attestation {
        vector: vec![pb::ChainLen {
            author: Bytes::from_static(&[1; 31]),
            len: 1,
        }],
        ..pb::Attestation::default()
    };
    let from = w.nodes[1].key;
    let acts = w.nodes[0].replica.handle(
        Event::Request {
            from,
            conv: Conv(1),
            request: pb::Request {
                store_id: Bytes::copy_from_slice(&ID.0),
                addrs: Vec::new(),
                kind: Some(request::Kind::Attest(bad)),
            },
        },
        w.now,
    );
    assert!(
        matches!(
            &acts[..],
            [Action::Refuse {
                refusal: Refusal {
                    code: RefusalCode::Malformed,
                    ..
                },
                ..
            }]
        ),
        "{acts:?}"
    );
    assert_eq!(w.nodes[0].store.standing(), before);
}

/// The inline bytes of every visible file and conflict copy under the root.
fn contents(store: &Store) -> Vec<Bytes> {
    store.read(|st| {
        let mut out = Vec::new();
        for (_, node) in st.readdir(OpId::ROOT).expect("root lists") {
            if let Ok(view) = st.content(node) {
                for piece in view.pieces {
                    if let crate::cas::Content::Inline(b) = piece {
                        out.push(b);
                    }
                }
            }
        }
        out
    })
}

/// b goes offline, writes (a create, an overwrite of a file a also overwrites, a name a
/// also creates) while a lives on past the store's horizon (`set` by the admin, else the
/// default) and purges without b; when b returns all its writes survive on both, as
/// files or conflict copies, and both replicas converge.
fn silent_member_returns(set: Option<u32>) {
    use crate::fs::op::{OpBody, Setting};
    use crate::store::{SettingError, MS_PER_DAY};
    use std::sync::Arc;

    let day = MS_PER_DAY;
    let t0 = crate::hlc::now_ms();
    let (mut w, _) = team(1);
    let at = |store: &Store, ms: u64| store.set_wall(Arc::new(move || ms));
    if let Some(days) = set {
        assert!(matches!(
            w.nodes[1].store.set_setting(Setting::Horizon, days),
            Err(SettingError::NotAdmin)
        ));
        w.nodes[0]
            .store
            .set_setting(Setting::Horizon, days)
            .expect("an admin sets");
    }
    write(&w.nodes[0].store, "shared");
    sync_all(&mut w, 2);
    let horizon = w.nodes[0].store.setting(Setting::Horizon);
    assert_eq!(horizon, set.unwrap_or(crate::fs::op::DEFAULT_HORIZON_DAYS));
    assert_eq!(
        w.nodes[1].store.setting(Setting::Horizon),
        horizon,
        "replicated"
    );
    let horizon_ms = u64::from(horizon) * day;
    let shared = w.nodes[1]
        .store
        .read(|st| st.lookup(OpId::ROOT, "shared"))
        .expect("synced");
    let file = match shared {
        crate::fs::Node::Entry { file, .. } => file,
        other => panic!("{other:?}"),
    };
    let overwrite = |store: &Store, data: &'static str| {
        store
            .write(|tx| {
                Ok(tx.push(OpBody::Write {
                    file,
                    supersedes: Vec::new(),
                    content: crate::cas::Content::Inline(Bytes::from_static(data.as_bytes())),
                    mtime_ns: 1,
                })?)
            })
            .expect("a member writes");
        store.flush().expect("flush");
    };
    // b goes offline and, a day later, writes while nobody hears it.
    w.offline.push(1);
    w.nodes[1].subscribed = false;
    at(&w.nodes[1].store, t0 + day);
    overwrite(&w.nodes[1].store, "from-b");
    write(&w.nodes[1].store, "b-file");
    write(&w.nodes[1].store, "both");
    let b_stamp = w.nodes[1].store.attestation().expect("attestation").floor;
    // a lives on past the horizon: b stops holding its frontier.
    at(&w.nodes[0].store, t0 + horizon_ms + 2 * day);
    overwrite(&w.nodes[0].store, "from-a");
    write(&w.nodes[0].store, "a-file");
    write(&w.nodes[0].store, "both");
    let f = w.nodes[0].store.frontier().expect("a frontier");
    assert_eq!(f.members, 1, "b is silent past the horizon");
    assert!(f.below > b_stamp, "b's writes arrive late");
    // b comes back.
    at(&w.nodes[1].store, t0 + horizon_ms + 3 * day);
    w.offline.clear();
    w.nodes[1].subscribed = true;
    sync_all(&mut w, 2);
    assert_eq!(digest(&w.nodes[0].store), digest(&w.nodes[1].store));
    let dump = |store: &Store| store.read(|st| st.canonical_dump());
    assert_eq!(dump(&w.nodes[0].store), dump(&w.nodes[1].store));
    for n in &w.nodes {
        assert!(has(&n.store, "a-file") && has(&n.store, "b-file"));
        let names: Vec<String> = n
            .store
            .read(|st| st.readdir(OpId::ROOT).expect("root lists"))
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let both = names.iter().filter(|m| m.starts_with("both")).count();
        assert_eq!(both, 2, "both creates of one name survive: {names:?}");
        let all = contents(&n.store);
        for want in ["from-a", "from-b"] {
            assert!(
                all.iter().any(|b| &b[..] == want.as_bytes()),
                "{want} is lost: {all:?}"
            );
        }
        assert_eq!(n.store.frontier().expect("b attested again").members, 2);
    }
}

#[test]
fn a_member_silent_past_the_horizon_returns_and_all_its_concurrent_writes_survive() {
    silent_member_returns(None);
}

#[test]
fn a_member_silent_past_a_horizon_the_admin_set_returns_and_all_its_concurrent_writes_survive() {
    silent_member_returns(Some(2));
}

/// b goes offline and overwrites a file a deletes meanwhile; a lives on past the horizon
/// and (retention 0) sweeps the file's tombstone and record away. When b returns, b's
/// write survives on both: on a, which no longer holds the file's place, as a file at
/// the root; on b, at its old place (edit wins over delete).
#[test]
fn a_member_silent_past_the_horizon_returns_and_its_write_to_a_swept_file_survives() {
    use crate::fs::op::{OpBody, Setting};
    use crate::store::MS_PER_DAY;
    use std::sync::Arc;

    let t0 = crate::hlc::now_ms();
    let (mut w, _) = team(1);
    let at = |store: &Store, ms: u64| store.set_wall(Arc::new(move || ms));
    let a = &w.nodes[0].store;
    a.set_setting(Setting::Retention, 0).expect("an admin sets");
    a.set_setting(Setting::Horizon, 2).expect("an admin sets");
    write(a, "doomed");
    sync_all(&mut w, 2);
    let file = w.nodes[1]
        .store
        .read(|st| st.lookup(OpId::ROOT, "doomed"))
        .expect("synced")
        .file();
    // b goes offline and, a day later, overwrites the file.
    w.offline.push(1);
    w.nodes[1].subscribed = false;
    at(&w.nodes[1].store, t0 + MS_PER_DAY);
    let b = &w.nodes[1].store;
    b.write(|tx| {
        Ok(tx.push(OpBody::Write {
            file,
            supersedes: Vec::new(),
            content: crate::cas::Content::Inline(Bytes::from_static(b"from-b")),
            mtime_ns: 1,
        })?)
    })
    .expect("a member writes");
    b.flush().expect("flush");
    // a deletes it past the horizon, and a minute later writes on: b no longer holds the
    // frontier back and the sweep forgets the deleted file.
    let a = &w.nodes[0].store;
    let late = t0 + 4 * MS_PER_DAY;
    at(a, late);
    a.write(|tx| {
        let body = tx.state().plan_unlink(OpId::ROOT, "doomed")?;
        Ok(tx.push(body)?)
    })
    .expect("a member deletes");
    a.flush().expect("flush");
    at(a, late + 2 * 60_000);
    write(a, "after");
    write(a, "after-2");
    assert_eq!(a.frontier().expect("a frontier").members, 1, "b is silent");
    assert!(
        a.read(|st| st.file(file).is_none() && st.tree.group(OpId::ROOT, "doomed").is_none()),
        "the tombstone and the file record are swept"
    );
    // b comes back.
    at(&w.nodes[1].store, late + 3 * 60_000);
    w.offline.clear();
    w.nodes[1].subscribed = true;
    sync_all(&mut w, 2);
    for (i, n) in w.nodes.iter().enumerate() {
        assert!(
            contents(&n.store).iter().any(|c| &c[..] == b"from-b"),
            "node {i} lost b's write: {:?}",
            n.store.read(|st| st.readdir(OpId::ROOT))
        );
        assert!(has(&n.store, "after-2"));
    }
    assert!(
        w.nodes[0].store.read(|st| st.late()) >= 1,
        "counted late on a"
    );
    assert!(
        has(&w.nodes[1].store, "doomed"),
        "b keeps it at its old place"
    );
}

#[test]
fn a_leave_reaches_the_members_and_a_leaver_is_then_refused_as_not_a_member() {
    let (mut w, ids) = team(2);
    let leaver = ids[2].public();
    w.nodes[2].store.leave().expect("a member leaves");
    w.feed(2, Event::Sync(Ticket(1)));
    for n in &w.nodes[..2] {
        assert!(n.store.read(|s| s.has_left(&leaver)));
    }
    // By gossip or by the pass: either way a member that holds the leave confirms it,
    // by reconciling or by refusing the leaver as no longer a member.
    let report = w.synced(2).pop().expect("answered");
    assert_eq!(
        report.peers as usize + report.disowned.len(),
        2,
        "{report:?}"
    );
    w.feed(2, Event::Sync(Ticket(2)));
    let again = w.synced(2).pop().expect("answered");
    assert_eq!(again.disowned.len(), 2, "{again:?}");
}

#[test]
fn a_deleted_store_starts_no_pass_of_its_own_but_still_answers() {
    let (mut w, _) = team(1);
    w.nodes[0].store.delete().expect("the admin deletes");
    w.feed(0, Event::Sync(Ticket(1)));
    assert!(
        w.nodes[1].store.is_deleted(),
        "the asked-for sync carried it"
    );
    let before = w.log.len();
    w.advance(LATER);
    let sent = w.log[before..]
        .iter()
        .any(|(_, a)| matches!(a, Action::Send { .. }));
    assert!(
        !sent,
        "no timed pass on a deleted store: {:?}",
        &w.log[before..]
    );
    w.feed(1, Event::Sync(Ticket(2)));
    let report = w.synced(1).pop().expect("answered");
    assert_eq!(report.peers, 1, "a deleted store still answers: {report:?}");
}

#[test]
fn a_network_change_syncs_at_once_instead_of_at_the_next_timer() {
    let (mut w, _) = team(1);
    // Idle passes back the schedule off to its longest interval.
    for k in 1..=8 {
        w.advance(k * LATER);
    }
    w.nodes[1].subscribed = false;
    write(&w.nodes[0].store, "while-away");
    w.run();
    assert!(!has(&w.nodes[1].store, "while-away"), "gossip was lost");
    assert!(
        w.nodes[1]
            .wake
            .is_some_and(|at| at > w.now + ANTI_ENTROPY_MIN),
        "the next timer pass is far off"
    );

    let actions = w.feed(1, Event::NetworkChanged);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::JoinPeers(p) if p == &vec![w.nodes[0].key])),
        "the live subscription redials its members: {actions:?}"
    );
    assert!(
        has(&w.nodes[1].store, "while-away"),
        "a round ran at once, at the same instant"
    );
    assert!(
        w.nodes[1]
            .wake
            .is_some_and(|at| at <= w.now + ANTI_ENTROPY_MIN),
        "the schedule starts again from its shortest interval"
    );

    w.feed(
        1,
        Event::Settings(Mode {
            paused: true,
            eager: false,
        }),
    );
    let actions = w.feed(1, Event::NetworkChanged);
    assert!(
        actions.is_empty(),
        "a paused replica stays silent: {actions:?}"
    );
}

/// A gossiped announcement of `chunks` stored ahead.
fn announcement(chunks: Vec<Bytes>) -> Bytes {
    pb::Gossip {
        kind: Some(gossip::Kind::Ahead(pb::Ahead { chunks })),
    }
    .encode_to_vec()
    .into()
}

const EAGER: Mode = Mode {
    paused: false,
    eager: true,
};

#[test]
fn chunks_stored_ahead_reach_an_eager_member_as_a_fetch_asking_their_writer_first() {
    let (mut w, _) = team(1);
    w.feed(1, Event::Settings(EAGER));
    w.log.clear();
    let chunks: Vec<Hash> = (0..AHEAD_MAX + 6).map(|i| Hash([i as u8; 32])).collect();
    w.feed(0, Event::StoredAhead(chunks.clone()));
    let broadcasts = w
        .log
        .iter()
        .filter(|(i, a)| *i == 0 && matches!(a, Action::Broadcast(_)))
        .count();
    assert_eq!(
        broadcasts,
        2,
        "{} chunks in messages of {AHEAD_MAX}",
        chunks.len()
    );
    let writer = w.nodes[0].key;
    let fetched: Vec<Hash> = w
        .log
        .iter()
        .filter_map(|(i, a)| match a {
            Action::Fetch(FetchOrder::Ahead { from, chunks }) if *i == 1 => {
                assert_eq!(*from, writer);
                Some(chunks.clone())
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(fetched, chunks);
}

#[test]
fn announcements_malformed_from_strangers_or_to_a_lazy_or_paused_replica_fetch_nothing() {
    let (mut w, _) = team(1);
    w.feed(0, Event::Settings(EAGER));
    let member = w.nodes[1].key;
    let hash = |b: u8| Bytes::from(vec![b; 32]);
    let gossip = |from, message| Event::Gossip { from, message };
    let acts = w.feed(0, gossip(member, announcement(vec![hash(1), hash(2)])));
    assert_eq!(
        acts,
        vec![Action::Fetch(FetchOrder::Ahead {
            from: member,
            chunks: vec![Hash([1; 32]), Hash([2; 32])],
        })]
    );
    let short = announcement(vec![hash(1), Bytes::from(vec![2; 31])]);
    let many = announcement(vec![hash(1); AHEAD_MAX + 1]);
    let empty = announcement(Vec::new());
    for message in [short, many, empty] {
        let acts = w.feed(0, gossip(member, message));
        assert!(acts.is_empty(), "{acts:?}");
    }
    let (stranger, _) = stranger_writes("x");
    let acts = w.feed(0, gossip(stranger.public(), announcement(vec![hash(1)])));
    assert!(acts.is_empty(), "{acts:?}");
    for mode in [
        Mode::default(),
        Mode {
            paused: true,
            eager: true,
        },
    ] {
        w.feed(0, Event::Settings(mode));
        let acts = w.feed(0, gossip(member, announcement(vec![hash(1)])));
        assert!(acts.is_empty(), "{mode:?}: {acts:?}");
    }
    let acts = w.feed(0, Event::StoredAhead(vec![Hash([3; 32])]));
    assert!(acts.is_empty(), "a paused replica announced: {acts:?}");
}
