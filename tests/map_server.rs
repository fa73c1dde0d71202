//! The map-server binary in network namespaces, with nodes played by the test
//! through wgctl (their own WireGuard interface, keyed to the map-server) and
//! LISP messages built with lisp-wire.
//!
//! Topology of the tunnel tests:
//!
//! ```text
//!  ns A: wg 100.64.0.2/16 ── veth 192.0.2.2 ───┐
//!                                              ├── 192.0.2.1 / 198.51.100.1  ns MS
//!  ns B: wg 100.64.0.3/16 ── veth 198.51.100.2 ┘     wg 100.64.0.1/16 (control)
//! ```

use lisp_wire::*;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testbed::config::{AllowedEid, MapServerConfig, MsControl, MsPeer, MsServer};
use testbed::*;
use wgctl::PeerConfig;

const MS_CTL: &str = "100.64.0.1";
const MS_WG_PORT: u16 = 4340;
const METRICS: &str = "127.0.0.1:9342";
const WAIT: Duration = Duration::from_secs(3);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A node played by the test: a WireGuard interface keyed to the map-server,
/// a control socket on its control address (port 4342, where map-server
/// notifies arrive) and a request socket on an ephemeral port.
struct Client {
    name: &'static str,
    ctl_addr: IpAddr,
    eid: EidPrefix,
    /// Its WireGuard endpoint on the underlay, which it registers as RLOC.
    rloc: SocketAddr,
    site_key: Vec<u8>,
    ms_endpoint: SocketAddr,
    ctl: UdpSocket,
    req: UdpSocket,
    node: WgNode,
}

impl Client {
    fn new(
        ns: &Netns,
        name: &'static str,
        ctl: &str,
        eid: &str,
        rloc: &str,
        port: u16,
        ms_underlay: &str,
    ) -> Client {
        let ifname = unique("c");
        let node = WgNode::new(ns, &ifname, port, &format!("{ctl}/16")).unwrap();
        let ctl_addr = ip(ctl);
        let (ctl_sock, req_sock) = ns
            .run(|| {
                (
                    UdpSocket::bind(SocketAddr::new(ctl_addr, LISP_CONTROL_PORT))
                        .expect("bind 4342"),
                    UdpSocket::bind(SocketAddr::new(ctl_addr, 0)).expect("bind request socket"),
                )
            })
            .unwrap();
        for s in [&ctl_sock, &req_sock] {
            s.set_read_timeout(Some(WAIT)).unwrap();
        }
        Client {
            name,
            ctl_addr,
            eid: EidPrefix::host(0, ip(eid)),
            rloc: SocketAddr::new(ip(rloc), port),
            site_key: format!("site-{name}").into_bytes(),
            ms_endpoint: SocketAddr::new(ip(ms_underlay), MS_WG_PORT),
            ctl: ctl_sock,
            req: req_sock,
            node,
        }
    }

    /// Adds the map-server as a WireGuard peer, replacing any earlier one
    /// (and its session). Done once the map-server runs: a handshake sent
    /// before would only be retried 5 s later.
    fn peer_with_ms(&self) {
        let ms_pub = ms_key().public_key();
        if self.node.read().unwrap().peer(&ms_pub).is_some() {
            self.node.remove_peer(ms_pub).unwrap();
        }
        self.node
            .upsert_peer(PeerConfig {
                public_key: ms_pub,
                endpoint: Some(self.ms_endpoint),
                allowed_ips: vec![format!("{MS_CTL}/32").parse().unwrap()],
                persistent_keepalive: Some(25),
            })
            .unwrap();
    }

    /// `record` is this node's mapping: its EID, and its RLOC, port and key
    /// in the best locator.
    #[track_caller]
    fn assert_mapped_by(&self, record: &EidRecord) {
        assert_eq!(EidPrefix::of_record(record).unwrap(), self.eid);
        let (_, info) = record.best_locator().expect("a positive record");
        let key = *self.node.public_key().as_bytes();
        assert_eq!(
            (info.rloc, info.port, info.wg_key),
            (self.rloc.ip(), Some(self.rloc.port()), Some(key)),
            "{}'s mapping",
            self.name
        );
    }

    fn ifname(&self) -> String {
        self.node.wg.name().to_owned()
    }

