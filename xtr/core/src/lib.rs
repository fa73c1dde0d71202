//! # xtr-core: the lispwg agent's protocol logic, with no I/O
//!
//! [`Xtr`] is a plain state machine. The shell feeds it packets captured by
//! the miss TUN ([`Xtr::handle_miss`]), control messages from the
//! map-servers ([`Xtr::handle_control`]), link and address changes
//! ([`Xtr::handle_link_events`]), WireGuard peer statistics
//! ([`Xtr::handle_peer_stats`]), the outcome of every data-plane operation
//! ([`Xtr::handle_dataplane_result`]) and the clock ([`Xtr::handle_timeout`]),
//! and carries out the [`Output`]s it polls, in order.
//!
//! The core decides everything: which addresses are RLOCs, when to read
//! statistics, and the order of data-plane changes. Its promise, kept even
//! when the data plane fails: a held packet is re-injected, and a
//! Map-Notify acknowledged, only once the peer and route it needs are
//! confirmed by the shell. Failed operations are retried with backoff.
//!
//! Modules by concern: [`registration`] (RLOCs, Map-Registers, map-server
//! liveness), [`resolution`] (misses, held packets, Map-Requests and
//! replies), [`peers`] (the map-cache and its peers, expiry, idleness),
//! [`dataplane`] (wanted vs confirmed peers and routes, retries, what waits
//! for them), [`policy`], [`counters`], [`packet`] and [`io`] (the types in
//! and out).

pub mod counters;
pub mod dataplane;
mod fields;
pub mod io;
pub mod names;
pub mod packet;
pub mod paths;
pub mod peers;
pub mod policy;
pub mod registration;
pub mod relaying;
pub mod resolution;

pub use counters::Counters;
pub use io::{
    DataplaneFault, DataplaneOp, LinkEvent, OpId, Output, PeerStats, Refusal, RelayEvent, RelayOp,
    Unusable,
};
pub use names::{NameAnswer, NamePolicy, NameQuery};
pub use policy::{LocalRloc, MapServerPeer, RlocInterface, XtrPolicy};
pub use relaying::{RelayPolicy, RelayStatus};

use dataplane::{Backoff, Dataplane};
use lisp_wire::{
    auth, Authentication, EidPrefix, EidTable, KeyId, MapNotify, Message, LISP_CONTROL_PORT,
};
use peers::{CacheEntry, Learned, Peer};
use registration::{Links, MapServerState};
use resolution::Pending;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How often cache expiry is checked.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// A statistics read the shell has not answered for this long is asked
/// again.
const STATS_PATIENCE: Duration = Duration::from_secs(5);
/// How often statistics are read while peers carry traffic: a path that
/// stops working is noticed within about half a second.
const ACTIVE_STATS: Duration = Duration::from_millis(100);

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
    /// The peer's key and the endpoint it is programmed at (none while a
    /// responder waits for the first handshake).
    pub peer: Option<([u8; 32], Option<SocketAddr>)>,
    pub expires_in: Duration,
}

/// How a data peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// At a public address (its own, or its NAT's).
    Direct,
    /// At a private address: behind the same NAT as us, or a campus that
    /// routes private addresses.
    DirectPrivate,
    /// Over IPv6.
    Ipv6,
    /// Through the campus relay.
    Relayed,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::DirectPrivate => "direct (private)",
            PathKind::Ipv6 => "direct (IPv6)",
            PathKind::Relayed => "relayed",
        }
    }
}

/// One data peer's path, for `xtr status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStatus {
    pub key: [u8; 32],
    pub eids: Vec<EidPrefix>,
    /// What it is programmed at; `None` while a responder waits, or once
    /// WireGuard learnt it from the peer's handshake.
    pub endpoint: Option<SocketAddr>,
    pub candidates: Vec<SocketAddr>,
    pub kind: Option<PathKind>,
    /// "initiator" or "responder" of its first handshake.
    pub role: &'static str,
    /// "connecting", "up" or "no direct path".
    pub state: &'static str,
    /// For how long it has been in that state.
    pub since: Duration,
    /// Whether either side is behind a NAT (keepalives while active).
    pub nat: bool,
    /// Where WireGuard sends to it, as last read.
    pub wg_endpoint: Option<SocketAddr>,
}

