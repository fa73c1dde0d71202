//! The JSON form of the status page (`map-server status --json`,
//! `/status?format=json`): how the parts of [`Snapshot`] that are tuples or
//! core types serialise. The schema is documented in `docs/status-json.md`.

use crate::status::Snapshot;
use map_server_core::Counters;
use serde::ser::{SerializeStruct, Serializer};
use std::net::SocketAddr;
use std::time::Duration;

impl conf::telemetry::StatusView for Snapshot {
    fn render_text(&self) -> String {
        Snapshot::render_text(self)
    }
}

/// `{"listen": "addr:port" | null, "interface": "name"}` or `null`.
pub fn tunnel<S: Serializer>(
    t: &Option<(Option<SocketAddr>, String)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        None => s.serialize_none(),
        Some((listen, interface)) => {
            let mut st = s.serialize_struct("Tunnel", 2)?;
            st.serialize_field("listen", listen)?;
            st.serialize_field("interface", interface)?;
            st.end()
        }
    }
}

/// `{"endpoint": "addr:port", "behind_nat": bool}` or `null`.
pub fn observed<S: Serializer>(o: &Option<(SocketAddr, bool)>, s: S) -> Result<S::Ok, S::Error> {
    match o {
        None => s.serialize_none(),
        Some((endpoint, behind_nat)) => {
            let mut st = s.serialize_struct("Observed", 2)?;
            st.serialize_field("endpoint", endpoint)?;
            st.serialize_field("behind_nat", behind_nat)?;
            st.end()
        }
    }
}

/// `{"error": "...", "for_secs": n, "failed_commits": n}` or `null`.
pub fn store_fault<S: Serializer>(
    f: &Option<(String, Duration, u64)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct Fault<'a> {
        error: &'a str,
        #[serde(serialize_with = "conf::json::secs")]
        for_secs: Duration,
        failed_commits: u64,
    }
    match f {
        None => s.serialize_none(),
        Some((error, for_secs, failed_commits)) => s.serialize_some(&Fault {
            error,
            for_secs: *for_secs,
            failed_commits: *failed_commits,
        }),
    }
}

/// The core's counters as `{metric name without prefix: value}`, the same
/// names and values as `/metrics`.
pub fn counters<S: Serializer>(c: &Counters, s: S) -> Result<S::Ok, S::Error> {
    conf::json::metric_map(c.metrics(), s)
}
