//! The whole control plane in memory with fake time: map-server cores and
//! xtr cores wired by a fake network, each xtr with a fake data plane that
//! can fail on demand, and map-servers whose store can fail on demand.

use lisp_wire::*;
use map_server_core::{
    AllowedEid, ControlAction, MapServer, Mapping, PeerPolicy, Policy, StoreFault, StoreOp, Via,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use xtr_core::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A WireGuard peer as the fake WireGuard holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FakePeer {
    /// Configured, or learnt by roaming from the source of a handshake.
    endpoint: Option<SocketAddr>,
    rx: u64,
    tx: u64,
    allowed: Vec<EidPrefix>,
    keepalive: Option<u16>,
    last_init: Option<Instant>,
    handshake: Option<Instant>,
}

/// What the shell would have done to the host, and a WireGuard that
/// behaves like the real one where it matters: an initiation needs an
/// endpoint, at most one per 5 s per peer unless the peer is re-created,
/// crossed initiations at the same instant both fail, the responder learns
/// the initiator's endpoint (roaming).
#[derive(Debug, Default)]
struct Dataplane {
    peers: HashMap<[u8; 32], FakePeer>,
    routes: BTreeSet<EidPrefix>,
    reinjected: Vec<Vec<u8>>,
    delivered: Vec<Vec<u8>>,
    reapplied_port: u32,
    renewed_control_peers: Vec<usize>,
    control_endpoints: HashMap<usize, SocketAddr>,
    /// Fail the next N operations of this kind (see `DataplaneOp::name`).
    fail: HashMap<&'static str, u32>,
    failed: u32,
    /// Endpoints this node sent to: its NAT lets their answers in.
    opened: BTreeSet<SocketAddr>,
    punches: Vec<SocketAddr>,
    initiations: u32,
    crossed: u32,
    /// Every output in order, for ordering checks.
    log: Vec<String>,
    /// Name answers, in order, with the instant each was given.
    names: Vec<(NameQuery, NameAnswer, Instant)>,
}

impl Dataplane {
    /// Carries out one operation, or fails it as asked.
    fn apply(&mut self, op: &DataplaneOp) -> Result<(), DataplaneFault> {
        if let Some(n) = self.fail.get_mut(op.name()) {
            if *n > 0 {
                *n -= 1;
                self.failed += 1;
                return Err(DataplaneFault(format!("{} refused (test)", op.name())));
            }
        }
        match op {
            DataplaneOp::UpsertPeer {
                key,
                endpoint,
                allowed,
                keepalive,
                fresh,
            } => {
                let old = if *fresh { None } else { self.peers.remove(key) };
                let peer = FakePeer {
                    endpoint: endpoint.or(old.as_ref().and_then(|o| o.endpoint)),
                    rx: old.as_ref().map_or(0, |o| o.rx),
                    tx: old.as_ref().map_or(0, |o| o.tx),
                    allowed: allowed.clone(),
                    keepalive: *keepalive,
                    last_init: old.as_ref().and_then(|o| o.last_init),
                    handshake: old.as_ref().and_then(|o| o.handshake),
                };
                self.peers.insert(*key, peer);
            }
            DataplaneOp::RemovePeer { key } => {
                self.peers.remove(key);
            }
            DataplaneOp::AddRoute(p) => {
                self.routes.insert(*p);
            }
            DataplaneOp::DelRoute(p) => {
                self.routes.remove(p);
            }
            DataplaneOp::ReapplyListenPort => self.reapplied_port += 1,
            DataplaneOp::RenewControlPeer { map_server, .. } => {
                self.renewed_control_peers.push(*map_server)
            }
            DataplaneOp::SetControlEndpoint {
                map_server,
                endpoint,
            } => {
                self.control_endpoints.insert(*map_server, *endpoint);
            }
        }
        Ok(())
    }

    fn endpoint(&self, key: &[u8; 32]) -> Option<SocketAddr> {
        self.peers.get(key).and_then(|p| p.endpoint)
    }

    fn stats(&self, now: Instant) -> Vec<PeerStats> {
        self.peers
            .iter()
            .map(|(k, p)| PeerStats {
                key: *k,
                rx_bytes: p.rx,
                tx_bytes: p.tx,
                since_handshake: p.handshake.map(|h| now - h),
                endpoint: p.endpoint,
            })
            .collect()
    }
}

/// A NAT in front of a node.
#[derive(Debug, Clone, Copy)]
struct Nat {
    public: IpAddr,
    /// Endpoint-dependent mapping ("symmetric"): a new port per destination.
    edm: bool,
    /// Address-and-port-dependent filtering: only answers get in.
    filter: bool,
    /// Added to the node's port: a NAT that restarted maps it elsewhere.
    shift: u16,
}

struct Node {
    name: &'static str,
    ctl: IpAddr,
    eid: EidPrefix,
    key: [u8; 32],
    xtr: Xtr,
    dp: Dataplane,
    /// Addresses on the node's interfaces now.
    addrs: BTreeMap<&'static str, Vec<IpAddr>>,
    nat: Option<Nat>,
    /// Where the map-server's WireGuard last saw this node's control
    /// messages come from.
    seen_at: Option<SocketAddr>,
    /// Nonces of the Map-Registers it sent.
    register_nonces: BTreeSet<u64>,
    /// The register nonce reservation its shell saved (survives restarts).
    nonce_reserved: u64,
    /// The shell's relay proxy sockets: remote behind the relay → local.
    proxies: BTreeMap<SocketAddr, SocketAddr>,
    /// A probe under way: copies of what goes to this remote's proxy go
    /// straight to these, until then.
    mirror: Option<(SocketAddr, Vec<SocketAddr>, Instant)>,
    /// Its network lets only TCP out.
    udp_blocked: bool,
    /// Permissions it asked for on its allocations.
    permits: BTreeSet<IpAddr>,
}

/// The campus relay: coturn with one allocation per node at most.
#[derive(Debug)]
struct FakeRelay {
    ip: IpAddr,
    alive: bool,
    next_port: u16,
    /// By node: allocation id and relayed address.
    allocs: HashMap<usize, (u64, SocketAddr)>,
    /// Datagrams it relayed.
    relayed: u64,
}

/// The relay's address in the model.
const RELAY_IP: &str = "192.0.2.250";

fn grant() -> relay::Grant {
    relay::Grant {
        version: relay::grant::GRANT_VERSION,
        username: "1:robot".into(),
        password: "pw".into(),
        expires_unix: 1,
        servers: vec![relay::RelayServer {
            udp: Some(SocketAddr::new(ip(RELAY_IP), 3478)),
            tls: Some(SocketAddr::new(ip(RELAY_IP), 443)),
            tcp: None,
            tls_spki_sha256: Some(relay::spki_pin(b"k")),
        }],
    }
}

struct Ms {
    ctl: IpAddr,
    core: MapServer,
    alive: bool,
    /// Fail the next N store commits.
    fail_commits: u32,
    /// Everything committed: what survives a crash.
    disk: BTreeMap<EidPrefix, (Mapping, String)>,
}

struct Sim {
    now: Instant,
    nodes: Vec<Node>,
    servers: Vec<Ms>,
    /// Drop the next N control messages sent to this address.
    drop_to: HashMap<IpAddr, u32>,
    delivered: u64,
    relay: FakeRelay,
}

const NODES: [(&str, &str, &str, u8, &str); 3] = [
    ("A", "100.64.0.2", "10.0.0.1", 0xa, "192.0.2.10"),
    ("B", "100.64.0.3", "10.0.0.2", 0xb, "198.51.100.20"),
    ("C", "100.64.0.4", "10.0.0.3", 0xc, "203.0.113.30"),
];

/// Every node's RLOC interfaces: name, priority, weight.
const UPLINKS: [(&str, u8, u8); 3] = [("eth0", 1, 100), ("wlan", 2, 100), ("lte", 1, 50)];

fn peer_policies() -> Vec<PeerPolicy> {
    NODES
        .iter()
        .map(|&(name, ctl, eid, k, _)| PeerPolicy {
            name: name.into(),
            control_address: ip(ctl),
            wg_key: Some([k; 32]),
            site_key: format!("site-{name}").into_bytes(),
            allowed: vec![AllowedEid {
                prefix: EidPrefix::host(0, ip(eid)),
                more_specifics: false,
            }],
            team: map_server_core::DEFAULT_TEAM.into(),
            expires: None,
            revoked: false,
            rotated_from: None,
        })
        .collect()
}

fn map_server(now: Instant, seed: u64, ctl: IpAddr) -> MapServer {
    MapServer::new(
        Policy {
            peers: peer_policies(),
            control_address: Some(ctl),
            ..Policy::default()
        },
        now,
        seed,
    )
}

impl Sim {
    fn new(n_servers: usize) -> Self {
        let now = Instant::now();
        let ms_ctl: Vec<IpAddr> = (0..n_servers)
            .map(|i| ip(&format!("100.64.0.{}", 250 - i)))
            .collect();
        let servers = ms_ctl
            .iter()
            .enumerate()
            .map(|(i, &ctl)| Ms {
                ctl,
                core: map_server(now, 100 + i as u64, ctl),
                alive: true,
                fail_commits: 0,
                disk: BTreeMap::new(),
            })
            .collect();
        let nodes = NODES
            .iter()
            .enumerate()
            .map(|(i, &(name, ctl, eid, k, rloc))| {
                let site_key = format!("site-{name}").into_bytes();
                let map_servers = ms_ctl
                    .iter()
                    .enumerate()
                    .map(|(j, &c)| MapServerPeer {
                        name: format!("ms{j}"),
                        control_address: c,
                        site_key: site_key.clone(),
                        key_id: KeyId::HmacSha256,
                        endpoints: vec![
                            SocketAddr::new(ip("192.0.2.1"), 4340 + j as u16),
                            SocketAddr::new(ip("2001:db8::1"), 4340 + j as u16),
                        ],
                    })
                    .collect();
                let eid = EidPrefix::host(0, ip(eid));
                let uplinks = UPLINKS
                    .iter()
                    .map(|&(name, priority, weight)| RlocInterface {
                        name: name.into(),
                        priority,
                        weight,
                    })
                    .collect();
                let policy = XtrPolicy::new(
                    ip(ctl),
                    [k; 32],
                    51820 + i as u16,
                    vec![eid],
                    map_servers,
                    uplinks,
                );
                Node {
                    name,
                    ctl: ip(ctl),
                    eid,
                    key: [k; 32],
                    xtr: Xtr::new(policy, now, 7 + i as u64),
                    dp: Dataplane::default(),
                    addrs: BTreeMap::from([("eth0", vec![ip(rloc)])]),
                    nat: None,
                    seen_at: None,
                    register_nonces: BTreeSet::new(),
                    nonce_reserved: 0,
                    proxies: BTreeMap::new(),
                    mirror: None,
                    udp_blocked: false,
                    permits: BTreeSet::new(),
                }
            })
            .collect();
        let mut sim = Sim {
            now,
            nodes,
            servers,
            drop_to: HashMap::new(),
            delivered: 0,
            relay: FakeRelay {
                ip: ip(RELAY_IP),
                alive: true,
                next_port: 49152,
                allocs: HashMap::new(),
                relayed: 0,
            },
        };
        for i in 0..sim.nodes.len() {
            let events = sim.nodes[i]
                .addrs
                .iter()
                .flat_map(|(ifname, addrs)| addrs.iter().map(|a| address(ifname, *a, true)))
                .collect::<Vec<_>>();
            sim.nodes[i].xtr.handle_link_events(now, &events);
        }
        sim.settle();
        sim
    }

    fn node(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// Gives node `name` exactly these addresses (interface, address), in one
    /// batch of link events, as `ip -batch` would.
    fn set_addresses(&mut self, name: &str, addrs: &[(&'static str, &str)]) {
        let now = self.now;
        let node = self.node(name);
        let mut events = Vec::new();
        for (ifname, old) in &node.addrs {
            for a in old {
                events.push(address(ifname, *a, false));
            }
        }
        node.addrs.clear();
        for &(ifname, a) in addrs {
            node.addrs.entry(ifname).or_default().push(ip(a));
            events.push(address(ifname, ip(a), true));
        }
        node.xtr.handle_link_events(now, &events);
        self.settle();
    }

    /// Delivers every queued message until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(out) = self.nodes[i].xtr.poll_output() {
                    moved = true;
                    self.carry_out(i, out);
                }
            }
            for s in 0..self.servers.len() {
                if self.servers[s].alive {
                    moved |= self.commit(s);
                }
                while let Some(t) = self.servers[s].core.poll_transmit() {
                    moved = true;
                    let from = SocketAddr::new(self.servers[s].ctl, 4342);
                    if self.dropped(t.dst.ip()) {
                        continue;
                    }
                    let reachable = self
                        .nodes
                        .iter()
                        .position(|n| n.ctl == t.dst.ip())
                        .filter(|&j| self.control_path(j).is_some());
                    if let Some(n) = reachable.map(|j| &mut self.nodes[j]) {
                        if let Ok(Message::MapNotify(notify)) = lisp_wire::parse(&t.payload) {
                            // The answer to one of its Map-Registers.
                            let confirms_own = n.register_nonces.contains(&notify.nonce);
                            assert!(
                                !confirms_own || self.servers[s].disk.contains_key(&n.eid),
                                "map-server {s} confirmed {}'s registration before it was on disk",
                                n.name
                            );
                        }
                        self.delivered += 1;
                        n.xtr.handle_control(self.now, from, &t.payload);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("simulation does not settle");
    }

    /// Carries out map-server `s`'s commits, failing them as asked.
    fn commit(&mut self, s: usize) -> bool {
        let now = self.now;
        let ms = &mut self.servers[s];
        let mut moved = false;
        while let Some(c) = ms.core.poll_commit(now) {
            moved = true;
            if ms.fail_commits > 0 {
                ms.fail_commits -= 1;
                let fault = StoreFault("No space left on device (test)".into());
                ms.core.handle_commit_result(now, c.id, Err(fault));
                continue;
            }
            for op in c.ops {
                match op {
                    StoreOp::Put {
                        prefix,
                        mapping,
                        peer,
                    } => ms.disk.insert(prefix, (mapping, peer)),
                    StoreOp::Delete(prefix) => ms.disk.remove(&prefix),
                    StoreOp::Endpoint { .. } | StoreOp::RegisterNonce { .. } => None,
                };
            }
            ms.core.handle_commit_result(now, c.id, Ok(()));
        }
        while let Some((id, action)) = ms.core.poll_action() {
            moved = true;
            match action {
                // No NAT in this model: each node is seen where it registered.
                ControlAction::ReadEndpoints => {
                    // Where each node's WireGuard socket reaches the
                    // map-server from, after its NAT.
                    let seen = self.nodes.iter().map(|n| (n.key, n.seen_at)).collect();
                    ms.core.handle_endpoints(now, id, Ok(seen));
                }
                _ => ms.core.handle_action_result(now, id, Ok(())),
            }
        }
        moved
    }

    /// Node `i`'s agent restarts: a fresh core on a host whose data plane
    /// the old agent cleaned up, with the same addresses.
    fn restart_node(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        node.xtr = restarted(node, node.xtr.policy().clone(), now, 1000 + i as u64);
        node.dp = Dataplane::default();
        let events: Vec<LinkEvent> = node
            .addrs
            .iter()
            .flat_map(|(ifname, addrs)| addrs.iter().map(|a| address(ifname, *a, true)))
            .collect();
        node.xtr.handle_link_events(now, &events);
        self.settle();
    }

    /// Map-server `s` crashes and starts again: from what is on its disk,
    /// or (`wiped`) from nothing.
    fn restart_ms(&mut self, s: usize, wiped: bool) {
        let now = self.now;
        let ms = &mut self.servers[s];
        if wiped {
            ms.disk.clear();
        }
        ms.core = map_server(now, 900 + s as u64, ms.ctl);
        for (prefix, (mapping, peer)) in ms.disk.clone() {
            ms.core.restore(prefix, &peer, mapping, now);
        }
        ms.core.finish_restore();
        ms.alive = true;
        self.settle();
    }

    fn dropped(&mut self, to: IpAddr) -> bool {
        match self.drop_to.get_mut(&to) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    fn carry_out(&mut self, i: usize, out: Output) {
        let now = self.now;
        let node = &mut self.nodes[i];
        node.dp.log.push(match &out {
            Output::Transmit { payload, .. } => format!(
                "transmit {}",
                lisp_wire::parse(payload).map(|m| m.name()).unwrap_or("?")
            ),
            Output::Dataplane { op, .. } => op.name().into(),
            Output::Reinject(_) => "reinject".into(),
            Output::Deliver(_) => "deliver".into(),
            Output::ReadPeerStats => "read-stats".into(),
            Output::Punch { .. } => "punch".into(),
            Output::Relay(op) => format!("relay {op:?}"),
            Output::FetchRelayGrant { .. } => "fetch-relay-grant".into(),
            Output::NameAnswer { .. } => "name-answer".into(),
            // What the shell saves is not the data plane's business.
            Output::ReserveRegisterNonces { until } => {
                node.nonce_reserved = *until;
                return;
            }
        });
        match out {
            Output::ReserveRegisterNonces { .. } => {}
            Output::Transmit { dst, payload } => {
                if let Ok(Message::MapRegister(r)) = lisp_wire::parse(&payload) {
                    node.register_nonces.insert(r.nonce);
                }
                if let Ok(Message::MapNotifyAck(ack)) = lisp_wire::parse(&payload) {
                    // No ack without a peer: every mapping the notify carried
                    // is programmed, peer and route.
                    for r in &ack.records {
                        let (Ok(p), Some(key)) = (EidPrefix::of_record(r), r.wg_key()) else {
                            continue;
                        };
                        if p == node.eid {
                            continue;
                        }
                        assert!(
                            node.dp
                                .peers
                                .get(&key)
                                .is_some_and(|f| f.allowed.contains(&p)),
                            "{} acked a notify about {p} before programming its peer",
                            node.name
                        );
                    }
                }
                let from = SocketAddr::new(node.ctl, 4342);
                let Some(seen) = self.control_path(i) else {
                    return;
                };
                if self.dropped(dst.ip()) {
                    return;
                }
                // The map-server's WireGuard learns where it came from.
                self.nodes[i].seen_at = seen;
                if let Some(ms) = self
                    .servers
                    .iter_mut()
                    .find(|m| m.ctl == dst.ip() && m.alive)
                {
                    self.delivered += 1;
                    ms.core.handle_datagram(now, from, Via::Tunnel, &payload);
                }
            }
            Output::Dataplane { id, op } => {
                let result = node.dp.apply(&op);
                let ok = result.is_ok();
                node.xtr.handle_dataplane_result(now, id, result);
                if let (
                    true,
                    DataplaneOp::UpsertPeer {
                        key,
                        keepalive: Some(_),
                        ..
                    },
                ) = (ok, &op)
                {
                    // Switching a keepalive on sends one: a handshake if
                    // there is no session, a keepalive on it if there is.
                    if self.nodes[i]
                        .dp
                        .peers
                        .get(key)
                        .is_some_and(|p| p.handshake.is_some())
                    {
                        self.transmit(i, *key, 32);
                    } else {
                        self.initiate(i, *key);
                    }
                }
            }
            Output::Punch { to } => {
                node.dp.opened.insert(to);
                node.dp.punches.push(to);
            }
            Output::Reinject(p) => {
                // No re-injection without a route and a peer for it.
                let dst = IpAddr::V4(std::net::Ipv4Addr::new(p[16], p[17], p[18], p[19]));
                let route = node
                    .dp
                    .routes
                    .iter()
                    .find(|r| r.contains_addr(0, dst))
                    .copied();
                let peer = route.and_then(|r| {
                    node.dp
                        .peers
                        .iter()
                        .find(|(_, f)| f.allowed.contains(&r))
                        .map(|(k, _)| *k)
                });
                assert!(
                    peer.is_some(),
                    "{} re-injected a packet to {dst} with no peer and route for it",
                    node.name
                );
                node.dp.reinjected.push(p);
                if let Some(key) = peer {
                    self.initiate(i, key);
                }
            }
            Output::Deliver(p) => node.dp.delivered.push(p),
            Output::Relay(op) => self.carry_out_relay(i, op),
            Output::FetchRelayGrant { .. } => {
                let valid = Duration::from_secs(12 * 3600);
                node.xtr.handle_relay_grant(now, Ok((grant(), valid)));
            }
            Output::ReadPeerStats => {
                let stats = node.dp.stats(now);
                node.xtr.handle_peer_stats(now, &stats);
            }
            Output::NameAnswer { query, answer } => node.dp.names.push((query, answer, now)),
        }
    }

    /// Runs every timer up to `until`, settling the network after each.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        for _ in 0..100_000 {
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.xtr.poll_timeout())
                .chain(
                    self.servers
                        .iter()
                        .filter(|m| m.alive)
                        .filter_map(|m| m.core.poll_timeout()),
                )
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in &mut self.nodes {
                        n.xtr.handle_timeout(now);
                    }
                    for m in self.servers.iter_mut().filter(|m| m.alive) {
                        m.core.handle_timeout(now);
                    }
                    self.settle();
                }
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
        let stuck: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}: {:?}", n.name, n.xtr))
            .collect();
        panic!("timers never reach {by:?}: {}", stuck.join("\n\n"));
    }

    /// A packet from `from`'s EID to `to`, captured by `from`'s miss TUN.
    fn miss(&mut self, from: &str, to: &str, seq: u8) -> Vec<u8> {
        let src = self.node(from).eid.addr();
        let packet = icmp_echo(src, ip(to), seq);
        let now = self.now;
        self.node(from).xtr.handle_miss(now, packet.clone());
        self.settle();
        packet
    }
}

/// The map-server's underlay endpoint (its WireGuard socket).
const MS_UNDERLAY: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)), 4340);

