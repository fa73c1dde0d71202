//! The meaning lispwg gives to records: EID prefixes within an instance, and
//! WireGuard locators (key + RLOC + data port, and what is in the way).
//!
//! This is lispwg's wire-format page: how a WireGuard node is described in an
//! RLOC-record, why, and what is accepted on input.
//!
//! # The WireGuard locator
//!
//! Each RLOC-record of a WireGuard mapping is one **candidate**: one address
//! and UDP port on which the node's WireGuard socket can be reached, with the
//! node's public key. Its locator field ([`WgLocator::to_address`]) is an
//! **AFI-List LCAF** (RFC 8060 type 1) of three items:
//!
//! 1. the RLOC as a plain AFI address;
//! 2. a **Security Key LCAF** (type 11, RFC 8061 placement): key count 1, key
//!    algorithm 6 (Curve25519 + ChaCha20-Poly1305, the WireGuard
//!    primitives), the 32 raw public-key bytes, and as its trailing address
//!    the RLOC again, plain;
//! 3. a **NAT-Traversal LCAF** (type 7): MS UDP port 4342, ETR UDP port =
//!    the WireGuard port, global ETR RLOC = the RLOC, MS RLOC = AFI 0,
//!    private ETR RLOC, then the RTR RLOCs.
//!
//! For an IPv4 RLOC and no RTRs (offsets within the locator, after the
//! RLOC-record's 6 fixed bytes; Rsvd1, Flags and Rsvd2 are always 0):
//!
//! ```text
//!  off len field                    value
//!    0   2 AFI                      16387 (LCAF)
//!    2   4 Rsvd1 Flags Type Rsvd2   00 00 01 00     AFI-List
//!    6   2 Length                   84              (bytes after this field)
//!    8   2 AFI                      1               item 1: the RLOC
//!   10   4 RLOC                     e.g. c0 00 02 0a  (192.0.2.10)
//!   14   2 AFI                      16387           item 2: Security Key LCAF
//!   16   4 Rsvd1 Flags Type Rsvd2   00 00 0b 00
//!   20   2 Length                   44
//!   22   4 Key Count, Rsvd3,        01 00 06 00     one key, algorithm 6,
//!          Algorithm, Rsvd4|R                         not revoked
//!   26   2 Key Length               32
//!   28  32 Key Material             the WireGuard public key
//!   60   2 AFI                      1               the RLOC again
//!   62   4 RLOC                     c0 00 02 0a
//!   66   2 AFI                      16387           item 3: NAT-Traversal LCAF
//!   68   4 Rsvd1 Flags Type Rsvd2   00 00 07 00
//!   72   2 Length                   18              + 6 or 18 per RTR RLOC
//!   74   2 MS UDP Port              4342
//!   76   2 ETR UDP Port             the WireGuard port, e.g. 51820
//!   78   6 AFI, Global ETR RLOC     0001 c000020a   the RLOC
//!   84   2 AFI, MS RLOC             0000            none
//!   86   6 AFI, Private ETR RLOC    0001 ....       the node's own address
//!   92   … AFI, RTR RLOC 1..n       0001 …/0002 …   relays, IPv4 or IPv6
//! ```
//!
//! With an IPv6 RLOC the lengths are 132 (AFI-List), 56 (Security Key) and
//! 42 (NAT-Traversal); in general every address takes its AFI's size and
//! the lengths follow (tests/vectors.rs has the bytes of each case).
//!
//! # Why an AFI-List
//!
//! Until this encoding lispwg sent the Security Key LCAF with a nested
//! NAT-Traversal LCAF as its trailing address. Two outside decoders were run
//! on both forms (a Map-Reply with two EID-records of two locators each):
//!
//! * **lispers.net** (`lisp.py`, `lisp_rloc_record.decode_lcaf`) reads a
//!   Security Key LCAF's trailing locator as a plain AFI address, ignoring
//!   the LCAF length. On the old form it took the nested LCAF's AFI (16387)
//!   as the RLOC, read the following RLOC-record from inside the
//!   NAT-Traversal LCAF (priority 0, weight 18, RLOC 192.0.2.10, no key) and
//!   then the second EID-record from the wrong place (an unknown AFI, 192
//!   locators, decode failure). lispers.net itself encodes an RLOC with
//!   several attributes as an AFI-List whose first item is the plain address
//!   and whose Security Key LCAF trails a plain address; it skips LCAF types
//!   it does not use (NAT-Traversal among them) by their length. On the new
//!   form it reads every record and locator right: EIDs, priorities,
//!   weights, RLOCs and the algorithm-6 key of every WireGuard locator, with
//!   no byte left over.
//! * **Wireshark 4.0** skips a Security Key LCAF body with a "not dissected
//!   yet" warning, so in the old form the port and the NAT-Traversal LCAF
//!   were invisible. In the AFI-List it dissects each item: the plain RLOC,
//!   the Security Key header (its body still with that one warning), and the
//!   NAT-Traversal LCAF with both ports and every address, RTRs included. No
//!   malformed packet and no error expert info (tests/tshark.rs checks every
//!   field). Two constructs it mis-dissects are never sent: an AFI-List item
//!   of AFI 0 ("Unexpected AFI (0)", an error) and an RTR RLOC of AFI 0 (its
//!   NAT-Traversal dissector stops 4 bytes early). RTR RLOCs are always IP
//!   addresses here.
//!
//! # Candidates
//!
//! The map-server hands out, for each node, a set of candidates in
//! **priority order** (lowest RLOC-record priority first; weight breaks
//! ties): the endpoint it observed through the node's NAT, the node's
//! registered private addresses with its listen port (only to peers behind
//! the same NAT), global IPv6 addresses, and a relayed address. Per
//! candidate:
//!
//! * **behind a NAT** when the private ETR RLOC differs from the global one:
//!   the global RLOC and port are the NAT's mapping, the private RLOC is the
//!   node's own address ([`LocatorInfo::private_rloc`],
//!   [`LocatorInfo::behind_nat`]). A candidate that is not behind a NAT
//!   carries the RLOC as its private ETR RLOC.
//! * **relayed** when the global ETR RLOC is one of its RTR RLOCs: the
//!   endpoint is a relay's ([`LocatorInfo::relayed`]).
//!
//! # What is read on input
//!
//! [`LocatorInfo::from_address`] (and [`WgLocator::from_address`]) read,
//! besides the form above, every form lispwg or a standard peer sent before,
//! for at least one release:
//!
//! * a Security Key LCAF around a NAT-Traversal LCAF (lispwg's previous
//!   form): RLOC, port and key;
//! * a Security Key LCAF around a plain RLOC: RLOC and key, no port (the
//!   caller uses its default, [`DEFAULT_WG_PORT`]);
//! * a key on the EID side (the EID prefix wrapped in a Security Key LCAF),
//!   read by [`EidRecord::wg_key`];
//! * a plain AFI RLOC from a keyless peer: the RLOC alone.
//!
//! Instance-ID LCAFs around an RLOC are looked through. A key counts only
//! with algorithm 6, 32 bytes and the R (revoke) bit clear. The parts of a
//! locator must agree: two different RLOCs (plain item, Security Key
//! trailing address, global ETR RLOC), ports or keys make it unusable
//! (`None`), never a guess.
//!
//! # EIDs and instances
//!
//! IID 0 is sent as a plain AFI address; a non-zero IID uses the Instance-ID
//! LCAF. Both forms are accepted for every IID.
//!
//! # Names
//!
//! Every node has a name (the `name` of its control peer on the
//! map-server). A name is looked up with an ordinary (ECM) Map-Request whose
//! one record is a **Distinguished Name EID** (RFC 8060, AFI 17: the
//! printable ASCII bytes, then a NUL; at most 255 bytes), plain or inside an
//! Instance-ID LCAF for a non-zero IID, with the EID mask length set to the
//! name's length in bits (255 from 32 bytes on), as Wireshark shows it
//! (`robot-b/56`). The agent sends the bare node name (`robot-b`); the
//! map-server also accepts it followed by its DNS domain
//! (`robot-b.lispwg.internal`), so a standard tool asking for the full name
//! is answered too.
//!
//! The **answer** is a Map-Reply with the request's nonce whose EID-records
//! are the named node's own registered mappings, one record per EID prefix,
//! exactly the records a Map-Request for each of those EIDs would get (the
//! WireGuard candidates above, TTL and map-version): so any decoder reads
//! them as the mappings they are, and the agent programs the peer from them
//! at once, before the first packet. No record names the DN: the nonce ties
//! the reply to the question. A name nobody has, or whose node has no live
//! registration, gets one **negative** record for the DN EID itself (no
//! locators, action Natively-Forward, the negative TTL). DN EIDs are never
//! registered and never appear in locators.
//!
//! # Encapsulated Map-Requests
//!
//! Stock `lig` sends its ECM with the inner IPv4 header checksum left at
//! zero. A zero inner checksum is accepted and reported
//! ([`EcmHeader::checksum_zero`](crate::EcmHeader::checksum_zero)), so that
//! the daemon can count such requests; a wrong non-zero checksum is refused
//! ([`ParseErrorKind::BadIpChecksum`](crate::ParseErrorKind::BadIpChecksum)).
//!
//! ## Map-Register nonces
//!
//! RFC 9301 leaves a Map-Register's nonce to the sender. A lispwg node's
//! count up, from the wall clock in microseconds (or past the block its last
//! run reserved, if the clock is behind it), and a lispwg map-server accepts
//! a register from a WireGuard peer only with a nonce above the last one it
//! accepted from that peer, which it persists with the mapping. So a
//! replayed register is refused however old it is, across restarts of
//! either side. Map-Notifies echo the register's nonce as the RFC says.
//! Keyless (standard LISP) peers keep random nonces; for them the map-server
//! checks a window of recent ones.

