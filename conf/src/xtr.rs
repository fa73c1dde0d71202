//! xtr configuration.
//!
//! ```toml
//! mode = "mobile-node"                # or "xtr" (forwards for hosts behind `lan`)
//!
//! [wireguard]                         # the node's one WireGuard interface
//! interface = "lwrobota"
//! private_key_file = "robot-a.key"    # 0600, as `xtr genkey` writes
//! listen_port = 51820
//! backend = "auto"                    # auto | kernel | userspace
//!
//! [control]
//! address = "100.64.0.2/16"           # our address in the control tunnel
//!
//! [[map_servers]]
//! name = "ms1"
//! endpoint = "192.0.2.1:4340"         # the map-server's WireGuard endpoint
//! # endpoints = ["[2001:db8::1]:4340"] # more, e.g. one per address family:
//!                                     # the agent uses one of a family it
//!                                     # has an address of
//! public_key = "…"
//! control_address = "100.64.0.1"
//! site_key_file = "robot-a.site"      # or site_key = "…" in a 0600 file
//! key_id = "sha256"                   # or "sha1": HMAC of our Map-Registers
//!
//! [[eids]]
//! prefix = "10.0.0.1/32"              # a host EID (mobile node) or a prefix (xtr)
//! iid = 0
//!
//! [[rlocs]]                           # underlay interfaces, best first
//! interface = "eth0"
//! priority = 1
//! weight = 100
//!
//! [overlay]
//! capture = ["10.0.0.0/8"]            # EID space routed to the miss TUN
//! miss_interface = "lwrobotam"        # default: the WireGuard name + "m"
//!
//! [cache]                             # all optional
//! max_entries = 10000
//! idle_timeout_secs = 600
//! held_packets = 32
//! held_bytes = 65536
//! record_ttl_minutes = 10
//!
//! # [lan]                             # xtr mode only
//! # interface = "eth1"
//!
//! metrics = "127.0.0.1:9343"          # status and Prometheus; "" disables
//! state_dir = "/var/lib/lispwg/xtr"   # kept across restarts: relay grant,
//!                                     # register nonce reservation
//!
//! [relay]                             # the campus relay (coturn), all optional
//! enabled = true                      # ask the map-servers for relay credentials
//! only = false                        # everything through the relay (UDP blocked)
//! grant_file = "/var/lib/lispwg/xtr/lwrobota-relay.json"
//!                                     # credentials kept across restarts; put
//!                                     # one there (map-server relay-grant) for a
//!                                     # node that must reach the relay first
//!
//! [dns]                               # node names, all optional
//! enabled = true                      # answer DNS on the control address
//! domain = "lispwg.internal"          # NAME.DOMAIN is node NAME's EIDs
//! port = 53
//! # upstream = ["192.0.2.53"]         # everything else goes here; default:
//!                                     # the nameservers of /etc/resolv.conf
//! resolved = true                     # register with systemd-resolved if it runs
//! search = true                       # with resolved: bare NAME resolves too
//! ```

use crate::{
    backend, checker, default_backend, load_raw, BackendKind, ConfigError, PrivateKey, PublicKey,
    SiteKey,
};
use lisp_wire::{EidPrefix, KeyId};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variables overriding the file start with this.
pub const ENV_PREFIX: &str = "LISPWG_XTR";
/// Where `xtr status` looks when the file does not say.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9343";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    mode: String,
    wireguard: RawWireguard,
    control: RawControl,
    map_servers: Vec<RawMapServer>,
    eids: Vec<RawEid>,
    #[serde(default)]
    rlocs: Vec<RawRloc>,
    overlay: RawOverlay,
    #[serde(default)]
    cache: RawCache,
    lan: Option<RawLan>,
    metrics: Option<String>,
    #[serde(default)]
    relay: RawRelay,
    state_dir: Option<String>,
    #[serde(default)]
    dns: RawDns,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_domain")]
    domain: String,
    #[serde(default = "default_dns_port")]
    port: u16,
    upstream: Option<Vec<String>>,
    #[serde(default = "yes")]
    resolved: bool,
    #[serde(default = "yes")]
    search: bool,
}

fn default_domain() -> String {
    crate::DEFAULT_DOMAIN.into()
}

fn default_dns_port() -> u16 {
    53
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            enabled: true,
            domain: default_domain(),
            port: default_dns_port(),
            upstream: None,
            resolved: true,
            search: true,
        }
    }
}

