//! `EidTable<V>`: values by EID prefix, with longest-prefix match per
//! instance and address family. Shared by the map-server's registry and the
//! xtr's map-cache.
//!
//! Per instance and family, the values sit in one dense vector, a hash map
//! finds a prefix's slot from its (network address, length), and an ordered
//! set holds the same keys. So both questions asked of it stay cheap at a
//! million entries: the longest prefix holding an address is one hash probe
//! per prefix length in use (about 0.15 µs at a million host prefixes,
//! against 0.8 µs or more for a walk down an ordered map of that size: each
//! level a cache miss), and the largest prefix around an address that holds
//! no entry at all (what a negative Map-Reply covers) is one range query on
//! the ordered keys per length. The values take no room in the ordered set,
//! so it stays small (a third of the memory an ordered map of the values
//! took).

use crate::mapping::EidPrefix;
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The index's hasher: fast on small keys, and seeded per table, so that
/// prefixes chosen to collide cannot be computed in advance.
type Hasher = ahash::RandomState;

/// The index holds only slot numbers (4 bytes each, the keys are in the
/// slots): 10 MB at a million entries, small enough to stay mostly in the
/// CPU's cache, where an index of keys and slots (26 MB) did not.
type Index = hashbrown::HashTable<u32>;

/// Address arithmetic shared by the IPv4 (u32) and IPv6 (u128) tables.
trait Bits: Ord + Copy + Hash {
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

/// One family: values by (network, length) in dense slots, and how many
/// prefixes of each length exist, so lookups only probe lengths in use.
#[derive(Debug, Clone)]
struct Family<A: Ord + Copy, V> {
    /// Each entry with its key; a removed one leaves a hole for the next.
    slots: Vec<Option<((A, u8), V)>>,
    free: Vec<u32>,
    /// Slot numbers, found by the hash of their slot's key.
    index: Index,
    hasher: Hasher,
    /// The keys, in order: range queries and iteration.
    order: BTreeSet<(A, u8)>,
    lens: Vec<u32>,
}

impl<A: Bits, V> Family<A, V> {
    fn new() -> Self {
        Family {
            slots: Vec::new(),
            free: Vec::new(),
            index: Index::new(),
            hasher: Hasher::new(),
            order: BTreeSet::new(),
            lens: vec![0; A::BITS as usize + 1],
        }
    }

    fn value(&self, slot: u32) -> Option<&V> {
        self.slots.get(slot as usize)?.as_ref().map(|(_, v)| v)
    }

    /// The slot holding `key`.
    fn find(&self, key: &(A, u8)) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(
                self.hasher.hash_one(key),
                |&s| matches!(slots.get(s as usize), Some(Some((k, _))) if k == key),
            )
            .copied()
    }

    fn get(&self, key: &(A, u8)) -> Option<&V> {
        self.value(self.find(key)?)
    }

    fn get_mut(&mut self, key: &(A, u8)) -> Option<&mut V> {
        let slot = self.find(key)?;
        self.slots.get_mut(slot as usize)?.as_mut().map(|(_, v)| v)
    }

    /// Takes `key`'s slot number out of the index.
    fn unindex(&mut self, key: &(A, u8)) -> Option<u32> {
        let slots = &self.slots;
        let entry = self
            .index
            .find_entry(
                self.hasher.hash_one(key),
                |&s| matches!(slots.get(s as usize), Some(Some((k, _))) if k == key),
            )
            .ok()?;
        Some(entry.remove().0)
    }

    fn insert(&mut self, addr: A, len: u8, v: V) -> Option<V> {
        let key = (addr.mask(len), len);
        if let Some(old) = self.get_mut(&key) {
            return Some(std::mem::replace(old, v));
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some((key, v));
                s
            }
            None => {
                self.slots.push(Some((key, v)));
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hasher.hash_one(key), slot, |&s| {
            match slots.get(s as usize) {
                Some(Some((k, _))) => hasher.hash_one(k),
                _ => 0,
            }
        });
        self.order.insert(key);
        self.lens[len as usize] += 1;
        None
    }

    fn remove(&mut self, addr: A, len: u8) -> Option<V> {
        let key = (addr.mask(len), len);
        let slot = self.unindex(&key)?;
        self.order.remove(&key);
        self.lens[len as usize] -= 1;
        self.free.push(slot);
        self.slots.get_mut(slot as usize)?.take().map(|(_, v)| v)
    }

    fn lookup_by(&self, addr: A, mut accept: impl FnMut(&V) -> bool) -> Option<(u8, &V)> {
        (0..=A::BITS)
            .rev()
            .filter(|&l| self.lens[l as usize] > 0)
            .find_map(|l| {
                self.get(&(addr.mask(l), l))
                    .filter(|v| accept(v))
                    .map(|v| (l, v))
            })
    }

    fn uncovered_len(&self, addr: A) -> u8 {
        (0..=A::BITS)
            .find(|&l| {
                self.order
                    .range((addr.mask(l), 0u8)..=(addr.last(l), A::BITS))
                    .next()
                    .is_none()
            })
            .unwrap_or(A::BITS)
    }

