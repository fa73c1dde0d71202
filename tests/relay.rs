//! The relay in the namespace lab: coturn on the map-server's host, robots
//! behind NATs no direct path crosses.

use std::time::{Duration, Instant};
use testbed::nat::NatKind;
use testbed::topology::Segment;
use testbed::{wait_until, Lab, LabSpec};

/// One relay lab at a time: each runs coturn, a map-server, three agents
/// and their wireguard-go on a 2-core machine, and these tests measure
/// loss and latency.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The round trip of the first reply in ping's output.
fn first_rtt(out: &str) -> Option<Duration> {
    let l = out.lines().find(|l| l.contains("icmp_seq=1 "))?;
    let ms: f64 = l.split("time=").nth(1)?.split(' ').next()?.parse().ok()?;
    Some(Duration::from_secs_f64(ms / 1000.0))
}

/// robot-a behind NAT n1 and robot-b behind n2, of these kinds, coturn on.
fn nats(tag: &str, a: NatKind, b: NatKind) -> LabSpec {
    LabSpec::campus()
        .tag(tag)
        .coturn()
        .nat("n1", a, Segment::SubnetA)
        .behind("robot-a", "n1")
        .nat("n2", b, Segment::SubnetB)
        .behind("robot-b", "n2")
}

/// Waits until `node`'s relay allocation is up.
fn relay_up(lab: &Lab, node: &str) {
    let up = wait_until(Duration::from_secs(15), || {
        lab.fetch(node, "/metrics")
            .ok()
            .and_then(|p| testbed::metric(&p, "lispwg_xtr_relay_up"))
            == Some(1.0)
    });
    assert!(up, "{node}: no relay allocation\n{}", lab.logs());
}

#[test]
fn symmetric_nats_on_both_sides_talk_through_the_relay_first_packet_included() {
    let _one = serial();
    let lab = Lab::for_test(nats("rb", NatKind::Edm, NatKind::Edm));
    relay_up(&lab, "robot-a");
    relay_up(&lab, "robot-b");
    // 200 ms apart: what WireGuard queued during the first (direct)
    // attempt, 50 ms here, is lost with it; everything from the first
    // failure on is held by the agent and delivered.
    let (received, out) = lab.ping("robot-a", "10.0.0.2", 10, "0.2");
    assert_eq!(received, 10, "the first packet too:\n{out}\n{}", lab.logs());
    let first = first_rtt(&out).expect("a first reply");
    assert!(
        first < Duration::from_millis(1500),
        "first reply after {first:?}"
    );
    eprintln!("first reply through the relay after {first:?}");
    assert_eq!(lab.metric("robot-a", "lispwg_xtr_paths_relayed"), 1);
    assert_eq!(lab.metric("robot-b", "lispwg_xtr_paths_relayed"), 1);
    assert!(lab.metric("robot-a", "lispwg_xtr_relay_sent_bytes_total") > 0);
    let status = lab.fetch("robot-a", "/status").unwrap();
    assert!(status.contains("path: relayed"), "{status}");
    assert!(status.contains("relay: up at "), "{status}");
}

/// Pings robot-b from robot-a until one answers (at most `limit`).
fn reachable(lab: &Lab, from: &str, to: &str, limit: Duration) -> bool {
    wait_until(limit, || lab.ping(from, to, 1, "0.2").0 == 1)
}

#[test]
fn a_symmetric_nat_on_one_side_talks_through_the_relay_in_both_directions() {
    let _one = serial();
    let lab = Lab::for_test(nats("r1", NatKind::Eim, NatKind::Edm));
    relay_up(&lab, "robot-a");
    relay_up(&lab, "robot-b");
    // robot-b (behind the symmetric NAT) asks first; the tunnel then
    // carries robot-a's traffic too.
    let (_, out) = lab.ping("robot-b", "10.0.0.1", 5, "0.2");
    // The first packet is held and delivered; one sent into the first
    // (direct) attempt may be lost with it when the machine is slow and
    // that attempt outlasts the 200 ms.
    let got = replied(&out);
    assert!(
        got.contains(&1) && got.ends_with(&[4, 5]),
        "{out}\n{}",
        lab.logs()
    );
    assert_eq!(lab.metric("robot-b", "lispwg_xtr_paths_relayed"), 1);
    let (received, out) = lab.ping("robot-a", "10.0.0.2", 5, "0.2");
    assert_eq!(received, 5, "{out}");
}