    fn register_bytes(&self, nonce: u64) -> Vec<u8> {
        let key = *self.node.public_key().as_bytes();
        let locator = wireguard_locator(self.rloc, key);
        let record = EidRecord::new(self.eid, 1, vec![RlocRecord::new(1, 100, locator)]);
        MapRegister::proxied(nonce, vec![record])
            .encode_signed(&self.site_key)
            .unwrap()
    }

    /// Registers over the control tunnel and returns the Map-Notify, checked:
    /// signed with our site key, our nonce, our EID.
    fn register(&self, nonce: &mut u64) -> Vec<u8> {
        *nonce += 1;
        let ms = SocketAddr::new(ip(MS_CTL), LISP_CONTROL_PORT);
        self.ctl.send_to(&self.register_bytes(*nonce), ms).unwrap();
        let bytes = recv(&self.ctl)
            .unwrap_or_else(|| panic!("{}: no Map-Notify for its Map-Register", self.name));
        assert_eq!(
            auth::verify(&bytes, &self.site_key),
            Ok(KeyId::HmacSha256),
            "Map-Notify to {} is signed with its site key",
            self.name
        );
        let Ok(Message::MapNotify(n)) = parse(&bytes) else {
            panic!(
                "{}: expected a Map-Notify, got {:?}",
                self.name,
                parse(&bytes)
            );
        };
        assert_eq!(n.nonce, *nonce);
        assert_eq!(EidPrefix::of_record(&n.records[0]).unwrap(), self.eid);
        bytes
    }

    /// An ECM-encapsulated Map-Request for `target`, from the request socket.
    fn request_bytes(&self, nonce: u64, target: IpAddr) -> Vec<u8> {
        let target = EidPrefix::host(0, target);
        let port = self.req.local_addr().unwrap().port();
        MapRequest::for_eid(nonce, self.eid.to_address(), self.ctl_addr, target)
            .encapsulated(self.ctl_addr, port, ip(MS_CTL))
            .encode()
            .unwrap()
    }

    fn send_request(&self, nonce: u64, target: &str) {
        let ms = SocketAddr::new(ip(MS_CTL), LISP_CONTROL_PORT);
        self.req
            .send_to(&self.request_bytes(nonce, ip(target)), ms)
            .unwrap();
    }

    /// Waits for the Map-Reply with `nonce` on the request socket.
    fn reply(&self, nonce: u64) -> (Vec<u8>, MapReply) {
        let bytes = recv(&self.req).unwrap_or_else(|| panic!("{}: no Map-Reply", self.name));
        match parse(&bytes) {
            Ok(Message::MapReply(r)) if r.nonce == nonce => (bytes, r),
            other => panic!(
                "{}: expected the Map-Reply {nonce}, got {other:?}",
                self.name
            ),
        }
    }
}

fn recv(sock: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_535];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// The map-server's key, the same for every test of this process.
fn ms_key() -> wgctl::keys::PrivateKey {
    static KEY: std::sync::OnceLock<wgctl::keys::PrivateKey> = std::sync::OnceLock::new();
    KEY.get_or_init(wgctl::keys::PrivateKey::generate).clone()
}

/// Writes the map-server's configuration, key and site-key files into `dir`.
fn write_config(dir: &Path, ifname: &str, clients: &[&Client]) -> PathBuf {
    secret_file(&dir.join("ms.key"), &ms_key().to_base64()).unwrap();
    let mut peers = Vec::new();
    for c in clients {
        let site = dir.join(format!("{}.site", c.name));
        secret_file(&site, &String::from_utf8_lossy(&c.site_key)).unwrap();
        peers.push(MsPeer {
            name: c.name.into(),
            public_key: Some(c.node.public_key().to_string()),
            control_address: c.ctl_addr.to_string(),
            site_key_file: format!("{}.site", c.name),
            eids: vec![AllowedEid::exact(format!("{}/32", c.eid.addr()))],
        });
    }
    let config = MapServerConfig {
        control: Some(MsControl {
            interface: ifname.into(),
            private_key_file: "ms.key".into(),
            listen_port: MS_WG_PORT,
            address: format!("{MS_CTL}/16"),
            backend: "userspace".into(),
        }),
        server: MsServer {
            state_dir: "state".into(),
            metrics: METRICS.into(),
            ..MsServer::default()
        },
        peers,
        static_mappings: Vec::new(),
        relay: None,
        limits: None,
    };
    let path = dir.join("ms.toml");
    config::write_toml(&path, &config).unwrap();
    path
}

