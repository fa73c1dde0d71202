//! # map-server-core: the lispwg map-server's protocol logic, with no I/O
//!
//! [`MapServer`] is a plain state machine. The shell feeds it datagrams
//! ([`MapServer::handle_datagram`]), the clock ([`MapServer::handle_timeout`])
//! and the outcome of what it asked for ([`MapServer::handle_commit_result`],
//! [`MapServer::handle_action_result`]); it takes out store commits
//! ([`MapServer::poll_commit`]), actions on the WireGuard control interface
//! ([`MapServer::poll_action`]) and datagrams ([`MapServer::poll_transmit`]).
//!
//! The core decides everything: a Map-Notify that confirms a registration is
//! only released once the shell has reported the commit that holds it, so an
//! acknowledged registration survives a crash, and a failed commit is
//! retried with backoff. The shell only carries things out, in the order it
//! takes them.
//!
//! Modules by concern: [`registration`] (Map-Register, replay window,
//! expiry), [`resolution`] (Map-Request, proxy Map-Reply), [`notify`]
//! (Map-Notifies to correspondents, pushes, acks, retransmits), [`commits`]
//! (durability), [`registry`] (the mapping database), [`policy`] (what the
//! configuration allows), [`counters`], and [`io`] (the types in and out).

pub mod candidates;
pub mod commits;
pub mod counters;
pub mod endpoints;
pub mod io;
pub mod notify;
pub mod policy;
pub mod registration;
pub mod registry;
pub mod resolution;

pub use candidates::{behind_nat, candidates, Candidate};
pub use commits::FaultStatus;
pub use counters::{Counters, PeerCounters};
pub use io::{
    ActionFault, ActionId, Commit, CommitId, ControlAction, Endpoints, Refusal, StoreFault,
    StoreOp, Transmit, Via,
};
pub use lisp_wire::DEFAULT_WG_PORT;
pub use policy::{AllowedEid, Limits, NotifyTiming, PeerPolicy, Policy, Rate, SourcePrefix};
pub use registry::{Mapping, Origin, Registry, Rloc};
pub use resolution::mapping_record;

use commits::{CommitOutcome, Commits};
use lisp_wire::{EidPrefix, KeyId, Message, ParseErrorKind, TYPE_ECM, TYPE_MAP_REQUEST};
use notify::{PendingNotify, Subscriber};
use registration::NonceWindow;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Control peers a map-server can tell apart: they are indexed by `u16`.
/// Peers beyond this are ignored (the shell refuses such a configuration).
pub const MAX_PEERS: usize = u16::MAX as usize + 1;
/// A failed action is tried this often in all.
const ACTION_ATTEMPTS: u32 = 3;
const ACTION_RETRY: Duration = Duration::from_millis(200);

/// The map-server state machine.
#[derive(Debug)]
pub struct MapServer {
    policy: Policy,
    tunnel_peers: HashMap<IpAddr, u16>,
    plain_peers: HashMap<IpAddr, u16>,
    /// Peer index by name, for [`MapServer::restore`] at a million entries.
    peers_by_name: HashMap<String, u16>,
    /// Keyed peers by WireGuard key, for observed endpoints.
    peers_by_key: HashMap<[u8; 32], u16>,
    /// Where the map-server's WireGuard sees each peer, by peer index.
    observed: Vec<Option<SocketAddr>>,
    /// Per peer, the key-id of its last accepted Map-Register: the
    /// map-server signs the notifies it starts to it the same way.
    key_ids: Vec<KeyId>,
    /// Scratch space of the reply being built (its records, and where each
    /// ends), kept so that answering allocates only the reply itself.
    reply_records: Vec<u8>,
    reply_bounds: Vec<(usize, usize)>,
    polling: endpoints::Polling,
    registry: Registry,
    nonces: Vec<NonceWindow>,
    /// Per WireGuard peer: the highest register nonce accepted (persisted).
    register_floor: Vec<u64>,
    subscriptions: HashMap<EidPrefix, Vec<Subscriber>>,
    pending: HashMap<u64, PendingNotify>,
    /// Smoothed Map-Notify → Ack round trip per peer: sizes its notify
    /// retransmissions.
    notify_srtt: HashMap<u16, Duration>,
    transmits: VecDeque<Transmit>,
    commits: Commits,
    actions: VecDeque<(ActionId, ControlAction)>,
    /// Actions the shell is carrying out or that wait for a retry: the
    /// action, attempts so far, and when to try again (if it failed).
    actions_open: HashMap<ActionId, (ControlAction, u32, Option<Instant>)>,
    next_action: u64,
    next_sweep: Instant,
    nonce_gen: lisp_wire::Nonces,
    counters: Counters,
    /// Per control peer (by index): Map-Requests it may still send.
    request_budget: Vec<limits::TokenBucket>,
    /// Per control peer: Map-Registers and Map-Notify-Acks.
    register_budget: Vec<limits::TokenBucket>,
    /// Log lines about refused messages, per source address.
    refusal_log: limits::LogBudget<IpAddr>,
}

