//! Node names end to end, in the namespace lab: three robots resolve each
//! other by name through the agent's DNS listener (a resolv.conf pointing
//! at the agent, as `ip netns exec` bind-mounts it), the lookup sets up the
//! tunnel before any packet, unknown names are NXDOMAIN, and other names
//! are forwarded to the upstream server.

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testbed::{metric, output_text as text, Lab, LabSpec, Segment};

const ROBOT_A_CTL: &str = "100.64.0.2";
const ROBOT_C_CTL: &str = "100.64.0.5";
const EDGE_CTL: &str = "100.64.0.4";
/// The fake upstream DNS server, inside robot-a's namespace.
const UPSTREAM: &str = "127.0.0.1:5300";
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

fn question(name: &str, t: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

/// One question to `server`, from inside `ns`; the answer.
fn ask(lab: &Lab, node: &str, server: &str, name: &str, t: RecordType) -> Message {
    let server: SocketAddr = format!("{server}:53").parse().unwrap();
    let q = question(name, t, 0x1234);
    lab.ns(node)
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.send_to(&q, server).unwrap();
            let mut buf = [0u8; 1500];
            let n = s.recv(&mut buf).expect("the agent answers within 5 s");
            Message::from_vec(&buf[..n]).unwrap()
        })
        .unwrap()
}

/// One question over TCP (RFC 7766 framing), from inside `node`.
fn ask_tcp(lab: &Lab, node: &str, server: &str, name: &str) -> Message {
    use std::io::{Read, Write};
    let server: SocketAddr = format!("{server}:53").parse().unwrap();
    let q = question(name, RecordType::A, 0x4321);
    lab.ns(node)
        .run(move || {
            let mut c =
                std::net::TcpStream::connect_timeout(&server, Duration::from_secs(3)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            c.write_all(&framed).unwrap();
            let mut len = [0u8; 2];
            c.read_exact(&mut len).unwrap();
            let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
            c.read_exact(&mut msg).unwrap();
            Message::from_vec(&msg).unwrap()
        })
        .unwrap()
}

/// A DNS server that answers every A question with UPSTREAM_ANSWER (and
/// others with no record), until `stop` is set or 60 s passed; returns the
/// names it was asked.
fn fake_upstream(
    lab: &Lab,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<Vec<String>>> {
    let ns = lab.ns("robot-a");
    ns.exec(&["ip", "link", "set", "lo", "up"]).unwrap();
    ns.spawn_thread(move || {
        let s = UdpSocket::bind(UPSTREAM)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut asked = Vec::new();
        let mut buf = [0u8; 1500];
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < end && !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                continue;
            };
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(q) = req.queries.first().cloned() else {
                continue;
            };
            asked.push(q.name().to_ascii());
            let mut reply =
                Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
            reply.metadata.recursion_desired = req.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            reply.add_query(q.clone());
            if q.query_type() == RecordType::A {
                reply.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(UPSTREAM_ANSWER)),
                ));
            }
            s.send_to(&reply.to_vec()?, from)?;
        }
        Ok(asked)
    })
    .unwrap()
}

fn peer_with(lab: &Lab, node: &str, key: &str) -> Option<String> {
    lab.wg_show(node, "allowed-ips")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, ips)| ips)
}