fn start_ms(ns: &Netns, config: &Path) -> Daemon {
    let mut ms = ns
        .spawn(
            "map-server",
            binary("map-server"),
            &["run", "-c", config.to_str().unwrap()],
            &daemon::temp_log("map-server"),
        )
        .unwrap()
        .remove_log_when_done();
    assert!(
        ms.wait_for_log("map-server ready", Duration::from_secs(15)),
        "the map-server did not start:\n{}",
        ms.log()
    );
    ms
}

fn metrics(ns: &Netns) -> String {
    ns.fetch(METRICS.parse().unwrap(), "/metrics")
        .expect("fetch /metrics")
}

/// The kernel's count of UDP datagrams for which no socket was found.
fn udp_no_ports(ns: &Netns) -> u64 {
    let snmp = ns.exec(&["cat", "/proc/net/snmp"]).unwrap();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "NoPorts")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Runs `body`, then checks that it left nothing behind.
fn checked(body: impl FnOnce(&mut Vec<String>, &mut Vec<String>)) {
    require_root_and_tools(&[BASE_TOOLS, CAPTURE_TOOLS].concat()).unwrap();
    let (mut namespaces, mut ifnames) = (Vec::new(), Vec::new());
    body(&mut namespaces, &mut ifnames);
    assert_no_leftovers(&namespaces, &ifnames);
}

