//! The lab topology, defined once: [`LabSpec`] says which nodes exist, how
//! they are attached and what they run; [`crate::Lab`] builds it.
//!
//! [`LabSpec::campus`] is the lab of the README and the demo:
//!
//! ```text
//!                       campus router (forwards; bridges br-pub, br-suba, br-subb)
//!        ┌───────────────────────┼────────────────────────┐
//!   public segment          subnet A                    subnet B
//!   192.0.2.0/24            198.51.100.0/24             203.0.113.0/24
//!   ms .10, ms2 .11         robot-a .10, edge .20,      robot-b .10 (eth0)
//!                           robot-b's eth1 .30 (after a move)
//!                           edge ── lan 10.1.0.0/24 ── host .10
//! ```
//!
//! | what | addresses (inside the lab's namespaces only) |
//! |---|---|
//! | router | .1 on each segment; IPv6 2001:db8:0:1::1, 2001:db8:0:a::1, 2001:db8:0:b::1 (/64) |
//! | control tunnel 100.64.0.0/16 | ms .1, robot-a .2, robot-b .3, edge .4, ms2 .254 |
//! | overlay | robot-a 10.0.0.1, robot-b 10.0.0.2, edge LAN 10.1.0.0/24 (edge .1, host .10) |
//! | NAT router *n* | `wan` on a segment at .100+*n* (2001:db8:0:s::100+*n*), LAN 10.10.*n*.0/24 and 2001:db8:1:*n*::/64 (router .1, hosts from .10) |
//!
//! An IPv6 address has the same host part as its IPv4 one, written alike
//! (robot-a: 198.51.100.10 and 2001:db8:0:a::10). IPv6 is routed, never
//! translated.
//!
//! The builder methods panic on a node that does not exist: they are for
//! test set-up, where that is a typo.

use crate::config::StaticMapping;
use crate::nat::{NatKind, NatRules};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where the daemons' telemetry listens, inside each namespace.
pub const MS_METRICS: &str = "127.0.0.1:9342";
pub const XTR_METRICS: &str = "127.0.0.1:9343";
/// The agents' WireGuard port, and the map-servers'.
pub const WG_PORT: u16 = 51820;
pub const MS_WG_PORT: u16 = 4340;
/// The EID space the agents capture.
pub const OVERLAY: &str = "10.0.0.0/8";
pub const ROBOT_A_EID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const ROBOT_B_EID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const HOST_EID: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
pub const EDGE_PREFIX: &str = "10.1.0.0/24";
pub const MS_RLOC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const ROBOT_A_RLOC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const ROBOT_B_RLOC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const ROBOT_B_RLOC_MOVED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 30);
/// Where mappings of nodes that need not exist point: nothing answers.
pub const NOWHERE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);

/// A campus segment: a bridge in the router's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Segment {
    /// 192.0.2.0/24: the map-servers.
    Public,
    /// 198.51.100.0/24.
    SubnetA,
    /// 203.0.113.0/24.
    SubnetB,
}

impl Segment {
    pub const ALL: [Segment; 3] = [Segment::Public, Segment::SubnetA, Segment::SubnetB];

    pub fn bridge(self) -> &'static str {
        match self {
            Segment::Public => "br-pub",
            Segment::SubnetA => "br-suba",
            Segment::SubnetB => "br-subb",
        }
    }

    fn subnet(self) -> Subnet {
        let (v4, group) = match self {
            Segment::Public => ([192, 0, 2], 0x1),
            Segment::SubnetA => ([198, 51, 100], 0xa),
            Segment::SubnetB => ([203, 0, 113], 0xb),
        };
        Subnet {
            v4,
            v6: Some([0x2001, 0xdb8, 0, group]),
        }
    }
}

/// A /24 and, if routed, a /64; the router or gateway is host 1.
#[derive(Debug, Clone, Copy)]
pub struct Subnet {
    v4: [u8; 3],
    v6: Option<[u16; 4]>,
}