/// The node's WireGuard socket on its own address.
fn local(n: &Node) -> Option<SocketAddr> {
    let addr = n.addrs.values().flatten().next()?;
    Some(SocketAddr::new(*addr, n.xtr.policy().wg_port))
}

/// Where a datagram from the node's WireGuard socket to `to` comes from,
/// after its NAT: the same public port for every destination (EIM), or one
/// per destination (EDM) but the map-server's.
fn source(n: &Node, to: SocketAddr) -> Option<SocketAddr> {
    let local = local(n)?;
    Some(match n.nat {
        None => local,
        Some(nat) if !nat.edm || to == MS_UNDERLAY => {
            SocketAddr::new(nat.public, local.port().wrapping_add(nat.shift))
        }
        Some(nat) => {
            let spread = to.port().wrapping_add(u16::from(to.ip().is_ipv4()) * 7) % 997 + 1;
            SocketAddr::new(nat.public, local.port().wrapping_add(spread + nat.shift))
        }
    })
}

impl Sim {
    /// Which node a datagram from node `from` to `to` reaches, through the
    /// NATs on the way.
    fn deliver(&self, from: usize, to: SocketAddr) -> Option<usize> {
        if self.nodes[from].udp_blocked {
            return None;
        }
        let src = source(&self.nodes[from], to)?;
        self.deliver_from(Some(from), src, to)
    }

    /// Which node a datagram from `src` (node `sender`'s, after its NAT, or
    /// the relay's) to `to` reaches.
    fn deliver_from(
        &self,
        sender: Option<usize>,
        src: SocketAddr,
        to: SocketAddr,
    ) -> Option<usize> {
        let sender_nat = sender.and_then(|s| self.nodes[s].nat);
        for (j, n) in self.nodes.iter().enumerate() {
            if Some(j) == sender || n.udp_blocked {
                continue;
            }
            let same_nat =
                matches!((sender_nat, n.nat), (Some(a), Some(b)) if a.public == b.public);
            if local(n) == Some(to) && (n.nat.is_none() || same_nat) {
                return Some(j);
            }
            let Some(nat) = n.nat else { continue };
            // Only the map-server's mapping of an EDM NAT is the one handed out.
            if source(n, MS_UNDERLAY) != Some(to) {
                continue;
            }
            let answer =
                n.dp.opened
                    .iter()
                    .any(|o| *o == src && (!nat.edm || *o == MS_UNDERLAY));
            if !nat.filter || answer {
                return Some(j);
            }
            return None;
        }
        None
    }

    /// Where a datagram node `from`'s WireGuard sends to `endpoint` ends
    /// up: the node it reaches, and the source that node's WireGuard sees.
    /// Through our relay proxy, to a relayed address, or direct.
    fn path(&mut self, from: usize, endpoint: SocketAddr) -> Option<(usize, SocketAddr)> {
        let remote = self.nodes[from]
            .proxies
            .iter()
            .find(|(_, l)| **l == endpoint)
            .map(|(r, _)| *r);
        if let Some(remote) = remote {
            if !self.relay.alive {
                return None;
            }
            let (_, ours) = *self.relay.allocs.get(&from)?;
            self.relay.relayed += 1;
            if remote.ip() == self.relay.ip {
                return self.arrive_at_relayed(ours, remote);
            }
            let j = self.deliver_from(None, ours, remote)?;
            return Some((j, ours));
        }
        self.path_direct(from, endpoint)
    }

    /// A datagram straight from node `from`'s WireGuard port.
    fn path_direct(&mut self, from: usize, endpoint: SocketAddr) -> Option<(usize, SocketAddr)> {
        if self.nodes[from].udp_blocked {
            return None;
        }
        let src = source(&self.nodes[from], endpoint)?;
        if endpoint.ip() == self.relay.ip {
            return self.arrive_at_relayed(src, endpoint);
        }
        let j = self.deliver(from, endpoint)?;
        Some((j, src))
    }

    /// A datagram from `src` arriving at relayed address `to`: the holder's
    /// proxy socket for `src` hands it to its WireGuard, if permitted.
    fn arrive_at_relayed(
        &mut self,
        src: SocketAddr,
        to: SocketAddr,
    ) -> Option<(usize, SocketAddr)> {
        if !self.relay.alive {
            return None;
        }
        let (&j, _) = self.relay.allocs.iter().find(|(_, (_, r))| *r == to)?;
        if src.ip() != self.relay.ip && !self.nodes[j].permits.contains(&src.ip()) {
            return None;
        }
        Some((j, self.proxy_for(j, src)))
    }

