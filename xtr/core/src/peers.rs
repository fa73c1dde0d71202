//! The map-cache and the data peers it calls for: installing mappings from
//! replies and notifies, moves, eviction, expiry with background refresh,
//! each peer's path (see [`crate::paths`]), and the removal of peers idle
//! at both ends. What the peers and routes should be is handed to
//! [`crate::dataplane`], which programs them.

use crate::dataplane::PeerSpec;
use crate::io::{Output, PeerStats, Unusable};
use crate::packet;
use crate::paths::{attempt_wait, Path, Role};
use crate::Xtr;
use lisp_wire::{is_private, EidPrefix, EidRecord};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Persistent keepalive of a peer through a NAT: well inside conntrack's
/// 30 s for unanswered and 120 s for assured UDP flows.
pub(crate) const NAT_KEEPALIVE_SECS: u16 = 25;
/// Bytes per statistics interval that are only keepalives and rekeys, not
/// traffic.
const KEEPALIVE_NOISE: u64 = 512;
/// A peer that carried no traffic for this long loses its keepalive.
const KEEPALIVE_HOLD: Duration = Duration::from_secs(120);
/// An established peer we keep sending to (more than this many bytes) but
/// hear nothing from for `STALL_AFTER` has lost its path: our NAT remapped
/// us, or the peer restarted.
const STALL_BYTES: u64 = 256;
pub(crate) const STALL_AFTER: Duration = Duration::from_millis(400);
/// At most one recovery per peer this often.
const STALL_HOLDOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct CacheEntry {
    /// The peer's key; `None` for a negative entry.
    pub(crate) peer: Option<[u8; 32]>,
    pub(crate) expires: Instant,
    refreshing: bool,
}

/// How a mapping reached us: it decides which side starts the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Learned {
    /// The answer to our own request.
    Reply,
    /// A Map-Notify: the peer resolved us, or moved.
    Notify,
}

#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) path: Path,
    prefixes: BTreeSet<EidPrefix>,
    rx: u64,
    tx: u64,
    /// When it last carried traffic (more than keepalives).
    last_active: Instant,
    /// Whether either side is behind a NAT, so the path needs keepalives.
    nat: bool,
    /// When the peer was last heard (its rx counter moved), and our tx
    /// counter then: for noticing a path that stopped working.
    heard_at: Instant,
    tx_when_heard: u64,
    /// When we last tried to recover its path.
    recovered_at: Option<Instant>,
    /// The peer restarted: the next reply starts a fresh attempt.
    pub(crate) stalled: bool,
    /// The map version it registered with, new at each of its starts.
    map_version: u16,
    /// WireGuard reaches it through the relay now (its endpoint, as last
    /// read, is a proxy socket or a relayed candidate).
    pub(crate) on_relay: bool,
    /// Where WireGuard sends to it, as last read.
    pub(crate) wg_endpoint: Option<SocketAddr>,
    /// A relayed path's next probe of a direct one, the wait after a failed
    /// probe, and the end of the probe under way.
    pub(crate) probe_next: Option<Instant>,
    pub(crate) probe_backoff: Duration,
    pub(crate) probe_until: Option<Instant>,
}

impl Peer {
    pub(crate) fn status(&self, key: [u8; 32], now: Instant) -> crate::PathStatus {
        use crate::paths::Phase;
        use crate::PathKind;
        let (state, since) = match self.path.phase {
            Phase::Probing { since, .. } => ("connecting", since),
            Phase::Established { since } => ("up", since),
            Phase::Failed { since } => ("no direct path", since),
        };
        let endpoint = self.path.endpoint();
        let reached = endpoint.or(self.path.candidates.first().copied());
        let kind = reached.map(|e| {
            if self.on_relay {
                PathKind::Relayed
            } else if e.is_ipv6() {
                PathKind::Ipv6
            } else if is_private(e.ip()) {
                PathKind::DirectPrivate
            } else {
                PathKind::Direct
            }
        });
        crate::PathStatus {
            key,
            eids: self.prefixes.iter().copied().collect(),
            endpoint,
            candidates: self.path.candidates.clone(),
            kind,
            role: match self.path.role {
                Role::Initiator => "initiator",
                Role::Responder => "responder",
            },
            state,
            since: now.saturating_duration_since(since),
            nat: self.nat,
            wg_endpoint: self.wg_endpoint,
        }
    }