impl Subnet {
    pub fn v4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.v4[0], self.v4[1], self.v4[2], host)
    }

    /// The host part written as the IPv4 one is: host 10 is `…::10`.
    pub fn v6(&self, host: u8) -> Option<Ipv6Addr> {
        let g = self.v6?;
        let h = u16::from_str_radix(&host.to_string(), 16).expect("decimal digits are hex digits");
        Some(Ipv6Addr::new(g[0], g[1], g[2], g[3], 0, 0, 0, h))
    }

    /// The /64, as `2001:db8:0:a::/64`.
    pub fn v6_prefix(&self) -> Option<String> {
        let g = self.v6?;
        Some(format!(
            "{}/64",
            Ipv6Addr::new(g[0], g[1], g[2], g[3], 0, 0, 0, 0)
        ))
    }
}

/// What an uplink plugs into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Attach {
    Segment(Segment),
    /// The LAN bridge of NAT router `name`.
    Nat(String),
    /// The `lan` interface of edge xTR `name` (one host).
    Edge(String),
}

/// Which IP versions a node's uplinks carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    V4,
    Dual,
    V6,
}

/// One interface of a node towards a segment, a NAT LAN or an edge LAN.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Uplink {
    pub ifname: String,
    pub on: Attach,
    /// Host part of its addresses on that subnet.
    pub host: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Role {
    MapServer {
        control: Ipv4Addr,
    },
    /// A robot's agent, mobile-node mode.
    Robot {
        eid: Ipv4Addr,
        control: Ipv4Addr,
    },
    /// An edge router's agent (xTR mode) for [`EDGE_PREFIX`].
    Edge {
        control: Ipv4Addr,
    },
    /// A host without a lispwg daemon (behind the edge, or raw sockets).
    Host,
    /// A NAT router; its LAN is 10.10.`lan`.0/24.
    Nat {
        rules: NatRules,
        lan: u8,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// Its namespace is `<prefix>-<name>`; an agent's daemon has its name.
    pub name: String,
    /// Interface tag: its WireGuard interface is `<prefix>-<short>`.
    pub short: String,
    pub role: Role,
    pub family: Family,
    pub uplinks: Vec<Uplink>,
    /// The uplink with addresses and the default route; the others are up
    /// without addresses until [`crate::Lab::move_node`].
    pub active: usize,
    /// Whether `up` starts its daemon.
    pub start: bool,
}

impl Node {
    /// Its daemon: `map-server` (ms), `map-server2` (ms2), or an agent by
    /// the node's name.
    pub fn daemon(&self) -> Option<String> {
        match self.role {
            Role::MapServer { .. } => Some(format!(
                "map-server{}",
                self.short.strip_prefix("ms").unwrap_or(&self.short)
            )),
            Role::Robot { .. } | Role::Edge { .. } => Some(self.name.clone()),
            Role::Host | Role::Nat { .. } => None,
        }
    }

    pub fn is_agent(&self) -> bool {
        matches!(self.role, Role::Robot { .. } | Role::Edge { .. })
    }

    pub fn control(&self) -> Option<Ipv4Addr> {
        match self.role {
            Role::MapServer { control } | Role::Robot { control, .. } | Role::Edge { control } => {
                Some(control)
            }
            _ => None,
        }
    }

    /// The EID prefix its agent registers.
    pub fn eid_prefix(&self) -> Option<String> {
        match self.role {
            Role::Robot { eid, .. } => Some(format!("{eid}/32")),
            Role::Edge { .. } => Some(EDGE_PREFIX.into()),
            _ => None,
        }
    }
}

/// The nodes of a lab and what they run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabSpec {
    /// Namespace and interface prefix; by default `lw<tag><pid><n>`.
    pub prefix: Option<String>,
    /// Up to 2 characters in the default prefix, to tell labs apart.
    pub tag: String,
    pub push_moves: bool,
    pub static_mappings: Vec<StaticMapping>,
    /// coturn on the first map-server's host.
    pub coturn: bool,
    /// The map-servers' per-peer budgets (their defaults when `None`).
    #[serde(default)]
    pub ms_limits: Option<crate::config::MsLimits>,
    pub nodes: Vec<Node>,
}

