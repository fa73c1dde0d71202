//! The relay: a TURN allocation on the campus coturn, for the pairs no
//! direct path joins (a symmetric NAT, a NAT that remaps ports, a network
//! that blocks UDP).
//!
//! What the core decides, the shell carries out ([`RelayOp`]) and reports
//! ([`RelayEvent`]):
//!
//! - **Credentials.** A [`relay::Grant`] comes from a map-server over the
//!   control tunnel ([`Output::FetchRelayGrant`], fetched again at half its
//!   life), or from a file for a node that must reach the relay first.
//! - **The allocation.** With a grant, the agent keeps one allocation,
//!   trying each server over UDP, then TLS, then TCP, each for
//!   [`ALLOCATE_WAIT`]; after all fail it waits (backing off) and starts
//!   over. A move re-allocates (the allocation is bound to our old
//!   address). Every [`CHECK_EVERY`] a self-check crosses the relay and
//!   comes back; two missed in a row mean the relay lost us (coturn
//!   restarted, or our NAT rebound the TURN socket): re-allocate. A path
//!   through the relay that stops working checks at once.
//! - **Relay-only.** When the allocation had to use TLS or TCP (UDP does
//!   not get out), or the configuration says so, everything goes through
//!   the relay: the control tunnel and every data peer, each WireGuard
//!   endpoint a proxy socket of the shell's.
//! - **The candidate.** The relayed address is registered as our last
//!   candidate (priority 254), marked relayed (the relay's address is the
//!   candidate's RTR RLOC).
//! - **Proxies.** For a peer's relayed candidate, WireGuard's endpoint is a
//!   local proxy socket that forwards through our allocation (both sides
//!   relayed: either may start, and a relay drops nothing it is not
//!   permitted to pass). Without an allocation of ours, WireGuard sends to
//!   the relayed address itself. The peers' own addresses are permitted on
//!   our allocation, for peers that reach us that way.
//! - **Switching.** A pair reaches the relay as the last candidate of its
//!   attempt plan, or when a direct path stalls (its relayed candidate is
//!   pinned at once, before the path is resolved again). A relayed pair
//!   probes direct: at every change of its or our endpoints, and
//!   periodically with backoff. A probe sends copies of WireGuard's packets
//!   from our WireGuard port straight to the peer's direct candidates,
//!   besides the relayed ones (WireGuard keeps whichever copy comes first
//!   and drops the other as a replay: nothing is lost), and pokes a
//!   keepalive so an idle pair has something to copy. If a direct copy gets
//!   through, the peer's WireGuard roams to it, its answers come direct,
//!   and ours follows: the statistics show the endpoint leave the relay.

use crate::io::{Output, RelayEvent, RelayOp};
use crate::Xtr;
use relay::{Grant, Transport};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long one way of reaching a relay server gets to allocate.
pub const ALLOCATE_WAIT: Duration = Duration::from_secs(3);
/// First wait after every server and transport failed; doubles.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Period of the self-check while allocated: a relay that lost us is
/// noticed within about 7 s even with no traffic to show it, and our NAT's
/// mapping toward the relay (30 s unanswered, 120 s assured in conntrack)
/// stays open.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long a self-check answer may take.
pub const CHECK_WAIT: Duration = Duration::from_secs(1);
/// Missed self-checks in a row that lose the allocation.
const CHECK_MISSES: u32 = 2;
/// A grant is fetched again after this share of its validity.
const GRANT_REFRESH: f64 = 0.5;
const FETCH_RETRY_FIRST: Duration = Duration::from_secs(5);
const FETCH_RETRY_MAX: Duration = Duration::from_secs(300);
/// First direct probe of a relayed pair, and its backoff.
pub const PROBE_FIRST: Duration = Duration::from_secs(30);
const PROBE_MAX: Duration = Duration::from_secs(600);
/// A probe's window: copies go direct, keepalives every second.
pub const PROBE_WINDOW: Duration = Duration::from_secs(2);
/// A probe right after an endpoint change waits this long (the punches
/// that open our NAT go first).
pub(crate) const PROBE_SOON: Duration = Duration::from_millis(100);
/// How long the first registration may wait for the first allocation
/// (which takes two round trips and the TURN client's 50 ms pacing).
pub const REGISTER_HOLD: Duration = Duration::from_millis(500);
/// Our relayed candidate's priority: after every direct one.
pub const RELAYED_PRIORITY: u8 = 254;

