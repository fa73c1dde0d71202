//! What the xtr core needs to know, compiled from the configuration.

use lisp_wire::{EidPrefix, KeyId};
use std::net::IpAddr;
use std::time::Duration;

/// A manually keyed map-server, reached over the control tunnel.
#[derive(Debug, Clone)]
pub struct MapServerPeer {
    pub name: String,
    /// Its address inside the control tunnel; control messages are only
    /// accepted from here.
    pub control_address: IpAddr,
    /// HMAC key for our Map-Registers and its Map-Notifies.
    pub site_key: Vec<u8>,
    /// The HMAC algorithm of our Map-Registers (SHA-256 unless configured
    /// otherwise, for a map-server that only does SHA-1).
    pub key_id: KeyId,
    /// Its WireGuard endpoints (one per address family, say), in order of
    /// preference: we use the first of a family we have an RLOC of.
    pub endpoints: Vec<std::net::SocketAddr>,
}

/// An underlay interface whose addresses are our RLOCs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlocInterface {
    pub name: String,
    pub priority: u8,
    pub weight: u8,
}

/// One of our underlay addresses, as registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalRloc {
    pub addr: IpAddr,
    pub priority: u8,
    pub weight: u8,
}

/// Timings and limits of the xtr.
#[derive(Debug, Clone)]
pub struct XtrPolicy {
    /// Our address inside the control tunnel: the ITR-RLOC of our requests.
    pub control_address: IpAddr,
    pub wg_public_key: [u8; 32],
    /// Our WireGuard listen port: the data port of our mapping.
    pub wg_port: u16,
    /// Our EID prefixes (one IID for all of them).
    pub eids: Vec<EidPrefix>,
    pub map_servers: Vec<MapServerPeer>,
    /// Underlay interfaces, best first: their usable addresses are our
    /// RLOCs.
    pub rloc_interfaces: Vec<RlocInterface>,
    /// TTL we register with: how long resolvers cache us, and how long the
    /// map-server keeps pushing our moves to them.
    pub record_ttl_minutes: u32,
    /// Refresh period of registrations (jittered by ±10 %).
    pub register_interval: Duration,
    /// First retry of an unconfirmed registration; doubles up to
    /// `register_retry`. Short, because after a move the first register can
    /// be lost while the new default route is still being installed.
    pub register_retry_first: Duration,
    /// Longest retry period until a map-server confirms a registration.
    pub register_retry: Duration,
    /// First Map-Request retransmission; doubles after each.
    pub request_timeout: Duration,
    pub request_retries: u32,
    /// Packets held per pending EID, at most, and their total bytes.
    pub held_packets_per_eid: usize,
    pub held_bytes_per_eid: usize,
    /// Resolutions in flight, at most.
    pub max_pending: usize,
    /// Map-cache entries, at most.
    pub max_cache_entries: usize,
    /// A data peer with no traffic and no handshake for this long is removed.
    pub idle_timeout: Duration,
    /// First retry of a failed data-plane operation; doubles up to
    /// `dataplane_retry_max`.
    pub dataplane_retry_first: Duration,
    pub dataplane_retry_max: Duration,
    /// How long held packets and Map-Notify-Acks wait for a data plane that
    /// keeps failing.
    pub dataplane_patience: Duration,
    /// The campus relay (see [`crate::relaying`]).
    pub relay: crate::relaying::RelayPolicy,
    /// Node names (the DNS domain, waits and cache bounds).
    pub names: crate::names::NamePolicy,
}

impl XtrPolicy {
    /// Defaults for everything but identity.
    pub fn new(
        control_address: IpAddr,
        wg_public_key: [u8; 32],
        wg_port: u16,
        eids: Vec<EidPrefix>,
        map_servers: Vec<MapServerPeer>,
        rloc_interfaces: Vec<RlocInterface>,
    ) -> Self {
        XtrPolicy {
            control_address,
            wg_public_key,
            wg_port,
            eids,
            map_servers,
            rloc_interfaces,
            record_ttl_minutes: 10,
            register_interval: Duration::from_secs(60),
            register_retry_first: Duration::from_millis(20),
            register_retry: Duration::from_secs(1),
            request_timeout: Duration::from_millis(400),
            request_retries: 3,
            held_packets_per_eid: 32,
            held_bytes_per_eid: 64 * 1024,
            max_pending: 1024,
            max_cache_entries: 10_000,
            idle_timeout: Duration::from_secs(600),
            dataplane_retry_first: Duration::from_millis(10),
            dataplane_retry_max: Duration::from_secs(1),
            dataplane_patience: Duration::from_secs(3),
            relay: crate::relaying::RelayPolicy::default(),
            names: crate::names::NamePolicy::default(),
        }
    }

    /// How often peer statistics are read while there are data peers (every
    /// 200 ms while they carry traffic): a path that stopped working is
    /// noticed within about a second of traffic trying to use it. One read
    /// costs about 0.25 ms with 100 peers.
    pub fn stats_interval(&self) -> Duration {
        Duration::from_secs(1).min(self.idle_timeout / 10)
    }

    /// The instance our EIDs live in.
    pub fn iid(&self) -> u32 {
        self.eids.first().map_or(0, |e| e.iid)
    }
}
