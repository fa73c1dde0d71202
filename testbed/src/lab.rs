//! [`Lab`]: a [`LabSpec`] built in namespaces, with the daemons' keys and
//! configurations written into its state folder and the daemons started.
//!
//! The state folder holds everything: `lab.json` (the prefix and the spec),
//! `namespaces` (each name written before the namespace is made), the
//! configurations, keys (0600), logs and `<daemon>.pid` files. [`Lab::down_dir`]
//! removes all the lab made from those files alone, so a lab whose `up`
//! crashed is still torn down completely.
//!
//! Dropping a `Lab` stops its daemons by PID (agents first, so that they
//! remove what they made), deletes its namespaces and, unless the thread is
//! already panicking, panics if anything is left behind. A lab that
//! [`Lab::detach`]es stays up for a later [`Lab::open`] (`lispwg-lab`).

use crate::config::{
    write_toml, AllowedEid, MapServerConfig, MsControl, MsPeer, MsRelay, MsRelayServer, MsServer,
    XtrConfig, XtrControl, XtrEid, XtrLan, XtrMapServer, XtrOverlay, XtrRelay, XtrRloc,
    XtrWireguard,
};
use crate::daemon::Daemon;
use crate::files::{keypair, public_key_of, random_token, secret_file, Bins};
use crate::nat::NatRouter;
use crate::netns::{veth, Netns};
use crate::topology::*;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const STATE: &str = "lab.json";
const NAMESPACES: &str = "namespaces";
/// How long a daemon may take to be ready.
const READY_LIMIT: Duration = Duration::from_secs(20);

#[derive(Serialize, Deserialize)]
struct State {
    prefix: String,
    spec: LabSpec,
}

/// What a daemon is, for starting it and telling it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MapServer,
    Agent,
    Coturn,
}

pub struct Lab {
    spec: LabSpec,
    prefix: String,
    dir: PathBuf,
    bins: Option<Bins>,
    /// In creation order, the router first.
    namespaces: Vec<(String, Netns)>,
    daemons: BTreeMap<String, Daemon>,
    detached: bool,
    /// The state folder of a [`Lab::for_test`], removed after the teardown.
    _scratch: Option<tempfile::TempDir>,
}

/// `lw` + tag + pid % 10000 + one character counting this process's labs:
/// at most 9 characters, unique among concurrent test processes.
fn default_prefix(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) % 36;
    let c = char::from_digit(n, 36).expect("n < 36");
    format!("lw{tag}{}{c}", std::process::id() % 10_000)
}

impl Lab {
    /// Builds `spec` with its state in `dir`, writes the daemons' keys and
    /// configurations, starts the daemons (map-servers, coturn, then the
    /// agents) and waits until every agent has registered. On an error,
    /// everything made so far is torn down and the error holds the logs.
    pub fn up(spec: LabSpec, dir: &Path, bins: &Bins) -> Result<Lab> {
        Lab::build(spec, dir, Some(bins.clone()))
    }

    /// [`Lab::up`] for a test: checks root and the tools (failing, never
    /// skipping, without them), builds the workspace's binaries if missing,
    /// keeps the state in a temporary folder, and panics with the daemons'
    /// logs if the lab does not come up.
    pub fn for_test(spec: LabSpec) -> Lab {
        let mut tools = crate::BASE_TOOLS.to_vec();
        if spec.coturn {
            tools.extend_from_slice(crate::RELAY_TOOLS);
        }
        if spec
            .nodes
            .iter()
            .any(|n| matches!(n.role, Role::Nat { .. }))
        {
            tools.extend_from_slice(crate::NAT_TOOLS);
        }
        crate::require_root_and_tools(&tools).unwrap_or_else(|e| panic!("{e:#}"));
        let scratch = crate::tempdir();
        let mut lab = if spec.nodes.iter().any(|n| n.daemon().is_some() && n.start) {
            Lab::up(spec, scratch.path(), &Bins::workspace())
        } else {
            Lab::network(spec, scratch.path())
        }
        .unwrap_or_else(|e| panic!("the lab did not come up: {e:#}"));
        lab._scratch = Some(scratch);
        lab
    }

    /// Builds `spec`'s namespaces and links, and coturn if it has it, but
    /// no lispwg daemon (their nodes must be [`LabSpec::idle`]): for tests
    /// with raw sockets.
    pub fn network(spec: LabSpec, dir: &Path) -> Result<Lab> {
        Lab::build(spec, dir, None)
    }

