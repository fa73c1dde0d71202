//! The mapping database: EID prefix → locators, key and port, with
//! longest-prefix match per instance and address family.
//!
//! Prefixes are kept in ordered maps keyed by (network address, length), so
//! that both questions the map-server asks are cheap at a million entries:
//! the longest registered prefix holding an address (one exact lookup per
//! prefix length in use), and the largest prefix around an address that holds
//! no registration at all (one range query per length), which is what a
//! negative Map-Reply covers.

use lisp_wire::EidPrefix;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// Per-family table: mappings by (network, length), and how many prefixes of
/// each length exist, so lookups only probe lengths in use.
#[derive(Debug)]
struct Table<A: Ord + Copy> {
    map: BTreeMap<(A, u8), Mapping>,
    lens: Vec<u32>,
}

impl<A: Ord + Copy> Table<A> {
    fn new(bits: usize) -> Self {
        Table {
            map: BTreeMap::new(),
            lens: vec![0; bits + 1],
        }
    }
}

/// Address arithmetic shared by the IPv4 (u32) and IPv6 (u128) tables.
trait Bits: Ord + Copy {
    const BITS: u8;
    fn mask(self, len: u8) -> Self;
    /// The last address of the prefix.
    fn last(self, len: u8) -> Self;
}

impl Bits for u32 {
    const BITS: u8 = 32;
    fn mask(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (32 - len as u32))
        }
    }
    fn last(self, len: u8) -> Self {
        self.mask(len)
            | if len == 0 {
                u32::MAX
            } else {
                !(u32::MAX << (32 - len as u32))
            }
    }
}

impl Bits for u128 {
    const BITS: u8 = 128;
    fn mask(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u128::MAX << (128 - len as u32))
        }
    }
    fn last(self, len: u8) -> Self {
        self.mask(len)
            | if len == 0 {
                u128::MAX
            } else {
                !(u128::MAX << (128 - len as u32))
            }
    }
}

impl<A: Bits> Table<A> {
    fn insert(&mut self, addr: A, len: u8, m: Mapping) -> Option<Mapping> {
        let old = self.map.insert((addr.mask(len), len), m);
        if old.is_none() {
            self.lens[len as usize] += 1;
        }
        old
    }

    fn remove(&mut self, addr: A, len: u8) -> Option<Mapping> {
        let old = self.map.remove(&(addr.mask(len), len));
        if old.is_some() {
            self.lens[len as usize] -= 1;
        }
        old
    }

    fn get(&self, addr: A, len: u8) -> Option<&Mapping> {
        self.map.get(&(addr.mask(len), len))
    }

    /// Longest live prefix holding `addr`, and its length.
    fn lookup(&self, addr: A, now: Instant) -> Option<(u8, &Mapping)> {
        (0..=A::BITS)
            .rev()
            .filter(|&l| self.lens[l as usize] > 0)
            .find_map(|l| {
                self.map
                    .get(&(addr.mask(l), l))
                    .filter(|m| m.is_live(now))
                    .map(|m| (l, m))
            })
    }

    /// Length of the shortest prefix around `addr` that overlaps no entry.
    /// Entries not yet swept count as present, which only makes it smaller.
    fn uncovered_len(&self, addr: A) -> u8 {
        (0..=A::BITS)
            .find(|&l| {
                let start = (addr.mask(l), 0u8);
                let end = (addr.last(l), A::BITS);
                self.map.range(start..=end).next().is_none()
            })
            .unwrap_or(A::BITS)
    }

    fn sweep(&mut self, now: Instant, removed: &mut Vec<(A, u8)>) {
        let before = removed.len();
        self.map.retain(|&(a, l), m| {
            let live = m.is_live(now);
            if !live {
                removed.push((a, l));
            }
            live
        });
        for &(_, l) in &removed[before..] {
            self.lens[l as usize] -= 1;
        }
    }
}

/// Both family tables of one instance.
#[derive(Debug)]
struct Instance {
    v4: Table<u32>,
    v6: Table<u128>,
}

/// The mapping database of the map-server.
#[derive(Debug, Default)]
pub struct Registry {
    instances: HashMap<u32, Instance>,
    len: usize,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of prefixes held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn instance_mut(&mut self, iid: u32) -> &mut Instance {
        self.instances.entry(iid).or_insert_with(|| Instance {
            v4: Table::new(32),
            v6: Table::new(128),
        })
    }

