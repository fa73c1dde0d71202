//! The map-server protocol core: a state machine with no I/O.
//!
//! Feed it datagrams with [`MapServer::handle_datagram`] and the clock with
//! [`MapServer::handle_timeout`]; take out what to send with
//! [`MapServer::poll_transmit`] and what to persist with
//! [`MapServer::poll_store`]. The shell must persist store operations before it
//! sends the transmits of the same step, so that an acknowledged registration
//! survives a crash.

use crate::counters::Counters;
use crate::policy::Policy;
use crate::registry::{Mapping, Origin, Registry, Rloc};
use lisp_wire::{
    auth, wireguard_locator, Action, Address, Authentication, EidPrefix, EidRecord, KeyId,
    MapNotify, MapRegister, MapReply, MapRequest, Message, RlocRecord, LISP_CONTROL_PORT,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

pub use lisp_wire::DEFAULT_WG_PORT;
/// How often expired registrations and subscriptions are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Register nonces remembered per peer, at most.
const NONCE_WINDOW: usize = 4096;
/// Control peers a map-server can tell apart: they are indexed by `u16`.
/// Peers beyond this are ignored (the shell refuses such a configuration).
pub const MAX_PEERS: usize = u16::MAX as usize + 1;

/// Which socket a datagram came in on, or goes out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// The control address inside the WireGuard control tunnel.
    Tunnel,
    /// The optional plain listener (benchmarks, keyless LISP peers).
    Plain,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub via: Via,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// A change to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    Put {
        prefix: EidPrefix,
        mapping: Mapping,
        peer: String,
    },
    Delete(EidPrefix),
}

/// Why a datagram was refused. Each maps to a counter and a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("not from a configured control peer on this socket")]
    UnknownPeer,
    #[error("authentication failed: {0}")]
    Auth(lisp_wire::AuthError),
    #[error("replayed nonce {0:#x}")]
    Replay(u64),
    #[error("{0}")]
    Unauthorised(String),
    #[error("unexpected message type {0}")]
    Unexpected(&'static str),
}

#[derive(Debug)]
struct Subscriber {
    peer: u16,
    expires: Instant,
}

/// A map-server-initiated Map-Notify awaiting its Ack.
#[derive(Debug)]
struct PendingNotify {
    peer: u16,
    transmit: Transmit,
    retransmits: u32,
    next: Instant,
    /// The prefix whose mapping it carries.
    about: EidPrefix,
    /// Proxy replies released by the Ack or at `hold_until`.
    held: Vec<Transmit>,
    hold_until: Instant,
}

#[derive(Debug, Default)]
struct NonceWindow {
    order: VecDeque<(Instant, u64)>,
    seen: HashSet<u64>,
}

impl NonceWindow {
    /// Records `nonce`; false when it was seen within `window`.
    fn check(&mut self, nonce: u64, now: Instant, window: Duration) -> bool {
        while let Some(&(t, n)) = self.order.front() {
            if now.saturating_duration_since(t) <= window && self.order.len() < NONCE_WINDOW {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&n);
        }
        self.seen.contains(&nonce)
    }

    fn remember(&mut self, nonce: u64, now: Instant) {
        if self.seen.insert(nonce) {
            self.order.push_back((now, nonce));
        }
    }
}

/// The map-server state machine.
#[derive(Debug)]
pub struct MapServer {
    policy: Policy,
    tunnel_peers: HashMap<IpAddr, u16>,
    plain_peers: HashMap<IpAddr, u16>,
    /// Peer index by name, for [`MapServer::restore`] at a million entries.
    peers_by_name: HashMap<String, u16>,
    registry: Registry,
    nonces: Vec<NonceWindow>,
    subscriptions: HashMap<EidPrefix, Vec<Subscriber>>,
    pending: HashMap<u64, PendingNotify>,
    transmits: VecDeque<Transmit>,
    store_ops: VecDeque<StoreOp>,
    next_sweep: Instant,
    nonce_gen: lisp_wire::Nonces,
    counters: Counters,
}

