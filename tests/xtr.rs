//! The xtr end to end, in the namespace lab: on-demand tunnels with the
//! first packet delivered, robot ↔ host through an edge xTR, an encrypted
//! underlay, fast ICMP unreachable, map-server restarts, clean exit.

use std::time::{Duration, Instant};
use testbed::{output_text as text, wireguard_go_pids, Capture, Lab, LabSpec};

#[test]
fn the_first_ping_to_a_never_resolved_robot_is_answered_and_the_destination_learns_the_source() {
    let lab = Lab::for_test(LabSpec::campus().tag("xf"));
    let a_key = lab.public_key("robot-a").unwrap();
    let b_key = lab.public_key("robot-b").unwrap();
    let b_peers = lab.wg_show("robot-b", "endpoints");
    assert_eq!(
        b_peers.len(),
        1,
        "before: robot-b knows only its map-server: {b_peers:?}"
    );
    assert!(!b_peers.iter().any(|(k, _)| *k == a_key));

    let t = lab.ping_ok("robot-a", "10.0.0.2", 5);
    assert!(
        t.contains("icmp_seq=1 "),
        "the very first request is answered:\n{t}"
    );

    let b_peers = lab.wg_show("robot-b", "endpoints");
    let a_at_b = b_peers
        .iter()
        .find(|(k, _)| *k == a_key)
        .unwrap_or_else(|| panic!("robot-b has no peer for robot-a: {b_peers:?}"));
    assert_eq!(a_at_b.1, "198.51.100.10:51820");
    let a_peers = lab.wg_show("robot-a", "allowed-ips");
    assert!(
        a_peers
            .iter()
            .any(|(k, ips)| *k == b_key && ips == "10.0.0.2/32"),
        "{a_peers:?}"
    );
}

#[test]
fn a_robot_reaches_a_host_behind_an_edge_xtr_and_back() {
    let lab = Lab::for_test(LabSpec::campus().tag("xh"));
    lab.ping_ok("robot-a", "10.1.0.10", 3);
    lab.ping_ok("host", "10.0.0.2", 3);
    let e_peers = lab.wg_show("edge", "allowed-ips");
    for eid in ["10.0.0.1/32", "10.0.0.2/32"] {
        assert!(e_peers.iter().any(|(_, ips)| ips == eid), "{e_peers:?}");
    }
}

#[test]
fn robot_traffic_on_the_underlay_is_only_wireguard() {
    let lab = Lab::for_test(LabSpec::campus().tag("xe"));
    let pcap = lab.dir().join("router.pcap");
    let mut capture = Capture::start(lab.ns("router"), "any", &["not", "arp"], &pcap).unwrap();
    // A recognisable payload: "lispwg-secret" repeated by ping.
    let pattern = "6c69737077672d736563726574";
    let out = lab.exec(
        "robot-a",
        &[
            "ping", "-c", "5", "-i", "0.2", "-W", "2", "-p", pattern, "10.0.0.2",
        ],
    );
    assert!(text(&out).contains("5 received"), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(300));

    let raw = capture.bytes();
    let needle = b"lispwg-secret";
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle),
        "the ICMP payload crossed the underlay in clear"
    );
    let frames = capture.frames(&["frame.protocols", "ip.src", "ip.dst", "udp.length"]);
    let show = |f: &testbed::tshark::Frame| {
        format!(
            "{} {:?} {:?} {}",
            f.one("frame.protocols"),
            f.all("ip.src"),
            f.all("ip.dst"),
            f.all("udp.length").join(",")
        )
    };
    let between: Vec<_> = frames
        .iter()
        .filter(|f| {
            f.all("ip.src").contains(&"198.51.100.10") && f.all("ip.dst").contains(&"203.0.113.10")
                || f.all("ip.src").contains(&"203.0.113.10")
                    && f.all("ip.dst").contains(&"198.51.100.10")
        })
        .collect();
    let all: Vec<String> = frames.iter().map(show).collect();
    assert!(
        between.len() >= 10,
        "expected the pings as WireGuard packets between the robots:\n{}",
        all.join("\n")
    );
    // Besides WireGuard, only the responder's NAT punches: one zero byte
    // (UDP length 9), a few at most.
    let punch = |f: &&&testbed::tshark::Frame| {
        f.all("udp.length") == ["9"] && f.one("frame.protocols").ends_with(":udp:data")
    };
    let punches = between.iter().filter(punch).count();
    assert!(punches <= 5, "{punches} punches:\n{}", all.join("\n"));
    assert!(
        between
            .iter()
            .filter(|f| !punch(f))
            .all(|f| f.one("frame.protocols").ends_with(":udp:wg")),
        "only WireGuard between the robots:\n{}",
        all.join("\n")
    );
    assert!(
        !all.iter()
            .any(|l| l.contains("icmp") && l.contains("10.0.0.")),
        "overlay ICMP seen on the underlay:\n{}",
        all.join("\n")
    );
}

