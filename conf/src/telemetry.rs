//! Logging and the local telemetry endpoint shared by both daemons.
//!
//! * [`init_logging`]: one line per event on stderr, filtered by `RUST_LOG`
//!   (default `info`).
//! * [`serve`]: a minimal HTTP/1.0 responder for `GET /metrics` (Prometheus
//!   text) and `GET /status` (human-readable text). It renders nothing itself:
//!   each request becomes a [`PageRequest`] on a channel, and the daemon's event
//!   loop answers it from its own state. That keeps the state single-owner (no
//!   locks around the protocol core) and makes a page a consistent snapshot
//!   taken between two events.
//! * [`fetch`]: the client side, used by the `status` subcommands.
//!
//! The endpoint is meant for a loopback address: it has no authentication,
//! and it only ever reads.

use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream as AsyncTcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

/// Longest request head read; anything longer is refused.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request, and the daemon to answer it.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest response [`fetch`] accepts.
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// Sets up `tracing` for a daemon: one line per event on stderr, with the
/// event's structured fields, filtered by `RUST_LOG` (default `info`). Calling
/// it again is harmless.
/// Dependencies whose info-level logs are per-packet noise.
const QUIET_CRATES: [&str; 3] = ["turn_client_proto", "stun_proto", "turn_types"];

pub fn init_logging() {
    let (mut filter, bad) = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(f) => (f, None),
        Err(e) => (
            tracing_subscriber::EnvFilter::new("info"),
            std::env::var("RUST_LOG").ok().map(|v| (v, e)),
        ),
    };
    // The TURN client logs every poll at info; only its warnings matter to
    // an operator, unless RUST_LOG names it.
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    for noisy in QUIET_CRATES {
        if !asked.contains(noisy) {
            if let Ok(d) = format!("{noisy}=warn").parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .is_ok();
    if let (true, Some((value, error))) = (installed, bad) {
        // An unset RUST_LOG is normal; a malformed one deserves a word.
        if !value.is_empty() {
            tracing::warn!(rust_log = %value, %error, "ignoring RUST_LOG; logging at info");
        }
    }
}

/// A page of the telemetry endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/metrics`: Prometheus text exposition format.
    Metrics,
    /// `/status`: plain text for people.
    Status,
}

impl Page {
    /// The page served at `path` (a query string is ignored).
    pub fn from_path(path: &str) -> Option<Page> {
        match path.split('?').next().unwrap_or("") {
            "/metrics" => Some(Page::Metrics),
            "/status" => Some(Page::Status),
            _ => None,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Page::Metrics => "/metrics",
            Page::Status => "/status",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Page::Metrics => "text/plain; version=0.0.4; charset=utf-8",
            Page::Status => "text/plain; charset=utf-8",
        }
    }
}

/// One request for a page, to be answered by the daemon's event loop.
#[derive(Debug)]
pub struct PageRequest {
    pub page: Page,
    reply: oneshot::Sender<String>,
}

impl PageRequest {
    /// Sends the rendered page back to the HTTP side. A client that has gone
    /// away in the meantime is not an error.
    pub fn respond(self, body: String) {
        let _ = self.reply.send(body);
    }
}

/// The running endpoint. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Telemetry {
    /// Where it listens (the actual port when 0 was asked for).
    pub local_addr: SocketAddr,
    /// Page requests; answer each with [`PageRequest::respond`].
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
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("talking to {addr}: {error}")]
    Io {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: String,
        body: String,
    },
    #[error("{addr} sent something that is not an HTTP response")]
    BadResponse { addr: SocketAddr },
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
    let task = tokio::spawn(accept_loop(listener, tx));
    tracing::info!(%local_addr, "telemetry endpoint listening (/metrics, /status)");
    Ok(Telemetry {
        local_addr,
        requests,
        task,
    })
}