    /// Node `j`'s proxy socket for `remote`, made (and reported) if needed.
    fn proxy_for(&mut self, j: usize, remote: SocketAddr) -> SocketAddr {
        if let Some(l) = self.nodes[j].proxies.get(&remote) {
            return *l;
        }
        let local = SocketAddr::new(ip("127.0.0.1"), 30000 + self.nodes[j].proxies.len() as u16);
        self.nodes[j].proxies.insert(remote, local);
        let now = self.now;
        self.nodes[j]
            .xtr
            .handle_relay_event(now, RelayEvent::Proxy { remote, local });
        local
    }

    /// Node `i`'s WireGuard sends `bytes` to peer `key` on its session:
    /// counted as sent, and as received (the peer roaming to its source)
    /// if the path works. A probe's copy goes straight first; if it gets
    /// through, the relayed copy is a replay.
    fn transmit(&mut self, i: usize, key: [u8; 32], bytes: u64) -> bool {
        let Some(p) = self.nodes[i].dp.peers.get_mut(&key) else {
            return false;
        };
        p.tx += bytes;
        let (Some(endpoint), Some(_)) = (p.endpoint, p.handshake) else {
            return false;
        };
        // Sending through our NAT lets the answers in.
        self.nodes[i].dp.opened.insert(endpoint);
        let my_key = self.nodes[i].key;
        let mut arrivals = Vec::new();
        if let Some((remote, to, until)) = self.nodes[i].mirror.clone() {
            if self.now < until && self.nodes[i].proxies.get(&remote) == Some(&endpoint) {
                for d in to {
                    self.nodes[i].dp.opened.insert(d);
                    arrivals.extend(self.path_direct(i, d));
                }
            }
        }
        arrivals.extend(self.path(i, endpoint));
        for (j, src) in arrivals {
            if self.nodes[j].key != key {
                continue;
            }
            if let Some(back) = self.nodes[j].dp.peers.get_mut(&my_key) {
                if back.handshake.is_some() {
                    back.rx += bytes;
                    back.endpoint = Some(src); // roaming
                    return true;
                }
            }
        }
        false
    }

    /// A data packet from node `from`'s host to `to` (an EID), through its
    /// WireGuard as the kernel would route it. Returns whether it arrived.
    fn send_data(&mut self, from: usize, to: IpAddr) -> bool {
        let Some(&route) = self.nodes[from]
            .dp
            .routes
            .iter()
            .find(|r| r.contains_addr(0, to))
        else {
            return false;
        };
        let Some(key) = self.nodes[from]
            .dp
            .peers
            .iter()
            .find(|(_, p)| p.allowed.contains(&route))
            .map(|(k, _)| *k)
        else {
            return false;
        };
        self.transmit(from, key, 128)
    }

    /// Node `i`'s WireGuard starts a handshake with peer `key`, as the real
    /// one would: only with an endpoint and at most once per 5 s.
    fn initiate(&mut self, i: usize, key: [u8; 32]) {
        let now = self.now;
        let Some(p) = self.nodes[i].dp.peers.get_mut(&key) else {
            return;
        };
        let Some(to) = p.endpoint else { return };
        if p.handshake.is_some()
            || p.last_init
                .is_some_and(|t| now - t < Duration::from_secs(5))
        {
            return;
        }
        p.last_init = Some(now);
        self.nodes[i].dp.opened.insert(to);
        self.nodes[i].dp.initiations += 1;
        let Some((j, src)) = self.path(i, to) else {
            return;
        };
        let my_key = self.nodes[i].key;
        if self.nodes[j].key != key {
            return;
        }
        let Some(back) = self.nodes[j].dp.peers.get_mut(&my_key) else {
            return; // the responder does not know us: dropped
        };
        if back.last_init == Some(now) && back.handshake.is_none() {
            // Both initiated at once: each consumes the other's initiation
            // and drops the response to its own.
            self.nodes[i].dp.crossed += 1;
            return;
        }
        back.handshake = Some(now);
        back.endpoint = Some(src);
        // The response goes back the way the initiation came, which lets
        // it in (the initiator just sent that way).
        if let Some(p) = self.nodes[i].dp.peers.get_mut(&key) {
            p.handshake = Some(now);
        }
    }

    /// Where node `i`'s control tunnel reaches the map-server from (its
    /// relayed address when it runs through the relay), or `None` when it
    /// does not get out.
    fn control_path(&self, i: usize) -> Option<Option<SocketAddr>> {
        let n = &self.nodes[i];
        let through_proxy =
            n.dp.control_endpoints
                .values()
                .any(|e| n.proxies.values().any(|l| l == e));
        if through_proxy {
            if !self.relay.alive {
                return None;
            }
            return self.relay.allocs.get(&i).map(|(_, r)| Some(*r));
        }
        if n.udp_blocked {
            return None;
        }
        Some(source(n, MS_UNDERLAY))
    }

    /// Node `i` starts over with the relay on (`only`: everything through
    /// it).
    fn with_relay(&mut self, i: usize, only: bool) {
        let now = self.now;
        let mut policy = self.nodes[i].xtr.policy().clone();
        policy.relay = RelayPolicy {
            enabled: true,
            only,
        };
        let node = &mut self.nodes[i];
        node.xtr = restarted(node, policy, now, 500 + i as u64);
        node.dp = Dataplane::default();
        node.proxies.clear();
        let events: Vec<LinkEvent> = node
            .addrs
            .iter()
            .flat_map(|(ifname, addrs)| addrs.iter().map(|a| address(ifname, *a, true)))
            .collect();
        node.xtr.handle_link_events(now, &events);
        self.settle();
    }

    /// What node `i`'s shell does with a relay operation.
    fn carry_out_relay(&mut self, i: usize, op: RelayOp) {
        let now = self.now;
        match op {
            RelayOp::Allocate { id, transport, .. } => {
                let blocked = self.nodes[i].udp_blocked && transport == relay::Transport::Udp;
                if self.relay.alive && !blocked {
                    let relayed = SocketAddr::new(self.relay.ip, self.relay.next_port);
                    self.relay.next_port += 1;
                    self.relay.allocs.insert(i, (id, relayed));
                    self.nodes[i]
                        .xtr
                        .handle_relay_event(now, RelayEvent::Allocated { id, relayed });
                }
            }
            RelayOp::Release { id } => {
                if self.relay.allocs.get(&i).is_some_and(|a| a.0 == id) {
                    self.relay.allocs.remove(&i);
                }
            }
            RelayOp::Permit { ips } => self.nodes[i].permits = ips.into_iter().collect(),
            RelayOp::Proxy { remote } => {
                self.proxy_for(i, remote);
            }
            RelayOp::Check { nonce } => {
                if self.relay.alive && self.relay.allocs.contains_key(&i) {
                    self.nodes[i]
                        .xtr
                        .handle_relay_event(now, RelayEvent::CheckAnswered { nonce });
                }
            }
            RelayOp::Mirror {
                remote,
                to,
                duration,
            } => self.nodes[i].mirror = Some((remote, to, now + duration)),
        }
    }
}

fn address(ifname: &str, addr: IpAddr, added: bool) -> LinkEvent {
    LinkEvent::Address {
        ifname: ifname.into(),
        addr,
        added,
        tentative: false,
    }
}

fn icmp_echo(src: IpAddr, dst: IpAddr, seq: u8) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0];
    p.extend_from_slice(&s.octets());
    p.extend_from_slice(&d.octets());
    p.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, seq]);
    p
}

#[test]
fn nodes_register_with_every_map_server_and_refresh_with_jitter() {
    let mut sim = Sim::new(2);
    for n in &sim.nodes {
        assert!(
            n.xtr.map_servers().iter().all(|m| m.up && m.registered),
            "{}: {:?}",
            n.name,
            n.xtr.map_servers()
        );
    }
    for ms in &sim.servers {
        assert_eq!(ms.core.registry().len(), 3);
    }
    let before = sim.nodes[0].xtr.counters().registers;
    sim.advance(Duration::from_secs(300));
    let refreshes = sim.nodes[0].xtr.counters().registers - before;
    // Every 60 s ± 10 % to each of 2 map-servers over 300 s.
    assert!((8..=12).contains(&refreshes), "{refreshes} refreshes");
    assert_eq!(
        sim.servers[0].core.registry().len(),
        3,
        "refreshes keep registrations alive past the 180 s lifetime"
    );
}

#[test]
fn registration_retries_fast_until_the_first_notify() {
    let mut sim = Sim::new(1);
    let ms = sim.servers[0].ctl;
    // A fresh node whose first two registers are lost.
    sim.servers[0].alive = true;
    let now = sim.now;
    let a = sim.node("A");
    let mut fresh = restarted(a, a.xtr.policy().clone(), now, 99);
    sim.drop_to.insert(ms, 2);
    fresh.handle_link_events(sim.now, &[address("eth0", ip("192.0.2.10"), true)]);
    sim.nodes[0].xtr = fresh;
    sim.settle();
    assert!(!sim.nodes[0].xtr.map_servers()[0].registered);
    sim.advance(Duration::from_millis(2500));
    assert!(
        sim.nodes[0].xtr.map_servers()[0].registered,
        "registered within ~2 s of retries"
    );
    assert_eq!(sim.nodes[0].xtr.counters().registers, 3);
}

#[test]
fn first_packet_is_held_resolved_programmed_and_reinjected_and_the_destination_learns_the_source() {
    let mut sim = Sim::new(1);
    assert!(
        sim.node("B").dp.peers.is_empty(),
        "B knows nothing about A yet"
    );
    let packet = sim.miss("A", "10.0.0.2", 1);

    let (a_key, b_key) = (sim.node("A").key, sim.node("B").key);
    let a = sim.node("A");
    assert_eq!(
        a.dp.reinjected,
        vec![packet],
        "the first packet is delivered, not dropped"
    );
    let FakePeer {
        endpoint, allowed, ..
    } = &a.dp.peers[&b_key];
    assert_eq!(*endpoint, Some(SocketAddr::new(ip("198.51.100.20"), 51821)));
    assert_eq!(allowed, &vec![EidPrefix::host(0, ip("10.0.0.2"))]);
    assert!(a.dp.routes.contains(&EidPrefix::host(0, ip("10.0.0.2"))));
    let order: Vec<&str> =
        a.dp.log
            .iter()
            .map(String::as_str)
            .filter(|s| !s.starts_with("transmit") && *s != "read-stats" && *s != "punch")
            .collect();
    assert_eq!(
        order,
        ["upsert-peer", "add-route", "reinject"],
        "peer and route before re-injection"
    );
    assert_eq!(a.dp.initiations, 1, "A, which asked, initiates once");
    assert!(a.dp.peers[&b_key].handshake.is_some(), "on the first try");

    // B, told about A by the map-server, programmed A with no endpoint (it
    // cannot initiate, so nothing crosses), punched toward A, and acked:
    // all before A's reply left the map-server.
    let b = sim.node("B");
    assert_eq!(b.dp.initiations, 0, "the responder never initiates");
    assert_eq!(b.dp.punches, vec![SocketAddr::new(ip("192.0.2.10"), 51820)]);
    let ack_pos = b.dp.log.iter().position(|s| s == "transmit map-notify-ack");
    let upsert_pos = b.dp.log.iter().position(|s| s == "upsert-peer");
    assert!(upsert_pos < ack_pos, "peer before ack: {:?}", b.dp.log);
    assert!(
        !b.dp.log.iter().any(|s| s == "add-route"),
        "no route before the first handshake"
    );
    let FakePeer {
        endpoint, allowed, ..
    } = &b.dp.peers[&a_key];
    assert_eq!(
        *endpoint,
        Some(SocketAddr::new(ip("192.0.2.10"), 51820)),
        "learnt from A's handshake"
    );
    assert_eq!(allowed, &vec![EidPrefix::host(0, ip("10.0.0.1"))]);
    // B sees the handshake at its next look (10 ms) and routes A.
    sim.advance(Duration::from_millis(15));
    let b = sim.node("B");
    assert!(b.dp.routes.contains(&EidPrefix::host(0, ip("10.0.0.1"))));
    assert_eq!(b.xtr.counters().paths_established, 1);

    // A second packet to B raced the route: it is simply re-injected.
    sim.miss("A", "10.0.0.2", 2);
    assert_eq!(
        sim.node("A").xtr.counters().requests,
        1,
        "no second resolution"
    );
    assert_eq!(sim.node("A").dp.reinjected.len(), 2);
}

