//! An address with a prefix length: WireGuard allowed-ips, interface addresses
//! and route destinations all use it.

use std::{fmt, net::IpAddr, str::FromStr};

use crate::error::{Error, Result};

/// `addr/len`, e.g. `10.1.0.0/16`. For addresses on an interface the host bits
/// matter (`10.1.0.1/24`), so they are kept as given.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// Fails when `len` is longer than the address family allows.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(Error::InvalidPrefix(format!("{addr}/{len}")));
        }
        Ok(IpPrefix { addr, len })
    }

    /// A single address (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        IpPrefix { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for `/0`, the default route.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The prefix with host bits cleared, as the kernel stores route keys.
    pub fn network(&self) -> IpPrefix {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        IpPrefix {
            addr,
            len: self.len,
        }
    }

    /// Whether `ip` falls inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && IpPrefix {
                addr: ip,
                len: self.len,
            }
            .network()
                == self.network()
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for IpPrefix {
    type Err = Error;

    /// Accepts `addr/len`, or a bare address as a host prefix.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidPrefix(s.to_owned());
        match s.split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| bad())?;
                let len: u8 = len.parse().map_err(|_| bad())?;
                IpPrefix::new(addr, len)
            }
            None => s.parse().map(IpPrefix::host).map_err(|_| bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let p: IpPrefix = "10.1.2.3/16".parse().unwrap();
        assert_eq!(p.to_string(), "10.1.2.3/16");
        assert_eq!(p.network().to_string(), "10.1.0.0/16");
        assert!(p.contains("10.1.200.1".parse().unwrap()));
        assert!(!p.contains("10.2.0.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let v6: IpPrefix = "fd00::1/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00::/64");
        assert_eq!("192.0.2.1".parse::<IpPrefix>().unwrap().len(), 32);
        assert_eq!("0.0.0.0/0".parse::<IpPrefix>().unwrap().network().len(), 0);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "x/1", "10.0.0.0/", ""] {
            assert!(
                matches!(bad.parse::<IpPrefix>(), Err(Error::InvalidPrefix(_))),
                "{bad}"
            );
        }
    }
}