/// What the configuration says about the relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayPolicy {
    /// Fetch grants from the map-servers and keep an allocation.
    pub enabled: bool,
    /// Send everything through the relay, control tunnel included (a
    /// network known to block UDP). Relay-only also comes by itself when
    /// only TLS or TCP reach the relay.
    pub only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Alloc {
    /// No grant yet, or the relay is off.
    Off,
    Trying {
        id: u64,
        /// Index in [`Relay::ways`].
        way: usize,
        since: Instant,
    },
    Up {
        id: u64,
        way: usize,
        relayed: SocketAddr,
        since: Instant,
    },
    /// Every way failed; start over at `until`.
    Waiting { until: Instant },
}

/// A grant as held, with the instant it stops being usable.
#[derive(Debug, Clone)]
struct HeldGrant {
    grant: Grant,
    received: Instant,
    expires: Instant,
}

#[derive(Debug)]
pub(crate) struct Relay {
    grant: Option<HeldGrant>,
    fetch_in_flight: bool,
    fetch_next: Option<Instant>,
    fetch_failures: u32,
    alloc: Alloc,
    /// Full rounds of ways that failed in a row.
    rounds_failed: u32,
    next_id: u64,
    /// Remote (behind the relay) → the shell's local proxy socket for it.
    proxies: BTreeMap<SocketAddr, SocketAddr>,
    proxies_asked: BTreeSet<SocketAddr>,
    /// Permissions last handed to the shell.
    permitted: Vec<IpAddr>,
    check_next: Option<Instant>,
    /// The outstanding self-check: nonce and deadline.
    check: Option<(u64, Instant)>,
    check_misses: u32,
    /// Relay-only because only a stream transport reached the relay.
    stream_only: bool,
}

/// The relay's state, for `xtr status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    /// "off", "allocating", "up" or "waiting".
    pub state: &'static str,
    pub server: Option<SocketAddr>,
    pub transport: Option<Transport>,
    pub relayed: Option<SocketAddr>,
    /// Time in this state.
    pub since: Option<Duration>,
    /// Everything goes through the relay.
    pub only: bool,
    /// How long new allocations may still be made with our credentials.
    pub grant_valid_for: Option<Duration>,
}

impl Relay {
    pub(crate) fn new() -> Relay {
        Relay {
            grant: None,
            fetch_in_flight: false,
            fetch_next: None,
            fetch_failures: 0,
            alloc: Alloc::Off,
            rounds_failed: 0,
            next_id: 1,
            proxies: BTreeMap::new(),
            proxies_asked: BTreeSet::new(),
            permitted: Vec::new(),
            check_next: None,
            check: None,
            check_misses: 0,
            stream_only: false,
        }
    }

    /// Every way to reach a relay: (transport, address, TLS pin), server by
    /// server, in the order tried.
    fn ways(&self, only: bool) -> Vec<(Transport, SocketAddr, Option<[u8; 32]>)> {
        let Some(g) = &self.grant else {
            return Vec::new();
        };
        g.grant
            .servers
            .iter()
            .flat_map(|s| {
                let pin = s.tls_pin();
                s.endpoints()
                    .into_iter()
                    .filter(move |(t, _)| !(only && *t == Transport::Udp))
                    .map(move |(t, a)| (t, a, pin))
            })
            .collect()
    }

    /// Our relayed address, while allocated.
    pub(crate) fn relayed(&self) -> Option<SocketAddr> {
        match self.alloc {
            Alloc::Up { relayed, .. } => Some(relayed),
            _ => None,
        }
    }