use crate::addr::{
    Address, AddressRef, Level, NatTraversal, SecurityKey, AFI_IPV4, AFI_IPV6, AFI_LCAF, AFI_NONE,
    KEY_ALG_WIREGUARD, LCAF_AFI_LIST, LCAF_NAT_TRAVERSAL, LCAF_SECURITY_KEY, WIREGUARD_KEY_LEN,
};
use crate::error::EncodeError;
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

impl AddressRef<'_> {
    /// Reads a prefix from a checked EID field and its mask length, looking
    /// through Instance-ID and (EID-side) Security Key LCAFs, like
    /// [`EidPrefix::from_wire`]; allocates nothing.
    pub fn eid_prefix(&self, mask_len: u8) -> Result<EidPrefix, EidError> {
        let (iid, ip) = self.eid_ip()?;
        EidPrefix::new(iid, ip, mask_len)
    }

    /// The host prefix (/32 or /128) of a checked EID field, e.g. a
    /// Map-Request's source EID.
    pub fn eid_host(&self) -> Result<EidPrefix, EidError> {
        let (iid, ip) = self.eid_ip()?;
        Ok(EidPrefix::host(iid, ip))
    }

    fn eid_ip(&self) -> Result<(u32, IpAddr), EidError> {
        let mut iid = 0;
        let mut cur = *self;
        for _ in 0..=crate::addr::MAX_LCAF_DEPTH {
            cur = match cur.level() {
                Some(Level::InstanceId { iid: i, address }) => {
                    iid = i;
                    address
                }
                Some(Level::SecurityKey { address }) => address,
                Some(Level::Ip(ip)) => return Ok((iid, ip)),
                _ => return Err(EidError::NotAnIpPrefix),
            };
        }
        Err(EidError::NotAnIpPrefix)
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
    /// The RLOC: the address the node's WireGuard socket is reached on (the
    /// global ETR RLOC when a NAT-Traversal LCAF is present).
    pub rloc: IpAddr,
    /// The data-plane UDP port, when the locator carries one.
    pub port: Option<u16>,
    /// The WireGuard public key, when the locator carries one.
    pub wg_key: Option<[u8; WIREGUARD_KEY_LEN]>,
    /// The node's private address behind `rloc`, when the locator says the
    /// node is behind a NAT (its private ETR RLOC differs from its global
    /// one). `None` when it is reached on `rloc` itself.
    pub private_rloc: Option<IpAddr>,
    /// `rloc` is one of the locator's RTR RLOCs: the candidate goes through
    /// a relay, not to the node directly.
    pub relayed: bool,
}

