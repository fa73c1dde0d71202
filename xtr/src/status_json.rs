//! The JSON form of the status page (`xtr status --json`,
//! `/status?format=json`): how the core types in [`Snapshot`] serialise.
//! The schema is documented in `docs/status-json.md`.

use crate::status::Snapshot;
use serde::Serializer;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use xtr_core::{CacheStatus, LocalRloc, MapServerStatus, PathStatus, RelayStatus};

impl conf::telemetry::StatusView for Snapshot {
    fn render_text(&self) -> String {
        Snapshot::render_text(self)
    }
}

/// `[{"addr": ip, "priority": n, "weight": n}]`.
pub fn rlocs<S: Serializer>(r: &[LocalRloc], s: S) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct Rloc {
        addr: IpAddr,
        priority: u8,
        weight: u8,
    }
    s.collect_seq(r.iter().map(|r| Rloc {
        addr: r.addr,
        priority: r.priority,
        weight: r.weight,
    }))
}

/// `[{"name": "...", "up": bool, "registered": bool}]`.
pub fn map_servers<S: Serializer>(m: &[MapServerStatus], s: S) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct MapServer<'a> {
        name: &'a str,
        up: bool,
        registered: bool,
    }
    s.collect_seq(m.iter().map(|m| MapServer {
        name: &m.name,
        up: m.up,
        registered: m.registered,
    }))
}

/// `[{"eid": prefix, "negative": bool, "public_key": base64 | null,
/// "endpoint": "addr:port" | null, "expires_in_secs": n}]`.
pub fn cache<S: Serializer>(c: &[CacheStatus], s: S) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct Entry {
        eid: String,
        negative: bool,
        public_key: Option<String>,
        endpoint: Option<SocketAddr>,
        #[serde(serialize_with = "conf::json::secs")]
        expires_in_secs: Duration,
    }
    s.collect_seq(c.iter().map(|e| {
        Entry {
            eid: e.prefix.to_string(),
            negative: e.peer.is_none(),
            public_key: e
                .peer
                .map(|(k, _)| wgctl::keys::PublicKey::from_bytes(k).to_string()),
            endpoint: e.peer.and_then(|(_, ep)| ep),
            expires_in_secs: e.expires_in,
        }
    }))
}

/// `{"endpoint": address, "behind_nat": bool}` or `null`.
pub fn seen_at<S: Serializer>(o: &Option<(SocketAddr, bool)>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct SeenAt {
        endpoint: SocketAddr,
        behind_nat: bool,
    }
    match o {
        None => s.serialize_none(),
        Some((endpoint, behind_nat)) => s.serialize_some(&SeenAt {
            endpoint: *endpoint,
            behind_nat: *behind_nat,
        }),
    }
}

/// `{"eids", "endpoint", "candidates", "kind", "role", "state",
/// "since_secs", "nat"}` or `null` (a control peer).
pub fn path<S: Serializer>(p: &Option<PathStatus>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct Path<'a> {
        eids: Vec<String>,
        endpoint: Option<SocketAddr>,
        candidates: &'a [SocketAddr],
        kind: Option<&'static str>,
        role: &'static str,
        state: &'static str,
        #[serde(serialize_with = "conf::json::secs")]
        since_secs: Duration,
        nat: bool,
        wg_endpoint: Option<SocketAddr>,
    }
    match p {
        None => s.serialize_none(),
        Some(p) => s.serialize_some(&Path {
            eids: p.eids.iter().map(|e| e.to_string()).collect(),
            endpoint: p.endpoint,
            candidates: &p.candidates,
            kind: p.kind.map(|k| k.name()),
            role: p.role,
            state: p.state,
            since_secs: p.since,
            nat: p.nat,
            wg_endpoint: p.wg_endpoint,
        }),
    }
}

/// `{"state", "server", "transport", "relayed", "since_secs", "only",
/// "grant_valid_for_secs"}`, or `null` when the relay is off.
pub fn relay<S: Serializer>(r: &Option<RelayStatus>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct Relay {
        state: &'static str,
        server: Option<SocketAddr>,
        transport: Option<&'static str>,
        relayed: Option<SocketAddr>,
        since_secs: Option<u64>,
        only: bool,
        grant_valid_for_secs: Option<u64>,
    }
    match r {
        None => s.serialize_none(),
        Some(r) => s.serialize_some(&Relay {
            state: r.state,
            server: r.server,
            transport: r.transport.map(|t| t.name()),
            relayed: r.relayed,
            since_secs: r.since.map(|d| d.as_secs()),
            only: r.only,
            grant_valid_for_secs: r.grant_valid_for.map(|d| d.as_secs()),
        }),
    }
}