    fn up(&self) -> bool {
        self.relayed().is_some()
    }

    /// The proxy socket that stands for `remote`, if the shell made one.
    pub(crate) fn proxy(&self, remote: SocketAddr) -> Option<SocketAddr> {
        self.proxies.get(&remote).copied()
    }

    /// The remote a local proxy socket stands for.
    pub(crate) fn remote_of(&self, local: SocketAddr) -> Option<SocketAddr> {
        self.proxies
            .iter()
            .find(|(_, l)| **l == local)
            .map(|(r, _)| *r)
    }

    /// Whether WireGuard reaching a peer at `endpoint` goes through the
    /// relay: a proxy socket, or a relayed candidate.
    pub(crate) fn is_relay_endpoint(
        &self,
        endpoint: SocketAddr,
        relayed: &BTreeSet<SocketAddr>,
    ) -> bool {
        relayed.contains(&endpoint) || self.remote_of(endpoint).is_some()
    }
}

impl Xtr {
    /// Everything goes through the relay.
    pub(crate) fn relay_only(&self) -> bool {
        self.policy.relay.enabled && (self.policy.relay.only || self.relay.stream_only)
    }

    /// The endpoint WireGuard should use for a candidate: a relayed
    /// candidate (or any, when relay-only) through our proxy socket for it
    /// once we have one and an allocation; else the candidate itself.
    pub(crate) fn via_relay(&self, candidate: SocketAddr, relayed: bool) -> SocketAddr {
        if (relayed || self.relay_only()) && self.relay.up() {
            if let Some(local) = self.relay.proxy(candidate) {
                return local;
            }
        }
        candidate
    }

    /// Asks the shell for proxy sockets the peers need: for each relayed
    /// candidate, or every candidate when relay-only.
    pub(crate) fn want_proxies(&mut self) {
        if !self.relay.up() {
            return;
        }
        let only = self.relay_only();
        let mut want: BTreeSet<SocketAddr> = BTreeSet::new();
        for p in self.peers.values() {
            for c in &p.path.candidates {
                if only || p.path.relayed.contains(c) {
                    want.insert(*c);
                }
            }
        }
        if only {
            for ms in &self.policy.map_servers {
                want.extend(ms.endpoints.iter().copied());
            }
        }
        for remote in want {
            if self.relay.proxies.contains_key(&remote)
                || self.relay.proxies_asked.contains(&remote)
            {
                continue;
            }
            self.relay.proxies_asked.insert(remote);
            self.outputs
                .push_back(Output::Relay(RelayOp::Proxy { remote }));
        }
    }

    /// The addresses our peers may reach our relayed address from: every
    /// direct candidate's address (the relay's own is always permitted).
    fn update_permissions(&mut self) {
        if !self.relay.up() {
            return;
        }
        let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
        for p in self.peers.values() {
            for c in &p.path.candidates {
                if !p.path.relayed.contains(c) {
                    ips.insert(c.ip());
                }
            }
        }
        let ips: Vec<IpAddr> = ips.into_iter().collect();
        if ips != self.relay.permitted {
            self.relay.permitted = ips.clone();
            self.outputs
                .push_back(Output::Relay(RelayOp::Permit { ips }));
        }
    }

    /// Proxies and permissions after the peers changed.
    pub(crate) fn relay_peers_changed(&mut self) {
        self.want_proxies();
        self.update_permissions();
    }

    /// Points each map-server's control peer at the right endpoint: its
    /// proxy socket when relay-only, else its own endpoint of a family we
    /// have.
    pub(crate) fn route_control(&mut self) {
        for (i, ms) in self.policy.map_servers.iter().enumerate() {
            let reachable = ms
                .endpoints
                .iter()
                .find(|e| self.rlocs.iter().any(|r| r.addr.is_ipv4() == e.is_ipv4()))
                .or(ms.endpoints.first());
            let Some(&e) = reachable else { continue };
            let target = if self.relay_only() {
                match (self.relay.up(), self.relay.proxy(e)) {
                    (true, Some(local)) => local,
                    // Wait for the proxy: UDP does not get out anyway.
                    _ => continue,
                }
            } else {
                e
            };
            if self.dataplane.control_endpoint(i) != Some(target) {
                info!(map_server = %ms.name, endpoint = %target, "reaching the map-server at another endpoint");
            }
            self.dataplane.want_control_endpoint(i, target);
        }
    }

