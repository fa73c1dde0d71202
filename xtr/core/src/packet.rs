//! The little IP the xtr needs: addresses of a captured packet, and ICMP
//! "unreachable" errors for packets it cannot deliver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Source and destination of an IPv4 or IPv6 packet.
pub fn addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            Some((src.into(), dst.into()))
        }
        6 if packet.len() >= 40 => {
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            let dst: [u8; 16] = packet[24..40].try_into().ok()?;
            Some((Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()))
        }
        _ => None,
    }
}

fn sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    acc
}

fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An ICMP error telling the sender of `original` that its destination is
/// unreachable, as if from that destination. Written into the miss TUN, it is
/// delivered to the local sender (or routed to a host behind an xTR).
/// `None` for packets that must not get one (ICMP errors, garbage).
pub fn unreachable(original: &[u8]) -> Option<Vec<u8>> {
    let (src, dst) = addresses(original)?;
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let ihl = ((original[0] & 0x0f) as usize * 4).max(20);
            // Never answer an ICMP error with an ICMP error.
            if original[9] == 1
                && original
                    .get(ihl)
                    .is_some_and(|t| ![0u8, 8, 13, 15, 17].contains(t))
            {
                return None;
            }
            let quoted = &original[..original.len().min(ihl + 8)];
            let total = 20 + 8 + quoted.len();
            let mut p = vec![0u8; total];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[8] = 64;
            p[9] = 1; // ICMP
            p[12..16].copy_from_slice(&dst.octets());
            p[16..20].copy_from_slice(&src.octets());
            let c = finish(sum(&p[..20], 0));
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p[20] = 3; // destination unreachable
            p[21] = 1; // host unreachable
            p[28..].copy_from_slice(quoted);
            let c = finish(sum(&p[20..], 0));
            p[22..24].copy_from_slice(&c.to_be_bytes());
            Some(p)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            if original[6] == 58 && original.get(40).is_some_and(|t| *t < 128) {
                return None;
            }
            // Keep the error within the IPv6 minimum MTU.
            let quoted = &original[..original.len().min(1280 - 48)];
            let plen = 8 + quoted.len();
            let mut p = vec![0u8; 40 + plen];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
            p[6] = 58; // ICMPv6
            p[7] = 64;
            p[8..24].copy_from_slice(&dst.octets());
            p[24..40].copy_from_slice(&src.octets());
            p[40] = 1; // destination unreachable
            p[41] = 3; // address unreachable
            p[48..].copy_from_slice(quoted);
            let mut acc = sum(&p[8..40], 0);
            acc += plen as u32 + 58;
            let c = finish(sum(&p[40..], acc));
            p[42..44].copy_from_slice(&c.to_be_bytes());
            Some(p)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_request_v4() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 9,
        ];
        p.extend_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
        p
    }

    #[test]
    fn ipv4_unreachable_quotes_the_packet_and_checksums() {
        let orig = echo_request_v4();
        let icmp = unreachable(&orig).unwrap();
        assert_eq!(
            addresses(&icmp).unwrap(),
            ("10.0.0.9".parse().unwrap(), "10.0.0.1".parse().unwrap())
        );
        assert_eq!((icmp[20], icmp[21]), (3, 1));
        assert_eq!(&icmp[28..], &orig[..]);
        assert_eq!(finish(sum(&icmp[..20], 0)), 0, "IP header checksum");
        assert_eq!(finish(sum(&icmp[20..], 0)), 0, "ICMP checksum");
        // An ICMP error is never answered with one.
        assert!(unreachable(&icmp).is_none());
        assert!(unreachable(&[0x45, 0]).is_none());
    }

    #[test]
    fn ipv6_unreachable_checksums_over_the_pseudo_header() {
        let mut orig = vec![0x60, 0, 0, 0, 0, 8, 58, 64];
        orig.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        orig.extend_from_slice(&"fd00::9".parse::<Ipv6Addr>().unwrap().octets());
        orig.extend_from_slice(&[128, 0, 0, 0, 0, 1, 0, 1]);
        let icmp = unreachable(&orig).unwrap();
        assert_eq!(
            addresses(&icmp).unwrap().1,
            "fd00::1".parse::<IpAddr>().unwrap()
        );
        let plen = icmp.len() as u32 - 40;
        let acc = sum(&icmp[8..40], 0) + plen + 58;
        assert_eq!(finish(sum(&icmp[40..], acc)), 0);
    }
}
