//! The data plane as the core wants it, and as the shell has confirmed it.
//!
//! The map-cache says which peers and routes should exist ([`Dataplane::
//! want_peer`], [`Dataplane::want_route`]); this module turns the difference
//! between wanted and confirmed into [`DataplaneOp`]s, one in flight per
//! peer or route, in a safe order (a route only once its peer is in place,
//! a peer removed or narrowed only once its routes are gone), and retries
//! failed ones with backoff. What depends on the data plane waits here: held
//! packets are re-injected, and Map-Notify-Acks sent, only once the peers and
//! routes they need are confirmed.

use crate::counters::Counters;
use crate::io::{DataplaneFault, DataplaneOp, OpId, Output};
use crate::packet;
use lisp_wire::EidPrefix;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// A data peer as it should be programmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerSpec {
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) allowed: Vec<EidPrefix>,
    pub(crate) keepalive: Option<u16>,
    /// Bumped to have the peer removed and added again (a fresh handshake
    /// state).
    pub(crate) generation: u32,
}

/// Wanted and confirmed state of one thing in the data plane.
#[derive(Debug)]
struct Slot<T> {
    wanted: Option<T>,
    confirmed: Option<T>,
    /// The operation in flight and the state it sets when it succeeds.
    in_flight: Option<(OpId, Option<T>)>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl<T: Clone + PartialEq> Slot<T> {
    fn new() -> Self {
        Slot {
            wanted: None,
            confirmed: None,
            in_flight: None,
            failures: 0,
            retry_at: None,
        }
    }

    /// In sync: nothing to do and nothing in flight.
    fn settled(&self) -> bool {
        self.in_flight.is_none() && self.wanted == self.confirmed
    }

    /// May an operation start now?
    fn due(&self, now: Instant) -> bool {
        self.in_flight.is_none()
            && self.wanted != self.confirmed
            && self.retry_at.is_none_or(|t| now >= t)
    }

    /// When a failed operation is to be tried again: only while there is
    /// still something to do (what is wanted may have gone back to what is
    /// in place meanwhile).
    fn retry_due(&self) -> Option<Instant> {
        self.retry_at
            .filter(|_| self.in_flight.is_none() && self.wanted != self.confirmed)
    }

    fn unused(&self) -> bool {
        self.wanted.is_none() && self.confirmed.is_none() && self.in_flight.is_none()
    }
}

/// A generation counter for one-off operations (re-apply the listen port,
/// renew a control peer): wanted > confirmed means "do it (again)".
type Generation = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Peer([u8; 32]),
    Route(EidPrefix),
    ListenPort,
    ControlPeer(usize),
    ControlEndpoint(usize),
}

/// Held packets of one resolution, waiting for their peer and route.
#[derive(Debug)]
struct HeldForPrefix {
    prefix: EidPrefix,
    packets: Vec<Vec<u8>>,
    /// When the miss happened, for the cache-add metric.
    missed_at: Option<Instant>,
    deadline: Instant,
}

/// A Map-Notify-Ack waiting for the peers of its notify (a responder's route
/// only comes with the first handshake).
#[derive(Debug)]
struct HeldAck {
    nonce: u64,
    prefixes: Vec<EidPrefix>,
    transmit: Output,
    deadline: Instant,
}

/// A name answer waiting for the peers of the names' EIDs (so that the
/// application's first packet finds them), but never longer than
/// `deadline`: a DNS answer is not dropped.
#[derive(Debug)]
struct HeldAnswer {
    prefixes: Vec<EidPrefix>,
    answer: Output,
    deadline: Instant,
}

/// Retry timing of failed operations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) first: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    fn after(&self, failures: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(self.max)
    }
}