    // ---- grants ---------------------------------------------------------------

    /// A grant: from a map-server's answer to [`Output::FetchRelayGrant`],
    /// or one the shell read from a file at start. `valid_for` is how long
    /// new allocations may be made with it (the shell knows the wall
    /// clock). Errors are a failed fetch: retried with backoff.
    pub fn handle_relay_grant(&mut self, now: Instant, result: Result<(Grant, Duration), String>) {
        self.relay.fetch_in_flight = false;
        match result.and_then(|(g, valid)| {
            g.check().map_err(|e| e.to_string())?;
            if valid.is_zero() {
                return Err("the grant has expired".into());
            }
            Ok((g, valid))
        }) {
            Ok((grant, valid_for)) => {
                self.counters.relay_grants += 1;
                self.relay.fetch_failures = 0;
                let refresh = valid_for.mul_f64(GRANT_REFRESH);
                self.relay.fetch_next = Some(now + refresh);
                let first = self.relay.grant.is_none();
                debug!(valid_for = ?valid_for, servers = grant.servers.len(), "relay grant");
                self.relay.grant = Some(HeldGrant {
                    grant,
                    received: now,
                    expires: now + valid_for,
                });
                if first {
                    info!("relay credentials received");
                }
                if matches!(self.relay.alloc, Alloc::Off | Alloc::Waiting { .. }) {
                    self.relay.rounds_failed = 0;
                    self.start_allocating(now, 0);
                }
            }
            Err(e) => {
                self.counters.relay_grant_failures += 1;
                self.relay.fetch_failures += 1;
                let wait = FETCH_RETRY_FIRST
                    .saturating_mul(1 << self.relay.fetch_failures.min(8))
                    .min(FETCH_RETRY_MAX);
                self.relay.fetch_next = Some(now + wait);
                warn!(error = %e, retry_in = ?wait, "no relay credentials");
            }
        }
        self.flush_dataplane(now);
    }

    /// Asks a map-server that is up for a grant when we have none, or it
    /// is past half its life.
    pub(crate) fn fetch_grant_if_due(&mut self, now: Instant) {
        if !self.policy.relay.enabled || self.relay.fetch_in_flight {
            return;
        }
        let due = match (&self.relay.grant, self.relay.fetch_next) {
            (_, Some(t)) => now >= t,
            (None, None) => true,
            (Some(_), None) => false,
        };
        if !due {
            return;
        }
        let Some(ms) = self.servers.iter().position(|s| s.up) else {
            return;
        };
        self.relay.fetch_in_flight = true;
        self.outputs
            .push_back(Output::FetchRelayGrant { map_server: ms });
    }

    // ---- the allocation -------------------------------------------------------

    fn start_allocating(&mut self, now: Instant, way: usize) {
        let ways = self.relay.ways(self.policy.relay.only);
        let usable = self.relay.grant.as_ref().is_some_and(|g| now < g.expires);
        let Some(&(transport, addr, pin)) = ways.get(way).filter(|_| usable) else {
            if !usable {
                // The credentials ran out: new ones first.
                self.relay.alloc = Alloc::Off;
                self.relay.fetch_next = Some(now);
                return;
            }
            self.relay.rounds_failed += 1;
            let wait = RETRY_FIRST
                .saturating_mul(1 << self.relay.rounds_failed.saturating_sub(1).min(8))
                .min(RETRY_MAX);
            warn!(retry_in = ?wait, "no relay server reachable");
            self.relay.alloc = Alloc::Waiting { until: now + wait };
            return;
        };
        let Some(g) = &self.relay.grant else { return };
        let id = self.relay.next_id;
        self.relay.next_id += 1;
        debug!(server = %addr, %transport, "allocating on the relay");
        self.outputs.push_back(Output::Relay(RelayOp::Allocate {
            id,
            server: addr,
            transport,
            username: g.grant.username.clone(),
            password: g.grant.password.clone(),
            tls_pin: pin,
        }));
        self.relay.alloc = Alloc::Trying {
            id,
            way,
            since: now,
        };
    }

