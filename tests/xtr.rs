//! The xtr end to end, in the namespace lab: on-demand tunnels with the
//! first packet delivered, robot ↔ host through an edge xTR, an encrypted
//! underlay, fast ICMP unreachable, map-server restarts, clean exit.

use lispwg_tests::lab::{output_text as text, Lab};
use lispwg_tests::Daemon;
use std::time::{Duration, Instant};

#[test]
fn the_first_ping_to_a_never_resolved_robot_is_answered_and_the_destination_learns_the_source() {
    let lab = Lab::up("xf", 1);
    let (a_key, b_key) = (lab.public_key("robot-a"), lab.public_key("robot-b"));
    let b_peers = lab.wg_show("robot-b", &lab.wg("b"), "endpoints");
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

    let b_peers = lab.wg_show("robot-b", &lab.wg("b"), "endpoints");
    let a_at_b = b_peers
        .iter()
        .find(|(k, _)| *k == a_key)
        .unwrap_or_else(|| panic!("robot-b has no peer for robot-a: {b_peers:?}"));
    assert_eq!(a_at_b.1, "198.51.100.10:51820");
    let a_peers = lab.wg_show("robot-a", &lab.wg("a"), "allowed-ips");
    assert!(
        a_peers
            .iter()
            .any(|(k, ips)| *k == b_key && ips == "10.0.0.2/32"),
        "{a_peers:?}"
    );
}

#[test]
fn a_robot_reaches_a_host_behind_an_edge_xtr_and_back() {
    let lab = Lab::up("xh", 1);
    lab.ping_ok("robot-a", "10.1.0.10", 3);
    lab.ping_ok("host", "10.0.0.2", 3);
    let e_peers = lab.wg_show("edge", &lab.wg("e"), "allowed-ips");
    assert!(
        e_peers.iter().any(|(_, ips)| ips == "10.0.0.1/32"),
        "{e_peers:?}"
    );
    assert!(
        e_peers.iter().any(|(_, ips)| ips == "10.0.0.2/32"),
        "{e_peers:?}"
    );
}

#[test]
fn robot_traffic_on_the_underlay_is_only_wireguard() {
    let lab = Lab::up("xe", 1);
    let pcap = lab.dir().join("router.pcap");
    let ns = lab.ns("router");
    let mut capture: Daemon = {
        let mut c = std::process::Command::new("ip");
        c.args([
            "netns", "exec", &ns, "tcpdump", "-U", "-n", "-i", "any", "-w",
        ])
        .arg(&pcap)
        .args(["not", "arp"]);
        Daemon::from_command(c, lab.dir().join("tcpdump.log"))
    };
    assert!(
        lispwg_tests::wait_until(Duration::from_secs(5), || capture
            .log()
            .contains("listening")),
        "tcpdump did not start: {}",
        capture.log()
    );
    // A recognisable payload: "lispwg-secret-payload" repeated by ping.
    let pattern = "6c69737077672d736563726574";
    let out = lab.exec(
        "robot-a",
        &[
            "ping", "-c", "5", "-i", "0.2", "-W", "2", "-p", pattern, "10.0.0.2",
        ],
    );
    assert!(text(&out).contains("5 received"), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(300));
    capture.stop();

    let raw = std::fs::read(&pcap).expect("capture file");
    let needle = b"lispwg-secret";
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle),
        "the ICMP payload crossed the underlay in clear"
    );
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args([
            "-T",
            "fields",
            "-e",
            "frame.protocols",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "udp.length",
        ])
        .output()
        .unwrap();
    let frames = String::from_utf8_lossy(&out.stdout).into_owned();
    let robots = |l: &&str| l.contains("198.51.100.10") && l.contains("203.0.113.10");
    let between: Vec<&str> = frames.lines().filter(robots).collect();
    assert!(
        between.len() >= 10,
        "expected the pings as WireGuard packets between the robots:\n{frames}"
    );
    // Besides WireGuard, only the responder's NAT punches: one zero byte
    // (UDP length 9), a few at most.
    let punch = |l: &&&str| l.ends_with("\t9") && l.contains(":udp:data");
    let punches = between.iter().filter(punch).count();
    assert!(punches <= 5, "{punches} punches:\n{}", between.join("\n"));
    assert!(
        between
            .iter()
            .filter(|l| !punch(l))
            .all(|l| l.contains(":udp:wg")),
        "only WireGuard between the robots:\n{}",
        between.join("\n")
    );
    assert!(
        !frames
            .lines()
            .any(|l| l.contains("icmp") && l.contains("10.0.0.")),
        "overlay ICMP seen on the underlay:\n{frames}"
    );
}

#[test]
fn an_unregistered_eid_gets_icmp_unreachable_quickly() {
    let lab = Lab::up("xu", 1);
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
    let lab = Lab::up("xr", 1);
    lab.ping_ok("robot-a", "10.0.0.2", 2);
    lab.must(&["kill9", "map-server"]);
    lab.ping_ok("robot-a", "10.0.0.2", 3);
    lab.ping_ok("robot-b", "10.0.0.1", 3);
    lab.must(&["start", "map-server"]);
    lab.ping_ok("robot-a", "10.0.0.2", 3);
    // And new resolutions work again after the restart.
    lab.ping_ok("robot-a", "10.1.0.10", 2);
}

#[test]
fn sigterm_leaves_no_interface_route_or_process_behind() {
    let lab = Lab::up("xs", 1);
    lab.ping_ok("robot-a", "10.0.0.2", 2);
    let pid = lab.pid("robot-a").expect("robot-a pid");
    let wg_pid = lispwg_tests::wireguard_go_pids(&lab.wg("a"));
    assert_eq!(wg_pid.len(), 1, "robot-a's wireguard-go runs");
    lab.must(&["stop", "robot-a"]);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "xtr exited"
    );
    let links = text(&lab.exec("robot-a", &["ip", "-o", "link"]));
    assert!(
        !links.contains(&lab.wg("a")),
        "WireGuard interface left: {links}"
    );
    assert!(!links.contains(&lab.wg("am")), "miss TUN left: {links}");
    let routes = text(&lab.exec("robot-a", &["ip", "route"]));
    assert!(!routes.contains("10.0.0."), "overlay routes left: {routes}");
    assert!(
        lispwg_tests::wireguard_go_pids(&lab.wg("a")).is_empty(),
        "wireguard-go left"
    );
    assert!(!std::path::Path::new(&format!("/var/run/wireguard/{}.sock", lab.wg("a"))).exists());
    let log = std::fs::read_to_string(lab.dir().join("robot-a.log")).unwrap();
    assert!(log.contains("SIGTERM"), "{log}");
}