#[derive(Debug)]
pub(crate) struct Dataplane {
    peers: HashMap<[u8; 32], Slot<PeerSpec>>,
    routes: BTreeMap<EidPrefix, Slot<[u8; 32]>>,
    listen_port: Slot<Generation>,
    control_peers: Vec<Slot<Generation>>,
    /// The endpoint each map-server is reached at.
    control_endpoints: Vec<Slot<SocketAddr>>,
    in_flight: HashMap<OpId, Target>,
    next_id: u64,
    backoff: Backoff,
    /// How long held packets and acks wait for a data plane that keeps
    /// failing, before the packets are answered with ICMP and the ack is
    /// dropped (the map-server retransmits its notify).
    patience: Duration,
    held: Vec<HeldForPrefix>,
    acks: Vec<HeldAck>,
    answers: Vec<HeldAnswer>,
    /// Resolutions whose peer and route are confirmed: (prefix, miss time).
    pub(crate) programmed: VecDeque<(EidPrefix, Instant)>,
    /// Packets just re-injected, by prefix: kept by the caller as copies
    /// for a failover.
    pub(crate) reinjected: Vec<(EidPrefix, Vec<Vec<u8>>)>,
    /// Peers whose wanted state was just confirmed: a handshake attempt
    /// starts when its peer is really in place.
    pub(crate) confirmed: Vec<[u8; 32]>,
    /// Map-servers whose control peer was just (re)programmed: what went
    /// out on the old session since it died is sent again on the new one.
    pub(crate) control_renewed: Vec<usize>,
}

impl Dataplane {
    /// `endpoints`: where the shell set up each map-server's peer.
    pub(crate) fn new(endpoints: &[SocketAddr], backoff: Backoff, patience: Duration) -> Self {
        let map_servers = endpoints.len();
        let mut listen_port = Slot::new();
        listen_port.wanted = Some(0);
        listen_port.confirmed = Some(0);
        let control_peers = (0..map_servers)
            .map(|_| {
                let mut s = Slot::new();
                s.wanted = Some(0);
                s.confirmed = Some(0);
                s
            })
            .collect();
        let control_endpoints = endpoints
            .iter()
            .map(|e| {
                let mut s = Slot::new();
                s.wanted = Some(*e);
                s.confirmed = Some(*e);
                s
            })
            .collect();
        Dataplane {
            peers: HashMap::new(),
            routes: BTreeMap::new(),
            listen_port,
            control_peers,
            control_endpoints,
            in_flight: HashMap::new(),
            next_id: 0,
            backoff,
            patience,
            held: Vec::new(),
            acks: Vec::new(),
            answers: Vec::new(),
            programmed: VecDeque::new(),
            reinjected: Vec::new(),
            confirmed: Vec::new(),
            control_renewed: Vec::new(),
        }
    }

    // ---- what the map-cache wants -----------------------------------------

    /// The peer `key` should be programmed as `spec` (or not at all).
    pub(crate) fn want_peer(&mut self, key: [u8; 32], spec: Option<PeerSpec>) {
        let slot = self.peers.entry(key).or_insert_with(Slot::new);
        slot.wanted = spec;
        if slot.unused() {
            self.peers.remove(&key);
        }
    }

    /// `prefix` should be routed to the WireGuard interface, for peer
    /// `owner` (or not routed).
    pub(crate) fn want_route(&mut self, prefix: EidPrefix, owner: Option<[u8; 32]>) {
        let slot = self.routes.entry(prefix).or_insert_with(Slot::new);
        slot.wanted = owner;
        // A route goes to the interface, not to a peer: a new owner of a
        // route already in place needs no change in the kernel.
        if let (Some(w), Some(c)) = (slot.wanted, slot.confirmed) {
            if w != c && slot.in_flight.is_none() {
                slot.confirmed = Some(w);
            }
        }
        if slot.unused() {
            self.routes.remove(&prefix);
        }
    }

    pub(crate) fn want_listen_port_reapplied(&mut self) {
        if let Some(g) = self.listen_port.wanted.as_mut() {
            *g += 1;
        }
    }

    pub(crate) fn want_control_peer_renewed(&mut self, map_server: usize) {
        if let Some(g) = self
            .control_peers
            .get_mut(map_server)
            .and_then(|s| s.wanted.as_mut())
        {
            *g += 1;
        }
    }

    /// Whether the peer of `prefix` and its route are confirmed as wanted.
    pub(crate) fn ready(&self, prefix: &EidPrefix) -> bool {
        let Some(route) = self.routes.get(prefix) else {
            return false;
        };
        let Some(owner) = route.confirmed else {
            return false;
        };
        route.settled()
            && self.peers.get(&owner).is_some_and(|p| {
                p.settled()
                    && p.confirmed
                        .as_ref()
                        .is_some_and(|s| s.allowed.contains(prefix))
            })
    }