    /// Its EID prefixes.
    pub(crate) fn prefixes(&self) -> impl Iterator<Item = &EidPrefix> {
        self.prefixes.iter()
    }

    /// The persistent keepalive it should have now.
    pub(crate) fn keepalive(&self, now: Instant) -> Option<u16> {
        let initiator = self.path.role == Role::Initiator;
        if self.probe_until.is_some() {
            // A direct probe: something to copy every second.
            Some(1)
        } else if initiator && self.path.probing() {
            // Switching a keepalive on sends one at once: the handshake
            // starts even with no packet to carry (after a failover, or
            // when a responder takes over).
            Some(1)
        } else if (self.nat || self.on_relay)
            && initiator
            && self.path.established()
            && now.saturating_duration_since(self.last_active) < KEEPALIVE_HOLD
        {
            Some(NAT_KEEPALIVE_SECS)
        } else {
            None
        }
    }
}

impl Xtr {
    /// The map-cache entry covering `addr`: (prefix, positive, expiry).
    pub(crate) fn cache_lookup(
        &self,
        iid: u32,
        addr: IpAddr,
    ) -> Option<(EidPrefix, bool, Instant)> {
        self.cache
            .lookup(iid, addr)
            .map(|(p, e)| (p, e.peer.is_some(), e.expires))
    }

    /// The key of the peer holding the map-cache entry `prefix`.
    pub(crate) fn peer_of(&self, prefix: &EidPrefix) -> Option<[u8; 32]> {
        self.cache.get(prefix).and_then(|e| e.peer)
    }

    /// A peer's candidate endpoints, best first: by priority, IPv6 before
    /// IPv4 among equals, then by weight; only families we have an RLOC of
    /// (all of them if that leaves none).
    /// Also: the candidates that go through a relay.
    fn candidates(&self, record: &EidRecord) -> (Vec<SocketAddr>, BTreeSet<SocketAddr>) {
        let mut found: Vec<(u8, bool, u8, SocketAddr, bool)> = record
            .rlocs
            .iter()
            .filter(|r| r.priority != 255 && r.reachable)
            .filter_map(|r| {
                let i = r.info()?;
                let ep = SocketAddr::new(i.rloc, i.port.unwrap_or(lisp_wire::DEFAULT_WG_PORT));
                Some((r.priority, !ep.is_ipv6(), 255 - r.weight, ep, i.relayed))
            })
            .collect();
        found.sort();
        found.dedup_by_key(|c| c.3);
        let relayed: BTreeSet<SocketAddr> = found.iter().filter(|c| c.4).map(|c| c.3).collect();
        // Through the relay every family is reached.
        let only = self.relay_only();
        let usable =
            |ep: &SocketAddr| only || self.rlocs.iter().any(|r| r.addr.is_ipv4() == ep.is_ipv4());
        let all: Vec<SocketAddr> = found.iter().map(|c| c.3).collect();
        let ours: Vec<SocketAddr> = all.iter().copied().filter(usable).collect();
        (if ours.is_empty() { all } else { ours }, relayed)
    }

    /// Whether a path between us and this peer crosses a NAT: we register a
    /// private address, the peer is reached at one, or the map-server says
    /// it sees the peer through a NAT.
    fn nat_involved(&self, record: &EidRecord, candidates: &[SocketAddr]) -> bool {
        self.rlocs.iter().any(|r| is_private(r.addr))
            || candidates.iter().any(|c| is_private(c.ip()))
            || record
                .rlocs
                .iter()
                .any(|r| r.info().is_some_and(|i| i.behind_nat()))
    }

