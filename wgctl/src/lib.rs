//! WireGuard and host-network control for the lispwg agents. The agents never
//! shell out to `wg` or `ip`: everything they do to the host goes through here.
//!
//! - [`Host`] owns what wgctl creates and removes it all on shutdown or drop.
//! - [`WgInterface`]: one WireGuard interface on the kernel backend or on a
//!   supervised wireguard-go ([`BackendKind`] picks; `auto` prefers the kernel).
//! - [`Netlink`]: links, addresses, routes, and [`NetEvent`]s (how a mobile
//!   node notices its RLOC change).
//! - [`MissTun`] and [`Reinjector`]: catch the first packet to an unknown EID
//!   and send it on once its peer exists.
//! - [`keys`]: the only key types wgctl exposes.
//!
//! All of it acts on the network namespace of the thread that created it (the
//! agents run under `ip netns exec`, so that is the process's namespace).

pub mod keys;

mod backend;
mod device;
mod error;
mod fields;
mod host;
mod ledger;
mod miss;
mod netlink;
mod netns;
mod nft;
mod prefix;
mod route;
mod userspace;

pub use backend::{Backend, BackendKind, KernelSupport};
pub use device::{DeviceInfo, PeerConfig, PeerInfo, WgInterface};
pub use error::{Error, Result};
pub use host::Host;
pub use miss::{packet_destination, MissTun, Reinjector};
pub use netlink::{NetEvent, NetEvents, Netlink};
pub use nft::SourceLimit;
pub use prefix::IpPrefix;
pub use route::RouteSpec;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Checks an interface name the way the kernel will, so a bad name is a
/// typed error before anything is created.
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidInterfaceName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return bad("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        validate_ifname("lwtun1").unwrap();
        validate_ifname("a23456789012345").unwrap();
        for bad in [
            "",
            "a234567890123456",
            "wg/0",
            "wg 0",
            "wg:0",
            ".",
            "..",
            "a\0b",
        ] {
            assert!(
                matches!(
                    validate_ifname(bad),
                    Err(Error::InvalidInterfaceName { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