/// The xtr state machine.
#[derive(Debug)]
pub struct Xtr {
    policy: XtrPolicy,
    links: Links,
    rlocs: Vec<LocalRloc>,
    /// False until the first RLOC report (start-up is not a move).
    rlocs_known: bool,
    servers: Vec<MapServerState>,
    cache: EidTable<CacheEntry>,
    peers: HashMap<[u8; 32], Peer>,
    dataplane: Dataplane,
    pending: HashMap<IpAddr, Pending>,
    by_nonce: HashMap<u64, IpAddr>,
    outputs: VecDeque<Output>,
    /// Log lines about refused control messages, per source address.
    refusal_log: limits::LogBudget<std::net::IpAddr>,
    /// The next Map-Register nonce (they count up; see
    /// [`Xtr::set_register_nonce_floor`]).
    register_nonce: u64,
    /// Nonces below this are covered by a saved reservation.
    nonces_reserved: u64,
    next_housekeeping: Instant,
    next_stats: Instant,
    /// A statistics read asked for and not yet answered, since when.
    stats_asked: Option<Instant>,
    /// When the last statistics came back.
    last_stats: Option<Instant>,
    /// Some peer carried traffic at the last read: read again soon, so a
    /// path that stops working is noticed within a second.
    active: bool,
    /// A held packet waits for a first handshake: read statistics from
    /// this instant.
    stats_now: Option<Instant>,
    /// Smoothed round trip of Map-Requests (to the map-server and, through
    /// its reply hold, the destination): sizes handshake attempts.
    srtt: Duration,
    srtt_known: bool,
    nonces: lisp_wire::Nonces,
    counters: Counters,
    /// The map version of our registrations, new at every start (RFC 6834
    /// map-versioning): how the map-server notices we restarted.
    map_version: u16,
    /// EIDs to resolve again once a registration is confirmed (after a
    /// path stopped working: the map-server must first see our endpoint).
    resolve_after_register: Vec<IpAddr>,
    /// Where the map-server sees our WireGuard socket, and whether that is
    /// through a NAT (it tells us when that changes).
    seen_at: Option<(SocketAddr, bool)>,
    relay: relaying::Relay,
    names: names::Names,
}

impl Xtr {
    pub fn new(policy: XtrPolicy, now: Instant, seed: u64) -> Self {
        let servers = policy
            .map_servers
            .iter()
            .map(|_| MapServerState::new(now, policy.register_retry_first))
            .collect();
        let endpoints: Vec<SocketAddr> = policy
            .map_servers
            .iter()
            .map(|m| {
                m.endpoints
                    .first()
                    .copied()
                    .unwrap_or_else(|| SocketAddr::new(m.control_address, 0))
            })
            .collect();
        let dataplane = Dataplane::new(
            &endpoints,
            Backoff {
                first: policy.dataplane_retry_first,
                max: policy.dataplane_retry_max,
            },
            policy.dataplane_patience,
        );
        Xtr {
            next_stats: now + policy.stats_interval(),
            policy,
            links: Links::default(),
            rlocs: Vec::new(),
            rlocs_known: false,
            servers,
            cache: EidTable::new(),
            peers: HashMap::new(),
            dataplane,
            pending: HashMap::new(),
            by_nonce: HashMap::new(),
            outputs: VecDeque::new(),
            refusal_log: limits::LogBudget::new(5, Duration::from_secs(10), 1024, now),
            register_nonce: 1,
            nonces_reserved: 1,
            next_housekeeping: now + HOUSEKEEPING,
            stats_asked: None,
            last_stats: None,
            active: false,
            stats_now: None,
            srtt: Duration::from_millis(50),
            srtt_known: false,
            nonces: lisp_wire::Nonces::new(seed),
            counters: Counters::default(),
            map_version: 1 + (seed % 4095) as u16,
            resolve_after_register: Vec::new(),
            seen_at: None,
            relay: relaying::Relay::new(),
            names: names::Names::default(),
        }
    }

    pub fn policy(&self) -> &XtrPolicy {
        &self.policy
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Takes the next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Data peers programmed now (confirmed by the shell).
    pub fn peer_count(&self) -> usize {
        self.dataplane.confirmed_peers()
    }

    /// A resolution that started with a map-cache miss at `.1` and whose
    /// peer and route for prefix `.0` are confirmed and its held packets
    /// queued for re-injection: the shell's clock minus `.1` is the time from
    /// the miss to the peer being programmed (the cache-add time the thesis
    /// measured). Informational: ignoring it changes nothing.
    pub fn poll_programmed(&mut self) -> Option<(EidPrefix, Instant)> {
        self.dataplane.programmed.pop_front()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Whether every data-plane change asked for is confirmed.
    pub fn dataplane_settled(&self) -> bool {
        self.dataplane.settled()
    }

    /// The endpoint wanted for a data peer.
    pub fn peer_endpoint(&self, key: &[u8; 32]) -> Option<SocketAddr> {
        self.peers.get(key).and_then(|p| p.path.endpoint())
    }

    /// Where the map-server sees our WireGuard socket, and whether through a
    /// NAT.
    pub fn seen_at(&self) -> Option<(SocketAddr, bool)> {
        self.seen_at
    }

    /// Every data peer's path.
    pub fn paths(&self, now: Instant) -> Vec<PathStatus> {
        let mut v: Vec<PathStatus> = self
            .peers
            .iter()
            .map(|(key, p)| p.status(*key, now))
            .collect();
        v.sort_by(|a, b| a.eids.cmp(&b.eids));
        v
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
                peer: e.peer.map(|k| (k, self.peer_endpoint(&k))),
                expires_in: e.expires.saturating_duration_since(now),
            })
            .collect();
        v.sort_by_key(|c| c.prefix);
        v
    }