impl MapServer {
    /// A map-server with the static mappings of `policy` loaded. `seed`
    /// makes its nonces unpredictable (and tests reproducible).
    pub fn new(mut policy: Policy, now: Instant, seed: u64) -> Self {
        if policy.peers.len() > MAX_PEERS {
            error!(
                peers = policy.peers.len(),
                max = MAX_PEERS,
                "too many control peers; ignoring those beyond the limit"
            );
            policy.peers.truncate(MAX_PEERS);
        }
        let mut tunnel_peers = HashMap::new();
        let mut plain_peers = HashMap::new();
        let mut peers_by_name = HashMap::new();
        let mut peers_by_key = HashMap::new();
        for (i, p) in policy.peers.iter().enumerate() {
            if let Some(key) = p.wg_key {
                peers_by_key.insert(key, i as u16);
            }
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
        let polling = endpoints::Polling {
            due: (!peers_by_key.is_empty()).then_some(now),
            ..Default::default()
        };
        let limits = policy.limits;
        let buckets = |rate| {
            (0..policy.peers.len())
                .map(|_| limits::TokenBucket::new(rate, now))
                .collect()
        };
        MapServer {
            request_budget: buckets(limits.requests),
            register_budget: buckets(limits.registers),
            // Sources beyond this many share one budget: spoofed sources
            // on the plain listener cannot grow the map.
            refusal_log: limits::LogBudget::new(limits.log_lines, limits.log_interval, 4096, now),
            register_floor: vec![0; policy.peers.len()],
            observed: vec![None; policy.peers.len()],
            key_ids: vec![KeyId::HmacSha256; policy.peers.len()],
            reply_records: Vec::new(),
            reply_bounds: Vec::new(),
            policy,
            tunnel_peers,
            plain_peers,
            peers_by_name,
            peers_by_key,
            polling,
            registry,
            nonces,
            subscriptions: HashMap::new(),
            pending: HashMap::new(),
            notify_srtt: HashMap::new(),
            transmits: VecDeque::new(),
            commits: Commits::new(),
            actions: VecDeque::new(),
            actions_open: HashMap::new(),
            next_action: 0,
            next_sweep: now + registration::SWEEP_INTERVAL,
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

    /// The store fault going on now, if a commit failed and none has
    /// succeeded since.
    pub fn store_fault(&self) -> Option<&FaultStatus> {
        self.commits.fault()
    }

    /// Store operations not yet known to be on disk.
    pub fn unsaved_ops(&self) -> usize {
        self.commits.unsaved()
    }

    /// When a live registration was last refreshed: every registration
    /// lives for the registration lifetime from its last refresh.
    pub fn last_refresh(&self, m: &Mapping) -> Option<Instant> {
        m.expires
            .and_then(|e| e.checked_sub(self.policy.registration_lifetime))
    }

    /// Takes the next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits
            .pop_front()
            .or_else(|| self.commits.poll_released())
    }

    /// Takes the next batch of store operations to commit durably, all or
    /// none; report the outcome with [`MapServer::handle_commit_result`].
    /// One commit is outstanding at a time.
    pub fn poll_commit(&mut self, now: Instant) -> Option<Commit> {
        self.commits.poll_commit(now)
    }

    /// The outcome of a commit taken from [`MapServer::poll_commit`].
    pub fn handle_commit_result(
        &mut self,
        now: Instant,
        id: CommitId,
        result: Result<(), StoreFault>,
    ) {
        let error = result.as_ref().err().map(|f| f.0.clone());
        match self.commits.handle_result(now, id, result) {
            CommitOutcome::Committed | CommitOutcome::Unknown => {}
            CommitOutcome::Recovered(f) => {
                info!(
                    failed_commits = f.failures,
                    down_ms = now.saturating_duration_since(f.since).as_millis() as u64,
                    "store writable again; registrations are confirmed again"
                );
            }
            CommitOutcome::FaultBegan => {
                error!(
                    error = error.as_deref().unwrap_or(""),
                    unsaved = self.commits.unsaved(),
                    "cannot persist registrations; not confirming them, retrying with backoff"
                );
            }
            CommitOutcome::StillFailing => {
                tracing::debug!(
                    error = error.as_deref().unwrap_or(""),
                    "store commit failed again"
                );
            }
        }
        self.counters.store_commits = self.commits.commits;
        self.counters.store_failures = self.commits.failures;
        self.counters.withheld_notifies = self.commits.withheld_dropped;
    }

    /// Takes the next action on the WireGuard control interface; report its
    /// outcome with [`MapServer::handle_action_result`].
    pub fn poll_action(&mut self) -> Option<(ActionId, ControlAction)> {
        self.actions.pop_front()
    }

    /// Whether the map-server's WireGuard is asked for the peers' endpoints
    /// now (a registration just arrived, or the periodic read is due).
    fn poll_actions_due(&mut self, now: Instant) {
        self.poll_endpoints(now);
    }

    /// The outcome of an action taken from [`MapServer::poll_action`]. A
    /// failed one is tried again a little later, a few times.
    pub fn handle_action_result(
        &mut self,
        now: Instant,
        id: ActionId,
        result: Result<(), ActionFault>,
    ) {
        let Some((action, attempts, _)) = self.actions_open.remove(&id) else {
            return;
        };
        if let Err(ActionFault(e)) = result {
            self.counters.action_failures += 1;
            if attempts < ACTION_ATTEMPTS {
                warn!(action = %action, error = %e, "control interface action failed; will retry");
                self.actions_open
                    .insert(id, (action, attempts, Some(now + ACTION_RETRY)));
            } else {
                error!(action = %action, error = %e, attempts, "control interface action failed; giving up");
            }
        }
    }

    fn next_action_id(&mut self) -> ActionId {
        let id = ActionId(self.next_action);
        self.next_action += 1;
        id
    }

    fn push_action(&mut self, action: ControlAction) {
        let id = self.next_action_id();
        self.actions_open.insert(id, (action.clone(), 1, None));
        self.actions.push_back((id, action));
    }

    fn retry_actions(&mut self, now: Instant) {
        for (id, (action, attempts, retry_at)) in self.actions_open.iter_mut() {
            if retry_at.is_some_and(|t| now >= t) {
                *retry_at = None;
                *attempts += 1;
                self.actions.push_back((*id, action.clone()));
            }
        }
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
        let actions = self.actions_open.values().filter_map(|(_, _, t)| *t);
        pending
            .chain(actions)
            .chain(self.endpoints_timeout())
            .chain(self.commits.poll_timeout())
            .chain(std::iter::once(self.next_sweep))
            .min()
    }

    /// Retransmits, releases held replies, retries actions and expires
    /// state.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.retransmit_notifies(now);
        self.retry_actions(now);
        self.poll_actions_due(now);
        if now >= self.next_sweep {
            self.next_sweep = now + registration::SWEEP_INTERVAL;
            self.sweep(now);
        }
    }

    /// Handles one received datagram. Bad input is counted and logged, and
    /// never changes state.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, via: Via, bytes: &[u8]) {
        let requests_before = self.counters.requests;
        let peer = self.identify(from, via).ok();
        // The budget is checked before anything is parsed: a flood costs
        // one lookup and one bucket per datagram.
        let result = match peer.map(|p| self.spend_budget(p, bytes, now)) {
            Some(Err(limited)) => Err(limited),
            _ => self.dispatch(now, from, via, bytes),
        };
        if let Some(peer) = peer {
            let requests = self.counters.requests - requests_before;
            self.counters.count_peer(peer, requests, result.is_err());
        }
        if let Err(refusal) = result {
            self.counters.count_refusal(&refusal);
            self.log_refusal(now, from, via, &refusal);
        }
        self.poll_actions_due(now);
    }

