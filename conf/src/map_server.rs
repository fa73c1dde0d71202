//! Map-server configuration.
//!
//! ```toml
//! [control]                          # the WireGuard control tunnel
//! interface = "lwms0"
//! private_key_file = "ms.key"        # 0600, as `xtr genkey` writes
//! listen_port = 4340                 # its WireGuard UDP port
//! address = "100.64.0.1/16"          # control address and tunnel prefix
//! backend = "auto"                   # auto | kernel | userspace
//!
//! [server]
//! registration_lifetime_secs = 180   # 3 refresh intervals
//! state_dir = "/var/lib/lispwg/map-server"
//! metrics = "127.0.0.1:9342"         # /metrics and /status (the default); "" disables
//! # plain_listen = "192.0.2.1:4342"  # keyless LISP peers and benchmarks
//! # plain_allowed = ["192.0.2.0/24"]  # besides the keyless peers, whom the
//! #                                   # plain listener answers (e.g. lig)
//! peers_dir = "peers.d"              # one *.toml per peer (fields as in
//! #                                   # [[peers]]), beside this file; SIGHUP
//! #                                   # re-reads it and this file
//! domain = "lispwg.internal"         # node names: NAME.DOMAIN (the default)
//!
//! [[peers]]
//! name = "robot-a"
//! public_key = "…"                   # omit for a keyless LISP peer
//! control_address = "100.64.0.2"
//! site_key_file = "robot-a.site"     # or site_key = "…" in a 0600 file
//! eids = [{ prefix = "10.1.0.1/32", iid = 0, more_specifics = false }]
//! team = "red"                       # "default" unless given
//! expires = "2027-01-31T00:00:00Z"   # optional: revoked then
//!
//! [join]                             # enrolment (map-server enroll, join-key)
//! listen = "192.0.2.1:4344"          # UDP, public address; robots redeem here
//! # endpoint = "192.0.2.1:4340"      # WireGuard endpoint robots are given
//! overlay = ["10.0.0.0/8"]           # EID space robots route to the overlay
//! [[join.also]]                      # another map-server of the fleet (it
//! name = "ms2"                       # shares peers_dir); robots register there too
//! endpoint = "192.0.2.11:4340"
//! public_key = "…"
//! control_address = "100.64.0.254"
//!
//! [[teams]]                          # what a team may resolve besides its own
//! name = "ops"
//! may_resolve = ["red"]
//!
//! [[static_mappings]]
//! prefix = "10.9.0.0/16"
//! rlocs = [{ address = "203.0.113.5", priority = 1, weight = 100 }]
//!
//! [limits]                           # per control peer; 0 = no limit
//! requests_per_second = 500
//! request_burst = 1000
//! registers_per_second = 10
//! register_burst = 20
//! max_records_per_request = 32
//! max_registrations_per_peer = 1024
//!
//! [relay]                            # the campus relay (coturn); optional
//! secret_file = "turn.secret"        # coturn's static-auth-secret, 0600
//! credential_ttl_secs = 43200        # how long a node's credentials work
//! [[relay.servers]]
//! udp = "192.0.2.1:3478"
//! tls = "192.0.2.1:443"              # for networks that let only TCP out
//! tcp = "192.0.2.1:3478"
//! tls_cert_file = "turn.crt"         # coturn's certificate: nodes pin its key
//! # tls_spki_sha256 = "…"            # or the pin itself
//! ```