    /// Gives the allocation up and starts a new one at once (a move, a lost
    /// allocation).
    fn reallocate(&mut self, now: Instant, why: &str) {
        let id = match self.relay.alloc {
            Alloc::Trying { id, .. } | Alloc::Up { id, .. } => Some(id),
            _ => None,
        };
        let was_up = self.relay.up();
        if let Some(id) = id {
            self.outputs
                .push_back(Output::Relay(RelayOp::Release { id }));
        }
        if self.relay.grant.is_none() {
            return;
        }
        info!(reason = why, "allocating on the relay again");
        self.relay.check = None;
        self.relay.check_misses = 0;
        self.relay.check_next = None;
        self.relay.rounds_failed = 0;
        self.start_allocating(now, 0);
        if was_up {
            // Our relayed candidate is gone until the new one comes.
            self.reregister_now(now);
        }
    }

    /// What the shell reports about the relay.
    pub fn handle_relay_event(&mut self, now: Instant, event: RelayEvent) {
        match event {
            RelayEvent::Allocated { id, relayed } => {
                let Alloc::Trying { id: want, way, .. } = self.relay.alloc else {
                    return;
                };
                if id != want {
                    return;
                }
                let ways = self.relay.ways(self.policy.relay.only);
                let transport = ways.get(way).map_or(Transport::Udp, |w| w.0);
                self.counters.relay_allocations += 1;
                self.relay.alloc = Alloc::Up {
                    id,
                    way,
                    relayed,
                    since: now,
                };
                self.relay.rounds_failed = 0;
                self.relay.check_next = Some(now + CHECK_EVERY);
                self.relay.check_misses = 0;
                let stream_only = transport.is_stream();
                if stream_only != self.relay.stream_only {
                    self.relay.stream_only = stream_only;
                    if stream_only {
                        warn!(%transport, "UDP does not get out: everything goes through the relay");
                    }
                }
                info!(%relayed, %transport, "relay allocation up");
                // The shell applies permissions to each new allocation.
                self.relay.permitted.clear();
                self.relay_peers_changed();
                self.route_control();
                self.respec_all(now);
                self.reregister_now(now);
            }
            RelayEvent::Lost { id, reason } => {
                let current = match self.relay.alloc {
                    Alloc::Trying { id, .. } | Alloc::Up { id, .. } => id,
                    _ => return,
                };
                if id != current {
                    return;
                }
                self.counters.relay_losses += 1;
                match self.relay.alloc {
                    Alloc::Trying { way, .. } => {
                        debug!(%reason, "this way to the relay failed");
                        self.outputs
                            .push_back(Output::Relay(RelayOp::Release { id }));
                        self.start_allocating(now, way + 1);
                    }
                    _ => {
                        warn!(%reason, "relay allocation lost");
                        self.reallocate(now, "the allocation was lost");
                        self.respec_all(now);
                    }
                }
            }
            RelayEvent::Proxy { remote, local } => {
                self.relay.proxies_asked.remove(&remote);
                if self.relay.proxies.insert(remote, local) != Some(local) {
                    self.route_control();
                    self.respec_all(now);
                }
            }
            RelayEvent::CheckAnswered { nonce } => {
                if self.relay.check.is_some_and(|(n, _)| n == nonce) {
                    self.relay.check = None;
                    self.relay.check_misses = 0;
                }
            }
        }
        self.flush_dataplane(now);
    }