#[test]
fn an_unregistered_eid_gets_icmp_unreachable_quickly() {
    let lab = Lab::for_test(LabSpec::campus().tag("xu"));
    let start = Instant::now();
    let out = lab.exec("robot-a", &["ping", "-c", "1", "-W", "5", "10.0.0.99"]);
    let took = start.elapsed();
    let t = text(&out);
    assert!(t.contains("Unreachable"), "expected ICMP unreachable:\n{t}");
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}: it must not hang until the ping timeout"
    );
    eprintln!("ICMP unreachable after {took:?} (ping process included)");
}

#[test]
fn a_map_server_restart_does_not_break_established_tunnels() {
    let mut lab = Lab::for_test(LabSpec::campus().tag("xr"));
    lab.ping_ok("robot-a", "10.0.0.2", 2);
    lab.kill9("map-server").unwrap();
    lab.ping_ok("robot-a", "10.0.0.2", 3);
    lab.ping_ok("robot-b", "10.0.0.1", 3);
    lab.start("map-server").unwrap();
    lab.ping_ok("robot-a", "10.0.0.2", 3);
    // And new resolutions work again after the restart.
    lab.ping_ok("robot-a", "10.1.0.10", 2);
}

#[test]
fn sigterm_leaves_no_interface_route_or_process_behind() {
    let mut lab = Lab::for_test(LabSpec::campus().tag("xs"));
    lab.ping_ok("robot-a", "10.0.0.2", 2);
    let (wg, miss) = (lab.wg_if("robot-a"), lab.miss_if("robot-a"));
    assert_eq!(
        wireguard_go_pids(&wg).len(),
        1,
        "robot-a's wireguard-go runs"
    );
    let status = lab.stop("robot-a").unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "xtr exits cleanly on SIGTERM: {status:?}"
    );
    let links = text(&lab.exec("robot-a", &["ip", "-o", "link"]));
    assert!(!links.contains(&wg), "WireGuard interface left: {links}");
    assert!(!links.contains(&miss), "miss TUN left: {links}");
    let routes = text(&lab.exec("robot-a", &["ip", "route"]));
    assert!(!routes.contains("10.0.0."), "overlay routes left: {routes}");
    assert!(wireguard_go_pids(&wg).is_empty(), "wireguard-go left");
    assert!(!testbed::leftovers::socket_path(&wg).exists());
    let log = std::fs::read_to_string(lab.log_path("robot-a")).unwrap();
    assert!(log.contains("SIGTERM"), "{log}");
}

