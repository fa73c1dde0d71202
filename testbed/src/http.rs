//! The daemons' telemetry pages (`/metrics`, `/status`) and Prometheus text.
//!
//! The client is ureq, so that the testbed does not depend on `conf` (which
//! depends on lisp-wire, whose tests use the testbed).

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;

/// `GET path` from `addr` (in the calling thread's namespace); the body of a
/// 200 answer.
pub fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(format!("http://{addr}{path}"))
        .call()
        .with_context(|| format!("GET {path} from {addr}"))?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .with_context(|| format!("read {path} from {addr}"))?;
    if status != 200 {
        bail!("{addr}{path}: {status}: {}", body.trim());
    }
    Ok(body)
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