#[test]
fn unregistered_eid_gets_icmp_unreachable_and_is_negatively_cached() {
    let mut sim = Sim::new(1);
    let packet = sim.miss("A", "10.0.0.99", 1);
    let a = sim.node("A");
    assert_eq!(a.dp.delivered.len(), 1);
    let icmp = &a.dp.delivered[0];
    assert_eq!((icmp[20], icmp[21]), (3, 1), "ICMP host unreachable");
    assert_eq!(&icmp[28..], &packet[..]);
    assert!(a.dp.peers.is_empty());
    assert_eq!(a.xtr.counters().negative_replies, 1);
    sim.miss("A", "10.0.0.99", 2);
    assert_eq!(
        sim.node("A").xtr.counters().requests,
        1,
        "answered from the negative cache"
    );
    assert_eq!(sim.node("A").dp.delivered.len(), 2);
    // After the negative TTL (1 minute) the entry is gone.
    sim.advance(Duration::from_secs(62));
    sim.miss("A", "10.0.0.99", 3);
    assert_eq!(sim.node("A").xtr.counters().requests, 2);
}

#[test]
fn held_packets_are_bounded_in_count_and_bytes() {
    let mut sim = Sim::new(1);
    sim.servers[0].alive = false; // nothing answers: packets pile up
    let now = sim.now;
    let a = sim.node("A");
    let limit = a.xtr.policy().held_packets_per_eid;
    for i in 0..limit + 10 {
        a.xtr
            .handle_miss(now, icmp_echo(ip("10.0.0.1"), ip("10.0.0.2"), i as u8));
    }
    assert_eq!(a.xtr.counters().held_packets as usize, limit);
    assert_eq!(a.xtr.counters().dropped_packets, 10);
    // Byte bound: one big packet beyond the budget is dropped.
    let mut big = icmp_echo(ip("10.0.0.1"), ip("10.0.0.3"), 0);
    big.resize(a.xtr.policy().held_bytes_per_eid + 1, 0);
    a.xtr.handle_miss(now, big);
    assert_eq!(a.xtr.counters().dropped_packets, 11);
}

#[test]
fn requests_retry_with_backoff_then_answer_held_packets_with_icmp() {
    let mut sim = Sim::new(1);
    sim.servers[0].alive = false;
    sim.miss("A", "10.0.0.2", 1);
    let mut sends = Vec::new();
    let start = sim.now;
    for _ in 0..300 {
        sim.advance(Duration::from_millis(50));
        let c = sim.node("A").xtr.counters().clone();
        // The request and its retransmissions (what a renewed control
        // session re-sends at once is not a step of the backoff).
        if sends.len() < 1 + c.request_retransmits as usize {
            sends.push(sim.now - start);
        }
        if c.request_timeouts > 0 {
            break;
        }
    }
    let gaps: Vec<Duration> = sends.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        sends.len(),
        4,
        "one request and three retransmissions: {sends:?}"
    );
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "backoff grows: {gaps:?}"
    );
    assert_eq!(
        sim.node("A").dp.delivered.len(),
        1,
        "held packet answered with ICMP on timeout"
    );
    assert!(
        sim.now - start < Duration::from_secs(8),
        "gave up after {:?}",
        sim.now - start
    );
}

#[test]
fn idle_peers_are_removed_only_when_idle_at_both_ends() {
    let mut sim = Sim::new(1);
    sim.miss("A", "10.0.0.2", 1);
    let (a_key, b_key) = (sim.node("A").key, sim.node("B").key);
    let idle = sim.node("A").xtr.policy().idle_timeout;
    let stats = |key, bytes: u64, since: u64| PeerStats {
        key,
        rx_bytes: bytes,
        tx_bytes: bytes,
        since_handshake: Some(Duration::from_secs(since)),
        endpoint: None,
    };

    // Traffic keeps counters moving: nothing is removed.
    let t0 = sim.now;
    sim.node("A")
        .xtr
        .handle_peer_stats(t0, &[stats(b_key, 100, 1)]);
    sim.node("B")
        .xtr
        .handle_peer_stats(t0, &[stats(a_key, 100, 1)]);
    let t1 = t0 + idle / 2;
    sim.node("A")
        .xtr
        .handle_peer_stats(t1, &[stats(b_key, 200, 1)]);
    sim.node("B")
        .xtr
        .handle_peer_stats(t1, &[stats(a_key, 200, 1)]);
    let t2 = t1 + idle - Duration::from_secs(1);
    sim.node("A")
        .xtr
        .handle_peer_stats(t2, &[stats(b_key, 200, idle.as_secs() - 1)]);
    sim.settle();
    assert!(
        sim.node("A").dp.peers.contains_key(&b_key),
        "not idle long enough"
    );

    // Idle past the timeout with an old handshake, on both ends.
    let t3 = t1 + idle + Duration::from_secs(1);
    sim.node("A")
        .xtr
        .handle_peer_stats(t3, &[stats(b_key, 200, idle.as_secs() + 1)]);
    sim.node("B")
        .xtr
        .handle_peer_stats(t3, &[stats(a_key, 200, idle.as_secs() + 1)]);
    sim.settle();
    assert!(sim.node("A").dp.peers.is_empty() && sim.node("A").dp.routes.is_empty());
    assert!(sim.node("B").dp.peers.is_empty() && sim.node("B").dp.routes.is_empty());

    // A recent handshake keeps a peer even with flat counters.
    let mut sim = Sim::new(1);
    sim.miss("A", "10.0.0.2", 1);
    let t = sim.now;
    sim.node("A")
        .xtr
        .handle_peer_stats(t, &[stats(b_key, 5, 1)]);
    sim.node("A")
        .xtr
        .handle_peer_stats(t + idle * 2, &[stats(b_key, 5, 10)]);
    sim.settle();
    assert!(sim.node("A").dp.peers.contains_key(&b_key));
}

#[test]
fn a_mobile_node_moves_mid_flow_and_the_correspondent_is_pushed_the_new_rloc() {
    let mut sim = Sim::new(2);
    sim.miss("A", "10.0.0.2", 1);
    let b_key = sim.node("B").key;
    let new_rloc = ip("203.0.113.77");
    let now = sim.now;
    sim.set_addresses("B", &[("eth0", &new_rloc.to_string())]);
    assert_eq!(
        sim.node("B").dp.reapplied_port,
        1,
        "wireguard-go told to send from the new address"
    );
    let endpoint = sim.node("A").dp.endpoint(&b_key).unwrap();
    assert_eq!(
        endpoint,
        SocketAddr::new(new_rloc, 51821),
        "endpoint updated in place by the push"
    );
    assert_eq!(sim.node("A").xtr.counters().peers_updated, 1);
    assert_eq!(sim.node("A").xtr.counters().peers_removed, 0, "no teardown");
    for ms in &sim.servers {
        assert_eq!(
            ms.core
                .registry()
                .lookup(0, ip("10.0.0.2"), now)
                .unwrap()
                .1
                .rlocs[0]
                .addr,
            new_rloc
        );
    }
}

#[test]
fn one_map_server_dies_and_resolution_continues_then_it_is_re_registered_with() {
    let mut sim = Sim::new(2);
    sim.servers[0].alive = false;
    sim.miss("A", "10.0.0.3", 1);
    assert_eq!(
        sim.node("A").dp.reinjected.len(),
        1,
        "resolved through the surviving map-server"
    );
    let a_key = sim.nodes[0].key;
    assert!(sim.node("C").dp.peers.contains_key(&a_key));

    // A noticed at this resolution, not at the next refresh: the dead
    // map-server is probed, marked down, and its WireGuard peer renewed.
    sim.advance(Duration::from_secs(2));
    let a = sim.node("A");
    let status = a.xtr.map_servers();
    assert!(!status[0].up && status[1].up, "{status:?}");
    assert!(
        a.dp.renewed_control_peers.contains(&0),
        "control peer of the dead map-server renewed"
    );
    assert!(!a.dp.renewed_control_peers.contains(&1));

    // The dead one restarts empty; A re-registers within a retry period.
    let policy = sim.servers[1].core.policy().clone();
    sim.servers[0].core = MapServer::new(policy, sim.now, 555);
    sim.servers[0].alive = true;
    sim.advance(Duration::from_millis(1200));
    let t = sim.now;
    assert!(
        sim.servers[0]
            .core
            .registry()
            .lookup(0, ip("10.0.0.1"), t)
            .is_some(),
        "A re-registered with it"
    );
    assert!(sim.node("A").xtr.map_servers()[0].up);

    // Nodes that asked it nothing find out at their next refresh.
    sim.advance(Duration::from_secs(70));
    assert_eq!(
        sim.servers[0].core.registry().len(),
        3,
        "every node re-registered with it"
    );
}

#[test]
fn a_correspondent_that_misses_a_push_recovers_at_the_retransmission() {
    let mut sim = Sim::new(1);
    sim.miss("A", "10.0.0.2", 1);
    let b_key = sim.node("B").key;
    let a_ctl = sim.node("A").ctl;
    sim.drop_to.insert(a_ctl, 1);
    let new_rloc = ip("203.0.113.88");

    sim.set_addresses("B", &[("eth0", &new_rloc.to_string())]);
    assert_ne!(
        sim.node("A").dp.endpoint(&b_key).unwrap().ip(),
        new_rloc,
        "the push was lost"
    );
    sim.advance(Duration::from_millis(150));
    assert_eq!(
        sim.node("A").dp.endpoint(&b_key).unwrap().ip(),
        new_rloc,
        "recovered by the map-server's retransmission"
    );
    assert_eq!(sim.servers[0].core.pending_notifies(), 0, "acknowledged");
}

#[test]
fn a_register_lost_during_a_move_is_repeated_within_milliseconds() {
    let mut sim = Sim::new(1);
    sim.miss("A", "10.0.0.2", 1);
    let b_key = sim.node("B").key;
    let ms = sim.servers[0].ctl;

    // The address goes away, then the new one comes; the first register
    // from it is lost (the new default route is not in place yet).
    sim.set_addresses("B", &[]);
    sim.drop_to.insert(ms, 1);
    let new_rloc = ip("198.51.100.30");
    sim.set_addresses("B", &[("eth0", &new_rloc.to_string())]);
    assert_eq!(
        sim.node("B").dp.reapplied_port,
        1,
        "port re-applied once the new address is there"
    );
    assert_ne!(sim.node("A").dp.endpoint(&b_key).unwrap().ip(), new_rloc);
    sim.advance(Duration::from_millis(80));
    assert_eq!(
        sim.node("A").dp.endpoint(&b_key).unwrap().ip(),
        new_rloc,
        "repeated register reached the map-server and A was pushed"
    );
}

#[test]
fn a_multihomed_node_registers_both_rlocs_and_correspondents_follow_the_best_that_is_up() {
    let mut sim = Sim::new(1);
    let now = sim.now;
    let (wifi, lte) = (ip("203.0.113.10"), ip("198.51.100.40"));
    // B has two uplinks; the second has the better (lower) priority.
    sim.set_addresses(
        "B",
        &[("wlan", &wifi.to_string()), ("lte", &lte.to_string())],
    );
    let registered = sim.servers[0]
        .core
        .registry()
        .lookup(0, ip("10.0.0.2"), now)
        .unwrap()
        .1
        .rlocs
        .clone();
    assert_eq!(registered.len(), 2, "both RLOCs registered: {registered:?}");
    assert_eq!(
        (registered[0].addr, registered[0].priority),
        (lte, 1),
        "best first"
    );

    sim.miss("A", "10.0.0.2", 1);
    let b_key = sim.node("B").key;
    assert_eq!(
        sim.node("A").dp.endpoint(&b_key).unwrap().ip(),
        lte,
        "A uses the best RLOC"
    );

    // The better uplink goes down: B re-registers without it, A is pushed.
    sim.set_addresses("B", &[("wlan", &wifi.to_string())]);
    assert_eq!(
        sim.servers[0]
            .core
            .registry()
            .lookup(0, ip("10.0.0.2"), now)
            .unwrap()
            .1
            .rlocs
            .len(),
        1
    );
    assert_eq!(
        sim.node("A").dp.endpoint(&b_key).unwrap().ip(),
        wifi,
        "A moved to the remaining RLOC"
    );
}

// ---- failing data planes and stores ---------------------------------------

#[test]
fn a_failed_peer_upsert_is_retried_and_the_packet_waits_for_it() {
    let mut sim = Sim::new(1);
    sim.node("A").dp.fail.insert("upsert-peer", 2);
    let packet = sim.miss("A", "10.0.0.2", 1);
    assert!(
        sim.node("A").dp.reinjected.is_empty(),
        "not re-injected into a data plane that refused the peer"
    );
    assert_eq!(sim.node("A").xtr.counters().dataplane_failures, 1);
    sim.advance(Duration::from_millis(100));
    let a = sim.node("A");
    assert_eq!(a.dp.failed, 2, "retried after each failure");
    assert_eq!(a.dp.reinjected, vec![packet], "delivered once programmed");
    assert!(a.xtr.dataplane_settled());
    let order: Vec<&str> =
        a.dp.log
            .iter()
            .map(String::as_str)
            .filter(|s| !s.starts_with("transmit") && *s != "read-stats" && *s != "punch")
            .collect();
    assert_eq!(
        order[..5],
        [
            "upsert-peer",
            "upsert-peer",
            "upsert-peer",
            "add-route",
            "reinject"
        ],
        "no route before the peer is in place"
    );
}

