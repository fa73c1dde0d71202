//! The xtr protocol core: a state machine with no I/O.
//!
//! Inputs: packets captured by the miss TUN ([`Xtr::handle_miss`]), control
//! messages from the map-servers ([`Xtr::handle_control`]), the node's current
//! RLOCs ([`Xtr::handle_rlocs`]), WireGuard peer statistics
//! ([`Xtr::handle_peer_stats`]) and the clock ([`Xtr::handle_timeout`]).
//! Output: one ordered queue of [`Output`]s. The shell must carry them out in
//! order: a peer is programmed before the held packets are re-injected, and
//! before the Map-Notify-Ack that tells the map-server it is in place.

use crate::packet;
use crate::policy::{LocalRloc, XtrPolicy};
use lisp_wire::{
    auth, wireguard_locator, Authentication, EidPrefix, EidRecord, EidTable, KeyId, MapNotify,
    MapRegister, MapReply, MapRequest, Message, RlocRecord, LISP_CONTROL_PORT,
};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How often cache expiry is checked.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Consecutive unanswered registrations after which a map-server is down.
const DOWN_AFTER_MISSES: u32 = 4;
/// A map-server that has not answered a Map-Request for this long is probed
/// with a registration (another map-server may have answered it): a dead
/// map-server is noticed at the next resolution, not the next refresh.
const PROBE_AFTER: Duration = Duration::from_secs(1);

/// Something for the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A control message to a map-server (its control address, port 4342).
    Transmit {
        dst: SocketAddr,
        payload: Vec<u8>,
    },
    /// Add or update a data peer; `allowed` is its complete allowed-ips set.
    UpsertPeer {
        key: [u8; 32],
        endpoint: SocketAddr,
        allowed: Vec<EidPrefix>,
    },
    RemovePeer {
        key: [u8; 32],
    },
    /// Route a prefix to the WireGuard interface (more specific than the
    /// miss route).
    AddRoute(EidPrefix),
    DelRoute(EidPrefix),
    /// Send a held packet again, so the kernel routes it through the new peer.
    Reinject(Vec<u8>),
    /// Hand a packet (an ICMP error) to the local stack through the TUN.
    Deliver(Vec<u8>),
    /// Our address changed: wireguard-go needs its port set again to send.
    ReapplyListenPort,
    /// Re-create the WireGuard peer of this map-server (index in the
    /// policy), dropping its session: after a map-server restart the old
    /// session is dead, and WireGuard alone would only notice after ~15 s.
    RenewControlPeer {
        map_server: usize,
    },
}

/// Traffic counters of one data peer, as read from WireGuard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStats {
    pub key: [u8; 32],
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Time since the last handshake, if there was one.
    pub since_handshake: Option<Duration>,
}

/// Counters exported as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub misses: u64,
    pub requests: u64,
    pub request_retransmits: u64,
    pub request_timeouts: u64,
    pub replies: u64,
    pub negative_replies: u64,
    pub held_packets: u64,
    pub dropped_packets: u64,
    pub reinjected_packets: u64,
    pub icmp_unreachable: u64,
    pub notifies: u64,
    pub acks: u64,
    pub registers: u64,
    pub peers_added: u64,
    pub peers_updated: u64,
    pub peers_removed: u64,
    pub auth_failures: u64,
    pub malformed: u64,
    pub unknown_senders: u64,
    pub unusable_mappings: u64,
}

