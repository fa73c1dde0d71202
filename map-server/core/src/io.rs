//! What goes in and out of the core: the leaf types every module shares.
//!
//! The shell carries these out and reports the outcome back; it decides
//! nothing. Datagrams ([`Transmit`]) are fire-and-forget, as UDP is. Store
//! commits ([`Commit`]) and control-interface actions ([`Action`]) are
//! reported back with [`crate::MapServer::handle_commit_result`] and
//! [`crate::MapServer::handle_action_result`].

use crate::registry::Mapping;
use lisp_wire::EidPrefix;
use std::net::SocketAddr;

/// Which socket a datagram came in on, or goes out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// The control address inside the WireGuard control tunnel.
    Tunnel,
    /// The optional plain listener (benchmarks, keyless LISP peers).
    Plain,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Tunnel => "tunnel",
            Via::Plain => "plain",
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub via: Via,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// A change to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    Put {
        prefix: EidPrefix,
        mapping: Mapping,
        peer: String,
    },
    Delete(EidPrefix),
    /// Where a control peer was last seen (its observed endpoint), so that a
    /// restarted map-server can wake it there, through its NAT.
    Endpoint {
        peer: String,
        endpoint: SocketAddr,
    },
    /// The highest Map-Register nonce accepted from a WireGuard peer: a
    /// restarted map-server still refuses older ones (replays).
    RegisterNonce {
        peer: String,
        nonce: u64,
    },
}

/// What a store operation is about: the last operation per key is all a
/// commit needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoreKey {
    Prefix(EidPrefix),
    Peer(String),
    RegisterNonce(String),
}

impl StoreOp {
    pub fn key(&self) -> StoreKey {
        match self {
            StoreOp::Put { prefix, .. } | StoreOp::Delete(prefix) => StoreKey::Prefix(*prefix),
            StoreOp::Endpoint { peer, .. } => StoreKey::Peer(peer.clone()),
            StoreOp::RegisterNonce { peer, .. } => StoreKey::RegisterNonce(peer.clone()),
        }
    }
}

/// Identifies a [`Commit`] when its result is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(pub(crate) u64);

/// Store operations to persist in one durable transaction, all or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub id: CommitId,
    pub ops: Vec<StoreOp>,
}

/// Why a commit failed, as the shell saw it (e.g. "No space left on
/// device"): shown in status and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFault(pub String);

/// Identifies an [`Action`] when its result is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActionId(pub(crate) u64);

/// Something to do to the WireGuard control interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAction {
    /// Point this control peer at its last known endpoint and make WireGuard
    /// start a handshake at once (a one-off keepalive). After a restart the
    /// nodes' sessions died with the old process; without this, their
    /// WireGuard would re-handshake only after about 15 s and the
    /// Map-Notifies meant for them meanwhile would be lost.
    WakeControlPeer { peer: u16, endpoint: SocketAddr },
    /// Read the endpoint WireGuard currently sees each control peer at, and
    /// report it with [`crate::MapServer::handle_endpoints`] (not
    /// `handle_action_result`).
    ReadEndpoints,
}

impl std::fmt::Display for ControlAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlAction::WakeControlPeer { peer, endpoint } => {
                write!(f, "wake control peer {peer} at {endpoint}")
            }
            ControlAction::ReadEndpoints => f.write_str("read endpoints"),
        }
    }
}

/// The answer to [`ControlAction::ReadEndpoints`]: each control peer's
/// WireGuard key and the endpoint WireGuard sees it at, if any.
pub type Endpoints = Vec<([u8; 32], Option<SocketAddr>)>;

/// Why an action failed, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionFault(pub String);

/// Why a datagram was refused. Each maps to a counter and a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("not from a configured control peer on this socket")]
    UnknownPeer,
    #[error("authentication failed: {0}")]
    Auth(lisp_wire::AuthError),
    #[error("replayed nonce {0:#x}")]
    Replay(u64),
    #[error("{0}")]
    Unauthorised(String),
    #[error("unexpected message type {0}")]
    Unexpected(&'static str),
    /// On the plain listener, from a source that is neither a configured
    /// keyless peer nor on its allowed list.
    #[error("source not allowed on the plain listener")]
    NotAllowed,
    /// The control peer spent its budget of this kind of message.
    #[error("over its {0} budget")]
    RateLimited(&'static str),
    /// A cap on what one message or one peer may hold.
    #[error("{0}")]
    OverLimit(String),
}