#[test]
fn control_tunnel_register_resolve_notify_and_nothing_over_the_underlay() {
    checked(|namespaces, ifnames| {
        let dir = tempdir();
        let ms_ns = Netns::new("m").unwrap();
        let a_ns = Netns::new("a").unwrap();
        let b_ns = Netns::new("b").unwrap();
        namespaces.extend([&ms_ns, &a_ns, &b_ns].map(|n| n.name().to_owned()));
        let (_, a_veth) = link(&ms_ns, Some("192.0.2.1/24"), &a_ns, Some("192.0.2.2/24")).unwrap();
        link(
            &ms_ns,
            Some("198.51.100.1/24"),
            &b_ns,
            Some("198.51.100.2/24"),
        )
        .unwrap();
        let a = Client::new(
            &a_ns,
            "robot-a",
            "100.64.0.2",
            "10.1.0.1",
            "192.0.2.2",
            51820,
            "192.0.2.1",
        );
        let b = Client::new(
            &b_ns,
            "robot-b",
            "100.64.0.3",
            "10.1.0.2",
            "198.51.100.2",
            51821,
            "198.51.100.1",
        );
        let ms_if = unique("ms");
        ifnames.extend([ms_if.clone(), a.ifname(), b.ifname()]);
        let config = write_config(dir.path(), &ms_if, &[&a, &b]);
        let mut ms = start_ms(&ms_ns, &config);
        a.peer_with_ms();
        b.peer_with_ms();
        let mut emitted = Vec::new();

        // Register both nodes: each gets a signed Map-Notify.
        let mut nonce = 0x1000;
        emitted.push(("Map-Notify to A", a.register(&mut nonce)));
        emitted.push(("Map-Notify to B", b.register(&mut nonce)));

        // `map-server status` lists both, with their peer names.
        let status = ms_ns
            .exec(&[
                binary("map-server").to_str().unwrap(),
                "status",
                "-c",
                config.to_str().unwrap(),
            ])
            .unwrap();
        for needle in [
            "[0]10.1.0.1/32",
            "robot-a",
            "192.0.2.2:51820",
            "[0]10.1.0.2/32",
            "robot-b",
        ] {
            assert!(status.contains(needle), "status lacks {needle}:\n{status}");
        }

        // A resolves B: B is told about A first (Map-Notify, acked), then A
        // gets the proxy reply with B's key, RLOC and port.
        let t0 = Instant::now();
        a.send_request(0xa1, "10.1.0.2");
        let notify = recv(&b.ctl).expect("B gets a Map-Notify about A");
        assert_eq!(auth::verify(&notify, &b.site_key), Ok(KeyId::HmacSha256));
        let Ok(Message::MapNotify(n)) = parse(&notify) else {
            panic!("not a Map-Notify: {:?}", parse(&notify))
        };
        a.assert_mapped_by(&n.records[0]);
        let ack = MapNotify {
            auth: Authentication::unsigned(KeyId::HmacSha256),
            ..n
        }
        .encode_signed_ack(&b.site_key)
        .unwrap();
        b.ctl
            .send_to(&ack, SocketAddr::new(ip(MS_CTL), LISP_CONTROL_PORT))
            .unwrap();
        emitted.push(("Map-Notify to B about A", notify));
        let (bytes, reply) = a.reply(0xa1);
        println!("A's Map-Request for B answered in {:?}", t0.elapsed());
        b.assert_mapped_by(&reply.records[0]);
        emitted.push(("Map-Reply to A for B", bytes));

        // An unregistered EID: a negative reply.
        a.send_request(0xa2, "10.1.0.99");
        let (bytes, reply) = a.reply(0xa2);
        assert!(reply.records[0].rlocs.is_empty(), "{reply:?}");
        assert_eq!(reply.records[0].action, Action::NativelyForward);
        assert!(EidPrefix::of_record(&reply.records[0])
            .unwrap()
            .contains_addr(0, ip("10.1.0.99")));
        emitted.push(("negative Map-Reply", bytes));

        let before = metrics(&ms_ns);
        let registers = |m: &str| metric(m, "lispwg_map_server_map_registers_total").unwrap();
        assert_eq!(metric(&before, "lispwg_map_server_entries"), Some(2.0));
        assert_eq!(
            metric(&before, "lispwg_map_server_negative_replies_total"),
            Some(1.0)
        );

        // The same kind of Map-Register sent over the underlay, to the
        // map-server's underlay address: no answer, nothing changes.
        let no_ports = udp_no_ports(&ms_ns);
        // A's register from `from`, to `to`: the answer, if any.
        let mut register_from = |from: &str, to: &str| {
            let sock = a_ns.run(|| UdpSocket::bind(from).unwrap()).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            nonce += 1;
            sock.send_to(&a.register_bytes(nonce), to).unwrap();
            recv(&sock)
        };
        assert!(
            register_from("192.0.2.2:0", "192.0.2.1:4342").is_none(),
            "an answer over the underlay"
        );

        // And to the control address, routed over the underlay (no tunnel),
        // from A's own control address: the host accepts it (weak host model,
        // no reverse-path filter), but the control socket is bound to the
        // WireGuard interface and never sees it.
        ms_ns.sysctl("net.ipv4.conf.all.rp_filter", "0").unwrap();
        ms_ns
            .sysctl("net.ipv4.conf.default.rp_filter", "0")
            .unwrap();
        a_ns.ip(&[
            "route",
            "add",
            "100.64.0.1/32",
            "via",
            "192.0.2.1",
            "dev",
            &a_veth,
        ])
        .unwrap();
        assert!(
            register_from("100.64.0.2:0", "100.64.0.1:4342").is_none(),
            "an answer to a register over the underlay"
        );
        assert!(
            wait_until(WAIT, || udp_no_ports(&ms_ns) >= no_ports + 2),
            "both underlay datagrams reached the map-server's host and found no socket \
             (NoPorts {} -> {})",
            no_ports,
            udp_no_ports(&ms_ns)
        );
        let after = metrics(&ms_ns);
        assert_eq!(
            registers(&after),
            registers(&before),
            "the LISP code saw nothing"
        );
        for m in [
            "lispwg_map_server_unknown_peers_total",
            "lispwg_map_server_malformed_total",
            "lispwg_map_server_entries",
        ] {
            assert_eq!(metric(&after, m), metric(&before, m), "{m}");
        }

        // Everything the map-server sent decodes cleanly in Wireshark.
        let payloads: Vec<Vec<u8>> = emitted.iter().map(|(_, p)| p.clone()).collect();
        for ((what, _), frame) in emitted.iter().zip(tshark::decode_payloads(&payloads)) {
            let want = if what.starts_with("Map-Notify") {
                "4"
            } else {
                "2"
            };
            assert_eq!(frame.all("lisp.type"), [want], "{what}");
            frame.assert_clean();
        }

        // A clean stop removes the control interface and its wireguard-go.
        let status = ms.stop().expect("the map-server stops on SIGTERM");
        assert!(status.success(), "exit status {status}:\n{}", ms.log());
        assert!(wireguard_go_pids(&ms_if).is_empty());
        assert!(!ms_ns.has_link(&ms_if), "{ms_if} is left");
    });
}