/// The agent's DNS listener for node names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub enabled: bool,
    /// Lower case, no trailing dot.
    pub domain: String,
    /// The control address and `port`.
    pub listen: SocketAddr,
    /// Where names outside the domain go; `None`: the nameservers of
    /// /etc/resolv.conf at start (ourselves left out).
    pub upstream: Option<Vec<SocketAddr>>,
    /// Register with systemd-resolved for `~DOMAIN` when it runs.
    pub resolved: bool,
    /// Register DOMAIN as a search domain too, so that a bare node name
    /// (`robot-b`, as ROS_HOSTNAME uses it) resolves, as MagicDNS does.
    pub search: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    only: bool,
    grant_file: Option<String>,
}

impl Default for RawRelay {
    fn default() -> Self {
        RawRelay {
            enabled: true,
            only: false,
            grant_file: None,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWireguard {
    interface: String,
    private_key_file: String,
    #[serde(default = "default_port")]
    listen_port: u16,
    #[serde(default = "default_backend")]
    backend: String,
}

fn default_port() -> u16 {
    51820
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapServer {
    name: String,
    endpoint: String,
    #[serde(default)]
    endpoints: Vec<String>,
    public_key: String,
    control_address: String,
    site_key: Option<String>,
    site_key_file: Option<String>,
    key_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEid {
    prefix: String,
    #[serde(default)]
    iid: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRloc {
    interface: String,
    #[serde(default = "one")]
    priority: u8,
    #[serde(default = "hundred")]
    weight: u8,
}

fn one() -> u8 {
    1
}
fn hundred() -> u8 {
    100
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverlay {
    capture: Vec<String>,
    miss_interface: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default = "default_max_entries")]
    max_entries: usize,
    #[serde(default = "default_idle")]
    idle_timeout_secs: u64,
    #[serde(default = "default_held_packets")]
    held_packets: usize,
    #[serde(default = "default_held_bytes")]
    held_bytes: usize,
    #[serde(default = "default_record_ttl")]
    record_ttl_minutes: u32,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            max_entries: default_max_entries(),
            idle_timeout_secs: default_idle(),
            held_packets: default_held_packets(),
            held_bytes: default_held_bytes(),
            record_ttl_minutes: default_record_ttl(),
        }
    }
}

fn default_max_entries() -> usize {
    10_000
}
fn default_idle() -> u64 {
    600
}
fn default_held_packets() -> usize {
    32
}
fn default_held_bytes() -> usize {
    64 * 1024
}
fn default_record_ttl() -> u32 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLan {
    interface: String,
}

/// How the node holds its EIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The EID is an address of this node (a robot).
    MobileNode,
    /// The EID is a prefix of hosts behind `lan` (an edge router).
    Xtr,
}

#[derive(Debug, Clone)]
pub struct WireguardConfig {
    pub interface: String,
    pub private_key: PrivateKey,
    /// Where the key is: `xtr rotate-key` puts the next one beside it.
    pub private_key_file: PathBuf,
    pub listen_port: u16,
    pub backend: BackendKind,
}

#[derive(Debug, Clone)]
pub struct MapServerConfig {
    pub name: String,
    pub endpoint: SocketAddr,
    /// `endpoint` first, then the others configured (one per family, say).
    pub endpoints: Vec<SocketAddr>,
    pub public_key: PublicKey,
    pub control_address: IpAddr,
    pub site_key: SiteKey,
    /// The HMAC our Map-Registers are signed with (the map-server signs
    /// its notifies to us the same way): SHA-256 unless the file says
    /// `key_id = "sha1"`, for map-servers that only do HMAC-SHA-1.
    pub key_id: KeyId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlocInterface {
    pub interface: String,
    pub priority: u8,
    pub weight: u8,
}

/// The campus relay, from the agent's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub enabled: bool,
    pub only: bool,
    /// Where the relay grant is kept across restarts.
    pub grant_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub max_entries: usize,
    pub idle_timeout: Duration,
    pub held_packets: usize,
    pub held_bytes: usize,
    pub record_ttl_minutes: u32,
}

/// The validated xtr configuration.
#[derive(Debug, Clone)]
pub struct XtrConfig {
    pub file: PathBuf,
    pub mode: Mode,
    pub wireguard: WireguardConfig,
    pub control_address: IpAddr,
    pub control_prefix_len: u8,
    pub map_servers: Vec<MapServerConfig>,
    pub eids: Vec<EidPrefix>,
    pub rlocs: Vec<RlocInterface>,
    /// (network, length) of each captured overlay prefix.
    pub capture: Vec<(IpAddr, u8)>,
    pub miss_interface: String,
    pub cache: CacheConfig,
    pub lan_interface: Option<String>,
    pub metrics: Option<SocketAddr>,
    pub relay: RelayConfig,
    /// What the agent keeps across restarts (relay grant, register nonce
    /// reservation).
    pub state_dir: PathBuf,
    pub dns: DnsConfig,
    pub ignored_env: Vec<String>,
}

impl XtrConfig {
    /// The end of the register nonces reserved by the last run.
    /// Where `xtr rotate-key` leaves the next key for the running agent.
    pub fn next_key_file(&self) -> PathBuf {
        let mut p = self.wireguard.private_key_file.clone().into_os_string();
        p.push(".next");
        PathBuf::from(p)
    }

    pub fn register_nonce_file(&self) -> PathBuf {
        self.state_dir
            .join(format!("{}-register-nonce", self.wireguard.interface))
    }
}

impl XtrConfig {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let known = [
            "mode",
            "wireguard",
            "control",
            "map_servers",
            "eids",
            "rlocs",
            "overlay",
            "cache",
            "lan",
            "metrics",
            "relay",
            "state_dir",
            "dns",
        ];
        let (raw, ignored_env) = load_raw::<Raw>(file, ENV_PREFIX, &known)?;
        let c = checker(file);

        let mode = match raw.mode.as_str() {
            "mobile-node" => Mode::MobileNode,
            "xtr" => Mode::Xtr,
            other => {
                return Err(c.err(
                    "mode",
                    format!("`{other}` is not a mode: use mobile-node or xtr"),
                ))
            }
        };
        let wireguard = WireguardConfig {
            interface: c.ifname("wireguard.interface", &raw.wireguard.interface)?,
            private_key: c.private_key_file(
                "wireguard.private_key_file",
                &raw.wireguard.private_key_file,
            )?,
            private_key_file: c.path(&raw.wireguard.private_key_file),
            listen_port: raw.wireguard.listen_port,
            backend: backend(&c, "wireguard.backend", &raw.wireguard.backend)?,
        };
        let (control_address, control_prefix_len) =
            c.prefix("control.address", &raw.control.address)?;
        if control_prefix_len == if control_address.is_ipv4() { 32 } else { 128 } {
            return Err(c.err(
                "control.address",
                "give the tunnel prefix too, e.g. 100.64.0.2/16",
            ));
        }

        if raw.map_servers.is_empty() {
            return Err(c.err("map_servers", "at least one map-server is needed"));
        }
        let mut names = HashSet::new();
        let map_servers = raw
            .map_servers
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let f = format!("map_servers[{i}]");
                if m.name.is_empty() || !names.insert(m.name.clone()) {
                    return Err(c.err(
                        format!("{f}.name"),
                        format!("`{}` is empty or used by another map-server", m.name),
                    ));
                }
                let endpoint = c.socket(&format!("{f}.endpoint"), &m.endpoint)?;
                let mut endpoints = vec![endpoint];
                for (j, e) in m.endpoints.iter().enumerate() {
                    let e = c.socket(&format!("{f}.endpoints[{j}]"), e)?;
                    if !endpoints.contains(&e) {
                        endpoints.push(e);
                    }
                }
                Ok(MapServerConfig {
                    name: m.name.clone(),
                    endpoint,
                    endpoints,
                    public_key: c.public_key(&format!("{f}.public_key"), &m.public_key)?,
                    control_address: c.ip(&format!("{f}.control_address"), &m.control_address)?,
                    site_key: c.site_key(&f, &m.site_key, &m.site_key_file)?,
                    key_id: match m.key_id.as_deref().map(str::trim) {
                        None | Some("sha256") => KeyId::HmacSha256,
                        Some("sha1") => KeyId::HmacSha1,
                        Some(other) => {
                            return Err(c.err(
                                format!("{f}.key_id"),
                                format!("`{other}`: use \"sha256\" or \"sha1\""),
                            ))
                        }
                    },
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        if map_servers
            .iter()
            .any(|m| m.public_key == wireguard.private_key.public_key())
        {
            return Err(c.err("map_servers", "a map-server has this node's own public key"));
        }

        if raw.eids.is_empty() {
            return Err(c.err("eids", "at least one EID prefix is needed"));
        }
        let eids = raw
            .eids
            .iter()
            .enumerate()
            .map(|(i, e)| c.eid(&format!("eids[{i}].prefix"), e.iid, &e.prefix))
            .collect::<Result<Vec<_>, _>>()?;
        if eids.iter().any(|e| e.iid != eids[0].iid) {
            return Err(c.err(
                "eids",
                "all EIDs of a node must be in the same instance (iid)",
            ));
        }
        if mode == Mode::MobileNode && eids.iter().any(|e| !e.is_host()) {
            return Err(c.err("eids", "a mobile node's EIDs are host addresses (/32 or /128); use mode = \"xtr\" for a prefix"));
        }

        if raw.rlocs.is_empty() {
            return Err(c.err("rlocs", "at least one RLOC interface is needed"));
        }
        let rlocs = raw
            .rlocs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(RlocInterface {
                    interface: c.ifname(&format!("rlocs[{i}].interface"), &r.interface)?,
                    priority: r.priority,
                    weight: r.weight,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;

        if raw.overlay.capture.is_empty() {
            return Err(c.err(
                "overlay.capture",
                "name the overlay EID space to capture, e.g. [\"10.0.0.0/8\"]",
            ));
        }
        let capture = raw
            .overlay
            .capture
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let e = c.eid(&format!("overlay.capture[{i}]"), 0, p)?;
                Ok((e.addr(), e.prefix_len()))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let miss_default = format!("{}m", wireguard.interface);
        let miss_interface = c.ifname(
            "overlay.miss_interface",
            raw.overlay
                .miss_interface
                .as_deref()
                .unwrap_or(&miss_default),
        )?;
        if miss_interface == wireguard.interface {
            return Err(c.err(
                "overlay.miss_interface",
                "must differ from wireguard.interface",
            ));
        }

        let rc = &raw.cache;
        if rc.max_entries == 0 || rc.held_packets == 0 || rc.held_bytes == 0 {
            return Err(c.err(
                "cache",
                "max_entries, held_packets and held_bytes must be at least 1",
            ));
        }
        if rc.record_ttl_minutes == 0 {
            return Err(c.err("cache.record_ttl_minutes", "must be at least 1"));
        }
        let cache = CacheConfig {
            max_entries: rc.max_entries,
            idle_timeout: Duration::from_secs(rc.idle_timeout_secs.max(1)),
            held_packets: rc.held_packets,
            held_bytes: rc.held_bytes,
            record_ttl_minutes: rc.record_ttl_minutes,
        };

        let lan_interface = raw
            .lan
            .as_ref()
            .map(|l| c.ifname("lan.interface", &l.interface))
            .transpose()?;
        match (mode, &lan_interface) {
            (Mode::Xtr, None) => {
                return Err(c.err(
                    "lan",
                    "xtr mode needs [lan] interface = \"…\" (the hosts behind this router)",
                ))
            }
            (Mode::MobileNode, Some(_)) => {
                return Err(c.err(
                    "lan",
                    "a mobile node has no LAN; remove [lan] or use mode = \"xtr\"",
                ))
            }
            _ => {}
        }
        let metrics = match raw.metrics.as_deref() {
            Some("") => None,
            Some(s) => Some(c.socket("metrics", s)?),
            None => Some(DEFAULT_METRICS.parse().expect("valid default")),
        };
        let rr = &raw.relay;
        if rr.only && !rr.enabled {
            return Err(c.err("relay.only", "needs relay.enabled = true"));
        }
        let state_dir = match raw.state_dir.as_deref() {
            Some("") => return Err(c.err("state_dir", "give a path, or leave it out")),
            Some(p) => PathBuf::from(p),
            None => PathBuf::from("/var/lib/lispwg/xtr"),
        };
        let grant_file = match rr.grant_file.as_deref() {
            Some("") => return Err(c.err("relay.grant_file", "give a path, or leave it out")),
            Some(p) => PathBuf::from(p),
            None => state_dir.join(format!("{}-relay.json", wireguard.interface)),
        };
        let relay = RelayConfig {
            enabled: rr.enabled,
            only: rr.only,
            grant_file,
        };
        let rd = &raw.dns;
        let domain = crate::dns_domain(&rd.domain).map_err(|e| c.err("dns.domain", e))?;
        if rd.port == 0 {
            return Err(c.err("dns.port", "must be a port number, 1 to 65535"));
        }
        let upstream = match &rd.upstream {
            None => None,
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(i, u)| {
                        let field = format!("dns.upstream[{i}]");
                        match u.parse::<IpAddr>() {
                            Ok(ip) => Ok(SocketAddr::new(ip, 53)),
                            Err(_) => c.socket(&field, u),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let dns = DnsConfig {
            enabled: rd.enabled,
            domain,
            listen: SocketAddr::new(control_address, rd.port),
            upstream,
            resolved: rd.resolved,
            search: rd.search,
        };
        Ok(XtrConfig {
            file: file.to_path_buf(),
            mode,
            wireguard,
            control_address,
            control_prefix_len,
            map_servers,
            eids,
            rlocs,
            capture,
            miss_interface,
            cache,
            lan_interface,
            metrics,
            relay,
            state_dir,
            dns,
            ignored_env,
        })
    }
}
