//! The fleet as it changes while the map-server runs: a new configuration
//! taken live (SIGHUP), peers revoked or expired, and the team rules of
//! lookups.
//!
//! Peers keep their index (their slot in [`Policy::peers`]) for as long as
//! they are configured, so registrations, subscriptions and counters of the
//! peers a reload does not touch stay as they are. A removed peer's slot is
//! marked revoked and emptied; a later new peer may take it.

use crate::io::{ControlAction, StoreOp, Transmit, Via};
use crate::policy::{PeerPolicy, Policy};
use crate::registry::{Mapping, Origin};
use crate::{MapServer, MAX_PEERS};
use lisp_wire::{Action, EidPrefix, EidRecord, KeyId};
use std::collections::{HashMap, HashSet};
use std::time::Instant;
use tracing::{info, warn};

/// What a configuration taken by [`MapServer::handle_config`] changed, by
/// peer name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChange {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    /// Removed from the configuration, or given a new key: the old key's
    /// registrations are withdrawn.
    pub revoked: Vec<String>,
}

impl ConfigChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.revoked.is_empty()
    }
}

/// Why a configuration was refused whole (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigRefused {
    #[error("peer name {0:?} is used twice")]
    DuplicateName(String),
    #[error("control address {0} is used by two peers")]
    DuplicateAddress(std::net::IpAddr),
    #[error("WireGuard key {0} is used by two peers")]
    DuplicateKey(String),
    #[error("{0} control peers; at most {MAX_PEERS} are supported")]
    TooMany(usize),
}

/// What a revocation took away: for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Withdrawal {
    pub prefixes: Vec<EidPrefix>,
    /// Withdrawal notifies sent to correspondents.
    pub pushed: usize,
}

