//! One error type for everything wgctl does to the host, so callers can match
//! on what went wrong instead of parsing messages.

use std::io;

/// What a wgctl operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key was not 32 bytes of standard base64 (as `wg genkey` prints).
    #[error("invalid WireGuard key: {0}")]
    InvalidKey(&'static str),

    /// Interface names are at most 15 bytes, with no `/`, NUL or whitespace.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidInterfaceName { name: String, reason: &'static str },

    /// An address or prefix that does not fit its family (e.g. `10.0.0.0/33`).
    #[error("invalid IP prefix {0:?}")]
    InvalidPrefix(String),

    /// The named interface does not exist in this network namespace (or was
    /// destroyed through wgctl).
    #[error("unknown interface {0:?}")]
    UnknownInterface(String),

    /// The name is taken, here or (for wireguard-go, whose sockets live on the
    /// shared filesystem) in another network namespace.
    #[error("interface {0:?} already exists")]
    InterfaceExists(String),

    /// The userspace backend needs the wireguard-go binary.
    #[error("wireguard-go not found at {path:?}: install the `wireguard-go` package")]
    WireguardGoMissing { path: String },

    /// wireguard-go started but never opened its control socket, or exited.
    #[error("wireguard-go for {ifname} did not come up: {reason}")]
    WireguardGoStart { ifname: String, reason: String },

    /// The kernel refused to create a `wireguard` link.
    #[error(
        "the kernel cannot create a `wireguard` link (the wireguard module is missing): \
         load it, or use the userspace backend"
    )]
    KernelModuleMissing,

    /// A netlink request failed; `context` says which one.
    #[error("netlink {context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },

    /// wireguard-control (kernel netlink or wireguard-go UAPI) failed.
    #[error("WireGuard {backend} backend, {ifname}: {context}: {source}")]
    WireGuard {
        ifname: String,
        backend: crate::Backend,
        context: &'static str,
        #[source]
        source: io::Error,
    },

    /// A system call failed; `context` says which one.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// A held packet that cannot be re-injected (too short, not IPv4/IPv6).
    #[error("cannot re-inject packet: {0}")]
    InvalidPacket(&'static str),

    /// The [`crate::Host`] that owns this resource was shut down.
    #[error("the wgctl host has been shut down")]
    ShutDown,
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn netlink(context: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The errno carried by a netlink NACK, if that is what this error is.
    pub fn netlink_errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } => errno_of(source),
            _ => None,
        }
    }
}

/// The positive errno of a netlink NACK.
pub(crate) fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}