    fn build(spec: LabSpec, dir: &Path, bins: Option<Bins>) -> Result<Lab> {
        crate::files::private_dir(dir)?;
        if dir.join(STATE).exists() {
            bail!(
                "a lab is up with its state in {} (take it down first)",
                dir.display()
            );
        }
        let prefix = spec
            .prefix
            .clone()
            .unwrap_or_else(|| default_prefix(&spec.tag));
        crate::check_ifname(&format!("{prefix}-ms2m"))
            .with_context(|| format!("lab prefix {prefix:?} is too long"))?;
        let mut lab = Lab::new(spec, prefix, dir, bins, false);
        lab.save()?;
        std::fs::write(lab.dir.join(NAMESPACES), "")?;
        lab.build_network().context("building the lab's network")?;
        lab.write_configs()?;
        lab.start_all()
            .map_err(|e| anyhow!("{e:#}\n{}", lab.logs()))?;
        Ok(lab)
    }

    /// The lab whose state is in `dir`, as an earlier process left it up.
    /// Dropping it leaves it up; [`Lab::down`] takes it down.
    pub fn open(dir: &Path, bins: Option<&Bins>) -> Result<Lab> {
        let text = std::fs::read_to_string(dir.join(STATE))
            .with_context(|| format!("no lab is up with its state in {}", dir.display()))?;
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a lab state", dir.join(STATE).display()))?;
        let mut lab = Lab::new(state.spec, state.prefix, dir, bins.cloned(), true);
        let names = std::fs::read_to_string(dir.join(NAMESPACES)).unwrap_or_default();
        for name in names.lines().filter(|n| Netns::exists(n)) {
            let node = name
                .strip_prefix(&format!("{}-", lab.prefix))
                .unwrap_or(name)
                .to_string();
            lab.namespaces.push((node, Netns::existing(name)));
        }
        for (daemon, _) in lab.spec.daemons() {
            let pid_file = lab.dir.join(format!("{daemon}.pid"));
            if let Some(d) = Daemon::adopt(&daemon, &pid_file, &lab.log_path(&daemon))? {
                lab.daemons.insert(daemon, d);
            }
        }
        Ok(lab)
    }

    /// Takes down the lab whose state is in `dir`, whatever state its `up`
    /// left it in. Nothing to do is not an error.
    pub fn down_dir(dir: &Path) -> Result<()> {
        if !dir.join(STATE).exists() {
            // An up that crashed before writing its state made nothing.
            return Ok(());
        }
        Lab::open(dir, None)?.down()
    }

    /// Stops the daemons, deletes the namespaces, removes the state files
    /// (configurations and logs stay); an error names what is left behind.
    pub fn down(mut self) -> Result<()> {
        self.detached = true;
        let left = self.teardown();
        if !left.is_empty() {
            bail!("left behind: {}", left.join("; "));
        }
        Ok(())
    }

    /// Leaves the lab up (namespaces, daemons, state) when this is dropped.
    pub fn detach(mut self) {
        self.detached = true;
        for (_, ns) in &mut self.namespaces {
            ns.keep();
        }
    }

    fn new(spec: LabSpec, prefix: String, dir: &Path, bins: Option<Bins>, detached: bool) -> Lab {
        Lab {
            spec,
            prefix,
            dir: dir.to_path_buf(),
            bins,
            namespaces: Vec::new(),
            daemons: BTreeMap::new(),
            detached,
            _scratch: None,
        }
    }

    fn save(&self) -> Result<()> {
        let state = State {
            prefix: self.prefix.clone(),
            spec: self.spec.clone(),
        };
        let tmp = self.dir.join(format!("{STATE}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(&state)?)?;
        std::fs::rename(&tmp, self.dir.join(STATE))?;
        Ok(())
    }

    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn node(&self, name: &str) -> Result<&Node> {
        self.spec.node(name).ok_or_else(|| {
            let names: Vec<&str> = self.spec.nodes.iter().map(|n| n.name.as_str()).collect();
            anyhow!(
                "the lab has no node {name:?}; nodes: router {}",
                names.join(" ")
            )
        })
    }

    /// The namespace of node `name` (`router` for the campus router).
    /// Panics on a node the lab does not have.
    pub fn ns(&self, name: &str) -> &Netns {
        self.namespaces
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ns)| ns)
            .unwrap_or_else(|| panic!("the lab has no namespace for node {name:?}"))
    }

    /// The WireGuard interface of node `name`: `<prefix>-<short>`.
    pub fn wg_if(&self, name: &str) -> String {
        let short = self.spec.node(name).map_or(name, |n| n.short.as_str());
        format!("{}-{short}", self.prefix)
    }