/// A short, recognisable form of a WireGuard key for logs.
pub fn key_hint(key: &[u8; 32]) -> String {
    key[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "…"
}

impl MapServer {
    /// Rebuilds the lookup tables from the peer slots (revoked slots are
    /// in none of them).
    pub(crate) fn index_peers(&mut self, now: Instant) {
        self.tunnel_peers.clear();
        self.plain_peers.clear();
        self.peers_by_name.clear();
        self.peers_by_key.clear();
        for (i, p) in self.policy.live_peers() {
            if let Some(key) = p.wg_key {
                self.peers_by_key.insert(key, i);
                self.tunnel_peers.insert(p.control_address, i);
            } else {
                self.plain_peers.insert(p.control_address, i);
            }
            self.peers_by_name.insert(p.name.clone(), i);
        }
        let n = self.policy.peers.len();
        self.observed.resize(n, None);
        self.key_ids.resize(n, KeyId::HmacSha256);
        self.nonces.resize_with(n, Default::default);
        self.register_floor.resize(n, 0);
        let limits = self.policy.limits;
        self.request_budget
            .resize_with(n, || limits::TokenBucket::new(limits.requests, now));
        self.register_budget
            .resize_with(n, || limits::TokenBucket::new(limits.registers, now));
    }

    /// Takes a new configuration while running. Peers that did not change
    /// keep everything (registrations, tunnels, subscriptions); added peers
    /// get a control peer; removed ones, and ones given another key, are
    /// revoked (their registrations are withdrawn and every correspondent
    /// is told by push); changed ones are updated in place, losing only the
    /// registrations they may no longer make. A configuration the core
    /// cannot take is refused whole.
    pub fn handle_config(
        &mut self,
        now: Instant,
        mut new: Policy,
    ) -> Result<ConfigChange, ConfigRefused> {
        if let Err(e) = check_peers(&new.peers) {
            self.counters.reloads_refused += 1;
            return Err(e);
        }
        // A peer whose enrolment is over is not taken (its file may stay):
        // one still running is revoked below as removed.
        new.peers.retain(|p| {
            let over = p.expires.is_some_and(|e| e <= now);
            if over {
                tracing::debug!(peer = %p.name, "enrolment over; not taken");
            }
            !over
        });
        let old_slots: HashMap<String, u16> = self
            .policy
            .live_peers()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let free_slots = self.policy.peers.iter().filter(|p| p.revoked).count();
        let fresh = new
            .peers
            .iter()
            .filter(|p| !old_slots.contains_key(&p.name))
            .count();
        let slots = self.policy.peers.len() + fresh.saturating_sub(free_slots);
        if slots > MAX_PEERS {
            self.counters.reloads_refused += 1;
            return Err(ConfigRefused::TooMany(slots));
        }

        let mut change = ConfigChange::default();
        let kept: HashSet<&str> = new.peers.iter().map(|p| p.name.as_str()).collect();
        // Removed peers first: a new peer may take over their address or key.
        let mut gone: Vec<(&String, &u16)> = old_slots
            .iter()
            .filter(|(n, _)| !kept.contains(n.as_str()))
            .collect();
        gone.sort();
        for (name, &idx) in gone {
            self.revoke_slot(now, idx, "removed from the configuration");
            change.revoked.push(name.clone());
        }
        let mut added = Vec::new();
        for p in &new.peers {
            match old_slots.get(&p.name) {
                Some(&idx) => {
                    let old = self.policy.peers[idx as usize].clone();
                    if old == *p {
                        continue;
                    }
                    if old.wg_key != p.wg_key
                        && old.wg_key.is_some()
                        && p.wg_key.is_some()
                        && p.rotated_from == old.wg_key
                    {
                        // A rotation made at another map-server (the file
                        // says which key it replaced): follow it, as the
                        // node has switched already.
                        self.follow_rotation(now, idx, p.clone());
                        self.counters.peers_changed += 1;
                        change.changed.push(p.name.clone());
                        continue;
                    }
                    if old.wg_key != p.wg_key {
                        // The old key is no longer trusted: what it
                        // registered goes, and correspondents drop it.
                        self.revoke_slot(now, idx, "given another key");
                        change.revoked.push(p.name.clone());
                        self.policy.peers[idx as usize] = p.clone();
                        self.add_control_peer(p);
                        continue;
                    }
                    // The same key: only what it may no longer register goes.
                    let lost: Vec<EidPrefix> = self
                        .registry
                        .prefixes_of(idx)
                        .filter(|pfx| !p.permits(pfx))
                        .collect();
                    for prefix in lost {
                        self.withdraw(now, prefix, idx);
                    }
                    if old.control_address != p.control_address {
                        self.add_control_peer(p);
                        self.subscriptions
                            .values_mut()
                            .for_each(|s| s.retain(|s| s.peer != idx));
                        self.pending.retain(|_, n| n.peer != idx);
                    }
                    self.policy.peers[idx as usize] = p.clone();
                    self.counters.peers_changed += 1;
                    change.changed.push(p.name.clone());
                }
                None => added.push(p.clone()),
            }
        }
        for p in added {
            self.add_control_peer(&p);
            let name = p.name.clone();
            match self.policy.peers.iter().position(|s| s.revoked) {
                Some(i) => {
                    self.policy.peers[i] = p;
                    self.nonces[i] = Default::default();
                    self.observed[i] = None;
                    self.key_ids[i] = KeyId::HmacSha256;
                    self.register_floor[i] = 0;
                    let limits = self.policy.limits;
                    self.request_budget[i] = limits::TokenBucket::new(limits.requests, now);
                    self.register_budget[i] = limits::TokenBucket::new(limits.registers, now);
                    if let Some(c) = self.counters.per_peer.get_mut(i) {
                        *c = Default::default();
                    }
                }
                None => self.policy.peers.push(p),
            }
            self.counters.peers_added += 1;
            change.added.push(name);
        }
        self.replace_statics(&new);
        let peers = std::mem::take(&mut self.policy.peers);
        self.policy = Policy { peers, ..new };
        self.index_peers(now);
        if self.polling.due.is_none() && !self.peers_by_key.is_empty() {
            self.polling.due = Some(now);
        }
        self.counters.entries = self.registry.len() as u64;
        self.counters.reloads += 1;
        for n in &change.added {
            info!(peer = %n, "peer added");
        }
        for n in &change.changed {
            info!(peer = %n, "peer changed");
        }
        Ok(change)
    }

    /// Static mappings as the new configuration has them.
    fn replace_statics(&mut self, new: &Policy) {
        let wanted: HashMap<EidPrefix, &Mapping> =
            new.static_mappings.iter().map(|(p, m)| (*p, m)).collect();
        let stale: Vec<EidPrefix> = self
            .registry
            .iter()
            .filter(|(p, m)| {
                m.origin == Origin::Static
                    && wanted.get(p).is_none_or(|w| {
                        Mapping {
                            origin: Origin::Static,
                            expires: None,
                            ..(*w).clone()
                        } != **m
                    })
            })
            .map(|(p, _)| p)
            .collect();
        for p in stale {
            self.registry.remove(&p);
        }
        for (prefix, m) in &new.static_mappings {
            if self.registry.get(prefix).is_none() {
                self.registry.insert(
                    *prefix,
                    Mapping {
                        origin: Origin::Static,
                        expires: None,
                        ..m.clone()
                    },
                );
            }
        }
    }

    fn add_control_peer(&mut self, p: &PeerPolicy) {
        if let Some(key) = p.wg_key {
            self.push_action(ControlAction::AddControlPeer {
                key,
                control_address: p.control_address,
            });
        }
    }

    /// Revokes the peer in slot `idx` at once: its control peer goes, its
    /// registrations are withdrawn (correspondents are told by push), and
    /// what it was told or subscribed to is forgotten.
    pub(crate) fn revoke_slot(&mut self, now: Instant, idx: u16, why: &'static str) -> Withdrawal {
        let mut w = Withdrawal::default();
        let Some(peer) = self.policy.peers.get(idx as usize).cloned() else {
            return w;
        };
        if peer.revoked {
            return w;
        }
        let prefixes: Vec<EidPrefix> = self.registry.prefixes_of(idx).collect();
        for prefix in prefixes {
            w.pushed += self.withdraw(now, prefix, idx);
            w.prefixes.push(prefix);
        }
        self.subscriptions
            .values_mut()
            .for_each(|s| s.retain(|s| s.peer != idx));
        self.subscriptions.retain(|_, s| !s.is_empty());
        // Held replies wait for this peer's ack and carry its mapping: they
        // are dropped; the requesters ask again and are answered negatively.
        self.pending.retain(|_, n| n.peer != idx);
        if let Some(key) = peer.wg_key {
            self.push_action(ControlAction::RemoveControlPeer { key });
        }
        self.notify_srtt.remove(&idx);
        let slot = &mut self.policy.peers[idx as usize];
        slot.revoked = true;
        slot.wg_key = None;
        slot.allowed.clear();
        slot.site_key.clear();
        slot.expires = None;
        self.observed[idx as usize] = None;
        self.index_peers(now);
        self.counters.entries = self.registry.len() as u64;
        self.counters.peers_revoked += 1;
        warn!(peer = %peer.name, reason = why, withdrawn = w.prefixes.len(), correspondents_told = w.pushed, "peer revoked");
        w
    }

    /// Removes `owner`'s registration of `prefix` and tells every node that
    /// resolved it, by a Map-Notify with a negative record, to drop it now
    /// rather than at its TTL. Returns how many were told.
    fn withdraw(&mut self, now: Instant, prefix: EidPrefix, owner: u16) -> usize {
        if !self
            .registry
            .get(&prefix)
            .is_some_and(|m| m.origin == Origin::Peer(owner))
        {
            return 0;
        }
        self.registry.remove(&prefix);
        self.commits.push(StoreOp::Delete(prefix));
        let targets: Vec<u16> = self
            .subscriptions
            .remove(&prefix)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.expires > now && s.peer != owner)
            .map(|s| s.peer)
            .collect();
        let record = EidRecord::negative(prefix, self.policy.negative_ttl_minutes, Action::Drop);
        for &peer in &targets {
            // Supersedes any push about the prefix still unacknowledged.
            self.pending
                .retain(|_, p| !(p.peer == peer && p.about == prefix && p.held.is_empty()));
            self.counters.withdrawals += 1;
            self.send_record(now, peer, prefix, record.clone(), None);
        }
        info!(eid = %prefix, correspondents = targets.len(), "registration withdrawn");
        targets.len()
    }

    /// Revokes every peer whose enrolment has ended.
    pub(crate) fn expire_peers(&mut self, now: Instant) {
        let due: Vec<u16> = self
            .policy
            .live_peers()
            .filter(|(_, p)| p.expires.is_some_and(|e| e <= now))
            .map(|(i, _)| i)
            .collect();
        for idx in due {
            self.counters.peers_expired += 1;
            self.revoke_slot(now, idx, "enrolment expired");
        }
    }

    /// When the next enrolment ends.
    pub(crate) fn next_peer_expiry(&self) -> Option<Instant> {
        self.policy
            .live_peers()
            .filter_map(|(_, p)| p.expires)
            .min()
    }
}

