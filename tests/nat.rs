//! NAT traversal in the namespace lab: robots behind nftables NAT routers
//! (endpoint-independent or symmetric mapping, with the address-and-port
//! filter real routers have), talking directly whenever the NATs allow it.

use std::time::{Duration, Instant};
use testbed::nat::NatKind;
use testbed::topology::{Attach, Family, Segment};
use testbed::{wait_until, Lab, LabSpec};

/// `wg show <interface> endpoints` of `node`: the endpoint it has for the
/// peer whose key is `key`.
fn endpoint(lab: &Lab, node: &str, key: &str) -> Option<String> {
    lab.wg_show(node, "endpoints")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, e)| e)
}

fn two_eim_nats(tag: &str) -> LabSpec {
    LabSpec::campus()
        .tag(tag)
        .nat("n1", NatKind::Eim, Segment::SubnetA)
        .behind("robot-a", "n1")
        .nat("n2", NatKind::Eim, Segment::SubnetB)
        .behind("robot-b", "n2")
}

#[test]
fn robots_behind_two_filtering_nats_talk_directly_and_lose_nothing() {
    let lab = Lab::for_test(two_eim_nats("ne"));
    let b_key = lab.public_key("robot-b").unwrap();
    let (received, out) = lab.ping("robot-a", "10.0.0.2", 20, "0.05");
    assert_eq!(received, 20, "the first packet too:\n{out}\n{}", lab.logs());
    // Direct: robot-a sends to robot-b's NAT, not through anything else.
    let n2_public = lab.address("n2").to_string();
    let ep = endpoint(&lab, "robot-a", &b_key).expect("robot-a has a peer for robot-b");
    assert!(
        ep.starts_with(&format!("{n2_public}:")),
        "robot-a reaches robot-b at {ep}, not at its NAT {n2_public}"
    );
    assert_eq!(lab.metric("robot-a", "lispwg_xtr_path_failovers_total"), 0);
    assert!(lab.metric("robot-b", "lispwg_xtr_punches_total") >= 1);
    // Both NATs hold the pair's mapping.
    let mappings = lab.nat("n1").unwrap().mappings().unwrap();
    assert!(
        mappings
            .iter()
            .any(|m| m.orig_dst.ip() == lab.address("n2")),
        "n1 maps nothing toward n2: {mappings:?}"
    );
}

#[test]
fn a_public_robot_and_a_natted_robot_talk_in_both_directions() {
    for (i, (from, to)) in [("robot-a", "10.0.0.2"), ("robot-b", "10.0.0.1")]
        .into_iter()
        .enumerate()
    {
        let lab = Lab::for_test(
            LabSpec::campus()
                .tag(&format!("n{i}"))
                .nat("n2", NatKind::Eim, Segment::SubnetB)
                .behind("robot-b", "n2"),
        );
        let (received, out) = lab.ping(from, to, 10, "0.05");
        assert_eq!(received, 10, "{from} -> {to}:\n{out}\n{}", lab.logs());
    }
}

#[test]
fn two_robots_behind_one_nat_use_their_private_addresses() {
    let lab = Lab::for_test(
        LabSpec::campus()
            .tag("ns")
            .nat("n1", NatKind::Eim, Segment::SubnetA)
            .behind("robot-a", "n1")
            .behind("robot-b", "n1"),
    );
    let b_key = lab.public_key("robot-b").unwrap();
    let (received, out) = lab.ping("robot-a", "10.0.0.2", 10, "0.05");
    assert_eq!(received, 10, "{out}\n{}", lab.logs());
    let ep = endpoint(&lab, "robot-a", &b_key).unwrap();
    let b_private = lab.address("robot-b").to_string();
    assert!(
        ep.starts_with(&format!("{b_private}:")),
        "robot-a reaches robot-b at {ep}, not at its private {b_private} (no hairpin)"
    );
}

#[test]
fn a_nat_that_forgets_its_mappings_and_remaps_the_robot_recovers_by_itself() {
    let lab = Lab::for_test(two_eim_nats("nr"));
    let (received, _) = lab.ping("robot-a", "10.0.0.2", 5, "0.05");
    assert_eq!(received, 5);
    // n2 restarts: its conntrack is gone and it maps robot-b elsewhere now.
    {
        let mut n2 = lab.nat("n2").unwrap();
        n2.set_ports(Some((40000, 40100))).unwrap();
        n2.flush_conntrack().unwrap();
    }
    let start = Instant::now();
    let recovered = wait_until(Duration::from_secs(35), || {
        lab.ping("robot-a", "10.0.0.2", 1, "0.2").0 == 1
    });
    assert!(recovered, "never recovered\n{}", lab.logs());
    eprintln!("recovered {:?} after the NAT forgot", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(32));
}