impl Counters {
    /// (name, help, kind, value) for every counter.
    pub fn metrics(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        vec![
            (
                "lispwg_xtr_misses_total",
                "packets that started a resolution",
                "counter",
                self.misses,
            ),
            (
                "lispwg_xtr_map_requests_total",
                "Map-Requests sent (to each map-server)",
                "counter",
                self.requests,
            ),
            (
                "lispwg_xtr_request_retransmits_total",
                "Map-Request retransmissions",
                "counter",
                self.request_retransmits,
            ),
            (
                "lispwg_xtr_request_timeouts_total",
                "resolutions no map-server answered",
                "counter",
                self.request_timeouts,
            ),
            (
                "lispwg_xtr_map_replies_total",
                "Map-Replies accepted",
                "counter",
                self.replies,
            ),
            (
                "lispwg_xtr_negative_replies_total",
                "negative Map-Replies",
                "counter",
                self.negative_replies,
            ),
            (
                "lispwg_xtr_held_packets_total",
                "packets held while resolving",
                "counter",
                self.held_packets,
            ),
            (
                "lispwg_xtr_dropped_packets_total",
                "packets dropped (limits, garbage, own EID)",
                "counter",
                self.dropped_packets,
            ),
            (
                "lispwg_xtr_reinjected_packets_total",
                "held packets re-injected",
                "counter",
                self.reinjected_packets,
            ),
            (
                "lispwg_xtr_icmp_unreachable_total",
                "ICMP unreachable errors sent to local senders",
                "counter",
                self.icmp_unreachable,
            ),
            (
                "lispwg_xtr_map_notifies_total",
                "Map-Notifies received",
                "counter",
                self.notifies,
            ),
            (
                "lispwg_xtr_notify_acks_total",
                "Map-Notify-Acks sent",
                "counter",
                self.acks,
            ),
            (
                "lispwg_xtr_map_registers_total",
                "Map-Registers sent",
                "counter",
                self.registers,
            ),
            (
                "lispwg_xtr_peers_added_total",
                "data peers programmed",
                "counter",
                self.peers_added,
            ),
            (
                "lispwg_xtr_peers_updated_total",
                "data peers updated in place (moves)",
                "counter",
                self.peers_updated,
            ),
            (
                "lispwg_xtr_peers_removed_total",
                "data peers removed",
                "counter",
                self.peers_removed,
            ),
            (
                "lispwg_xtr_auth_failures_total",
                "Map-Notifies with a bad HMAC",
                "counter",
                self.auth_failures,
            ),
            (
                "lispwg_xtr_malformed_total",
                "malformed or unexpected control messages",
                "counter",
                self.malformed,
            ),
            (
                "lispwg_xtr_unknown_senders_total",
                "control messages from no configured map-server",
                "counter",
                self.unknown_senders,
            ),
            (
                "lispwg_xtr_unusable_mappings_total",
                "mappings without a usable WireGuard key or locator",
                "counter",
                self.unusable_mappings,
            ),
        ]
    }
}

#[derive(Debug, Clone)]
struct CacheEntry {
    /// `None` for a negative entry.
    peer: Option<([u8; 32], SocketAddr)>,
    expires: Instant,
    refreshing: bool,
}

#[derive(Debug)]
struct Peer {
    endpoint: SocketAddr,
    prefixes: BTreeSet<EidPrefix>,
    rx: u64,
    tx: u64,
    last_active: Instant,
}

#[derive(Debug)]
struct Pending {
    nonce: u64,
    source: EidPrefix,
    held: Vec<Vec<u8>>,
    held_bytes: usize,
    retransmits: u32,
    next: Instant,
    /// When the miss that started this resolution was read (`None` for a
    /// background refresh): for the cache-add metric.
    missed_at: Option<Instant>,
}

#[derive(Debug)]
struct MapServerState {
    /// Nonce of the last Map-Register not yet confirmed.
    outstanding: Option<u64>,
    /// Wait before the next retry while unconfirmed.
    backoff: Duration,
    next_register: Instant,
    up: bool,
    misses: u32,
    confirmed_once: bool,
    /// When we first asked it something it has not answered yet.
    unanswered_since: Option<Instant>,
}

/// Status of one map-server, for `xtr status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapServerStatus {
    pub name: String,
    pub up: bool,
    pub registered: bool,
}

/// One map-cache entry, for `xtr status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatus {
    pub prefix: EidPrefix,
    pub peer: Option<([u8; 32], SocketAddr)>,
    pub expires_in: Duration,
}