use crate::{
    backend, checker, default_backend, load_raw, BackendKind, Checker, ConfigError, PrivateKey,
    PublicKey, SiteKey,
};
use lisp_wire::EidPrefix;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// Environment variables overriding the file start with this.
pub const ENV_PREFIX: &str = "LISPWG_MS";
/// Where `/metrics` and `/status` are served unless the file says otherwise:
/// local only, so `map-server status` works out of the box.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9342";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    control: Option<RawControl>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    static_mappings: Vec<RawStatic>,
    relay: Option<RawRelay>,
    #[serde(default)]
    teams: Vec<RawTeam>,
    join: Option<RawJoin>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJoin {
    listen: String,
    endpoint: Option<String>,
    #[serde(default = "default_overlay")]
    overlay: Vec<String>,
    #[serde(default = "default_join_name")]
    name: String,
    /// The other map-servers joined robots register with too.
    #[serde(default)]
    also: Vec<RawJoinAlso>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJoinAlso {
    name: String,
    endpoint: String,
    public_key: String,
    control_address: String,
}

fn default_overlay() -> Vec<String> {
    vec!["10.0.0.0/8".into()]
}
fn default_join_name() -> String {
    "ms".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeam {
    name: String,
    #[serde(default)]
    may_resolve: Vec<String>,
}

/// What one control peer may ask; 0 as a rate means no limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    requests_per_second: f64,
    request_burst: f64,
    registers_per_second: f64,
    register_burst: f64,
    max_records_per_request: usize,
    max_registrations_per_peer: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        let d = Limits::default();
        RawLimits {
            requests_per_second: d.requests.per_second,
            request_burst: d.requests.burst,
            registers_per_second: d.registers.per_second,
            register_burst: d.registers.burst,
            max_records_per_request: d.max_records_per_request,
            max_registrations_per_peer: d.max_registrations_per_peer,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    secret_file: String,
    #[serde(default = "default_credential_ttl")]
    credential_ttl_secs: u64,
    servers: Vec<RawRelayServer>,
}

fn default_credential_ttl() -> u64 {
    12 * 3600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelayServer {
    udp: Option<String>,
    tls: Option<String>,
    tcp: Option<String>,
    tls_cert_file: Option<String>,
    tls_spki_sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    interface: String,
    private_key_file: String,
    listen_port: u16,
    address: String,
    #[serde(default = "default_backend")]
    backend: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_lifetime")]
    registration_lifetime_secs: u64,
    #[serde(default = "default_negative_ttl")]
    negative_ttl_minutes: u32,
    #[serde(default = "default_state_dir")]
    state_dir: String,
    metrics: Option<String>,
    plain_listen: Option<String>,
    #[serde(default)]
    plain_allowed: Vec<String>,
    #[serde(default = "yes")]
    push_moves: bool,
    peers_dir: Option<String>,
    /// Lets two peers be allowed overlapping EID prefixes (one registers
    /// a covering prefix, the other a more specific one).
    #[serde(default)]
    allow_overlapping_eids: bool,
    #[serde(default = "default_domain")]
    domain: String,
}

fn default_domain() -> String {
    crate::DEFAULT_DOMAIN.into()
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            registration_lifetime_secs: default_lifetime(),
            negative_ttl_minutes: default_negative_ttl(),
            state_dir: default_state_dir(),
            metrics: None,
            plain_listen: None,
            plain_allowed: Vec::new(),
            push_moves: true,
            peers_dir: None,
            allow_overlapping_eids: false,
            domain: default_domain(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_lifetime() -> u64 {
    180
}
fn default_negative_ttl() -> u32 {
    1
}
fn default_state_dir() -> String {
    "/var/lib/lispwg/map-server".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    public_key: Option<String>,
    control_address: String,
    site_key: Option<String>,
    site_key_file: Option<String>,
    #[serde(default)]
    eids: Vec<RawAllowed>,
    team: Option<String>,
    /// RFC 3339, e.g. "2027-01-31T00:00:00Z": the peer is revoked then.
    expires: Option<String>,
    /// Written by a key rotation: the key `public_key` replaced.
    rotated_from: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowed {
    prefix: String,
    #[serde(default)]
    iid: u32,
    #[serde(default)]
    more_specifics: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    prefix: String,
    #[serde(default)]
    iid: u32,
    public_key: Option<String>,
    port: Option<u16>,
    #[serde(default = "default_static_ttl")]
    ttl_minutes: u32,
    rlocs: Vec<RawRloc>,
}

fn default_static_ttl() -> u32 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRloc {
    address: String,
    #[serde(default = "default_priority")]
    priority: u8,
    #[serde(default = "default_weight")]
    weight: u8,
}

fn default_priority() -> u8 {
    1
}
fn default_weight() -> u8 {
    100
}

/// The WireGuard control interface of the map-server.
#[derive(Debug, Clone)]
pub struct ControlInterface {
    pub interface: String,
    pub private_key: PrivateKey,
    pub listen_port: u16,
    pub address: IpAddr,
    pub prefix_len: u8,
    pub backend: BackendKind,
}

pub use map_server_core::policy::{Limits, Rate};
/// An EID prefix a peer may register: the core's own type, so the
/// configuration compiles straight into its policy.
pub use map_server_core::AllowedEid;
/// A source the plain listener answers: the core's own type.
pub use map_server_core::SourcePrefix;

/// A manually configured control peer.
#[derive(Debug, Clone)]
pub struct ControlPeer {
    pub name: String,
    /// `None` for a keyless LISP peer (heard on the plain listener only).
    pub public_key: Option<PublicKey>,
    pub control_address: IpAddr,
    pub site_key: SiteKey,
    pub eids: Vec<AllowedEid>,
    /// Its team ([`map_server_core::DEFAULT_TEAM`] unless given).
    pub team: String,
    /// When its enrolment ends (it is revoked then).
    pub expires: Option<std::time::SystemTime>,
    /// The file of the peers directory it came from; `None` for a
    /// `[[peers]]` entry of the main file.
    pub source: Option<PathBuf>,
    /// The key this one replaced by a rotation (see `xtr rotate-key`).
    pub rotated_from: Option<PublicKey>,
}

/// What a team may resolve besides its own EIDs: the core's own type.
pub use map_server_core::TeamPolicy;

/// One locator of a static mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticRloc {
    pub address: IpAddr,
    pub priority: u8,
    pub weight: u8,
}

/// A mapping served from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticMapping {
    pub prefix: EidPrefix,
    pub public_key: Option<PublicKey>,
    pub port: Option<u16>,
    pub ttl_minutes: u32,
    pub rlocs: Vec<StaticRloc>,
}

/// The validated map-server configuration.
#[derive(Debug, Clone)]
pub struct MapServerConfig {
    pub file: PathBuf,
    pub control: Option<ControlInterface>,
    pub plain_listen: Option<SocketAddr>,
    /// Sources the plain listener answers besides the configured keyless
    /// peers (it answers nobody else).
    pub plain_allowed: Vec<SourcePrefix>,
    pub registration_lifetime: Duration,
    pub negative_ttl_minutes: u32,
    pub state_dir: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub peers: Vec<ControlPeer>,
    pub static_mappings: Vec<StaticMapping>,
    /// Push moved mappings to resolvers (off only for baseline benchmarks).
    pub push_moves: bool,
    /// The DNS domain of node names (lower case): a name lookup for
    /// `NAME.DOMAIN` is answered like one for `NAME`.
    pub domain: String,
    /// The campus relay whose credentials nodes are handed.
    pub relay: Option<RelayConfig>,
    /// One TOML file per peer (`*.toml`), besides the `[[peers]]` of the
    /// main file: what `map-server enroll` writes and `revoke` removes.
    pub peers_dir: PathBuf,
    pub teams: Vec<TeamPolicy>,
    /// Where robots redeem join bundles and team keys; `None`: no enrolment.
    pub join: Option<JoinConfig>,
    pub limits: Limits,
    /// Environment variables with our prefix that matched no setting.
    pub ignored_env: Vec<String>,
}

/// Enrolment: the join listener and what joined robots are told.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// UDP, on the map-server's public address (outside the tunnel: the
    /// robot has no tunnel yet).
    pub listen: SocketAddr,
    /// The WireGuard endpoint robots are given (default: the join address
    /// with `control.listen_port`).
    pub endpoint: SocketAddr,
    /// The EID space robots route to their miss TUN.
    pub overlay: Vec<String>,
    /// The map-server's name in the robots' configuration.
    pub name: String,
    /// The other map-servers of the fleet, which robots register with too
    /// (they share this peers directory: see DESIGN.md).
    pub also: Vec<crate::join::JoinedServer>,
}

/// The campus relay (coturn with `use-auth-secret`), as the map-server
/// hands it to nodes.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// coturn's `static-auth-secret`.
    pub secret: Zeroizing<String>,
    pub credential_ttl: Duration,
    pub servers: Vec<relay::RelayServer>,
}

impl MapServerConfig {
    /// Loads and validates `file` with its environment overrides.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let (raw, ignored_env) = load_raw::<Raw>(
            file,
            ENV_PREFIX,
            &[
                "control",
                "server",
                "peers",
                "static_mappings",
                "relay",
                "teams",
                "join",
                "limits",
            ],
        )?;
        let c = checker(file);

        let control = match &raw.control {
            None => None,
            Some(rc) => {
                let (address, prefix_len) = c.prefix("control.address", &rc.address)?;
                if prefix_len == if address.is_ipv4() { 32 } else { 128 } {
                    return Err(c.err(
                        "control.address",
                        "give the tunnel prefix too, e.g. 100.64.0.1/16",
                    ));
                }
                Some(ControlInterface {
                    interface: c.ifname("control.interface", &rc.interface)?,
                    private_key: c
                        .private_key_file("control.private_key_file", &rc.private_key_file)?,
                    listen_port: rc.listen_port,
                    address,
                    prefix_len,
                    backend: backend(&c, "control.backend", &rc.backend)?,
                })
            }
        };
        let plain_listen = raw
            .server
            .plain_listen
            .as_deref()
            .map(|s| c.socket("server.plain_listen", s))
            .transpose()?;
        let plain_allowed = raw
            .server
            .plain_allowed
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<SourcePrefix>()
                    .map_err(|e| c.err(format!("server.plain_allowed[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !plain_allowed.is_empty() && plain_listen.is_none() {
            return Err(c.err(
                "server.plain_allowed",
                "only means something with server.plain_listen",
            ));
        }
        if control.is_none() && plain_listen.is_none() {
            return Err(c.err("-", "nothing to listen on: configure [control] (the WireGuard control tunnel) or server.plain_listen"));
        }
        if raw.server.registration_lifetime_secs < 10 {
            return Err(c.err(
                "server.registration_lifetime_secs",
                "must be at least 10 seconds",
            ));
        }
        let domain =
            crate::dns_domain(&raw.server.domain).map_err(|e| c.err("server.domain", e))?;
        if raw.server.negative_ttl_minutes == 0 {
            return Err(c.err("server.negative_ttl_minutes", "must be at least 1 minute"));
        }
        let metrics = match raw.server.metrics.as_deref() {
            Some("") => None,
            Some(s) => Some(c.socket("server.metrics", s)?),
            None => Some(DEFAULT_METRICS.parse().expect("valid default")),
        };

        let peers_dir = c.path(raw.server.peers_dir.as_deref().unwrap_or(DEFAULT_PEERS_DIR));
        let mut raw_peers: Vec<(Checker, String, &RawPeer, Option<PathBuf>)> = raw
            .peers
            .iter()
            .enumerate()
            .map(|(i, rp)| (checker(file), format!("peers[{i}]"), rp, None))
            .collect();
        let dir_peers = read_peers_dir(&peers_dir)?;
        for (path, rp) in &dir_peers {
            raw_peers.push((checker(path), "-".to_string(), rp, Some(path.clone())));
        }
        let mut peers = Vec::with_capacity(raw_peers.len());
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for (c, f, rp, source) in raw_peers {
            let field = |name: &str| {
                if f == "-" {
                    name.to_string()
                } else {
                    format!("{f}.{name}")
                }
            };
            if rp.name.is_empty() || !names.insert(rp.name.clone()) {
                return Err(c.err(
                    field("name"),
                    format!("`{}` is empty or used by another peer", rp.name),
                ));
            }
            let control_address = c.ip(&field("control_address"), &rp.control_address)?;
            if !addresses.insert(control_address) {
                return Err(c.err(
                    field("control_address"),
                    format!("{control_address} is used by another peer"),
                ));
            }
            let public_key = rp
                .public_key
                .as_deref()
                .map(|k| c.public_key(&field("public_key"), k))
                .transpose()?;
            if public_key.is_none() && plain_listen.is_none() {
                return Err(c.err(
                    field("public_key"),
                    "a keyless peer needs server.plain_listen to be heard",
                ));
            }
            if let (Some(ctl), Some(_)) = (&control, &public_key) {
                let tunnel = EidPrefix::new(0, ctl.address, ctl.prefix_len)
                    .map_err(|e| c.err("control.address", e.to_string()))?;
                if !tunnel.contains_addr(0, control_address) {
                    return Err(c.err(
                        field("control_address"),
                        format!(
                            "{control_address} is outside the control tunnel {}/{}",
                            ctl.address, ctl.prefix_len
                        ),
                    ));
                }
            }
            if rp.eids.is_empty() {
                return Err(c.err(
                    field("eids"),
                    "a peer must be allowed at least one EID prefix",
                ));
            }
            let eids = rp
                .eids
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    Ok(AllowedEid {
                        prefix: c.eid(&field(&format!("eids[{j}].prefix")), a.iid, &a.prefix)?,
                        more_specifics: a.more_specifics,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            let team = rp
                .team
                .clone()
                .unwrap_or_else(|| map_server_core::DEFAULT_TEAM.to_string());
            if team.is_empty() {
                return Err(c.err(field("team"), "must not be empty"));
            }
            let expires = rp
                .expires
                .as_deref()
                .map(|e| {
                    humantime::parse_rfc3339_weak(e).map_err(|err| {
                        c.err(
                            field("expires"),
                            format!("`{e}`: {err} (e.g. 2027-01-31T00:00:00Z)"),
                        )
                    })
                })
                .transpose()?;
            let site_key_field = if f == "-" {
                "peer".to_string()
            } else {
                f.clone()
            };
            peers.push(ControlPeer {
                name: rp.name.clone(),
                public_key,
                control_address,
                site_key: c.site_key(&site_key_field, &rp.site_key, &rp.site_key_file)?,
                eids,
                team,
                expires,
                source,
                rotated_from: rp
                    .rotated_from
                    .as_deref()
                    .map(|k| c.public_key(&field("rotated_from"), k))
                    .transpose()?,
            });
        }
        let mut teams = Vec::with_capacity(raw.teams.len());
        let mut team_names = HashSet::new();
        for (i, t) in raw.teams.iter().enumerate() {
            if t.name.is_empty() || !team_names.insert(t.name.clone()) {
                return Err(c.err(
                    format!("teams[{i}].name"),
                    format!("`{}` is empty or used by another team", t.name),
                ));
            }
            teams.push(TeamPolicy {
                name: t.name.clone(),
                may_resolve: t.may_resolve.clone(),
            });
        }
        let known_teams: HashSet<&str> = peers
            .iter()
            .map(|p| p.team.as_str())
            .chain(teams.iter().map(|t| t.name.as_str()))
            .collect();
        for (i, t) in teams.iter().enumerate() {
            if let Some(unknown) = t
                .may_resolve
                .iter()
                .find(|m| !known_teams.contains(m.as_str()))
            {
                return Err(c.err(
                    format!("teams[{i}].may_resolve"),
                    format!("no peer is in team `{unknown}` and no [[teams]] entry names it"),
                ));
            }
        }

        check_peers_apart(
            &c,
            &peers,
            control.as_ref(),
            raw.server.allow_overlapping_eids,
        )?;

        let static_mappings = raw
            .static_mappings
            .iter()
            .enumerate()
            .map(|(i, rs)| {
                let f = format!("static_mappings[{i}]");
                if rs.rlocs.is_empty() {
                    return Err(c.err(
                        format!("{f}.rlocs"),
                        "a static mapping needs at least one RLOC",
                    ));
                }
                Ok(StaticMapping {
                    prefix: c.eid(&format!("{f}.prefix"), rs.iid, &rs.prefix)?,
                    public_key: rs
                        .public_key
                        .as_deref()
                        .map(|k| c.public_key(&format!("{f}.public_key"), k))
                        .transpose()?,
                    port: rs.port,
                    ttl_minutes: rs.ttl_minutes,
                    rlocs: rs
                        .rlocs
                        .iter()
                        .enumerate()
                        .map(|(j, r)| {
                            Ok(StaticRloc {
                                address: c.ip(&format!("{f}.rlocs[{j}].address"), &r.address)?,
                                priority: r.priority,
                                weight: r.weight,
                            })
                        })
                        .collect::<Result<_, ConfigError>>()?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;

        let relay = raw
            .relay
            .as_ref()
            .map(|r| relay_config(&c, r))
            .transpose()?;
        if relay.is_some() && control.is_none() {
            return Err(c.err(
                "relay",
                "relay credentials are handed out over the control tunnel: configure [control]",
            ));
        }
        let join = match &raw.join {
            None => None,
            Some(j) => {
                let Some(ctl) = &control else {
                    return Err(c.err(
                        "join",
                        "enrolment needs the control tunnel: configure [control]",
                    ));
                };
                let listen = c.socket("join.listen", &j.listen)?;
                let endpoint = match &j.endpoint {
                    Some(e) => c.socket("join.endpoint", e)?,
                    None => SocketAddr::new(listen.ip(), ctl.listen_port),
                };
                if endpoint.ip().is_unspecified() {
                    return Err(c.err(
                        "join.endpoint",
                        "robots need a reachable address: give join.endpoint, or a join.listen address that is not 0.0.0.0",
                    ));
                }
                for (i, o) in j.overlay.iter().enumerate() {
                    c.eid(&format!("join.overlay[{i}]"), 0, o)?;
                }
                let also = j
                    .also
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let f = |n: &str| format!("join.also[{i}].{n}");
                        Ok(crate::join::JoinedServer {
                            name: a.name.clone(),
                            endpoint: c.socket(&f("endpoint"), &a.endpoint)?.to_string(),
                            public_key: c.public_key(&f("public_key"), &a.public_key)?.to_string(),
                            control_address: c.ip(&f("control_address"), &a.control_address)?,
                        })
                    })
                    .collect::<Result<Vec<_>, ConfigError>>()?;
                Some(JoinConfig {
                    listen,
                    endpoint,
                    overlay: j.overlay.clone(),
                    name: j.name.clone(),
                    also,
                })
            }
        };
        Ok(MapServerConfig {
            file: file.to_path_buf(),
            control,
            plain_listen,
            plain_allowed,
            domain,
            registration_lifetime: Duration::from_secs(raw.server.registration_lifetime_secs),
            negative_ttl_minutes: raw.server.negative_ttl_minutes,
            state_dir: c.path(&raw.server.state_dir),
            metrics,
            peers,
            static_mappings,
            push_moves: raw.server.push_moves,
            relay,
            peers_dir,
            teams,
            join,
            limits: limits(&c, &raw.limits)?,
            ignored_env,
        })
    }
}

/// The peers directory unless `server.peers_dir` says otherwise, relative
/// to the configuration file: `/etc/lispwg/peers.d` beside
/// `/etc/lispwg/map-server.toml`.
pub const DEFAULT_PEERS_DIR: &str = "peers.d";

/// Every `*.toml` of the peers directory, one peer each, sorted by file name;
/// none when the directory does not exist.
fn read_peers_dir(dir: &Path) -> Result<Vec<(PathBuf, RawPeer)>, ConfigError> {
    let c = checker(dir);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(c.err("-", format!("cannot read the peers directory: {e}"))),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| c.err("-", e.to_string()))?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let pc = checker(&path);
            let raw = config::Config::builder()
                .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml))
                .build()
                .and_then(|b| b.try_deserialize::<RawPeer>())
                .map_err(|e| pc.err("-", e.to_string()))?;
            Ok((path, raw))
        })
        .collect()
}

/// Refuses, naming both entries, what would make one peer silently lose
/// its tunnel or its EIDs to another: a shared WireGuard key, the
/// map-server's own key, EID ranges that overlap (unless allowed).
fn check_peers_apart(
    c: &crate::Checker,
    peers: &[ControlPeer],
    control: Option<&ControlInterface>,
    allow_overlap: bool,
) -> Result<(), ConfigError> {
    let own = control.map(|ctl| ctl.private_key.public_key());
    let mut keys: std::collections::HashMap<[u8; 32], usize> = Default::default();
    for (i, p) in peers.iter().enumerate() {
        let Some(key) = p.public_key else { continue };
        if own.is_some_and(|o| o.as_bytes() == key.as_bytes()) {
            return Err(c.err(
                format!("peers[{i}].public_key"),
                format!(
                    "peer `{}` holds the map-server's own key (control.private_key_file)",
                    p.name
                ),
            ));
        }
        if let Some(&j) = keys.get(key.as_bytes()) {
            return Err(c.err(
                format!("peers[{i}].public_key"),
                format!(
                    "peers `{}` (peers[{j}]) and `{}` (peers[{i}]) share one WireGuard key: one of them would lose its control tunnel",
                    peers[j].name, p.name
                ),
            ));
        }
        keys.insert(*key.as_bytes(), i);
    }
    if allow_overlap {
        return Ok(());
    }
    // Overlap means one range contains the other: any of their
    // registrations could then be the other's.
    let range = |a: &AllowedEid| a.prefix;
    for (i, p) in peers.iter().enumerate() {
        for (q_idx, q) in peers.iter().enumerate().skip(i + 1) {
            for a in &p.eids {
                for b in &q.eids {
                    let (x, y) = (range(a), range(b));
                    let overlap = (a.more_specifics && x.contains(&y))
                        || (b.more_specifics && y.contains(&x))
                        || x == y;
                    if overlap {
                        return Err(c.err(
                            format!("peers[{q_idx}].eids"),
                            format!(
                                "`{}` may register {y} and `{}` (peers[{i}]) {x}: they overlap (set server.allow_overlapping_eids = true if that is meant)",
                                q.name, p.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn limits(c: &crate::Checker, raw: &RawLimits) -> Result<Limits, ConfigError> {
    let rate = |field: &str, per_second: f64, burst: f64| {
        if !(per_second >= 0.0 && per_second.is_finite()) {
            return Err(c.err(
                format!("limits.{field}"),
                "must be a number ≥ 0 (0: no limit)",
            ));
        }
        if per_second == 0.0 {
            return Ok(Rate::UNLIMITED);
        }
        if !(burst >= 1.0 && burst.is_finite()) {
            return Err(c.err(format!("limits.{field}"), "its burst must be at least 1"));
        }
        Ok(Rate::new(per_second, burst))
    };
    if raw.max_records_per_request == 0 || raw.max_registrations_per_peer == 0 {
        return Err(c.err(
            "limits",
            "max_records_per_request and max_registrations_per_peer must be at least 1",
        ));
    }
    Ok(Limits {
        requests: rate(
            "requests_per_second",
            raw.requests_per_second,
            raw.request_burst,
        )?,
        registers: rate(
            "registers_per_second",
            raw.registers_per_second,
            raw.register_burst,
        )?,
        max_records_per_request: raw.max_records_per_request,
        max_registrations_per_peer: raw.max_registrations_per_peer,
        ..Limits::default()
    })
}

fn relay_config(c: &crate::Checker, r: &RawRelay) -> Result<RelayConfig, ConfigError> {
    let secret = c.secret_file("relay.secret_file", &r.secret_file)?;
    let secret = Zeroizing::new(secret.trim().to_string());
    if secret.is_empty() {
        return Err(c.err("relay.secret_file", "the file is empty"));
    }
    if r.credential_ttl_secs < 60 {
        return Err(c.err("relay.credential_ttl_secs", "must be at least 60 seconds"));
    }
    if r.servers.is_empty() {
        return Err(c.err("relay.servers", "name at least one relay server"));
    }
    let servers = r
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let f = format!("relay.servers[{i}]");
            let addr = |name: &str, v: &Option<String>| {
                v.as_deref()
                    .map(|v| c.socket(&format!("{f}.{name}"), v))
                    .transpose()
            };
            let pin = match (&s.tls_spki_sha256, &s.tls_cert_file) {
                (Some(_), Some(_)) => {
                    return Err(c.err(
                        format!("{f}.tls_cert_file"),
                        "give tls_cert_file or tls_spki_sha256, not both",
                    ))
                }
                (Some(p), None) => Some(p.clone()),
                (None, Some(file)) => {
                    let path = c.path(file);
                    let pem = std::fs::read_to_string(&path).map_err(|e| {
                        c.err(
                            format!("{f}.tls_cert_file"),
                            format!("{}: {e}", path.display()),
                        )
                    })?;
                    Some(relay::grant::pem_spki_pin(&pem).ok_or_else(|| {
                        c.err(
                            format!("{f}.tls_cert_file"),
                            format!("{} holds no X.509 certificate (PEM)", path.display()),
                        )
                    })?)
                }
                (None, None) => None,
            };
            let server = relay::RelayServer {
                udp: addr("udp", &s.udp)?,
                tls: addr("tls", &s.tls)?,
                tcp: addr("tcp", &s.tcp)?,
                tls_spki_sha256: pin,
            };
            if server.endpoints().is_empty() {
                return Err(c.err(f, "give at least one of udp, tls, tcp"));
            }
            if server.tls.is_some() && server.tls_pin().is_none() {
                return Err(c.err(
                    format!("{f}.tls"),
                    "TLS needs tls_cert_file (or tls_spki_sha256: 32 bytes, base64)",
                ));
            }
            Ok(server)
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(RelayConfig {
        secret,
        credential_ttl: Duration::from_secs(r.credential_ttl_secs),
        servers,
    })
}