    fn retain(&mut self, mut keep: impl FnMut(A, u8, &mut V) -> bool) {
        for slot in 0..self.slots.len() {
            let Some(((a, l), v)) = &mut self.slots[slot] else {
                continue;
            };
            if keep(*a, *l, v) {
                continue;
            }
            let key = (*a, *l);
            self.unindex(&key);
            self.order.remove(&key);
            self.lens[key.1 as usize] -= 1;
            self.free.push(slot as u32);
            self.slots[slot] = None;
        }
        if self.index.is_empty() {
            self.index = Index::new();
            // Give the memory back once everything is gone.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
    }

    /// Entries in key order.
    fn iter(&self) -> impl Iterator<Item = (A, u8, &V)> {
        self.order
            .iter()
            .filter_map(|k| self.get(k).map(|v| (k.0, k.1, v)))
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
            Some(a) => inst.v4.get(&(a, p.prefix_len())),
            None => inst.v6.get(&(u128::from(to_v6(p.addr())), p.prefix_len())),
        }
    }

    pub fn get_mut(&mut self, p: &EidPrefix) -> Option<&mut V> {
        let inst = self.instances.get_mut(&p.iid)?;
        match v4(p.addr()) {
            Some(a) => inst.v4.get_mut(&(a, p.prefix_len())),
            None => inst
                .v6
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

    /// Every entry, in order of (instance, family, network, length) within
    /// an instance.
    pub fn iter(&self) -> impl Iterator<Item = (EidPrefix, &V)> {
        self.instances.iter().flat_map(|(&iid, inst)| {
            let a = inst
                .v4
                .iter()
                .map(move |(a, l, v)| (prefix(iid, IpAddr::V4(Ipv4Addr::from(a)), l), v));
            let b = inst
                .v6
                .iter()
                .map(move |(a, l, v)| (prefix(iid, IpAddr::V6(Ipv6Addr::from(a)), l), v));
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

    /// What the table must answer, computed the slow way from a list.
    #[derive(Default)]
    struct Model(Vec<(EidPrefix, u32)>);

    impl Model {
        fn lookup(&self, iid: u32, addr: IpAddr) -> Option<(EidPrefix, u32)> {
            self.0
                .iter()
                .filter(|(p, _)| p.contains_addr(iid, addr))
                .max_by_key(|(p, _)| p.prefix_len())
                .copied()
        }

        fn uncovered(&self, iid: u32, addr: IpAddr) -> u8 {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            (0..=max)
                .find(|&l| {
                    // No entry whose network address lies in the hole (an
                    // entry covering it is what a lookup would have found).
                    let hole = EidPrefix::new(iid, addr, l).unwrap();
                    !self
                        .0
                        .iter()
                        .any(|(p, _)| p.iid == iid && hole.contains_addr(iid, p.addr()))
                })
                .unwrap_or(max)
        }
    }

    proptest::proptest! {
        #[test]
        fn the_table_answers_as_a_list_would(
            ops in proptest::collection::vec(
                (0u8..4, 0u32..2, proptest::bool::ANY, 0u32..64, 0u8..=32, 0u32..1000),
                1..200,
            ),
            probes in proptest::collection::vec((0u32..2, proptest::bool::ANY, 0u32..64), 1..40),
        ) {
            // A small address space, so that prefixes overlap and collide.
            let addr = |v6: bool, a: u32| -> IpAddr {
                if v6 {
                    IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | ((a as u128) << 90)))
                } else {
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (a << 26 >> 26 << 20)))
                }
            };
            let mut t = EidTable::new();
            let mut m = Model::default();
            for (op, iid, v6, a, len, v) in ops {
                let len = if v6 { len * 4 } else { len };
                let p = EidPrefix::new(iid, addr(v6, a), len).unwrap();
                match op {
                    0 | 1 => {
                        let old = m.0.iter().position(|(q, _)| *q == p).map(|i| m.0.remove(i).1);
                        m.0.push((p, v));
                        proptest::prop_assert_eq!(t.insert(p, v), old);
                    }
                    2 => {
                        let old = m.0.iter().position(|(q, _)| *q == p).map(|i| m.0.remove(i).1);
                        proptest::prop_assert_eq!(t.remove(&p), old);
                    }
                    _ => {
                        let mut removed: Vec<EidPrefix> = t.retain(|_, x| *x % 3 != v % 3);
                        let mut want: Vec<EidPrefix> =
                            m.0.iter().filter(|(_, x)| x % 3 == v % 3).map(|(q, _)| *q).collect();
                        m.0.retain(|(_, x)| x % 3 != v % 3);
                        removed.sort();
                        want.sort();
                        proptest::prop_assert_eq!(removed, want);
                    }
                }
                proptest::prop_assert_eq!(t.len(), m.0.len());
                if let Some(x) = t.get_mut(&p) {
                    *x += 0;
                }
            }
            let mut all: Vec<(EidPrefix, u32)> = t.iter().map(|(p, v)| (p, *v)).collect();
            let mut want = m.0.clone();
            all.sort();
            want.sort();
            proptest::prop_assert_eq!(all, want);
            for (iid, v6, a) in probes {
                let ip = addr(v6, a);
                proptest::prop_assert_eq!(t.lookup(iid, ip).map(|(p, v)| (p, *v)), m.lookup(iid, ip));
                proptest::prop_assert_eq!(t.uncovered_prefix(iid, ip).prefix_len(), m.uncovered(iid, ip));
                for &(p, v) in &m.0 {
                    proptest::prop_assert_eq!(t.get(&p), Some(&v));
                }
            }
        }
    }
}
