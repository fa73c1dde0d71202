//! The map-server's answers to the telemetry endpoint: `/metrics` (the
//! core's counters, the shell's, and per-peer series), `/status` (text or
//! JSON, from one [`Snapshot`]) and `/healthz`.

use super::Shell;
use crate::status::{ShellFacts, Snapshot};
use conf::metrics::{Metrics, MetricsPage};
use conf::telemetry::{Page, PageRequest};
use map_server_core::counters::METRICS_PREFIX;
use map_server_core::Origin;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

impl Shell {
    /// Answers one page request from the shell's and the core's state.
    pub(super) fn answer_page(&self, req: PageRequest) {
        match req.page {
            Page::Metrics => {
                let metrics = Metrics::new(METRICS_PREFIX, &[]);
                let mut page = metrics.page();
                self.fill_metrics(&mut page, Instant::now());
                req.respond_metrics(page)
            }
            Page::Status(_) => req.respond_status(&self.snapshot()),
            Page::Health => req.respond_health(
                self.core
                    .store_fault()
                    .map(|f| format!("store fault: {}", f.error)),
            ),
        }
    }

    fn fill_metrics(&self, page: &mut MetricsPage<'_>, now: Instant) {
        page.add_list(self.core.counters().metrics());
        page.add_list([
            (
                "send_errors_total",
                "datagrams that could not be sent",
                "counter",
                self.stats.send_errors,
            ),
            (
                "recv_errors_total",
                "socket receive errors",
                "counter",
                self.stats.recv_errors,
            ),
            (
                "pending_notifies",
                "Map-Notifies awaiting their Ack",
                "gauge",
                self.core.pending_notifies() as u64,
            ),
            (
                "config_reloads_applied_total",
                "configurations taken live at SIGHUP",
                "counter",
                self.reloads.applied,
            ),
            (
                "config_reloads_failed_total",
                "configurations refused at SIGHUP (the running one stayed)",
                "counter",
                self.reloads.failed,
            ),
            (
                "join_unknown_total",
                "join datagrams for no known token (dropped without an answer)",
                "counter",
                self.join_stats.unknown,
            ),
            (
                "join_bad_secret_total",
                "join requests that did not decrypt (dropped without an answer)",
                "counter",
                self.join_stats.bad_secret,
            ),
            (
                "join_expired_total",
                "join requests refused: the bundle or key expired",
                "counter",
                self.join_stats.expired,
            ),
            (
                "join_reused_total",
                "join requests refused: the bundle was redeemed already, or the key used up",
                "counter",
                self.join_stats.reused,
            ),
            (
                "join_revoked_total",
                "join requests refused: the key was revoked",
                "counter",
                self.join_stats.revoked,
            ),
            (
                "join_redeemed_total",
                "robots enrolled",
                "counter",
                self.join_stats.redeemed,
            ),
            (
                "join_failed_total",
                "admitted join requests whose peer could not be taken",
                "counter",
                self.join_stats.failed,
            ),
            (
                "uptime_seconds",
                "seconds since start",
                "gauge",
                self.started.elapsed().as_secs(),
            ),
            (
                "relay_grants_total",
                "relay credentials handed to nodes",
                "counter",
                self.node_api
                    .grants
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "relay_grants_refused_total",
                "relay credential requests refused",
                "counter",
                self.node_api
                    .refused
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        ]);
        // Per configured peer: bounded by the configuration (and capped by
        // the page).
        // Revoked slots keep their index but are no series.
        let peers = &self.core.policy().peers;
        let mut newest: Vec<Option<Duration>> = vec![None; peers.len()];
        for (_, m) in self.core.registry().iter().filter(|(_, m)| m.is_live(now)) {
            let Origin::Peer(i) = m.origin else { continue };
            let Some(slot) = newest.get_mut(i as usize) else {
                continue;
            };
            if let Some(t) = self.core.last_refresh(m) {
                let age = now.saturating_duration_since(t);
                *slot = Some(slot.map_or(age, |a| a.min(age)));
            }
        }
        let counters = self.core.counters();
        let name = |i: usize| peers[i].name.clone();
        let live: Vec<usize> = (0..peers.len()).filter(|&i| !peers[i].revoked).collect();
        page.gauges_by(
            "peer_registered",
            "whether the control peer has a live registration (1) or not (0)",
            "peer",
            live.iter()
                .map(|&i| (name(i), f64::from(u8::from(newest[i].is_some())))),
        )
        .gauges_by(
            "peer_last_registration_age_seconds",
            "seconds since the control peer's newest live registration was refreshed",
            "peer",
            live.iter()
                .filter_map(|&i| newest[i].map(|a| (name(i), a.as_secs_f64()))),
        )
        .counters_by(
            "peer_map_requests_total",
            "Map-Requests received from the control peer",
            "peer",
            live.iter()
                .map(|&i| (name(i), counters.peer(i as u16).requests)),
        )
        .counters_by(
            "peer_refusals_total",
            "messages from the control peer that were refused",
            "peer",
            live.iter()
                .map(|&i| (name(i), counters.peer(i as u16).refusals)),
        );
    }

    fn snapshot(&self) -> Snapshot {
        let local = |s: &Option<UdpSocket>| s.as_ref().and_then(|s| s.local_addr().ok());
        let facts = ShellFacts {
            uptime: self.started.elapsed(),
            restored: self.restored,
            tunnel: self
                .interface
                .clone()
                .map(|ifname| (local(&self.tunnel), ifname)),
            plain: local(&self.plain),
            store_path: self.store.path().to_path_buf(),
        };
        let reloads = crate::status::ReloadStatus {
            applied: self.reloads.applied,
            failed: self.reloads.failed,
            last_error: self.reloads.last_error.clone(),
        };
        Snapshot::take(&self.core, facts, reloads, Instant::now())
    }
}
