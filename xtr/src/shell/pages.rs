//! The agent's answers to the telemetry endpoint: `/metrics` (the core's
//! counters, the shell's, and the cache-add histogram), `/status` (text or
//! JSON, from one [`Snapshot`]) and `/healthz`.

use super::Agent;
use crate::status::{DnsStatus, PeerRow, Snapshot};
use conf::metrics::Metrics;
use conf::telemetry::{Page, PageRequest};
use conf::xtr::Mode;
use std::time::{Duration, Instant, SystemTime};
use xtr_core::counters::METRICS_PREFIX;

/// Name (after the prefix) of the cache-add histogram.
const CACHE_ADD: &str = "cache_add_seconds";
/// Upper bounds, in seconds, of the cache-add histogram's buckets.
const CACHE_ADD_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The agent's metrics, holding the histogram of the time from a map-cache
/// miss (the packet read from the miss TUN) to the end of the flush that
/// programmed its peer and route (and re-injected the held packets):
/// `lispwg_xtr_cache_add_seconds`.
#[derive(Debug)]
pub(super) struct CacheAddHistogram(Metrics);

impl Default for CacheAddHistogram {
    fn default() -> Self {
        CacheAddHistogram(Metrics::new(
            METRICS_PREFIX,
            &[(
                CACHE_ADD,
                "time from a map-cache miss to its peer and route being programmed",
                &CACHE_ADD_BUCKETS,
            )],
        ))
    }
}

impl CacheAddHistogram {
    pub(super) fn record(&mut self, d: Duration) {
        self.0.observe(CACHE_ADD, d.as_secs_f64());
    }
}