/// The xtr state machine.
#[derive(Debug)]
pub struct Xtr {
    policy: XtrPolicy,
    rlocs: Vec<LocalRloc>,
    /// False until the first RLOC report (start-up is not a move).
    rlocs_known: bool,
    servers: Vec<MapServerState>,
    cache: EidTable<CacheEntry>,
    peers: HashMap<[u8; 32], Peer>,
    pending: HashMap<IpAddr, Pending>,
    by_nonce: HashMap<u64, IpAddr>,
    outputs: VecDeque<Output>,
    /// Miss-started resolutions whose peer and route are queued in
    /// `outputs`: (prefix, instant of the miss). See [`Xtr::poll_programmed`].
    programmed: VecDeque<(EidPrefix, Instant)>,
    next_housekeeping: Instant,
    nonces: lisp_wire::Nonces,
    counters: Counters,
}

impl Xtr {
    pub fn new(policy: XtrPolicy, now: Instant, seed: u64) -> Self {
        let servers = policy
            .map_servers
            .iter()
            .map(|_| MapServerState {
                outstanding: None,
                backoff: policy.register_retry_first,
                next_register: now,
                up: false,
                misses: 0,
                confirmed_once: false,
                unanswered_since: None,
            })
            .collect();
        Xtr {
            policy,
            rlocs: Vec::new(),
            rlocs_known: false,
            servers,
            cache: EidTable::new(),
            peers: HashMap::new(),
            pending: HashMap::new(),
            by_nonce: HashMap::new(),
            outputs: VecDeque::new(),
            programmed: VecDeque::new(),
            next_housekeeping: now + HOUSEKEEPING,
            nonces: lisp_wire::Nonces::new(seed),
            counters: Counters::default(),
        }
    }