impl LocatorInfo {
    /// Reads a locator, looking through AFI-List, Security Key,
    /// NAT-Traversal and Instance-ID LCAFs (see the module docs for the
    /// forms). `None` when it holds no IP address, or when its parts
    /// contradict each other (two different RLOCs, ports or keys): such a
    /// locator cannot be used.
    pub fn from_address(addr: &Address) -> Option<Self> {
        let parts = Parts::collect(addr, &mut |_| {})?;
        let rloc = parts.rloc?;
        // Relayed: the RLOC, wherever in the locator it was given, is one of
        // the RTR RLOCs. A second walk, so that nothing is collected.
        let mut relayed = false;
        Parts::collect(addr, &mut |r| relayed |= r == rloc);
        Some(LocatorInfo {
            rloc,
            port: parts.port,
            wg_key: parts.key,
            private_rloc: parts.private.filter(|&p| p != rloc),
            relayed,
        })
    }

    /// The node is behind a NAT: the RLOC is the NAT's, not the node's own.
    pub fn behind_nat(&self) -> bool {
        self.private_rloc.is_some()
    }
}

/// What the parts of a locator say, gathered while walking it.
#[derive(Default)]
struct Parts {
    rloc: Option<IpAddr>,
    port: Option<u16>,
    key: Option<[u8; WIREGUARD_KEY_LEN]>,
    private: Option<IpAddr>,
}