async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<PageRequest>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "telemetry accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "telemetry busy; closing connection");
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(IO_TIMEOUT * 2, handle(stream, tx)).await {
                tracing::debug!(%peer, error = %e, "telemetry client timed out");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: AsyncTcpStream, tx: mpsc::Sender<PageRequest>) {
    let (status, content_type, body) = match read_head(&mut stream).await {
        Err(reason) => ("400 Bad Request", "text/plain", format!("{reason}\n")),
        Ok(head) => answer(&head, &tx).await,
    };
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_ok() {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut AsyncTcpStream) -> Result<String, &'static str> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await.map_err(|_| "read failed")?;
            if n == 0 {
                return Err("connection closed before the request ended");
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(());
            }
            if buf.len() > MAX_REQUEST_HEAD {
                return Err("request head too long");
            }
        }
    };
    tokio::time::timeout(IO_TIMEOUT, read)
        .await
        .map_err(|_| "request not received in time")??;
    String::from_utf8(buf).map_err(|_| "request is not UTF-8")
}

async fn answer(
    head: &str,
    tx: &mpsc::Sender<PageRequest>,
) -> (&'static str, &'static str, String) {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" {
        return (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served\n".into(),
        );
    }
    let Some(page) = Page::from_path(path) else {
        return (
            "404 Not Found",
            "text/plain",
            "pages: /metrics, /status\n".into(),
        );
    };
    let (reply, rx) = oneshot::channel();
    let unavailable = (
        "503 Service Unavailable",
        "text/plain",
        "the daemon did not answer\n".to_string(),
    );
    if tx.send(PageRequest { page, reply }).await.is_err() {
        return unavailable;
    }
    match tokio::time::timeout(IO_TIMEOUT, rx).await {
        Ok(Ok(body)) => ("200 OK", page.content_type(), body),
        _ => unavailable,
    }
}

/// Renders `(name, help, kind, value)` metrics in the Prometheus text format.
pub fn render_metrics<'a>(
    metrics: impl IntoIterator<Item = (&'a str, &'a str, &'a str, u64)>,
) -> String {
    let mut out = String::new();
    for (name, help, kind, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// Fetches `path` (e.g. `/status`) from a telemetry endpoint and returns the
/// body of a 200 answer. Blocking, with timeouts: for command-line tools.
pub fn fetch(addr: SocketAddr, path: &str) -> Result<String, TelemetryError> {
    let io = |error| TelemetryError::Io { addr, error };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|error| TelemetryError::Connect { addr, error })?;
    stream.set_read_timeout(Some(IO_TIMEOUT * 2)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(TelemetryError::BadResponse { addr })?;
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.splitn(2, ' ');
    if !parts.next().unwrap_or("").starts_with("HTTP/") {
        return Err(TelemetryError::BadResponse { addr });
    }
    let status = parts.next().unwrap_or("").trim().to_string();
    if !status.starts_with("200") {
        return Err(TelemetryError::Status {
            addr,
            status,
            body: body.trim().to_string(),
        });
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_prometheus_text_format() {
        let text = render_metrics([
            ("a_total", "things", "counter", 3),
            ("b", "now", "gauge", 0),
        ]);
        assert_eq!(
            text,
            "# HELP a_total things\n# TYPE a_total counter\na_total 3\n\
             # HELP b now\n# TYPE b gauge\nb 0\n"
        );
    }

    #[tokio::test]
    async fn pages_are_answered_by_the_owner_of_the_channel() {
        let mut t = serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = t.local_addr;
        let owner = tokio::spawn(async move {
            // Answer two requests, then go away.
            for _ in 0..2 {
                let req = t.requests.recv().await.unwrap();
                let body = format!("page {}\n", req.page.path());
                req.respond(body);
            }
            t
        });
        let status = tokio::task::spawn_blocking(move || fetch(addr, "/status"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, "page /status\n");
        let metrics = tokio::task::spawn_blocking(move || fetch(addr, "/metrics?x=1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(metrics, "page /metrics\n");
        let missing = tokio::task::spawn_blocking(move || fetch(addr, "/nope"))
            .await
            .unwrap();
        assert!(
            matches!(&missing, Err(TelemetryError::Status { status, .. }) if status.starts_with("404")),
            "{missing:?}"
        );
        // Garbage is refused with an error status, not a hang or a crash.
        let raw = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"\x00\x01\x02\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(raw.starts_with("HTTP/1.0 405"), "{raw}");
        drop(owner.await.unwrap());
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
