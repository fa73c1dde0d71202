//! The local telemetry endpoint shared by both daemons, on axum.
//!
//! * [`serve`]: `GET /metrics` (Prometheus text, encoded by
//!   metrics-exporter-prometheus: see [`crate::metrics`]), `GET /status` (the status
//!   page, as text for people or, with `?format=json` or `Accept:
//!   application/json`, as JSON for scripts) and `GET /healthz` (`ok`, or 503
//!   with the reason). It renders nothing itself: each request becomes a
//!   [`PageRequest`] on a channel, and the daemon's event loop answers it
//!   from its own state. That keeps the state single-owner (no locks around
//!   the protocol core), makes a page a consistent snapshot taken between two
//!   events, and makes `/healthz` prove that the event loop is turning.
//! * [`fetch`]: the client side (ureq), used by the `status` subcommands.
//!
//! The endpoint is meant for a loopback address: it has no authentication,
//! and it only ever reads.

pub use crate::logging::init_logging;
use crate::metrics::MetricsPage;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

/// Requests served at once; more are answered 503 at once.
const MAX_CONNECTIONS: usize = 32;
/// Time the daemon has to answer a request.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest response [`fetch`] accepts.
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;
/// Version of the JSON status documents (`"schema"`): raised when a field
/// is removed or changes meaning; new fields may appear without it.
pub const STATUS_SCHEMA: u32 = 1;
/// The content type of `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How the status page is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// A page of the telemetry endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/metrics`: Prometheus text exposition format.
    Metrics,
    /// `/status`: text for people, or JSON.
    Status(Format),
    /// `/healthz`: whether the daemon's event loop answers, and is healthy.
    Health,
}

/// A status page: plain data that renders as text and serialises as JSON,
/// the same data both ways.
pub trait StatusView: serde::Serialize {
    fn render_text(&self) -> String;
}

/// What the daemon answered.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: String,
}

/// One request for a page, to be answered by the daemon's event loop.
#[derive(Debug)]
pub struct PageRequest {
    pub page: Page,
    reply: oneshot::Sender<Answer>,
}

impl PageRequest {
    fn respond(self, status: StatusCode, content_type: &'static str, body: String) {
        // A client that has gone away in the meantime is not an error.
        let _ = self.reply.send(Answer {
            status,
            content_type,
            body,
        });
    }

    /// Answers `/metrics`.
    pub fn respond_metrics(self, page: MetricsPage<'_>) {
        self.respond(StatusCode::OK, METRICS_CONTENT_TYPE, page.render());
    }

    /// Answers `/status` in the format asked for.
    pub fn respond_status(self, view: &impl StatusView) {
        match self.page {
            Page::Status(Format::Json) => {
                let body = status_json(view);
                self.respond(StatusCode::OK, "application/json", body)
            }
            _ => {
                let body = view.render_text();
                self.respond(StatusCode::OK, "text/plain; charset=utf-8", body)
            }
        }
    }

    /// Answers `/healthz`: `ok`, or 503 with what is wrong.
    pub fn respond_health(self, problem: Option<String>) {
        match problem {
            None => self.respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
            Some(p) => self.respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("{p}\n"),
            ),
        }
    }
}

/// The JSON document of a status view: `{"schema": N, ...the view's fields}`.
pub fn status_json(view: &impl StatusView) -> String {
    #[derive(serde::Serialize)]
    struct Doc<'a, V: serde::Serialize> {
        schema: u32,
        #[serde(flatten)]
        view: &'a V,
    }
    let mut body = serde_json::to_string_pretty(&Doc {
        schema: STATUS_SCHEMA,
        view,
    })
    .unwrap_or_else(|e| format!("{{\"schema\":{STATUS_SCHEMA},\"error\":\"{e}\"}}"));
    body.push('\n');
    body
}

/// The running endpoint. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Telemetry {
    /// Where it listens (the actual port when 0 was asked for).
    pub local_addr: SocketAddr,
    /// Page requests; answer each with one of the `respond_*` methods.
    pub requests: mpsc::Receiver<PageRequest>,
    task: JoinHandle<()>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the endpoint could not start, or a page could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot listen for telemetry on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(
        "cannot connect to {addr}: {error} (is the daemon running, with this metrics address?)"
    )]
    Connect { addr: SocketAddr, error: String },
    #[error("talking to {addr}: {error}")]
    Io { addr: SocketAddr, error: String },
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: String,
        body: String,
    },
}

#[derive(Clone)]
struct Shared {
    tx: mpsc::Sender<PageRequest>,
    slots: Arc<Semaphore>,
}

/// Starts the endpoint on `addr`. Must be called on a tokio runtime.
pub async fn serve(addr: SocketAddr) -> Result<Telemetry, TelemetryError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| TelemetryError::Bind { addr, error })?;
    let local_addr = listener
        .local_addr()
        .map_err(|error| TelemetryError::Bind { addr, error })?;
    let (tx, requests) = mpsc::channel(MAX_CONNECTIONS);
    let shared = Shared {
        tx,
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/healthz", get(health))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "pages: /metrics, /status (?format=json), /healthz\n",
            )
        })
        .with_state(shared);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "telemetry endpoint stopped");
        }
    });
    tracing::debug!(%local_addr, "telemetry endpoint listening (/metrics, /status, /healthz)");
    Ok(Telemetry {
        local_addr,
        requests,
        task,
    })
}

async fn metrics(State(s): State<Shared>) -> Response {
    ask(s, Page::Metrics).await
}

async fn health(State(s): State<Shared>) -> Response {
    ask(s, Page::Health).await
}

