//! The mapping database: EID prefix → locators, key and port, with
//! longest-prefix match per instance and address family.
//!
//! The prefix table itself is lisp-wire's [`EidTable`]; the registry adds
//! liveness (expiry) on top.

use lisp_wire::{EidPrefix, EidTable};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

/// Who a mapping came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Registered by the control peer with this index in the policy.
    Peer(u16),
    /// From the configuration; never expires.
    Static,
}

/// One locator of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rloc {
    pub addr: IpAddr,
    /// WireGuard data port; `None` for keyless LISP locators.
    pub port: Option<u16>,
    pub priority: u8,
    pub weight: u8,
    /// A relay's address (the node's TURN allocation), not the node's.
    pub relayed: bool,
}

/// What the map-server knows about one EID prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub rlocs: Box<[Rloc]>,
    /// The node's WireGuard public key; `None` for keyless LISP peers.
    pub wg_key: Option<[u8; 32]>,
    pub origin: Origin,
    /// TTL handed to resolvers, in minutes.
    pub ttl_minutes: u32,
    pub map_version: u16,
    /// `None` for static mappings.
    pub expires: Option<Instant>,
}

impl Mapping {
    pub fn is_live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// The mapping database of the map-server.
#[derive(Debug, Default)]
pub struct Registry {
    table: EidTable<Mapping>,
    /// The prefixes each control peer registered (live or not yet swept).
    by_peer: HashMap<u16, BTreeSet<EidPrefix>>,
    /// No mapping expires before this (a lower bound: refreshes only move
    /// expiries later). A sweep visits every mapping, 40 ms at a million on
    /// the event loop, so it is skipped until this is due.
    next_expiry: Option<Instant>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of prefixes held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Stores a mapping, returning the one it replaces.
    pub fn insert(&mut self, prefix: EidPrefix, m: Mapping) -> Option<Mapping> {
        if let Some(e) = m.expires {
            self.next_expiry = Some(self.next_expiry.map_or(e, |t| t.min(e)));
        }
        if let Origin::Peer(p) = m.origin {
            self.by_peer.entry(p).or_default().insert(prefix);
        }
        let old = self.table.insert(prefix, m);
        if let Some(old) = &old {
            self.unindex(prefix, old);
        }
        old
    }

    pub fn remove(&mut self, prefix: &EidPrefix) -> Option<Mapping> {
        let old = self.table.remove(prefix);
        if let Some(old) = &old {
            self.unindex(*prefix, old);
        }
        old
    }

    /// Drops `prefix` from its old owner's index unless it still owns it.
    fn unindex(&mut self, prefix: EidPrefix, old: &Mapping) {
        let Origin::Peer(p) = old.origin else { return };
        let still = self
            .table
            .get(&prefix)
            .is_some_and(|m| m.origin == old.origin);
        if !still {
            if let Some(set) = self.by_peer.get_mut(&p) {
                set.remove(&prefix);
                if set.is_empty() {
                    self.by_peer.remove(&p);
                }
            }
        }
    }

    /// The prefixes control peer `peer` registered.
    pub fn prefixes_of(&self, peer: u16) -> impl Iterator<Item = EidPrefix> + '_ {
        self.by_peer.get(&peer).into_iter().flatten().copied()
    }

    /// Whether control peer `peer` registered exactly `prefix`.
    pub fn is_registered_by(&self, peer: u16, prefix: &EidPrefix) -> bool {
        self.by_peer.get(&peer).is_some_and(|s| s.contains(prefix))
    }

    /// How many prefixes control peer `peer` registered.
    pub fn count_of(&self, peer: u16) -> usize {
        self.by_peer.get(&peer).map_or(0, BTreeSet::len)
    }

    /// The mapping registered for exactly this prefix, live or not.
    pub fn get(&self, prefix: &EidPrefix) -> Option<&Mapping> {
        self.table.get(prefix)
    }

    /// Longest-prefix match among live mappings.
    pub fn lookup(&self, iid: u32, addr: IpAddr, now: Instant) -> Option<(EidPrefix, &Mapping)> {
        self.table.lookup_by(iid, addr, |m| m.is_live(now))
    }

