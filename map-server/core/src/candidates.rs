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

use crate::registry::{Mapping, Rloc};
use lisp_wire::DEFAULT_WG_PORT;
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
}

/// Whether an address is only meaningful inside a site: RFC 1918,
/// shared (CGN) space, and IPv6 unique-local addresses.
pub fn is_private(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let [o1, o2, ..] = a.octets();
            a.is_private() || (o1 == 100 && (64..128).contains(&o2))
        }
        IpAddr::V6(a) => (a.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn endpoint_of(r: &Rloc) -> SocketAddr {
    SocketAddr::new(r.addr, r.port.unwrap_or(DEFAULT_WG_PORT))
}

/// Whether a node whose registration is `m` sits behind a NAT, given the
/// endpoint the map-server observes it at.
pub fn behind_nat(m: &Mapping, observed: Option<SocketAddr>) -> bool {
    observed.is_some_and(|o| !m.rlocs.iter().any(|r| endpoint_of(r) == o))
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
        .filter(|r| r.addr.is_ipv4() == observed.is_ipv4() && r.priority != 255)
        .min_by_key(|r| (r.priority, std::cmp::Reverse(r.weight)));
    let base = origin.map_or(1, |r| r.priority);
    let mut out: Vec<Candidate> = m
        .rlocs
        .iter()
        .filter(|r| same_nat || !is_private(r.addr))
        .map(registered)
        .collect();
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

    #[test]
    fn private_ranges() {
        for a in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
        ] {
            assert!(is_private(a.parse().unwrap()), "{a}");
        }
        for a in ["192.0.2.1", "198.51.100.1", "100.128.0.1", "2001:db8::1"] {
            assert!(!is_private(a.parse().unwrap()), "{a}");
        }
    }
}