    pub fn policy(&self) -> &XtrPolicy {
        &self.policy
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// A resolution that started with a map-cache miss at `.1` and whose
    /// peer and route for prefix `.0` are among the outputs queued so far.
    /// Once the shell has carried those out, its clock minus `.1` is the
    /// time from the miss to the peer being programmed (the cache-add time
    /// the thesis measured). Informational: ignoring it changes nothing.
    pub fn poll_programmed(&mut self) -> Option<(EidPrefix, Instant)> {
        self.programmed.pop_front()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The endpoint programmed for a data peer.
    pub fn peer_endpoint(&self, key: &[u8; 32]) -> Option<SocketAddr> {
        self.peers.get(key).map(|p| p.endpoint)
    }

    pub fn map_servers(&self) -> Vec<MapServerStatus> {
        self.policy
            .map_servers
            .iter()
            .zip(&self.servers)
            .map(|(m, s)| MapServerStatus {
                name: m.name.clone(),
                up: s.up,
                registered: s.confirmed_once,
            })
            .collect()
    }

    pub fn cache_entries(&self, now: Instant) -> Vec<CacheStatus> {
        let mut v: Vec<_> = self
            .cache
            .iter()
            .map(|(prefix, e)| CacheStatus {
                prefix,
                peer: e.peer,
                expires_in: e.expires.saturating_duration_since(now),
            })
            .collect();
        v.sort_by_key(|c| c.prefix);
        v
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let probes = self
            .servers
            .iter()
            .filter_map(|s| s.unanswered_since.map(|t| t + PROBE_AFTER));
        let servers = self.servers.iter().map(|s| s.next_register).chain(probes);
        let pending = self.pending.values().map(|p| p.next);
        servers
            .chain(pending)
            .chain(std::iter::once(self.next_housekeeping))
            .min()
    }

    /// Uniform in [0.9, 1.1): spreads refreshes of many nodes apart.
    fn jitter(&mut self, d: Duration) -> Duration {
        let f = 0.9 + (self.nonces.next_nonce() % 2000) as f64 / 10_000.0;
        d.mul_f64(f)
    }

    // ---- registration -------------------------------------------------

    /// Our current RLOCs (up, by configured priority). A change re-registers
    /// with every map-server at once.
    pub fn handle_rlocs(&mut self, now: Instant, mut rlocs: Vec<LocalRloc>) {
        rlocs.sort_by_key(|r| (r.priority, std::cmp::Reverse(r.weight), r.addr));
        if rlocs == self.rlocs && self.rlocs_known {
            return;
        }
        info!(old = ?self.rlocs.iter().map(|r| r.addr).collect::<Vec<_>>(), new = ?rlocs.iter().map(|r| r.addr).collect::<Vec<_>>(), "RLOCs changed; re-registering");
        let moved = self.rlocs_known && !rlocs.is_empty();
        self.rlocs = rlocs;
        self.rlocs_known = true;
        if moved {
            // wireguard-go sends nothing from a new address until its port
            // is set again; this must follow the new address, not the removal.
            self.outputs.push_back(Output::ReapplyListenPort);
        }
        for s in &mut self.servers {
            s.next_register = now;
            s.backoff = self.policy.register_retry_first;
        }
        self.send_registers(now);
    }

    fn own_records(&self) -> Vec<EidRecord> {
        let rlocs: Vec<RlocRecord> = self
            .rlocs
            .iter()
            .map(|r| {
                let locator = wireguard_locator(
                    SocketAddr::new(r.addr, self.policy.wg_port),
                    self.policy.wg_public_key,
                );
                RlocRecord {
                    local: true,
                    ..RlocRecord::new(r.priority, r.weight, locator)
                }
            })
            .collect();
        self.policy
            .eids
            .iter()
            .map(|e| EidRecord::new(*e, self.policy.record_ttl_minutes, rlocs.clone()))
            .collect()
    }

    /// Sends a Map-Register to every map-server whose turn it is.
    fn send_registers(&mut self, now: Instant) {
        if self.rlocs.is_empty() {
            // Nothing to register until an RLOC comes up; try again later.
            for s in &mut self.servers {
                if s.next_register <= now {
                    s.next_register = now + self.policy.register_retry;
                }
            }
            return;
        }
        let records = self.own_records();
        for i in 0..self.servers.len() {
            if self.servers[i].next_register > now {
                continue;
            }
            let nonce = self.nonces.next_nonce();
            let s = &mut self.servers[i];
            if s.outstanding.is_some() {
                s.misses += 1;
                if s.up && s.misses >= DOWN_AFTER_MISSES {
                    s.up = false;
                    warn!(map_server = %self.policy.map_servers[i].name, "map-server not answering: marked down");
                }
            }
            if !s.up && s.misses >= DOWN_AFTER_MISSES {
                // Each retry while down starts from a fresh WireGuard session,
                // so a restarted map-server is reached at once.
                self.outputs
                    .push_back(Output::RenewControlPeer { map_server: i });
            }
            let s = &mut self.servers[i];
            s.outstanding = Some(nonce);
            let reg = MapRegister::proxied(nonce, records.clone());
            let ms = &self.policy.map_servers[i];
            match reg.encode_signed(&ms.site_key) {
                Ok(payload) => {
                    self.counters.registers += 1;
                    self.outputs.push_back(Output::Transmit {
                        dst: SocketAddr::new(ms.control_address, LISP_CONTROL_PORT),
                        payload,
                    });
                }
                Err(e) => warn!(error = %e, "cannot encode our Map-Register"),
            }
            // Until confirmed, retry quickly (backing off to register_retry);
            // a down map-server is thus re-registered with soon after it is
            // back, and a register lost during a move is repeated at once.
            let wait = self.servers[i].backoff;
            self.servers[i].backoff = (wait * 2).min(self.policy.register_retry);
            let wait = self.jitter(wait);
            self.servers[i].next_register = now + wait;
        }
    }

    // ---- miss path ------------------------------------------------------

    /// A packet captured by the miss TUN: a destination with no peer yet.
    pub fn handle_miss(&mut self, now: Instant, packet: Vec<u8>) {
        let Some((src, dst)) = packet::addresses(&packet) else {
            self.counters.dropped_packets += 1;
            return;
        };
        let iid = self.policy.iid();
        if self.policy.eids.iter().any(|e| e.contains_addr(iid, dst)) {
            self.counters.dropped_packets += 1;
            return;
        }
        match self
            .cache
            .lookup(iid, dst)
            .map(|(_, e)| (e.peer, e.expires))
        {
            Some((Some(_), _)) => {
                // The peer exists; the packet raced its route. Send it again.
                self.counters.reinjected_packets += 1;
                self.outputs.push_back(Output::Reinject(packet));
                return;
            }
            Some((None, expires)) if expires > now => {
                self.icmp_unreachable(&packet);
                return;
            }
            _ => {}
        }
        if let Some(p) = self.pending.get_mut(&dst) {
            hold(&mut self.counters, &self.policy, p, packet);
            return;
        }
        if self.pending.len() >= self.policy.max_pending {
            self.counters.dropped_packets += 1;
            return;
        }
        self.counters.misses += 1;
        let source = self
            .policy
            .eids
            .iter()
            .find(|e| e.contains_addr(iid, src))
            .or(self.policy.eids.first())
            .copied();
        let Some(source) = source else { return };
        debug!(eid = %dst, "map-cache miss; resolving");
        self.start_request(now, dst, source, Some(packet));
    }

    fn start_request(
        &mut self,
        now: Instant,
        dst: IpAddr,
        source: EidPrefix,
        packet: Option<Vec<u8>>,
    ) {
        let nonce = self.nonces.next_nonce();
        let mut p = Pending {
            nonce,
            source,
            held: Vec::new(),
            held_bytes: 0,
            retransmits: 0,
            next: now + self.policy.request_timeout,
            missed_at: packet.is_some().then_some(now),
        };
        if let Some(packet) = packet {
            hold(&mut self.counters, &self.policy, &mut p, packet);
        }
        self.pending.insert(dst, p);
        self.by_nonce.insert(nonce, dst);
        self.send_request(now, dst, nonce, source);
    }

    /// Sends an ECM Map-Request to every map-server; the first valid reply
    /// wins.
    fn send_request(&mut self, now: Instant, dst: IpAddr, nonce: u64, source: EidPrefix) {
        let target = EidPrefix::host(self.policy.iid(), dst);
        let ctl = self.policy.control_address;
        for (i, ms) in self.policy.map_servers.iter().enumerate() {
            let s = &mut self.servers[i];
            s.unanswered_since = s.unanswered_since.or(Some(now));
            let ecm = MapRequest::for_eid(nonce, source.to_address(), ctl, target).encapsulated(
                ctl,
                LISP_CONTROL_PORT,
                ms.control_address,
            );
            match ecm.encode() {
                Ok(payload) => {
                    self.counters.requests += 1;
                    self.outputs.push_back(Output::Transmit {
                        dst: SocketAddr::new(ms.control_address, LISP_CONTROL_PORT),
                        payload,
                    });
                }
                Err(e) => warn!(error = %e, "cannot encode Map-Request"),
            }
        }
    }

    fn icmp_unreachable(&mut self, packet: &[u8]) {
        if let Some(icmp) = packet::unreachable(packet) {
            self.counters.icmp_unreachable += 1;
            self.outputs.push_back(Output::Deliver(icmp));
        }
    }

    // ---- control messages -------------------------------------------------

    /// A control message received on the control socket. Only configured
    /// map-servers are heard.
    pub fn handle_control(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let Some(ms) = self
            .policy
            .map_servers
            .iter()
            .position(|m| m.control_address == from.ip())
        else {
            self.counters.unknown_senders += 1;
            warn!(%from, "control message from no configured map-server; ignored");
            return;
        };
        let msg = match lisp_wire::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.counters.malformed += 1;
                warn!(%from, error = %e, "malformed control message");
                return;
            }
        };
        match msg {
            Message::MapReply(reply) => {
                self.servers[ms].unanswered_since = None;
                self.handle_map_reply(now, reply)
            }
            Message::MapNotify(notify) => {
                if let Err(e) = auth::verify(bytes, &self.policy.map_servers[ms].site_key) {
                    self.counters.auth_failures += 1;
                    warn!(%from, error = %e, "Map-Notify failed authentication");
                    return;
                }
                self.servers[ms].unanswered_since = None;
                self.handle_map_notify(now, ms, notify);
            }
            other => {
                self.counters.malformed += 1;
                debug!(%from, kind = other.name(), "unexpected control message");
            }
        }
    }