#[test]
fn a_data_plane_that_refuses_the_first_peer_still_brings_the_tunnel_up_with_the_first_packet() {
    let lab = Lab::for_test(LabSpec::campus().tag("xd").without("edge"));
    // robot-a's wireguard-go refuses every configuration change for 300 ms
    // (its control socket is away): the first peer's programming fails, and
    // the core retries it while holding the packet.
    let sock = format!("/var/run/wireguard/{}.sock", lab.wg_if("robot-a"));
    let away = format!("{sock}.away");
    std::fs::rename(&sock, &away).unwrap();
    let log = lab.dir().join("refused-ping.log");
    let mut p = lab
        .ns("robot-a")
        .spawn(
            "ping",
            "ping",
            &["-c", "5", "-i", "0.2", "-W", "2", "10.0.0.2"],
            &log,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::rename(&away, &sock).unwrap();
    assert!(testbed::wait_until(Duration::from_secs(10), || !p.is_running()));
    let out = p.log();
    assert!(
        out.contains("icmp_seq=1 "),
        "the held first packet went out:\n{out}\n{}",
        lab.logs()
    );
    assert!(out.contains(" 0% packet loss"), "{out}");
    let m = lab.fetch("robot-a", "/metrics").unwrap();
    let failures = testbed::metric(&m, "lispwg_xtr_dataplane_failures_total").unwrap_or(0.0);
    assert!(failures >= 1.0, "the refusal was seen and counted");
}

/// TCP from a host behind the edge xTR: its SYN leaves the tunnel with an MSS
/// that fits the tunnel (1420 - 40), whether it was held at the miss TUN and
/// re-injected or forwarded through a programmed peer; a robot's own miss
/// TUN has the tunnel's MTU. The clamp's table goes when the agent stops.
#[test]
fn syns_into_the_tunnel_carry_an_mss_that_fits_it() {
    let mut lab = Lab::for_test(LabSpec::campus().tag("xm"));
    for node in ["robot-a", "edge"] {
        let miss = text(&lab.exec(node, &["ip", "-o", "link", "show", &lab.miss_if(node)]));
        let wg = text(&lab.exec(node, &["ip", "-o", "link", "show", &lab.wg_if(node)]));
        assert!(wg.contains("mtu 1420"), "{wg}");
        assert!(
            miss.contains("mtu 1420"),
            "the miss TUN takes the tunnel's MTU: {miss}"
        );
    }
    let table = format!("lispwg_{}", lab.wg_if("edge").replace('-', "_"));
    let listed = text(&lab.exec("edge", &["nft", "list", "table", "inet", &table]));
    assert!(listed.contains("maxseg size set rt mtu"), "{listed}");

    let pcap = lab.dir().join("syn.pcap");
    let wg_a = lab.wg_if("robot-a");
    let mut capture = Capture::start(
        lab.ns("robot-a"),
        &wg_a,
        &["tcp[tcpflags] & tcp-syn != 0"],
        &pcap,
    )
    .unwrap();
    // Port 9 on robot-a: nothing listens, a RST answers; only the SYN matters.
    // The first SYN is held at the edge's miss TUN, the second forwarded.
    for _ in 0..2 {
        lab.exec(
            "host",
            &["timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/10.0.0.1/9"],
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let frames = capture.frames(&["tcp.options.mss_val", "tcp.flags.ack"]);
    let mss: Vec<u32> = frames
        .iter()
        .filter(|f| {
            f.all("tcp.flags.ack")
                .first()
                .is_some_and(|a| *a == "0" || *a == "False")
        })
        .filter_map(|f| {
            f.all("tcp.options.mss_val")
                .first()
                .and_then(|v| v.parse().ok())
        })
        .collect();
    assert!(mss.len() >= 2, "both SYNs reached robot-a: {mss:?}");
    assert!(
        mss.iter().all(|&m| m <= 1380),
        "MSS fits the tunnel: {mss:?}"
    );

    lab.stop("edge").unwrap();
    let tables = text(&lab.exec("edge", &["nft", "list", "tables"]));
    assert!(
        !tables.contains(&table),
        "the clamp is removed at shutdown: {tables}"
    );
}

/// A node killed and restarted while its correspondent still caches it
/// (issue 11, row 4: it was unreachable for 9 min 51 s, until the cache
/// TTL ran out): the correspondent reaches it again within 2 s of its start.
#[test]
fn a_restarted_node_is_reached_again_by_a_correspondent_that_caches_it() {
    let mut lab = Lab::for_test(LabSpec::campus().tag("xk").without("edge"));
    lab.ping_ok("robot-a", "10.0.0.2", 2);
    lab.kill9("robot-b").unwrap();
    lab.start("robot-b").unwrap();
    let t0 = Instant::now();
    let back = testbed::wait_until(Duration::from_secs(2), || {
        lab.exec("robot-a", &["ping", "-c", "1", "-W", "1", "10.0.0.2"])
            .status
            .success()
    });
    assert!(
        back,
        "robot-a did not reach the restarted robot-b within 2 s:\n{}",
        lab.logs()
    );
    eprintln!("reached again {:?} after robot-b was ready", t0.elapsed());
    let smrs = testbed::metric(
        &lab.fetch("map-server", "/metrics").unwrap(),
        "lispwg_map_server_smrs_total",
    );
    assert!(
        smrs.unwrap_or(0.0) >= 1.0,
        "the map-server solicited robot-a: {smrs:?}"
    );
}
