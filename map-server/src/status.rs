//! The map-server's status page: a [`Snapshot`] of plain data taken from the
//! core and the shell, and its text rendering for `map-server status`.

use map_server_core::{Counters, MapServer};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Registrations listed on the status page, at most.
pub const STATUS_ROWS: usize = 1000;

/// What the shell knows that the core does not.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShellFacts {
    #[serde(rename = "uptime_secs", serialize_with = "conf::json::secs")]
    pub uptime: Duration,
    pub restored: usize,
    /// The control socket and its interface, when the tunnel is configured.
    #[serde(
        rename = "control_tunnel",
        serialize_with = "crate::status_json::tunnel"
    )]
    pub tunnel: Option<(Option<SocketAddr>, String)>,
    #[serde(rename = "plain_listener")]
    pub plain: Option<SocketAddr>,
    pub store_path: PathBuf,
}

/// One registration, as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MappingRow {
    pub eid: String,
    pub rloc: String,
    pub more_rlocs: usize,
    /// Where the map-server's WireGuard sees the owner, and whether that is
    /// through a NAT.
    #[serde(serialize_with = "crate::status_json::observed")]
    pub observed: Option<(SocketAddr, bool)>,
    /// `None` for a static mapping.
    pub peer: Option<String>,
    #[serde(rename = "age_secs", serialize_with = "conf::json::opt_secs")]
    pub age: Option<Duration>,
    #[serde(rename = "expires_in_secs", serialize_with = "conf::json::opt_secs")]
    pub expires_in: Option<Duration>,
}

/// One configured peer, as `map-server peers` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerRow {
    pub name: String,
    pub team: String,
    /// Its WireGuard public key (base64); `None` for a keyless LISP peer.
    pub key: Option<String>,
    pub control_address: String,
    /// The EID prefixes it may register.
    pub eids: Vec<String>,
    /// `registered` (a live registration), or `silent`.
    pub state: &'static str,
    /// Since its newest live registration was refreshed.
    #[serde(rename = "last_seen_secs", serialize_with = "conf::json::opt_secs")]
    pub last_seen: Option<Duration>,
    /// Where the map-server's WireGuard sees it.
    pub observed_endpoint: Option<SocketAddr>,
    /// Until its enrolment ends.
    #[serde(rename = "expires_in_secs", serialize_with = "conf::json::opt_secs")]
    pub expires_in: Option<Duration>,
}

/// Everything the status page shows (and, serialised, `/status?format=json`:
/// see `docs/status-json.md`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub facts: ShellFacts,
    #[serde(serialize_with = "crate::status_json::counters")]
    pub counters: Counters,
    #[serde(
        rename = "registration_lifetime_secs",
        serialize_with = "conf::json::secs"
    )]
    pub lifetime: Duration,
    /// The store fault going on now: (error, for how long, failed commits).
    #[serde(serialize_with = "crate::status_json::store_fault")]
    pub store_fault: Option<(String, Duration, u64)>,
    pub unsaved_ops: usize,
    pub live_mappings: usize,
    #[serde(rename = "mappings")]
    pub rows: Vec<MappingRow>,
    /// Configured peers with no live registration; only filled when every
    /// mapping is listed.
    pub silent_peers: Vec<String>,
    /// Every configured peer (at most [`STATUS_ROWS`]).
    pub peers: Vec<PeerRow>,
    pub reloads: ReloadStatus,
}

/// Live reloads (SIGHUP) applied and refused, and the last refusal since
/// the last one applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadStatus {
    pub applied: u64,
    pub failed: u64,
    pub last_error: Option<String>,
}

impl Snapshot {
    pub fn take(
        core: &MapServer,
        facts: ShellFacts,
        reloads: ReloadStatus,
        now: Instant,
    ) -> Snapshot {
        let mut live: Vec<_> = core
            .registry()
            .iter()
            .filter(|(_, m)| m.is_live(now))
            .collect();
        let total = live.len();
        live.sort_unstable_by_key(|(p, _)| *p);
        live.truncate(STATUS_ROWS);
        let mut seen = HashSet::new();
        let rows = live
            .into_iter()
            .map(|(prefix, m)| {
                let rloc = m.rlocs.first().map_or("-".to_string(), |r| match r.port {
                    Some(port) => SocketAddr::new(r.addr, port).to_string(),
                    None => r.addr.to_string(),
                });
                let peer = core.policy().peer(m.origin).map(|p| p.name.clone());
                let observed = match m.origin {
                    map_server_core::Origin::Peer(i) => core
                        .observed(i)
                        .map(|o| (o, map_server_core::behind_nat(m, Some(o)))),
                    map_server_core::Origin::Static => None,
                };
                if let Some(p) = &peer {
                    seen.insert(p.clone());
                }
                MappingRow {
                    eid: prefix.to_string(),
                    rloc,
                    more_rlocs: m.rlocs.len().saturating_sub(1),
                    observed,
                    peer,
                    age: core
                        .last_refresh(m)
                        .map(|t| now.saturating_duration_since(t)),
                    expires_in: m.expires.map(|e| e.saturating_duration_since(now)),
                }
            })
            .collect();
        let silent_peers = if total <= STATUS_ROWS {
            core.policy()
                .live_peers()
                .filter(|(_, p)| !seen.contains(&p.name))
                .map(|(_, p)| p.name.clone())
                .collect()
        } else {
            Vec::new()
        };
        Snapshot {
            facts,
            counters: core.counters().clone(),
            lifetime: core.policy().registration_lifetime,
            store_fault: core.store_fault().map(|f| {
                (
                    f.error.clone(),
                    now.saturating_duration_since(f.since),
                    f.failures,
                )
            }),
            unsaved_ops: core.unsaved_ops(),
            live_mappings: total,
            rows,
            silent_peers,
            peers: peer_rows(core, now),
            reloads,
        }
    }