    /// Sends a self-check now (unless one is out).
    pub(crate) fn check_relay_now(&mut self, now: Instant) {
        if !self.relay.up() || self.relay.check.is_some() {
            return;
        }
        let nonce = self.nonces.next_nonce();
        self.relay.check = Some((nonce, now + CHECK_WAIT));
        self.relay.check_next = Some(now + CHECK_EVERY);
        self.outputs
            .push_back(Output::Relay(RelayOp::Check { nonce }));
    }

    /// Our addresses changed: an allocation made from the old one is
    /// useless.
    pub(crate) fn relay_moved(&mut self, now: Instant) {
        if !matches!(self.relay.alloc, Alloc::Off) && self.relay.grant.is_some() {
            // A network that let only TCP out may let UDP out now.
            self.relay.stream_only = false;
            self.reallocate(now, "our address changed");
        }
    }

    /// Timers of the relay.
    pub(crate) fn relay_timeout(&mut self, now: Instant) {
        self.fetch_grant_if_due(now);
        match self.relay.alloc.clone() {
            Alloc::Trying { id, way, since } if now >= since + ALLOCATE_WAIT => {
                debug!("no allocation in time; trying the next way to the relay");
                self.outputs
                    .push_back(Output::Relay(RelayOp::Release { id }));
                self.start_allocating(now, way + 1);
            }
            Alloc::Waiting { until } if now >= until => self.start_allocating(now, 0),
            Alloc::Up { .. } => {
                if let Some((_, deadline)) = self.relay.check {
                    if now >= deadline {
                        self.relay.check = None;
                        self.relay.check_misses += 1;
                        self.counters.relay_checks_missed += 1;
                        if self.relay.check_misses >= CHECK_MISSES {
                            warn!("the relay stopped answering our self-checks");
                            self.reallocate(now, "self-checks unanswered");
                            self.respec_all(now);
                        } else {
                            self.check_relay_now(now);
                        }
                    }
                } else if self.relay.check_next.is_some_and(|t| now >= t) {
                    self.check_relay_now(now);
                }
            }
            _ => {}
        }
        self.probe_paths(now);
    }

    pub(crate) fn relay_poll_timeout(&self) -> Option<Instant> {
        let fetch = if self.policy.relay.enabled && !self.relay.fetch_in_flight {
            match (&self.relay.grant, self.relay.fetch_next) {
                (_, Some(t)) if self.servers.iter().any(|s| s.up) => Some(t),
                _ => None,
            }
        } else {
            None
        };
        let alloc = match self.relay.alloc {
            Alloc::Trying { since, .. } => Some(since + ALLOCATE_WAIT),
            Alloc::Waiting { until } => Some(until),
            Alloc::Up { .. } => match self.relay.check {
                Some((_, d)) => Some(d),
                None => self.relay.check_next,
            },
            Alloc::Off => None,
        };
        fetch
            .into_iter()
            .chain(alloc)
            .chain(self.probes_due())
            .min()
    }

    /// Until when the first registration waits for our allocation: only at
    /// start, with credentials in hand, for at most [`REGISTER_HOLD`].
    pub(crate) fn relay_hold_registration(&self, now: Instant) -> Option<Instant> {
        if self.servers.iter().any(|s| s.confirmed_once) {
            return None;
        }
        match self.relay.alloc {
            Alloc::Trying { since, way: 0, .. } if now < since + REGISTER_HOLD => {
                Some(since + REGISTER_HOLD)
            }
            _ => None,
        }
    }

    /// The relayed locator we register, while allocated.
    pub(crate) fn relayed_locator(&self) -> Option<lisp_wire::WgLocator> {
        let relayed = self.relay.relayed()?;
        Some(
            lisp_wire::WgLocator::new(relayed, self.policy.wg_public_key).with_rtrs([relayed.ip()]),
        )
    }

