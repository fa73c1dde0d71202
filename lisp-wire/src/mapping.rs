//! The meaning lispwg gives to records: EID prefixes within an instance, and
//! WireGuard locators (key + RLOC + data port).
//!
//! # How a WireGuard locator is encoded
//!
//! The locator of an RLOC-record is a **Security Key LCAF** (type 11, RFC 8061
//! placement) with one key of algorithm 6 (Curve25519 + ChaCha20-Poly1305)
//! holding the 32 raw public-key bytes. Its trailing address is a
//! **NAT-Traversal LCAF** (type 7), chosen to carry the data-plane UDP port
//! because it is the standard LCAF whose meaning *is* "this ETR is reached at
//! this global address and this UDP port", and because Wireshark dissects it:
//!
//! ```text
//! Security Key LCAF { key count 1, alg 6, key[32],
//!   NAT-Traversal LCAF { MS UDP port 4342, ETR UDP port = WireGuard port,
//!     global ETR RLOC = RLOC, MS RLOC = AFI 0, private ETR RLOC = RLOC } }
//! ```
//!
//! On input lispwg also accepts a key on the EID side (EID prefix wrapped in
//! a Security Key LCAF), a Security Key LCAF whose trailing address is a plain
//! RLOC (no port: the caller picks a default), and plain AFI RLOCs from
//! keyless LISP peers.
//!
//! IID 0 is sent as a plain AFI address; a non-zero IID uses the Instance-ID
//! LCAF. Both forms are accepted for every IID.

use crate::addr::{Address, NatTraversal, SecurityKey, KEY_ALG_WIREGUARD, WIREGUARD_KEY_LEN};
use crate::record::{Action, EidRecord, RlocRecord};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The LISP control port, used as the MS UDP port in NAT-Traversal LCAFs.
pub const LISP_CONTROL_PORT: u16 = 4342;
/// The WireGuard port assumed for a keyed locator that carries no port (a
/// Security Key LCAF around a plain RLOC, or an EID-side key).
pub const DEFAULT_WG_PORT: u16 = 51820;

/// An EID prefix within an instance (IID). The address is kept with its host
/// bits cleared so equal prefixes compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EidPrefix {
    pub iid: u32,
    addr: IpAddr,
    len: u8,
}

/// Why a record's EID is not a usable prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EidError {
    #[error("EID is not an IP address (optionally inside an Instance-ID LCAF)")]
    NotAnIpPrefix,
    #[error("prefix length {len} is too long for {addr}")]
    BadLength { addr: IpAddr, len: u8 },
}

impl EidPrefix {
    /// A prefix; host bits beyond `len` are cleared.
    pub fn new(iid: u32, addr: IpAddr, len: u8) -> Result<Self, EidError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(EidError::BadLength { addr, len });
        }
        Ok(EidPrefix {
            iid,
            addr: mask(addr, len),
            len,
        })
    }

    /// A host prefix (/32 or /128).
    pub fn host(iid: u32, addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        EidPrefix { iid, addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_host(&self) -> bool {
        self.len == if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// True when `other` (same IID and family) lies inside this prefix.
    pub fn contains(&self, other: &EidPrefix) -> bool {
        self.iid == other.iid
            && self.addr.is_ipv4() == other.addr.is_ipv4()
            && other.len >= self.len
            && mask(other.addr, self.len) == self.addr
    }

    /// True when the address (same IID) lies inside this prefix.
    pub fn contains_addr(&self, iid: u32, addr: IpAddr) -> bool {
        self.contains(&EidPrefix::host(iid, addr))
    }

    /// The wire form: plain AFI for IID 0, Instance-ID LCAF otherwise.
    pub fn to_address(&self) -> Address {
        let ip = Address::from(self.addr);
        if self.iid == 0 {
            ip
        } else {
            Address::InstanceId {
                iid: self.iid,
                iid_mask_len: 0,
                address: Box::new(ip),
            }
        }
    }

    /// Reads a prefix from an EID field and its mask length, looking through
    /// Instance-ID and (EID-side) Security Key LCAFs.
    pub fn from_wire(eid: &Address, mask_len: u8) -> Result<Self, EidError> {
        let mut iid = 0;
        let mut cur = eid;
        for _ in 0..crate::addr::MAX_LCAF_DEPTH + 1 {
            match cur {
                Address::InstanceId {
                    iid: i, address, ..
                } => {
                    iid = *i;
                    cur = address;
                }
                Address::SecurityKey(sk) => cur = &sk.address,
                Address::Ipv4(_) | Address::Ipv6(_) => {
                    let ip = cur.ip().ok_or(EidError::NotAnIpPrefix)?;
                    return EidPrefix::new(iid, ip, mask_len);
                }
                _ => return Err(EidError::NotAnIpPrefix),
            }
        }
        Err(EidError::NotAnIpPrefix)
    }

    /// The prefix of a record.
    pub fn of_record(rec: &EidRecord) -> Result<Self, EidError> {
        Self::from_wire(&rec.eid, rec.eid_mask_len)
    }
}

impl fmt::Display for EidPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]{}/{}", self.iid, self.addr, self.len)
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// What a locator says about how to reach a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocatorInfo {
    /// The RLOC (the global ETR RLOC when a NAT-Traversal LCAF is present).
    pub rloc: IpAddr,
    /// The data-plane UDP port, when the locator carries one.
    pub port: Option<u16>,
    /// The WireGuard public key, when the locator carries one.
    pub wg_key: Option<[u8; WIREGUARD_KEY_LEN]>,
}