    /// The text of `map-server peers`.
    pub fn render_peers(peers: &[PeerRow]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:<10} {:<45} {:<24} {:<10} {:>9} {:<22} {:>10}",
            "NAME", "TEAM", "KEY", "EIDS", "STATE", "LAST SEEN", "ENDPOINT", "EXPIRES IN"
        );
        for p in peers {
            let secs = |d: Option<Duration>, none: &str| {
                d.map_or(none.to_string(), |d| format!("{}s", d.as_secs()))
            };
            let _ = writeln!(
                out,
                "{:<16} {:<10} {:<45} {:<24} {:<10} {:>9} {:<22} {:>10}",
                p.name,
                p.team,
                p.key.as_deref().unwrap_or("(keyless)"),
                p.eids.join(","),
                p.state,
                secs(p.last_seen, "-"),
                p.observed_endpoint
                    .map_or("-".to_string(), |e| e.to_string()),
                secs(p.expires_in, "never"),
            );
        }
        out
    }

    /// The text of `map-server status`.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let up = self.facts.uptime.as_secs();
        let _ = writeln!(
            out,
            "lispwg map-server: up {}h{:02}m{:02}s, {} registrations restored at start",
            up / 3600,
            up / 60 % 60,
            up % 60,
            self.facts.restored
        );
        let show = |a: Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
        let tunnel = match &self.facts.tunnel {
            Some((addr, ifname)) => format!("{} on {ifname}", show(*addr)),
            None => "none".into(),
        };
        let _ = writeln!(
            out,
            "control tunnel: {tunnel}; plain listener: {}",
            show(self.facts.plain)
        );
        let c = &self.counters;
        let _ = writeln!(
            out,
            "store: {} ({} commits, {} failures)",
            self.facts.store_path.display(),
            c.store_commits,
            c.store_failures
        );
        if let Some((error, for_how_long, failures)) = &self.store_fault {
            let _ = writeln!(
                out,
                "  STORE FAULT for {}s ({failures} failed commits, {} changes unsaved): {error}; \
                 registrations are not being confirmed",
                for_how_long.as_secs(),
                self.unsaved_ops
            );
        }
        let _ = writeln!(
            out,
            "counters: {} registrations, {} requests, {} replies ({} negative), {} notifies, \
             {} retransmits, {} auth failures, {} unauthorised, {} unknown peers, {} malformed",
            c.registrations,
            c.requests,
            c.replies,
            c.negative_replies,
            c.notifies,
            c.notify_retransmits,
            c.auth_failures,
            c.unauthorised,
            c.unknown_peers,
            c.malformed
        );
        out.push('\n');
        let _ = writeln!(
            out,
            "{} mappings (gauge {}); lifetime {} s",
            self.live_mappings,
            c.entries,
            self.lifetime.as_secs()
        );
        let _ = writeln!(
            out,
            "{:<28} {:<40} {:<34} {:<16} {:>8} {:>10}",
            "EID", "RLOC:PORT", "SEEN AT", "PEER", "AGE", "EXPIRES IN"
        );
        for r in &self.rows {
            let more = if r.more_rlocs > 0 {
                format!(" (+{})", r.more_rlocs)
            } else {
                String::new()
            };
            let secs = |d: Option<Duration>, none: &str| {
                d.map_or(none.to_string(), |d| format!("{}s", d.as_secs()))
            };
            let seen = match r.observed {
                Some((ep, true)) => format!("{ep} (NAT)"),
                Some((ep, false)) => ep.to_string(),
                None => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<28} {:<40} {:<34} {:<16} {:>8} {:>10}",
                r.eid,
                format!("{}{more}", r.rloc),
                seen,
                r.peer.as_deref().unwrap_or("(static)"),
                secs(r.age, "-"),
                secs(r.expires_in, "never"),
            );
        }
        if self.live_mappings > self.rows.len() {
            let _ = writeln!(out, "... and {} more", self.live_mappings - self.rows.len());
        }
        if !self.silent_peers.is_empty() {
            let _ = writeln!(
                out,
                "\npeers with no live registration: {}",
                self.silent_peers.join(", ")
            );
        }
        out
    }
}

/// Every live configured peer with its registration state, sorted by name.
fn peer_rows(core: &MapServer, now: Instant) -> Vec<PeerRow> {
    let mut newest: std::collections::HashMap<u16, Duration> = Default::default();
    for (_, m) in core.registry().iter().filter(|(_, m)| m.is_live(now)) {
        let map_server_core::Origin::Peer(i) = m.origin else {
            continue;
        };
        if let Some(t) = core.last_refresh(m) {
            let age = now.saturating_duration_since(t);
            let e = newest.entry(i).or_insert(age);
            *e = (*e).min(age);
        }
    }
    let mut rows: Vec<PeerRow> = core
        .policy()
        .live_peers()
        .take(STATUS_ROWS)
        .map(|(i, p)| PeerRow {
            name: p.name.clone(),
            team: p.team.clone(),
            key: p
                .wg_key
                .map(|k| wgctl::keys::PublicKey::from_bytes(k).to_string()),
            control_address: p.control_address.to_string(),
            eids: p.allowed.iter().map(|a| a.prefix.to_string()).collect(),
            state: if newest.contains_key(&i) {
                "registered"
            } else {
                "silent"
            },
            last_seen: newest.get(&i).copied(),
            observed_endpoint: core.observed(i),
            expires_in: p.expires.map(|e| e.saturating_duration_since(now)),
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}
