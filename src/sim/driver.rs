//! The replica mode: each up node runs a [`Replica`] over its store, and this driver
//! carries out its actions in memory, as `net/` does over iroh. `Send` becomes the
//! peer's `Request`, `Reply`/`Refuse` the opener's `Answer`, `Finish` the acceptor's
//! `Closed`; conversation packets keep their order per link (a stream), and one that
//! is lost, cut by a partition or meets a crashed node breaks its conversation (the
//! opener gets a transport failure, the acceptor `Closed`). `Broadcast` reaches every
//! subscribed node over the lossy, duplicating, reordering gossip links; `Subscribe`
//! and healed links bring `NeighborUp`; `WakeAt` is kept per node on its skewed clock.
//! A joiner redeems its invite and bootstraps from the founder's witness log here, as
//! `net/client.rs` does, before its replica starts.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::proto::peer::{self as pb, request, response};
use crate::sim::net::{Msg, Packet};
use crate::sim::node::Life;
use crate::sim::World;
use crate::store::StoreEvent;
use crate::sync::join::{JoinAction, JoinError, Joiner};
use crate::sync::replica::{Action, Conv, Event, Failure, FetchOrder, Mode, Replica, Ticket};

/// Conversation ids a joiner's driver uses for redeem and bootstrap (the replica's own
/// ids count up from 0, so these never meet them).
const JOIN_CONV: u64 = 1 << 48;

impl World {
    /// Starts node `n`'s replica (its store is open).
    pub(crate) fn start_replica(&mut self, n: usize) {
        let Some(store) = self.store(n) else {
            return;
        };
        let node = &mut self.nodes[n];
        let now = node.wall_ms();
        let (replica, actions) = Replica::new(store, node.key, node.secret, Mode::default(), now);
        node.replica = Some(replica);
        node.wake_at = None;
        self.perform(n, actions);
    }

    /// Feeds `event` to node `n`'s replica, then everything that follows from it on
    /// this node (store events, local answers), carrying out every action.
    pub(crate) fn feed(&mut self, n: usize, event: Event) {
        let mut queue = VecDeque::from([(n, event)]);
        while let Some((n, event)) = queue.pop_front() {
            let node = &mut self.nodes[n];
            let now = node.wall_ms();
            let Some(replica) = node.replica.as_mut() else {
                continue;
            };
            let actions = replica.handle(event, now);
            for e in self.store_events(n) {
                queue.push_back((n, e));
            }
            for (m, e) in self.perform(n, actions) {
                queue.push_back((m, e));
            }
        }
    }

    /// Drains node `n`'s store events: sealed intentions are acknowledged writes, and
    /// both kinds become replica events.
    pub(crate) fn store_events(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        for e in self.nodes[n].events() {
            match e {
                StoreEvent::Sealed(list) => {
                    for b in &list {
                        self.ledger.ack(b);
                    }
                    out.push(Event::Sealed(list));
                }
                StoreEvent::Applied { files, .. } => out.push(Event::Applied(Some(files))),
            }
        }
        out
    }