fn uplink(ifname: &str, on: Attach, host: u8) -> Uplink {
    Uplink {
        ifname: ifname.into(),
        on,
        host,
    }
}

fn node(name: &str, short: &str, role: Role, uplinks: Vec<Uplink>) -> Node {
    Node {
        name: name.into(),
        short: short.into(),
        role,
        family: Family::V4,
        uplinks,
        active: 0,
        start: true,
    }
}

fn ctl(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, host)
}

impl LabSpec {
    /// The campus router alone: add hosts, NATs and daemons to it.
    pub fn bare() -> LabSpec {
        LabSpec {
            prefix: None,
            tag: String::new(),
            push_moves: true,
            static_mappings: Vec::new(),
            coturn: false,
            ms_limits: None,
            nodes: Vec::new(),
        }
    }

    /// The lab of `scripts/lab.sh` (see the module docs): one map-server,
    /// robot-a, robot-b (with a spare interface on subnet A), the edge xTR
    /// and the host behind it.
    pub fn campus() -> LabSpec {
        use Segment::*;
        let mut ms = node(
            "ms",
            "ms",
            Role::MapServer { control: ctl(1) },
            vec![uplink("eth0", Attach::Segment(Public), 10)],
        );
        ms.family = Family::Dual;
        let robot_b = node(
            "robot-b",
            "b",
            Role::Robot {
                eid: ROBOT_B_EID,
                control: ctl(3),
            },
            vec![
                uplink("eth0", Attach::Segment(SubnetB), 10),
                uplink("eth1", Attach::Segment(SubnetA), 30),
            ],
        );
        let mut spec = LabSpec::bare();
        spec.nodes = vec![
            ms,
            node(
                "robot-a",
                "a",
                Role::Robot {
                    eid: ROBOT_A_EID,
                    control: ctl(2),
                },
                vec![uplink("eth0", Attach::Segment(SubnetA), 10)],
            ),
            robot_b,
            node(
                "edge",
                "e",
                Role::Edge { control: ctl(4) },
                vec![uplink("eth0", Attach::Segment(SubnetA), 20)],
            ),
            node(
                "host",
                "h",
                Role::Host,
                vec![uplink("eth0", Attach::Edge("edge".into()), 10)],
            ),
        ];
        spec
    }

    /// A tag (up to 2 characters) in the default prefix.
    /// The map-servers' per-peer budgets.
    /// The map-server and `n` robots `r1` … `rn` (1 ≤ n ≤ 200), on subnets
    /// A and B in turn, with EIDs 10.2.0.1 … and control addresses
    /// 100.64.0.11 …: for fleet-scale runs.
    pub fn fleet(n: u8) -> LabSpec {
        use Segment::*;
        assert!((1..=200).contains(&n), "a fleet of 1 to 200 robots");
        let mut spec = LabSpec::bare();
        spec.nodes.push(node(
            "ms",
            "ms",
            Role::MapServer { control: ctl(1) },
            vec![uplink("eth0", Attach::Segment(Public), 10)],
        ));
        for i in 1..=n {
            let on = if i % 2 == 1 { SubnetA } else { SubnetB };
            spec.nodes.push(node(
                &format!("r{i}"),
                &format!("r{i}"),
                Role::Robot {
                    eid: Ipv4Addr::new(10, 2, 0, i),
                    control: ctl(10 + i),
                },
                vec![uplink("eth0", Attach::Segment(on), 40 + i.div_ceil(2))],
            ));
        }
        spec
    }

    pub fn ms_limits(mut self, limits: crate::config::MsLimits) -> LabSpec {
        self.ms_limits = Some(limits);
        self
    }