    /// The next instant [`Xtr::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let servers = self.servers.iter().map(MapServerState::timeout);
        let pending = self.pending.values().map(|p| p.next);
        let stats = self.stats_due();
        servers
            .chain(pending)
            .chain(self.dataplane.poll_timeout())
            .chain(self.paths_timeout())
            .chain(stats)
            .chain(self.relay_poll_timeout())
            .chain(self.names.timeout())
            .chain(std::iter::once(self.next_housekeeping))
            .min()
    }

    /// Uniform in [0.9, 1.1): spreads refreshes of many nodes apart.
    fn jitter(&mut self, d: Duration) -> Duration {
        let f = 0.9 + (self.nonces.next_nonce() % 2000) as f64 / 10_000.0;
        d.mul_f64(f)
    }

    /// Turns what the map-cache wants into data-plane operations, and
    /// releases what became ready.
    fn flush_dataplane(&mut self, now: Instant) {
        self.dataplane
            .reconcile(now, &mut self.outputs, &mut self.counters);
        let confirmed = std::mem::take(&mut self.dataplane.confirmed);
        self.peers_programmed(now, confirmed);
        for (prefix, packets) in std::mem::take(&mut self.dataplane.reinjected) {
            if let Some(key) = self.peer_of(&prefix) {
                self.keep_copies(&key, &packets);
            }
        }
        if self.stats_now.is_some() {
            self.ask_stats_if_due(now);
        }
    }

    // ---- outcomes -----------------------------------------------------------

    /// The outcome of an [`Output::Dataplane`] operation.
    pub fn handle_dataplane_result(
        &mut self,
        now: Instant,
        id: OpId,
        result: Result<(), DataplaneFault>,
    ) {
        self.dataplane
            .handle_result(now, id, result, &mut self.counters);
        for i in std::mem::take(&mut self.dataplane.control_renewed) {
            self.on_control_session_renewed(now, i);
        }
        self.flush_dataplane(now);
    }

    /// The answer to [`Output::ReadPeerStats`].
    pub fn handle_peer_stats(&mut self, now: Instant, stats: &[PeerStats]) {
        self.stats_asked = None;
        self.last_stats = Some(now);
        self.check_paths(now, stats);
        self.flush_dataplane(now);
    }

    /// [`Output::ReadPeerStats`] could not be carried out.
    pub fn handle_peer_stats_failed(&mut self, now: Instant) {
        self.stats_asked = None;
        self.counters.stats_failures += 1;
        self.next_stats = now + self.policy.stats_interval();
    }

    fn stats_due(&self) -> Option<Instant> {
        if self.peers.is_empty() {
            return None;
        }
        Some(match self.stats_asked {
            Some(t) => t + STATS_PATIENCE,
            None if self.stats_now.is_some() => self.stats_now.unwrap_or(self.next_stats),
            None => {
                let periodic = match (self.active, self.last_stats) {
                    (true, Some(t)) => self.next_stats.min(t + ACTIVE_STATS),
                    _ => self.next_stats,
                };
                self.paths_stats_due().map_or(periodic, |t| t.min(periodic))
            }
        })
    }

    fn ask_stats_if_due(&mut self, now: Instant) {
        if self.stats_due().is_some_and(|t| now >= t) {
            self.stats_asked = Some(now);
            self.stats_now = None;
            if now >= self.next_stats {
                self.next_stats = now + self.policy.stats_interval();
            }
            self.outputs.push_back(Output::ReadPeerStats);
        }
    }

    // ---- control messages ---------------------------------------------------

    /// A control message received on the control socket. Only configured
    /// map-servers are heard; anything else is counted and logged, and
    /// changes nothing.
    pub fn handle_control(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if let Err(r) = self.dispatch_control(now, from, bytes) {
            self.counters.count_refusal(&r);
            // A data peer can send us anything through its tunnel: a few
            // lines per source, then one summary (see `housekeeping`).
            if self.refusal_log.check(&from.ip(), now) == limits::Verdict::Suppress {
                self.counters.suppressed_log_lines += 1;
                self.flush_dataplane(now);
                return;
            }
            match r {
                // The second map-server's answer, or a late one: normal.
                Refusal::UnknownNonce(_) => debug!(%from, reason = %r, "control message ignored"),
                _ => warn!(%from, reason = %r, "refused control message"),
            }
        }
        self.flush_dataplane(now);
    }

    fn dispatch_control(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), Refusal> {
        let ms = self
            .policy
            .map_servers
            .iter()
            .position(|m| m.control_address == from.ip())
            .ok_or(Refusal::UnknownSender)?;
        let msg = lisp_wire::parse(bytes).map_err(|e| Refusal::Malformed(e.to_string()))?;
        match msg {
            Message::MapReply(reply) => {
                self.servers[ms].answered();
                self.handle_map_reply(now, reply)
            }
            Message::MapRequest(req) if req.smr => {
                self.servers[ms].answered();
                self.handle_smr(now, &req);
                Ok(())
            }
            Message::MapNotify(notify) => {
                auth::verify(bytes, &self.policy.map_servers[ms].site_key)
                    .map_err(Refusal::Auth)?;
                self.servers[ms].answered();
                self.counters.notifies += 1;
                if !self.confirm_registration(now, ms, &notify) {
                    self.handle_correspondent_notify(now, ms, notify);
                }
                Ok(())
            }
            other => Err(Refusal::Unexpected(other.name())),
        }
    }

    /// A correspondent's mapping (it resolved us), or a move pushed to us:
    /// install it, and acknowledge once its peers and routes are in place,
    /// so the map-server's held reply (and the requester's first handshake)
    /// finds our peer ready.
    fn handle_correspondent_notify(&mut self, now: Instant, ms: usize, notify: MapNotify) {
        let iid = self.policy.iid();
        let mut installed = Vec::new();
        for record in &notify.records {
            let Ok(prefix) = EidPrefix::of_record(record) else {
                continue;
            };
            if prefix.iid != iid {
                continue;
            }
            if self.policy.eids.contains(&prefix) {
                // Our own mapping as the map-server hands it out.
                self.note_own_mapping(now, record);
                continue;
            }
            match self.install(now, record, Learned::Notify) {
                Ok(Some((p, _))) => {
                    installed.push(p);
                    // Open our NAT toward the peer before acking: the ack
                    // releases its reply, and its first handshake follows.
                    self.punch(now);
                }
                Ok(None) => {}
                Err(why) => {
                    self.counters.unusable_mappings += 1;
                    warn!(eid = %prefix, reason = %why, "pushed mapping cannot be used");
                }
            }
        }
        let key_id = match notify.auth.key_id {
            KeyId::None => KeyId::HmacSha256,
            k => k,
        };
        let nonce = notify.nonce;
        let ack = MapNotify {
            auth: Authentication::unsigned(key_id),
            ..notify
        };
        let ms_peer = &self.policy.map_servers[ms];
        match ack.encode_signed_ack(&ms_peer.site_key) {
            Ok(payload) => {
                let transmit = Output::Transmit {
                    dst: SocketAddr::new(ms_peer.control_address, LISP_CONTROL_PORT),
                    payload,
                };
                self.dataplane
                    .ack_when_ready(now, nonce, installed, transmit);
            }
            Err(e) => warn!(error = %e, "cannot encode Map-Notify-Ack"),
        }
    }

    /// Where the map-server sees us, from our own mapping: the candidate it
    /// marks as behind a NAT, else the one at our own address.
    fn note_own_mapping(&mut self, now: Instant, record: &lisp_wire::EidRecord) {
        let infos: Vec<_> = record.rlocs.iter().filter_map(|r| r.info()).collect();
        let endpoint = |i: &lisp_wire::LocatorInfo| {
            SocketAddr::new(i.rloc, i.port.unwrap_or(self.policy.wg_port))
        };
        let seen = infos
            .iter()
            .find(|i| i.behind_nat())
            .map(|i| (endpoint(i), true))
            .or_else(|| {
                infos
                    .iter()
                    .find(|i| self.rlocs.iter().any(|r| r.addr == i.rloc))
                    .map(|i| (endpoint(i), false))
            });
        if seen.is_some() && seen != self.seen_at {
            if let Some((ep, nat)) = seen {
                tracing::info!(endpoint = %ep, behind_nat = nat, "the map-server sees us here");
            }
            let moved = self.seen_at.is_some();
            self.seen_at = seen;
            if moved {
                // Our NAT mapped us anew (it restarted, or was
                // reconfigured): what we learnt about relayed peers while
                // we were unreachable may be stale. Ask again; their
                // answers start direct probes.
                self.refresh_relayed_peers(now);
            }
        }
    }

    // ---- timers -------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        self.registration_timeout(now);
        self.retransmit_requests(now);
        self.names_timeout(now);
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.expire_cache(now);
            for (source, suppressed) in self.refusal_log.drain(now) {
                let source = source.map_or("many sources".to_string(), |s| s.to_string());
                warn!(%source, suppressed, "more refused control messages; their lines were suppressed");
            }
        }
        self.punch(now);
        self.relay_timeout(now);
        self.ask_stats_if_due(now);
        self.flush_dataplane(now);
    }
}
