//! Map-Registers: authentication, the replay window, authorisation of every
//! record before any state changes, and expiry. Also the restore of
//! persisted registrations at start-up.

use crate::io::{ControlAction, Refusal, StoreOp, Transmit, Via};
use crate::registry::{Mapping, Origin, Rloc};
use crate::MapServer;
use lisp_wire::{auth, Authentication, EidPrefix, MapNotify, MapRegister};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How often expired registrations and subscriptions are swept.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Register nonces remembered per peer, at most.
const NONCE_WINDOW: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct NonceWindow {
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

impl MapServer {
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
            self.commits.push(StoreOp::Delete(prefix));
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
            self.commits.push(StoreOp::Delete(prefix));
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

    /// After the restore: wake the control peers whose registrations came
    /// back, at the endpoint they were last seen at (or their first RLOC and
    /// data port: one WireGuard socket serves both planes), so that their
    /// sessions, which died with the old process, are re-established at once.
    pub fn finish_restore(&mut self) {
        let mut woken: HashMap<u16, SocketAddr> = HashMap::new();
        for (_, m) in self.registry.iter() {
            let Origin::Peer(peer) = m.origin else {
                continue;
            };
            if self.policy.peers[peer as usize].wg_key.is_none() || woken.contains_key(&peer) {
                continue;
            }
            // Where it was last seen (through its NAT), else what it registered.
            let registered = m
                .rlocs
                .first()
                .map(|r| SocketAddr::new(r.addr, r.port.unwrap_or(lisp_wire::DEFAULT_WG_PORT)));
            if let Some(endpoint) = self.observed(peer).or(registered) {
                woken.insert(peer, endpoint);
            }
        }
        let mut woken: Vec<_> = woken.into_iter().collect();
        woken.sort();
        for (peer, endpoint) in woken {
            self.push_action(ControlAction::WakeControlPeer { peer, endpoint });
        }
    }

    pub(crate) fn handle_map_register(
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
        // lispwg nodes count their register nonces up, across their own
        // restarts, and the highest accepted is persisted: any replay is
        // refused, however old. Standard LISP peers use random nonces: a
        // window of recent ones is all that can be checked for them.
        let monotonic = peer.wg_key.is_some();
        let replayed = if monotonic {
            reg.nonce <= self.register_floor[peer_idx as usize]
        } else {
            self.nonces[peer_idx as usize].check(reg.nonce, now, lifetime)
        };
        if replayed {
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
            let own = &self.policy.own_addresses;
            let mut unusable = 0u64;
            let rlocs: Box<[Rloc]> = rec
                .rlocs
                .iter()
                .filter_map(|r| {
                    let info = r.info()?;
                    // A relay may well run on the map-server's host.
                    if !usable_locator(info.rloc, !info.relayed, own) {
                        unusable += 1;
                        return None;
                    }
                    Some(Rloc {
                        addr: info.rloc,
                        port: info.port,
                        priority: r.priority,
                        weight: r.weight,
                        relayed: info.relayed,
                    })
                })
                .collect();
            if unusable > 0 {
                self.counters.bad_locators += unusable;
                debug!(%prefix, peer = %peer.name, unusable, "dropped unusable locators (unspecified, loopback, multicast, link-local or the map-server's own)");
            }
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

        let cap = self.policy.limits.max_registrations_per_peer;
        let added = accepted
            .iter()
            .filter(|(p, m)| m.is_some() && !self.registry.is_registered_by(peer_idx, p))
            .count();
        let held = self.registry.count_of(peer_idx);
        if held + added > cap {
            return Err(Refusal::OverLimit(format!(
                "peer {} would hold {} registrations, more than {cap}",
                peer.name,
                held + added
            )));
        }

        if monotonic {
            self.register_floor[peer_idx as usize] = reg.nonce;
            self.commits.push(StoreOp::RegisterNonce {
                peer: peer.name.clone(),
                nonce: reg.nonce,
            });
        } else {
            self.nonces[peer_idx as usize].remember(reg.nonce, now);
        }
        // The notifies we start to this peer are signed as it signs.
        if reg.auth.key_id != lisp_wire::KeyId::None {
            self.key_ids[peer_idx as usize] = reg.auth.key_id;
        }
        let keyed = peer.wg_key.is_some();
        let peer_name = peer.name.clone();
        let site_key = peer.site_key.clone();
        if keyed {
            // A node that moved re-registers from its new endpoint.
            self.observe_soon(now);
        }
        for (prefix, mapping) in accepted {
            match mapping {
                Some(mapping) => {
                    let old = self.registry.insert(prefix, mapping.clone());
                    // A node chooses a new map version each time it starts:
                    // a changed one means it restarted, and forgot the
                    // tunnels its correspondents still hold.
                    let restarted = old.as_ref().is_some_and(|o| {
                        o.is_live(now) && o.map_version != 0 && mapping.map_version != o.map_version
                    });
                    let moved = !restarted
                        && old.as_ref().is_some_and(|o| {
                            o.rlocs != mapping.rlocs || o.wg_key != mapping.wg_key
                        });
                    if restarted {
                        info!(eid = %prefix, peer = %peer_name, "node restarted; asking its correspondents to resolve it again");
                        self.solicit_subscribers(now, prefix, peer_idx);
                    }
                    if old.is_none() || moved || restarted {
                        let rloc = mapping.rlocs.first().map(|r| r.addr.to_string());
                        info!(eid = %prefix, peer = %peer_name, rloc = %rloc.as_deref().unwrap_or("-"), "registered");
                    }
                    self.commits.push(StoreOp::Put {
                        prefix,
                        mapping,
                        peer: peer_name.clone(),
                    });
                    if moved && self.policy.push_moves {
                        // Pushed once the endpoint the node registered from
                        // is known, so one push carries both.
                        self.push_after_read(now, prefix, peer_idx);
                    }
                }
                None => {
                    if self.registry.remove(&prefix).is_some() {
                        info!(eid = %prefix, peer = %peer_name, "deregistered");
                        self.commits.push(StoreOp::Delete(prefix));
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
                    // It tells the node its registration is safe: only once
                    // it is on disk.
                    self.commits.push_durable(Transmit {
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

    /// The highest register nonce accepted from `peer_name` before a
    /// restart, from the store.
    pub fn restore_register_nonce(&mut self, peer_name: &str, nonce: u64) -> bool {
        let Some(&idx) = self.peers_by_name.get(peer_name) else {
            return false;
        };
        let floor = &mut self.register_floor[idx as usize];
        *floor = (*floor).max(nonce);
        true
    }

    /// Removes expired registrations and subscriptions.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.summarise_suppressed_logs(now);
        for prefix in self.registry.sweep(now) {
            info!(eid = %prefix, "registration expired");
            self.counters.expired += 1;
            self.commits.push(StoreOp::Delete(prefix));
        }
        self.subscriptions.retain(|_, subs| {
            subs.retain(|s| s.expires > now);
            !subs.is_empty()
        });
        self.counters.entries = self.registry.len() as u64;
    }
}

/// Whether a registered locator can be handed to correspondents: not
/// unspecified, loopback, multicast, broadcast or link-local, and, when
/// `check_own` (not for a relay's address), not one of the map-server's own
/// addresses.
pub(crate) fn usable_locator(
    addr: std::net::IpAddr,
    check_own: bool,
    own: &[std::net::IpAddr],
) -> bool {
    use std::net::IpAddr;
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    let special = match addr {
        IpAddr::V4(a) => {
            a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_link_local()
        }
        IpAddr::V6(a) => {
            a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    let own_address = check_own && own.contains(&addr);
    !(special || own_address)
}