#[test]
fn a_nat_that_remaps_a_robot_while_it_sends_recovers_within_a_second() {
    let lab = Lab::for_test(two_eim_nats("nw"));
    lab.ping_ok("robot-b", "10.0.0.1", 2);
    let log = lab.dir().join("rebind-ping.log");
    let mut p = lab
        .ns("robot-b")
        .spawn(
            "ping",
            "ping",
            &["-D", "-i", "0.01", "-W", "1", "-c", "500", "10.0.0.1"],
            &log,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    {
        let mut n2 = lab.nat("n2").unwrap();
        n2.set_ports(Some((40000, 40100))).unwrap();
        n2.flush_conntrack().unwrap();
    }
    assert!(wait_until(Duration::from_secs(15), || !p.is_running()));
    let times = reply_times(&p.log());
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
    eprintln!(
        "rebinding while sending: {} replies of 500, largest gap {:.0} ms",
        times.len(),
        gap * 1000.0
    );
    // Generous for a loaded machine; the bench measures the distribution.
    assert!(
        gap < 1.5,
        "outage of {:.0} ms\n{}",
        gap * 1000.0,
        lab.logs()
    );
}

#[test]
fn a_robot_moving_from_one_nat_to_another_keeps_talking() {
    let mut lab = Lab::for_test(
        LabSpec::campus()
            .tag("nm")
            .nat("n1", NatKind::Eim, Segment::SubnetA)
            .nat("n2", NatKind::Eim, Segment::SubnetB)
            .nat("n3", NatKind::Eim, Segment::SubnetA)
            .behind("robot-a", "n1")
            .uplinks(
                "robot-b",
                &[Attach::Nat("n2".into()), Attach::Nat("n3".into())],
            ),
    );
    lab.ping_ok("robot-a", "10.0.0.2", 2);
    let log = lab.dir().join("nat-move-ping.log");
    let mut p = lab
        .ns("robot-a")
        .spawn(
            "ping",
            "ping",
            &["-D", "-i", "0.01", "-W", "1", "-c", "400", "10.0.0.2"],
            &log,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    lab.move_node("robot-b").unwrap();
    assert!(wait_until(Duration::from_secs(15), || !p.is_running()));
    let times = reply_times(&p.log());
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
    eprintln!(
        "nat move: {} replies of 400, largest gap {:.0} ms",
        times.len(),
        gap * 1000.0
    );
    assert!(
        gap < 1.0,
        "outage of {:.0} ms\n{}",
        gap * 1000.0,
        lab.logs()
    );
    assert!(times.len() >= 300, "{} replies", times.len());
}

#[test]
fn a_symmetric_nat_facing_a_filtering_one_fails_cleanly() {
    let lab = Lab::for_test(
        LabSpec::campus()
            .tag("nd")
            .nat("n1", NatKind::Eim, Segment::SubnetA)
            .behind("robot-a", "n1")
            .nat("n2", NatKind::Edm, Segment::SubnetB)
            .behind("robot-b", "n2"),
    );
    let start = Instant::now();
    let out = lab.exec("robot-a", &["ping", "-c", "1", "-W", "8", "10.0.0.2"]);
    let t = testbed::output_text(&out);
    assert!(
        t.contains("Unreachable") || t.contains("unreachable"),
        "the held packet is answered, not left hanging:\n{t}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert!(lab.metric("robot-a", "lispwg_xtr_paths_failed_total") >= 1);
}

#[test]
fn dual_stack_robots_prefer_ipv6_and_ipv6_only_robots_talk() {
    let lab = Lab::for_test(
        LabSpec::campus()
            .tag("n6")
            .family("robot-a", Family::Dual)
            .family("robot-b", Family::Dual),
    );
    let b_key = lab.public_key("robot-b").unwrap();
    let (received, out) = lab.ping("robot-a", "10.0.0.2", 10, "0.05");
    assert_eq!(received, 10, "{out}\n{}", lab.logs());
    let ep = endpoint(&lab, "robot-a", &b_key).unwrap();
    assert!(ep.starts_with('['), "IPv6 preferred, got {ep}");
    drop(lab);

    let lab = Lab::for_test(
        LabSpec::campus()
            .tag("n7")
            .family("robot-a", Family::V6)
            .family("robot-b", Family::V6),
    );
    let (received, out) = lab.ping("robot-a", "10.0.0.2", 10, "0.05");
    assert_eq!(received, 10, "{out}\n{}", lab.logs());
}

/// Reply timestamps (seconds) from `ping -D` output.
fn reply_times(output: &str) -> Vec<f64> {
    output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

#[test]
fn a_dual_stack_robot_that_loses_ipv4_keeps_its_map_server_and_tunnels() {
    let lab = Lab::for_test(
        LabSpec::campus()
            .tag("n8")
            .family("robot-a", Family::Dual)
            .family("robot-b", Family::Dual),
    );
    // robot-a's IPv4 address goes: only IPv6 is left on its uplink.
    let out = lab.exec("robot-a", &["ip", "-4", "addr", "flush", "dev", "eth0"]);
    assert!(out.status.success(), "{}", testbed::output_text(&out));
    std::thread::sleep(Duration::from_millis(300));
    // It reaches the map-server over IPv6 now: a new pair resolves.
    let (received, out) = lab.ping("robot-a", "10.0.0.2", 10, "0.05");
    assert_eq!(received, 10, "{out}\n{}", lab.logs());
    let log = std::fs::read_to_string(lab.log_path("robot-a")).unwrap();
    assert!(
        log.contains("reaching the map-server at another endpoint"),
        "{log}"
    );
}