impl MapServer {
    /// A map-server with the static mappings of `policy` loaded. `seed`
    /// makes its nonces unpredictable (and tests reproducible).
    pub fn new(mut policy: Policy, now: Instant, seed: u64) -> Self {
        if policy.peers.len() > MAX_PEERS {
            tracing::error!(
                peers = policy.peers.len(),
                max = MAX_PEERS,
                "too many control peers; ignoring those beyond the limit"
            );
            policy.peers.truncate(MAX_PEERS);
        }
        let mut tunnel_peers = HashMap::new();
        let mut plain_peers = HashMap::new();
        let mut peers_by_name = HashMap::new();
        for (i, p) in policy.peers.iter().enumerate() {
            let table = if p.wg_key.is_some() {
                &mut tunnel_peers
            } else {
                &mut plain_peers
            };
            table.insert(p.control_address, i as u16);
            peers_by_name.insert(p.name.clone(), i as u16);
        }
        let mut registry = Registry::new();
        for (prefix, m) in &policy.static_mappings {
            registry.insert(
                *prefix,
                Mapping {
                    origin: Origin::Static,
                    expires: None,
                    ..m.clone()
                },
            );
        }
        let nonces = policy
            .peers
            .iter()
            .map(|_| NonceWindow::default())
            .collect();
        let counters = Counters {
            entries: registry.len() as u64,
            ..Counters::default()
        };
        MapServer {
            policy,
            tunnel_peers,
            plain_peers,
            peers_by_name,
            registry,
            nonces,
            subscriptions: HashMap::new(),
            pending: HashMap::new(),
            transmits: VecDeque::new(),
            store_ops: VecDeque::new(),
            next_sweep: now + SWEEP_INTERVAL,
            nonce_gen: lisp_wire::Nonces::new(seed),
            counters,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Number of resolvers remembered for `prefix` (for tests and status).
    pub fn subscribers(&self, prefix: &EidPrefix) -> usize {
        self.subscriptions.get(prefix).map_or(0, Vec::len)
    }

    /// Map-Notifies still waiting for their Ack.
    pub fn pending_notifies(&self) -> usize {
        self.pending.len()
    }

    /// Re-loads a persisted registration at start-up. It is checked against
    /// the current policy again: a peer removed from the configuration, or no
    /// longer authorised for the prefix or key, loses it.
    pub fn restore(
        &mut self,
        prefix: EidPrefix,
        peer_name: &str,
        mapping: Mapping,
        now: Instant,
    ) -> bool {
        let Some(idx) = self.peers_by_name.get(peer_name).map(|&i| i as usize) else {
            warn!(%prefix, peer = peer_name, "dropping persisted mapping: peer no longer configured");
            self.store_ops.push_back(StoreOp::Delete(prefix));
            return false;
        };
        let peer = &self.policy.peers[idx];
        // A static mapping configured since wins, as it would over a new
        // registration.
        let shadowed = self
            .registry
            .get(&prefix)
            .is_some_and(|m| m.origin == Origin::Static);
        if shadowed
            || !peer.permits(&prefix)
            || peer.wg_key != mapping.wg_key
            || !mapping.is_live(now)
        {
            debug!(%prefix, peer = peer_name, "dropping persisted mapping: expired, no longer authorised or now static");
            self.store_ops.push_back(StoreOp::Delete(prefix));
            return false;
        }
        self.registry.insert(
            prefix,
            Mapping {
                origin: Origin::Peer(idx as u16),
                ..mapping
            },
        );
        self.counters.entries = self.registry.len() as u64;
        true
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_store(&mut self) -> Option<StoreOp> {
        self.store_ops.pop_front()
    }

    /// The next instant [`MapServer::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pending = self.pending.values().map(|p| {
            if p.held.is_empty() {
                p.next
            } else {
                p.next.min(p.hold_until)
            }
        });
        pending.chain(std::iter::once(self.next_sweep)).min()
    }

