//! Counters of everything the map-server does or refuses, exported as
//! Prometheus metrics by the shell.

use crate::io::Refusal;

/// The prefix of every map-server metric name (`lispwg_map_server_` + each name listed by
/// [`Counters::metrics`]): renaming them all is this one line.
pub const METRICS_PREFIX: &str = "lispwg_map_server";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub registers_received: u64,
    /// Records accepted (stored or removed).
    pub registrations: u64,
    pub requests: u64,
    pub replies: u64,
    pub negative_replies: u64,
    /// Map-Request records asking for a node name (a Distinguished Name).
    pub name_lookups: u64,
    /// Of those, names no node has or whose node has no live registration.
    pub unknown_names: u64,
    pub notifies: u64,
    pub notify_retransmits: u64,
    pub notify_acks: u64,
    pub notify_giveups: u64,
    pub pushes: u64,
    pub expired: u64,
    pub auth_failures: u64,
    pub replays: u64,
    pub unauthorised: u64,
    pub unknown_peers: u64,
    pub malformed: u64,
    pub unexpected: u64,
    /// Gauge: mappings held.
    pub entries: u64,
    pub store_commits: u64,
    pub store_failures: u64,
    /// Map-Notifies not sent because the commit holding their registration
    /// failed.
    pub withheld_notifies: u64,
    /// Actions on the control interface that failed (each attempt).
    pub action_failures: u64,
    /// Times a control peer was first seen, or seen at a new endpoint.
    pub endpoint_changes: u64,
    /// Requests from a node about a node resolving it at the same moment.
    pub crossed_requests: u64,
    /// Solicit-Map-Requests sent to the correspondents of restarted nodes.
    pub smrs: u64,
    /// Datagrams on the plain listener from sources it does not answer.
    pub plain_refused: u64,
    /// Encapsulated Map-Requests whose inner IPv4 header checksum was zero
    /// (stock `lig` sends them so): accepted, and counted here.
    pub zero_checksum_requests: u64,
    /// Configurations taken by [`crate::MapServer::handle_config`].
    pub reloads: u64,
    /// Configurations refused whole by the core (nothing changed).
    pub reloads_refused: u64,
    pub peers_added: u64,
    pub peers_changed: u64,
    /// Peers revoked: removed from the configuration, or re-keyed.
    pub peers_revoked: u64,
    /// Peers whose enrolment expired.
    pub peers_expired: u64,
    /// Registrations withdrawn from correspondents by push.
    pub withdrawals: u64,
    /// Lookups refused by the team policy (answered negatively).
    pub team_refusals: u64,
    /// Key rotations started.
    pub rotations: u64,
    /// Messages dropped because their control peer spent its budget.
    pub rate_limited: u64,
    /// Messages refused for asking or holding more than a cap allows.
    pub over_limit: u64,
    /// Registered locators dropped as unusable (unspecified, loopback,
    /// multicast, link-local, the map-server's own address).
    pub bad_locators: u64,
    /// Log lines about refused messages held back by the log budget.
    pub suppressed_log_lines: u64,
    /// Map-Notify-Acks (authentic) for no notify pending: late duplicates
    /// after a retransmission, or replayed by the peer.
    pub unmatched_acks: u64,
    /// Per configured control peer, by its index in the policy (grown on
    /// first use, so bounded by the configuration).
    pub per_peer: Vec<PeerCounters>,
}

/// What one configured control peer asked for and had refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Map-Requests received from it.
    pub requests: u64,
    /// Messages from it refused (bad HMAC, replay, unauthorised, malformed...).
    pub refusals: u64,
}