    fn handle_map_reply(&mut self, now: Instant, reply: MapReply) {
        let Some(dst) = self.by_nonce.remove(&reply.nonce) else {
            // The second map-server's answer, or a late one.
            debug!(nonce = reply.nonce, "Map-Reply for no pending request");
            return;
        };
        let Some(pending) = self.pending.remove(&dst) else {
            return;
        };
        self.counters.replies += 1;
        let iid = self.policy.iid();
        let record = reply
            .records
            .iter()
            .find(|r| EidPrefix::of_record(r).is_ok_and(|p| p.contains_addr(iid, dst)));
        let Some(record) = record else {
            self.counters.malformed += 1;
            warn!(eid = %dst, "Map-Reply does not cover the EID asked for");
            self.fail_pending(pending, false);
            return;
        };
        match self.install(now, record) {
            Ok(true) => {
                if let (Some(at), Ok(prefix)) = (pending.missed_at, EidPrefix::of_record(record)) {
                    self.programmed.push_back((prefix, at));
                }
                for packet in pending.held {
                    self.counters.reinjected_packets += 1;
                    self.outputs.push_back(Output::Reinject(packet));
                }
            }
            Ok(false) => {
                self.counters.negative_replies += 1;
                self.fail_pending(pending, true);
            }
            Err(why) => {
                self.counters.unusable_mappings += 1;
                warn!(eid = %dst, why, "mapping cannot be used for a WireGuard tunnel");
                self.fail_pending(pending, true);
            }
        }
    }