async fn status(
    State(s): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let format = match query.get("format").map(String::as_str) {
        Some("json") => Format::Json,
        Some("text") => Format::Text,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("format={other}: use format=json or format=text\n"),
            )
                .into_response()
        }
        None if wants_json(&headers) => Format::Json,
        None => Format::Text,
    };
    ask(s, Page::Status(format)).await
}

/// Whether the Accept header prefers JSON to text.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .find(|t| *t == "application/json" || t.starts_with("text/"))
        .is_some_and(|t| t == "application/json")
}

/// Hands the request to the daemon and waits for its answer.
async fn ask(s: Shared, page: Page) -> Response {
    let unavailable = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon did not answer\n",
        )
            .into_response()
    };
    let Ok(_permit) = s.slots.try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response();
    };
    let (reply, rx) = oneshot::channel();
    if s.tx.send(PageRequest { page, reply }).await.is_err() {
        return unavailable();
    }
    match tokio::time::timeout(IO_TIMEOUT, rx).await {
        Ok(Ok(a)) => (a.status, [(header::CONTENT_TYPE, a.content_type)], a.body).into_response(),
        _ => unavailable(),
    }
}

/// Fetches `path` (e.g. `/status?format=json`) from a telemetry endpoint and
/// returns the body of a 200 answer. Blocking, with timeouts: for
/// command-line tools.
pub fn fetch(addr: SocketAddr, path: &str) -> Result<String, TelemetryError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_global(Some(IO_TIMEOUT * 2))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(format!("http://{addr}{path}"))
        .call()
        .map_err(|e| match e {
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                TelemetryError::Connect {
                    addr,
                    error: e.to_string(),
                }
            }
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => TelemetryError::Connect {
                addr,
                error: e.to_string(),
            },
            other => TelemetryError::Io {
                addr,
                error: other.to_string(),
            },
        })?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .read_to_string()
        .map_err(|e| TelemetryError::Io {
            addr,
            error: e.to_string(),
        })?;
    if status != 200 {
        return Err(TelemetryError::Status {
            addr,
            status: status.to_string(),
            body: body.trim().to_string(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[derive(serde::Serialize)]
    struct View {
        n: u32,
    }

    impl StatusView for View {
        fn render_text(&self) -> String {
            format!("n is {}\n", self.n)
        }
    }

    #[tokio::test]
    async fn pages_are_answered_by_the_owner_of_the_channel() {
        let mut t = serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = t.local_addr;
        let owner = tokio::spawn(async move {
            let metrics = Metrics::new("t", &[]);
            let mut seen = Vec::new();
            for _ in 0..4 {
                let req = t.requests.recv().await.unwrap();
                seen.push(req.page);
                match req.page {
                    Page::Metrics => {
                        let mut page = metrics.page();
                        page.add_list([("a_total", "things", "counter", 3)]);
                        req.respond_metrics(page)
                    }
                    Page::Status(_) => req.respond_status(&View { n: 7 }),
                    Page::Health => req.respond_health(Some("store fault".into())),
                }
            }
            (t, seen)
        });
        let get = |path: &'static str| tokio::task::spawn_blocking(move || fetch(addr, path));
        assert_eq!(get("/status").await.unwrap().unwrap(), "n is 7\n");
        let json = get("/status?format=json").await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["schema"], STATUS_SCHEMA);
        assert_eq!(v["n"], 7);
        let metrics = get("/metrics").await.unwrap().unwrap();
        assert!(
            metrics.contains("# TYPE t_a_total counter\nt_a_total 3\n"),
            "{metrics}"
        );
        let health = get("/healthz").await.unwrap();
        assert!(
            matches!(&health, Err(TelemetryError::Status { status, body, .. })
                if status.starts_with("503") && body == "store fault"),
            "{health:?}"
        );
        let missing = get("/nope").await.unwrap();
        assert!(
            matches!(&missing, Err(TelemetryError::Status { status, .. }) if status.starts_with("404")),
            "{missing:?}"
        );
        let bad = get("/status?format=xml").await.unwrap();
        assert!(
            matches!(&bad, Err(TelemetryError::Status { status, .. }) if status.starts_with("400")),
            "{bad:?}"
        );
        let (_t, seen) = owner.await.unwrap();
        assert_eq!(
            seen,
            [
                Page::Status(Format::Text),
                Page::Status(Format::Json),
                Page::Metrics,
                Page::Health
            ]
        );
    }

    #[tokio::test]
    async fn a_daemon_that_stops_answering_gives_503() {
        let mut t = serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = t.local_addr;
        // Nobody reads the requests any more.
        let (_unused, other) = mpsc::channel(1);
        drop(std::mem::replace(&mut t.requests, other));
        let r = tokio::task::spawn_blocking(move || fetch(addr, "/healthz"))
            .await
            .unwrap();
        assert!(
            matches!(&r, Err(TelemetryError::Status { status, .. }) if status.starts_with("503")),
            "{r:?}"
        );
    }

    #[test]
    fn accept_header_picks_json_only_when_preferred() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, v.parse().unwrap());
            wants_json(&m)
        };
        assert!(h("application/json"));
        assert!(h("application/json, text/plain;q=0.5"));
        assert!(!h("text/plain, application/json"));
        assert!(!h("*/*"));
        assert!(!wants_json(&HeaderMap::new()));
    }

    #[test]
    fn fetch_names_the_address_when_nothing_listens() {
        // Port 1 on loopback: nothing listens there in a test environment.
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let err = fetch(addr, "/status").unwrap_err();
        assert!(matches!(err, TelemetryError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }
}
