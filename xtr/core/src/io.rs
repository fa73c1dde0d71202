//! What goes in and out of the core: the leaf types every module shares.
//!
//! The shell carries out [`Output`]s in the order it takes them. Datagrams,
//! re-injections and deliveries are fire-and-forget; every
//! [`Output::Dataplane`] operation must be reported back with
//! [`crate::Xtr::handle_dataplane_result`], and every
//! [`Output::ReadPeerStats`] answered with [`crate::Xtr::handle_peer_stats`]
//! (or [`crate::Xtr::handle_peer_stats_failed`]). The core retries failed
//! operations and holds back what depends on them.

use lisp_wire::EidPrefix;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Something for the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A control message to a map-server (its control address, port 4342).
    Transmit { dst: SocketAddr, payload: Vec<u8> },
    /// Change the data plane, then report the outcome under `id`.
    Dataplane { id: OpId, op: DataplaneOp },
    /// Send a held packet again, so the kernel routes it through the new
    /// peer (whose peer and route are confirmed by now).
    Reinject(Vec<u8>),
    /// Hand a packet (an ICMP error) to the local stack through the TUN.
    Deliver(Vec<u8>),
    /// Send a one-byte UDP datagram from our WireGuard port to `to`, so our
    /// NAT lets the peer's first handshake in (WireGuard drops such junk
    /// silently if it does reach it).
    Punch { to: SocketAddr },
    /// Read the WireGuard peers' counters and handshakes, and report them
    /// with [`crate::Xtr::handle_peer_stats`].
    ReadPeerStats,
    /// Something for the relay (see [`crate::relaying`]); what comes of it is
    /// reported with [`crate::Xtr::handle_relay_event`].
    Relay(RelayOp),
    /// Ask map-server `map_server` (index in the policy) for relay
    /// credentials over the control tunnel, and report the answer with
    /// [`crate::Xtr::handle_relay_grant`].
    FetchRelayGrant { map_server: usize },
    /// The answer to a name question ([`crate::Xtr::handle_name_query`]).
    NameAnswer {
        query: crate::NameQuery,
        answer: crate::NameAnswer,
    },
    /// Save `until` (replacing what was saved): register nonces below it
    /// may be in use. The next run starts its nonces at or above it.
    ReserveRegisterNonces { until: u64 },
}

/// What the shell does with the relay: its allocation, the local proxy
/// sockets that stand for peers behind it, and the probes of direct paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOp {
    /// Allocate on `server` over `transport` (giving up any other
    /// allocation); report [`RelayEvent::Allocated`] or
    /// [`RelayEvent::Lost`] under `id`. Over TLS the server's key must hash
    /// to `tls_pin` (SHA-256 of its SubjectPublicKeyInfo).
    Allocate {
        id: u64,
        server: SocketAddr,
        transport: relay::Transport,
        username: String,
        password: String,
        tls_pin: Option<[u8; 32]>,
    },
    /// Give allocation `id` back.
    Release { id: u64 },
    /// Peers may reach our relayed address from these addresses (besides
    /// the relay's own): the whole set, for this and every later
    /// allocation.
    Permit { ips: Vec<IpAddr> },
    /// A local UDP socket that stands for `remote` behind the relay:
    /// what WireGuard sends to it goes through the allocation to `remote`,
    /// and what `remote` sends us comes out of it. Report the socket with
    /// [`RelayEvent::Proxy`]. Datagrams from a remote with no socket get
    /// one too, reported the same way.
    Proxy { remote: SocketAddr },
    /// Send a self-check with `nonce` through the allocation to its own
    /// relayed address; report [`RelayEvent::CheckAnswered`] when it comes
    /// back.
    Check { nonce: u64 },
    /// For `duration`, also send each datagram WireGuard hands the proxy
    /// socket of `remote`, first, straight from our WireGuard port to each
    /// of `to` (a probe of the direct path).
    Mirror {
        remote: SocketAddr,
        to: Vec<SocketAddr>,
        duration: Duration,
    },
}