    /// Puts a mapping in the map-cache and asks for its peer and route.
    /// `Ok(Some((prefix, key)))` for a usable positive mapping, `Ok(None)`
    /// for a negative one.
    pub(crate) fn install(
        &mut self,
        now: Instant,
        record: &EidRecord,
        learned: Learned,
    ) -> Result<Option<(EidPrefix, [u8; 32])>, Unusable> {
        let prefix = EidPrefix::of_record(record).map_err(|_| Unusable::NotAnIpPrefix)?;
        let ttl = Duration::from_secs(60 * record.ttl.max(1) as u64);
        if record.rlocs.is_empty() {
            self.remove_prefix(now, &prefix);
            self.cache.insert(
                prefix,
                CacheEntry {
                    peer: None,
                    expires: now + ttl,
                    refreshing: false,
                },
            );
            return Ok(None);
        }
        let key = record.wg_key().ok_or(Unusable::NoKey)?;
        if key == self.policy.wg_public_key {
            return Err(Unusable::OwnKey);
        }
        let (candidates, relayed) = self.candidates(record);
        if candidates.is_empty() {
            return Err(Unusable::NoLocator);
        }
        if self.cache.get(&prefix).is_none() && self.cache.len() >= self.policy.max_cache_entries {
            self.evict_one(now);
        }
        // A prefix that moved to another key leaves its old peer.
        if let Some(old_key) = self.peer_of(&prefix) {
            if old_key != key {
                self.detach(now, &prefix, old_key);
            }
        }
        self.cache.insert(
            prefix,
            CacheEntry {
                peer: Some(key),
                expires: now + ttl,
                refreshing: false,
            },
        );
        let nat = self.nat_involved(record, &candidates);
        let wait_as_responder = crate::paths::responder_wait(&self.policy.wg_public_key, &key);
        let wait = attempt_wait(self.srtt);
        let new_peer = !self.peers.contains_key(&key);
        let peer = self.peers.entry(key).or_insert_with(|| Peer {
            path: match learned {
                Learned::Reply => Path::initiator(now, candidates.clone(), wait),
                Learned::Notify => Path::responder(now, candidates.clone(), wait_as_responder),
            },
            prefixes: BTreeSet::new(),
            rx: 0,
            tx: 0,
            last_active: now,
            nat,
            heard_at: now,
            tx_when_heard: 0,
            recovered_at: None,
            stalled: false,
            map_version: record.map_version,
            on_relay: false,
            wg_endpoint: None,
            probe_next: None,
            probe_backoff: crate::relaying::PROBE_FIRST,
            probe_until: None,
        });
        peer.nat = nat;
        // A new map version: the peer restarted, its end of the tunnel is
        // gone, whatever our state says.
        let restarted = !new_peer
            && peer.map_version != 0
            && record.map_version != 0
            && record.map_version != peer.map_version;
        peer.map_version = record.map_version;
        if restarted {
            info!(eid = %prefix, "the peer restarted; starting its tunnel over");
            peer.stalled = true;
            if learned == Learned::Notify {
                // It asked for us: it initiates, we wait for it.
                peer.stalled = false;
                let generation = peer.path.generation + 1;
                peer.path = Path::responder(now, candidates.clone(), wait_as_responder);
                peer.path.generation = generation;
            }
        }
        let new_prefix = peer.prefixes.insert(prefix);
        let before = peer.path.endpoint();
        let old_relayed_all = peer.path.relayed.clone();
        let mut relay_changed = false;
        if !new_peer {
            match (learned, peer.path.role, peer.path.probing()) {
                // Our own request, answered after we were told about the peer
                // (it resolved us at the same moment): it initiates, we wait.
                (Learned::Reply, Role::Responder, true) => {}
                // Restarted while notified about (above): nothing more.
                (Learned::Notify, _, _) if restarted => {}
                // The peer restarted and this is our re-resolution: start
                // over as the side that asked, with a fresh peer.
                (Learned::Reply, _, _) if peer.stalled => {
                    peer.stalled = false;
                    let generation = peer.path.generation + 1;
                    peer.path = Path::initiator(now, candidates.clone(), wait);
                    peer.path.generation = generation;
                }
                // A path that failed: try again, as the side that asked.
                (Learned::Reply, _, false) if !peer.path.established() => {
                    let copies = std::mem::take(&mut peer.path.copies);
                    let generation = peer.path.generation + 1;
                    peer.path = Path::initiator(now, candidates.clone(), wait);
                    peer.path.copies = copies;
                    peer.path.generation = generation;
                }
                // Our attempts failed, and the peer asked for us (it lost its
                // state, or restarted): it is about to initiate, we wait.
                (Learned::Notify, _, false) if !peer.path.established() => {
                    let generation = peer.path.generation + 1;
                    peer.path = Path::responder(now, candidates.clone(), wait_as_responder);
                    peer.path.generation = generation;
                }
                _ => {
                    let changed = peer.path.candidates != candidates;
                    let old_relayed = std::mem::take(&mut peer.path.relayed);
                    peer.path.update_candidates(now, candidates.clone());
                    if learned == Learned::Notify {
                        peer.path.punch_now(now);
                    }
                    if changed {
                        // A pin that is no longer a candidate: a relayed
                        // one moves to the new relayed candidate, a direct
                        // one gives way to the plan.
                        let new_relayed = candidates.iter().find(|c| relayed.contains(c)).copied();
                        match peer.path.pinned {
                            Some(p) if !candidates.contains(&p) => {
                                peer.path.pinned = if old_relayed.contains(&p) {
                                    // While the peer allocates again it has
                                    // no relayed candidate: stay, rather
                                    // than jump to an unprobed direct path.
                                    new_relayed.or(Some(p))
                                } else {
                                    None
                                };
                            }
                            // A pair on the relay stays there (its probes
                            // find the direct path, if there is one now).
                            None if peer.on_relay => {
                                peer.path.pinned =
                                    new_relayed.or(before.filter(|b| old_relayed.contains(b)));
                            }
                            _ => {}
                        }
                        // The peer's relayed address changed: maybe the
                        // relay restarted, and lost ours too.
                        relay_changed = !old_relayed.is_empty() && old_relayed != relayed;
                        if peer.on_relay {
                            // The peer's endpoints changed: try direct soon.
                            peer.probe_backoff = crate::relaying::PROBE_FIRST;
                            peer.probe_next = Some(now + crate::relaying::PROBE_SOON);
                        }
                    }
                }
            }
        }
        peer.path.relayed = relayed;
        // A pin kept on a relayed address the update no longer lists is
        // still relayed.
        if let Some(p) = peer.path.pinned {
            if old_relayed_all.contains(&p) {
                peer.path.relayed.insert(p);
            }
        }
        let moved = !new_peer && peer.path.endpoint() != before;
        if new_peer {
            self.counters.peers_added += 1;
            info!(eid = %prefix, candidates = %show(&candidates), role = %peer.path.role, "programming data peer");
        } else if new_prefix || moved {
            self.counters.peers_updated += 1;
            info!(eid = %prefix, candidates = %show(&candidates), "updating data peer");
        }
        let routed = peer.path.routed();
        if relay_changed {
            self.check_relay_now(now);
        }
        self.relay_peers_changed();
        self.want_peer(now, key);
        self.dataplane.want_route(prefix, routed.then_some(key));
        Ok(Some((prefix, key)))
    }