#[test]
fn restart_after_kill_9_serves_registrations_without_re_registration() {
    checked(|namespaces, ifnames| {
        let dir = tempdir();
        let ms_ns = Netns::new("m").unwrap();
        let a_ns = Netns::new("a").unwrap();
        namespaces.extend([&ms_ns, &a_ns].map(|n| n.name().to_owned()));
        link(
            &ms_ns,
            Some("203.0.113.1/24"),
            &a_ns,
            Some("203.0.113.2/24"),
        )
        .unwrap();
        let a = Client::new(
            &a_ns,
            "robot-a",
            "100.64.0.2",
            "10.1.0.1",
            "203.0.113.2",
            51820,
            "203.0.113.1",
        );
        let ms_if = unique("ms");
        ifnames.extend([ms_if.clone(), a.ifname()]);
        let config = write_config(dir.path(), &ms_if, &[&a]);

        let mut ms = start_ms(&ms_ns, &config);
        a.peer_with_ms();
        let mut nonce = 0x2000;
        let notify = a.register(&mut nonce);
        let wg_go = wireguard_go_pids(&ms_if);
        assert_eq!(wg_go.len(), 1, "one wireguard-go for the control interface");

        ms.kill9();
        // wireguard-go follows its parent (PR_SET_PDEATHSIG).
        assert!(
            wait_until(WAIT, || wireguard_go_pids(&ms_if).is_empty()),
            "wireguard-go outlived the killed map-server"
        );

        let t0 = Instant::now();
        let mut ms = start_ms(&ms_ns, &config);
        let ready = t0.elapsed();
        assert!(
            ms.log().contains("restored=1"),
            "the registration is restored from the store:\n{}",
            ms.log()
        );

        // The new wireguard-go has no session with A. A WireGuard peer that
        // keeps sending into a dead session only re-handshakes after 15 s, so
        // the node re-keys its map-server peer (as an agent does when a
        // request goes unanswered); it does not re-register.
        a.peer_with_ms();
        a.send_request(0xb1, "10.1.0.1");
        let (bytes, reply) = a.reply(0xb1);
        let answered = t0.elapsed();
        a.assert_mapped_by(&reply.records[0]);
        let m = metrics(&ms_ns);
        assert_eq!(
            metric(&m, "lispwg_map_server_map_registers_total"),
            Some(0.0),
            "no re-registration"
        );
        assert_eq!(metric(&m, "lispwg_map_server_entries"), Some(1.0));
        for frame in tshark::decode_payloads(&[notify, bytes]) {
            frame.assert_clean();
        }
        println!(
            "restart: ready {} ms after spawn, first positive Map-Reply {} ms after spawn",
            ready.as_millis(),
            answered.as_millis()
        );
        assert!(ms.stop().is_some_and(|s| s.success()));
    });
}

