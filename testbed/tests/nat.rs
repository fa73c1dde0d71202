//! The NAT routers behave as labelled, with raw UDP sockets only (no lispwg
//! daemon): mapping and filtering of each kind, hole punching between two
//! EIM NATs, rules changed live, a UDP-hostile network, two hosts behind one
//! NAT, a host moving between NATs, and dual-stack and IPv6-only hosts
//! (IPv6 routed, never translated).
//!
//! Hosts "behind" a NAT are on its LAN, 10.10.n.0/24; its public address is
//! 198.51.100.100+n (subnet A) or 203.0.113.100+n (subnet B). The address
//! echoes answer with the source address they saw.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;
use testbed::nat::{recv_within, AddressEcho};
use testbed::{Attach, Family, Lab, LabSpec, NatKind, Netns, Segment};

/// How long an unsolicited packet is given to arrive before it counts as
/// dropped.
const DROPPED: Duration = Duration::from_millis(500);

fn sock(ns: &Netns, bind: &str) -> UdpSocket {
    ns.run(|| UdpSocket::bind(bind))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {bind} in {}: {e}", ns.name()))
}

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Two echo hosts in the public segment (srv .10, srv2 .11), a third party
/// on subnet B (evil), and host h1 behind NAT router n1 of `kind`.
fn one_nat(tag: &str, kind: NatKind) -> Lab {
    Lab::for_test(
        LabSpec::bare()
            .tag(tag)
            .host("srv", Attach::Segment(Segment::Public))
            .host("srv2", Attach::Segment(Segment::Public))
            .host("evil", Attach::Segment(Segment::SubnetB))
            .nat("n1", kind, Segment::SubnetA)
            .host("h1", Attach::Nat("n1".into())),
    )
}

struct Echoes {
    _e: Vec<AddressEcho>,
    srv: SocketAddr,
    srv_other_port: SocketAddr,
    srv2: SocketAddr,
}

fn echoes(lab: &Lab) -> Echoes {
    let (srv, srv2) = (lab.address("srv"), lab.address("srv2"));
    let e = vec![
        AddressEcho::start(lab.ns("srv"), at(srv, 7000)).unwrap(),
        AddressEcho::start(lab.ns("srv"), at(srv, 7001)).unwrap(),
        AddressEcho::start(lab.ns("srv2"), at(srv2, 7000)).unwrap(),
    ];
    Echoes {
        _e: e,
        srv: at(srv, 7000),
        srv_other_port: at(srv, 7001),
        srv2: at(srv2, 7000),
    }
}

/// `from` sends to `to` from a fresh socket a few times; whether `sock`
/// gets any of it.
fn gets_in(lab: &Lab, from: &str, to: SocketAddr, sock: &UdpSocket) -> bool {
    while recv_within(sock, Duration::from_millis(20)).is_some() {}
    let bind = at(lab.address(from), 0).to_string();
    let s = self::sock(lab.ns(from), &bind);
    for _ in 0..3 {
        s.send_to(b"unsolicited", to).unwrap();
    }
    recv_within(sock, DROPPED).is_some_and(|(t, _)| t == "unsolicited")
}

#[test]
fn eim_keeps_one_port_for_every_destination_and_lets_only_the_exact_remote_back_in() {
    let lab = one_nat("ne", NatKind::Eim);
    let e = echoes(&lab);
    let h1 = sock(lab.ns("h1"), "0.0.0.0:40000");
    let m1 = AddressEcho::observe(&h1, e.srv).unwrap();
    let m2 = AddressEcho::observe(&h1, e.srv2).unwrap();
    assert_eq!(m1, m2, "endpoint-independent mapping");
    assert_eq!(
        m1,
        at(lab.address("n1"), 40000),
        "mapped to the NAT's address, port kept"
    );
    // Filtering: a third party, and the same server from another port,
    // are dropped; the mapping's own remote still gets in (the answers
    // above), and again now.
    assert!(!gets_in(&lab, "evil", m1, &h1), "a third party got in");
    let other = sock(lab.ns("srv"), &at(e.srv.ip(), 7002).to_string());
    other.send_to(b"unsolicited", m1).unwrap();
    assert!(
        recv_within(&h1, DROPPED).is_none(),
        "another port of srv got in"
    );
    assert_eq!(AddressEcho::observe(&h1, e.srv).unwrap(), m1);
    // conntrack shows the mapping.
    let mappings = lab.nat("n1").unwrap().mappings().unwrap();
    let h1_addr = at(lab.address("h1"), 40000);
    assert!(
        mappings
            .iter()
            .any(|m| m.orig_src == h1_addr && m.orig_dst == e.srv && m.public == m1),
        "{mappings:?}"
    );
}

