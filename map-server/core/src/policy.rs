//! What the map-server trusts, compiled from the configuration: which control
//! peers exist, what each may register, and the protocol timings.

use crate::registry::{Mapping, Origin};
pub use limits::Rate;
use lisp_wire::EidPrefix;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// An EID prefix a peer may register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedEid {
    pub prefix: EidPrefix,
    /// Whether prefixes inside `prefix` may be registered too.
    pub more_specifics: bool,
}

impl AllowedEid {
    pub fn permits(&self, p: &EidPrefix) -> bool {
        if self.more_specifics {
            self.prefix.contains(p)
        } else {
            self.prefix == *p
        }
    }
}

/// Sources the plain listener answers besides the configured keyless peers:
/// an address prefix (`192.0.2.0/24`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePrefix {
    addr: IpAddr,
    len: u8,
}

impl SourcePrefix {
    /// `None` when `len` is too long for the family of `addr`.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        // EidPrefix does the masking; its instance is irrelevant here.
        let p = EidPrefix::new(0, addr, len).ok()?;
        Some(SourcePrefix {
            addr: p.addr(),
            len,
        })
    }

    /// Whether `ip` lies inside this prefix (an IPv4-mapped IPv6 source
    /// counts as the IPv4 address it maps).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        EidPrefix::new(0, self.addr, self.len).is_ok_and(|p| p.contains_addr(0, ip))
    }
}

impl FromStr for SourcePrefix {
    type Err = String;

    /// `address` or `address/length`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .map_err(|_| format!("`{s}`: bad prefix length"))?,
        };
        SourcePrefix::new(addr, len).ok_or_else(|| format!("`{s}`: prefix length above {max}"))
    }
}

impl std::fmt::Display for SourcePrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One manually configured control peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    pub name: String,
    /// The address it speaks from: inside the control tunnel for WireGuard
    /// peers, on the plain listener for keyless LISP peers.
    pub control_address: IpAddr,
    /// Its WireGuard public key. `None` marks a keyless LISP peer, accepted
    /// only on the plain listener and only for keyless mappings.
    pub wg_key: Option<[u8; 32]>,
    /// The HMAC key of its Map-Registers and Map-Notify-Acks.
    pub site_key: Vec<u8>,
    pub allowed: Vec<AllowedEid>,
    /// The team it belongs to: it resolves its own team's EIDs and those
    /// the team's policy opens to it ([`TeamPolicy::may_resolve`]).
    pub team: String,
    /// When its enrolment ends: it is revoked then, as by `map-server revoke`.
    pub expires: Option<std::time::Instant>,
    /// Set by the core on a slot whose peer left the configuration (or
    /// expired): it is heard from no more and holds nothing. Slots are kept
    /// so that peer indices stay stable; a later new peer may reuse one.
    pub revoked: bool,
    /// The key this one replaced by a rotation (at another map-server that
    /// shares the peers directory): a reload that finds the key changed
    /// from this one follows the rotation instead of revoking.
    pub rotated_from: Option<[u8; 32]>,
}

/// The team every peer without one belongs to.
pub const DEFAULT_TEAM: &str = "default";

/// What a team may resolve besides its own EIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamPolicy {
    pub name: String,
    /// Teams whose EIDs this team may resolve too.
    pub may_resolve: Vec<String>,
}

impl PeerPolicy {
    pub fn permits(&self, p: &EidPrefix) -> bool {
        self.allowed.iter().any(|a| a.permits(p))
    }
}

/// Retransmission and hold timings for map-server-initiated Map-Notifies.
#[derive(Debug, Clone, Copy)]
pub struct NotifyTiming {
    /// First retransmission; doubles after each.
    pub first_retransmit: Duration,
    /// Retransmissions before giving up.
    pub max_retransmits: u32,
    /// How long a proxy Map-Reply waits for the destination to acknowledge
    /// the Map-Notify that tells it about the requester. Holding the reply
    /// until the destination has programmed its peer means the requester's
    /// first WireGuard handshake finds the peer in place; otherwise it would be
    /// dropped and WireGuard would only retry after 5 s.
    pub reply_hold: Duration,
}

impl Default for NotifyTiming {
    fn default() -> Self {
        NotifyTiming {
            first_retransmit: Duration::from_millis(100),
            max_retransmits: 6,
            reply_hold: Duration::from_millis(150),
        }
    }
}

