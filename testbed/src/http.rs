//! The daemons' telemetry pages (`/metrics`, `/status`) and Prometheus text.
//!
//! A small HTTP/1.0 client of its own, so that the testbed does not depend on
//! `conf` (which depends on lisp-wire, whose tests use the testbed).

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path` from `addr` (in the calling thread's namespace); the body of a
/// 200 answer.
pub fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream
        .take(64 << 20)
        .read_to_end(&mut raw)
        .with_context(|| format!("read {path} from {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{addr}{path}: not an HTTP answer");
    };
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{addr}{path}: {status}: {}", body.trim());
    }
    Ok(body.to_string())
}

/// The value of the unlabelled metric `name` in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_by_name() {
        let text = "# HELP a x\n# TYPE a counter\na 3\nab 4.5\nc{l=\"x\"} 1\n";
        assert_eq!(super::metric(text, "a"), Some(3.0));
        assert_eq!(super::metric(text, "ab"), Some(4.5));
        assert_eq!(super::metric(text, "b"), None);
    }
}
