//! The candidate set handed out for a node: the ways a correspondent may reach
//! its WireGuard socket, best first.
//!
//! The map-server knows what a node registered (its own addresses and data
//! port) and, from its own WireGuard state, the endpoint it sees the node's
//! socket at (after any NAT). With one interface per node, that is the
//! post-NAT address of the node's data socket too. So:
//!
//! - A node whose observed endpoint is one it registered is not behind NAT:
//!   it is handed out exactly as registered.
//! - A node behind NAT is handed out with its observed endpoint, in the place
//!   of its private addresses, which only a correspondent behind the same NAT
//!   (the same observed public address) gets as well, first: Linux NATs do
//!   not hairpin. Registered public addresses (e.g. global IPv6) stay.
//! - A relayed address (the node's TURN allocation) is handed out as
//!   registered, marked relayed, and never counts as the node's own: a
//!   node whose control tunnel runs through the relay is observed at its
//!   relayed address, which is then not repeated as a NAT mapping.

use crate::registry::{Mapping, Rloc};
use lisp_wire::{is_private, DEFAULT_WG_PORT};
use std::net::{IpAddr, SocketAddr};

/// One way to reach a node's WireGuard socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub endpoint: SocketAddr,
    pub priority: u8,
    pub weight: u8,
    /// For an endpoint observed through a NAT: the node's own address
    /// behind it.
    pub private: Option<IpAddr>,
    /// The endpoint is a relay's.
    pub relayed: bool,
}

fn endpoint_of(r: &Rloc) -> SocketAddr {
    SocketAddr::new(r.addr, r.port.unwrap_or(DEFAULT_WG_PORT))
}

/// Whether a node whose registration is `m` sits behind a NAT, given the
/// endpoint the map-server observes it at.
pub fn behind_nat(m: &Mapping, observed: Option<SocketAddr>) -> bool {
    observed.is_some_and(|o| !m.rlocs.iter().any(|r| !r.relayed && endpoint_of(r) == o))
}