impl LocatorInfo {
    /// Reads a locator, looking through Security Key, NAT-Traversal and
    /// Instance-ID LCAFs. `None` when it holds no IP address.
    pub fn from_address(addr: &Address) -> Option<Self> {
        let mut info = LocatorInfo {
            rloc: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: None,
            wg_key: None,
        };
        let mut cur = addr;
        for _ in 0..crate::addr::MAX_LCAF_DEPTH + 1 {
            match cur {
                Address::SecurityKey(sk) => {
                    if sk.algorithm == KEY_ALG_WIREGUARD && !sk.revoke {
                        if let Some(k) = sk.keys.first() {
                            info.wg_key = <[u8; WIREGUARD_KEY_LEN]>::try_from(k.as_slice()).ok();
                        }
                    }
                    cur = &sk.address;
                }
                Address::NatTraversal(n) => {
                    info.port = Some(n.etr_port);
                    cur = &n.global_etr_rloc;
                }
                Address::InstanceId { address, .. } => cur = address,
                Address::Ipv4(_) | Address::Ipv6(_) => {
                    info.rloc = cur.ip()?;
                    return Some(info);
                }
                // An AFI-List locator is not understood here.
                Address::None | Address::AfiList(_) => return None,
            }
        }
        None
    }
}

/// Builds the locator lispwg sends for a WireGuard node (see module docs).
pub fn wireguard_locator(endpoint: SocketAddr, key: [u8; WIREGUARD_KEY_LEN]) -> Address {
    let rloc = Address::from(endpoint.ip());
    Address::SecurityKey(SecurityKey {
        algorithm: KEY_ALG_WIREGUARD,
        revoke: false,
        keys: vec![key.to_vec()],
        address: Box::new(Address::NatTraversal(NatTraversal {
            ms_port: LISP_CONTROL_PORT,
            etr_port: endpoint.port(),
            global_etr_rloc: Box::new(rloc.clone()),
            ms_rloc: Box::new(Address::None),
            private_etr_rloc: Box::new(rloc),
            rtr_rlocs: Vec::new(),
        })),
    })
}

impl RlocRecord {
    /// A reachable RLOC-record with the given locator.
    pub fn new(priority: u8, weight: u8, locator: Address) -> Self {
        RlocRecord {
            priority,
            weight,
            m_priority: 255,
            m_weight: 0,
            local: false,
            probed: false,
            reachable: true,
            locator,
        }
    }

    /// What the locator says (RLOC, port, key).
    pub fn info(&self) -> Option<LocatorInfo> {
        LocatorInfo::from_address(&self.locator)
    }
}

impl EidRecord {
    /// A positive mapping for `prefix`.
    pub fn new(prefix: EidPrefix, ttl_minutes: u32, rlocs: Vec<RlocRecord>) -> Self {
        EidRecord {
            ttl: ttl_minutes,
            eid_mask_len: prefix.prefix_len(),
            action: Action::NoAction,
            authoritative: false,
            map_version: 0,
            eid: prefix.to_address(),
            rlocs,
        }
    }

    /// A negative mapping: no locators, the given action.
    pub fn negative(prefix: EidPrefix, ttl_minutes: u32, action: Action) -> Self {
        EidRecord {
            action,
            ..EidRecord::new(prefix, ttl_minutes, Vec::new())
        }
    }

    /// The best usable locator: lowest priority below 255, ties broken by the
    /// highest weight. `None` for a negative record.
    pub fn best_locator(&self) -> Option<(&RlocRecord, LocatorInfo)> {
        self.rlocs
            .iter()
            .filter(|r| r.priority != 255 && r.reachable)
            .filter_map(|r| r.info().map(|i| (r, i)))
            .min_by_key(|(r, _)| (r.priority, std::cmp::Reverse(r.weight)))
    }

    /// The WireGuard key of the mapping: from the best locator, else from any
    /// locator, else from an EID-side Security Key LCAF.
    pub fn wg_key(&self) -> Option<[u8; WIREGUARD_KEY_LEN]> {
        self.best_locator()
            .and_then(|(_, i)| i.wg_key)
            .or_else(|| self.rlocs.iter().find_map(|r| r.info()?.wg_key))
            .or_else(|| eid_side_key(&self.eid))
    }
}

fn eid_side_key(eid: &Address) -> Option<[u8; WIREGUARD_KEY_LEN]> {
    match eid {
        Address::SecurityKey(sk) if sk.algorithm == KEY_ALG_WIREGUARD && !sk.revoke => sk
            .keys
            .first()
            .and_then(|k| <[u8; WIREGUARD_KEY_LEN]>::try_from(k.as_slice()).ok()),
        Address::InstanceId { address, .. } => eid_side_key(address),
        _ => None,
    }
}
