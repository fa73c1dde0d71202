//! Configuration files for the daemons, written as TOML from typed structs.
//! The formats are those documented at the top of `conf/src/map_server.rs`
//! and `conf/src/xtr.rs`; fields left `None` are left out, so the daemon's
//! default applies.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Writes `config` as TOML to `path` (0600).
pub fn write_toml(path: &Path, config: &impl Serialize) -> Result<()> {
    let text = toml::to_string(config).with_context(|| format!("serialize {}", path.display()))?;
    crate::secret_file(path, &text)
}

/// A map-server configuration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MapServerConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<MsControl>,
    pub server: MsServer,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<MsPeer>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub static_mappings: Vec<StaticMapping>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<MsRelay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<MsLimits>,
}

/// Per-peer budgets; `None` fields keep the map-server's defaults.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct MsLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_burst: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registers_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_registrations_per_peer: Option<u64>,
}

impl MsLimits {
    /// No budgets: for load generators that are one peer on purpose.
    pub fn unlimited() -> Self {
        MsLimits {
            requests_per_second: Some(0.0),
            registers_per_second: Some(0.0),
            max_registrations_per_peer: Some(1 << 40),
            ..Default::default()
        }
    }
}

/// The relay the map-server hands its nodes.
#[derive(Debug, Clone, Serialize)]
pub struct MsRelay {
    pub secret_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_ttl_secs: Option<u64>,
    pub servers: Vec<MsRelayServer>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MsRelayServer {
    pub udp: String,
    pub tls: String,
    pub tcp: String,
    pub tls_cert_file: String,
}

/// The map-server's WireGuard control tunnel.
#[derive(Debug, Clone, Serialize)]
pub struct MsControl {
    pub interface: String,
    pub private_key_file: String,
    pub listen_port: u16,
    /// Control address and tunnel prefix, `100.64.0.1/16`.
    pub address: String,
    pub backend: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MsServer {
    pub state_dir: String,
    /// `/metrics` and `/status`; `""` disables them.
    pub metrics: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_moves: Option<bool>,
    /// Keyless LISP peers and benchmarks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_listen: Option<String>,
    /// Sources the plain listener answers besides the keyless peers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plain_allowed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration_lifetime_secs: Option<u64>,
}

/// A control peer: a node that may register `eids`.
#[derive(Debug, Clone, Serialize)]
pub struct MsPeer {
    pub name: String,
    /// `None` for a keyless LISP peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub control_address: String,
    pub site_key_file: String,
    pub eids: Vec<AllowedEid>,
}

/// An EID prefix a peer may register.
#[derive(Debug, Clone, Serialize)]
pub struct AllowedEid {
    pub prefix: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub iid: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more_specifics: bool,
}

impl AllowedEid {
    pub fn exact(prefix: impl Into<String>) -> AllowedEid {
        AllowedEid {
            prefix: prefix.into(),
            iid: 0,
            more_specifics: false,
        }
    }

    /// `prefix` and anything inside it.
    pub fn within(prefix: impl Into<String>) -> AllowedEid {
        AllowedEid {
            more_specifics: true,
            ..AllowedEid::exact(prefix)
        }
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A mapping served from the map-server's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaticMapping {
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub rlocs: Vec<StaticRloc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaticRloc {
    pub address: String,
}

/// An xtr configuration.
#[derive(Debug, Clone, Serialize)]
pub struct XtrConfig {
    /// `mobile-node` or `xtr`.
    pub mode: String,
    pub metrics: String,
    /// The lab's folder: never the default under /var/lib.
    pub state_dir: String,
    pub wireguard: XtrWireguard,
    pub control: XtrControl,
    pub map_servers: Vec<XtrMapServer>,
    pub eids: Vec<XtrEid>,
    pub rlocs: Vec<XtrRloc>,
    pub overlay: XtrOverlay,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lan: Option<XtrLan>,
    pub relay: XtrRelay,
}

#[derive(Debug, Clone, Serialize)]
pub struct XtrRelay {
    pub enabled: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub only: bool,
    /// Always in the lab's folder: never the default under /var/lib.
    pub grant_file: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct XtrWireguard {
    pub interface: String,
    pub private_key_file: String,
    pub listen_port: u16,
    pub backend: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct XtrControl {
    /// Our address in the control tunnel, `100.64.0.2/16`.
    pub address: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct XtrMapServer {
    pub name: String,
    /// The map-server's WireGuard endpoint, `192.0.2.10:4340`.
    pub endpoint: String,
    /// Its endpoints of the other families, for dual-stack nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    pub public_key: String,
    pub control_address: String,
    pub site_key_file: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct XtrEid {
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct XtrRloc {
    pub interface: String,
    pub priority: u8,
}

#[derive(Debug, Clone, Serialize)]
pub struct XtrOverlay {
    pub capture: Vec<String>,
    pub miss_interface: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct XtrLan {
    pub interface: String,
}