#[test]
fn a_failed_route_holds_the_packet_until_the_route_is_in_place() {
    let mut sim = Sim::new(1);
    sim.node("A").dp.fail.insert("add-route", 1);
    let packet = sim.miss("A", "10.0.0.2", 1);
    assert!(sim.node("A").dp.reinjected.is_empty());
    // A second packet to the same EID meanwhile: held too, not re-injected
    // into the miss TUN.
    sim.miss("A", "10.0.0.2", 2);
    assert!(sim.node("A").dp.reinjected.is_empty());
    sim.advance(Duration::from_millis(50));
    let a = sim.node("A");
    assert_eq!(a.dp.reinjected.len(), 2);
    assert_eq!(a.dp.reinjected[0], packet);
}

#[test]
fn the_destination_acks_only_once_its_peer_is_programmed() {
    let mut sim = Sim::new(1);
    sim.node("B").dp.fail.insert("upsert-peer", 1);
    let packet = sim.miss("A", "10.0.0.2", 1);
    let ms = &sim.servers[0].core;
    assert_eq!(ms.pending_notifies(), 1, "B has not acked");
    assert!(sim.node("A").dp.reinjected.is_empty(), "A's reply is held");
    sim.advance(Duration::from_millis(30));
    assert_eq!(
        sim.servers[0].core.pending_notifies(),
        0,
        "acked after the retry"
    );
    assert_eq!(sim.node("A").dp.reinjected, vec![packet]);
    let a_key = sim.node("A").key;
    assert!(sim.node("B").dp.peers.contains_key(&a_key));
}

#[test]
fn a_data_plane_that_keeps_failing_answers_held_packets_with_icmp_then_recovers() {
    let mut sim = Sim::new(1);
    sim.node("A").dp.fail.insert("upsert-peer", u32::MAX);
    sim.miss("A", "10.0.0.2", 1);
    let patience = sim.node("A").xtr.policy().dataplane_patience;
    sim.advance(patience + Duration::from_millis(10));
    let a = sim.node("A");
    assert!(a.dp.reinjected.is_empty());
    assert_eq!(
        a.dp.delivered.len(),
        1,
        "ICMP unreachable, not a silent drop"
    );
    assert!(a.dp.failed > 3, "kept retrying: {}", a.dp.failed);
    assert!(!a.xtr.dataplane_settled());
    // The data plane comes back: the wanted peer is programmed by itself.
    a.dp.fail.clear();
    sim.advance(Duration::from_secs(2));
    let b_key = sim.node("B").key;
    let a = sim.node("A");
    assert!(a.xtr.dataplane_settled());
    assert!(a.dp.peers.contains_key(&b_key));
    // And the next packet goes straight through.
    let packet = sim.miss("A", "10.0.0.2", 2);
    assert_eq!(sim.node("A").dp.reinjected, vec![packet]);
}

#[test]
fn a_full_disk_withholds_confirmations_and_registrations_are_confirmed_once_it_is_back() {
    let mut sim = Sim::new(1);
    sim.servers[0].fail_commits = 5;
    // B moves: its new registration cannot be persisted for a while.
    sim.set_addresses("B", &[("eth0", "198.51.100.99")]);
    assert!(
        sim.servers[0].core.store_fault().is_some(),
        "the fault is visible"
    );
    // The Sim asserts on every delivery that nothing is confirmed before it
    // is on disk. Within a few seconds the retries get through.
    sim.advance(Duration::from_secs(5));
    let ms = &sim.servers[0];
    assert!(
        ms.core.store_fault().is_none(),
        "recovered without a restart"
    );
    let (m, _) = ms.disk.get(&EidPrefix::host(0, ip("10.0.0.2"))).unwrap();
    assert_eq!(
        m.rlocs[0].addr,
        ip("198.51.100.99"),
        "the new RLOC is on disk"
    );
    assert!(ms.core.counters().withheld_notifies > 0);
    assert!(sim.node("B").xtr.map_servers()[0].up);
}

#[test]
fn a_map_server_restarted_from_its_disk_still_serves_confirmed_registrations() {
    let mut sim = Sim::new(1);
    sim.restart_ms(0, false);
    assert_eq!(sim.servers[0].core.registry().len(), 3);
    let packet = sim.miss("A", "10.0.0.3", 1);
    assert_eq!(sim.node("A").dp.reinjected, vec![packet]);
}

// ---- randomised scenarios -------------------------------------------------

mod scenarios {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Miss(usize, usize),
        Move(usize, u8),
        Drop(usize, u32),
        FailDataplane(usize, usize, u32),
        FailCommits(u32),
        RestartMs(bool),
        RestartNode(usize),
        /// Behind an endpoint-independent, filtering NAT, or not.
        Natted(usize, bool),
        /// The node starts over with the relay on.
        WithRelay(usize),
        /// coturn restarts: every allocation is gone.
        RelayRestart,
        /// A asks B's name (or, for 3, a name nobody has).
        Name(usize, usize),
        Advance(u64),
    }

    const OPS: [&str; 4] = ["upsert-peer", "add-route", "remove-peer", "delete-route"];

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..3usize, 0..3usize).prop_map(|(a, b)| Step::Miss(a, b)),
            2 => (0..3usize, 1..250u8).prop_map(|(n, o)| Step::Move(n, o)),
            1 => (0..4usize, 1..3u32).prop_map(|(t, n)| Step::Drop(t, n)),
            2 => (0..3usize, 0..OPS.len(), 1..4u32)
                .prop_map(|(n, o, k)| Step::FailDataplane(n, o, k)),
            1 => (1..4u32).prop_map(Step::FailCommits),
            1 => any::<bool>().prop_map(Step::RestartMs),
            1 => (0..3usize).prop_map(Step::RestartNode),
            2 => (0..3usize, any::<bool>()).prop_map(|(n, on)| Step::Natted(n, on)),
            1 => (0..3usize).prop_map(Step::WithRelay),
            1 => Just(Step::RelayRestart),
            2 => (0..3usize, 0..4usize).prop_map(|(a, b)| Step::Name(a, b)),
            3 => (1..3000u64).prop_map(Step::Advance),
        ]
    }

    proptest! {
        // 48 cases by default; PROPTEST_CASES=N for a longer search.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
            ..ProptestConfig::default()
        })]

        /// Moves, losses, restarts and failures in any order. The Sim checks
        /// on every step that no ack goes out without its peer, no packet is
        /// re-injected without a peer and route, and no registration is
        /// confirmed before it is on disk. Afterwards, with the failures
        /// over, everything converges: every data plane matches what its
        /// core wants, every node is registered, and every node reaches
        /// every other on the first packet.
        #[test]
        fn failures_in_any_order_never_break_the_promises(steps in prop::collection::vec(step(), 1..30)) {
            let mut sim = Sim::new(1);
            // Name questions per node since its last start: each must get
            // exactly one answer, whatever happens.
            let mut asked: [Vec<u64>; 3] = Default::default();
            let mut next_query = 0;
            for s in steps {
                match s {
                    Step::Name(a, b) => {
                        let name = match sim.nodes.get(b) {
                            Some(n) => format!("{}.lispwg.internal", n.name),
                            None => "nobody.lispwg.internal".into(),
                        };
                        next_query += 1;
                        asked[a].push(next_query);
                        let from = sim.nodes[a].name;
                        sim.ask_name(from, next_query, &name);
                    }
                    Step::RestartNode(n) => {
                        asked[n].clear();
                        sim.restart_node(n);
                    }
                    Step::Miss(a, b) => {
                        let to = sim.nodes[b].eid.addr().to_string();
                        let from = sim.nodes[a].name;
                        sim.miss(from, &to, 1);
                    }
                    Step::Move(n, octet) => {
                        let name = sim.nodes[n].name;
                        sim.set_addresses(name, &[("eth0", &format!("203.0.113.{octet}"))]);
                    }
                    Step::Drop(target, n) => {
                        let to = if target < 3 { sim.nodes[target].ctl } else { sim.servers[0].ctl };
                        sim.drop_to.insert(to, n);
                    }
                    Step::FailDataplane(n, op, k) => {
                        sim.nodes[n].dp.fail.insert(OPS[op], k);
                    }
                    Step::FailCommits(k) => sim.servers[0].fail_commits = k,
                    Step::RestartMs(wiped) => sim.restart_ms(0, wiped),
                    Step::Natted(n, true) => {
                        let name = sim.nodes[n].name;
                        let private = format!("10.{}.1.5", 20 + n);
                        let public = format!("198.51.100.{}", 70 + n);
                        sim.behind_nat(name, &private, &public, false, true);
                    }
                    Step::Natted(n, false) => {
                        let name = sim.nodes[n].name;
                        sim.nodes[n].nat = None;
                        sim.set_addresses(name, &[("eth0", &format!("192.0.2.{}", 40 + n))]);
                    }
                    Step::WithRelay(n) => {
                        // A restart too: questions die with the process.
                        asked[n].clear();
                        sim.with_relay(n, false);
                    }
                    Step::RelayRestart => sim.relay.allocs.clear(),
                    Step::Advance(ms) => sim.advance(Duration::from_millis(ms)),
                }
            }
            // The failures end; the system converges by itself.
            for n in &mut sim.nodes {
                n.dp.fail.clear();
            }
            sim.servers[0].fail_commits = 0;
            sim.drop_to.clear();
            // A map-server restarted without its store learns each node again
            // at the node's next refresh (60 s ± 10 %).
            sim.advance(Duration::from_secs(70));
            for (n, qs) in sim.nodes.iter().zip(&asked) {
                let mut answered: Vec<u64> = n.dp.names.iter().map(|(q, _, _)| q.0).collect();
                answered.sort();
                prop_assert_eq!(&answered, qs, "{}: every name question answered once", n.name);
                prop_assert!(
                    n.dp.names.iter().all(|(_, a, _)| *a != NameAnswer::NotOurs),
                    "{}: a name in the domain was not ours", n.name
                );
            }
            for n in &sim.nodes {
                prop_assert!(n.xtr.dataplane_settled(), "{}: data plane never caught up", n.name);
                prop_assert!(n.xtr.map_servers()[0].up, "{}: not registered", n.name);
                prop_assert!(sim.servers[0].disk.contains_key(&n.eid), "{}: registration not on disk", n.name);
            }
            for a in 0..3 {
                for b in 0..3 {
                    if a == b {
                        continue;
                    }
                    let before = sim.nodes[a].dp.reinjected.len();
                    let (from, to) = (sim.nodes[a].name, sim.nodes[b].eid.addr().to_string());
                    sim.miss(from, &to, 9);
                    sim.advance(Duration::from_millis(200));
                    prop_assert_eq!(
                        sim.nodes[a].dp.reinjected.len(), before + 1,
                        "{} -> {}: the packet was not delivered", from, to
                    );
                }
            }
            // And every node resolves every other's name to its EID.
            for a in 0..3 {
                for b in 0..3 {
                    next_query += 1;
                    let from = sim.nodes[a].name;
                    let name = format!("{}.lispwg.internal", sim.nodes[b].name);
                    sim.ask_name(from, next_query, &name);
                    sim.advance(Duration::from_millis(50));
                    let got = sim.name_answer(from, next_query).map(|(a, _)| a);
                    let want = sim.nodes[b].eid.addr();
                    prop_assert!(
                        matches!(&got, Some(NameAnswer::Addresses { addrs, .. }) if addrs == &vec![want]),
                        "{} asked {}: {:?}", from, name, got
                    );
                }
            }
        }
    }
}

// ---- NAT traversal ----------------------------------------------------------

impl Sim {
    /// Puts node `name` behind a NAT: its address becomes `private`, and the
    /// world sees it at `public`.
    fn behind_nat(&mut self, name: &str, private: &str, public: &str, edm: bool, filter: bool) {
        self.node(name).nat = Some(Nat {
            public: ip(public),
            edm,
            filter,
            shift: 0,
        });
        self.set_addresses(name, &[("eth0", private)]);
        // It re-registered from behind the NAT; let the map-server see it.
        self.advance(Duration::from_millis(5));
    }

    fn established(&mut self, name: &str, peer: &str) -> bool {
        let key = self.node(peer).key;
        self.node(name)
            .dp
            .peers
            .get(&key)
            .is_some_and(|p| p.handshake.is_some())
    }
}

#[test]
fn two_nodes_behind_filtering_nats_connect_directly_on_the_first_try() {
    let mut sim = Sim::new(1);
    sim.behind_nat("A", "10.20.1.5", "198.51.100.7", false, true);
    sim.behind_nat("B", "10.30.1.5", "203.0.113.9", false, true);
    let b_key = sim.node("B").key;
    let packet = sim.miss("A", "10.0.0.2", 1);
    let a = sim.node("A");
    assert_eq!(a.dp.reinjected, vec![packet], "first packet delivered");
    assert_eq!(
        a.dp.endpoint(&b_key),
        Some(SocketAddr::new(ip("203.0.113.9"), 51821)),
        "the other NAT's public endpoint, not B's private address"
    );
    assert_eq!(a.dp.initiations, 1, "one initiation: it got through");
    assert_eq!(a.xtr.counters().path_failovers, 0);
    assert!(sim.established("A", "B"));
    let b = sim.node("B");
    assert_eq!(b.dp.punches[0], SocketAddr::new(ip("198.51.100.7"), 51820));
    assert_eq!(b.dp.initiations, 0);
    sim.advance(Duration::from_millis(20));
    assert!(sim
        .node("B")
        .dp
        .routes
        .contains(&EidPrefix::host(0, ip("10.0.0.1"))));
}