/// The candidates of a keyed mapping for one requester, best (lowest
/// priority) first. `observed` is where the map-server sees the owner;
/// `requester_public` the address it sees the requester at, if any.
pub fn candidates(
    m: &Mapping,
    observed: Option<SocketAddr>,
    requester_public: Option<IpAddr>,
) -> Vec<Candidate> {
    let registered = |r: &Rloc| Candidate {
        endpoint: endpoint_of(r),
        priority: r.priority,
        weight: r.weight,
        private: None,
        relayed: r.relayed,
    };
    let Some(observed) = observed.filter(|_| behind_nat(m, observed)) else {
        return m.rlocs.iter().map(registered).collect();
    };
    let same_nat = requester_public == Some(observed.ip());
    // The observed endpoint stands for the best registered address of its
    // family (the one the NAT translates).
    let origin = m
        .rlocs
        .iter()
        .filter(|r| r.addr.is_ipv4() == observed.is_ipv4() && r.priority != 255 && !r.relayed)
        .min_by_key(|r| (r.priority, std::cmp::Reverse(r.weight)));
    let base = origin.map_or(1, |r| r.priority);
    let mut out: Vec<Candidate> = m
        .rlocs
        .iter()
        .filter(|r| same_nat || !is_private(r.addr))
        .map(registered)
        .collect();
    // Seen at its relayed address: its control tunnel goes through the
    // relay, and the relayed candidate already stands for it.
    if m.rlocs
        .iter()
        .any(|r| r.relayed && endpoint_of(r) == observed)
    {
        return out;
    }
    out.push(Candidate {
        endpoint: observed,
        // Behind the same NAT the private address is tried first.
        priority: if same_nat {
            base.saturating_add(1).min(254)
        } else {
            base
        },
        weight: origin.map_or(100, |r| r.weight),
        private: origin.map(|r| r.addr),
        relayed: false,
    });
    out.sort_by_key(|c| (c.priority, std::cmp::Reverse(c.weight)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Origin;

    fn mapping(rlocs: &[(&str, u16, u8)]) -> Mapping {
        Mapping {
            rlocs: rlocs
                .iter()
                .map(|&(a, port, priority)| Rloc {
                    addr: a.parse().unwrap(),
                    port: Some(port),
                    priority,
                    weight: 100,
                    relayed: false,
                })
                .collect(),
            wg_key: Some([1; 32]),
            origin: Origin::Peer(0),
            ttl_minutes: 10,
            map_version: 0,
            expires: None,
        }
    }

    fn eps(c: &[Candidate]) -> Vec<String> {
        c.iter().map(|c| c.endpoint.to_string()).collect()
    }

    #[test]
    fn a_node_not_behind_nat_is_handed_out_as_registered() {
        let m = mapping(&[("192.0.2.10", 51820, 1), ("10.9.0.5", 51820, 2)]);
        for observed in [None, Some("192.0.2.10:51820".parse().unwrap())] {
            let c = candidates(&m, observed, Some("198.51.100.1".parse().unwrap()));
            assert_eq!(eps(&c), ["192.0.2.10:51820", "10.9.0.5:51820"]);
            assert!(c.iter().all(|c| c.private.is_none()));
            assert!(!behind_nat(&m, observed));
        }
        // A campus with private addressing and no NAT: private RLOCs are
        // reachable and handed out.
        let m = mapping(&[("10.9.0.5", 51820, 1)]);
        let c = candidates(&m, Some("10.9.0.5:51820".parse().unwrap()), None);
        assert_eq!(eps(&c), ["10.9.0.5:51820"]);
    }

    #[test]
    fn behind_nat_the_observed_endpoint_replaces_the_private_address() {
        let m = mapping(&[("10.20.1.5", 51820, 1)]);
        let observed: SocketAddr = "198.51.100.7:40001".parse().unwrap();
        assert!(behind_nat(&m, Some(observed)));
        let c = candidates(&m, Some(observed), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(eps(&c), ["198.51.100.7:40001"]);
        assert_eq!(c[0].private, Some("10.20.1.5".parse().unwrap()));
        assert_eq!(c[0].priority, 1);
        // A requester we see nowhere (keyless, or not yet observed) too.
        assert_eq!(
            eps(&candidates(&m, Some(observed), None)),
            ["198.51.100.7:40001"]
        );
    }

    #[test]
    fn behind_the_same_nat_the_private_address_comes_first() {
        let m = mapping(&[("10.20.1.5", 51820, 1)]);
        let observed: SocketAddr = "198.51.100.7:40001".parse().unwrap();
        let c = candidates(&m, Some(observed), Some("198.51.100.7".parse().unwrap()));
        assert_eq!(eps(&c), ["10.20.1.5:51820", "198.51.100.7:40001"]);
        assert!(c[0].priority < c[1].priority);
    }

    #[test]
    fn registered_global_ipv6_stays_beside_the_observed_ipv4() {
        let m = mapping(&[("2001:db8:5::10", 51820, 1), ("10.20.1.5", 51820, 1)]);
        let observed: SocketAddr = "198.51.100.7:51820".parse().unwrap();
        let c = candidates(&m, Some(observed), None);
        assert_eq!(eps(&c), ["[2001:db8:5::10]:51820", "198.51.100.7:51820"]);
    }

    fn relayed(mut m: Mapping, relayed: &str) -> Mapping {
        let r: SocketAddr = relayed.parse().unwrap();
        let mut rlocs = m.rlocs.to_vec();
        rlocs.push(Rloc {
            addr: r.ip(),
            port: Some(r.port()),
            priority: 254,
            weight: 100,
            relayed: true,
        });
        m.rlocs = rlocs.into_boxed_slice();
        m
    }

    #[test]
    fn a_relayed_address_comes_last_marked_and_never_stands_for_the_node() {
        let m = relayed(mapping(&[("10.20.1.5", 51820, 1)]), "192.0.2.10:49160");
        let observed: SocketAddr = "198.51.100.7:40001".parse().unwrap();
        let c = candidates(&m, Some(observed), None);
        assert_eq!(eps(&c), ["198.51.100.7:40001", "192.0.2.10:49160"]);
        assert!(!c[0].relayed && c[1].relayed);
        assert_eq!(c[0].private, Some("10.20.1.5".parse().unwrap()));
        assert_eq!(c[1].private, None);
        // A public node with a relay: not behind a NAT because of it.
        let m = relayed(mapping(&[("192.0.2.20", 51820, 1)]), "192.0.2.10:49161");
        let own: SocketAddr = "192.0.2.20:51820".parse().unwrap();
        assert!(!behind_nat(&m, Some(own)));
        assert_eq!(
            eps(&candidates(&m, Some(own), None)),
            ["192.0.2.20:51820", "192.0.2.10:49161"]
        );
    }

    #[test]
    fn a_node_seen_at_its_relayed_address_is_handed_out_only_there() {
        // Its control tunnel runs through the relay (UDP blocked): the
        // map-server sees it at its relayed address.
        let m = relayed(mapping(&[("10.40.1.5", 51820, 1)]), "192.0.2.10:49162");
        let seen: SocketAddr = "192.0.2.10:49162".parse().unwrap();
        assert!(behind_nat(&m, Some(seen)));
        let c = candidates(&m, Some(seen), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(eps(&c), ["192.0.2.10:49162"]);
        assert!(c[0].relayed);
    }
}