/// Whether `requester` may be handed mappings of `owner`, by the team
/// policy. Counted and logged (rate-limited) when refused. (A free function:
/// the caller holds a mapping borrowed from the registry.)
pub(crate) fn team_allows(
    policy: &Policy,
    counters: &mut crate::Counters,
    requester: u16,
    owner: u16,
) -> bool {
    let (Some(r), Some(o)) = (
        policy.peers.get(requester as usize),
        policy.peers.get(owner as usize),
    ) else {
        return false;
    };
    if policy.team_may_resolve(&r.team, &o.team) {
        return true;
    }
    counters.team_refusals += 1;
    let n = counters.team_refusals;
    // A line for the 1st, 2nd, 4th, 8th… refusal: a robot retrying cannot
    // flood the log.
    if n.is_power_of_two() {
        warn!(requester = %r.name, requester_team = %r.team, owner_team = %o.team, refusals = n, "lookup refused by the team policy");
    }
    false
}

/// Names, control addresses and keys are unique: otherwise the core could
/// not tell the peers apart.
fn check_peers(peers: &[PeerPolicy]) -> Result<(), ConfigRefused> {
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    let mut keys = HashSet::new();
    for p in peers {
        if !names.insert(&p.name) {
            return Err(ConfigRefused::DuplicateName(p.name.clone()));
        }
        if !addrs.insert(p.control_address) {
            return Err(ConfigRefused::DuplicateAddress(p.control_address));
        }
        if let Some(k) = p.wg_key {
            if !keys.insert(k) {
                return Err(ConfigRefused::DuplicateKey(key_hint(&k)));
            }
        }
    }
    if peers.len() > MAX_PEERS {
        return Err(ConfigRefused::TooMany(peers.len()));
    }
    Ok(())
}

impl MapServer {
    /// The notify transmit of a record to `peer`, for [`MapServer::send_record`].
    pub(crate) fn notify_transmit(&self, peer: u16, payload: Vec<u8>) -> Transmit {
        let p = &self.policy.peers[peer as usize];
        Transmit {
            via: if p.wg_key.is_some() {
                Via::Tunnel
            } else {
                Via::Plain
            },
            dst: std::net::SocketAddr::new(p.control_address, lisp_wire::LISP_CONTROL_PORT),
            payload,
        }
    }
}