    /// Takes a token from the peer's budget for this kind of message.
    fn spend_budget(&mut self, peer: u16, bytes: &[u8], now: Instant) -> Result<(), Refusal> {
        let (bucket, kind) = match bytes.first().map(|b| b >> 4) {
            Some(TYPE_MAP_REQUEST | TYPE_ECM) => (&mut self.request_budget, "Map-Request"),
            _ => (&mut self.register_budget, "Map-Register"),
        };
        match bucket.get_mut(peer as usize).map(|b| b.take(now)) {
            Some(false) => Err(Refusal::RateLimited(kind)),
            _ => Ok(()),
        }
    }

    /// One line per refusal, within the source's log budget; the rest are
    /// counted and summarised at the next sweep.
    fn log_refusal(&mut self, now: Instant, from: SocketAddr, via: Via, refusal: &Refusal) {
        if self.refusal_log.check(&from.ip(), now) == limits::Verdict::Suppress {
            self.counters.suppressed_log_lines += 1;
            return;
        }
        match refusal {
            // Anyone can send these: debug only.
            Refusal::NotAllowed => {
                tracing::debug!(%from, via = via.name(), reason = %refusal, "refused control message")
            }
            _ => warn!(%from, via = via.name(), reason = %refusal, "refused control message"),
        }
    }