    pub fn tag(mut self, tag: &str) -> LabSpec {
        assert!(tag.len() <= 2, "lab tag {tag:?}: at most 2 characters");
        self.tag = tag.into();
        self
    }

    /// The namespace and interface prefix (at most 10 characters).
    pub fn prefix(mut self, prefix: &str) -> LabSpec {
        assert!(
            prefix.len() <= 10,
            "lab prefix {prefix:?}: at most 10 characters"
        );
        self.prefix = Some(prefix.into());
        self
    }

    /// One or two map-servers (the second, ms2, at 192.0.2.11).
    pub fn map_servers(mut self, n: u8) -> LabSpec {
        assert!(n == 1 || n == 2, "one or two map-servers, not {n}");
        self.nodes.retain(|n| n.name != "ms2");
        if n == 2 {
            let mut ms2 = node(
                "ms2",
                "ms2",
                Role::MapServer { control: ctl(254) },
                vec![uplink("eth0", Attach::Segment(Segment::Public), 11)],
            );
            ms2.family = Family::Dual;
            let at = self
                .nodes
                .iter()
                .position(|n| n.name == "ms")
                .map_or(0, |i| i + 1);
            self.nodes.insert(at, ms2);
        }
        self
    }

    pub fn push_moves(mut self, on: bool) -> LabSpec {
        self.push_moves = on;
        self
    }

    pub fn static_mappings(mut self, mappings: Vec<StaticMapping>) -> LabSpec {
        self.static_mappings = mappings;
        self
    }

    /// coturn on the map-server's host.
    pub fn coturn(mut self) -> LabSpec {
        self.coturn = true;
        self
    }

    /// Leaves out `name` (and the host behind it, for the edge).
    pub fn without(mut self, name: &str) -> LabSpec {
        self.node_mut(name);
        let behind = Attach::Edge(name.into());
        self.nodes
            .retain(|n| n.name != name && !n.uplinks.iter().any(|u| u.on == behind));
        self
    }

    /// `name` is built, but `up` does not start its daemon.
    pub fn idle(mut self, name: &str) -> LabSpec {
        self.node_mut(name).start = false;
        self
    }

    /// No lispwg daemon is started by `up` (coturn still is).
    pub fn idle_all(mut self) -> LabSpec {
        for n in &mut self.nodes {
            n.start = false;
        }
        self
    }

    /// One more robot `name` (`short`: at most 2 characters, for interface
    /// names) with host EID `eid` and control address 100.64.0.`control`,
    /// on segment `on` (at the next free host address there).
    pub fn robot(
        mut self,
        name: &str,
        short: &str,
        eid: Ipv4Addr,
        control: u8,
        on: Segment,
    ) -> LabSpec {
        assert!(
            short.len() <= 2,
            "robot short name {short:?}: at most 2 characters"
        );
        let on = Attach::Segment(on);
        let host = self.next_host(&on);
        self.nodes.push(node(
            name,
            short,
            Role::Robot {
                eid,
                control: ctl(control),
            },
            vec![uplink("eth0", on, host)],
        ));
        self
    }

    /// A host without daemons (for raw sockets) on `on`.
    pub fn host(mut self, name: &str, on: Attach) -> LabSpec {
        assert!(name.len() <= 4, "host name {name:?}: at most 4 characters");
        let host = self.next_host(&on);
        self.nodes
            .push(node(name, name, Role::Host, vec![uplink("eth0", on, host)]));
        self
    }

    /// NAT router `name` (at most 4 characters) of `kind` with its `wan` on
    /// `wan` and its LAN 10.10.n.0/24, n counting NAT routers from 1.
    pub fn nat(mut self, name: &str, kind: NatKind, wan: Segment) -> LabSpec {
        assert!(name.len() <= 4, "NAT name {name:?}: at most 4 characters");
        let lan = 1 + self
            .nodes
            .iter()
            .filter(|n| matches!(n.role, Role::Nat { .. }))
            .count() as u8;
        let mut nat = node(
            name,
            name,
            Role::Nat {
                rules: NatRules::new(kind),
                lan,
            },
            vec![uplink("wan", Attach::Segment(wan), 100 + lan)],
        );
        nat.family = Family::Dual;
        // Before the nodes that will sit behind it.
        self.nodes.insert(0, nat);
        self
    }