    /// The largest prefix around `addr` that holds no mapping: what a
    /// negative Map-Reply for `addr` covers. Expired mappings not yet swept
    /// count as present, which only makes it smaller.
    pub fn uncovered_prefix(&self, iid: u32, addr: IpAddr) -> EidPrefix {
        self.table.uncovered_prefix(iid, addr)
    }

    /// Removes expired mappings and returns their prefixes.
    pub fn sweep(&mut self, now: Instant) -> Vec<EidPrefix> {
        if self.next_expiry.is_none_or(|t| now < t) {
            return Vec::new();
        }
        let mut next: Option<Instant> = None;
        let mut gone = Vec::new();
        let removed = self.table.retain(|p, m| {
            let live = m.is_live(now);
            if let (true, Some(e)) = (live, m.expires) {
                next = Some(next.map_or(e, |t| t.min(e)));
            }
            if !live {
                if let Origin::Peer(o) = m.origin {
                    gone.push((o, *p));
                }
            }
            live
        });
        for (o, p) in gone {
            if let Some(set) = self.by_peer.get_mut(&o) {
                set.remove(&p);
                if set.is_empty() {
                    self.by_peer.remove(&o);
                }
            }
        }
        self.next_expiry = next;
        removed
    }

    /// Every mapping, for status output and tests.
    pub fn iter(&self) -> impl Iterator<Item = (EidPrefix, &Mapping)> {
        self.table.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn m(expires: Option<Instant>) -> Mapping {
        Mapping {
            rlocs: vec![Rloc {
                addr: "192.0.2.1".parse().unwrap(),
                port: Some(51820),
                priority: 1,
                weight: 100,
                relayed: false,
            }]
            .into_boxed_slice(),
            wg_key: Some([7; 32]),
            origin: Origin::Peer(0),
            ttl_minutes: 1,
            map_version: 0,
            expires,
        }
    }

    fn p(s: &str, len: u8) -> EidPrefix {
        EidPrefix::new(0, s.parse().unwrap(), len).unwrap()
    }

    #[test]
    fn expired_mappings_are_invisible_then_swept() {
        let now = Instant::now();
        let mut r = Registry::new();
        r.insert(p("10.0.0.2", 32), m(Some(now + Duration::from_secs(10))));
        r.insert(p("10.0.0.3", 32), m(None));
        let later = now + Duration::from_secs(11);
        assert!(r.lookup(0, "10.0.0.2".parse().unwrap(), now).is_some());
        assert!(r.lookup(0, "10.0.0.2".parse().unwrap(), later).is_none());
        assert!(r.sweep(now).is_empty(), "nothing due yet");
        assert_eq!(r.sweep(later), vec![p("10.0.0.2", 32)]);
        // A later registration lowers the bound again.
        r.insert(p("10.0.0.4", 32), m(Some(later + Duration::from_secs(1))));
        assert!(r.sweep(later).is_empty());
        let end = later + Duration::from_secs(2);
        assert_eq!(r.sweep(end), vec![p("10.0.0.4", 32)]);
        assert_eq!(r.len(), 1);
        assert!(r.get(&p("10.0.0.2", 32)).is_none());
    }

    #[test]
    fn each_peers_prefixes_are_indexed() {
        let now = Instant::now();
        let mut r = Registry::new();
        let live = Some(now + Duration::from_secs(10));
        r.insert(p("10.0.0.2", 32), m(live));
        r.insert(p("10.0.1.0", 24), m(Some(now + Duration::from_secs(1))));
        let of = |r: &Registry| r.prefixes_of(0).collect::<Vec<_>>();
        assert_eq!(of(&r), vec![p("10.0.0.2", 32), p("10.0.1.0", 24)]);
        // Taken over by another peer: no longer peer 0's.
        r.insert(
            p("10.0.0.2", 32),
            Mapping {
                origin: Origin::Peer(1),
                ..m(live)
            },
        );
        assert_eq!(of(&r), vec![p("10.0.1.0", 24)]);
        assert_eq!(r.prefixes_of(1).count(), 1);
        r.sweep(now + Duration::from_secs(2));
        assert!(of(&r).is_empty(), "expired ones leave the index");
        r.remove(&p("10.0.0.2", 32));
        assert_eq!(r.prefixes_of(1).count(), 0);
    }
}