#[test]
fn a_public_node_and_a_natted_node_connect_in_both_directions() {
    for (from, to, to_eid) in [("A", "B", "10.0.0.2"), ("B", "A", "10.0.0.1")] {
        let mut sim = Sim::new(1);
        sim.behind_nat("B", "10.30.1.5", "203.0.113.9", false, true);
        let packet = sim.miss(from, to_eid, 1);
        assert_eq!(sim.node(from).dp.reinjected, vec![packet], "{from} -> {to}");
        assert!(sim.established(from, to), "{from} -> {to}");
        assert_eq!(sim.node(from).xtr.counters().path_failovers, 0);
    }
}

#[test]
fn two_nodes_behind_the_same_nat_connect_by_their_private_addresses() {
    let mut sim = Sim::new(1);
    sim.behind_nat("A", "10.20.1.5", "198.51.100.7", false, true);
    sim.behind_nat("B", "10.20.1.6", "198.51.100.7", false, true);
    let b_key = sim.node("B").key;
    sim.miss("A", "10.0.0.2", 1);
    assert_eq!(
        sim.node("A").dp.endpoint(&b_key),
        Some(SocketAddr::new(ip("10.20.1.6"), 51821)),
        "no hairpin: the private address"
    );
    assert!(sim.established("A", "B"));
}

#[test]
fn a_pair_that_resolves_each_other_at_the_same_moment_never_crosses() {
    let mut sim = Sim::new(1);
    sim.behind_nat("A", "10.20.1.5", "198.51.100.7", false, true);
    sim.behind_nat("B", "10.30.1.5", "203.0.113.9", false, true);
    // Both misses are read before either request is answered.
    let now = sim.now;
    let to_b = icmp_echo(ip("10.0.0.1"), ip("10.0.0.2"), 1);
    let to_a = icmp_echo(ip("10.0.0.2"), ip("10.0.0.1"), 1);
    sim.node("A").xtr.handle_miss(now, to_b.clone());
    sim.node("B").xtr.handle_miss(now, to_a.clone());
    sim.settle();
    sim.advance(Duration::from_millis(50));
    let (a, b) = (&sim.nodes[0].dp, &sim.nodes[1].dp);
    assert_eq!(a.crossed + b.crossed, 0, "no crossed initiations");
    assert_eq!(
        a.initiations + b.initiations,
        1,
        "exactly one side initiated"
    );
    assert!(a.reinjected.contains(&to_b) && b.reinjected.contains(&to_a));
    assert!(sim.established("A", "B") && sim.established("B", "A"));
    assert_eq!(sim.servers[0].core.counters().crossed_requests, 1);
}

#[test]
fn a_failed_first_attempt_moves_on_within_milliseconds_without_losing_the_packet() {
    let mut sim = Sim::new(1);
    // B's NAT does not hairpin and B's first candidate is unreachable: a
    // mapping with two candidates, the first dead.
    sim.behind_nat("B", "10.30.1.5", "203.0.113.9", false, true);
    let b_key = sim.node("B").key;
    // B registers a global IPv6 address too, that nobody can reach here.
    sim.set_addresses("B", &[("eth0", "10.30.1.5"), ("lte", "2001:db8:9::5")]);
    sim.advance(Duration::from_millis(5));
    // A has IPv6 too, so it tries B's IPv6 first.
    sim.set_addresses("A", &[("eth0", "192.0.2.10"), ("lte", "2001:db8:1::10")]);
    sim.advance(Duration::from_millis(5));
    let packet = sim.miss("A", "10.0.0.2", 1);
    assert_eq!(
        sim.node("A").dp.endpoint(&b_key).map(|e| e.is_ipv6()),
        Some(true),
        "tries IPv6 first"
    );
    sim.advance(Duration::from_millis(1000));
    let a = sim.node("A");
    assert_eq!(
        a.dp.endpoint(&b_key),
        Some(SocketAddr::new(ip("203.0.113.9"), 51821)),
        "moved to the next candidate"
    );
    assert!(a.xtr.counters().path_failovers >= 1);
    assert!(sim.established("A", "B"));
    let a = sim.node("A");
    assert!(
        a.dp.reinjected.iter().filter(|p| **p == packet).count() >= 2,
        "the first packet went again through the fresh peer"
    );
    assert!(a.dp.delivered.is_empty(), "nothing answered with ICMP");
}

#[test]
fn a_symmetric_nat_facing_a_public_node_still_connects_when_the_natted_side_initiates() {
    let mut sim = Sim::new(1);
    sim.behind_nat("B", "10.30.1.5", "203.0.113.9", true, true);
    // A (public) asks: its handshakes to B's observed endpoint never get
    // through B's symmetric NAT. After A gives up, B (the responder) takes
    // over; its initiation reaches A directly.
    let packet = sim.miss("A", "10.0.0.2", 1);
    sim.advance(Duration::from_secs(4));
    assert!(sim.established("B", "A"), "B reached A");
    assert!(sim.node("A").xtr.counters().paths_failed >= 1);
    let _ = packet;
}

#[test]
fn symmetric_and_filtering_nats_fail_cleanly_with_icmp() {
    let mut sim = Sim::new(1);
    sim.behind_nat("A", "10.20.1.5", "198.51.100.7", false, true);
    sim.behind_nat("B", "10.30.1.5", "203.0.113.9", true, true);
    sim.miss("A", "10.0.0.2", 1);
    sim.advance(Duration::from_secs(6));
    assert!(!sim.established("A", "B"));
    let a = sim.node("A");
    assert!(a.xtr.counters().paths_failed >= 1);
    assert_eq!(
        a.dp.delivered.len(),
        1,
        "the held packet is answered, not left hanging"
    );
    let crossed = a.dp.crossed;
    let b = sim.node("B");
    assert!(b.xtr.counters().paths_failed >= 1, "B gave up too");
    assert_eq!(crossed + b.dp.crossed, 0);
}

#[test]
fn a_node_whose_own_attempts_failed_waits_when_the_peer_asks_for_it_again() {
    // Found by the randomised scenarios: B resolved A while A's agent was
    // restarting, its attempts failed, and then B went behind a NAT. When A
    // asks for B, B must switch to waiting (and punch), not keep trying.
    let mut sim = Sim::new(1);
    sim.restart_ms(0, true);
    sim.restart_node(0);
    sim.miss("B", "10.0.0.1", 1);
    sim.restart_ms(0, false);
    sim.set_addresses("A", &[("eth0", "203.0.113.1")]);
    sim.behind_nat("B", "10.21.1.5", "198.51.100.71", false, true);
    sim.advance(Duration::from_secs(70));
    let packet = sim.miss("A", "10.0.0.2", 9);
    sim.advance(Duration::from_millis(200));
    assert_eq!(
        sim.node("A").dp.reinjected,
        vec![packet],
        "once, on the first try"
    );
    assert!(sim.established("A", "B"));
    assert!(!sim.node("B").dp.punches.is_empty());
}

#[test]
fn a_nat_that_remaps_a_sending_node_is_recovered_from_within_a_second() {
    let mut sim = Sim::new(1);
    sim.behind_nat("A", "10.20.1.5", "198.51.100.7", false, true);
    sim.behind_nat("B", "10.30.1.5", "203.0.113.9", false, true);
    sim.miss("B", "10.0.0.1", 1);
    sim.advance(Duration::from_millis(50));
    assert!(sim.established("B", "A"));
    // B pings A every 10 ms, and A answers.
    let ping = |sim: &mut Sim| {
        let there = sim.send_data(1, ip("10.0.0.1"));
        let back = there && sim.send_data(0, ip("10.0.0.2"));
        sim.advance(Duration::from_millis(10));
        back
    };
    // Long enough for the agents to see the traffic.
    for _ in 0..200 {
        assert!(ping(&mut sim));
    }
    // B's NAT restarts: its conntrack is gone and it maps B to another port.
    let nat = sim.nodes[1].nat.as_mut().unwrap();
    nat.shift = 1000;
    sim.nodes[1].dp.opened.clear();
    let mut lost = 0;
    let mut recovered_after = None;
    for i in 0..300 {
        if ping(&mut sim) {
            recovered_after = Some(i * 10);
            break;
        }
        lost += 1;
    }
    let ms = recovered_after.expect("never recovered");
    assert!(ms <= 1000, "recovered after {ms} ms ({lost} pings lost)");
    assert!(sim.node("B").xtr.counters().stalls >= 1);
    // The map-server saw B's new endpoint (at B's re-registration) and told
    // A, which punched toward it and follows it; no tunnel was torn down.
    assert!(sim.servers[0].core.counters().endpoint_changes >= 3);
    assert_eq!(sim.node("A").xtr.counters().path_failovers, 0);
    assert_eq!(sim.node("B").xtr.counters().paths_established, 1);
}

#[test]
fn a_restarted_peer_is_reached_again_within_two_seconds() {
    let mut sim = Sim::new(1);
    sim.miss("A", "10.0.0.2", 1);
    sim.advance(Duration::from_millis(50));
    // B's agent restarts: it forgets A, and its WireGuard starts empty.
    sim.restart_node(1);
    let mut recovered_after = None;
    for i in 0..300 {
        let there = sim.send_data(0, ip("10.0.0.2"));
        let back = there && sim.send_data(1, ip("10.0.0.1"));
        sim.advance(Duration::from_millis(10));
        if there && back {
            recovered_after = Some(i * 10);
            break;
        }
    }
    let ms = recovered_after.expect("never reached again");
    assert!(ms <= 2000, "reached again after {ms} ms");
    assert_eq!(
        sim.node("A").xtr.counters().smrs,
        1,
        "told by the map-server, which saw B's new map version"
    );
}

#[test]
fn a_map_server_configured_for_sha1_gets_sha1_registers_and_is_resolved_through() {
    let mut sim = Sim::new(1);
    // B's agent restarts configured to sign with HMAC-SHA-1.
    let mut policy = sim.nodes[1].xtr.policy().clone();
    policy.map_servers[0].key_id = KeyId::HmacSha1;
    let now = sim.now;
    sim.nodes[1].xtr = restarted(&sim.nodes[1], policy, now, 555);
    sim.nodes[1].dp = Dataplane::default();
    sim.nodes[1]
        .xtr
        .handle_link_events(now, &[address("eth0", ip("198.51.100.20"), true)]);
    let site_key = b"site-B".to_vec();
    let mut registers = 0;
    while let Some(out) = sim.nodes[1].xtr.poll_output() {
        if let Output::Transmit { payload, .. } = &out {
            if let Ok(Message::MapRegister(_)) = lisp_wire::parse(payload) {
                assert_eq!(auth::verify(payload, &site_key), Ok(KeyId::HmacSha1));
                registers += 1;
            }
        }
        sim.carry_out(1, out);
    }
    assert_eq!(registers, 1);
    sim.settle();
    assert!(sim.nodes[1].xtr.map_servers()[0].registered, "confirmed");
    // A resolves B: B takes the map-server's notify (signed as B signs) and
    // acks it, and A's first packet goes through.
    let packet = sim.miss("A", "10.0.0.2", 1);
    assert_eq!(sim.node("A").dp.reinjected, vec![packet]);
    assert!(sim.node("B").dp.peers.contains_key(&[0xa; 32]));
}

#[test]
fn a_node_that_moves_punches_its_new_nat_open_toward_its_peers() {
    let mut sim = Sim::new(1);
    sim.miss("A", "10.0.0.2", 1);
    sim.advance(Duration::from_millis(50));
    let before = sim.node("B").dp.punches.len();
    sim.set_addresses("B", &[("eth0", "203.0.113.77")]);
    sim.advance(Duration::from_millis(500));
    let b = sim.node("B");
    let after: Vec<_> = b.dp.punches[before..].to_vec();
    assert_eq!(after.len(), 4, "a few times, toward A: {after:?}");
    assert!(after.iter().all(|p| p.ip() == ip("192.0.2.10")));
}

#[test]
fn a_map_server_is_reached_over_the_family_the_node_has() {
    let mut sim = Sim::new(1);
    // B loses its IPv4 address and has only IPv6: it reaches the map-server
    // at its IPv6 endpoint; with IPv4 back, at the first (IPv4) one again.
    sim.set_addresses("B", &[("eth0", "2001:db8:9::5")]);
    assert_eq!(
        sim.node("B").dp.control_endpoints.get(&0),
        Some(&"[2001:db8::1]:4340".parse().unwrap())
    );
    sim.set_addresses("B", &[("eth0", "198.51.100.20"), ("lte", "2001:db8:9::5")]);
    assert_eq!(
        sim.node("B").dp.control_endpoints.get(&0),
        Some(&"192.0.2.1:4340".parse().unwrap())
    );
}