    /// `node` with one uplink, on the LAN of NAT router `nat`.
    pub fn behind(self, node: &str, nat: &str) -> LabSpec {
        self.uplinks(node, &[Attach::Nat(nat.into())])
    }

    /// `node`'s uplinks `eth0`, `eth1`, … on `ons`, the first active: a
    /// robot that moves between them (e.g. from one NAT to another).
    pub fn uplinks(mut self, node: &str, ons: &[Attach]) -> LabSpec {
        assert!(!ons.is_empty(), "{node}: at least one uplink");
        for on in ons {
            if let Attach::Nat(n) | Attach::Edge(n) = on {
                self.node_mut(n);
            }
        }
        self.node_mut(node).uplinks.clear();
        for (i, on) in ons.iter().enumerate() {
            let host = self.next_host(on);
            let n = self.node_mut(node);
            n.uplinks.push(uplink(&format!("eth{i}"), on.clone(), host));
            n.active = 0;
        }
        self
    }

    /// Dual-stack or IPv6-only uplinks for `node`.
    pub fn family(mut self, node: &str, family: Family) -> LabSpec {
        self.node_mut(node).family = family;
        self
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("the lab has no node {name:?} (it has {names:?})"))
    }

    /// The nodes whose uplinks are on `on`.
    fn next_host(&self, on: &Attach) -> u8 {
        self.nodes
            .iter()
            .flat_map(|n| &n.uplinks)
            .filter(|u| u.on == *on && u.host < 100)
            .map(|u| u.host + 1)
            .max()
            .unwrap_or(10)
            .max(10)
    }

    /// The subnet an uplink plugs into.
    pub fn subnet(&self, on: &Attach) -> Subnet {
        match on {
            Attach::Segment(s) => s.subnet(),
            Attach::Nat(n) => match self.node(n).map(|n| &n.role) {
                Some(Role::Nat { lan, .. }) => Subnet {
                    v4: [10, 10, *lan],
                    v6: Some([0x2001, 0xdb8, 1, u16::from(*lan)]),
                },
                _ => panic!("{n} is not a NAT router"),
            },
            Attach::Edge(_) => Subnet {
                v4: [10, 1, 0],
                v6: None,
            },
        }
    }

    /// The addresses of `node`'s uplink `i` (IPv4 /24, IPv6 /64) by its
    /// family.
    pub fn addresses(&self, node: &Node, i: usize) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let u = &node.uplinks[i];
        let s = self.subnet(&u.on);
        let v4 = (node.family != Family::V6).then(|| s.v4(u.host));
        let v6 = if node.family == Family::V4 {
            None
        } else {
            s.v6(u.host)
        };
        (v4, v6)
    }

    /// A node's address on its active uplink, IPv4 first.
    pub fn address(&self, name: &str) -> Option<IpAddr> {
        let n = self.node(name)?;
        let (v4, v6) = self.addresses(n, n.active);
        v4.map(IpAddr::V4).or(v6.map(IpAddr::V6))
    }

    /// The `ip -batch` lines that give uplink `i` its addresses and the
    /// default routes.
    pub fn activate(&self, node: &Node, i: usize) -> String {
        let u = &node.uplinks[i];
        let s = self.subnet(&u.on);
        let (v4, v6) = self.addresses(node, i);
        let mut b = String::new();
        if let Some(a) = v4 {
            b += &format!("address add {a}/24 dev {}\n", u.ifname);
        }
        if let Some(a) = v6 {
            b += &format!("address add {a}/64 dev {} nodad\n", u.ifname);
        }
        if v4.is_some() {
            b += &format!("route replace default via {} dev {}\n", s.v4(1), u.ifname);
        }
        if let (Some(_), Some(gw)) = (v6, s.v6(1)) {
            b += &format!("route replace ::/0 via {gw} dev {}\n", u.ifname);
        }
        b
    }

    /// The `ip -batch` lines that take uplink `i`'s addresses away.
    pub fn deactivate(&self, node: &Node, i: usize) -> String {
        let u = &node.uplinks[i];
        let (v4, v6) = self.addresses(node, i);
        let mut b = String::new();
        if let Some(a) = v4 {
            b += &format!("address del {a}/24 dev {}\n", u.ifname);
        }
        if let Some(a) = v6 {
            b += &format!("address del {a}/64 dev {}\n", u.ifname);
        }
        b
    }

    /// Map-server nodes, in order (ms before ms2).
    pub fn map_server_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.role, Role::MapServer { .. }))
    }

    /// Every daemon: (daemon name, node name).
    pub fn daemons(&self) -> Vec<(String, String)> {
        let mut d: Vec<(String, String)> = self
            .nodes
            .iter()
            .filter_map(|n| Some((n.daemon()?, n.name.clone())))
            .collect();
        if self.coturn {
            if let Some(ms) = self.map_server_nodes().next() {
                d.push(("coturn".into(), ms.name.clone()));
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_campus_is_the_address_plan_of_lab_sh() {
        let spec = LabSpec::campus().map_servers(2);
        let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["ms", "ms2", "robot-a", "robot-b", "edge", "host"]);
        assert_eq!(spec.address("robot-a"), Some(ROBOT_A_RLOC.into()));
        assert_eq!(spec.address("robot-b"), Some(ROBOT_B_RLOC.into()));
        assert_eq!(spec.address("ms"), Some(MS_RLOC.into()));
        assert_eq!(spec.address("host"), Some(HOST_EID.into()));
        let b = spec.node("robot-b").unwrap();
        assert_eq!(
            spec.deactivate(b, 0) + &spec.activate(b, 1),
            "address del 203.0.113.10/24 dev eth0\naddress add 198.51.100.30/24 dev eth1\n\
             route replace default via 198.51.100.1 dev eth1\n"
        );
        let daemons: Vec<String> = spec.daemons().into_iter().map(|d| d.0).collect();
        assert_eq!(
            daemons,
            ["map-server", "map-server2", "robot-a", "robot-b", "edge"]
        );
        assert_eq!(spec.clone().without("edge").nodes.len(), 4);
    }

    #[test]
    fn nat_lans_and_families() {
        let spec = LabSpec::campus()
            .nat("n1", NatKind::Eim, Segment::SubnetA)
            .nat("n2", NatKind::Edm, Segment::SubnetB)
            .behind("robot-a", "n1")
            .uplinks(
                "robot-b",
                &[Attach::Nat("n1".into()), Attach::Nat("n2".into())],
            )
            .family("robot-b", Family::Dual);
        assert_eq!(spec.address("n1"), Some("198.51.100.101".parse().unwrap()));
        assert_eq!(spec.address("n2"), Some("203.0.113.102".parse().unwrap()));
        assert_eq!(spec.address("robot-a"), Some("10.10.1.10".parse().unwrap()));
        let b = spec.node("robot-b").unwrap();
        assert_eq!(
            spec.addresses(b, 0),
            (
                Some("10.10.1.11".parse().unwrap()),
                Some("2001:db8:1:1::11".parse().unwrap())
            )
        );
        assert_eq!(spec.addresses(b, 1).0, Some("10.10.2.10".parse().unwrap()));
        let v6 = spec.clone().family("robot-a", Family::V6);
        assert_eq!(
            v6.address("robot-a"),
            Some("2001:db8:1:1::10".parse().unwrap())
        );
        assert!(spec
            .activate(b, 1)
            .contains("route replace ::/0 via 2001:db8:1:2::1 dev eth1"));
    }
}