#[test]
fn three_robots_talk_by_name_and_other_names_are_forwarded() {
    let spec = LabSpec::campus()
        .robot(
            "robot-c",
            "c",
            Ipv4Addr::new(10, 0, 0, 3),
            5,
            Segment::SubnetB,
        )
        .idle("robot-a")
        .tag("nm");
    let mut lab = Lab::for_test(spec);
    // robot-a's agent forwards to our fake upstream; names resolve through
    // its own listener.
    let config = lab.config_path("robot-a");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!("\n[dns]\nupstream = [\"{UPSTREAM}\"]\n"));
    std::fs::write(&config, toml).unwrap();
    let _a_conf =
        testbed::NetnsResolvConf::point_at(lab.ns("robot-a").name(), ROBOT_A_CTL).unwrap();
    let _c_conf =
        testbed::NetnsResolvConf::point_at(lab.ns("robot-c").name(), ROBOT_C_CTL).unwrap();
    // The host behind the edge xTR asks the edge's agent.
    let _h_conf = testbed::NetnsResolvConf::point_at(lab.ns("host").name(), EDGE_CTL).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let upstream = fake_upstream(&lab, stop.clone());
    lab.start("robot-a").unwrap();

    let a_key = lab.public_key("robot-a").unwrap();
    let b_key = lab.public_key("robot-b").unwrap();
    assert_eq!(peer_with(&lab, "robot-a", &b_key), None, "no tunnel yet");

    // By name, through resolv.conf: robot-b's EID.
    let out = lab.exec("robot-a", &["getent", "hosts", "robot-b.lispwg.internal"]);
    assert!(
        out.status.success(),
        "getent failed: {}\n{}",
        text(&out),
        lab.logs()
    );
    let line = text(&out);
    assert!(
        line.starts_with("10.0.0.2 ") && line.contains("robot-b.lispwg.internal"),
        "{line}"
    );
    // The lookup set the tunnel up: both ends have their peer, before any
    // packet was sent.
    assert_eq!(
        peer_with(&lab, "robot-a", &b_key).as_deref(),
        Some("10.0.0.2/32"),
        "robot-a programmed robot-b on the name answer\n{}",
        lab.logs()
    );
    assert_eq!(
        peer_with(&lab, "robot-b", &a_key).as_deref(),
        Some("10.0.0.1/32"),
        "robot-b was told about robot-a"
    );
    let first = lab.ping_ok("robot-a", "robot-b.lispwg.internal", 3);
    assert!(
        first.contains("icmp_seq=1 "),
        "the first ping is answered:\n{first}"
    );

    // A bare name, as ROS_HOSTNAME has it, through the search domain.
    let out = lab.exec("robot-a", &["getent", "hosts", "robot-b"]);
    assert!(text(&out).starts_with("10.0.0.2 "), "{}", text(&out));

    // The third robot, both ways.
    let out = lab.exec("robot-a", &["getent", "hosts", "robot-c.lispwg.internal"]);
    assert!(text(&out).starts_with("10.0.0.3 "), "{}", text(&out));
    lab.ping_ok("robot-a", "robot-c.lispwg.internal", 3);
    let out = lab.exec("robot-c", &["getent", "hosts", "Robot-A.lispwg.internal"]);
    assert!(text(&out).starts_with("10.0.0.1 "), "{}", text(&out));
    lab.ping_ok("robot-c", "robot-a.lispwg.internal", 3);

    // A host behind the edge xTR, by name through the edge's agent.
    let out = lab.exec("host", &["getent", "hosts", "robot-c.lispwg.internal"]);
    assert!(
        text(&out).starts_with("10.0.0.3 "),
        "{}\n{}",
        text(&out),
        lab.logs()
    );
    lab.ping_ok("host", "robot-c.lispwg.internal", 2);

    // The answer itself: an authoritative A record with the mapping's TTL
    // (10 minutes, less the time since it was cached).
    let m = ask(
        &lab,
        "robot-a",
        ROBOT_A_CTL,
        "robot-b.lispwg.internal.",
        RecordType::A,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1, "{m:?}");
    assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 0, 0, 2))));
    assert!(
        (500..=600).contains(&m.answers[0].ttl),
        "{}",
        m.answers[0].ttl
    );
    // The same over TCP, as a stub resolver asks after a truncated answer.
    let m = ask_tcp(&lab, "robot-a", ROBOT_A_CTL, "robot-b.lispwg.internal.");
    assert_eq!(m.metadata.id, 0x4321);
    assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 0, 0, 2))));
    // No IPv6 EID: the name exists, with no AAAA record.
    let m = ask(
        &lab,
        "robot-a",
        ROBOT_A_CTL,
        "robot-b.lispwg.internal.",
        RecordType::AAAA,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());

    // Unknown names: NXDOMAIN, from the map-server's negative answer.
    let m = ask(
        &lab,
        "robot-a",
        ROBOT_A_CTL,
        "robot-z.lispwg.internal.",
        RecordType::A,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let out = lab.exec("robot-a", &["getent", "hosts", "robot-z.lispwg.internal"]);
    assert_eq!(out.status.code(), Some(2), "getent: not found");

    // A name outside the domain goes to the upstream, and its answer back.
    let out = lab.exec("robot-a", &["getent", "hosts", "printer.example.org"]);
    assert!(
        text(&out).starts_with(&format!("{UPSTREAM_ANSWER} ")),
        "forwarded: {}\n{}",
        text(&out),
        lab.logs()
    );

    let metrics = lab.fetch("robot-a", "/metrics").unwrap();
    let m = |name: &str| metric(&metrics, name).unwrap_or_else(|| panic!("no {name}"));
    assert!(m("lispwg_xtr_dns_forwarded_total") >= 1.0);
    assert!(m("lispwg_xtr_names_unknown_total") >= 2.0);
    assert!(m("lispwg_xtr_name_answers_total") >= 3.0);
    assert_eq!(m("lispwg_xtr_dns_refused_total"), 0.0);
    let status = lab.fetch("robot-a", "/status").unwrap();
    assert!(
        status.contains(&format!(
            "dns: {ROBOT_A_CTL}:53 for *.lispwg.internal, else upstream {UPSTREAM}"
        )),
        "{status}"
    );

    // The map-server gone: a name not cached is SERVFAIL after the bounded
    // wait (2 s), not silence; a cached one still answers.
    lab.stop("map-server").unwrap();
    let t0 = std::time::Instant::now();
    let m = ask(
        &lab,
        "robot-a",
        ROBOT_A_CTL,
        "robot-q.lispwg.internal.",
        RecordType::A,
    );
    let waited = t0.elapsed();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        (Duration::from_millis(1800)..Duration::from_secs(4)).contains(&waited),
        "SERVFAIL after {waited:?}"
    );
    let m = ask(
        &lab,
        "robot-a",
        ROBOT_A_CTL,
        "robot-b.lispwg.internal.",
        RecordType::A,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);

    lab.stop("robot-a").unwrap();
    stop.store(true, Ordering::Relaxed);
    let asked = upstream.join().unwrap().unwrap();
    assert!(
        asked.iter().any(|n| n == "printer.example.org."),
        "the upstream was asked: {asked:?}"
    );
    assert!(
        !asked.iter().any(|n| n.ends_with("lispwg.internal.")),
        "names in the domain never leave the agent: {asked:?}"
    );
}