    /// Map-server `i` should be reached at `endpoint`.
    pub(crate) fn want_control_endpoint(&mut self, i: usize, endpoint: SocketAddr) {
        if let Some(s) = self.control_endpoints.get_mut(i) {
            s.wanted = Some(endpoint);
        }
    }

    /// Where map-server `i` is reached (as wanted).
    pub(crate) fn control_endpoint(&self, i: usize) -> Option<SocketAddr> {
        self.control_endpoints.get(i).and_then(|s| s.wanted)
    }

    /// Whether peer `key` is programmed as wanted.
    pub(crate) fn peer_settled(&self, key: &[u8; 32]) -> bool {
        self.peers
            .get(key)
            .is_some_and(|p| p.settled() && p.confirmed.is_some())
    }

    /// Whether the peer holding `prefix` is programmed as wanted (its route
    /// aside): what a Map-Notify-Ack waits for.
    pub(crate) fn peer_ready(&self, prefix: &EidPrefix) -> bool {
        self.peers.values().any(|p| {
            p.settled()
                && p.confirmed
                    .as_ref()
                    .is_some_and(|s| s.allowed.contains(prefix))
        })
    }

    /// Whether the data plane has caught up with everything wanted.
    pub(crate) fn settled(&self) -> bool {
        self.in_flight.is_empty()
            && self.peers.values().all(Slot::settled)
            && self.routes.values().all(Slot::settled)
            && self.listen_port.settled()
            && self.control_peers.iter().all(Slot::settled)
            && self.control_endpoints.iter().all(Slot::settled)
    }

    /// Peers programmed now (confirmed).
    pub(crate) fn confirmed_peers(&self) -> usize {
        self.peers
            .values()
            .filter(|s| s.confirmed.is_some())
            .count()
    }

    // ---- what waits for it ------------------------------------------------

    /// Held packets to re-inject once `prefix` is ready.
    pub(crate) fn hold_for(
        &mut self,
        now: Instant,
        prefix: EidPrefix,
        packets: Vec<Vec<u8>>,
        missed_at: Option<Instant>,
    ) {
        self.held.push(HeldForPrefix {
            prefix,
            packets,
            missed_at,
            deadline: now + self.patience,
        });
    }

    /// An ack to send once every prefix in `prefixes` is ready. A
    /// retransmitted notify (same nonce) does not queue a second ack.
    pub(crate) fn ack_when_ready(
        &mut self,
        now: Instant,
        nonce: u64,
        prefixes: Vec<EidPrefix>,
        transmit: Output,
    ) {
        if self.acks.iter().any(|a| a.nonce == nonce) {
            return;
        }
        self.acks.push(HeldAck {
            nonce,
            prefixes,
            transmit,
            deadline: now + self.patience,
        });
    }

    /// Gives out `answer` once the peers of `prefixes` are in place, or at
    /// `deadline` whatever their state.
    pub(crate) fn answer_when_ready(
        &mut self,
        prefixes: Vec<EidPrefix>,
        answer: Output,
        deadline: Instant,
    ) {
        self.answers.push(HeldAnswer {
            prefixes,
            answer,
            deadline,
        });
    }

    /// Releases what is ready and gives up on what waited too long.
    fn release(&mut self, now: Instant, out: &mut VecDeque<Output>, c: &mut Counters) {
        let held = std::mem::take(&mut self.held);
        for h in held {
            if self.ready(&h.prefix) {
                if let Some(at) = h.missed_at {
                    self.programmed.push_back((h.prefix, at));
                }
                for p in &h.packets {
                    c.reinjected_packets += 1;
                    out.push_back(Output::Reinject(p.clone()));
                }
                self.reinjected.push((h.prefix, h.packets));
            } else if now >= h.deadline {
                warn!(eid = %h.prefix, packets = h.packets.len(), "data plane not ready in time; answering held packets with ICMP unreachable");
                for p in &h.packets {
                    if let Some(icmp) = packet::unreachable(p) {
                        c.icmp_unreachable += 1;
                        out.push_back(Output::Deliver(icmp));
                    }
                }
            } else {
                self.held.push(h);
            }
        }
        let acks = std::mem::take(&mut self.acks);
        for a in acks {
            if a.prefixes.iter().all(|p| self.peer_ready(p)) {
                c.acks += 1;
                out.push_back(a.transmit);
            } else if now >= a.deadline {
                debug!(
                    nonce = a.nonce,
                    "data plane not ready in time; not acknowledging the Map-Notify"
                );
            } else {
                self.acks.push(a);
            }
        }
        let answers = std::mem::take(&mut self.answers);
        for a in answers {
            if now >= a.deadline || a.prefixes.iter().all(|p| self.peer_ready(p)) {
                out.push_back(a.answer);
            } else {
                self.answers.push(a);
            }
        }
    }