    /// Carries out `actions` of node `n`; returns the events they cause at once.
    fn perform(&mut self, n: usize, actions: Vec<Action>) -> Vec<(usize, Event)> {
        let mut now_events = Vec::new();
        let me = self.nodes[n].key;
        let now = self.now();
        for action in actions {
            match action {
                Action::Send {
                    conv,
                    peer,
                    request,
                } => {
                    self.nodes[n].opened.insert(conv, peer);
                    let Some(to) = self.index_of(&peer) else {
                        now_events.push((n, transport_failure(conv, "unknown peer")));
                        continue;
                    };
                    let request = pb::Request {
                        store_id: Bytes::copy_from_slice(&self.id.0),
                        addrs: Vec::new(),
                        kind: Some(request),
                    };
                    self.stream(n, to, Msg::Request { conv, request });
                }
                Action::Finish(conv) => {
                    if let Some(peer) = self.nodes[n].opened.remove(&conv) {
                        if let Some(to) = self.index_of(&peer) {
                            self.stream(n, to, Msg::Closed { conv });
                        }
                    }
                }
                Action::Reply {
                    to,
                    conv,
                    response,
                    last,
                } => {
                    if let Some(t) = self.index_of(&to) {
                        self.stream(
                            n,
                            t,
                            Msg::Answer {
                                conv,
                                answer: Ok(response),
                            },
                        );
                    }
                    if !last {
                        now_events.push((n, Event::Drained { to, conv }));
                    }
                }
                Action::Refuse { to, conv, refusal } => {
                    if let Some(t) = self.index_of(&to) {
                        self.stream(
                            n,
                            t,
                            Msg::Answer {
                                conv,
                                answer: Err(Failure::Refused(refusal)),
                            },
                        );
                    }
                }
                Action::Subscribe { .. } => {
                    self.nodes[n].subscribed = true;
                    now_events.push((n, Event::GossipUp(true)));
                    for m in self.neighbours(n) {
                        now_events.push((n, Event::NeighborUp(self.nodes[m].key)));
                        now_events.push((m, Event::NeighborUp(me)));
                    }
                }
                Action::Unsubscribe => self.nodes[n].subscribed = false,
                Action::Broadcast(message) => {
                    for m in self.neighbours(n) {
                        let packet = Packet {
                            from: n,
                            to: m,
                            msg: Msg::Gossip(message.clone()),
                        };
                        self.net.send(&mut self.rng, now, packet);
                    }
                }
                Action::JoinPeers(peers) => {
                    for peer in peers {
                        if let Some(m) = self.index_of(&peer) {
                            if self.neighbours(n).contains(&m) {
                                now_events.push((n, Event::NeighborUp(peer)));
                                now_events.push((m, Event::NeighborUp(me)));
                            }
                        }
                    }
                }
                Action::SaveSecret(secret) => self.nodes[n].secret = Some(secret),
                Action::Fetch(FetchOrder::Ahead { .. }) => {}
                Action::Fetch(order) => {
                    let all = matches!(order, FetchOrder::All);
                    now_events.push((n, Event::Fetched { all, ok: true }));
                }
                Action::WakeAt(at) => self.nodes[n].wake_at = Some(at),
                Action::Synced(_, report) => {
                    let name = self.nodes[n].name.clone();
                    let failed: Vec<String> = report
                        .failed
                        .iter()
                        .map(|(k, why)| format!("{}: {why}", self.name_of(k)))
                        .collect();
                    self.note(format!(
                        "{name} synced with {} peers, pulled {} pushed {}{}",
                        report.peers,
                        report.total.pulled,
                        report.total.pushed,
                        if failed.is_empty() {
                            String::new()
                        } else {
                            format!("; failed {}", failed.join(", "))
                        }
                    ));
                }
                Action::Learn { .. } | Action::CutOff(_) | Action::Redial(_) => {}
            }
        }
        now_events
    }