/// Sets `slot` to `v`; false if it already holds something else.
fn agree<T: PartialEq>(slot: &mut Option<T>, v: T) -> bool {
    match slot {
        Some(old) => *old == v,
        None => {
            *slot = Some(v);
            true
        }
    }
}

impl Parts {
    /// Walks `addr`; `rtr` sees every RTR RLOC. `None` on a contradiction.
    fn collect(addr: &Address, rtr: &mut dyn FnMut(IpAddr)) -> Option<Parts> {
        let mut parts = Parts::default();
        parts.walk(addr, 0, rtr).then_some(parts)
    }

    fn walk(&mut self, addr: &Address, depth: usize, rtr: &mut dyn FnMut(IpAddr)) -> bool {
        if depth > crate::addr::MAX_LCAF_DEPTH {
            return false;
        }
        match addr {
            // A name beside an RLOC (lispers.net attaches one) says nothing
            // about how to reach the node.
            Address::None | Address::DistinguishedName(_) => true,
            Address::Ipv4(_) | Address::Ipv6(_) => addr.ip().is_some_and(|ip| self.set_rloc(ip)),
            Address::InstanceId { address, .. } => self.walk(address, depth + 1, rtr),
            Address::SecurityKey(sk) => {
                let key = (sk.algorithm == KEY_ALG_WIREGUARD && !sk.revoke)
                    .then(|| sk.keys.first())
                    .flatten()
                    .and_then(|k| <[u8; WIREGUARD_KEY_LEN]>::try_from(k.as_slice()).ok());
                key.is_none_or(|k| agree(&mut self.key, k))
                    && self.walk(&sk.address, depth + 1, rtr)
            }
            Address::NatTraversal(n) => {
                n.rtr_rlocs
                    .iter()
                    .filter_map(Address::innermost_ip)
                    .for_each(&mut *rtr);
                agree(&mut self.port, n.etr_port)
                    && n.private_etr_rloc
                        .innermost_ip()
                        .is_none_or(|p| agree(&mut self.private, p))
                    && self.walk(&n.global_etr_rloc, depth + 1, rtr)
            }
            Address::AfiList(items) => items.iter().all(|a| self.walk(a, depth + 1, rtr)),
        }
    }

    fn set_rloc(&mut self, ip: IpAddr) -> bool {
        agree(&mut self.rloc, ip)
    }
}

/// One WireGuard candidate: where a node's WireGuard socket is reached, with
/// its key, and what is in the way (a NAT, a relay). This is what lispwg puts
/// in the locator of each RLOC-record; see the module docs for the bytes and
/// their meaning.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WgLocator {
    /// Address and UDP port the peer sends to (the global ETR RLOC and the
    /// ETR UDP port of the NAT-Traversal LCAF).
    pub endpoint: SocketAddr,
    /// The node's WireGuard public key.
    pub key: [u8; WIREGUARD_KEY_LEN],
    /// The node's own address when it is behind a NAT and `endpoint` is the
    /// NAT's (the private ETR RLOC). `None`, or the endpoint's own address,
    /// means "not behind a NAT"; both encode the same.
    pub private: Option<IpAddr>,
    /// Relay (RTR) addresses for the node. The candidate is *relayed* when
    /// `endpoint`'s address is one of them.
    pub rtrs: Vec<IpAddr>,
}

