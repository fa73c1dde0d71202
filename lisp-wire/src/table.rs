//! `EidTable<V>`: values by EID prefix, with longest-prefix match per
//! instance and address family. Shared by the map-server's registry and the
//! xtr's map-cache.
//!
//! Prefixes are kept in ordered maps keyed by (network address, length), so
//! both questions asked of it are cheap at a million entries: the longest
//! prefix holding an address (one exact lookup per prefix length in use), and
//! the largest prefix around an address that holds no entry at all (one range
//! query per length), which is what a negative Map-Reply covers.

use crate::mapping::EidPrefix;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// One family: values by (network, length), and how many prefixes of each
/// length exist, so lookups only probe lengths in use.
#[derive(Debug, Clone)]
struct Family<A: Ord + Copy, V> {
    map: BTreeMap<(A, u8), V>,
    lens: Vec<u32>,
}

impl<A: Bits, V> Family<A, V> {
    fn new() -> Self {
        Family {
            map: BTreeMap::new(),
            lens: vec![0; A::BITS as usize + 1],
        }
    }

    fn insert(&mut self, addr: A, len: u8, v: V) -> Option<V> {
        let old = self.map.insert((addr.mask(len), len), v);
        if old.is_none() {
            self.lens[len as usize] += 1;
        }
        old
    }

    fn remove(&mut self, addr: A, len: u8) -> Option<V> {
        let old = self.map.remove(&(addr.mask(len), len));
        if old.is_some() {
            self.lens[len as usize] -= 1;
        }
        old
    }

    fn lookup_by(&self, addr: A, mut accept: impl FnMut(&V) -> bool) -> Option<(u8, &V)> {
        (0..=A::BITS)
            .rev()
            .filter(|&l| self.lens[l as usize] > 0)
            .find_map(|l| {
                self.map
                    .get(&(addr.mask(l), l))
                    .filter(|v| accept(v))
                    .map(|v| (l, v))
            })
    }

    fn uncovered_len(&self, addr: A) -> u8 {
        (0..=A::BITS)
            .find(|&l| {
                self.map
                    .range((addr.mask(l), 0u8)..=(addr.last(l), A::BITS))
                    .next()
                    .is_none()
            })
            .unwrap_or(A::BITS)
    }

    fn retain(&mut self, mut keep: impl FnMut(A, u8, &mut V) -> bool) {
        let lens = &mut self.lens;
        self.map.retain(|&(a, l), v| {
            let k = keep(a, l, v);
            if !k {
                lens[l as usize] -= 1;
            }
            k
        });
    }
}

#[derive(Debug, Clone)]
struct Instance<V> {
    v4: Family<u32, V>,
    v6: Family<u128, V>,
}

/// Values by EID prefix with longest-prefix match.
#[derive(Debug, Clone)]
pub struct EidTable<V> {
    instances: HashMap<u32, Instance<V>>,
    len: usize,
}

impl<V> Default for EidTable<V> {
    fn default() -> Self {
        EidTable {
            instances: HashMap::new(),
            len: 0,
        }
    }
}

fn v4(a: IpAddr) -> Option<u32> {
    match a {
        IpAddr::V4(a) => Some(u32::from(a)),
        IpAddr::V6(_) => None,
    }
}

fn prefix(iid: u32, addr: IpAddr, len: u8) -> EidPrefix {
    EidPrefix::new(iid, addr, len).unwrap_or_else(|_| EidPrefix::host(iid, addr))
}

