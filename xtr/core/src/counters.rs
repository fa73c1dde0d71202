//! Counters of everything the agent does or refuses, exported as Prometheus
//! metrics by the shell.

use crate::io::Refusal;

/// The prefix of every agent metric name (`lispwg_xtr_` + each name listed by
/// [`Counters::metrics`]): renaming them all is this one line.
pub const METRICS_PREFIX: &str = "lispwg_xtr";

/// Counters exported as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub misses: u64,
    pub requests: u64,
    pub request_retransmits: u64,
    pub request_timeouts: u64,
    pub replies: u64,
    pub negative_replies: u64,
    pub held_packets: u64,
    pub dropped_packets: u64,
    pub reinjected_packets: u64,
    pub icmp_unreachable: u64,
    pub notifies: u64,
    pub acks: u64,
    pub registers: u64,
    pub peers_added: u64,
    pub peers_updated: u64,
    pub peers_removed: u64,
    pub auth_failures: u64,
    pub malformed: u64,
    pub unknown_senders: u64,
    pub unusable_mappings: u64,
    /// Data-plane operations that failed (each attempt; they are retried).
    pub dataplane_failures: u64,
    /// Map-Replies for no pending request (late, duplicate or forged).
    pub unknown_nonces: u64,
    /// Peer statistics reads that failed.
    pub stats_failures: u64,
    /// Data peers whose first handshake came.
    pub paths_established: u64,
    /// Handshake attempts given up on, retried with a fresh peer.
    pub path_failovers: u64,
    /// Peers no candidate reached.
    pub paths_failed: u64,
    /// NAT punches sent.
    pub punches: u64,
    /// Established paths that stopped working (we sent, heard nothing).
    pub stalls: u64,
    /// Solicit-Map-Requests heard: a correspondent restarted.
    pub smrs: u64,
    /// Control peers re-created for a silent map-server.
    pub control_renewals: u64,
    /// Relay grants received, and fetches that failed.
    pub relay_grants: u64,
    pub relay_grant_failures: u64,
    /// Relay allocations made, and lost (or failed to come).
    pub relay_allocations: u64,
    pub relay_losses: u64,
    /// Relay self-checks that got no answer in time.
    pub relay_checks_missed: u64,
    /// Paths that moved onto the relay, and off it to a direct path.
    pub relay_switches_to_relay: u64,
    pub relay_switches_to_direct: u64,
    /// Direct probes of relayed paths, and those that found no path.
    pub relay_probes: u64,
    pub relay_probe_failures: u64,
    /// Log lines about refused control messages held back by the
    /// per-source log budget.
    pub suppressed_log_lines: u64,
    /// Name questions asked of the core (DNS A/AAAA questions).
    pub name_queries: u64,
    /// Of those: answered with addresses, with "no such name", with
    /// "unavailable" (no map-server answered in time, or limits), and not
    /// in our domain (forwarded by the shell).
    pub name_answers: u64,
    pub names_unknown: u64,
    pub names_unavailable: u64,
    pub names_not_ours: u64,
    /// Answers served from the name cache.
    pub names_from_cache: u64,
    /// Stale answers given because no map-server answered (RFC 8767).
    pub names_stale: u64,
    /// Map-Requests sent for names, and lookups no map-server answered.
    pub name_requests: u64,
    pub name_timeouts: u64,
}