    pub fn relay_status(&self, now: Instant) -> RelayStatus {
        let ways = self.relay.ways(self.policy.relay.only);
        let (state, way, since, relayed) = match self.relay.alloc {
            Alloc::Off => ("off", None, None, None),
            Alloc::Trying { way, since, .. } => ("allocating", Some(way), Some(since), None),
            Alloc::Up {
                way,
                since,
                relayed,
                ..
            } => ("up", Some(way), Some(since), Some(relayed)),
            Alloc::Waiting { .. } => ("waiting", None, None, None),
        };
        let w = way.and_then(|w| ways.get(w));
        RelayStatus {
            state,
            server: w.map(|w| w.1),
            transport: w.map(|w| w.0),
            relayed,
            since: since.map(|s| now.saturating_duration_since(s)),
            only: self.relay_only(),
            grant_valid_for: self
                .relay
                .grant
                .as_ref()
                .map(|g| g.expires.saturating_duration_since(now)),
        }
    }

    /// A grant from a file (kept from an earlier run, or put there by the
    /// operator for a node that must reach the relay before it can reach a
    /// map-server): used at once, and replaced by a fresh one as soon as a
    /// map-server is up.
    pub fn handle_relay_grant_from_file(
        &mut self,
        now: Instant,
        grant: Grant,
        valid_for: Duration,
    ) {
        self.handle_relay_grant(now, Ok((grant, valid_for)));
        if self.relay.grant.is_some() {
            self.relay.fetch_next = Some(now);
        }
    }

    /// When the grant was last received, for status.
    pub fn relay_grant_age(&self, now: Instant) -> Option<Duration> {
        self.relay
            .grant
            .as_ref()
            .map(|g| now.saturating_duration_since(g.received))
    }

    // ---- paths through the relay ----------------------------------------------