/// What one control peer may ask of the map-server, so that a flooding or
/// broken peer is slowed and counted while everyone else is served as if it
/// were not there.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Map-Requests per control peer.
    pub requests: Rate,
    /// Map-Registers (and Map-Notify-Acks) per control peer.
    pub registers: Rate,
    /// EID-records one Map-Request may ask about; beyond, it is refused
    /// (a request for 255 records would otherwise cost 255 notifies and a
    /// 24 KB reply).
    pub max_records_per_request: usize,
    /// Live registrations one peer may hold (`more_specifics` lets a peer
    /// register any prefix inside its range).
    pub max_registrations_per_peer: usize,
    /// Log lines about refused messages per source address per
    /// [`Limits::log_interval`]; the rest are counted and summarised once.
    pub log_lines: u32,
    pub log_interval: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A robot sends a few requests a second at most; 500/s with a
            // burst of 1000 leaves room for an edge xTR serving a subnet.
            requests: Rate::new(500.0, 1000.0),
            // One register a minute per map-server is the rule.
            registers: Rate::new(10.0, 20.0),
            max_records_per_request: 32,
            max_registrations_per_peer: 1024,
            log_lines: 5,
            log_interval: Duration::from_secs(10),
        }
    }
}

/// Everything the protocol core needs to decide.
#[derive(Debug, Clone)]
pub struct Policy {
    pub peers: Vec<PeerPolicy>,
    /// How long a registration lives after its last refresh.
    pub registration_lifetime: Duration,
    /// TTL of negative Map-Replies, in minutes.
    pub negative_ttl_minutes: u32,
    /// Upper bound on the TTL handed out for registered mappings, in minutes.
    pub max_ttl_minutes: u32,
    pub notify: NotifyTiming,
    pub static_mappings: Vec<(EidPrefix, Mapping)>,
    /// Push a moved mapping to the resolvers that hold it. Off only to
    /// measure the WireGuard-roaming-only baseline.
    pub push_moves: bool,
    /// The map-server's own address inside the control tunnel: the source of
    /// the Solicit-Map-Requests it sends. `None` without a tunnel.
    pub control_address: Option<std::net::IpAddr>,
    /// How often the endpoints WireGuard sees the control peers at are read
    /// (besides right after each registration): how soon a NAT rebinding
    /// is noticed once the node's next packet arrives.
    pub endpoint_poll: Duration,
    /// Sources the plain listener answers Map-Requests from, besides the
    /// configured keyless peers (which it always answers). Anything else
    /// heard there is refused, counted and logged at debug level: the plain
    /// listener hands out every node's address, port and key.
    pub plain_allowed: Vec<SourcePrefix>,
    /// The teams with rules; a team not listed resolves its own EIDs only.
    pub teams: Vec<TeamPolicy>,
    pub limits: Limits,
    /// The map-server host's own addresses: a node registering one of them
    /// as its locator (other than as its relay's) would point its
    /// correspondents at the map-server.
    pub own_addresses: Vec<IpAddr>,
    /// The DNS domain of node names: a name lookup for `NAME.DOMAIN` is
    /// answered like one for `NAME` (see `lisp_wire::mapping`, "Names").
    pub domain: String,
}

/// The DNS domain of node names unless configured otherwise.
pub const DEFAULT_DOMAIN: &str = "lispwg.internal";

impl Default for Policy {
    fn default() -> Self {
        Policy {
            peers: Vec::new(),
            registration_lifetime: Duration::from_secs(180),
            negative_ttl_minutes: 1,
            max_ttl_minutes: 1440,
            notify: NotifyTiming::default(),
            static_mappings: Vec::new(),
            push_moves: true,
            endpoint_poll: Duration::from_secs(1),
            control_address: None,
            plain_allowed: Vec::new(),
            teams: Vec::new(),
            limits: Limits::default(),
            own_addresses: Vec::new(),
            domain: DEFAULT_DOMAIN.into(),
        }
    }
}

impl Policy {
    /// The control peer a looked-up name stands for: its `name`, bare or
    /// followed by `.DOMAIN` (a trailing dot allowed), compared without
    /// regard to ASCII case as DNS names are.
    pub fn peer_named(&self, name: &str) -> Option<u16> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let bare = name
            .len()
            .checked_sub(self.domain.len() + 1)
            .filter(|&at| {
                name.as_bytes()[at] == b'.' && name[at + 1..].eq_ignore_ascii_case(&self.domain)
            })
            .map_or(name, |at| &name[..at]);
        // A revoked slot keeps its old name: never a match.
        self.peers
            .iter()
            .position(|p| !p.revoked && p.name.eq_ignore_ascii_case(bare))
            .and_then(|i| u16::try_from(i).ok())
    }

    pub fn peer(&self, origin: Origin) -> Option<&PeerPolicy> {
        match origin {
            Origin::Peer(i) => self.peers.get(i as usize).filter(|p| !p.revoked),
            Origin::Static => None,
        }
    }

    /// The configured peers, without the slots of revoked ones.
    pub fn live_peers(&self) -> impl Iterator<Item = (u16, &PeerPolicy)> {
        self.peers
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.revoked)
            .map(|(i, p)| (i as u16, p))
    }

    /// Whether a member of team `from` may resolve an EID of team `to`.
    pub fn team_may_resolve(&self, from: &str, to: &str) -> bool {
        from == to
            || self
                .teams
                .iter()
                .find(|t| t.name == from)
                .is_some_and(|t| t.may_resolve.iter().any(|m| m == to))
    }
}