    // ---- carrying it out --------------------------------------------------

    fn op(&mut self, target: Target, op: DataplaneOp, out: &mut VecDeque<Output>) -> OpId {
        let id = OpId(self.next_id);
        self.next_id += 1;
        self.in_flight.insert(id, target);
        out.push_back(Output::Dataplane { id, op });
        id
    }

    /// Emits the operations that bring the data plane closer to what is
    /// wanted, then releases what became ready.
    pub(crate) fn reconcile(&mut self, now: Instant, out: &mut VecDeque<Output>, c: &mut Counters) {
        // Routes that must go, first: then no packet is sent to a peer that
        // is being removed or narrowed.
        let gone: Vec<EidPrefix> = self
            .routes
            .iter()
            .filter(|(_, s)| s.wanted.is_none() && s.due(now))
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            let id = self.op(Target::Route(p), DataplaneOp::DelRoute(p), out);
            self.routes.get_mut(&p).expect("listed").in_flight = Some((id, None));
        }
        // Peers.
        let due: Vec<[u8; 32]> = self
            .peers
            .iter()
            .filter(|(_, s)| s.due(now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let slot = &self.peers[&key];
            let keep = slot
                .wanted
                .as_ref()
                .map(|s| s.allowed.as_slice())
                .unwrap_or(&[]);
            let dropped_routed = slot.confirmed.as_ref().is_some_and(|c| {
                c.allowed.iter().any(|p| {
                    !keep.contains(p) && self.routes.get(p).is_some_and(|r| r.confirmed.is_some())
                })
            });
            if dropped_routed {
                continue; // its routes go first
            }
            let op = match &slot.wanted {
                Some(spec) => DataplaneOp::UpsertPeer {
                    key,
                    endpoint: spec.endpoint,
                    allowed: spec.allowed.clone(),
                    keepalive: spec.keepalive,
                    fresh: slot
                        .confirmed
                        .as_ref()
                        .is_some_and(|c| c.generation != spec.generation),
                },
                None => DataplaneOp::RemovePeer { key },
            };
            let wanted = slot.wanted.clone();
            let id = self.op(Target::Peer(key), op, out);
            self.peers.get_mut(&key).expect("listed").in_flight = Some((id, wanted));
        }
        // Routes to add, once their peer is in place.
        let add: Vec<(EidPrefix, [u8; 32])> = self
            .routes
            .iter()
            .filter(|(_, s)| s.due(now))
            .filter_map(|(p, s)| s.wanted.map(|owner| (*p, owner)))
            .filter(|(p, owner)| {
                self.peers
                    .get(owner)
                    .is_some_and(|s| s.confirmed.as_ref().is_some_and(|c| c.allowed.contains(p)))
            })
            .collect();
        for (p, owner) in add {
            let id = self.op(Target::Route(p), DataplaneOp::AddRoute(p), out);
            self.routes.get_mut(&p).expect("listed").in_flight = Some((id, Some(owner)));
        }
        // One-off operations.
        if self.listen_port.due(now) {
            let wanted = self.listen_port.wanted;
            let id = self.op(Target::ListenPort, DataplaneOp::ReapplyListenPort, out);
            self.listen_port.in_flight = Some((id, wanted));
        }
        for i in 0..self.control_endpoints.len() {
            if self.control_endpoints[i].due(now) {
                let Some(endpoint) = self.control_endpoints[i].wanted else {
                    continue;
                };
                let id = self.op(
                    Target::ControlEndpoint(i),
                    DataplaneOp::SetControlEndpoint {
                        map_server: i,
                        endpoint,
                    },
                    out,
                );
                self.control_endpoints[i].in_flight = Some((id, Some(endpoint)));
            }
        }
        for i in 0..self.control_peers.len() {
            if self.control_peers[i].due(now) {
                let Some(endpoint) = self.control_endpoints[i].wanted else {
                    continue;
                };
                let wanted = self.control_peers[i].wanted;
                let id = self.op(
                    Target::ControlPeer(i),
                    DataplaneOp::RenewControlPeer {
                        map_server: i,
                        endpoint,
                    },
                    out,
                );
                self.control_peers[i].in_flight = Some((id, wanted));
            }
        }
        self.release(now, out, c);
    }