    /// Reads where WireGuard reaches each peer: onto the relay, or off it
    /// (a probe's copy got through and both ends roamed to the direct
    /// path; from then on that endpoint is programmed).
    pub(crate) fn relay_paths(&mut self, now: Instant, stats: &[crate::PeerStats]) {
        // Peers we program at the relay (or at nothing: a responder's
        // endpoint is WireGuard's): leaving the relay is WireGuard's roam.
        let roams: BTreeSet<[u8; 32]> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.path.endpoint().is_none_or(|e| {
                    let programmed = self.via_relay(e, p.path.relayed.contains(&e));
                    self.relay.is_relay_endpoint(programmed, &p.path.relayed)
                })
            })
            .map(|(k, _)| *k)
            .collect();
        let mut respec = Vec::new();
        for s in stats {
            let Some(peer) = self.peers.get_mut(&s.key) else {
                continue;
            };
            peer.wg_endpoint = s.endpoint;
            let Some(ep) = s.endpoint else { continue };
            let on = self.relay.is_relay_endpoint(ep, &peer.path.relayed);
            if on == peer.on_relay {
                continue;
            }
            peer.on_relay = on;
            if on {
                self.counters.relay_switches_to_relay += 1;
                info!(via = %ep, "path through the relay");
                peer.probe_backoff = PROBE_FIRST;
                peer.probe_next = Some(now + PROBE_FIRST);
            } else if !roams.contains(&s.key) {
                // Our own plan moved it (a fresh attempt, a new candidate).
                debug!(endpoint = %ep, "path off the relay: a direct attempt");
            } else {
                self.counters.relay_switches_to_direct += 1;
                info!(endpoint = %ep, "path upgraded from the relay to direct");
                // Keep what WireGuard found: our next change of the peer
                // must not send it back to the relay.
                peer.path.pinned = Some(ep);
                peer.probe_next = None;
                peer.probe_until = None;
                respec.push(s.key);
            }
        }
        for k in respec {
            self.want_peer(now, k);
        }
    }

    /// A direct path that stopped working moves to the peer's relayed
    /// candidate at once (while it is resolved again); a relayed one makes
    /// us check our allocation.
    pub(crate) fn fall_back_to_relay(&mut self, now: Instant, key: [u8; 32]) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.on_relay {
            // A stalled relayed path is already one piece of evidence: one
            // missed self-check is enough.
            if self.relay.check.is_none() {
                self.relay.check_misses = self.relay.check_misses.max(CHECK_MISSES - 1);
            }
            self.check_relay_now(now);
            return;
        }
        let Some(r) = peer
            .path
            .candidates
            .iter()
            .find(|c| peer.path.relayed.contains(c))
            .copied()
        else {
            return;
        };
        warn!(via = %r, "falling back to the relay");
        peer.path.pinned = Some(r);
        self.want_peer(now, key);
    }

    /// Resolves every relayed peer again.
    pub(crate) fn refresh_relayed_peers(&mut self, now: Instant) {
        let dsts: Vec<IpAddr> = self
            .peers
            .values()
            .filter(|p| p.on_relay)
            .filter_map(|p| p.prefixes().next().map(|e| e.addr()))
            .collect();
        for dst in dsts {
            self.resolve_again(now, dst);
        }
    }

    /// Our addresses changed: relayed pairs try direct soon.
    pub(crate) fn probe_after_move(&mut self, now: Instant) {
        for p in self.peers.values_mut().filter(|p| p.on_relay) {
            p.probe_backoff = PROBE_FIRST;
            p.probe_next = Some(now + PROBE_SOON);
        }
    }

    /// Starts the probes that are due and judges those whose window ended.
    fn probe_paths(&mut self, now: Instant) {
        let only = self.relay_only();
        let mut respec = Vec::new();
        for (key, peer) in self.peers.iter_mut() {
            if let Some(until) = peer.probe_until {
                if now < until {
                    continue;
                }
                peer.probe_until = None;
                respec.push(*key);
                if peer.on_relay {
                    self.counters.relay_probe_failures += 1;
                    peer.probe_backoff = (peer.probe_backoff * 2).min(PROBE_MAX);
                    peer.probe_next = Some(now + peer.probe_backoff);
                    info!(next_in = ?peer.probe_backoff, "no direct path yet; staying on the relay");
                }
                continue;
            }
            if peer.probe_next.is_none_or(|t| now < t) || !self.relay.up() {
                // (Not while our allocation is being made again: the
                // proxies would carry nothing to copy.)
                continue;
            }
            peer.probe_next = None;
            if !peer.on_relay || !peer.path.established() || only {
                continue;
            }
            let direct: Vec<SocketAddr> = peer
                .path
                .candidates
                .iter()
                .filter(|c| !peer.path.relayed.contains(c))
                .take(2)
                .copied()
                .collect();
            // Only a side that sends through its own proxy can copy; the
            // other side probes from its end. The proxy is the one we
            // program (a relayed candidate), else the one WireGuard uses
            // (a responder's, made for the peer that reached us).
            let programmed = peer
                .path
                .endpoint()
                .filter(|e| peer.path.relayed.contains(e) && self.relay.proxy(*e).is_some());
            let remote = programmed.or(peer.wg_endpoint.and_then(|e| self.relay.remote_of(e)));
            if direct.is_empty() {
                continue;
            }
            let Some(remote) = remote else {
                // The proxy for the relayed candidate is still being made
                // (our allocation just came up): try in a moment.
                if peer
                    .path
                    .endpoint()
                    .is_some_and(|e| peer.path.relayed.contains(&e))
                {
                    peer.probe_next = Some(now + PROBE_SOON * 2);
                }
                continue;
            };
            self.counters.relay_probes += 1;
            info!(to = ?direct, "probing a direct path");
            for &to in &direct {
                self.counters.punches += 1;
                self.outputs.push_back(Output::Punch { to });
            }
            self.outputs.push_back(Output::Relay(RelayOp::Mirror {
                remote,
                to: direct,
                duration: PROBE_WINDOW,
            }));
            peer.probe_until = Some(now + PROBE_WINDOW);
            respec.push(*key);
        }
        for k in respec {
            self.want_peer(now, k);
        }
    }

    fn probes_due(&self) -> Option<Instant> {
        // A probe waits for our allocation (see probe_paths).
        let up = self.relay.up();
        self.peers
            .values()
            .filter_map(|p| p.probe_until.or(p.probe_next.filter(|_| up)))
            .min()
    }
}