#[test]
fn nats_without_filtering_that_remap_ports_talk_through_the_relay() {
    let _one = serial();
    let lab = Lab::for_test(nats("rf", NatKind::EimNoFirewall, NatKind::EimNoFirewall));
    relay_up(&lab, "robot-a");
    relay_up(&lab, "robot-b");
    let (received, out) = lab.ping("robot-a", "10.0.0.2", 10, "0.2");
    assert_eq!(received, 10, "{out}\n{}", lab.logs());
    assert_eq!(lab.metric("robot-a", "lispwg_xtr_paths_relayed"), 1);
}

/// The icmp_seq numbers ping's output got replies for.
fn replied(out: &str) -> Vec<u32> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split("icmp_seq=").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn a_relayed_pair_moves_to_direct_when_the_nats_change_and_loses_nothing() {
    let _one = serial();
    let lab = Lab::for_test(nats("ru", NatKind::Edm, NatKind::Edm));
    relay_up(&lab, "robot-a");
    relay_up(&lab, "robot-b");
    assert!(reachable(
        &lab,
        "robot-a",
        "10.0.0.2",
        Duration::from_secs(5)
    ));
    assert_eq!(lab.metric("robot-a", "lispwg_xtr_paths_relayed"), 1);
    // A 20 ms ping through the change: both NATs become EIM (a new rule set,
    // their mappings flushed, as a router that was reconfigured). The flush
    // itself cuts the pair until each side has noticed (its relay
    // self-check, its stalled path); from then on nothing may be lost,
    // though the pair moves from the relay to the direct path.
    let log = lab.dir().join("upgrade-ping.log");
    let mut p = lab
        .ns("robot-a")
        .spawn(
            "ping",
            "ping",
            &["-i", "0.02", "-W", "1", "-c", "1500", "10.0.0.2"],
            &log,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for n in ["n1", "n2"] {
        let mut nat = lab.nat(n).unwrap();
        nat.set_kind(NatKind::Eim).unwrap();
        nat.flush_conntrack().unwrap();
    }
    let t0 = Instant::now();
    let direct = wait_until(Duration::from_secs(25), || {
        lab.metric("robot-a", "lispwg_xtr_paths_direct") == 1
            && lab.metric("robot-b", "lispwg_xtr_paths_direct") == 1
    });
    if !direct {
        for n in ["robot-a", "robot-b"] {
            eprintln!(
                "==== {n} status\n{}",
                lab.fetch(n, "/status").unwrap_or_default()
            );
            let log = std::fs::read_to_string(lab.log_path(n)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
            eprintln!(
                "==== {n} log\n{}",
                tail[tail.len().saturating_sub(40)..].join("\n")
            );
        }
    }
    assert!(direct, "the pair stayed on the relay ({:?})", t0.elapsed());
    eprintln!("direct {:?} after the NATs changed", t0.elapsed());
    assert!(wait_until(Duration::from_secs(40), || !p.is_running()));
    let seqs = replied(&p.log());
    // The outage of the flush: the largest hole in the replies.
    let (hole_end, hole) = seqs
        .windows(2)
        .map(|w| (w[1], w[1] - w[0]))
        .max_by_key(|(_, gap)| *gap)
        .unwrap();
    let after: Vec<u32> = seqs.iter().copied().filter(|s| *s >= hole_end).collect();
    let lost_after = (1500 - hole_end + 1) as usize - after.len();
    eprintln!(
        "upgrade: {} of 1500 replies; the flush cut {} pings, then {lost_after} lost",
        seqs.len(),
        hole - 1
    );
    assert_eq!(lost_after, 0, "lost while moving to direct\n{}", lab.logs());
    assert!(lab.metric("robot-a", "lispwg_xtr_relay_switches_to_direct_total") >= 1);
}

/// Seconds-since-epoch of each reply in `ping -D` output.
fn reply_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// The largest gap between two replies, in seconds.
fn largest_gap(times: &[f64]) -> f64 {
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

#[test]
fn handover_while_relayed_either_side_moving_to_another_symmetric_nat() {
    let _one = serial();
    use testbed::topology::Attach;
    let mut lab = Lab::for_test(
        LabSpec::campus()
            .tag("rh")
            .coturn()
            .nat("n1", NatKind::Edm, Segment::SubnetA)
            .nat("n3", NatKind::Edm, Segment::SubnetA)
            .nat("n2", NatKind::Edm, Segment::SubnetB)
            .nat("n4", NatKind::Edm, Segment::SubnetB)
            .uplinks(
                "robot-a",
                &[Attach::Nat("n1".into()), Attach::Nat("n3".into())],
            )
            .uplinks(
                "robot-b",
                &[Attach::Nat("n2".into()), Attach::Nat("n4".into())],
            ),
    );
    relay_up(&lab, "robot-a");
    relay_up(&lab, "robot-b");
    assert!(reachable(
        &lab,
        "robot-a",
        "10.0.0.2",
        Duration::from_secs(5)
    ));
    assert_eq!(lab.metric("robot-a", "lispwg_xtr_paths_relayed"), 1);
    // robot-a asked first: it is the initiator; both hold an allocation.
    for mover in ["robot-a", "robot-b"] {
        let log = lab.dir().join(format!("handover-{mover}.log"));
        let mut p = lab
            .ns("robot-a")
            .spawn(
                "ping",
                "ping",
                &["-D", "-i", "0.02", "-W", "1", "-c", "200", "10.0.0.2"],
                &log,
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        lab.move_node(mover).unwrap();
        assert!(wait_until(Duration::from_secs(20), || !p.is_running()));
        let times = reply_times(&p.log());
        let gap = largest_gap(&times);
        eprintln!(
            "{mover} moved while relayed: {} of 200 replies, largest gap {:.0} ms",
            times.len(),
            gap * 1000.0
        );
        assert!(
            gap < 1.5,
            "{mover} moved: outage of {:.0} ms\n{}",
            gap * 1000.0,
            lab.logs()
        );
        assert!(times.len() >= 140, "{mover}: {} replies", times.len());
        assert_eq!(lab.metric("robot-a", "lispwg_xtr_paths_relayed"), 1);
    }
}

#[test]
fn a_restarted_coturn_is_noticed_and_the_pair_comes_back_by_itself() {
    let _one = serial();
    let mut lab = Lab::for_test(nats("rc", NatKind::Edm, NatKind::Edm));
    relay_up(&lab, "robot-a");
    relay_up(&lab, "robot-b");
    assert!(reachable(
        &lab,
        "robot-a",
        "10.0.0.2",
        Duration::from_secs(5)
    ));
    let before = lab.metric("robot-a", "lispwg_xtr_relay_allocations_total");
    lab.stop("coturn").unwrap();
    lab.start("coturn").unwrap();
    let t0 = Instant::now();
    // Traffic or not, both notice (self-checks every 5 s) and allocate again.
    let back = reachable(&lab, "robot-a", "10.0.0.2", Duration::from_secs(20));
    eprintln!(
        "coturn restarted: the pair is back after {:?}",
        t0.elapsed()
    );
    assert!(back, "the pair never came back\n{}", lab.logs());
    assert!(lab.metric("robot-a", "lispwg_xtr_relay_allocations_total") > before);
    assert!(wait_until(Duration::from_secs(10), || {
        lab.metric("robot-b", "lispwg_xtr_relay_up") == 1
    }));
    let (received, out) = lab.ping("robot-a", "10.0.0.2", 10, "0.05");
    assert_eq!(received, 10, "{out}");
}

#[test]
fn a_robot_whose_network_lets_only_tcp_out_registers_and_talks_through_the_relay() {
    let _one = serial();
    // robot-b's network lets only TCP to port 443 out. It has never run
    // there: its relay credentials come from `map-server relay-grant`.
    let mut lab = Lab::for_test(nats("rt", NatKind::Eim, NatKind::Eim).idle("robot-b"));
    lab.nat("n2").unwrap().block_udp(true).unwrap();
    let out = std::process::Command::new(testbed::Bins::workspace().map_server)
        .args(["relay-grant", "--peer", "robot-b", "--config"])
        .arg(lab.config_path("map-server"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", testbed::output_text(&out));
    testbed::secret_file(
        &lab.grant_file("robot-b"),
        &String::from_utf8_lossy(&out.stdout),
    )
    .unwrap();
    let t0 = Instant::now();
    lab.start("robot-b").unwrap();
    eprintln!(
        "registered through the relay (TLS) after {:?}",
        t0.elapsed()
    );
    let status = lab.fetch("robot-b", "/status").unwrap();
    assert!(status.contains("via tls "), "{status}");
    assert!(status.contains("relay only"), "{status}");
    assert_eq!(lab.metric("robot-b", "lispwg_xtr_relay_only"), 1);
    // Both directions.
    let (received, out) = lab.ping("robot-b", "10.0.0.1", 5, "0.2");
    assert!(
        received >= 4 && replied(&out).contains(&1),
        "{out}\n{}",
        lab.logs()
    );
    let (received, out) = lab.ping("robot-a", "10.0.0.2", 5, "0.2");
    assert!(received >= 4, "{out}");
    // It fetched fresh credentials over the tunnel and keeps them.
    assert!(lab.metric("robot-b", "lispwg_xtr_relay_grants_total") >= 2);
}

#[test]
fn only_wireguard_ciphertext_crosses_the_relay() {
    let _one = serial();
    let lab = Lab::for_test(nats("rw", NatKind::Edm, NatKind::Edm));
    relay_up(&lab, "robot-a");
    relay_up(&lab, "robot-b");
    assert!(reachable(
        &lab,
        "robot-a",
        "10.0.0.2",
        Duration::from_secs(5)
    ));
    let pcap = lab.dir().join("relay-capture.pcap");
    let mut cap = testbed::capture::Capture::start(
        lab.ns("ms"),
        "any",
        &["udp", "and", "not", "port", "4340"],
        &pcap,
    )
    .unwrap();
    // A pattern a plaintext leak would show.
    let out = lab.exec(
        "robot-a",
        &[
            "ping",
            "-c",
            "20",
            "-i",
            "0.05",
            "-p",
            "6c6973707767",
            "10.0.0.2",
        ],
    );
    assert!(testbed::output_text(&out).contains(" 0% packet loss"));
    let bytes = cap.bytes();
    let needle = b"lispwglispwg";
    let plain = bytes.windows(needle.len()).filter(|w| *w == needle).count();
    assert_eq!(plain, 0, "the ping payload crossed the relay in clear");
    // What crossed: TURN (STUN and ChannelData) to and from the relay, and
    // inside it only WireGuard messages (type 1 to 4, three zero bytes).
    let frames = testbed::tshark::decode_pcap(&pcap, &["udp.payload"], &[]);
    let mut wireguard = 0;
    for f in &frames {
        let Some(hex) = f.all("udp.payload").first().map(|h| h.replace(':', "")) else {
            continue;
        };
        let p: Vec<u8> = (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        let inner = match p.first().map(|b| b >> 6) {
            Some(0b01) => &p[p.len().min(4)..],
            _ => &p[..],
        };
        let is_wg = inner.len() >= 32 && (1..=4).contains(&inner[0]) && inner[1..4] == [0, 0, 0];
        let is_stun = p.len() >= 20 && p[4..8] == [0x21, 0x12, 0xa4, 0x42];
        let is_check = relay::probe::decode(inner).is_some();
        assert!(
            is_wg || is_stun || is_check,
            "not WireGuard, STUN or a self-check: {hex}"
        );
        wireguard += usize::from(is_wg);
    }
    eprintln!(
        "{} datagrams at the relay, {wireguard} of them WireGuard",
        frames.len()
    );
    assert!(
        wireguard >= 40,
        "only {wireguard} WireGuard datagrams crossed the relay"
    );
}