    /// The "suppressed N" summary of each source whose log budget ran out.
    pub(crate) fn summarise_suppressed_logs(&mut self, now: Instant) {
        for (source, suppressed) in self.refusal_log.drain(now) {
            match source {
                Some(source) => {
                    warn!(%source, suppressed, "more refused control messages from this source; their lines were suppressed")
                }
                None => {
                    warn!(suppressed, "more refused control messages from many sources; their lines were suppressed")
                }
            }
        }
    }

    fn dispatch(
        &mut self,
        now: Instant,
        from: SocketAddr,
        via: Via,
        bytes: &[u8],
    ) -> Result<(), Refusal> {
        if via == Via::Plain && !self.plain_source_allowed(from.ip()) {
            return Err(Refusal::NotAllowed);
        }
        let kind = bytes.first().map(|b| b >> 4);
        if matches!(kind, Some(TYPE_MAP_REQUEST | TYPE_ECM)) {
            match lisp_wire::parse_map_request(bytes) {
                Ok(req) => {
                    self.counters.requests += 1;
                    if req.ecm().is_some_and(|e| e.checksum_zero) {
                        self.counters.zero_checksum_requests += 1;
                    }
                    return self.handle_map_request(now, from, via, req);
                }
                // An ECM around something else: said below, as before.
                Err(e) if matches!(e.kind, ParseErrorKind::NotAMapRequest(_)) => {}
                Err(e) => return Err(Refusal::Malformed(e.to_string())),
            }
        }
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
            Message::Ecm(ecm) => Err(Refusal::Unexpected(ecm.message.name())),
            other => Err(Refusal::Unexpected(other.name())),
        }
    }

    /// Whether the plain listener answers `ip`: a configured keyless peer,
    /// or a source on its allowed list.
    fn plain_source_allowed(&self, ip: IpAddr) -> bool {
        self.plain_peers.contains_key(&ip)
            || self.policy.plain_allowed.iter().any(|p| p.contains(ip))
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
}