    /// Subscribed nodes that `n` can reach now.
    fn neighbours(&self, n: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&m| {
                m != n
                    && self.nodes[m].subscribed
                    && self.nodes[m].replica.is_some()
                    && self.net.linked(n, m)
            })
            .collect()
    }

    /// The node with key `key`.
    fn index_of(&self, key: &crate::identity::PublicKey) -> Option<usize> {
        self.nodes.iter().position(|x| x.key == *key)
    }

    /// Sends a conversation packet: in order per link; a loss breaks the conversation.
    fn stream(&mut self, from: usize, to: usize, msg: Msg) {
        let now = self.now();
        let lost = self.net.lost(&mut self.rng);
        self.net
            .send_ordered(&mut self.rng, now, Packet { from, to, msg }, lost);
    }

    /// Delivers one packet of the replica mode (the caller checked nothing).
    pub(crate) fn deliver_replica(&mut self, p: Packet, lost: bool) {
        let reachable = !lost && self.net.linked(p.from, p.to) && self.is_running(p.to);
        match p.msg {
            Msg::Gossip(message) => {
                if reachable && self.nodes[p.to].subscribed {
                    let from = self.nodes[p.from].key;
                    self.feed(p.to, Event::Gossip { from, message });
                }
            }
            Msg::Request { conv, request } => {
                if reachable && self.nodes[p.to].replica.is_some() {
                    let from = self.nodes[p.from].key;
                    self.nodes[p.to].served.insert((from, conv));
                    self.feed(
                        p.to,
                        Event::Request {
                            from,
                            conv,
                            request,
                        },
                    );
                } else {
                    // A lost packet drops the stream; a peer down or cut off cannot be
                    // dialled.
                    let unreachable = !lost;
                    self.broken(p.from, conv, unreachable);
                }
            }
            Msg::Closed { conv } => {
                let from = self.nodes[p.from].key;
                if self.nodes[p.to].served.remove(&(from, conv)) {
                    self.feed(p.to, Event::Closed { from, conv });
                }
            }
            Msg::Answer { conv, answer } => {
                if !reachable {
                    if self.is_running(p.to) {
                        self.broken(p.to, conv, false);
                    }
                    let key = self.nodes[p.to].key;
                    if self.nodes[p.from].served.remove(&(key, conv)) {
                        self.feed(p.from, Event::Closed { from: key, conv });
                    }
                    return;
                }
                if conv.0 >= JOIN_CONV {
                    if self.nodes[p.to].boot_conv == Some(conv) {
                        self.join_answer(p.to, answer);
                    }
                } else if self.nodes[p.to].opened.contains_key(&conv) {
                    self.feed(p.to, Event::Answer { conv, answer });
                }
            }
            Msg::Push(_) | Msg::Redeem(_) | Msg::Redeemed => {}
        }
    }

    /// Whether node `n` runs (up, or joining).
    fn is_running(&self, n: usize) -> bool {
        matches!(
            self.nodes[n].life,
            Life::Up | Life::Joining(_) | Life::Bootstrapping
        )
    }

    /// Conversation `conv` of opener `n` broke: its peer was `unreachable`, or the
    /// stream dropped.
    fn broken(&mut self, n: usize, conv: Conv, unreachable: bool) {
        if conv.0 >= JOIN_CONV {
            self.nodes[n].boot_conv = None;
            return;
        }
        if self.nodes[n].opened.contains_key(&conv) {
            let event = if unreachable {
                Event::Answer {
                    conv,
                    answer: Err(Failure::Unreachable("peer unreachable".into())),
                }
            } else {
                transport_failure(conv, "connection lost")
            };
            self.feed(n, event);
        }
    }

    /// Node `n` crashed or left: every conversation with it breaks.
    pub(crate) fn hang_up(&mut self, n: usize) {
        let key = self.nodes[n].key;
        self.nodes[n].opened.clear();
        self.nodes[n].served.clear();
        self.nodes[n].subscribed = false;
        for m in 0..self.nodes.len() {
            if m == n {
                continue;
            }
            let convs: Vec<Conv> = self.nodes[m]
                .opened
                .iter()
                .filter(|(_, p)| **p == key)
                .map(|(c, _)| *c)
                .collect();
            for conv in convs {
                self.broken(m, conv, false);
            }
            let served: Vec<Conv> = self.nodes[m]
                .served
                .iter()
                .filter(|(p, _)| *p == key)
                .map(|(_, c)| *c)
                .collect();
            for conv in served {
                self.nodes[m].served.remove(&(key, conv));
                self.feed(m, Event::Closed { from: key, conv });
            }
        }
    }

    /// Links came back (a partition healed): subscribed nodes meet again.
    pub(crate) fn links_up(&mut self) {
        for n in 0..self.nodes.len() {
            if !self.nodes[n].subscribed || self.nodes[n].replica.is_none() {
                continue;
            }
            for m in self.neighbours(n) {
                let key = self.nodes[m].key;
                self.feed(n, Event::NeighborUp(key));
            }
        }
    }

    /// Wakes every replica whose time has come.
    pub(crate) fn wake_due(&mut self) {
        for n in 0..self.nodes.len() {
            let due = self.nodes[n]
                .wake_at
                .is_some_and(|at| at <= self.nodes[n].wall_ms());
            if due && self.nodes[n].replica.is_some() {
                self.nodes[n].wake_at = None;
                self.feed(n, Event::Wake);
            }
        }
    }

    /// The user asks node `n` for a sync pass.
    pub(crate) fn ask_sync(&mut self, n: usize) {
        self.tickets += 1;
        let ticket = Ticket(self.tickets);
        self.feed(n, Event::Sync(ticket));
    }

    /// A joiner's driver: asks its [`Joiner`] (made on the first call) for the request
    /// of its stage, one conversation at a time.
    pub(crate) fn join_request(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if let (Life::Joining(secret), None) = (node.life, &node.joiner) {
            node.joiner = Some(Joiner::redeem(secret, node.name.clone()));
        }
        if !matches!(node.life, Life::Joining(_) | Life::Bootstrapping) || node.boot_conv.is_some()
        {
            return;
        }
        if let Some(kind) = node.joiner.as_ref().and_then(Joiner::request) {
            self.join_send(n, kind);
        }
    }

    /// Opens a join conversation from node `n` to the founder with `kind`.
    fn join_send(&mut self, n: usize, kind: request::Kind) {
        self.joins_sent += 1;
        let conv = Conv(JOIN_CONV + self.joins_sent);
        self.nodes[n].boot_conv = Some(conv);
        let request = pb::Request {
            store_id: Bytes::copy_from_slice(&self.id.0),
            addrs: Vec::new(),
            kind: Some(kind),
        };
        self.stream(n, 0, Msg::Request { conv, request });
    }

    /// A joiner gets an answer from the founder and carries out its joiner's actions.
    fn join_answer(&mut self, n: usize, answer: Result<response::Kind, Failure>) {
        let name = self.nodes[n].name.clone();
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                self.nodes[n].boot_conv = None;
                self.note(format!("{name}: join request failed: {e}"));
                return;
            }
        };
        if self.nodes[n].life == Life::Bootstrapping && self.store(n).is_none() {
            return;
        }
        let Some(joiner) = self.nodes[n].joiner.as_mut() else {
            return;
        };
        let actions = match joiner.handle(answer) {
            Ok(actions) => actions,
            Err(e) => {
                self.nodes[n].boot_conv = None;
                match e {
                    JoinError::Refused(_) => self.note(format!("{name}: join request failed: {e}")),
                    _ => self.fail(format!("{name}: unexpected answer while joining: {e}")),
                }
                return;
            }
        };
        for action in actions {
            match action {
                JoinAction::Send(kind) => {
                    self.nodes[n].boot_conv = None;
                    self.join_send(n, kind);
                }
                JoinAction::Begin {
                    founder,
                    topic_secret,
                    ..
                } => {
                    self.nodes[n].secret = topic_secret;
                    if self.nodes[n].store.is_none() {
                        if let Err(e) = self.nodes[n].join(self.id, founder) {
                            self.fail(format!("{name}: join failed: {e}"));
                            return;
                        }
                    }
                    self.nodes[n].life = Life::Bootstrapping;
                    self.note(format!("{name} redeemed"));
                }
                // The joiner lives in the node's memory, which a crash keeps (its saved
                // progress, as `JoinState` is on disk in `net/`).
                JoinAction::Apply {
                    intentions,
                    attested,
                    ..
                } => {
                    let Some(store) = self.store(n) else { return };
                    for outcome in store.apply_remote_many(intentions) {
                        if let Err(e) = outcome {
                            if !crate::store::is_refusal(&e) {
                                self.fail(format!("{name}: bootstrap apply failed: {e}"));
                            }
                        }
                    }
                    // The founder serves every join (see `join_send`).
                    if let Some(a) = attested {
                        let founder = self.nodes[0].key;
                        if let Err(e) = store.attested(founder, a) {
                            self.note(format!("{name}: founder's attestation refused: {e}"));
                        }
                    }
                    if let Err(e) = store.flush() {
                        self.fail(format!("{name}: bootstrap flush failed: {e}"));
                    }
                    self.nodes[n].events();
                }
                JoinAction::Finish => {
                    self.nodes[n].boot_conv = None;
                    self.nodes[n].joiner = None;
                    self.nodes[n].life = Life::Up;
                    self.note(format!("{name} bootstrapped"));
                    self.start_replica(n);
                }
            }
        }
    }
}

/// An opener's transport failure on `conv`.
fn transport_failure(conv: Conv, why: &str) -> Event {
    Event::Answer {
        conv,
        answer: Err(Failure::Transport(why.to_string())),
    }
}
