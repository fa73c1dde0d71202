//! The map-cache and the data peers it calls for: installing mappings from
//! replies and notifies, moves, eviction, expiry with background refresh,
//! and the removal of peers idle at both ends. What the peers and routes
//! should be is handed to [`crate::dataplane`], which programs them.

use crate::dataplane::PeerSpec;
use crate::io::{PeerStats, Unusable};
use crate::Xtr;
use lisp_wire::{EidPrefix, EidRecord};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, info};

#[derive(Debug, Clone)]
pub(crate) struct CacheEntry {
    /// `None` for a negative entry.
    pub(crate) peer: Option<([u8; 32], SocketAddr)>,
    pub(crate) expires: Instant,
    refreshing: bool,
}

#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) endpoint: SocketAddr,
    prefixes: BTreeSet<EidPrefix>,
    rx: u64,
    tx: u64,
    last_active: Instant,
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

    /// Puts a mapping in the map-cache and asks for its peer and route.
    /// `Ok(Some(prefix))` for a usable positive mapping, `Ok(None)` for a
    /// negative one.
    pub(crate) fn install(
        &mut self,
        now: Instant,
        record: &EidRecord,
    ) -> Result<Option<EidPrefix>, Unusable> {
        let prefix = EidPrefix::of_record(record).map_err(|_| Unusable::NotAnIpPrefix)?;
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
            return Ok(None);
        }
        let key = record.wg_key().ok_or(Unusable::NoKey)?;
        if key == self.policy.wg_public_key {
            return Err(Unusable::OwnKey);
        }
        let (_, loc) = record.best_locator().ok_or(Unusable::NoLocator)?;
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
            self.want_peer(key);
            self.dataplane.want_route(prefix, Some(key));
        }
        Ok(Some(prefix))
    }

    /// Hands the peer's current state to the data plane.
    fn want_peer(&mut self, key: [u8; 32]) {
        let spec = self.peers.get(&key).map(|p| PeerSpec {
            endpoint: p.endpoint,
            allowed: p.prefixes.iter().copied().collect(),
        });
        self.dataplane.want_peer(key, spec);
    }

    /// Removes `prefix` from `key`'s peer, and the peer when it has none left.
    fn detach(&mut self, prefix: &EidPrefix, key: [u8; 32]) {
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
        }
        self.want_peer(key);
    }

    pub(crate) fn remove_prefix(&mut self, prefix: &EidPrefix) {
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

    /// Latest WireGuard counters of the data peers. A peer is removed once it
    /// has moved no byte in either direction and had no handshake for the
    /// idle timeout. Because WireGuard handshakes only happen with traffic and
    /// both ends see the same bytes and the same handshake, the other end
    /// reaches the same verdict within one check: teardown is never
    /// one-sided.
    pub(crate) fn idle_check(&mut self, now: Instant, stats: &[PeerStats]) {
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
            if let Some(p) = self.peers.get(&key) {
                info!(rloc = %p.endpoint, "data peer idle at both ends; removing");
            }
            self.remove_peer(key);
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