/// What the shell reports about the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// Allocation `id` is up at `relayed`.
    Allocated { id: u64, relayed: SocketAddr },
    /// Allocation `id` failed or ended.
    Lost { id: u64, reason: String },
    /// The proxy socket `local` stands for `remote`.
    Proxy {
        remote: SocketAddr,
        local: SocketAddr,
    },
    /// A self-check came back.
    CheckAnswered { nonce: u64 },
}

/// Identifies a [`DataplaneOp`] when its outcome is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub(crate) u64);

/// A change to the host's WireGuard interface or routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataplaneOp {
    /// Add or update a data peer; `allowed` is its complete allowed-ips set.
    /// With no endpoint WireGuard cannot initiate (the responder of a new
    /// pair waits for the other side's handshake). `fresh`: remove the peer
    /// first, so WireGuard forgets its handshake state and may initiate at
    /// once (it otherwise waits 5 s after a failed attempt).
    UpsertPeer {
        key: [u8; 32],
        endpoint: Option<SocketAddr>,
        allowed: Vec<EidPrefix>,
        keepalive: Option<u16>,
        fresh: bool,
    },
    RemovePeer {
        key: [u8; 32],
    },
    /// Route a prefix to the WireGuard interface (more specific than the
    /// miss route).
    AddRoute(EidPrefix),
    DelRoute(EidPrefix),
    /// Our address changed: wireguard-go needs its port set again to send.
    ReapplyListenPort,
    /// Re-create the WireGuard peer of this map-server (index in the
    /// policy) at `endpoint`, dropping its session: after a map-server
    /// restart the old session is dead, and WireGuard alone would only
    /// notice after ~15 s.
    RenewControlPeer {
        map_server: usize,
        endpoint: SocketAddr,
    },
    /// Reach this map-server at `endpoint` from now on (our addresses of the
    /// endpoint's family came, or the other family's went).
    SetControlEndpoint {
        map_server: usize,
        endpoint: SocketAddr,
    },
}

impl DataplaneOp {
    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            DataplaneOp::UpsertPeer { .. } => "upsert-peer",
            DataplaneOp::RemovePeer { .. } => "remove-peer",
            DataplaneOp::AddRoute(_) => "add-route",
            DataplaneOp::DelRoute(_) => "delete-route",
            DataplaneOp::ReapplyListenPort => "reapply-listen-port",
            DataplaneOp::RenewControlPeer { .. } => "renew-control-peer",
            DataplaneOp::SetControlEndpoint { .. } => "set-control-endpoint",
        }
    }
}

/// Why a data-plane operation failed, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneFault(pub String);

/// Traffic counters of one data peer, as read from WireGuard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStats {
    pub key: [u8; 32],
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Time since the last handshake, if there was one.
    pub since_handshake: Option<Duration>,
    /// Where WireGuard sends to the peer now (it roams to the source of
    /// the peer's packets).
    pub endpoint: Option<SocketAddr>,
}

/// A change of the host's links and addresses, as netlink reports it. The
/// core decides which addresses are RLOCs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Address {
        ifname: String,
        addr: IpAddr,
        added: bool,
        /// An IPv6 address still being checked for duplicates: the kernel
        /// will not use it as a source yet.
        tentative: bool,
    },
    Link {
        ifname: String,
        up: bool,
    },
}

/// Why a control message was refused. Each maps to a counter and a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not from a configured map-server")]
    UnknownSender,
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("authentication failed: {0}")]
    Auth(lisp_wire::AuthError),
    #[error("unexpected message type {0}")]
    Unexpected(&'static str),
    #[error("Map-Reply for no pending request (nonce {0:#x})")]
    UnknownNonce(u64),
    #[error("Map-Reply does not cover the EID asked for ({0})")]
    Uncovered(IpAddr),
}

/// Why a mapping cannot be used for a WireGuard tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("EID is not an IP prefix")]
    NotAnIpPrefix,
    #[error("no WireGuard key")]
    NoKey,
    #[error("the mapping carries our own key")]
    OwnKey,
    #[error("no usable locator")]
    NoLocator,
}