impl WgLocator {
    /// A direct candidate: the node is reached on `endpoint` itself.
    pub fn new(endpoint: SocketAddr, key: [u8; WIREGUARD_KEY_LEN]) -> Self {
        WgLocator {
            endpoint,
            key,
            private: None,
            rtrs: Vec::new(),
        }
    }

    /// The node's own address, behind the NAT whose mapping `endpoint` is.
    pub fn with_private(self, private: IpAddr) -> Self {
        WgLocator {
            private: Some(private),
            ..self
        }
    }

    /// The relays (RTRs) that serve the node.
    pub fn with_rtrs(self, rtrs: impl IntoIterator<Item = IpAddr>) -> Self {
        WgLocator {
            rtrs: rtrs.into_iter().collect(),
            ..self
        }
    }

    /// The candidate goes through a relay: `endpoint` is an RTR's address.
    pub fn is_relayed(&self) -> bool {
        self.rtrs.contains(&self.endpoint.ip())
    }

    /// The node is behind a NAT.
    pub fn is_behind_nat(&self) -> bool {
        self.private.is_some_and(|p| p != self.endpoint.ip())
    }

    /// The locator field of the RLOC-record: an AFI-List LCAF holding the
    /// plain RLOC, a Security Key LCAF (algorithm 6, the key, the RLOC
    /// again) and a NAT-Traversal LCAF (see the module docs).
    pub fn to_address(&self) -> Address {
        let rloc = Address::from(self.endpoint.ip());
        let private = Address::from(self.private.unwrap_or(self.endpoint.ip()));
        Address::AfiList(vec![
            rloc.clone(),
            Address::SecurityKey(SecurityKey {
                algorithm: KEY_ALG_WIREGUARD,
                revoke: false,
                keys: vec![self.key.to_vec()],
                address: Box::new(rloc.clone()),
            }),
            Address::NatTraversal(NatTraversal {
                ms_port: LISP_CONTROL_PORT,
                etr_port: self.endpoint.port(),
                global_etr_rloc: Box::new(rloc),
                ms_rloc: Box::new(Address::None),
                private_etr_rloc: Box::new(private),
                rtr_rlocs: self.rtrs.iter().map(|&r| Address::from(r)).collect(),
            }),
        ])
    }