    /// The peer as it should be programmed: its path's endpoint (through
    /// our proxy socket when relayed), its prefixes and keepalive.
    fn peer_spec(&self, now: Instant, key: &[u8; 32]) -> Option<PeerSpec> {
        let p = self.peers.get(key)?;
        Some(PeerSpec {
            endpoint: p
                .path
                .endpoint()
                .map(|e| self.via_relay(e, p.path.relayed.contains(&e))),
            allowed: p.prefixes.iter().copied().collect(),
            keepalive: p.keepalive(now),
            generation: p.path.generation,
        })
    }

    /// Hands the peer's current state to the data plane.
    pub(crate) fn want_peer(&mut self, now: Instant, key: [u8; 32]) {
        let spec = self.peer_spec(now, &key);
        self.dataplane.want_peer(key, spec);
    }

    /// Hands every peer's state to the data plane again (the relay's
    /// proxies or allocation changed).
    pub(crate) fn respec_all(&mut self, now: Instant) {
        let keys: Vec<[u8; 32]> = self.peers.keys().copied().collect();
        for k in keys {
            self.want_peer(now, k);
        }
    }

    /// Removes `prefix` from `key`'s peer, and the peer when it has none left.
    fn detach(&mut self, now: Instant, prefix: &EidPrefix, key: [u8; 32]) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if !peer.prefixes.remove(prefix) {
            return;
        }
        self.dataplane.want_route(*prefix, None);
        if peer.prefixes.is_empty() {
            self.peers.remove(&key);
            self.counters.peers_removed += 1;
            self.dataplane.want_peer(key, None);
            self.relay_peers_changed();
        } else {
            self.want_peer(now, key);
        }
    }

    pub(crate) fn remove_prefix(&mut self, now: Instant, prefix: &EidPrefix) {
        // Nobody has the prefix now (a negative answer, or a revocation
        // pushed to us): names that gave its addresses are stale too.
        self.forget_names_in(prefix);
        if let Some(CacheEntry {
            peer: Some(key), ..
        }) = self.cache.remove(prefix)
        {
            self.detach(now, prefix, key);
        }
    }

    /// Makes room in a full map-cache: the least recently active peer goes.
    fn evict_one(&mut self, now: Instant) {
        let Some((&key, _)) = self.peers.iter().min_by_key(|(_, p)| p.last_active) else {
            // Only negative entries: drop one of those.
            let first = self.cache.iter().next().map(|(p, _)| p);
            if let Some(p) = first {
                self.cache.remove(&p);
            }
            return;
        };
        self.remove_peer(now, key);
    }

    fn remove_peer(&mut self, now: Instant, key: [u8; 32]) {
        let prefixes: Vec<EidPrefix> = self
            .peers
            .get(&key)
            .map(|p| p.prefixes.iter().copied().collect())
            .unwrap_or_default();
        for p in prefixes {
            self.cache.remove(&p);
            self.detach(now, &p, key);
        }
    }

    /// Copies of an initiator's first packets, for a failover.
    pub(crate) fn keep_copies(&mut self, key: &[u8; 32], packets: &[Vec<u8>]) {
        if let Some(p) = self.peers.get_mut(key) {
            if p.path.role == Role::Initiator && p.path.probing() {
                p.path.keep_copies(packets);
            }
        }
    }

    /// When the path of `prefix`'s peer failed, if it did.
    pub(crate) fn failed_since(&self, prefix: &EidPrefix) -> Option<Instant> {
        self.peer_of(prefix)
            .and_then(|k| self.peers.get(&k))
            .and_then(|p| p.path.failed_since())
    }

    /// Whether the peer of `prefix` waits unrouted for a handshake (its
    /// held packets want a statistics read at once).
    pub(crate) fn awaiting_handshake(&self, prefix: &EidPrefix) -> bool {
        self.peer_of(prefix)
            .and_then(|k| self.peers.get(&k))
            .is_some_and(|p| p.path.probing() && !p.path.routed())
    }

    /// Latest WireGuard statistics: first handshakes, failed attempts, and
    /// idleness.
    pub(crate) fn check_paths(&mut self, now: Instant, stats: &[PeerStats]) {
        let wait = attempt_wait(self.srtt);
        let mut changed = Vec::new();
        let mut failed = Vec::new();
        let handshakes: std::collections::HashSet<[u8; 32]> = stats
            .iter()
            .filter(|s| s.since_handshake.is_some())
            .map(|s| s.key)
            .collect();
        for (&key, peer) in self.peers.iter_mut() {
            // Judge an attempt only once its peer is in place.
            if !peer.path.probing() || !self.dataplane.peer_settled(&key) {
                continue;
            }
            // A peer WireGuard does not list has had no handshake.
            if peer.path.saw_handshake(now, handshakes.contains(&key)) {
                self.counters.paths_established += 1;
                debug!(endpoint = %crate::fields::Opt(&peer.path.endpoint()), role = %peer.path.role, "first handshake");
                changed.push(key);
                continue;
            }
            match peer.path.give_up_attempt(now, wait) {
                Some(_) => {
                    self.counters.path_failovers += 1;
                    info!(
                        next = %crate::fields::Opt(&peer.path.endpoint()),
                        role = %peer.path.role,
                        "no handshake in time; trying again with a fresh peer"
                    );
                    changed.push(key);
                }
                None if !peer.path.probing() => {
                    self.counters.paths_failed += 1;
                    warn!(candidates = %show(&peer.path.candidates), "no direct path to the peer");
                    failed.push(key);
                }
                None => {}
            }
        }
        for key in changed {
            let Some(peer) = self.peers.get(&key) else {
                continue;
            };
            let routed = peer.path.routed();
            let established = peer.path.established();
            let prefixes: Vec<EidPrefix> = peer.prefixes.iter().copied().collect();
            let copies = if established {
                Vec::new()
            } else {
                self.peers
                    .get_mut(&key)
                    .map(|p| std::mem::take(&mut p.path.copies))
                    .unwrap_or_default()
            };
            self.want_peer(now, key);
            for p in &prefixes {
                self.dataplane.want_route(*p, routed.then_some(key));
            }
            // After a failover the first packets go again, through the
            // fresh peer.
            if let (Some(p), false) = (prefixes.first(), copies.is_empty()) {
                self.dataplane.hold_for(now, *p, copies, None);
            }
        }
        for key in failed {
            if let Some(peer) = self.peers.get_mut(&key) {
                for c in std::mem::take(&mut peer.path.copies) {
                    if let Some(icmp) = packet::unreachable(&c) {
                        self.counters.icmp_unreachable += 1;
                        self.outputs.push_back(Output::Deliver(icmp));
                    }
                }
                // Later packets come to us: answered, or a new try.
                for p in peer.prefixes.clone() {
                    self.dataplane.want_route(p, None);
                }
            }
        }
        self.relay_paths(now, stats);
        self.idle_check(now, stats);
    }

    /// Punches that are due, and the next instant one is.
    pub(crate) fn punch(&mut self, now: Instant) {
        for peer in self.peers.values_mut() {
            for to in peer.path.due_punches(now) {
                self.counters.punches += 1;
                self.outputs.push_back(Output::Punch { to });
            }
        }
    }

    /// When the paths want statistics next, and punches are due.
    pub(crate) fn paths_timeout(&self) -> Option<Instant> {
        let punches = self.peers.values().filter_map(|p| p.path.next_punch());
        punches.chain(self.paths_stats_due()).min()
    }

    /// When the paths want the next statistics read: only for attempts
    /// whose peer is in place.
    pub(crate) fn paths_stats_due(&self) -> Option<Instant> {
        self.peers
            .iter()
            .filter(|(k, _)| self.dataplane.peer_settled(k))
            .filter_map(|(_, p)| p.path.next_check(self.last_stats))
            .min()
    }

    /// Peers the data plane just confirmed: their attempts start now.
    pub(crate) fn peers_programmed(&mut self, now: Instant, keys: Vec<[u8; 32]>) {
        let wait = attempt_wait(self.srtt);
        for key in keys {
            if let Some(p) = self.peers.get_mut(&key) {
                p.path.programmed(now, wait);
            }
        }
    }

    /// A peer is removed once it has moved no traffic in either direction
    /// and had no handshake for the idle timeout. Because WireGuard
    /// handshakes only happen with traffic and both ends see the same bytes
    /// and the same handshake, the other end reaches the same verdict within
    /// one check: teardown is never one-sided. Keepalives (and the rekeys
    /// they cause) are not traffic: a peer quiet but for them loses its
    /// keepalive after a while, and then goes idle like any other.
    fn idle_check(&mut self, now: Instant, stats: &[PeerStats]) {
        let idle = self.policy.idle_timeout;
        let mut remove = Vec::new();
        let mut respec = Vec::new();
        let mut stalled = Vec::new();
        self.active = false;
        for s in stats {
            let Some(peer) = self.peers.get_mut(&s.key) else {
                continue;
            };
            let moved = s.rx_bytes.saturating_sub(peer.rx) + s.tx_bytes.saturating_sub(peer.tx);
            let counters_reset = s.rx_bytes < peer.rx || s.tx_bytes < peer.tx;
            if s.rx_bytes != peer.rx || counters_reset {
                peer.heard_at = now;
                peer.tx_when_heard = s.tx_bytes;
            }
            peer.rx = s.rx_bytes;
            peer.tx = s.tx_bytes;
            if moved > KEEPALIVE_NOISE {
                self.active = true;
            }
            if peer.path.established()
                && now.saturating_duration_since(peer.heard_at) >= STALL_AFTER
                && s.tx_bytes.saturating_sub(peer.tx_when_heard) > STALL_BYTES
                && peer
                    .recovered_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= STALL_HOLDOFF)
            {
                peer.recovered_at = Some(now);
                peer.heard_at = now;
                peer.tx_when_heard = s.tx_bytes;
                stalled.push(s.key);
            }
            let keepalive_before = peer.keepalive(now);
            if moved > KEEPALIVE_NOISE || counters_reset {
                peer.last_active = now;
            } else if moved == 0
                && now.saturating_duration_since(peer.last_active) >= idle
                && s.since_handshake.is_none_or(|h| h >= idle)
            {
                remove.push(s.key);
                continue;
            }
            if peer.keepalive(now) != keepalive_before {
                respec.push(s.key);
            }
        }
        for key in respec {
            self.want_peer(now, key);
        }
        if !stalled.is_empty() {
            self.recover_paths(now, &stalled);
        }
        for key in remove {
            if let Some(p) = self.peers.get(&key) {
                info!(endpoint = %crate::fields::Opt(&p.path.endpoint()), "data peer idle at both ends; removing");
            }
            self.remove_peer(now, key);
        }
    }

    /// Paths that stopped working while we send. Our NAT may have remapped
    /// us (a rebinding): we re-register at once, so the map-server sees our
    /// new endpoint and pushes it to our correspondents, which punch toward
    /// it and follow. Once that registration is confirmed we resolve the
    /// peer again: if it restarted, the reply says so (a new map version)
    /// and starts a fresh handshake. Nothing is torn down on suspicion
    /// alone: a one-way flow looks the same for a while.
    fn recover_paths(&mut self, now: Instant, keys: &[[u8; 32]]) {
        self.counters.stalls += keys.len() as u64;
        for key in keys {
            self.fall_back_to_relay(now, *key);
            let Some(prefix) = self
                .peers
                .get(key)
                .and_then(|p| p.prefixes.first().copied())
            else {
                continue;
            };
            warn!(eid = %prefix, "path to the peer stopped working; re-registering and resolving it again");
            let dst = prefix.addr();
            if !self.resolve_after_register.contains(&dst) {
                self.resolve_after_register.push(dst);
            }
        }
        self.reregister_now(now);
    }

    /// Resolves a peer's EID again, without held packets.
    pub(crate) fn resolve_again(&mut self, now: Instant, dst: IpAddr) {
        let Some(source) = self.policy.eids.first().copied() else {
            return;
        };
        if !self.pending.contains_key(&dst) {
            self.start_request(now, dst, source, None);
        }
    }

    /// A Solicit-Map-Request from a map-server: the EIDs it names belong to
    /// a node that restarted. Resolve them again; the replies start fresh
    /// handshakes.
    pub(crate) fn handle_smr(&mut self, now: Instant, req: &lisp_wire::MapRequest) {
        let iid = self.policy.iid();
        for r in &req.records {
            let Ok(asked) = EidPrefix::from_wire(&r.eid, r.eid_mask_len) else {
                continue;
            };
            let Some((prefix, true, _)) = self.cache_lookup(iid, asked.addr()) else {
                continue;
            };
            self.counters.smrs += 1;
            if let Some(key) = self.peer_of(&prefix) {
                if let Some(p) = self.peers.get_mut(&key) {
                    p.stalled = true;
                }
            }
            debug!(eid = %prefix, "solicited to resolve again");
            self.resolve_again(now, asked.addr());
        }
    }

    /// Expired negative entries go; expired positive ones are refreshed in
    /// the background, keeping the tunnel up meanwhile.
    pub(crate) fn expire_cache(&mut self, now: Instant) {
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

    /// A background refresh of the entry covering `dst` got no answer: it
    /// will be tried again at the next expiry check.
    pub(crate) fn refresh_failed(&mut self, dst: IpAddr) {
        let iid = self.policy.iid();
        if let Some((prefix, _)) = self.cache.lookup(iid, dst) {
            if let Some(e) = self.cache.get_mut(&prefix) {
                e.refreshing = false;
            }
        }
    }
}

fn show(c: &[SocketAddr]) -> String {
    c.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
