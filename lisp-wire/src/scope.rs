//! Address scopes that both protocol cores need to agree on.

use std::net::IpAddr;

/// Whether an address is only meaningful inside a site: RFC 1918, shared
/// (carrier-grade NAT) space 100.64.0.0/10, and IPv6 unique-local
/// addresses. A node registered with such an address and seen elsewhere by
/// the map-server sits behind a NAT.
pub fn is_private(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let [o1, o2, ..] = a.octets();
            a.is_private() || (o1 == 100 && (64..128).contains(&o2))
        }
        IpAddr::V6(a) => (a.segments()[0] & 0xfe00) == 0xfc00,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