    /// Appends this candidate's whole RLOC-record to `out`: byte for byte
    /// what encoding `RlocRecord::new(priority, weight, self.to_address())`
    /// writes, without building the address (no allocation): the
    /// map-server's reply path writes each record straight into the reply.
    /// More RTRs than fit the 16-bit LCAF lengths (thousands) is an error,
    /// and then nothing is written.
    pub fn encode_rloc_record_into(
        &self,
        priority: u8,
        weight: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        fn plain_len(ip: IpAddr) -> usize {
            if ip.is_ipv4() {
                6
            } else {
                18
            }
        }
        fn plain(out: &mut Vec<u8>, ip: IpAddr) {
            match ip {
                IpAddr::V4(a) => {
                    out.extend_from_slice(&AFI_IPV4.to_be_bytes());
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.extend_from_slice(&AFI_IPV6.to_be_bytes());
                    out.extend_from_slice(&a.octets());
                }
            }
        }
        fn lcaf(out: &mut Vec<u8>, kind: u8, body: usize) {
            out.extend_from_slice(&AFI_LCAF.to_be_bytes());
            out.extend_from_slice(&[0, 0, kind, 0]);
            out.extend_from_slice(&(body as u16).to_be_bytes());
        }
        let rloc = self.endpoint.ip();
        let private = self.private.unwrap_or(rloc);
        let rl = plain_len(rloc);
        let key_body = 4 + 2 + WIREGUARD_KEY_LEN + rl;
        let rtrs: usize = self.rtrs.iter().map(|&r| plain_len(r)).sum();
        let nat_body = 4 + rl + 2 + plain_len(private) + rtrs;
        let list_body = rl + 8 + key_body + 8 + nat_body;
        if list_body > u16::MAX as usize {
            return Err(EncodeError::LcafTooLong(list_body));
        }
        out.reserve(6 + 8 + list_body);
        // Priority, weight, M-priority 255, M-weight 0, flags: reachable.
        out.extend_from_slice(&[priority, weight, 255, 0, 0, 1]);
        lcaf(out, LCAF_AFI_LIST, list_body);
        plain(out, rloc);
        lcaf(out, LCAF_SECURITY_KEY, key_body);
        out.extend_from_slice(&[1, 0, KEY_ALG_WIREGUARD, 0]);
        out.extend_from_slice(&(WIREGUARD_KEY_LEN as u16).to_be_bytes());
        out.extend_from_slice(&self.key);
        plain(out, rloc);
        lcaf(out, LCAF_NAT_TRAVERSAL, nat_body);
        out.extend_from_slice(&LISP_CONTROL_PORT.to_be_bytes());
        out.extend_from_slice(&self.endpoint.port().to_be_bytes());
        plain(out, rloc);
        out.extend_from_slice(&AFI_NONE.to_be_bytes());
        plain(out, private);
        for &r in &self.rtrs {
            plain(out, r);
        }
        Ok(())
    }

    /// Reads a WireGuard locator in any form [`LocatorInfo::from_address`]
    /// reads; `default_port` stands in when it carries no port. `None` when
    /// it carries no WireGuard key, no RLOC, or contradicts itself.
    pub fn from_address(addr: &Address, default_port: u16) -> Option<Self> {
        let mut rtrs = Vec::new();
        let parts = Parts::collect(addr, &mut |r| rtrs.push(r))?;
        let rloc = parts.rloc?;
        Some(WgLocator {
            endpoint: SocketAddr::new(rloc, parts.port.unwrap_or(default_port)),
            key: parts.key?,
            private: parts.private.filter(|&p| p != rloc),
            rtrs,
        })
    }
}

/// The locator lispwg sends for a WireGuard node reached directly on
/// `endpoint`: `WgLocator::new(endpoint, key).to_address()`.
pub fn wireguard_locator(endpoint: SocketAddr, key: [u8; WIREGUARD_KEY_LEN]) -> Address {
    WgLocator::new(endpoint, key).to_address()
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

    /// Appends the part of a positive EID-record that comes before its
    /// RLOC-records: byte for byte what encoding
    /// `EidRecord { map_version, ..EidRecord::new(prefix, ttl_minutes, rlocs) }`
    /// writes before its `locators` RLOC-records, which the caller appends
    /// (e.g. with [`WgLocator::encode_rloc_record_into`]). No allocation. A
    /// map version beyond 12 bits is an error, as in [`EidRecord::encode_into`],
    /// and then nothing is written.
    pub fn encode_header_into(
        prefix: EidPrefix,
        ttl_minutes: u32,
        map_version: u16,
        locators: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if map_version > 0x0fff {
            return Err(EncodeError::MapVersion(map_version));
        }
        out.extend_from_slice(&ttl_minutes.to_be_bytes());
        // Action no-action, A clear.
        out.extend_from_slice(&[locators, prefix.prefix_len(), 0, 0]);
        out.extend_from_slice(&map_version.to_be_bytes());
        let (afi, len): (u16, usize) = match prefix.addr() {
            IpAddr::V4(_) => (AFI_IPV4, 4),
            IpAddr::V6(_) => (AFI_IPV6, 16),
        };
        if prefix.iid != 0 {
            out.extend_from_slice(&AFI_LCAF.to_be_bytes());
            out.extend_from_slice(&[0, 0, crate::addr::LCAF_INSTANCE_ID, 0]);
            out.extend_from_slice(&((4 + 2 + len) as u16).to_be_bytes());
            out.extend_from_slice(&prefix.iid.to_be_bytes());
        }
        out.extend_from_slice(&afi.to_be_bytes());
        match prefix.addr() {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
        Ok(())
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
