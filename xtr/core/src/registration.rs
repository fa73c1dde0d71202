//! Registration: which of the host's addresses are our RLOCs, the
//! Map-Registers to every map-server (refreshed with jitter, retried fast
//! until confirmed), and whether each map-server is up.

use crate::io::{LinkEvent, Output};
use crate::policy::LocalRloc;
use crate::Xtr;
use lisp_wire::{
    wireguard_locator, Authentication, EidRecord, MapNotify, MapRegister, RlocRecord,
    LISP_CONTROL_PORT,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A map-server silent this long gets a fresh control session; the wait
/// doubles up to `RENEW_MAX` while it stays silent.
const RENEW_FIRST: Duration = Duration::from_secs(1);
const RENEW_MAX: Duration = Duration::from_secs(30);
/// Register nonces remembered per map-server, for late answers.
const RECENT_REGISTERS: usize = 8;
/// Consecutive unanswered registrations after which a map-server is down.
const DOWN_AFTER_MISSES: u32 = 4;
/// A map-server that has not answered a Map-Request for this long is probed
/// with a registration (another map-server may have answered it): a dead
/// map-server is noticed at the next resolution, not the next refresh.
pub(crate) const PROBE_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct MapServerState {
    /// Nonce of the last Map-Register not yet confirmed.
    outstanding: Option<u64>,
    /// Nonces of our latest Map-Registers: a late answer to one is not a
    /// push about us (it echoes what we registered, not how we are seen).
    recent: std::collections::VecDeque<u64>,
    /// Wait before the next retry while unconfirmed.
    backoff: Duration,
    pub(crate) next_register: Instant,
    pub(crate) up: bool,
    misses: u32,
    pub(crate) confirmed_once: bool,
    /// When we first asked it something it has not answered yet.
    pub(crate) unanswered_since: Option<Instant>,
    /// Renewing the control peer (a fresh WireGuard session, for a
    /// map-server that restarted) waits this long without any answer, and
    /// doubles after each renewal until one comes: a map-server that is
    /// merely slow under load never has its session torn down over and over.
    renew_wait: Duration,
    next_renew: Option<Instant>,
}

impl MapServerState {
    pub(crate) fn new(now: Instant, backoff: Duration) -> Self {
        MapServerState {
            outstanding: None,
            recent: std::collections::VecDeque::new(),
            backoff,
            next_register: now,
            up: false,
            misses: 0,
            confirmed_once: false,
            unanswered_since: None,
            renew_wait: RENEW_FIRST,
            next_renew: None,
        }
    }

    /// It answered: the session works.
    pub(crate) fn answered(&mut self) {
        self.unanswered_since = None;
        self.renew_wait = RENEW_FIRST;
        self.next_renew = None;
    }

    pub(crate) fn timeout(&self) -> Instant {
        let probe = self.unanswered_since.map(|t| t + PROBE_AFTER);
        probe.map_or(self.next_register, |p| p.min(self.next_register))
    }
}

/// The host's links and addresses as netlink reported them: (up, addresses
/// with their tentative flag), by interface name.
#[derive(Debug, Default)]
pub(crate) struct Links {
    links: BTreeMap<String, (bool, BTreeMap<IpAddr, bool>)>,
}

impl Links {
    fn apply(&mut self, ev: &LinkEvent) {
        match ev {
            LinkEvent::Address {
                ifname,
                addr,
                added,
                tentative,
            } => {
                let (_, addrs) = self
                    .links
                    .entry(ifname.clone())
                    .or_insert((true, BTreeMap::new()));
                if *added {
                    addrs.insert(*addr, *tentative);
                } else {
                    addrs.remove(addr);
                }
            }
            LinkEvent::Link { ifname, up } => {
                self.links
                    .entry(ifname.clone())
                    .or_insert((true, BTreeMap::new()))
                    .0 = *up;
            }
        }
    }
}

/// Whether an address may be registered as an RLOC: a global or private
/// unicast address the kernel will use as a source now.
fn usable_rloc(addr: IpAddr, tentative: bool) -> bool {
    if tentative || addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
        return false;
    }
    match addr {
        IpAddr::V4(a) => !a.is_link_local() && !a.is_broadcast(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// Register nonces reserved at a time: the reservation is saved once per
/// this many registers (about once in two years at one a minute).
const NONCE_RESERVATION: u64 = 1_000_000;

impl Xtr {
    /// Where register nonces start: the shell passes the wall clock in
    /// microseconds, or the end of the reservation saved by an earlier run
    /// if that is later (a robot whose clock went back). Map-servers refuse
    /// a register whose nonce is not above the last one they accepted, so
    /// that a replay is refused however old it is.
    pub fn set_register_nonce_floor(&mut self, floor: u64) {
        self.register_nonce = self.register_nonce.max(floor);
        self.nonces_reserved = self.register_nonce;
    }

    /// The next register nonce: counting up, reserving (asking the shell to
    /// save) a block ahead whenever the reservation is used up.
    fn next_register_nonce(&mut self) -> u64 {
        if self.register_nonce >= self.nonces_reserved {
            self.nonces_reserved = self.register_nonce.saturating_add(NONCE_RESERVATION);
            self.outputs.push_back(Output::ReserveRegisterNonces {
                until: self.nonces_reserved,
            });
        }
        let nonce = self.register_nonce;
        self.register_nonce = self.register_nonce.saturating_add(1);
        nonce
    }

    /// Changes of the host's links and addresses. The first batch is the
    /// state at start-up; a later change of our RLOCs is a move: we
    /// re-register with every map-server at once.
    pub fn handle_link_events(&mut self, now: Instant, events: &[LinkEvent]) {
        for ev in events {
            self.links.apply(ev);
        }
        let rlocs = self.current_rlocs();
        self.set_rlocs(now, rlocs);
        self.flush_dataplane(now);
    }

    /// Up RLOCs by configured priority: the usable addresses of the RLOC
    /// interfaces, never one of our EIDs or our control address (they
    /// must never become the outer source of a WireGuard packet).
    pub fn current_rlocs(&self) -> Vec<LocalRloc> {
        let own: BTreeSet<IpAddr> = self
            .policy
            .eids
            .iter()
            .map(|e| e.addr())
            .chain(std::iter::once(self.policy.control_address))
            .collect();
        let mut out = Vec::new();
        for r in &self.policy.rloc_interfaces {
            let Some((up, addrs)) = self.links.links.get(&r.name) else {
                continue;
            };
            if !up {
                continue;
            }
            for (&addr, &tentative) in addrs {
                let own_eid = own.contains(&addr)
                    || self
                        .policy
                        .eids
                        .iter()
                        .any(|e| e.contains_addr(e.iid, addr));
                if usable_rloc(addr, tentative) && !own_eid {
                    out.push(LocalRloc {
                        addr,
                        priority: r.priority,
                        weight: r.weight,
                    });
                }
            }
        }
        out.sort_by_key(|r| (r.priority, std::cmp::Reverse(r.weight), r.addr));
        out
    }

    fn set_rlocs(&mut self, now: Instant, rlocs: Vec<LocalRloc>) {
        if rlocs == self.rlocs && self.rlocs_known {
            return;
        }
        let show = |r: &[LocalRloc]| {
            r.iter()
                .map(|r| r.addr.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        info!(old = %show(&self.rlocs), new = %show(&rlocs), "RLOCs changed; re-registering");
        let moved = self.rlocs_known && !rlocs.is_empty();
        self.rlocs = rlocs;
        self.rlocs_known = true;
        if moved {
            // The allocation was made from our old address.
            self.relay_moved(now);
            self.probe_after_move(now);
        }
        // Each map-server at an endpoint of a family we can reach now.
        self.route_control();
        if moved {
            // wireguard-go sends nothing from a new address until its port
            // is set again; this must follow the new address, not the removal.
            self.dataplane.want_listen_port_reapplied();
            // Open our new NAT toward every peer: they will be told where we
            // are and send to us there.
            for p in self.peers.values_mut() {
                p.path.punch_series(now);
            }
        }
        self.reregister_now(now);
    }

    /// Renews map-server `i`'s control peer when it has answered nothing for
    /// the current wait (or is down), at most once per wait, doubling it.
    /// Whether it renewed.
    pub(crate) fn renew_control_if_silent(&mut self, now: Instant, i: usize, down: bool) -> bool {
        let s = &mut self.servers[i];
        let silent = down || s.unanswered_since.is_some_and(|t| now >= t + s.renew_wait);
        if !silent || s.next_renew.is_some_and(|t| now < t) {
            return false;
        }
        s.next_renew = Some(now + s.renew_wait);
        s.renew_wait = (s.renew_wait * 2).min(RENEW_MAX);
        // A map-server that lost our session may have lost our registration
        // too (restarted without its store): register on the fresh session
        // at once rather than at the next refresh, up to a minute away.
        if s.outstanding.is_none() {
            s.next_register = now;
        }
        self.counters.control_renewals += 1;
        self.dataplane.want_control_peer_renewed(i);
        true
    }

    /// A register still unanswered when map-server `i`'s session was
    /// renewed went out on the dead one: send a fresh one now (not counted
    /// as a miss: the old session lost it, not the map-server).
    pub(crate) fn reregister_on_fresh_session(&mut self, now: Instant, i: usize) {
        let Some(s) = self.servers.get_mut(i) else {
            return;
        };
        if s.outstanding.take().is_some() {
            s.next_register = now;
            self.send_registers(now);
        }
    }

    /// Registers with every map-server now (our endpoint may have changed
    /// behind our NAT).
    pub(crate) fn reregister_now(&mut self, now: Instant) {
        for s in &mut self.servers {
            s.next_register = now;
            s.backoff = self.policy.register_retry_first;
        }
        self.send_registers(now);
    }

    fn own_records(&self) -> Vec<EidRecord> {
        let mut rlocs: Vec<RlocRecord> = self
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
        // Our relayed address, last: the relay's address is its RTR.
        if let Some(l) = self.relayed_locator() {
            rlocs.push(RlocRecord::new(
                crate::relaying::RELAYED_PRIORITY,
                100,
                l.to_address(),
            ));
        }
        self.policy
            .eids
            .iter()
            .map(|e| EidRecord {
                // New at every start: the map-server tells our correspondents
                // that we restarted.
                map_version: self.map_version,
                ..EidRecord::new(*e, self.policy.record_ttl_minutes, rlocs.clone())
            })
            .collect()
    }

    /// Probes map-servers that left a request unanswered, and sends the
    /// registrations that are due.
    pub(crate) fn registration_timeout(&mut self, now: Instant) {
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
    }

    /// Sends a Map-Register to every map-server whose turn it is.
    fn send_registers(&mut self, now: Instant) {
        if let Some(until) = self.relay_hold_registration(now) {
            // Our first registration waits (briefly) for the relayed
            // address: a correspondent resolving us meanwhile would get a
            // mapping without it, fail, and wait seconds for a takeover.
            for s in &mut self.servers {
                if s.next_register <= now {
                    s.next_register = until;
                }
            }
            return;
        }
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
            let nonce = self.next_register_nonce();
            let s = &mut self.servers[i];
            if s.outstanding.is_some() {
                s.misses += 1;
                if s.up && s.misses >= DOWN_AFTER_MISSES {
                    s.up = false;
                    warn!(map_server = %self.policy.map_servers[i].name, "map-server not answering: marked down");
                }
            }
            if !s.up && s.misses >= DOWN_AFTER_MISSES {
                // A map-server that is down may have restarted: its old
                // WireGuard session is dead. Retry on a fresh one (backing off).
                let _ = self.renew_control_if_silent(now, i, true);
            }
            let s = &mut self.servers[i];
            s.outstanding = Some(nonce);
            if s.recent.len() >= RECENT_REGISTERS {
                s.recent.pop_front();
            }
            s.recent.push_back(nonce);
            let ms = &self.policy.map_servers[i];
            let reg = MapRegister {
                auth: Authentication::unsigned(ms.key_id),
                ..MapRegister::proxied(nonce, records.clone())
            };
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

    /// A Map-Notify from map-server `ms` that confirms our registration;
    /// false when it is about something else (a correspondent, a push).
    pub(crate) fn confirm_registration(
        &mut self,
        now: Instant,
        ms: usize,
        notify: &MapNotify,
    ) -> bool {
        let s = &mut self.servers[ms];
        if s.outstanding != Some(notify.nonce) {
            // A late answer to an earlier register: handled, nothing more.
            return s.recent.contains(&notify.nonce);
        }
        s.outstanding = None;
        s.misses = 0;
        s.answered();
        if !s.up {
            info!(map_server = %self.policy.map_servers[ms].name, "registered with map-server");
        }
        s.up = true;
        s.confirmed_once = true;
        s.backoff = self.policy.register_retry_first;
        let wait = self.jitter(self.policy.register_interval);
        self.servers[ms].next_register = now + wait;
        // Resolutions that waited for the map-server to see where we are.
        for dst in std::mem::take(&mut self.resolve_after_register) {
            self.resolve_again(now, dst);
        }
        self.fetch_grant_if_due(now);
        true
    }
}