    /// Answers held packets with ICMP unreachable (or drops them).
    fn fail_pending(&mut self, pending: Pending, icmp: bool) {
        for packet in pending.held {
            if icmp {
                self.icmp_unreachable(&packet);
            } else {
                self.counters.dropped_packets += 1;
            }
        }
    }

    /// Puts a mapping in the map-cache and programs its peer. Ok(true) for a
    /// usable positive mapping, Ok(false) for a negative one.
    fn install(&mut self, now: Instant, record: &EidRecord) -> Result<bool, &'static str> {
        let prefix = EidPrefix::of_record(record).map_err(|_| "EID is not an IP prefix")?;
        let ttl = Duration::from_secs(60 * record.ttl.max(1) as u64);
        if record.rlocs.is_empty() {
            self.remove_prefix(&prefix);
            self.cache.insert(
                prefix,
                CacheEntry {
                    peer: None,
                    expires: now + ttl,
                    refreshing: false,
                },
            );
            return Ok(false);
        }
        let key = record.wg_key().ok_or("no WireGuard key")?;
        if key == self.policy.wg_public_key {
            return Err("the mapping carries our own key");
        }
        let (_, loc) = record.best_locator().ok_or("no usable locator")?;
        let endpoint = SocketAddr::new(loc.rloc, loc.port.unwrap_or(lisp_wire::DEFAULT_WG_PORT));
        if self.cache.get(&prefix).is_none() && self.cache.len() >= self.policy.max_cache_entries {
            self.evict_one();
        }
        // A prefix that moved to another key leaves its old peer.
        if let Some(Some((old_key, _))) = self.cache.get(&prefix).map(|e| e.peer) {
            if old_key != key {
                self.detach(&prefix, old_key);
            }
        }
        self.cache.insert(
            prefix,
            CacheEntry {
                peer: Some((key, endpoint)),
                expires: now + ttl,
                refreshing: false,
            },
        );
        let peer = self.peers.entry(key).or_insert_with(|| Peer {
            endpoint,
            prefixes: BTreeSet::new(),
            rx: 0,
            tx: 0,
            last_active: now,
        });
        let new_prefix = peer.prefixes.insert(prefix);
        let moved = peer.endpoint != endpoint;
        peer.endpoint = endpoint;
        if new_prefix || moved {
            if new_prefix && peer.prefixes.len() == 1 {
                self.counters.peers_added += 1;
                info!(eid = %prefix, rloc = %endpoint, "programming data peer");
            } else {
                self.counters.peers_updated += 1;
                info!(eid = %prefix, rloc = %endpoint, "updating data peer");
            }
            let allowed = peer.prefixes.iter().copied().collect();
            self.outputs.push_back(Output::UpsertPeer {
                key,
                endpoint,
                allowed,
            });
            if new_prefix {
                self.outputs.push_back(Output::AddRoute(prefix));
            }
        }
        Ok(true)
    }

    /// Removes `prefix` from `key`'s peer, and the peer when it has none left.
    fn detach(&mut self, prefix: &EidPrefix, key: [u8; 32]) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if !peer.prefixes.remove(prefix) {
            return;
        }
        self.outputs.push_back(Output::DelRoute(*prefix));
        if peer.prefixes.is_empty() {
            self.peers.remove(&key);
            self.counters.peers_removed += 1;
            self.outputs.push_back(Output::RemovePeer { key });
        } else {
            let (endpoint, allowed) = (peer.endpoint, peer.prefixes.iter().copied().collect());
            self.outputs.push_back(Output::UpsertPeer {
                key,
                endpoint,
                allowed,
            });
        }
    }

    fn remove_prefix(&mut self, prefix: &EidPrefix) {
        if let Some(CacheEntry {
            peer: Some((key, _)),
            ..
        }) = self.cache.remove(prefix)
        {
            self.detach(prefix, key);
        }
    }

    /// Makes room in a full map-cache: the least recently active peer goes.
    fn evict_one(&mut self) {
        let Some((&key, _)) = self.peers.iter().min_by_key(|(_, p)| p.last_active) else {
            // Only negative entries: drop one of those.
            let first = self.cache.iter().next().map(|(p, _)| p);
            if let Some(p) = first {
                self.cache.remove(&p);
            }
            return;
        };
        self.remove_peer(key);
    }

    fn remove_peer(&mut self, key: [u8; 32]) {
        let prefixes: Vec<EidPrefix> = self
            .peers
            .get(&key)
            .map(|p| p.prefixes.iter().copied().collect())
            .unwrap_or_default();
        for p in prefixes {
            self.cache.remove(&p);
            self.detach(&p, key);
        }
    }

    fn handle_map_notify(&mut self, now: Instant, ms: usize, notify: MapNotify) {
        self.counters.notifies += 1;
        let s = &mut self.servers[ms];
        if s.outstanding == Some(notify.nonce) {
            // Confirms our registration.
            s.outstanding = None;
            s.misses = 0;
            if !s.up {
                info!(map_server = %self.policy.map_servers[ms].name, "registered with map-server");
            }
            s.up = true;
            s.confirmed_once = true;
            s.backoff = self.policy.register_retry_first;
            let wait = self.jitter(self.policy.register_interval);
            self.servers[ms].next_register = now + wait;
            return;
        }
        // A correspondent's mapping (it resolved us), or a move pushed to us.
        let iid = self.policy.iid();
        for record in &notify.records {
            let Ok(prefix) = EidPrefix::of_record(record) else {
                continue;
            };
            if prefix.iid != iid || self.policy.eids.contains(&prefix) {
                continue;
            }
            if let Err(why) = self.install(now, record) {
                self.counters.unusable_mappings += 1;
                warn!(eid = %prefix, why, "pushed mapping cannot be used");
            }
        }
        // Acknowledge after programming, so the map-server's held reply (and
        // the requester's first handshake) finds our peer in place.
        let ack = MapNotify {
            auth: Authentication::unsigned(notify.auth.key_id),
            ..notify
        };
        let key_id = if ack.auth.key_id == KeyId::None {
            KeyId::HmacSha256
        } else {
            ack.auth.key_id
        };
        let ack = MapNotify {
            auth: Authentication::unsigned(key_id),
            ..ack
        };
        let ms_peer = &self.policy.map_servers[ms];
        match ack.encode_signed_ack(&ms_peer.site_key) {
            Ok(payload) => {
                self.counters.acks += 1;
                self.outputs.push_back(Output::Transmit {
                    dst: SocketAddr::new(ms_peer.control_address, LISP_CONTROL_PORT),
                    payload,
                });
            }
            Err(e) => warn!(error = %e, "cannot encode Map-Notify-Ack"),
        }
    }

    // ---- idleness ---------------------------------------------------------

    /// Latest WireGuard counters of the data peers. A peer is removed once it
    /// has moved no byte in either direction and had no handshake for the
    /// idle timeout. Because WireGuard handshakes only happen with traffic and
    /// both ends see the same bytes and the same handshake, the other end
    /// reaches the same verdict within one check: teardown is never
    /// one-sided.
    pub fn handle_peer_stats(&mut self, now: Instant, stats: &[PeerStats]) {
        let idle = self.policy.idle_timeout;
        let mut remove = Vec::new();
        for s in stats {
            let Some(peer) = self.peers.get_mut(&s.key) else {
                continue;
            };
            if s.rx_bytes != peer.rx || s.tx_bytes != peer.tx {
                peer.rx = s.rx_bytes;
                peer.tx = s.tx_bytes;
                peer.last_active = now;
            } else if now.saturating_duration_since(peer.last_active) >= idle
                && s.since_handshake.is_none_or(|h| h >= idle)
            {
                remove.push(s.key);
            }
        }
        for key in remove {
            info!(rloc = ?self.peers.get(&key).map(|p| p.endpoint), "data peer idle at both ends; removing");
            self.remove_peer(key);
        }
    }

    // ---- timers -------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        for s in &mut self.servers {
            if s.unanswered_since.is_some_and(|t| now >= t + PROBE_AFTER) {
                s.unanswered_since = None;
                // An outstanding register is already a probe.
                if s.outstanding.is_none() {
                    s.next_register = now;
                }
            }
        }
        self.send_registers(now);
        self.retransmit_requests(now);
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.expire_cache(now);
        }
    }

    fn retransmit_requests(&mut self, now: Instant) {
        let due: Vec<IpAddr> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next <= now)
            .map(|(d, _)| *d)
            .collect();
        for dst in due {
            let Some(p) = self.pending.get_mut(&dst) else {
                continue;
            };
            if p.retransmits >= self.policy.request_retries {
                let p = self.pending.remove(&dst).expect("present");
                self.by_nonce.remove(&p.nonce);
                self.counters.request_timeouts += 1;
                warn!(eid = %dst, "no map-server answered; giving up on held packets");
                self.fail_pending(p, true);
                // A background refresh that failed is tried again later.
                let iid = self.policy.iid();
                if let Some((prefix, _)) = self.cache.lookup(iid, dst) {
                    if let Some(e) = self.cache.get_mut(&prefix) {
                        e.refreshing = false;
                    }
                }
                continue;
            }
            p.retransmits += 1;
            p.next = now + self.policy.request_timeout * 2u32.pow(p.retransmits);
            let (nonce, source) = (p.nonce, p.source);
            self.counters.request_retransmits += 1;
            // A map-server that has not answered may sit behind a dead
            // WireGuard session (it restarted): retransmit on a fresh one.
            for (i, s) in self.servers.iter().enumerate() {
                if s.unanswered_since.is_some() {
                    self.outputs
                        .push_back(Output::RenewControlPeer { map_server: i });
                }
            }
            self.send_request(now, dst, nonce, source);
        }
    }

    /// Expired negative entries go; expired positive ones are refreshed in
    /// the background, keeping the tunnel up meanwhile.
    fn expire_cache(&mut self, now: Instant) {
        self.cache
            .retain(|_, e| e.peer.is_some() || e.expires > now);
        let stale: Vec<EidPrefix> = self
            .cache
            .iter()
            .filter(|(_, e)| e.peer.is_some() && e.expires <= now && !e.refreshing)
            .map(|(p, _)| p)
            .collect();
        for prefix in stale {
            if let Some(e) = self.cache.get_mut(&prefix) {
                e.refreshing = true;
            }
            let dst = prefix.addr();
            if self.pending.contains_key(&dst) {
                continue;
            }
            let Some(source) = self.policy.eids.first().copied() else {
                continue;
            };
            debug!(eid = %prefix, "map-cache entry expired; refreshing");
            self.start_request(now, dst, source, None);
        }
    }
}

fn hold(counters: &mut Counters, policy: &XtrPolicy, p: &mut Pending, packet: Vec<u8>) {
    if p.held.len() >= policy.held_packets_per_eid
        || p.held_bytes + packet.len() > policy.held_bytes_per_eid
    {
        counters.dropped_packets += 1;
        return;
    }
    counters.held_packets += 1;
    p.held_bytes += packet.len();
    p.held.push(packet);
}