    /// The outcome of an operation; `op` names it for the log.
    pub(crate) fn handle_result(
        &mut self,
        now: Instant,
        id: OpId,
        result: Result<(), DataplaneFault>,
        c: &mut Counters,
    ) {
        let Some(target) = self.in_flight.remove(&id) else {
            debug!(id = id.0, "result for no data-plane operation in flight");
            return;
        };
        let backoff = self.backoff;
        match target {
            Target::Peer(key) => {
                if let Some(slot) = self.peers.get_mut(&key) {
                    settle(slot, id, result, now, backoff, c, "peer");
                    if slot.settled() && slot.confirmed.is_some() {
                        self.confirmed.push(key);
                    }
                    if slot.unused() {
                        self.peers.remove(&key);
                    }
                }
            }
            Target::Route(p) => {
                if let Some(slot) = self.routes.get_mut(&p) {
                    settle(slot, id, result, now, backoff, c, "route");
                    if slot.unused() {
                        self.routes.remove(&p);
                    }
                }
            }
            Target::ListenPort => settle(
                &mut self.listen_port,
                id,
                result,
                now,
                backoff,
                c,
                "listen port",
            ),
            Target::ControlPeer(i) => {
                let ok = result.is_ok();
                if let Some(slot) = self.control_peers.get_mut(i) {
                    settle(slot, id, result, now, backoff, c, "control peer");
                    if ok && slot.settled() {
                        self.control_renewed.push(i);
                    }
                }
            }
            Target::ControlEndpoint(i) => {
                if let Some(slot) = self.control_endpoints.get_mut(i) {
                    settle(slot, id, result, now, backoff, c, "control endpoint");
                }
            }
        }
    }

    /// The next instant something here is due: a retry, or a deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.peers.values().filter_map(Slot::retry_due);
        let routes = self.routes.values().filter_map(Slot::retry_due);
        let ports = std::iter::once(&self.listen_port)
            .chain(&self.control_peers)
            .filter_map(Slot::retry_due)
            .chain(self.control_endpoints.iter().filter_map(Slot::retry_due));
        let held = self.held.iter().map(|h| h.deadline);
        let acks = self.acks.iter().map(|a| a.deadline);
        let answers = self.answers.iter().map(|a| a.deadline);
        peers
            .chain(routes)
            .chain(ports)
            .chain(held)
            .chain(acks)
            .chain(answers)
            .min()
    }
}

fn settle<T: Clone + PartialEq>(
    slot: &mut Slot<T>,
    id: OpId,
    result: Result<(), DataplaneFault>,
    now: Instant,
    backoff: Backoff,
    c: &mut Counters,
    what: &'static str,
) {
    let Some((in_flight, state)) = slot.in_flight.take() else {
        return;
    };
    if in_flight != id {
        slot.in_flight = Some((in_flight, state));
        return;
    }
    match result {
        Ok(()) => {
            if slot.failures > 0 {
                info!(
                    what,
                    failures = slot.failures,
                    "data-plane operation succeeded after failing"
                );
            }
            slot.confirmed = state;
            slot.failures = 0;
            slot.retry_at = None;
        }
        Err(DataplaneFault(e)) => {
            c.dataplane_failures += 1;
            slot.failures += 1;
            let wait = backoff.after(slot.failures);
            slot.retry_at = Some(now + wait);
            if slot.failures == 1 {
                warn!(what, error = %e, retry_ms = wait.as_millis() as u64, "data-plane operation failed; retrying");
            } else {
                debug!(what, error = %e, failures = slot.failures, "data-plane operation failed again");
            }
        }
    }
}