// ---- the relay ----------------------------------------------------------------

impl Sim {
    /// The path kind node `name`'s core reports for peer `peer`.
    fn path_kind(&self, name: &str, peer: &str) -> Option<PathKind> {
        let key = self.nodes.iter().find(|n| n.name == peer)?.key;
        let n = self.nodes.iter().find(|n| n.name == name)?;
        n.xtr
            .paths(self.now)
            .into_iter()
            .find(|p| p.key == key)
            .and_then(|p| p.kind)
    }

    /// Sends data both ways `count` times, 10 ms apart; how many of the
    /// packets arrived.
    fn ping(&mut self, a: usize, b: usize, count: u32) -> u32 {
        let (ea, eb) = (self.nodes[a].eid.addr(), self.nodes[b].eid.addr());
        let mut ok = 0;
        for _ in 0..count {
            if self.send_data(a, eb) && self.send_data(b, ea) {
                ok += 1;
            }
            self.advance(Duration::from_millis(10));
        }
        ok
    }

    /// Two nodes behind NATs, relay on: registered, with allocations.
    fn relayed_pair(edm_a: bool, edm_b: bool) -> Sim {
        let mut sim = Sim::new(1);
        sim.behind_nat("A", "10.20.1.5", "198.51.100.7", edm_a, true);
        sim.behind_nat("B", "10.30.1.5", "203.0.113.9", edm_b, true);
        sim.with_relay(0, false);
        sim.with_relay(1, false);
        sim.advance(Duration::from_millis(300));
        for i in 0..2 {
            let st = sim.nodes[i].xtr.relay_status(sim.now);
            assert_eq!(st.state, "up", "{}: {st:?}", sim.nodes[i].name);
            assert_eq!(st.transport, Some(relay::Transport::Udp));
            assert!(!st.only);
        }
        sim
    }
}

#[test]
fn a_node_with_the_relay_registers_its_relayed_address_last_and_marked_relayed() {
    let sim = Sim::relayed_pair(true, true);
    let relayed = sim.nodes[0].xtr.relay_status(sim.now).relayed.unwrap();
    assert_eq!(relayed.ip(), ip(RELAY_IP));
    let (m, _) = &sim.servers[0].disk[&sim.nodes[0].eid];
    let last = m.rlocs.last().unwrap();
    assert!(last.relayed && last.priority == 254, "{m:?}");
    assert_eq!(SocketAddr::new(last.addr, last.port.unwrap()), relayed);
    assert!(m.rlocs.iter().filter(|r| r.relayed).count() == 1);
}

#[test]
fn symmetric_nats_on_both_sides_talk_through_the_relay_first_packet_included() {
    let mut sim = Sim::relayed_pair(true, true);
    let packet = sim.miss("A", "10.0.0.2", 1);
    sim.advance(Duration::from_secs(1));
    assert!(sim.established("A", "B") && sim.established("B", "A"));
    assert_eq!(sim.path_kind("A", "B"), Some(PathKind::Relayed));
    assert_eq!(sim.path_kind("B", "A"), Some(PathKind::Relayed));
    let a = sim.node("A");
    assert!(
        a.dp.reinjected.contains(&packet),
        "the held packet went out"
    );
    assert!(
        a.dp.delivered.is_empty(),
        "no ICMP: the packet was not given up"
    );
    assert_eq!(a.xtr.counters().paths_failed, 0);
    assert!(sim.relay.relayed > 0);
    assert_eq!(sim.ping(0, 1, 20), 20);
    assert_eq!(sim.node("A").xtr.counters().relay_switches_to_relay, 1);
}

#[test]
fn a_symmetric_nat_on_one_side_talks_through_the_relay() {
    let mut sim = Sim::relayed_pair(false, true);
    sim.miss("B", "10.0.0.1", 1);
    sim.advance(Duration::from_secs(1));
    assert!(sim.established("B", "A"));
    assert_eq!(sim.ping(0, 1, 10), 10);
}

#[test]
fn a_relayed_pair_moves_to_direct_once_the_nats_allow_it_without_losing_a_packet() {
    let mut sim = Sim::relayed_pair(true, true);
    sim.miss("A", "10.0.0.2", 1);
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.path_kind("A", "B"), Some(PathKind::Relayed));
    // Both NATs become endpoint-independent (a new rule set): each node's
    // mapping toward the map-server is now every destination's.
    for n in &mut sim.nodes[..2] {
        n.nat.as_mut().unwrap().edm = false;
    }
    let mut lost = 0;
    for _ in 0..200 {
        if !sim.send_data(0, ip("10.0.0.2")) || !sim.send_data(1, ip("10.0.0.1")) {
            lost += 1;
        }
        sim.advance(Duration::from_millis(300));
        if sim.path_kind("A", "B") != Some(PathKind::Relayed)
            && sim.path_kind("B", "A") != Some(PathKind::Relayed)
        {
            break;
        }
    }
    assert_eq!(
        sim.path_kind("A", "B"),
        Some(PathKind::Direct),
        "A upgraded"
    );
    assert_eq!(
        sim.path_kind("B", "A"),
        Some(PathKind::Direct),
        "B upgraded"
    );
    assert_eq!(lost, 0, "nothing lost while probing and switching");
    let relayed_before = sim.relay.relayed;
    assert_eq!(sim.ping(0, 1, 10), 10);
    assert_eq!(
        sim.relay.relayed, relayed_before,
        "the relay is out of the path"
    );
    let c = sim.node("A").xtr.counters().clone();
    assert!(
        c.relay_probes >= 1 && c.relay_switches_to_direct == 1,
        "{c:?}"
    );
}

#[test]
fn a_relayed_pair_that_cannot_go_direct_backs_off_its_probes() {
    let mut sim = Sim::relayed_pair(true, true);
    sim.miss("A", "10.0.0.2", 1);
    sim.advance(Duration::from_secs(1));
    for _ in 0..40 {
        assert!(
            sim.send_data(0, ip("10.0.0.2")),
            "the relay carries every packet"
        );
        sim.advance(Duration::from_secs(10));
    }
    let c = sim.node("A").xtr.counters().clone();
    // 400 s: probes at 30 s, then 60, 120, 240 s later: at most 4 (A's).
    assert!((2..=4).contains(&c.relay_probes), "probes back off: {c:?}");
    assert_eq!(c.relay_probes, c.relay_probe_failures, "every probe failed");
    assert_eq!(sim.path_kind("A", "B"), Some(PathKind::Relayed));
}

#[test]
fn a_relay_that_loses_its_allocations_is_noticed_and_the_pair_recovers() {
    let mut sim = Sim::relayed_pair(true, true);
    sim.miss("A", "10.0.0.2", 1);
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.ping(0, 1, 5), 5);
    let old = sim.nodes[0].xtr.relay_status(sim.now).relayed;
    // coturn restarts: every allocation is gone, silently.
    sim.relay.allocs.clear();
    let mut back = None;
    for step in 0..200 {
        sim.send_data(0, ip("10.0.0.2"));
        sim.send_data(1, ip("10.0.0.1"));
        sim.advance(Duration::from_millis(100));
        if step > 2 && sim.ping(0, 1, 1) == 1 {
            back = Some(step);
            break;
        }
    }
    let step = back.expect("the pair came back");
    eprintln!("relay loss: back after {step} steps of 100 ms");
    assert!(step < 40, "back within 4 s of traffic, took {step} steps");
    let new = sim.nodes[0].xtr.relay_status(sim.now).relayed;
    assert_ne!(new, old, "a new allocation");
    assert!(sim.node("A").xtr.counters().relay_allocations >= 2);
}

#[test]
fn an_idle_relay_loss_is_found_by_the_self_check() {
    let mut sim = Sim::relayed_pair(true, true);
    sim.relay.allocs.clear();
    sim.advance(relay_check_period() * 2 + Duration::from_secs(3));
    for i in 0..2 {
        assert_eq!(sim.nodes[i].xtr.relay_status(sim.now).state, "up");
        assert!(
            sim.relay.allocs.contains_key(&i),
            "{} allocated again",
            sim.nodes[i].name
        );
        assert!(sim.nodes[i].xtr.counters().relay_checks_missed >= 2);
    }
}

fn relay_check_period() -> Duration {
    xtr_core::relaying::CHECK_EVERY
}

#[test]
fn a_node_whose_network_blocks_udp_registers_and_talks_through_the_relay() {
    let mut sim = Sim::new(1);
    sim.behind_nat("B", "10.30.1.5", "203.0.113.9", false, true);
    sim.with_relay(1, false);
    sim.advance(Duration::from_millis(300));
    // A robot in a network that lets only TCP out, with credentials
    // installed beforehand (it cannot ask a map-server for them).
    sim.behind_nat("C", "10.40.1.5", "198.51.100.40", true, true);
    sim.nodes[2].udp_blocked = true;
    sim.with_relay(2, false);
    let now = sim.now;
    sim.nodes[2]
        .xtr
        .handle_relay_grant(now, Ok((grant(), Duration::from_secs(3600))));
    sim.advance(Duration::from_secs(8));
    let st = sim.nodes[2].xtr.relay_status(sim.now);
    assert_eq!(st.state, "up", "{st:?}");
    assert_eq!(
        st.transport,
        Some(relay::Transport::Tls),
        "UDP to the relay never answered"
    );
    assert!(st.only, "everything goes through the relay");
    assert!(
        sim.nodes[2].xtr.map_servers()[0].up,
        "registered through the relay"
    );
    // The map-server sees C at its relayed address and hands out only that.
    let (m, _) = &sim.servers[0].disk[&sim.nodes[2].eid];
    assert!(m.rlocs.iter().any(|r| r.relayed));
    // Both directions: C asks for A (public, no relay of its own), B asks for C.
    sim.miss("C", "10.0.0.1", 1);
    sim.advance(Duration::from_secs(2));
    assert!(sim.established("C", "A"), "C reached A");
    assert_eq!(sim.ping(2, 0, 5), 5);
    sim.miss("B", "10.0.0.3", 1);
    sim.advance(Duration::from_secs(2));
    assert!(sim.established("B", "C"), "B reached C");
    assert_eq!(sim.ping(1, 2, 5), 5);
}

#[test]
fn handover_while_relayed_initiator_moves_and_then_the_other_side_moves() {
    let mut sim = Sim::relayed_pair(true, true);
    sim.miss("A", "10.0.0.2", 1);
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.ping(0, 1, 3), 3);
    for (name, i, addr) in [("A", 0, "10.20.1.77"), ("B", 1, "10.30.1.88")] {
        // A new network: another symmetric NAT.
        sim.node(name).nat = Some(Nat {
            public: ip(if i == 0 {
                "198.51.100.99"
            } else {
                "203.0.113.99"
            }),
            edm: true,
            filter: true,
            shift: 0,
        });
        sim.set_addresses(name, &[("eth0", addr)]);
        let mut back = None;
        for step in 0..100 {
            sim.advance(Duration::from_millis(20));
            if sim.ping(0, 1, 1) == 1 {
                back = Some(step);
                break;
            }
        }
        let step = back.unwrap_or_else(|| panic!("{name} moved and the pair never came back"));
        eprintln!("{name} moved: back after {step} steps");
        assert!(step < 25, "{name} moved: back after {step} steps");
        assert_eq!(sim.path_kind("A", "B"), Some(PathKind::Relayed));
    }
}

#[test]
fn a_direct_path_that_stalls_falls_back_to_the_relay_at_once() {
    let mut sim = Sim::relayed_pair(false, false);
    sim.miss("A", "10.0.0.2", 1);
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.path_kind("A", "B"), Some(PathKind::Direct));
    assert_eq!(sim.ping(0, 1, 3), 3);
    // B's NAT turns symmetric and forgets its mappings: the direct path is
    // dead, and only the relay joins the pair now.
    {
        let nat = sim.node("B").nat.as_mut().unwrap();
        nat.edm = true;
        nat.shift = 7;
    }
    let mut back = None;
    for step in 0..100 {
        sim.send_data(0, ip("10.0.0.2"));
        sim.advance(Duration::from_millis(50));
        if sim.ping(0, 1, 1) == 1 {
            back = Some(step);
            break;
        }
    }
    let step = back.expect("the pair came back through the relay");
    assert!(step < 30, "took {step} steps");
    sim.advance(Duration::from_millis(200));
    assert_eq!(sim.path_kind("A", "B"), Some(PathKind::Relayed));
}

#[test]
fn a_pair_no_path_joined_is_tried_again_when_traffic_asks() {
    // Found by the randomised scenarios: the map-server lost its store, so
    // it cannot tell C about A (A is not registered again yet) and every
    // attempt of A's fails. Later packets are answered at once, and one
    // every 2 s tries again: once A is registered, the pair comes up.
    let mut sim = Sim::new(1);
    sim.restart_ms(0, true);
    sim.with_relay(2, false);
    sim.miss("A", "10.0.0.3", 1);
    sim.advance(Duration::from_secs(1));
    assert!(!sim.established("A", "C"));
    assert!(sim.path_kind("A", "C").is_some());
    let icmp = sim.nodes[0].dp.delivered.len();
    sim.miss("A", "10.0.0.3", 2);
    assert_eq!(
        sim.nodes[0].dp.delivered.len(),
        icmp + 1,
        "answered at once"
    );
    sim.advance(Duration::from_secs(70));
    let before = sim.nodes[0].dp.reinjected.len();
    sim.miss("A", "10.0.0.3", 9);
    sim.advance(Duration::from_millis(200));
    assert_eq!(sim.nodes[0].dp.reinjected.len(), before + 1);
    assert!(sim.established("A", "C"));
}

