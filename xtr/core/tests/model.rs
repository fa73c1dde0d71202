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
            DataplaneOp::RenewControlPeer { map_server } => {
                self.renewed_control_peers.push(*map_server)
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
                }
            })
            .collect();
        let mut sim = Sim {
            now,
            nodes,
            servers,
            drop_to: HashMap::new(),
            delivered: 0,
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
                    if let Some(n) = self.nodes.iter_mut().find(|n| n.ctl == t.dst.ip()) {
                        if let Ok(Message::MapNotify(notify)) = lisp_wire::parse(&t.payload) {
                            let confirms_own = notify
                                .records
                                .iter()
                                .any(|r| EidPrefix::of_record(r) == Ok(n.eid));
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
                    StoreOp::Endpoint { .. } => None,
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
        node.xtr = Xtr::new(node.xtr.policy().clone(), now, 1000 + i as u64);
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
        });
        match out {
            Output::Transmit { dst, payload } => {
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
                let seen = source(node, MS_UNDERLAY);
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
                    // there is no session.
                    self.initiate(i, *key);
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
            Output::ReadPeerStats => {
                let stats = node.dp.stats(now);
                node.xtr.handle_peer_stats(now, &stats);
            }
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
        panic!("timers never reach {by:?}");
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
        let sender = &self.nodes[from];
        let src = source(sender, to)?;
        for (j, n) in self.nodes.iter().enumerate() {
            if j == from {
                continue;
            }
            let same_nat =
                matches!((sender.nat, n.nat), (Some(a), Some(b)) if a.public == b.public);
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

    /// A data packet from node `from`'s host to `to` (an EID), through its
    /// WireGuard as the kernel would route it: counted as sent, and as
    /// received at the other end if the path works. Returns whether it
    /// arrived.
    fn send_data(&mut self, from: usize, to: IpAddr) -> bool {
        let Some(&route) = self.nodes[from]
            .dp
            .routes
            .iter()
            .find(|r| r.contains_addr(0, to))
        else {
            return false;
        };
        let Some((&key, peer)) = self.nodes[from]
            .dp
            .peers
            .iter_mut()
            .find(|(_, p)| p.allowed.contains(&route))
        else {
            return false;
        };
        peer.tx += 128;
        let (Some(endpoint), Some(_)) = (peer.endpoint, peer.handshake) else {
            return false;
        };
        // Sending through our NAT lets the answers in.
        self.nodes[from].dp.opened.insert(endpoint);
        let Some(j) = self.deliver(from, endpoint) else {
            return false;
        };
        if self.nodes[j].key != key {
            return false;
        }
        let src = source(&self.nodes[from], endpoint);
        let my_key = self.nodes[from].key;
        match self.nodes[j].dp.peers.get_mut(&my_key) {
            Some(back) if back.handshake.is_some() => {
                back.rx += 128;
                back.endpoint = src; // roaming
                true
            }
            _ => false,
        }
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
        let Some(j) = self.deliver(i, to) else { return };
        let (my_key, src) = (self.nodes[i].key, source(&self.nodes[i], to));
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
        back.endpoint = src;
        // The response goes back to the initiator's source, which its NAT
        // lets in (it just sent to the responder).
        if let Some(p) = self.nodes[i].dp.peers.get_mut(&key) {
            p.handshake = Some(now);
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
    let a = sim.node("A");
    let mut fresh = Xtr::new(a.xtr.policy().clone(), sim.now, 99);
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
        if sends.len() < c.requests as usize {
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
            for s in steps {
                match s {
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
                    Step::RestartNode(n) => sim.restart_node(n),
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
    sim.nodes[1].xtr = Xtr::new(policy, now, 555);
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