impl<V> EidTable<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `v` for exactly `p`, returning the value it replaces.
    pub fn insert(&mut self, p: EidPrefix, v: V) -> Option<V> {
        let inst = self.instances.entry(p.iid).or_insert_with(|| Instance {
            v4: Family::new(),
            v6: Family::new(),
        });
        let old = match p.addr() {
            IpAddr::V4(a) => inst.v4.insert(u32::from(a), p.prefix_len(), v),
            IpAddr::V6(a) => inst.v6.insert(u128::from(a), p.prefix_len(), v),
        };
        self.len += old.is_none() as usize;
        old
    }

    pub fn remove(&mut self, p: &EidPrefix) -> Option<V> {
        let inst = self.instances.get_mut(&p.iid)?;
        let old = match p.addr() {
            IpAddr::V4(a) => inst.v4.remove(u32::from(a), p.prefix_len()),
            IpAddr::V6(a) => inst.v6.remove(u128::from(a), p.prefix_len()),
        };
        self.len -= old.is_some() as usize;
        old
    }

    /// The value stored for exactly `p`.
    pub fn get(&self, p: &EidPrefix) -> Option<&V> {
        let inst = self.instances.get(&p.iid)?;
        match v4(p.addr()) {
            Some(a) => inst.v4.map.get(&(a, p.prefix_len())),
            None => inst
                .v6
                .map
                .get(&(u128::from(to_v6(p.addr())), p.prefix_len())),
        }
    }

    pub fn get_mut(&mut self, p: &EidPrefix) -> Option<&mut V> {
        let inst = self.instances.get_mut(&p.iid)?;
        match v4(p.addr()) {
            Some(a) => inst.v4.map.get_mut(&(a, p.prefix_len())),
            None => inst
                .v6
                .map
                .get_mut(&(u128::from(to_v6(p.addr())), p.prefix_len())),
        }
    }

    /// Longest prefix holding `addr` whose value `accept`s.
    pub fn lookup_by(
        &self,
        iid: u32,
        addr: IpAddr,
        accept: impl FnMut(&V) -> bool,
    ) -> Option<(EidPrefix, &V)> {
        let inst = self.instances.get(&iid)?;
        let (len, v) = match addr {
            IpAddr::V4(a) => inst.v4.lookup_by(u32::from(a), accept)?,
            IpAddr::V6(a) => inst.v6.lookup_by(u128::from(a), accept)?,
        };
        Some((prefix(iid, addr, len), v))
    }

    /// Longest prefix holding `addr`.
    pub fn lookup(&self, iid: u32, addr: IpAddr) -> Option<(EidPrefix, &V)> {
        self.lookup_by(iid, addr, |_| true)
    }

    /// The largest prefix around `addr` that overlaps no entry.
    pub fn uncovered_prefix(&self, iid: u32, addr: IpAddr) -> EidPrefix {
        let len = match (self.instances.get(&iid), addr) {
            (None, _) => 0,
            (Some(inst), IpAddr::V4(a)) => inst.v4.uncovered_len(u32::from(a)),
            (Some(inst), IpAddr::V6(a)) => inst.v6.uncovered_len(u128::from(a)),
        };
        prefix(iid, addr, len)
    }

    /// Keeps the entries `keep` says yes to; returns the prefixes removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&EidPrefix, &mut V) -> bool) -> Vec<EidPrefix> {
        let mut removed = Vec::new();
        for (&iid, inst) in &mut self.instances {
            inst.v4.retain(|a, l, v| {
                let p = prefix(iid, IpAddr::V4(Ipv4Addr::from(a)), l);
                let k = keep(&p, v);
                if !k {
                    removed.push(p);
                }
                k
            });
            inst.v6.retain(|a, l, v| {
                let p = prefix(iid, IpAddr::V6(Ipv6Addr::from(a)), l);
                let k = keep(&p, v);
                if !k {
                    removed.push(p);
                }
                k
            });
        }
        self.len -= removed.len();
        removed
    }

    pub fn iter(&self) -> impl Iterator<Item = (EidPrefix, &V)> {
        self.instances.iter().flat_map(|(&iid, inst)| {
            let a = inst
                .v4
                .map
                .iter()
                .map(move |(&(a, l), v)| (prefix(iid, IpAddr::V4(Ipv4Addr::from(a)), l), v));
            let b = inst
                .v6
                .map
                .iter()
                .map(move |(&(a, l), v)| (prefix(iid, IpAddr::V6(Ipv6Addr::from(a)), l), v));
            a.chain(b)
        })
    }
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, len: u8) -> EidPrefix {
        EidPrefix::new(0, s.parse().unwrap(), len).unwrap()
    }

    #[test]
    fn longest_prefix_wins_per_instance_and_family() {
        let mut t = EidTable::new();
        t.insert(p("10.0.0.0", 8), 8);
        t.insert(p("10.1.0.0", 16), 16);
        t.insert(
            EidPrefix::new(5, "10.1.2.0".parse().unwrap(), 24).unwrap(),
            24,
        );
        t.insert(p("2001:db8::", 32), 6);
        assert_eq!(
            t.lookup(0, "10.1.2.3".parse().unwrap()).map(|(_, v)| *v),
            Some(16)
        );
        assert_eq!(
            t.lookup(5, "10.1.2.3".parse().unwrap())
                .map(|(p, _)| p.prefix_len()),
            Some(24)
        );
        assert!(t.lookup(5, "10.1.3.1".parse().unwrap()).is_none());
        assert_eq!(
            t.lookup_by(0, "10.1.2.3".parse().unwrap(), |v| *v != 16)
                .map(|(_, v)| *v),
            Some(8)
        );
        assert_eq!(t.get(&p("2001:db8::", 32)), Some(&6));
        assert_eq!(t.len(), 4);
        assert_eq!(t.retain(|_, v| *v != 8), vec![p("10.0.0.0", 8)]);
        assert_eq!(t.len(), 3);
        assert!(t.lookup(0, "10.9.9.9".parse().unwrap()).is_none());
    }

    #[test]
    fn uncovered_prefix_is_the_largest_hole() {
        let mut t = EidTable::new();
        t.insert(p("10.0.0.2", 32), ());
        assert_eq!(
            t.uncovered_prefix(0, "10.0.0.3".parse().unwrap()),
            p("10.0.0.3", 32)
        );
        assert_eq!(
            t.uncovered_prefix(0, "10.0.0.4".parse().unwrap()),
            p("10.0.0.4", 30)
        );
        assert_eq!(
            t.uncovered_prefix(0, "128.0.0.1".parse().unwrap()),
            p("128.0.0.0", 1)
        );
        assert_eq!(
            t.uncovered_prefix(9, "10.0.0.2".parse().unwrap())
                .prefix_len(),
            0
        );
    }
}