    /// Handles one received datagram. Bad input is counted and logged, and
    /// never changes state.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, via: Via, bytes: &[u8]) {
        if let Err(refusal) = self.dispatch(now, from, via, bytes) {
            self.counters.count_refusal(&refusal);
            warn!(%from, ?via, reason = %refusal, "refused control message");
        }
    }

    fn dispatch(
        &mut self,
        now: Instant,
        from: SocketAddr,
        via: Via,
        bytes: &[u8],
    ) -> Result<(), Refusal> {
        let msg = lisp_wire::parse(bytes).map_err(|e| Refusal::Malformed(e.to_string()))?;
        match msg {
            Message::MapRegister(reg) => {
                self.counters.registers_received += 1;
                let peer = self.identify(from, via)?;
                self.handle_map_register(now, from, via, peer, bytes, reg)
            }
            Message::MapNotifyAck(ack) => {
                let peer = self.identify(from, via)?;
                self.handle_map_notify_ack(now, peer, bytes, ack)
            }
            Message::MapRequest(req) => {
                self.counters.requests += 1;
                self.handle_map_request(now, from, via, from.port(), req)
            }
            Message::Ecm(ecm) => match *ecm.message {
                Message::MapRequest(req) => {
                    self.counters.requests += 1;
                    self.handle_map_request(now, from, via, ecm.inner.src_port, req)
                }
                other => Err(Refusal::Unexpected(other.name())),
            },
            other => Err(Refusal::Unexpected(other.name())),
        }
    }

    /// The control peer a datagram is from. WireGuard peers are only heard
    /// inside the tunnel (where the source address proves the key); keyless
    /// peers only on the plain listener.
    fn identify(&self, from: SocketAddr, via: Via) -> Result<u16, Refusal> {
        let table = match via {
            Via::Tunnel => &self.tunnel_peers,
            Via::Plain => &self.plain_peers,
        };
        table.get(&from.ip()).copied().ok_or(Refusal::UnknownPeer)
    }

    fn handle_map_register(
        &mut self,
        now: Instant,
        from: SocketAddr,
        via: Via,
        peer_idx: u16,
        bytes: &[u8],
        reg: MapRegister,
    ) -> Result<(), Refusal> {
        let peer = &self.policy.peers[peer_idx as usize];
        auth::verify(bytes, &peer.site_key).map_err(Refusal::Auth)?;
        let lifetime = self.policy.registration_lifetime;
        if self.nonces[peer_idx as usize].check(reg.nonce, now, lifetime) {
            return Err(Refusal::Replay(reg.nonce));
        }

        // Check every record before touching anything: all or none.
        let mut accepted = Vec::with_capacity(reg.records.len());
        for rec in &reg.records {
            let prefix =
                EidPrefix::of_record(rec).map_err(|e| Refusal::Malformed(e.to_string()))?;
            if !peer.permits(&prefix) {
                return Err(Refusal::Unauthorised(format!(
                    "peer {} may not register {prefix}",
                    peer.name
                )));
            }
            if let Some(existing) = self.registry.get(&prefix) {
                if existing.is_live(now) && existing.origin != Origin::Peer(peer_idx) {
                    return Err(Refusal::Unauthorised(format!(
                        "{prefix} is registered by another peer"
                    )));
                }
            }
            let key = rec.wg_key();
            if key != peer.wg_key {
                return Err(Refusal::Unauthorised(format!(
                    "record for {prefix} carries {} key, not the key configured for peer {}",
                    if key.is_some() { "a different" } else { "no" },
                    peer.name
                )));
            }
            if rec.ttl == 0 {
                accepted.push((prefix, None));
                continue;
            }
            let rlocs: Box<[Rloc]> = rec
                .rlocs
                .iter()
                .filter_map(|r| {
                    let info = r.info()?;
                    Some(Rloc {
                        addr: info.rloc,
                        port: info.port,
                        priority: r.priority,
                        weight: r.weight,
                    })
                })
                .collect();
            if rlocs.is_empty() {
                return Err(Refusal::Malformed(format!(
                    "record for {prefix} has no usable locator"
                )));
            }
            let mapping = Mapping {
                rlocs,
                wg_key: key,
                origin: Origin::Peer(peer_idx),
                ttl_minutes: rec.ttl.min(self.policy.max_ttl_minutes),
                map_version: rec.map_version,
                expires: Some(now + lifetime),
            };
            accepted.push((prefix, Some(mapping)));
        }

        self.nonces[peer_idx as usize].remember(reg.nonce, now);
        let peer_name = peer.name.clone();
        let site_key = peer.site_key.clone();
        for (prefix, mapping) in accepted {
            match mapping {
                Some(mapping) => {
                    let old = self.registry.insert(prefix, mapping.clone());
                    let moved = old
                        .as_ref()
                        .is_some_and(|o| o.rlocs != mapping.rlocs || o.wg_key != mapping.wg_key);
                    if old.is_none() || moved {
                        info!(eid = %prefix, peer = %peer_name, rloc = ?mapping.rlocs.first().map(|r| r.addr), "registered");
                    }
                    self.store_ops.push_back(StoreOp::Put {
                        prefix,
                        mapping,
                        peer: peer_name.clone(),
                    });
                    if moved && self.policy.push_moves {
                        self.push_to_subscribers(now, prefix, peer_idx);
                    }
                }
                None => {
                    if self.registry.remove(&prefix).is_some() {
                        info!(eid = %prefix, peer = %peer_name, "deregistered");
                        self.store_ops.push_back(StoreOp::Delete(prefix));
                    }
                }
            }
            self.counters.registrations += 1;
        }
        self.counters.entries = self.registry.len() as u64;

        if reg.want_map_notify {
            let notify = MapNotify {
                nonce: reg.nonce,
                auth: Authentication::unsigned(reg.auth.key_id),
                records: reg.records,
                xtr_site: reg.xtr_site,
            };
            match notify.encode_signed_notify(&site_key) {
                Ok(payload) => {
                    self.counters.notifies += 1;
                    self.transmits.push_back(Transmit {
                        via,
                        dst: from,
                        payload,
                    });
                }
                Err(e) => warn!(error = %e, "cannot encode Map-Notify for a register we accepted"),
            }
        }
        Ok(())
    }

    fn handle_map_notify_ack(
        &mut self,
        now: Instant,
        peer_idx: u16,
        bytes: &[u8],
        ack: MapNotify,
    ) -> Result<(), Refusal> {
        let peer = &self.policy.peers[peer_idx as usize];
        auth::verify(bytes, &peer.site_key).map_err(Refusal::Auth)?;
        match self.pending.get(&ack.nonce) {
            Some(p) if p.peer == peer_idx => {}
            _ => {
                // A late duplicate Ack after a retransmission is normal.
                debug!(nonce = ack.nonce, peer = %peer.name, "Map-Notify-Ack for no pending notify");
                return Ok(());
            }
        }
        let Some(p) = self.pending.remove(&ack.nonce) else {
            return Ok(());
        };
        self.counters.notify_acks += 1;
        debug!(peer = %peer.name, eid = %p.about, waited_ms = ?now.checked_duration_since(p.next), "Map-Notify acknowledged");
        self.release(p.held);
        Ok(())
    }

    fn release(&mut self, held: Vec<Transmit>) {
        for t in held {
            self.counters.replies += 1;
            self.transmits.push_back(t);
        }
    }

    fn handle_map_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        via: Via,
        reply_port: u16,
        req: MapRequest,
    ) -> Result<(), Refusal> {
        let requester = match via {
            Via::Tunnel => Some(self.identify(from, via)?),
            Via::Plain => self.plain_peers.get(&from.ip()).copied(),
        };
        if req.records.is_empty() {
            return Err(Refusal::Malformed("Map-Request without records".into()));
        }
        let dst = SocketAddr::new(self.reply_address(from, via, &req), reply_port);

        let mut records = Vec::with_capacity(req.records.len());
        let mut notify_targets = Vec::new();
        for r in &req.records {
            let asked = EidPrefix::from_wire(&r.eid, r.eid_mask_len)
                .map_err(|e| Refusal::Malformed(e.to_string()))?;
            match self.registry.lookup(asked.iid, asked.addr(), now) {
                Some((prefix, m)) => {
                    records.push(mapping_record(prefix, m));
                    if let (Some(req_peer), Origin::Peer(owner)) = (requester, m.origin) {
                        if owner != req_peer {
                            notify_targets.push((prefix, owner));
                        }
                    }
                }
                None => {
                    let hole = self.registry.uncovered_prefix(asked.iid, asked.addr());
                    self.counters.negative_replies += 1;
                    debug!(eid = %asked, covering = %hole, "negative Map-Reply");
                    records.push(EidRecord::negative(
                        hole,
                        self.policy.negative_ttl_minutes,
                        Action::NativelyForward,
                    ));
                }
            }
        }
        let reply = Message::MapReply(MapReply {
            probe: false,
            echo_nonce: false,
            security: false,
            nonce: req.nonce,
            records,
        });
        let payload = reply
            .encode()
            .map_err(|e| Refusal::Malformed(format!("cannot encode reply: {e}")))?;
        let reply = Transmit { via, dst, payload };

        let mut held = Some(reply);
        if let Some(req_peer) = requester {
            let ttl_of = |p: &EidPrefix, reg: &Registry| reg.get(p).map_or(1, |m| m.ttl_minutes);
            for (dest_prefix, owner) in notify_targets {
                // The requester now resolves dest_prefix: remember it, so a
                // move of the destination is pushed to it.
                let ttl = ttl_of(&dest_prefix, &self.registry);
                self.subscribe(dest_prefix, req_peer, now, ttl);
                if let Some(src_prefix) = self.requester_prefix(req_peer, &req.source_eid, now) {
                    // The destination learns the requester: it resolves it too.
                    let ttl = ttl_of(&src_prefix, &self.registry);
                    self.subscribe(src_prefix, owner, now, ttl);
                    let hold = held.take();
                    self.send_notify(now, owner, src_prefix, hold);
                }
            }
        }
        if let Some(reply) = held {
            self.counters.replies += 1;
            self.transmits.push_back(reply);
        }
        Ok(())
    }

    /// Where the reply goes. Inside the tunnel, always back to the source
    /// (cryptokey routing proved it; anything else would be a reflector).
    /// On the plain listener, to the first ITR-RLOC of the source's family.
    fn reply_address(&self, from: SocketAddr, via: Via, req: &MapRequest) -> IpAddr {
        match via {
            Via::Tunnel => from.ip(),
            Via::Plain => req
                .itr_rlocs
                .iter()
                .filter_map(Address::ip)
                .find(|a| a.is_ipv4() == from.ip().is_ipv4())
                .unwrap_or(from.ip()),
        }
    }

    /// The requester's own registered prefix holding the request's source
    /// EID. The mapping sent to the destination always comes from here,
    /// never from what the request claims.
    fn requester_prefix(&self, peer: u16, source_eid: &Address, now: Instant) -> Option<EidPrefix> {
        let probe = EidPrefix::from_wire(
            source_eid,
            if source_eid.innermost_ip()?.is_ipv4() {
                32
            } else {
                128
            },
        )
        .ok()?;
        let (prefix, m) = self.registry.lookup(probe.iid, probe.addr(), now)?;
        (m.origin == Origin::Peer(peer)).then_some(prefix)
    }

    fn subscribe(&mut self, prefix: EidPrefix, peer: u16, now: Instant, ttl_minutes: u32) {
        let expires = now + Duration::from_secs(60 * ttl_minutes.max(1) as u64);
        let subs = self.subscriptions.entry(prefix).or_default();
        match subs.iter_mut().find(|s| s.peer == peer) {
            Some(s) => s.expires = s.expires.max(expires),
            None => subs.push(Subscriber { peer, expires }),
        }
    }

    /// Sends `about`'s current mapping to `peer` in a Map-Notify, retransmitted
    /// until acknowledged; `held` is released on the Ack or at the hold time.
    fn send_notify(
        &mut self,
        now: Instant,
        peer_idx: u16,
        about: EidPrefix,
        held: Option<Transmit>,
    ) {
        let Some(mapping) = self.registry.get(&about) else {
            return;
        };
        let record = mapping_record(about, mapping);
        let nonce = self.nonce_gen.next_nonce();
        let peer = &self.policy.peers[peer_idx as usize];
        let notify = MapNotify {
            nonce,
            auth: Authentication::unsigned(KeyId::HmacSha256),
            records: vec![record],
            xtr_site: None,
        };
        let payload = match notify.encode_signed_notify(&peer.site_key) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot encode Map-Notify");
                if let Some(h) = held {
                    self.release(vec![h]);
                }
                return;
            }
        };
        let via = if peer.wg_key.is_some() {
            Via::Tunnel
        } else {
            Via::Plain
        };
        let transmit = Transmit {
            via,
            dst: SocketAddr::new(peer.control_address, LISP_CONTROL_PORT),
            payload,
        };
        debug!(peer = %peer.name, eid = %about, nonce, "Map-Notify to correspondent");
        self.counters.notifies += 1;
        self.transmits.push_back(transmit.clone());
        self.pending.insert(
            nonce,
            PendingNotify {
                peer: peer_idx,
                transmit,
                retransmits: 0,
                next: now + self.policy.notify.first_retransmit,
                about,
                held: held.into_iter().collect(),
                hold_until: now + self.policy.notify.reply_hold,
            },
        );
    }

    /// Pushes `prefix`'s new mapping to every live subscriber but its owner.
    fn push_to_subscribers(&mut self, now: Instant, prefix: EidPrefix, owner: u16) {
        let targets: Vec<u16> = self
            .subscriptions
            .get(&prefix)
            .map(|subs| {
                subs.iter()
                    .filter(|s| s.expires > now && s.peer != owner)
                    .map(|s| s.peer)
                    .collect()
            })
            .unwrap_or_default();
        for peer in targets {
            self.counters.pushes += 1;
            // A newer push supersedes an older one about the same prefix.
            self.pending
                .retain(|_, p| !(p.peer == peer && p.about == prefix && p.held.is_empty()));
            self.send_notify(now, peer, prefix, None);
        }
    }

    /// Retransmits, releases held replies and expires state.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timing = self.policy.notify;
        let mut released = Vec::new();
        let mut given_up = Vec::new();
        for (&nonce, p) in self.pending.iter_mut() {
            if !p.held.is_empty() && now >= p.hold_until {
                released.append(&mut p.held);
            }
            if now >= p.next {
                if p.retransmits >= timing.max_retransmits {
                    given_up.push(nonce);
                    continue;
                }
                p.retransmits += 1;
                p.next = now + timing.first_retransmit * 2u32.pow(p.retransmits.min(16));
                self.counters.notify_retransmits += 1;
                self.transmits.push_back(p.transmit.clone());
            }
        }
        for nonce in given_up {
            if let Some(p) = self.pending.remove(&nonce) {
                self.counters.notify_giveups += 1;
                warn!(peer = %self.policy.peers[p.peer as usize].name, eid = %p.about, "Map-Notify never acknowledged; giving up");
                released.extend(p.held);
            }
        }
        self.release(released);

        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
            for prefix in self.registry.sweep(now) {
                info!(eid = %prefix, "registration expired");
                self.counters.expired += 1;
                self.store_ops.push_back(StoreOp::Delete(prefix));
            }
            self.subscriptions.retain(|_, subs| {
                subs.retain(|s| s.expires > now);
                !subs.is_empty()
            });
            self.counters.entries = self.registry.len() as u64;
        }
    }
}

/// The EID-record a resolver gets for a mapping: WireGuard locators (key and
/// port) for keyed mappings, plain locators for keyless ones.
pub fn mapping_record(prefix: EidPrefix, m: &Mapping) -> EidRecord {
    let rlocs = m
        .rlocs
        .iter()
        .map(|r| {
            let locator = match m.wg_key {
                Some(key) => wireguard_locator(
                    SocketAddr::new(r.addr, r.port.unwrap_or(DEFAULT_WG_PORT)),
                    key,
                ),
                None => Address::from(r.addr),
            };
            RlocRecord::new(r.priority, r.weight, locator)
        })
        .collect();
    EidRecord {
        map_version: m.map_version,
        ..EidRecord::new(prefix, m.ttl_minutes, rlocs)
    }
}