    /// The miss TUN of agent `name`.
    pub fn miss_if(&self, name: &str) -> String {
        self.wg_if(name) + "m"
    }

    /// The address of node `name` on its active uplink, IPv4 first.
    pub fn address(&self, name: &str) -> IpAddr {
        self.spec
            .address(name)
            .unwrap_or_else(|| panic!("node {name:?} has no address"))
    }

    pub fn config_path(&self, daemon: &str) -> PathBuf {
        let file = if daemon == "coturn" {
            "coturn.conf".to_string()
        } else {
            format!("{daemon}.toml")
        };
        self.dir.join(file)
    }

    pub fn log_path(&self, daemon: &str) -> PathBuf {
        self.dir.join(format!("{daemon}.log"))
    }

    /// The base64 public key of node `name`.
    pub fn public_key(&self, name: &str) -> Result<String> {
        public_key_of(&self.dir.join(format!("{name}.key")))
    }

    // -----------------------------------------------------------------------
    // Network
    // -----------------------------------------------------------------------

    fn add_namespace(&mut self, node: &str) -> Result<()> {
        let name = format!("{}-{node}", self.prefix);
        if Netns::exists(&name) {
            bail!(
                "namespace {name} exists: another lab with prefix {} is up",
                self.prefix
            );
        }
        // Recorded before it exists: a crash right after still cleans it.
        let mut list = std::fs::read_to_string(self.dir.join(NAMESPACES)).unwrap_or_default();
        list += &format!("{name}\n");
        std::fs::write(self.dir.join(NAMESPACES), list)?;
        let ns = Netns::create(&name)?;
        // No duplicate address detection, link-local addresses included:
        // IPv6 is usable at once instead of a second later.
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ])?;
        self.namespaces.push((node.to_string(), ns));
        Ok(())
    }

    fn build_network(&mut self) -> Result<()> {
        self.add_namespace("router")?;
        let r = self.ns("router");
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for seg in Segment::ALL {
            let br = seg.bridge();
            let s = self.spec.subnet(&Attach::Segment(seg));
            r.ip(&["link", "add", br, "type", "bridge"])?;
            r.ip(&["link", "set", br, "up"])?;
            r.ip(&["addr", "add", &format!("{}/24", s.v4(1)), "dev", br])?;
            if let Some(v6) = s.v6(1) {
                r.ip(&["addr", "add", &format!("{v6}/64"), "dev", br, "nodad"])?;
            }
        }
        // NAT routers before what sits behind them, edges before their host.
        let rank = |n: &Node| match n.role {
            Role::Nat { .. } => 0,
            _ if n.uplinks.iter().any(|u| matches!(u.on, Attach::Edge(_))) => 2,
            _ => 1,
        };
        let mut order: Vec<Node> = self.spec.nodes.clone();
        order.sort_by_key(rank);
        for node in &order {
            self.build_node(node)
                .with_context(|| format!("building node {}", node.name))?;
        }
        Ok(())
    }

    fn build_node(&mut self, node: &Node) -> Result<()> {
        self.add_namespace(&node.name)?;
        let ns = self.ns(&node.name);
        if let Role::Nat { lan, .. } = node.role {
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            // With br_netfilter loaded, frames bridged between two hosts of
            // the LAN would go through the router's forward filter (and be
            // dropped): a LAN switch does not filter.
            if Path::new("/proc/sys/net/bridge").exists() {
                ns.sysctl("net.bridge.bridge-nf-call-iptables", "0")?;
                ns.sysctl("net.bridge.bridge-nf-call-ip6tables", "0")?;
            }
            let s = self.spec.subnet(&Attach::Nat(node.name.clone()));
            ns.ip(&["link", "add", "lan", "type", "bridge"])?;
            ns.ip(&["link", "set", "lan", "up"])?;
            ns.ip(&["addr", "add", &format!("{}/24", s.v4(1)), "dev", "lan"])?;
            if let Some(v6) = s.v6(1) {
                ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "lan", "nodad"])?;
            }
            debug_assert!(lan > 0);
        }
        for i in 0..node.uplinks.len() {
            self.attach(node, i)?;
        }
        if let Role::Nat { rules, .. } = node.role {
            NatRouter::install(self.ns(&node.name), rules)?;
            // IPv6 is routed to the NAT router's LAN, not translated.
            let s = self.spec.subnet(&Attach::Nat(node.name.clone()));
            if let (Some(prefix), (_, Some(wan6))) =
                (s.v6_prefix(), self.spec.addresses(node, node.active))
            {
                self.ns("router")
                    .ip(&["-6", "route", "add", &prefix, "via", &wan6.to_string()])?;
            }
        }
        Ok(())
    }

    /// Uplink `i` of `node`: a veth to a bridge (segment or NAT LAN) or to
    /// an edge's `lan`; addresses and default routes if it is the active one.
    fn attach(&self, node: &Node, i: usize) -> Result<()> {
        let u = &node.uplinks[i];
        let port = format!("{}-{}", node.short, u.ifname);
        let (side, side_if, bridge) = match &u.on {
            Attach::Segment(s) => (self.ns("router"), port, Some(s.bridge())),
            Attach::Nat(n) => (self.ns(n), port, Some("lan")),
            Attach::Edge(e) => (self.ns(e), "lan".to_string(), None),
        };
        let ns = self.ns(&node.name);
        veth(ns, &u.ifname, side, &side_if)?;
        match bridge {
            Some(br) => side.ip(&["link", "set", &side_if, "master", br, "up"])?,
            None => {
                let gw = self.spec.subnet(&u.on).v4(1);
                side.ip(&["addr", "add", &format!("{gw}/24"), "dev", &side_if])?;
                side.ip(&["link", "set", &side_if, "up"])?
            }
        };
        ns.ip(&["link", "set", &u.ifname, "up"])?;
        if i == node.active {
            ns.ip_batch(&self.spec.activate(node, i))?;
        }
        Ok(())
    }

    /// Moves `node` to its next uplink in one `ip -batch` (old addresses
    /// off, new ones on, default routes replaced); returns how long that
    /// took.
    pub fn move_node(&mut self, name: &str) -> Result<Duration> {
        let node = self.node(name)?.clone();
        if node.uplinks.len() < 2 {
            bail!("{name} has one uplink: nowhere to move");
        }
        let next = (node.active + 1) % node.uplinks.len();
        self.move_to(name, next)
    }

    /// Moves `node` to uplink `i` (see [`Lab::move_node`]).
    pub fn move_to(&mut self, name: &str, i: usize) -> Result<Duration> {
        let node = self.node(name)?.clone();
        if i >= node.uplinks.len() {
            bail!("{name} has no uplink {i}");
        }
        let batch = self.spec.deactivate(&node, node.active) + &self.spec.activate(&node, i);
        let t = Instant::now();
        self.ns(name).ip_batch(&batch)?;
        let took = t.elapsed();
        if let Some(n) = self.spec.nodes.iter_mut().find(|n| n.name == name) {
            n.active = i;
        }
        self.save()?;
        Ok(took)
    }

    /// The NAT router `name`, to change its rules live.
    pub fn nat(&self, name: &str) -> Result<NatRouter<'_>> {
        match self.node(name)?.role {
            Role::Nat { rules, .. } => Ok(NatRouter::of(self.ns(name), rules)),
            _ => bail!("{name} is not a NAT router"),
        }
    }

    // -----------------------------------------------------------------------
    // Configurations
    // -----------------------------------------------------------------------

    fn write_configs(&self) -> Result<()> {
        let d = &self.dir;
        let mut keys = BTreeMap::new();
        for n in &self.spec.nodes {
            if n.daemon().is_some() {
                keys.insert(n.name.clone(), keypair(&d.join(format!("{}.key", n.name)))?);
            }
            if n.is_agent() {
                secret_file(&d.join(format!("{}.site", n.name)), &random_token(32))?;
            }
        }
        for n in self.spec.map_server_nodes() {
            self.write_ms_config(n, &keys)?;
        }
        for n in self.spec.nodes.iter().filter(|n| n.is_agent()) {
            write_toml(&self.config_path(&n.name), &self.xtr_config(n, &keys))?;
        }
        if self.spec.coturn {
            let ms = self
                .spec
                .map_server_nodes()
                .next()
                .context("coturn runs on the map-server's host: the lab has none")?;
            let (v4, v6) = self.spec.addresses(ms, ms.active);
            let listen: Vec<IpAddr> = v4
                .map(IpAddr::V4)
                .into_iter()
                .chain(v6.map(IpAddr::V6))
                .collect();
            secret_file(&d.join("turn.secret"), &random_token(32))?;
            crate::turn::write_config(d, &listen, &self.turn_secret()?)?;
        }
        Ok(())
    }

    fn write_ms_config(&self, ms: &Node, keys: &BTreeMap<String, String>) -> Result<()> {
        let daemon = ms.daemon().expect("a map-server node has a daemon");
        let peers = self
            .spec
            .nodes
            .iter()
            .filter(|n| n.is_agent())
            .map(|n| MsPeer {
                name: n.name.clone(),
                public_key: keys.get(&n.name).cloned(),
                control_address: n.control().expect("agents have one").to_string(),
                site_key_file: format!("{}.site", n.name),
                eids: vec![AllowedEid::exact(n.eid_prefix().expect("agents have one"))],
            })
            .collect();
        let config = MapServerConfig {
            control: Some(MsControl {
                interface: self.wg_if(&ms.name),
                private_key_file: format!("{}.key", ms.name),
                listen_port: MS_WG_PORT,
                address: format!("{}/16", ms.control().expect("map-servers have one")),
                backend: "userspace".into(),
            }),
            server: MsServer {
                state_dir: format!("{daemon}-state"),
                metrics: MS_METRICS.into(),
                push_moves: Some(self.spec.push_moves),
                ..MsServer::default()
            },
            peers,
            static_mappings: self.spec.static_mappings.clone(),
            relay: self.ms_relay()?,
            limits: self.spec.ms_limits.clone(),
        };
        write_toml(&self.config_path(&daemon), &config)
    }

    /// The lab's coturn, as every map-server hands it out.
    fn ms_relay(&self) -> Result<Option<MsRelay>> {
        if !self.spec.coturn {
            return Ok(None);
        }
        let host = self
            .spec
            .map_server_nodes()
            .next()
            .and_then(|ms| self.spec.addresses(ms, ms.active).0)
            .context("coturn runs on the first map-server's host: it has no IPv4 address")?;
        let at = |port| SocketAddr::new(IpAddr::V4(host), port).to_string();
        Ok(Some(MsRelay {
            secret_file: "turn.secret".into(),
            credential_ttl_secs: None,
            servers: vec![MsRelayServer {
                udp: at(crate::turn::TURN_PORT),
                tls: at(crate::turn::TURN_TLS_PORT),
                tcp: at(crate::turn::TURN_PORT),
                tls_cert_file: "turn.crt".into(),
            }],
        }))
    }

    fn xtr_config(&self, n: &Node, keys: &BTreeMap<String, String>) -> XtrConfig {
        let has_v4 = n.family != Family::V6;
        let map_servers = self
            .spec
            .map_server_nodes()
            .map(|ms| {
                let (v4, v6) = self.spec.addresses(ms, ms.active);
                let ip = match (has_v4, v4, v6) {
                    (true, Some(a), _) => IpAddr::V4(a),
                    (_, _, Some(a)) => IpAddr::V6(a),
                    (_, Some(a), None) => IpAddr::V4(a),
                    (_, None, None) => unreachable!("a map-server has an address"),
                };
                // A dual-stack node is given the map-server's endpoint of
                // each family.
                let other = match (n.family, ip, v6) {
                    (Family::Dual, IpAddr::V4(_), Some(a)) => {
                        vec![SocketAddr::new(IpAddr::V6(a), MS_WG_PORT).to_string()]
                    }
                    _ => Vec::new(),
                };
                XtrMapServer {
                    name: ms.name.clone(),
                    endpoint: SocketAddr::new(ip, MS_WG_PORT).to_string(),
                    endpoints: other,
                    public_key: keys[&ms.name].clone(),
                    control_address: ms.control().expect("map-servers have one").to_string(),
                    site_key_file: format!("{}.site", n.name),
                }
            })
            .collect();
        let edge = matches!(n.role, Role::Edge { .. });
        XtrConfig {
            mode: if edge { "xtr" } else { "mobile-node" }.into(),
            metrics: XTR_METRICS.into(),
            state_dir: self.dir.display().to_string(),
            wireguard: XtrWireguard {
                interface: self.wg_if(&n.name),
                private_key_file: format!("{}.key", n.name),
                listen_port: WG_PORT,
                backend: "userspace".into(),
            },
            control: XtrControl {
                address: format!("{}/16", n.control().expect("agents have one")),
            },
            map_servers,
            eids: vec![XtrEid {
                prefix: n.eid_prefix().expect("agents have one"),
            }],
            rlocs: n
                .uplinks
                .iter()
                .enumerate()
                .map(|(i, u)| XtrRloc {
                    interface: u.ifname.clone(),
                    priority: i as u8 + 1,
                })
                .collect(),
            overlay: XtrOverlay {
                capture: vec![OVERLAY.into()],
                miss_interface: self.miss_if(&n.name),
            },
            lan: edge.then(|| XtrLan {
                interface: "lan".into(),
            }),
            relay: XtrRelay {
                enabled: self.spec.coturn,
                only: false,
                grant_file: self.grant_file(&n.name).display().to_string(),
            },
        }
    }

    /// Where agent `name` keeps its relay grant.
    pub fn grant_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-relay.json"))
    }

    /// Rewrites the map-servers' configurations with `push_moves` (takes
    /// effect when they restart).
    pub fn set_push_moves(&mut self, on: bool) -> Result<()> {
        self.spec.push_moves = on;
        self.save()?;
        let mut keys = BTreeMap::new();
        for n in self.spec.nodes.iter().filter(|n| n.daemon().is_some()) {
            keys.insert(n.name.clone(), self.public_key(&n.name)?);
        }
        for n in self.spec.map_server_nodes() {
            self.write_ms_config(n, &keys)?;
        }
        Ok(())
    }

    /// coturn's static auth secret.
    pub fn turn_secret(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.join("turn.secret"))
            .context("the lab runs no coturn")?
            .trim()
            .to_string())
    }

    /// TURN REST API credentials for `name`, valid for `ttl`.
    pub fn turn_credentials(&self, name: &str, ttl: Duration) -> Result<(String, String)> {
        Ok(crate::turn::credentials_for(
            &self.turn_secret()?,
            name,
            ttl,
        ))
    }

    // -----------------------------------------------------------------------
    // Daemons
    // -----------------------------------------------------------------------

    fn daemon_node(&self, daemon: &str) -> Result<(Kind, String)> {
        let all = self.spec.daemons();
        let Some((_, node)) = all.iter().find(|(d, _)| d == daemon) else {
            let names: Vec<&str> = all.iter().map(|(d, _)| d.as_str()).collect();
            bail!(
                "the lab has no daemon {daemon:?}; daemons: {}",
                names.join(" ")
            );
        };
        let kind = match (daemon, &self.node(node)?.role) {
            ("coturn", _) => Kind::Coturn,
            (_, Role::MapServer { .. }) => Kind::MapServer,
            _ => Kind::Agent,
        };
        Ok((kind, node.clone()))
    }

    fn start_all(&mut self) -> Result<()> {
        let daemons: Vec<(String, String)> = self
            .spec
            .daemons()
            .into_iter()
            .filter(|(d, n)| d == "coturn" || self.spec.node(n).is_some_and(|n| n.start))
            .collect();
        for (d, _) in &daemons {
            if self.daemon_node(d)?.0 != Kind::Agent {
                self.start(d)?;
            }
        }
        // The agents start together, then each is waited for.
        for (d, _) in &daemons {
            if self.daemon_node(d)?.0 == Kind::Agent {
                self.spawn(d)?;
            }
        }
        for (d, _) in &daemons {
            if self.daemon_node(d)?.0 == Kind::Agent {
                self.wait_ready(d)?;
            }
        }
        Ok(())
    }

    /// Starts `daemon` without waiting for it to be ready (see
    /// [`Lab::wait_ready`]).
    pub fn spawn(&mut self, daemon: &str) -> Result<()> {
        if self.daemons.get_mut(daemon).is_some_and(|d| d.is_running()) {
            bail!("{daemon} is running already");
        }
        let (kind, node) = self.daemon_node(daemon)?;
        let config = self.config_path(daemon);
        let config = config.to_str().context("config path")?;
        let program = match kind {
            Kind::Coturn => PathBuf::from("turnserver"),
            _ => {
                let bins = self
                    .bins
                    .as_ref()
                    .with_context(|| format!("{daemon} needs the binaries: use Lab::up"))?;
                if kind == Kind::MapServer {
                    bins.map_server.clone()
                } else {
                    bins.xtr.clone()
                }
            }
        };
        let args: &[&str] = match kind {
            Kind::Coturn => &["-c", config],
            _ => &["run", "-c", config],
        };
        let mut d = self
            .ns(&node)
            .spawn(daemon, &program, args, &self.log_path(daemon))?;
        d.record(&self.dir.join(format!("{daemon}.pid")))?;
        self.daemons.insert(daemon.to_string(), d);
        Ok(())
    }

    /// Starts `daemon` and waits until it is ready (a map-server answers on
    /// its telemetry address, an agent has registered, coturn answers a STUN
    /// binding request); returns how long that took.
    pub fn start(&mut self, daemon: &str) -> Result<Duration> {
        self.spawn(daemon)?;
        self.wait_ready(daemon)
    }

    /// Waits until `daemon` is ready (see [`Lab::start`]); an error, with
    /// the end of its log, if it exits or is not ready within 20 s.
    pub fn wait_ready(&mut self, daemon: &str) -> Result<Duration> {
        let t0 = Instant::now();
        let (kind, node) = self.daemon_node(daemon)?;
        let Some(mut d) = self.daemons.remove(daemon) else {
            bail!("{daemon} is not running");
        };
        let ns = self.ns(&node);
        let host = self.spec.address(&node);
        let what = match kind {
            Kind::MapServer => format!("{daemon} to answer on {MS_METRICS}"),
            Kind::Agent => format!("{daemon} to register"),
            Kind::Coturn => format!("{daemon} to answer a STUN binding request"),
        };
        let ready = crate::wait_for(READY_LIMIT, Duration::from_millis(5), &what, || {
            d.check_running()?;
            Ok(match kind {
                Kind::MapServer => ns.fetch(MS_METRICS.parse()?, "/metrics").ok().map(drop),
                Kind::Agent => ns
                    .fetch(XTR_METRICS.parse()?, "/status")
                    .is_ok_and(|s| s.contains("up, registered"))
                    .then_some(()),
                Kind::Coturn => {
                    let server = SocketAddr::new(
                        host.context("coturn's host has no address")?,
                        crate::turn::TURN_PORT,
                    );
                    let probe = Duration::from_millis(300);
                    ns.run(|| {
                        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
                        crate::turn::stun_binding(&sock, server, probe)
                    })?
                    .ok()
                    .map(drop)
                }
            })
        });
        let ready = ready.map_err(|e| {
            e.context(format!(
                "last lines of {}:\n{}",
                d.log_path().display(),
                d.log_tail(30)
            ))
        });
        self.daemons.insert(daemon.to_string(), d);
        ready.map(|()| t0.elapsed())
    }

    /// Stops `daemon` (SIGTERM: an agent removes what it made, then
    /// SIGKILL after 5 s). Returns its exit status when this process started
    /// it and it exited on SIGTERM.
    pub fn stop(&mut self, daemon: &str) -> Result<Option<ExitStatus>> {
        let status = self.daemons.remove(daemon).and_then(|mut d| d.stop());
        self.wait_wireguard_go_gone(daemon)?;
        Ok(status)
    }

    /// `kill -9` of `daemon`, and waits until its wireguard-go (which
    /// follows it) has exited too, so that a restart can take its port.
    pub fn kill9(&mut self, daemon: &str) -> Result<()> {
        if let Some(mut d) = self.daemons.remove(daemon) {
            d.kill9();
        }
        self.wait_wireguard_go_gone(daemon)
    }

    fn wait_wireguard_go_gone(&self, daemon: &str) -> Result<()> {
        let (kind, node) = self.daemon_node(daemon)?;
        if kind == Kind::Coturn {
            return Ok(());
        }
        let ifname = self.wg_if(&node);
        crate::wait_for(
            crate::daemon::STOP_GRACE,
            Duration::from_millis(5),
            &format!("the wireguard-go of {daemon} to exit"),
            || Ok(crate::wireguard_go_pids(&ifname).is_empty().then_some(())),
        )
    }

    pub fn pid(&self, daemon: &str) -> Option<u32> {
        self.daemons.get(daemon).map(Daemon::pid)
    }

    /// An error, with its log, if a daemon the lab started has exited.
    pub fn check_daemons(&mut self) -> Result<()> {
        for d in self.daemons.values_mut() {
            d.check_running()?;
        }
        Ok(())
    }

    /// A telemetry page (`/metrics`, `/status`) of `daemon`.
    pub fn fetch(&self, daemon: &str, path: &str) -> Result<String> {
        let (kind, node) = self.daemon_node(daemon)?;
        let addr = match kind {
            Kind::MapServer => MS_METRICS,
            Kind::Agent => XTR_METRICS,
            Kind::Coturn => bail!("coturn has no telemetry page"),
        };
        self.ns(&node).fetch(addr.parse()?, path)
    }

    /// The last lines of every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (daemon, _) in self.spec.daemons() {
            if let Ok(text) = std::fs::read_to_string(self.log_path(&daemon)) {
                s += &format!(
                    "--- {daemon}.log (last lines)\n{}\n",
                    crate::daemon::tail(&text, 40)
                );
            }
        }
        s
    }

    // -----------------------------------------------------------------------
    // Helpers for tests: they panic, with the daemons' logs
    // -----------------------------------------------------------------------

    /// Runs `args` in node `name`'s namespace and returns what it did.
    pub fn exec(&self, name: &str, args: &[&str]) -> Output {
        self.ns(name)
            .output(args)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Pings `to` from `from` `count` times (0.2 s apart) and panics, with
    /// the daemons' logs, unless every request is answered. Returns ping's
    /// output.
    #[track_caller]
    pub fn ping_ok(&self, from: &str, to: &str, count: u32) -> String {
        let n = count.to_string();
        let out = self.exec(from, &["ping", "-c", &n, "-i", "0.2", "-W", "2", to]);
        let t = crate::output_text(&out);
        assert!(
            t.contains(&format!("{count} packets transmitted, {count} received")),
            "{from} -> {to} lost packets:\n{t}\n{}",
            self.logs()
        );
        t
    }

    /// Pings `count` times at `interval` (seconds, as ping takes it) from
    /// node `from`: (replies received, ping's output).
    pub fn ping(&self, from: &str, to: &str, count: u32, interval: &str) -> (u32, String) {
        let n = count.to_string();
        let out = self.exec(from, &["ping", "-c", &n, "-i", interval, "-W", "2", to]);
        let t = crate::output_text(&out);
        let received = t
            .lines()
            .find_map(|l| {
                let (_, rest) = l.split_once("transmitted, ")?;
                rest.split(' ').next()?.parse().ok()
            })
            .unwrap_or(0);
        (received, t)
    }

    /// Counter or gauge `name` on `daemon`'s metrics page (0 when absent).
    /// Panics when the page cannot be fetched.
    #[track_caller]
    pub fn metric(&self, daemon: &str, name: &str) -> u64 {
        let page = self
            .fetch(daemon, "/metrics")
            .unwrap_or_else(|e| panic!("{daemon}'s /metrics: {e:#}"));
        crate::metric(&page, name).unwrap_or(0.0) as u64
    }

    /// `wg show <its interface> <field>` in node `name`'s namespace, as
    /// (key, value) lines.
    pub fn wg_show(&self, name: &str, field: &str) -> Vec<(String, String)> {
        let out = self.exec(name, &["wg", "show", &self.wg_if(name), field]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    // -----------------------------------------------------------------------
    // Teardown
    // -----------------------------------------------------------------------

    fn interfaces(&self) -> Vec<String> {
        let mut v = Vec::new();
        for n in self.spec.nodes.iter().filter(|n| n.daemon().is_some()) {
            v.push(self.wg_if(&n.name));
            if n.is_agent() {
                v.push(self.miss_if(&n.name));
            }
        }
        v
    }

    /// Everything down; returns what is left behind.
    fn teardown(&mut self) -> Vec<String> {
        // Agents first, so that they remove what they made while their
        // map-servers still run; then coturn and the map-servers.
        let mut order: Vec<String> = self.daemons.keys().cloned().collect();
        order.sort_by_key(|d| match self.daemon_node(d).map(|k| k.0) {
            Ok(Kind::Agent) => 0,
            Ok(Kind::Coturn) => 1,
            _ => 2,
        });
        for d in order {
            if let Some(mut d) = self.daemons.remove(&d) {
                d.stop();
            }
        }
        let mut names = Vec::new();
        while let Some((_, ns)) = self.namespaces.pop() {
            names.push(ns.name().to_string());
            if let Err(e) = ns.delete() {
                eprintln!("{e:#}");
            }
        }
        let listed = std::fs::read_to_string(self.dir.join(NAMESPACES)).unwrap_or_default();
        names.extend(listed.lines().map(str::to_string));
        // A wireguard-go killed with its agent leaves its socket: ours, by
        // name, once no process serves it.
        let ifnames = self.interfaces();
        for i in &ifnames {
            let sock = crate::leftovers::socket_path(i);
            if sock.exists() && crate::leftovers::wireguard_go_pids(i).is_empty() {
                let _ = std::fs::remove_file(sock);
            }
        }
        for f in [STATE, NAMESPACES] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        names.sort();
        names.dedup();
        crate::leftovers::leftovers(&names, &ifnames)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.detached {
            // Adopted or detached daemons keep running.
            for (_, d) in std::mem::take(&mut self.daemons) {
                d.detach();
            }
            return;
        }
        let left = self.teardown();
        if !left.is_empty() {
            if std::thread::panicking() {
                eprintln!("left behind: {}", left.join("; "));
            } else {
                panic!("left behind: {}", left.join("; "));
            }
        }
    }
}
