//! The agent's status page: a [`Snapshot`] of plain data taken from the core,
//! the configuration and WireGuard, and its text rendering for `xtr status`,
//! laid out like `wg show`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;
use xtr_core::{CacheStatus, LocalRloc, MapServerStatus, PathStatus, RelayStatus};

/// One WireGuard peer as the interface reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerRow {
    pub public_key: String,
    /// "map-server NAME" for a control peer.
    pub role: Option<String>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<String>,
    #[serde(
        rename = "since_handshake_secs",
        serialize_with = "conf::json::opt_secs"
    )]
    pub since_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// The agent's view of its path (data peers only).
    #[serde(serialize_with = "crate::status_json::path")]
    pub path: Option<PathStatus>,
}

/// The DNS listener, for `xtr status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DnsStatus {
    pub listen: SocketAddr,
    pub domain: String,
    pub upstream: Vec<SocketAddr>,
    /// Registered with systemd-resolved for `~domain`.
    pub resolved: bool,
    pub names_cached: usize,
    pub lookups_pending: usize,
}

/// Everything `xtr status` shows (and, serialised, `/status?format=json`:
/// see `docs/status-json.md`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub interface: String,
    pub mode: &'static str,
    pub public_key: String,
    pub listen_port: u16,
    pub eids: Vec<String>,
    #[serde(serialize_with = "crate::status_json::rlocs")]
    pub rlocs: Vec<LocalRloc>,
    /// Where the map-server sees our WireGuard socket, and whether through
    /// a NAT.
    #[serde(serialize_with = "crate::status_json::seen_at")]
    pub seen_at: Option<(SocketAddr, bool)>,
    #[serde(rename = "uptime_secs", serialize_with = "conf::json::secs")]
    pub uptime: Duration,
    #[serde(serialize_with = "crate::status_json::map_servers")]
    pub map_servers: Vec<MapServerStatus>,
    /// `None` when the relay is off in the configuration.
    #[serde(serialize_with = "crate::status_json::relay")]
    pub relay: Option<RelayStatus>,
    #[serde(rename = "map_cache", serialize_with = "crate::status_json::cache")]
    pub cache: Vec<CacheStatus>,
    /// The DNS listener for node names; `None` when it is off.
    pub dns: Option<DnsStatus>,
    /// `None` when WireGuard could not be read.
    pub peers: Option<Vec<PeerRow>>,
}

impl Snapshot {
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "interface: {}", self.interface);
        let _ = writeln!(s, "  mode: {}", self.mode);
        let _ = writeln!(s, "  public key: {}", self.public_key);
        let _ = writeln!(s, "  listening port: {}", self.listen_port);
        let _ = writeln!(s, "  eids: {}", self.eids.join(", "));
        let rlocs: Vec<String> = self
            .rlocs
            .iter()
            .map(|r| format!("{} (priority {}, weight {})", r.addr, r.priority, r.weight))
            .collect();
        let _ = writeln!(s, "  rlocs: {}", rlocs.join(", "));
        match self.seen_at {
            Some((ep, true)) => {
                let _ = writeln!(s, "  seen at: {ep} (behind NAT)");
            }
            Some((ep, false)) => {
                let _ = writeln!(s, "  seen at: {ep} (no NAT)");
            }
            None => {}
        }
        let _ = writeln!(s, "  up for: {}", human(self.uptime));
        for m in &self.map_servers {
            let _ = writeln!(
                s,
                "  map-server {}: {}{}",
                m.name,
                if m.up { "up" } else { "down" },
                if m.registered {
                    ", registered"
                } else {
                    ", not registered yet"
                }
            );
        }
        if let Some(r) = &self.relay {
            let how = match (r.transport, r.server) {
                (Some(t), Some(a)) => format!(" via {t} {a}"),
                _ => String::new(),
            };
            let at = r.relayed.map(|a| format!(" at {a}")).unwrap_or_default();
            let since = r
                .since
                .map(|d| format!(" for {}", human(d)))
                .unwrap_or_default();
            let grant = match r.grant_valid_for {
                Some(d) => format!(", credentials valid {}", human(d)),
                None => ", no credentials yet".to_string(),
            };
            let _ = writeln!(s, "  relay: {}{at}{how}{since}{grant}", r.state);
            if r.only {
                let _ = writeln!(s, "  relay only: everything goes through the relay");
            }
        }
        if let Some(d) = &self.dns {
            let upstream: Vec<String> = d.upstream.iter().map(|u| u.to_string()).collect();
            let _ = writeln!(
                s,
                "  dns: {} for *.{}, else upstream {}{}; {} names cached, {} being looked up",
                d.listen,
                d.domain,
                if upstream.is_empty() {
                    "(none)".to_string()
                } else {
                    upstream.join(", ")
                },
                if d.resolved {
                    "; registered with systemd-resolved"
                } else {
                    ""
                },
                d.names_cached,
                d.lookups_pending
            );
        }
        let _ = writeln!(s, "\nmap-cache:");
        if self.cache.is_empty() {
            let _ = writeln!(s, "  (empty)");
        }
        for e in &self.cache {
            match e.peer {
                Some((key, endpoint)) => {
                    let endpoint = endpoint
                        .map_or("(learnt from its handshake)".to_string(), |e| e.to_string());
                    let _ = writeln!(
                        s,
                        "  {}  -> {} key {}  ttl {}",
                        e.prefix,
                        endpoint,
                        wgctl::keys::PublicKey::from_bytes(key),
                        human(e.expires_in)
                    );
                }
                None => {
                    let _ = writeln!(s, "  {}  negative  ttl {}", e.prefix, human(e.expires_in));
                }
            }
        }
        match &self.peers {
            None => {
                let _ = writeln!(s, "\n(WireGuard could not be read)");
            }
            Some(peers) => {
                for p in peers {
                    let role = p
                        .role
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default();
                    let _ = writeln!(s, "\npeer: {}{role}", p.public_key);
                    if let Some(ep) = p.endpoint {
                        let _ = writeln!(s, "  endpoint: {ep}");
                    }
                    if let Some(path) = &p.path {
                        let kind = path.kind.map_or("-", |k| k.name());
                        let nat = if path.nat { ", through NAT" } else { "" };
                        let _ = writeln!(
                            s,
                            "  path: {kind}, {} for {} ({}{nat})",
                            path.state,
                            human(path.since),
                            path.role
                        );
                        if path.candidates.len() > 1 {
                            let c: Vec<String> =
                                path.candidates.iter().map(|c| c.to_string()).collect();
                            let _ = writeln!(s, "  candidates: {}", c.join(", "));
                        }
                    }
                    let _ = writeln!(s, "  allowed ips: {}", p.allowed_ips.join(", "));
                    match p.since_handshake {
                        Some(d) => {
                            let _ = writeln!(s, "  latest handshake: {} ago", human(d));
                        }
                        None => {
                            let _ = writeln!(s, "  latest handshake: none");
                        }
                    }
                    let _ = writeln!(
                        s,
                        "  transfer: {} received, {} sent",
                        bytes(p.rx_bytes),
                        bytes(p.tx_bytes)
                    );
                }
            }
        }
        s
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.2} KiB", n as f64 / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.2} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}