    /// Stores a mapping, returning the one it replaces.
    pub fn insert(&mut self, prefix: EidPrefix, m: Mapping) -> Option<Mapping> {
        let inst = self.instance_mut(prefix.iid);
        let old = match prefix.addr() {
            IpAddr::V4(a) => inst.v4.insert(u32::from(a), prefix.prefix_len(), m),
            IpAddr::V6(a) => inst.v6.insert(u128::from(a), prefix.prefix_len(), m),
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, prefix: &EidPrefix) -> Option<Mapping> {
        let inst = self.instances.get_mut(&prefix.iid)?;
        let old = match prefix.addr() {
            IpAddr::V4(a) => inst.v4.remove(u32::from(a), prefix.prefix_len()),
            IpAddr::V6(a) => inst.v6.remove(u128::from(a), prefix.prefix_len()),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The mapping registered for exactly this prefix, live or not.
    pub fn get(&self, prefix: &EidPrefix) -> Option<&Mapping> {
        let inst = self.instances.get(&prefix.iid)?;
        match prefix.addr() {
            IpAddr::V4(a) => inst.v4.get(u32::from(a), prefix.prefix_len()),
            IpAddr::V6(a) => inst.v6.get(u128::from(a), prefix.prefix_len()),
        }
    }

    /// Longest-prefix match among live mappings.
    pub fn lookup(&self, iid: u32, addr: IpAddr, now: Instant) -> Option<(EidPrefix, &Mapping)> {
        let inst = self.instances.get(&iid)?;
        let (len, m) = match addr {
            IpAddr::V4(a) => inst.v4.lookup(u32::from(a), now)?,
            IpAddr::V6(a) => inst.v6.lookup(u128::from(a), now)?,
        };
        Some((EidPrefix::new(iid, addr, len).ok()?, m))
    }

    /// The largest prefix around `addr` that holds no mapping: what a
    /// negative Map-Reply for `addr` covers.
    pub fn uncovered_prefix(&self, iid: u32, addr: IpAddr) -> EidPrefix {
        let len = match (self.instances.get(&iid), addr) {
            (None, _) => 0,
            (Some(inst), IpAddr::V4(a)) => inst.v4.uncovered_len(u32::from(a)),
            (Some(inst), IpAddr::V6(a)) => inst.v6.uncovered_len(u128::from(a)),
        };
        EidPrefix::new(iid, addr, len).unwrap_or_else(|_| EidPrefix::host(iid, addr))
    }

    /// Removes expired mappings and returns their prefixes.
    pub fn sweep(&mut self, now: Instant) -> Vec<EidPrefix> {
        let mut out = Vec::new();
        for (&iid, inst) in &mut self.instances {
            let mut v4 = Vec::new();
            inst.v4.sweep(now, &mut v4);
            out.extend(
                v4.into_iter()
                    .map(|(a, l)| prefix(iid, IpAddr::V4(Ipv4Addr::from(a)), l)),
            );
            let mut v6 = Vec::new();
            inst.v6.sweep(now, &mut v6);
            out.extend(
                v6.into_iter()
                    .map(|(a, l)| prefix(iid, IpAddr::V6(Ipv6Addr::from(a)), l)),
            );
        }
        self.len -= out.len();
        out
    }

    /// Every mapping, for status output and tests.
    pub fn iter(&self) -> impl Iterator<Item = (EidPrefix, &Mapping)> {
        self.instances.iter().flat_map(|(&iid, inst)| {
            let v4 = inst
                .v4
                .map
                .iter()
                .map(move |(&(a, l), m)| (prefix(iid, IpAddr::V4(Ipv4Addr::from(a)), l), m));
            let v6 = inst
                .v6
                .map
                .iter()
                .map(move |(&(a, l), m)| (prefix(iid, IpAddr::V6(Ipv6Addr::from(a)), l), m));
            v4.chain(v6)
        })
    }
}

fn prefix(iid: u32, addr: IpAddr, len: u8) -> EidPrefix {
    EidPrefix::new(iid, addr, len).unwrap_or_else(|_| EidPrefix::host(iid, addr))
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
    fn longest_prefix_wins_per_instance_and_family() {
        let now = Instant::now();
        let mut r = Registry::new();
        r.insert(p("10.0.0.0", 8), m(None));
        r.insert(p("10.1.0.0", 16), m(None));
        r.insert(
            EidPrefix::new(5, "10.1.2.0".parse().unwrap(), 24).unwrap(),
            m(None),
        );
        r.insert(p("2001:db8::", 32), m(None));
        let (hit, _) = r.lookup(0, "10.1.2.3".parse().unwrap(), now).unwrap();
        assert_eq!(hit, p("10.1.0.0", 16));
        let (hit, _) = r.lookup(5, "10.1.2.3".parse().unwrap(), now).unwrap();
        assert_eq!(hit.prefix_len(), 24);
        assert!(r.lookup(5, "10.1.3.1".parse().unwrap(), now).is_none());
        assert!(r.lookup(0, "11.0.0.1".parse().unwrap(), now).is_none());
        assert_eq!(
            r.lookup(0, "2001:db8::1".parse().unwrap(), now).unwrap().0,
            p("2001:db8::", 32)
        );
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn uncovered_prefix_is_the_largest_hole() {
        let mut r = Registry::new();
        r.insert(p("10.0.0.2", 32), m(None));
        // 10.0.0.3 shares 10.0.0.2/31 with a registration: only /32 is free.
        assert_eq!(
            r.uncovered_prefix(0, "10.0.0.3".parse().unwrap()),
            p("10.0.0.3", 32)
        );
        // 10.0.0.4 is outside 10.0.0.0/30's registered half: 10.0.0.4/30 is free.
        assert_eq!(
            r.uncovered_prefix(0, "10.0.0.4".parse().unwrap()),
            p("10.0.0.4", 30)
        );
        // 128.0.0.1: nothing in 128.0.0.0/1.
        assert_eq!(
            r.uncovered_prefix(0, "128.0.0.1".parse().unwrap()),
            p("128.0.0.0", 1)
        );
        // An empty instance: everything is free.
        assert_eq!(r.uncovered_prefix(9, "10.0.0.2".parse().unwrap()).prefix_len(), 0);
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
        assert_eq!(r.sweep(later), vec![p("10.0.0.2", 32)]);
        assert_eq!(r.len(), 1);
        assert!(r.get(&p("10.0.0.2", 32)).is_none());
    }
}