#[test]
fn check_config_and_status_report_problems_clearly() {
    require_root_and_tools(BASE_TOOLS).unwrap();
    let ms = binary("map-server");
    let dir = tempdir();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        secret_file(&path, text).unwrap();
        path
    };
    file("ms.key", &ms_key().to_base64());
    file("a.site", "site-a");
    let a_pub = wgctl::keys::PrivateKey::generate().public_key();
    let config = |control_address: &str, metrics: &str| {
        format!(
            r#"
[control]
interface = "lwcheck0"
private_key_file = "ms.key"
listen_port = 4340
address = "100.64.0.1/16"

[server]
state_dir = "state"
{metrics}

[[peers]]
name = "robot-a"
public_key = "{a_pub}"
control_address = "{control_address}"
site_key_file = "a.site"
eids = [{{ prefix = "10.1.0.1/32" }}, {{ prefix = "10.7.0.0/16", iid = 7, more_specifics = true }}]
"#
        )
    };
    let run = |args: &[&str]| {
        std::process::Command::new(&ms)
            .args(args)
            .output()
            .expect("run map-server")
    };

    let good = file("good.toml", &config("100.64.0.2", "metrics = \"\""));
    let out = run(&["check-config", "-c", good.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "OK",
        "lwcheck0",
        "100.64.0.1/16",
        "robot-a",
        "[0]10.1.0.1/32",
        "[7]10.7.0.0/16 (and more-specifics)",
    ] {
        assert!(text.contains(needle), "summary lacks {needle}:\n{text}");
    }

    let bad = file("bad.toml", &config("100.64.0.300", ""));
    let out = run(&["check-config", "-c", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for needle in [
        bad.to_str().unwrap(),
        "peers[0].control_address",
        "100.64.0.300",
    ] {
        assert!(err.contains(needle), "the error lacks {needle}: {err}");
    }

    // status: metrics disabled, then configured but nothing running there.
    let out = run(&["status", "-c", good.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("server.metrics is \"\" (disabled)"), "{err}");
    let ns = Netns::new("s").unwrap();
    let silent = file(
        "silent.toml",
        &config("100.64.0.2", &format!("metrics = \"{METRICS}\"")),
    );
    let out = ns
        .output(&[
            ms.to_str().unwrap(),
            "status",
            "-c",
            silent.to_str().unwrap(),
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(METRICS) && err.contains("is the daemon running"),
        "{err}"
    );
    let name = ns.name().to_owned();
    drop(ns);
    assert_no_leftovers(&[name], &[]);
}

/// A socket in `ns` on `addr`, reading with a short timeout.
fn socket_on(ns: &Netns, addr: &str) -> UdpSocket {
    let sock = ns.run(|| UdpSocket::bind(addr).unwrap()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock
}

#[test]
fn plain_listener_answers_lig_and_keyless_peers_only_to_their_source_and_notifies_no_keyless_peer()
{
    checked(|namespaces, ifnames| {
        let dir = tempdir();
        let ms_ns = Netns::new("m").unwrap();
        let a_ns = Netns::new("a").unwrap();
        let o_ns = Netns::new("o").unwrap();
        let s_ns = Netns::new("s").unwrap();
        namespaces.extend([&ms_ns, &a_ns, &o_ns, &s_ns].map(|n| n.name().to_owned()));
        link(&ms_ns, Some("192.0.2.1/24"), &a_ns, Some("192.0.2.2/24")).unwrap();
        link(
            &ms_ns,
            Some("198.51.100.1/24"),
            &o_ns,
            Some("198.51.100.2/24"),
        )
        .unwrap();
        let (_, s_if) = link(
            &ms_ns,
            Some("203.0.113.1/24"),
            &s_ns,
            Some("203.0.113.2/24"),
        )
        .unwrap();
        // The allowed lig host sits next to the stranger, at .3.
        s_ns.ip(&["addr", "add", "203.0.113.3/24", "dev", &s_if])
            .unwrap();
        // The plain listener is on 192.0.2.1; the others reach it through
        // the map-server's host.
        for (ns, via) in [(&o_ns, "198.51.100.1"), (&s_ns, "203.0.113.1")] {
            ns.ip(&["route", "add", "192.0.2.0/24", "via", via])
                .unwrap();
        }
        ms_ns.sysctl("net.ipv4.conf.all.rp_filter", "0").unwrap();
        ms_ns
            .sysctl("net.ipv4.conf.default.rp_filter", "0")
            .unwrap();
        let a = Client::new(
            &a_ns,
            "robot-a",
            "100.64.0.2",
            "10.1.0.1",
            "192.0.2.2",
            51820,
            "192.0.2.1",
        );
        let ms_if = unique("ms");
        ifnames.extend([ms_if.clone(), a.ifname()]);
        // A's configuration plus a keyless LISP peer (OOR) and lig's host.
        let config = write_config(dir.path(), &ms_if, &[&a]);
        secret_file(&dir.path().join("oor.site"), "oor-key").unwrap();
        let mut text = std::fs::read_to_string(&config).unwrap();
        text = text.replace(
            "[server]\n",
            "[server]\nplain_listen = \"192.0.2.1:4342\"\nplain_allowed = [\"203.0.113.3\"]\n",
        );
        text.push_str(
            "\n[[peers]]\nname = \"oor\"\ncontrol_address = \"198.51.100.2\"\n\
             site_key_file = \"oor.site\"\n\
             eids = [{ prefix = \"10.3.0.0/16\", more_specifics = true }]\n",
        );
        secret_file(&config, &text).unwrap();
        let mut ms = start_ms(&ms_ns, &config);
        a.peer_with_ms();
        let mut nonce = 0x3000;
        a.register(&mut nonce);
        let plain: SocketAddr = "192.0.2.1:4342".parse().unwrap();

        // OOR registers (HMAC-SHA-1) and is confirmed the same way.
        let oor = socket_on(&o_ns, "198.51.100.2:4342");
        let rec = EidRecord::new(
            EidPrefix::new(0, ip("10.3.1.0"), 24).unwrap(),
            10,
            vec![RlocRecord::new(1, 100, Address::from(ip("198.51.100.2")))],
        );
        let reg = MapRegister {
            auth: Authentication::unsigned(KeyId::HmacSha1),
            ..MapRegister::proxied(0x77, vec![rec])
        }
        .encode_signed(b"oor-key")
        .unwrap();
        oor.send_to(&reg, plain).unwrap();
        let confirm = recv(&oor).expect("OOR's registration is confirmed");
        assert_eq!(auth::verify(&confirm, b"oor-key"), Ok(KeyId::HmacSha1));

        // A resolves OOR's EID through the tunnel: the reply comes at once
        // (no 150 ms hold for a notify to OOR), and OOR hears nothing.
        let t0 = Instant::now();
        a.send_request(0xc1, "10.3.1.7");
        let (_, reply) = a.reply(0xc1);
        let waited = t0.elapsed();
        let (_, info) = reply.records[0].best_locator().unwrap();
        assert_eq!((info.rloc, info.wg_key), (ip("198.51.100.2"), None));
        assert!(waited < Duration::from_millis(100), "held {waited:?}");
        assert!(recv(&oor).is_none(), "an unsolicited Map-Notify to OOR");

        // A stranger learns nothing, in any form of request.
        let stranger = socket_on(&s_ns, "203.0.113.2:0");
        let port = stranger.local_addr().unwrap().port();
        let ask = |nonce: u64, itr: &str, src_port: u16| {
            MapRequest::for_eid(
                nonce,
                Address::None,
                ip(itr),
                EidPrefix::host(0, ip("10.1.0.1")),
            )
            .encapsulated(ip(itr), src_port, plain.ip())
            .encode()
            .unwrap()
        };
        stranger
            .send_to(&ask(0xd1, "203.0.113.2", port), plain)
            .unwrap();
        let bare = Message::MapRequest(MapRequest::for_eid(
            0xd2,
            Address::None,
            ip("203.0.113.2"),
            EidPrefix::host(0, ip("10.1.0.1")),
        ))
        .encode()
        .unwrap();
        stranger.send_to(&bare, plain).unwrap();
        assert!(recv(&stranger).is_none(), "the stranger got an answer");

        // lig from the allowed host, its inner IPv4 header checksum zero, and
        // its request naming the stranger's address (ITR-RLOC and inner
        // source): the reply goes to lig's own address, at the port it named.
        let lig = socket_on(&s_ns, "203.0.113.3:0");
        let lig_port = lig.local_addr().unwrap().port();
        let third = socket_on(&s_ns, &format!("203.0.113.2:{lig_port}"));
        let mut req = ask(0xe1, "203.0.113.2", lig_port);
        req[14..16].copy_from_slice(&[0, 0]);
        lig.send_to(&req, plain).unwrap();
        let bytes = recv(&lig)
            .unwrap_or_else(|| panic!("lig gets no answer:\n{}\n{}", metrics(&ms_ns), ms.log()));
        let Ok(Message::MapReply(r)) = parse(&bytes) else {
            panic!("not a Map-Reply: {:?}", parse(&bytes))
        };
        assert_eq!(r.nonce, 0xe1);
        a.assert_mapped_by(&r.records[0]);
        assert!(recv(&third).is_none(), "a reply went to the third address");

        let m = metrics(&ms_ns);
        assert_eq!(
            metric(&m, "lispwg_map_server_zero_checksum_requests_total"),
            Some(1.0)
        );
        assert_eq!(
            metric(&m, "lispwg_map_server_plain_refused_total"),
            Some(2.0)
        );
        assert_eq!(
            metric(&m, "lispwg_map_server_map_notifies_total"),
            Some(2.0),
            "the two confirmations only"
        );
        assert_eq!(
            metric(&m, "lispwg_map_server_notify_retransmits_total"),
            Some(0.0)
        );
        assert!(ms.stop().is_some_and(|s| s.success()));
    });
}