impl Counters {
    /// The counters of the control peer at index `peer` of the policy.
    pub fn peer(&self, peer: u16) -> PeerCounters {
        self.per_peer
            .get(peer as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Counts a datagram from control peer `peer`: `requests` Map-Requests
    /// in it, refused or not.
    pub(crate) fn count_peer(&mut self, peer: u16, requests: u64, refused: bool) {
        let i = peer as usize;
        if self.per_peer.len() <= i {
            self.per_peer.resize(i + 1, PeerCounters::default());
        }
        let c = &mut self.per_peer[i];
        c.requests += requests;
        c.refusals += u64::from(refused);
    }

    pub(crate) fn count_refusal(&mut self, r: &Refusal) {
        let c = match r {
            Refusal::Malformed(_) => &mut self.malformed,
            Refusal::UnknownPeer => &mut self.unknown_peers,
            Refusal::Auth(_) => &mut self.auth_failures,
            Refusal::Replay(_) => &mut self.replays,
            Refusal::Unauthorised(_) => &mut self.unauthorised,
            Refusal::Unexpected(_) => &mut self.unexpected,
            Refusal::NotAllowed => &mut self.plain_refused,
            Refusal::RateLimited(_) => &mut self.rate_limited,
            Refusal::OverLimit(_) => &mut self.over_limit,
        };
        *c += 1;
    }

    /// (name without [`METRICS_PREFIX`], help, kind, value) for every metric.
    pub fn metrics(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        vec![
            (
                "map_registers_total",
                "Map-Register messages received",
                "counter",
                self.registers_received,
            ),
            (
                "registrations_total",
                "EID-records accepted from Map-Registers",
                "counter",
                self.registrations,
            ),
            (
                "map_requests_total",
                "Map-Requests received",
                "counter",
                self.requests,
            ),
            (
                "map_replies_total",
                "Map-Replies sent",
                "counter",
                self.replies,
            ),
            (
                "negative_replies_total",
                "negative Map-Reply records sent",
                "counter",
                self.negative_replies,
            ),
            (
                "name_lookups_total",
                "Map-Request records for a node name (Distinguished Name EID)",
                "counter",
                self.name_lookups,
            ),
            (
                "unknown_names_total",
                "name lookups answered negatively (no such node, or not registered)",
                "counter",
                self.unknown_names,
            ),
            (
                "map_notifies_total",
                "Map-Notifies sent (first transmissions)",
                "counter",
                self.notifies,
            ),
            (
                "notify_retransmits_total",
                "Map-Notify retransmissions",
                "counter",
                self.notify_retransmits,
            ),
            (
                "notify_acks_total",
                "Map-Notify-Acks matched",
                "counter",
                self.notify_acks,
            ),
            (
                "notify_giveups_total",
                "Map-Notifies never acknowledged",
                "counter",
                self.notify_giveups,
            ),
            (
                "pushes_total",
                "mapping changes pushed to correspondents",
                "counter",
                self.pushes,
            ),
            (
                "expired_total",
                "registrations expired",
                "counter",
                self.expired,
            ),
            (
                "auth_failures_total",
                "messages with a bad HMAC",
                "counter",
                self.auth_failures,
            ),
            (
                "replays_total",
                "Map-Registers with a replayed nonce",
                "counter",
                self.replays,
            ),
            (
                "unauthorised_total",
                "Map-Registers for EIDs or keys the peer may not register",
                "counter",
                self.unauthorised,
            ),
            (
                "unknown_peers_total",
                "messages from no configured control peer",
                "counter",
                self.unknown_peers,
            ),
            (
                "malformed_total",
                "malformed messages",
                "counter",
                self.malformed,
            ),
            (
                "unexpected_total",
                "well-formed messages of a type the map-server does not take",
                "counter",
                self.unexpected,
            ),
            ("entries", "mappings held", "gauge", self.entries),
            (
                "config_reloads_total",
                "configurations applied live (SIGHUP)",
                "counter",
                self.reloads,
            ),
            (
                "config_reloads_refused_by_core_total",
                "configurations the core refused whole",
                "counter",
                self.reloads_refused,
            ),
            (
                "peers_added_total",
                "control peers added by a live reload",
                "counter",
                self.peers_added,
            ),
            (
                "peers_changed_total",
                "control peers changed by a live reload",
                "counter",
                self.peers_changed,
            ),
            (
                "peers_revoked_total",
                "control peers revoked (removed from the configuration or re-keyed)",
                "counter",
                self.peers_revoked,
            ),
            (
                "peers_expired_total",
                "control peers whose enrolment expired",
                "counter",
                self.peers_expired,
            ),
            (
                "withdrawals_total",
                "withdrawn mappings pushed to correspondents",
                "counter",
                self.withdrawals,
            ),
            (
                "key_rotations_total",
                "key rotations started by nodes",
                "counter",
                self.rotations,
            ),
            (
                "team_refusals_total",
                "lookups refused by the team policy",
                "counter",
                self.team_refusals,
            ),
            (
                "store_commits_total",
                "durable store transactions committed",
                "counter",
                self.store_commits,
            ),
            (
                "store_failures_total",
                "store transactions that failed (retried)",
                "counter",
                self.store_failures,
            ),
            (
                "withheld_notifies_total",
                "Map-Notifies not sent because the store commit failed",
                "counter",
                self.withheld_notifies,
            ),
            (
                "endpoint_changes_total",
                "control peers first seen or seen at a new endpoint (NAT rebinding, move)",
                "counter",
                self.endpoint_changes,
            ),
            (
                "smrs_total",
                "Solicit-Map-Requests sent to correspondents of restarted nodes",
                "counter",
                self.smrs,
            ),
            (
                "crossed_requests_total",
                "pairs that resolved each other at the same moment",
                "counter",
                self.crossed_requests,
            ),
            (
                "action_failures_total",
                "control interface actions that failed",
                "counter",
                self.action_failures,
            ),
            (
                "plain_refused_total",
                "datagrams on the plain listener from sources it does not answer",
                "counter",
                self.plain_refused,
            ),
            (
                "zero_checksum_requests_total",
                "encapsulated Map-Requests with a zero inner IPv4 header checksum (lig)",
                "counter",
                self.zero_checksum_requests,
            ),
            (
                "rate_limited_total",
                "messages dropped because their control peer spent its budget",
                "counter",
                self.rate_limited,
            ),
            (
                "over_limit_total",
                "messages refused for asking or holding more than a cap allows",
                "counter",
                self.over_limit,
            ),
            (
                "bad_locators_total",
                "registered locators dropped as unusable (loopback, link-local, the map-server's own...)",
                "counter",
                self.bad_locators,
            ),
            (
                "suppressed_log_lines_total",
                "log lines about refused messages held back by the per-source log budget",
                "counter",
                self.suppressed_log_lines,
            ),
            (
                "unmatched_acks_total",
                "authentic Map-Notify-Acks for no pending notify (late duplicates, replays)",
                "counter",
                self.unmatched_acks,
            ),
        ]
    }
}