#[test]
fn edm_maps_each_destination_to_its_own_port() {
    let lab = one_nat("nd", NatKind::Edm);
    let e = echoes(&lab);
    let h1 = sock(lab.ns("h1"), "0.0.0.0:40000");
    let m1 = AddressEcho::observe(&h1, e.srv).unwrap();
    let m2 = AddressEcho::observe(&h1, e.srv2).unwrap();
    let m3 = AddressEcho::observe(&h1, e.srv_other_port).unwrap();
    assert_eq!((m1.ip(), m2.ip()), (lab.address("n1"), lab.address("n1")));
    assert!(
        m1.port() != m2.port() && m1.port() != m3.port() && m2.port() != m3.port(),
        "endpoint-dependent mapping: {m1} {m2} {m3}"
    );
    assert!(!gets_in(&lab, "evil", m1, &h1), "a third party got in");
}

#[test]
fn eim_without_the_filter_lets_a_third_party_in() {
    let lab = one_nat("nf", NatKind::EimNoFilter);
    let e = echoes(&lab);
    let h1 = sock(lab.ns("h1"), "0.0.0.0:40000");
    let m1 = AddressEcho::observe(&h1, e.srv).unwrap();
    assert_eq!(AddressEcho::observe(&h1, e.srv2).unwrap(), m1);
    assert_eq!(m1, at(lab.address("n1"), 40000));
    assert!(
        gets_in(&lab, "evil", m1, &h1),
        "the third party was dropped"
    );
    // Only ports in use are open: nothing gets to a port h1 never used.
    assert!(!gets_in(&lab, "evil", at(m1.ip(), 40001), &h1));
}

#[test]
fn a_router_without_firewall_takes_an_early_packet_itself_and_remaps_its_host() {
    let lab = one_nat("nw", NatKind::EimNoFirewall);
    let e = echoes(&lab);
    let h1 = sock(lab.ns("h1"), "0.0.0.0:40000");
    let m1 = AddressEcho::observe(&h1, e.srv).unwrap();
    assert_eq!(m1, at(lab.address("n1"), 40000));
    // The peer punches first: the router accepts that packet itself.
    let peer = sock(lab.ns("evil"), &at(lab.address("evil"), 5555).to_string());
    peer.send_to(b"early", m1).unwrap();
    assert!(
        recv_within(&h1, DROPPED).is_none(),
        "the early packet reached h1"
    );
    // h1's own packet to the peer now leaves from another port.
    h1.send_to(b"from h1", peer.local_addr().unwrap()).unwrap();
    let (text, seen) = recv_within(&peer, Duration::from_secs(2)).expect("h1's packet");
    assert_eq!(text, "from h1");
    assert_eq!(seen.ip(), m1.ip());
    assert_ne!(
        seen.port(),
        40000,
        "h1 was not remapped: the hole would open"
    );
}

/// Sends to `to` every 50 ms (at most 40 times) until `sock` gets a packet
/// from it; returns how many were sent.
fn punch(sock: &UdpSocket, to: SocketAddr) -> Option<u32> {
    for n in 1..=40 {
        sock.send_to(b"punch", to).ok()?;
        if let Some((_, from)) = recv_within(sock, Duration::from_millis(50)) {
            if from == to {
                // Answer once more so that the other side also hears us.
                sock.send_to(b"punch", to).ok()?;
                return Some(n);
            }
        }
    }
    None
}