#[test]
fn a_slow_map_server_does_not_have_its_control_session_torn_down_at_every_retransmit() {
    // Found at fleet scale: every Map-Request retransmit renewed the control
    // peer while anything was unanswered, and each renewal dropped the
    // replies in flight. Now only a map-server silent for a second (then 2,
    // 4 ... s) gets a fresh session.
    let mut sim = Sim::new(1);
    let a_ctl = sim.nodes[0].ctl;
    // The map-server's next three messages to A are lost (slow under load).
    sim.drop_to.insert(a_ctl, 3);
    sim.miss("A", "10.0.0.2", 1);
    sim.advance(Duration::from_secs(4));
    let a = sim.node("A");
    assert!(
        a.xtr.counters().request_retransmits >= 2,
        "{:?}",
        a.xtr.counters()
    );
    assert!(
        a.dp.renewed_control_peers.len() <= 1,
        "renewed {} times",
        a.dp.renewed_control_peers.len()
    );
    assert!(sim.established("A", "B"), "resolved in the end");
}

#[test]
fn a_revoked_node_is_dropped_by_every_correspondent_at_once_by_push() {
    let mut sim = Sim::new(1);
    sim.miss("A", "10.0.0.2", 1);
    sim.miss("C", "10.0.0.1", 2);
    sim.advance(Duration::from_millis(20));
    let a_key = sim.node("A").key;
    let a_eid = EidPrefix::host(0, ip("10.0.0.1"));
    for n in ["B", "C"] {
        assert!(sim.node(n).dp.peers.contains_key(&a_key), "{n} talks to A");
    }
    // A leaves the configuration (a reload without it, or `revoke`).
    let policy = Policy {
        peers: peer_policies()
            .into_iter()
            .filter(|p| p.name != "A")
            .collect(),
        control_address: Some(sim.servers[0].ctl),
        ..Policy::default()
    };
    let now = sim.now;
    let change = sim.servers[0].core.handle_config(now, policy).unwrap();
    assert_eq!(change.revoked, vec!["A".to_string()]);
    // Well before any TTL: a few round trips.
    sim.advance(Duration::from_millis(50));
    for n in ["B", "C"] {
        let node = sim.node(n);
        assert!(
            !node.dp.peers.contains_key(&a_key),
            "{n} still has A's data peer"
        );
        assert!(!node.dp.routes.contains(&a_eid), "{n} still routes A");
    }
    let ms = &sim.servers[0];
    assert_eq!(ms.core.counters().withdrawals, 2);
    assert!(!ms.disk.contains_key(&a_eid), "withdrawn on disk too");
    assert_eq!(ms.core.pending_notifies(), 0, "both acknowledged");
    // B and C still talk to each other.
    sim.miss("B", "10.0.0.3", 3);
    let c_key = sim.node("C").key;
    assert!(sim.node("B").dp.peers.contains_key(&c_key));
}

impl Sim {
    /// A name question at `from`'s agent, the network settled after it.
    fn ask_name(&mut self, from: &str, query: u64, name: &str) {
        let now = self.now;
        self.node(from)
            .xtr
            .handle_name_query(now, NameQuery(query), name);
        self.settle();
    }

    fn name_answer(&mut self, from: &str, query: u64) -> Option<(NameAnswer, Instant)> {
        self.node(from)
            .dp
            .names
            .iter()
            .find(|(q, _, _)| *q == NameQuery(query))
            .map(|(_, a, t)| (a.clone(), *t))
    }
}

#[test]
fn a_name_lookup_answers_the_eid_and_programs_both_ends_before_any_packet() {
    let mut sim = Sim::new(1);
    let (a_key, b_key) = (sim.node("A").key, sim.node("B").key);
    let start = sim.now;
    sim.ask_name("A", 1, "b.lispwg.internal");
    let (answer, at) = sim.name_answer("A", 1).expect("answered");
    let NameAnswer::Addresses { addrs, ttl } = answer else {
        panic!("not addresses: {answer:?}")
    };
    assert_eq!(addrs, vec![ip("10.0.0.2")]);
    assert_eq!(ttl, Duration::from_secs(600), "the mapping's TTL (10 min)");
    assert_eq!(at, start, "no timer needed: the reply came at once");
    let log = &sim.node("A").dp.log;
    let upsert = log.iter().position(|s| s == "upsert-peer");
    let answered = log.iter().position(|s| s == "name-answer");
    assert!(
        upsert < answered,
        "the peer is in place before the answer: {log:?}"
    );
    // No packet was sent, and both ends have their peer already; A's
    // handshake went out to B, which knew A: the tunnel is up.
    assert!(sim.node("A").dp.reinjected.is_empty());
    assert!(sim.node("A").dp.peers.contains_key(&b_key));
    assert!(sim.node("B").dp.peers.contains_key(&a_key));
    assert_eq!(sim.node("A").dp.initiations, 1);
    assert!(sim.node("A").dp.peers[&b_key].handshake.is_some());

    // The first packet finds the route: re-injected, no second lookup.
    let requests = sim.node("A").xtr.counters().requests;
    sim.miss("A", "10.0.0.2", 1);
    let a = sim.node("A");
    assert_eq!(a.xtr.counters().requests, requests);
    assert_eq!(a.dp.reinjected.len(), 1);

    // A second question is answered from the cache, with what is left of
    // the TTL; after the TTL the name is looked up again.
    sim.advance(Duration::from_secs(60));
    sim.ask_name("A", 2, "B.lispwg.internal.");
    let (answer, _) = sim.name_answer("A", 2).unwrap();
    assert_eq!(
        answer,
        NameAnswer::Addresses {
            addrs: vec![ip("10.0.0.2")],
            ttl: Duration::from_secs(540)
        }
    );
    let c = sim.node("A").xtr.counters().clone();
    assert_eq!((c.name_requests, c.names_from_cache), (1, 1));
    sim.advance(Duration::from_secs(541));
    sim.ask_name("A", 3, "b.lispwg.internal");
    assert!(matches!(
        sim.name_answer("A", 3),
        Some((NameAnswer::Addresses { .. }, _))
    ));
    assert_eq!(sim.node("A").xtr.counters().name_requests, 2);
}

#[test]
fn a_name_answer_waits_for_its_peer_but_not_for_ever() {
    let mut sim = Sim::new(1);
    // The first two peer upserts fail: retried after 10 and 20 ms.
    sim.node("A").dp.fail.insert("upsert-peer", 2);
    let start = sim.now;
    sim.ask_name("A", 1, "b.lispwg.internal");
    assert!(
        sim.name_answer("A", 1).is_none(),
        "held while the peer fails"
    );
    sim.advance(Duration::from_millis(100));
    let (_, at) = sim
        .name_answer("A", 1)
        .expect("answered once the peer is in");
    let b_key = sim.node("B").key;
    assert!(sim.node("A").dp.peers.contains_key(&b_key));
    assert!(at - start >= Duration::from_millis(30) && at - start < Duration::from_millis(100));

    // A data plane that keeps failing: answered at the bounded wait anyway.
    sim.node("A").dp.fail.insert("upsert-peer", 1000);
    let start = sim.now;
    sim.ask_name("A", 2, "c.lispwg.internal");
    sim.advance(Duration::from_secs(1));
    let (answer, at) = sim.name_answer("A", 2).expect("answered");
    assert!(matches!(answer, NameAnswer::Addresses { .. }));
    assert_eq!(at - start, sim.node("A").xtr.policy().names.program_wait);
}

#[test]
fn with_no_map_server_a_name_answered_before_gets_its_stale_answer() {
    let mut sim = Sim::new(1);
    sim.ask_name("A", 1, "b.lispwg.internal");
    assert!(matches!(
        sim.name_answer("A", 1),
        Some((NameAnswer::Addresses { .. }, _))
    ));
    sim.servers[0].alive = false;
    // Past the answer's 10-minute TTL.
    sim.advance(Duration::from_secs(601));
    let start = sim.now;
    sim.ask_name("A", 2, "b.lispwg.internal");
    sim.ask_name("A", 3, "c.lispwg.internal");
    sim.advance(Duration::from_secs(3));
    let (answer, at) = sim.name_answer("A", 2).expect("answered");
    assert_eq!(
        answer,
        NameAnswer::Addresses {
            addrs: vec![ip("10.0.0.2")],
            ttl: xtr_core::names::STALE_TTL
        },
        "asked afresh first, then the last answer"
    );
    assert_eq!(at - start, sim.node("A").xtr.policy().names.wait);
    assert_eq!(sim.name_answer("A", 3).unwrap().0, NameAnswer::Unavailable);
    assert_eq!(sim.node("A").xtr.counters().names_stale, 1);
}

#[test]
fn unknown_names_are_no_such_name_and_other_domains_are_not_ours() {
    let mut sim = Sim::new(1);
    sim.ask_name("A", 1, "nobody.lispwg.internal");
    sim.ask_name("A", 2, "example.org");
    sim.ask_name("A", 3, "x.b.lispwg.internal");
    let neg = sim.name_answer("A", 1).unwrap().0;
    assert_eq!(
        neg,
        NameAnswer::NoSuchName {
            ttl: Duration::from_secs(10)
        },
        "the map-server's 1-minute negative TTL, capped"
    );
    assert_eq!(sim.name_answer("A", 2).unwrap().0, NameAnswer::NotOurs);
    assert!(matches!(
        sim.name_answer("A", 3).unwrap().0,
        NameAnswer::NoSuchName { .. }
    ));
    let c = sim.node("A").xtr.counters().clone();
    assert_eq!(c.name_requests, 1, "only the first asked the map-server");
    assert_eq!((c.names_unknown, c.names_not_ours), (2, 1));
    assert!(sim.node("A").dp.peers.is_empty());
    // The negative answer is cached for its TTL, then asked again.
    sim.ask_name("A", 4, "nobody.lispwg.internal");
    assert_eq!(sim.node("A").xtr.counters().name_requests, 1);
    sim.advance(Duration::from_secs(11));
    sim.ask_name("A", 5, "nobody.lispwg.internal");
    assert_eq!(sim.node("A").xtr.counters().name_requests, 2);
}

#[test]
fn a_name_lookup_no_map_server_answers_is_unavailable_after_the_bounded_wait() {
    let mut sim = Sim::new(1);
    sim.servers[0].alive = false;
    let start = sim.now;
    sim.ask_name("A", 1, "b.lispwg.internal");
    sim.ask_name("A", 2, "b.lispwg.internal");
    assert!(
        sim.name_answer("A", 1).is_none(),
        "waits for the map-server"
    );
    sim.advance(Duration::from_secs(5));
    let wait = sim.node("A").xtr.policy().names.wait;
    for q in [1, 2] {
        let (answer, at) = sim.name_answer("A", q).expect("answered in the end");
        assert_eq!(answer, NameAnswer::Unavailable);
        assert_eq!(at - start, wait, "after exactly the bounded wait");
    }
    let c = sim.node("A").xtr.counters().clone();
    assert_eq!(c.name_timeouts, 1, "one lookup for both questions");
    assert!(c.name_requests >= 3, "retransmitted: {}", c.name_requests);
    assert_eq!(sim.node("A").xtr.names_pending(), 0);
    // Not cached: once the map-server is back, the name resolves.
    sim.servers[0].alive = true;
    sim.advance(Duration::from_secs(2));
    sim.ask_name("A", 3, "b.lispwg.internal");
    sim.advance(Duration::from_secs(3));
    assert!(matches!(
        sim.name_answer("A", 3),
        Some((NameAnswer::Addresses { .. }, _))
    ));
}

/// A node's agent after a restart: its shell starts the register nonces
/// after the reservation the last run saved, as the real one does.
fn restarted(node: &Node, policy: XtrPolicy, now: Instant, seed: u64) -> Xtr {
    let mut xtr = Xtr::new(policy, now, seed);
    xtr.set_register_nonce_floor(node.nonce_reserved);
    xtr
}

#[test]
fn a_data_peer_sending_junk_costs_a_few_log_lines_and_a_counter_each() {
    let mut sim = Sim::new(1);
    let now = sim.now;
    let a = sim.node("A");
    let from: SocketAddr = "100.64.0.9:4342".parse().unwrap();
    for i in 0..1000u32 {
        let mut junk = vec![0x30u8; 24];
        junk[4..8].copy_from_slice(&i.to_be_bytes());
        a.xtr.handle_control(now, from, &junk);
    }
    let c = a.xtr.counters();
    assert_eq!(c.malformed + c.unknown_senders, 1000, "every one counted");
    assert_eq!(
        c.suppressed_log_lines, 995,
        "five lines, the rest held back"
    );
}