impl Agent {
    /// Answers one page request from the agent's and the core's state.
    pub(super) async fn answer(&mut self, req: PageRequest) {
        match req.page {
            Page::Metrics => {
                let mut page = self.cache_add.0.page();
                page.add_list(self.core.counters().metrics());
                page.add_list([
                    (
                        "peers",
                        "data peers programmed now",
                        "gauge",
                        self.core.peer_count() as u64,
                    ),
                    (
                        "pending",
                        "resolutions in flight",
                        "gauge",
                        self.core.pending_count() as u64,
                    ),
                    (
                        "output_errors_total",
                        "dataplane or send operations that failed",
                        "counter",
                        self.output_errors,
                    ),
                ]);
                let paths = self.core.paths(Instant::now());
                let relayed =
                    |p: &xtr_core::PathStatus| p.kind == Some(xtr_core::PathKind::Relayed);
                let count = |state: &str| {
                    paths
                        .iter()
                        .filter(|p| p.state == state && !relayed(p))
                        .count() as u64
                };
                let rs = self.core.relay_status(Instant::now());
                page.add_list([
                    (
                        "paths_direct",
                        "data peers reached directly (state up)",
                        "gauge",
                        count("up"),
                    ),
                    (
                        "paths_relayed",
                        "data peers reached through the relay",
                        "gauge",
                        paths
                            .iter()
                            .filter(|p| p.state == "up" && relayed(p))
                            .count() as u64,
                    ),
                    (
                        "relay_up",
                        "1 while the relay allocation is up",
                        "gauge",
                        u64::from(rs.state == "up"),
                    ),
                    (
                        "relay_only",
                        "1 while everything goes through the relay",
                        "gauge",
                        u64::from(rs.only),
                    ),
                    (
                        "paths_connecting",
                        "data peers waiting for their first handshake",
                        "gauge",
                        count("connecting"),
                    ),
                    (
                        "paths_no_direct",
                        "data peers no candidate endpoint reached",
                        "gauge",
                        count("no direct path"),
                    ),
                    (
                        "behind_nat",
                        "1 when the map-server sees this node through a NAT",
                        "gauge",
                        u64::from(self.core.seen_at().is_some_and(|(_, nat)| nat)),
                    ),
                ]);
                if let Some(r) = &self.relay {
                    let c = r.counters();
                    let get = |a: &std::sync::atomic::AtomicU64| {
                        a.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    page.add_list([
                        ("relay_sent_bytes_total", "WireGuard bytes sent through the relay", "counter", get(&c.out_bytes)),
                        ("relay_sent_datagrams_total", "WireGuard datagrams sent through the relay", "counter", get(&c.out_datagrams)),
                        ("relay_received_bytes_total", "WireGuard bytes the relay delivered", "counter", get(&c.in_bytes)),
                        ("relay_received_datagrams_total", "WireGuard datagrams the relay delivered", "counter", get(&c.in_datagrams)),
                        ("relay_dropped_datagrams_total", "datagrams the relay path dropped (no allocation, no permission, full queue)", "counter", get(&c.dropped)),
                        ("relay_probe_copies_total", "copies sent straight while probing a direct path", "counter", get(&c.mirrored)),
                        ("relay_proxies", "relay proxy sockets open", "gauge", r.proxies() as u64),
                    ]);
                }
                if let Some(d) = &self.dns {
                    let c = &d.counters;
                    let get = |a: &std::sync::atomic::AtomicU64| {
                        a.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    page.add_list([
                        (
                            "dns_queries_total",
                            "DNS datagrams received on the listener",
                            "counter",
                            get(&c.received),
                        ),
                        (
                            "dns_answers_total",
                            "DNS answers given for names in the domain (any code)",
                            "counter",
                            get(&c.answered),
                        ),
                        (
                            "dns_forwarded_total",
                            "DNS questions outside the domain answered by an upstream",
                            "counter",
                            get(&c.forwarded),
                        ),
                        (
                            "dns_forward_failures_total",
                            "DNS questions outside the domain no upstream answered (SERVFAIL)",
                            "counter",
                            get(&c.forward_failures),
                        ),
                        (
                            "dns_refused_total",
                            "DNS datagrams from outside this node, dropped",
                            "counter",
                            get(&c.refused),
                        ),
                        (
                            "dns_malformed_total",
                            "DNS datagrams that are no single IN question",
                            "counter",
                            get(&c.malformed),
                        ),
                        (
                            "dns_send_failures_total",
                            "DNS answers that could not be sent",
                            "counter",
                            get(&c.send_failures),
                        ),
                        (
                            "dns_forwards_in_flight",
                            "DNS questions waiting for an upstream",
                            "gauge",
                            d.forwards_in_flight() as u64,
                        ),
                        (
                            "names_cached",
                            "node names in the name cache",
                            "gauge",
                            self.core.names_cached() as u64,
                        ),
                    ]);
                }
                req.respond_metrics(page)
            }
            Page::Status(_) => req.respond_status(&self.snapshot().await),
            Page::Health => req.respond_health(None),
        }
    }

    /// What `xtr status` shows.
    async fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let wall = SystemTime::now();
        let paths = self.core.paths(now);
        let peers = self.wg.read().await.ok().map(|info| {
            info.peers
                .iter()
                .map(|p| PeerRow {
                    public_key: p.public_key.to_string(),
                    role: self
                        .cfg
                        .map_servers
                        .iter()
                        .find(|m| m.public_key == p.public_key)
                        .map(|m| format!("map-server {}", m.name)),
                    endpoint: p.endpoint,
                    allowed_ips: p.allowed_ips.iter().map(|a| a.to_string()).collect(),
                    since_handshake: p.last_handshake.and_then(|t| wall.duration_since(t).ok()),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                    path: paths
                        .iter()
                        .find(|x| x.key == *p.public_key.as_bytes())
                        .cloned(),
                })
                .collect()
        });
        Snapshot {
            interface: self.cfg.wireguard.interface.clone(),
            mode: match self.cfg.mode {
                Mode::MobileNode => "mobile-node",
                Mode::Xtr => "xtr",
            },
            public_key: self.cfg.wireguard.private_key.public_key().to_string(),
            listen_port: self.cfg.wireguard.listen_port,
            eids: self.cfg.eids.iter().map(|e| e.to_string()).collect(),
            rlocs: self.core.current_rlocs(),
            seen_at: self.core.seen_at(),
            uptime: self.started.elapsed().unwrap_or_default(),
            map_servers: self.core.map_servers(),
            relay: self.cfg.relay.enabled.then(|| self.core.relay_status(now)),
            cache: self.core.cache_entries(now),
            dns: self.dns.as_ref().map(|d| DnsStatus {
                listen: d.listen,
                domain: self.cfg.dns.domain.clone(),
                upstream: d.upstream.to_vec(),
                resolved: self.resolved.is_some(),
                names_cached: self.core.names_cached(),
                lookups_pending: self.core.names_pending(),
            }),
            peers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_add_histogram_is_cumulative_with_sum_and_count() {
        let mut h = CacheAddHistogram::default();
        let empty = h.0.page().render();
        assert!(
            empty.contains("lispwg_xtr_cache_add_seconds_count 0\n"),
            "{empty}"
        );
        h.record(Duration::from_micros(800));
        h.record(Duration::from_millis(4));
        let page = h.0.page().render();
        for want in [
            "# TYPE lispwg_xtr_cache_add_seconds histogram\n",
            "lispwg_xtr_cache_add_seconds_bucket{le=\"0.0005\"} 0\n",
            "lispwg_xtr_cache_add_seconds_bucket{le=\"0.001\"} 1\n",
            "lispwg_xtr_cache_add_seconds_bucket{le=\"0.005\"} 2\n",
            "lispwg_xtr_cache_add_seconds_bucket{le=\"+Inf\"} 2\n",
            "lispwg_xtr_cache_add_seconds_count 2\n",
        ] {
            assert!(page.contains(want), "missing {want:?} in\n{page}");
        }
        let sum: f64 = page
            .lines()
            .find_map(|l| l.strip_prefix("lispwg_xtr_cache_add_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 0.0048).abs() < 1e-9, "{sum}");
    }
}