#[test]
fn two_hosts_behind_eim_nats_punch_a_hole_through_their_observed_mappings() {
    let lab = Lab::for_test(
        LabSpec::bare()
            .tag("np")
            .host("srv", Attach::Segment(Segment::Public))
            .nat("n1", NatKind::Eim, Segment::SubnetA)
            .nat("n2", NatKind::Eim, Segment::SubnetB)
            .host("h1", Attach::Nat("n1".into()))
            .host("h2", Attach::Nat("n2".into())),
    );
    let echo = AddressEcho::start(lab.ns("srv"), at(lab.address("srv"), 3478)).unwrap();
    let h1 = sock(lab.ns("h1"), "0.0.0.0:51820");
    let h2 = sock(lab.ns("h2"), "0.0.0.0:51821");
    let m1 = AddressEcho::observe(&h1, echo.addr).unwrap();
    let m2 = AddressEcho::observe(&h2, echo.addr).unwrap();
    assert_eq!((m1.ip(), m2.ip()), (lab.address("n1"), lab.address("n2")));
    // Both send at once (as the map-server's reply and notify make them).
    let (r1, r2) = std::thread::scope(|s| {
        let a = s.spawn(|| punch(&h1, m2));
        let b = s.spawn(|| punch(&h2, m1));
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!("hole punching: h1 heard h2 after {r1:?} packets, h2 heard h1 after {r2:?}");
    assert!(r1.is_some() && r2.is_some(), "no hole: {r1:?} {r2:?}");
    // The hole stays open both ways.
    while recv_within(&h1, Duration::from_millis(50)).is_some() {}
    while recv_within(&h2, Duration::from_millis(50)).is_some() {}
    h1.send_to(b"hello h2", m2).unwrap();
    assert_eq!(
        recv_within(&h2, DROPPED).map(|m| m.0).as_deref(),
        Some("hello h2")
    );
    h2.send_to(b"hello h1", m1).unwrap();
    assert_eq!(
        recv_within(&h1, DROPPED).map(|m| m.0).as_deref(),
        Some("hello h1")
    );
}

#[test]
fn rules_change_live_kind_ports_and_conntrack() {
    let lab = one_nat("nl", NatKind::Edm);
    let e = echoes(&lab);
    let mut n1 = lab.nat("n1").unwrap();
    let h1 = sock(lab.ns("h1"), "0.0.0.0:40000");
    let differ = |h1: &UdpSocket| {
        let (a, b) = (
            AddressEcho::observe(h1, e.srv).unwrap(),
            AddressEcho::observe(h1, e.srv2).unwrap(),
        );
        (a, b, a != b)
    };
    assert!(differ(&h1).2, "EDM to start with");
    // EDM -> EIM: existing entries keep their mappings until flushed.
    n1.set_kind(NatKind::Eim).unwrap();
    assert!(differ(&h1).2, "conntrack kept the EDM mappings");
    n1.flush_conntrack().unwrap();
    assert!(
        n1.mappings()
            .unwrap()
            .iter()
            .all(|m| m.orig_src.port() != 40000),
        "flushed"
    );
    let (a, _, d) = differ(&h1);
    assert!(!d && a.port() == 40000, "EIM after the flush: {a}");
    // Another port range for the mappings.
    n1.set_ports(Some((20000, 20099))).unwrap();
    n1.flush_conntrack().unwrap();
    let (a, b, d) = differ(&h1);
    assert!(!d, "still EIM: {a} {b}");
    assert!((20000..=20099).contains(&a.port()), "mapped to {a}");
    let listed = n1.mappings().unwrap();
    assert!(listed.iter().any(|m| m.public == a), "{listed:?}");
    assert!(n1.listing().unwrap().contains("masquerade to :20000-20099"));
}

#[test]
fn a_udp_hostile_network_lets_only_tcp_443_out() {
    let lab = one_nat("nu", NatKind::Eim);
    let e = echoes(&lab);
    let srv = lab.address("srv");
    let listeners: Vec<TcpListener> = [443, 8443]
        .iter()
        .map(|p| {
            lab.ns("srv")
                .run(|| TcpListener::bind(at(srv, *p)))
                .unwrap()
                .unwrap()
        })
        .collect();
    let connects = |port: u16| {
        lab.ns("h1")
            .run(|| TcpStream::connect_timeout(&at(srv, port), Duration::from_millis(500)))
            .unwrap()
            .is_ok()
    };
    let h1 = sock(lab.ns("h1"), "0.0.0.0:40000");
    assert!(AddressEcho::observe(&h1, e.srv).is_ok() && connects(8443));
    let mut n1 = lab.nat("n1").unwrap();
    n1.block_udp(true).unwrap();
    n1.flush_conntrack().unwrap();
    assert!(AddressEcho::observe(&h1, e.srv).is_err(), "UDP got out");
    assert!(connects(443), "TCP 443 is blocked");
    assert!(!connects(8443), "TCP to another port got out");
    n1.block_udp(false).unwrap();
    assert!(
        AddressEcho::observe(&h1, e.srv).is_ok(),
        "UDP after unblocking"
    );
    drop(listeners);
}

#[test]
fn two_hosts_behind_one_nat_get_distinct_ports_and_no_hairpin() {
    let lab = Lab::for_test(
        LabSpec::bare()
            .tag("n2")
            .host("srv", Attach::Segment(Segment::Public))
            .nat("n1", NatKind::Eim, Segment::SubnetA)
            .host("h1", Attach::Nat("n1".into()))
            .host("h2", Attach::Nat("n1".into())),
    );
    let echo = AddressEcho::start(lab.ns("srv"), at(lab.address("srv"), 7000)).unwrap();
    let h1 = sock(lab.ns("h1"), "0.0.0.0:40000");
    let h2 = sock(lab.ns("h2"), "0.0.0.0:40000");
    let m1 = AddressEcho::observe(&h1, echo.addr).unwrap();
    let m2 = AddressEcho::observe(&h2, echo.addr).unwrap();
    assert_eq!(m1.ip(), m2.ip());
    assert_ne!(m1.port(), m2.port(), "the second host was remapped");
    // Their private addresses reach each other; the public mapping does not
    // (Linux does not hairpin).
    h1.send_to(b"private", at(lab.address("h2"), 40000))
        .unwrap();
    assert_eq!(
        recv_within(&h2, DROPPED).map(|m| m.0).as_deref(),
        Some("private")
    );
    h1.send_to(b"hairpin", m2).unwrap();
    assert!(recv_within(&h2, DROPPED).is_none(), "hairpinned");
}

#[test]
fn a_host_moving_from_one_nat_to_another_gets_the_other_public_address() {
    let mut lab = Lab::for_test(
        LabSpec::bare()
            .tag("nm")
            .host("srv", Attach::Segment(Segment::Public))
            .nat("n1", NatKind::Eim, Segment::SubnetA)
            .nat("n2", NatKind::Edm, Segment::SubnetB)
            .host("h1", Attach::Segment(Segment::SubnetA))
            .uplinks("h1", &[Attach::Nat("n1".into()), Attach::Nat("n2".into())]),
    );
    let echo = AddressEcho::start(lab.ns("srv"), at(lab.address("srv"), 7000)).unwrap();
    let observe = |lab: &Lab| {
        let h1 = sock(lab.ns("h1"), "0.0.0.0:0");
        AddressEcho::observe(&h1, echo.addr).unwrap().ip()
    };
    assert_eq!(observe(&lab), lab.address("n1"));
    lab.move_node("h1").unwrap();
    assert_eq!(lab.address("h1"), "10.10.2.10".parse::<IpAddr>().unwrap());
    assert_eq!(observe(&lab), lab.address("n2"));
    lab.move_node("h1").unwrap();
    assert_eq!(observe(&lab), lab.address("n1"));
}

#[test]
fn ipv6_is_routed_not_translated_and_ipv6_only_hosts_have_no_ipv4() {
    let lab = Lab::for_test(
        LabSpec::bare()
            .tag("n6")
            .host("srv", Attach::Segment(Segment::Public))
            .family("srv", Family::Dual)
            .nat("n1", NatKind::Eim, Segment::SubnetA)
            .host("h1", Attach::Nat("n1".into()))
            .family("h1", Family::Dual)
            .host("h6", Attach::Segment(Segment::SubnetB))
            .family("h6", Family::V6),
    );
    let spec = lab.spec();
    let v6 = |name: &str| -> IpAddr {
        let n = spec.node(name).unwrap();
        spec.addresses(n, n.active)
            .1
            .expect("an IPv6 address")
            .into()
    };
    let (srv4, srv6) = (lab.address("srv"), v6("srv"));
    let _e4 = AddressEcho::start(lab.ns("srv"), at(srv4, 7000)).unwrap();
    let _e6 = AddressEcho::start(lab.ns("srv"), at(srv6, 7000)).unwrap();
    // h1, dual-stack behind the NAT: IPv4 translated, IPv6 as it is.
    let h1_4 = sock(lab.ns("h1"), "0.0.0.0:40000");
    let h1_6 = sock(lab.ns("h1"), &at(v6("h1"), 40000).to_string());
    assert_eq!(
        AddressEcho::observe(&h1_4, at(srv4, 7000)).unwrap(),
        at(lab.address("n1"), 40000)
    );
    assert_eq!(
        AddressEcho::observe(&h1_6, at(srv6, 7000)).unwrap(),
        at(v6("h1"), 40000)
    );
    assert_eq!(v6("h1"), "2001:db8:1:1::10".parse::<IpAddr>().unwrap());
    // h6, IPv6 only, on subnet B.
    let h6 = sock(lab.ns("h6"), &at(v6("h6"), 0).to_string());
    let seen = AddressEcho::observe(&h6, at(srv6, 7000)).unwrap();
    assert_eq!(seen.ip(), "2001:db8:0:b::10".parse::<IpAddr>().unwrap());
    let v4 = lab
        .ns("h6")
        .ip(&["-4", "-o", "addr", "show", "scope", "global"])
        .unwrap();
    assert!(v4.trim().is_empty(), "h6 has IPv4: {v4}");
    // The NAT router still filters IPv6: unsolicited from h6 is dropped,
    // an answer to h1's own packet gets in (above).
    let from_h6 = sock(lab.ns("h6"), &at(v6("h6"), 0).to_string());
    from_h6
        .send_to(b"unsolicited", at(v6("h1"), 40000))
        .unwrap();
    assert!(
        recv_within(&h1_6, DROPPED).is_none(),
        "unsolicited IPv6 got in"
    );
}