impl Counters {
    /// (name without [`METRICS_PREFIX`], help, kind, value) for every counter.
    pub fn metrics(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        vec![
            (
                "name_queries_total",
                "name questions (DNS A/AAAA) asked of the core",
                "counter",
                self.name_queries,
            ),
            (
                "name_answers_total",
                "name questions answered with the node's EIDs",
                "counter",
                self.name_answers,
            ),
            (
                "names_unknown_total",
                "name questions answered NXDOMAIN (no such node)",
                "counter",
                self.names_unknown,
            ),
            (
                "names_unavailable_total",
                "name questions answered SERVFAIL (no map-server answered in time)",
                "counter",
                self.names_unavailable,
            ),
            (
                "names_not_ours_total",
                "name questions outside the domain (forwarded upstream)",
                "counter",
                self.names_not_ours,
            ),
            (
                "names_from_cache_total",
                "name questions answered from the name cache",
                "counter",
                self.names_from_cache,
            ),
            (
                "names_stale_total",
                "name questions answered with a stale answer (no map-server answered)",
                "counter",
                self.names_stale,
            ),
            (
                "name_requests_total",
                "Map-Requests sent for names (to each map-server)",
                "counter",
                self.name_requests,
            ),
            (
                "name_timeouts_total",
                "name lookups no map-server answered",
                "counter",
                self.name_timeouts,
            ),
            (
                "misses_total",
                "packets that started a resolution",
                "counter",
                self.misses,
            ),
            (
                "map_requests_total",
                "Map-Requests sent (to each map-server)",
                "counter",
                self.requests,
            ),
            (
                "request_retransmits_total",
                "Map-Request retransmissions",
                "counter",
                self.request_retransmits,
            ),
            (
                "request_timeouts_total",
                "resolutions no map-server answered",
                "counter",
                self.request_timeouts,
            ),
            (
                "map_replies_total",
                "Map-Replies accepted",
                "counter",
                self.replies,
            ),
            (
                "negative_replies_total",
                "negative Map-Replies",
                "counter",
                self.negative_replies,
            ),
            (
                "held_packets_total",
                "packets held while resolving",
                "counter",
                self.held_packets,
            ),
            (
                "dropped_packets_total",
                "packets dropped (limits, garbage, own EID)",
                "counter",
                self.dropped_packets,
            ),
            (
                "reinjected_packets_total",
                "held packets re-injected",
                "counter",
                self.reinjected_packets,
            ),
            (
                "icmp_unreachable_total",
                "ICMP unreachable errors sent to local senders",
                "counter",
                self.icmp_unreachable,
            ),
            (
                "map_notifies_total",
                "Map-Notifies received",
                "counter",
                self.notifies,
            ),
            (
                "notify_acks_total",
                "Map-Notify-Acks sent",
                "counter",
                self.acks,
            ),
            (
                "map_registers_total",
                "Map-Registers sent",
                "counter",
                self.registers,
            ),
            (
                "peers_added_total",
                "data peers programmed",
                "counter",
                self.peers_added,
            ),
            (
                "peers_updated_total",
                "data peers updated in place (moves)",
                "counter",
                self.peers_updated,
            ),
            (
                "peers_removed_total",
                "data peers removed",
                "counter",
                self.peers_removed,
            ),
            (
                "auth_failures_total",
                "Map-Notifies with a bad HMAC",
                "counter",
                self.auth_failures,
            ),
            (
                "malformed_total",
                "malformed or unexpected control messages",
                "counter",
                self.malformed,
            ),
            (
                "unknown_senders_total",
                "control messages from no configured map-server",
                "counter",
                self.unknown_senders,
            ),
            (
                "unusable_mappings_total",
                "mappings without a usable WireGuard key or locator",
                "counter",
                self.unusable_mappings,
            ),
            (
                "dataplane_failures_total",
                "data-plane operations that failed (retried)",
                "counter",
                self.dataplane_failures,
            ),
            (
                "unknown_nonces_total",
                "Map-Replies for no pending request",
                "counter",
                self.unknown_nonces,
            ),
            (
                "paths_established_total",
                "data peers whose first handshake came",
                "counter",
                self.paths_established,
            ),
            (
                "path_failovers_total",
                "handshake attempts given up on and retried at the next candidate",
                "counter",
                self.path_failovers,
            ),
            (
                "paths_failed_total",
                "data peers no candidate endpoint reached",
                "counter",
                self.paths_failed,
            ),
            (
                "punches_total",
                "NAT punches sent toward a new peer's candidates",
                "counter",
                self.punches,
            ),
            (
                "path_stalls_total",
                "established paths that stopped working and were recovered",
                "counter",
                self.stalls,
            ),
            (
                "smrs_total",
                "Solicit-Map-Requests heard (a correspondent restarted)",
                "counter",
                self.smrs,
            ),
            (
                "control_renewals_total",
                "control peers re-created because a map-server answered nothing",
                "counter",
                self.control_renewals,
            ),
            (
                "relay_grants_total",
                "relay credentials received",
                "counter",
                self.relay_grants,
            ),
            (
                "relay_grant_failures_total",
                "relay credential fetches that failed",
                "counter",
                self.relay_grant_failures,
            ),
            (
                "relay_allocations_total",
                "relay allocations made",
                "counter",
                self.relay_allocations,
            ),
            (
                "relay_losses_total",
                "relay allocations lost, or ways to the relay that failed",
                "counter",
                self.relay_losses,
            ),
            (
                "relay_checks_missed_total",
                "relay self-checks that got no answer in time",
                "counter",
                self.relay_checks_missed,
            ),
            (
                "relay_switches_to_relay_total",
                "paths that moved onto the relay",
                "counter",
                self.relay_switches_to_relay,
            ),
            (
                "relay_switches_to_direct_total",
                "relayed paths that moved to a direct path",
                "counter",
                self.relay_switches_to_direct,
            ),
            (
                "relay_probes_total",
                "direct probes of relayed paths",
                "counter",
                self.relay_probes,
            ),
            (
                "relay_probe_failures_total",
                "direct probes that found no direct path",
                "counter",
                self.relay_probe_failures,
            ),
            (
                "stats_failures_total",
                "WireGuard statistics reads that failed",
                "counter",
                self.stats_failures,
            ),
            (
                "suppressed_log_lines_total",
                "log lines about refused control messages held back by the per-source log budget",
                "counter",
                self.suppressed_log_lines,
            ),
        ]
    }
}

impl Counters {
    pub(crate) fn count_refusal(&mut self, r: &Refusal) {
        let c = match r {
            Refusal::UnknownSender => &mut self.unknown_senders,
            Refusal::Malformed(_) | Refusal::Unexpected(_) | Refusal::Uncovered(_) => {
                &mut self.malformed
            }
            Refusal::Auth(_) => &mut self.auth_failures,
            Refusal::UnknownNonce(_) => &mut self.unknown_nonces,
        };
        *c += 1;
    }
}
