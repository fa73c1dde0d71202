//! AFI-encoded addresses and the LCAF types lispwg speaks (RFC 8060).
//!
//! The LCAFs nest (an Instance-ID around an IPv4 address, an AFI-List holding
//! an RLOC, a Security Key and a NAT-Traversal LCAF), so [`Address`] is
//! recursive. Nesting is bounded by [`MAX_LCAF_DEPTH`] so that a hostile packet
//! cannot exhaust the stack.
//!
//! Rsvd1, Flags and (except where a type gives it a meaning) Rsvd2 are sent as
//! zero and ignored on input, as RFC 8060 says. An LCAF's length must match
//! its body exactly, and an unknown LCAF type is an error.

use crate::error::{EncodeError, ParseErrorKind};
use crate::parse::{array, be_u16, be_u32, be_u8, fail, take, Build, Owned, Res};
use bytes::BufMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const AFI_NONE: u16 = 0;
pub const AFI_IPV4: u16 = 1;
pub const AFI_IPV6: u16 = 2;
/// Distinguished Name (RFC 8060 section 3): an ASCII string ended by a NUL.
pub const AFI_DISTINGUISHED_NAME: u16 = 17;
pub const AFI_LCAF: u16 = 16387;

pub const LCAF_AFI_LIST: u8 = 1;
pub const LCAF_INSTANCE_ID: u8 = 2;
pub const LCAF_NAT_TRAVERSAL: u8 = 7;
pub const LCAF_SECURITY_KEY: u8 = 11;

/// Security Key LCAF algorithm 6: Curve25519 + ChaCha20-Poly1305, i.e. a
/// WireGuard public key.
pub const KEY_ALG_WIREGUARD: u8 = 6;
/// A WireGuard (X25519) public key is 32 bytes.
pub const WIREGUARD_KEY_LEN: usize = 32;

/// Longest Distinguished Name accepted or produced, in bytes (the NUL not
/// counted). RFC 8060 sets no limit; 255 bounds what a packet can make us
/// hold and covers any DNS name (at most 253 characters).
pub const MAX_DISTINGUISHED_NAME_LEN: usize = 255;

/// Deepest LCAF nesting accepted or produced. Two levels are all lispwg
/// needs (AFI-List → Security Key → IP); four leaves room for peers.
pub const MAX_LCAF_DEPTH: usize = 4;

/// One address as it appears on the wire after its AFI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// AFI 0: no address.
    None,
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// Instance-ID LCAF (type 2): which overlay network the address is in.
    InstanceId {
        iid: u32,
        /// The IID mask length (Rsvd2); 0 for a single instance.
        iid_mask_len: u8,
        address: Box<Address>,
    },
    /// Security Key LCAF (type 11, RFC 8061): keys bound to an address.
    SecurityKey(SecurityKey),
    /// NAT-Traversal LCAF (type 7): an RLOC with the UDP ports it is reached on.
    NatTraversal(NatTraversal),
    /// AFI-List LCAF (type 1): several addresses (plain or LCAF) that
    /// together describe one thing, e.g. an RLOC, its key and its port.
    AfiList(Vec<Address>),
    /// AFI 17 (RFC 8060): a name, printable ASCII, 1 to
    /// [`MAX_DISTINGUISHED_NAME_LEN`] bytes. lispwg's node names are EIDs of
    /// this kind (see [`crate::mapping`], "Names").
    DistinguishedName(String),
}

/// Why a string cannot be a Distinguished Name: empty, too long, or a byte
/// outside printable ASCII (a NUL would end it early).
pub(crate) fn check_distinguished_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > MAX_DISTINGUISHED_NAME_LEN {
        return Err("longer than 255 bytes");
    }
    if !name.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err("not printable ASCII");
    }
    Ok(())
}

/// Body of the Security Key LCAF.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecurityKey {
    pub algorithm: u8,
    pub revoke: bool,
    /// Key material, one entry per key (Key Count ≥ 1).
    pub keys: Vec<Vec<u8>>,
    /// The address the key belongs to (the RLOC in an RLOC-record).
    pub address: Box<Address>,
}

/// Body of the NAT-Traversal LCAF.
///
/// lispwg uses it to carry the WireGuard data port: `etr_port` is the port and
/// `global_etr_rloc` the address the node's WireGuard socket is reached on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NatTraversal {
    pub ms_port: u16,
    pub etr_port: u16,
    pub global_etr_rloc: Box<Address>,
    pub ms_rloc: Box<Address>,
    pub private_etr_rloc: Box<Address>,
    pub rtr_rlocs: Vec<Address>,
}

impl From<IpAddr> for Address {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Address::Ipv4(a),
            IpAddr::V6(a) => Address::Ipv6(a),
        }
    }
}

impl Address {
    /// The address as a plain IP, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ipv4(a) => Some(IpAddr::V4(*a)),
            Address::Ipv6(a) => Some(IpAddr::V6(*a)),
            _ => None,
        }
    }

    /// Length of the encoding, AFI included.
    pub fn encoded_len(&self) -> usize {
        2 + match self {
            Address::None => 0,
            Address::Ipv4(_) => 4,
            Address::Ipv6(_) => 16,
            Address::DistinguishedName(n) => n.len() + 1,
            other => 6 + other.lcaf_body_len(),
        }
    }

    fn lcaf_body_len(&self) -> usize {
        match self {
            Address::InstanceId { address, .. } => 4 + address.encoded_len(),
            Address::SecurityKey(sk) => {
                4 + sk.keys.iter().map(|k| 2 + k.len()).sum::<usize>() + sk.address.encoded_len()
            }
            Address::NatTraversal(n) => {
                4 + n.global_etr_rloc.encoded_len()
                    + n.ms_rloc.encoded_len()
                    + n.private_etr_rloc.encoded_len()
                    + n.rtr_rlocs.iter().map(Address::encoded_len).sum::<usize>()
            }
            Address::AfiList(items) => items.iter().map(Address::encoded_len).sum(),
            _ => 0,
        }
    }

    /// Checks what the wire format cannot express, before any byte is written.
    pub(crate) fn validate(&self, depth: usize) -> Result<(), EncodeError> {
        let nested: Vec<&Address> = match self {
            Address::None | Address::Ipv4(_) | Address::Ipv6(_) => return Ok(()),
            Address::DistinguishedName(n) => {
                return check_distinguished_name(n.as_bytes())
                    .map_err(EncodeError::BadDistinguishedName)
            }
            Address::InstanceId { address, .. } => vec![address],
            Address::SecurityKey(sk) => {
                if sk.keys.is_empty() || sk.keys.len() > u8::MAX as usize {
                    return Err(EncodeError::BadSecurityKey("key count must be 1 to 255"));
                }
                if sk.keys.iter().any(|k| k.len() > u16::MAX as usize) {
                    return Err(EncodeError::BadSecurityKey("key longer than 65535 bytes"));
                }
                if sk.algorithm == KEY_ALG_WIREGUARD
                    && sk.keys.iter().any(|k| k.len() != WIREGUARD_KEY_LEN)
                {
                    return Err(EncodeError::BadSecurityKey("algorithm 6 keys are 32 bytes"));
                }
                vec![&sk.address]
            }
            Address::NatTraversal(n) => {
                let mut v: Vec<&Address> =
                    vec![&n.global_etr_rloc, &n.ms_rloc, &n.private_etr_rloc];
                v.extend(n.rtr_rlocs.iter());
                v
            }
            Address::AfiList(items) => items.iter().collect(),
        };
        if depth >= MAX_LCAF_DEPTH {
            return Err(EncodeError::LcafTooDeep(MAX_LCAF_DEPTH));
        }
        let body = self.lcaf_body_len();
        if body > u16::MAX as usize {
            return Err(EncodeError::LcafTooLong(body));
        }
        nested.into_iter().try_for_each(|a| a.validate(depth + 1))
    }

    /// Writes AFI and address. Call [`Address::validate`] first.
    pub(crate) fn write(&self, out: &mut impl BufMut) {
        match self {
            Address::None => out.put_u16(AFI_NONE),
            Address::Ipv4(a) => {
                out.put_u16(AFI_IPV4);
                out.put_slice(&a.octets());
            }
            Address::Ipv6(a) => {
                out.put_u16(AFI_IPV6);
                out.put_slice(&a.octets());
            }
            Address::DistinguishedName(n) => {
                out.put_u16(AFI_DISTINGUISHED_NAME);
                out.put_slice(n.as_bytes());
                out.put_u8(0);
            }
            Address::InstanceId {
                iid,
                iid_mask_len,
                address,
            } => {
                self.write_lcaf_header(out, LCAF_INSTANCE_ID, *iid_mask_len);
                out.put_u32(*iid);
                address.write(out);
            }
            Address::SecurityKey(sk) => {
                self.write_lcaf_header(out, LCAF_SECURITY_KEY, 0);
                out.put_u8(sk.keys.len() as u8);
                out.put_u8(0);
                out.put_u8(sk.algorithm);
                out.put_u8(sk.revoke as u8);
                for k in &sk.keys {
                    out.put_u16(k.len() as u16);
                    out.put_slice(k);
                }
                sk.address.write(out);
            }
            Address::NatTraversal(n) => {
                self.write_lcaf_header(out, LCAF_NAT_TRAVERSAL, 0);
                out.put_u16(n.ms_port);
                out.put_u16(n.etr_port);
                n.global_etr_rloc.write(out);
                n.ms_rloc.write(out);
                n.private_etr_rloc.write(out);
                for r in &n.rtr_rlocs {
                    r.write(out);
                }
            }
            Address::AfiList(items) => {
                self.write_lcaf_header(out, LCAF_AFI_LIST, 0);
                items.iter().for_each(|a| a.write(out));
            }
        }
    }

    fn write_lcaf_header(&self, out: &mut impl BufMut, lcaf_type: u8, rsvd2: u8) {
        out.put_u16(AFI_LCAF);
        out.put_u8(0); // Rsvd1
        out.put_u8(0); // Flags
        out.put_u8(lcaf_type);
        out.put_u8(rsvd2);
        out.put_u16(self.lcaf_body_len() as u16);
    }

    /// The innermost IP address, looking through Instance-ID, Security Key,
    /// (the global ETR RLOC of) NAT-Traversal and (the first item holding
    /// one of) AFI-List LCAFs.
    pub fn innermost_ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ipv4(_) | Address::Ipv6(_) => self.ip(),
            Address::InstanceId { address, .. } => address.innermost_ip(),
            Address::SecurityKey(sk) => sk.address.innermost_ip(),
            Address::NatTraversal(n) => n.global_etr_rloc.innermost_ip(),
            Address::AfiList(items) => items.iter().find_map(Address::innermost_ip),
            Address::None | Address::DistinguishedName(_) => None,
        }
    }

    /// The name, if this is a Distinguished Name (looking through an
    /// Instance-ID LCAF), with its instance.
    pub fn distinguished_name(&self) -> Option<(u32, &str)> {
        match self {
            Address::DistinguishedName(n) => Some((0, n)),
            Address::InstanceId { iid, address, .. } => match address.as_ref() {
                Address::DistinguishedName(n) => Some((*iid, n)),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Parses an AFI and its address into an owned [`Address`].
pub(crate) fn parse_address(input: &[u8], depth: usize) -> Res<'_, Address> {
    parse_address_with::<Owned>(input, depth)
}

/// Parses an AFI and its address, building it with `B` (see [`Build`]).
pub(crate) fn parse_address_with<B: Build>(input: &[u8], depth: usize) -> Res<'_, B::Addr> {
    let start = input;
    let (input, afi) = be_u16(input)?;
    match afi {
        AFI_NONE => Ok((input, B::none())),
        AFI_IPV4 => {
            let (input, o) = array::<4>(input)?;
            Ok((input, B::ipv4(o)))
        }
        AFI_IPV6 => {
            let (input, o) = array::<16>(input)?;
            Ok((input, B::ipv6(o)))
        }
        AFI_DISTINGUISHED_NAME => {
            let Some(end) = input.iter().position(|&b| b == 0) else {
                return fail(start, ParseErrorKind::BadDistinguishedName("no NUL"));
            };
            let name = &input[..end];
            if let Err(why) = check_distinguished_name(name) {
                return fail(start, ParseErrorKind::BadDistinguishedName(why));
            }
            Ok((&input[end + 1..], B::distinguished_name(name)))
        }
        AFI_LCAF => parse_lcaf::<B>(input, start, depth),
        other => fail(start, ParseErrorKind::UnknownAfi(other)),
    }
}

fn parse_lcaf<'a, B: Build>(input: &'a [u8], start: &'a [u8], depth: usize) -> Res<'a, B::Addr> {
    if depth >= MAX_LCAF_DEPTH {
        return fail(start, ParseErrorKind::LcafTooDeep(MAX_LCAF_DEPTH));
    }
    let (input, _rsvd1) = be_u8(input)?;
    let (input, _flags) = be_u8(input)?;
    let type_at = input;
    let (input, lcaf_type) = be_u8(input)?;
    let (input, rsvd2) = be_u8(input)?;
    let (input, declared) = be_u16(input)?;
    let (rest, body) = take(input, declared as usize)?;
    let (left, address) = match lcaf_type {
        LCAF_INSTANCE_ID => {
            let (b, iid) = be_u32(body)?;
            let (b, address) = parse_address_with::<B>(b, depth + 1)?;
            (b, B::instance_id(iid, rsvd2, address))
        }
        LCAF_SECURITY_KEY => parse_security_key::<B>(body, depth)?,
        LCAF_NAT_TRAVERSAL => {
            let (b, ms_port) = be_u16(body)?;
            let (b, etr_port) = be_u16(b)?;
            let (b, global) = parse_address_with::<B>(b, depth + 1)?;
            let (b, ms) = parse_address_with::<B>(b, depth + 1)?;
            let (b, private) = parse_address_with::<B>(b, depth + 1)?;
            let (b, rtrs) = parse_address_list::<B>(b, depth + 1)?;
            (
                b,
                B::nat_traversal(ms_port, etr_port, global, ms, private, rtrs),
            )
        }
        LCAF_AFI_LIST => {
            let (b, items) = parse_address_list::<B>(body, depth + 1)?;
            (b, B::afi_list(items))
        }
        other => return fail(type_at, ParseErrorKind::UnknownLcafType(other)),
    };
    if !left.is_empty() {
        return fail(
            left,
            ParseErrorKind::BadLcafLength {
                declared,
                used: body.len() - left.len(),
            },
        );
    }
    Ok((rest, address))
}

/// Addresses back to back until `input` ends.
fn parse_address_list<B: Build>(mut input: &[u8], depth: usize) -> Res<'_, B::List<B::Addr>> {
    let mut list = B::List::default();
    while !input.is_empty() {
        let (rest, a) = parse_address_with::<B>(input, depth)?;
        B::push(&mut list, a);
        input = rest;
    }
    Ok((input, list))
}

fn parse_security_key<B: Build>(body: &[u8], depth: usize) -> Res<'_, B::Addr> {
    let (b, key_count) = be_u8(body)?;
    if key_count == 0 {
        return fail(body, ParseErrorKind::BadKeyCount(key_count));
    }
    let (b, _rsvd3) = be_u8(b)?;
    let (b, algorithm) = be_u8(b)?;
    let (mut b, flags) = be_u8(b)?;
    let mut keys = B::List::default();
    for _ in 0..key_count {
        let len_at = b;
        let (nb, len) = be_u16(b)?;
        if algorithm == KEY_ALG_WIREGUARD && len as usize != WIREGUARD_KEY_LEN {
            return fail(
                len_at,
                ParseErrorKind::BadKeyLength {
                    algorithm,
                    expected: WIREGUARD_KEY_LEN as u16,
                    len,
                },
            );
        }
        let (nb, key) = take(nb, len as usize)?;
        B::push(&mut keys, B::key(key));
        b = nb;
    }
    let (b, address) = parse_address_with::<B>(b, depth + 1)?;
    Ok((b, B::security_key(algorithm, flags & 1 == 1, keys, address)))
}

/// One address as it is on the wire, AFI included, borrowed from a message
/// that has been checked: reading it never fails and never allocates
/// (except [`AddressRef::to_address`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressRef<'a> {
    bytes: &'a [u8],
}

/// One level of a checked address: what its AFI (and LCAF type) says, with
/// the nested addresses still borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Level<'a> {
    None,
    Ip(IpAddr),
    /// The name's bytes, the NUL not included.
    DistinguishedName(&'a [u8]),
    InstanceId {
        iid: u32,
        address: AddressRef<'a>,
    },
    SecurityKey {
        address: AddressRef<'a>,
    },
    NatTraversal {
        /// Global ETR, MS, private ETR, then the RTR RLOCs.
        addresses: AddressSeq<'a>,
    },
    AfiList(AddressSeq<'a>),
}

/// Checked addresses back to back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddressSeq<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AddressSeq<'a> {
    type Item = AddressRef<'a>;

    fn next(&mut self) -> Option<AddressRef<'a>> {
        let (rest, r) = AddressRef::split(self.rest)?;
        self.rest = rest;
        Some(r)
    }
}

impl<'a> AddressRef<'a> {
    /// Splits a checked address off the front of `input`.
    pub(crate) fn split(input: &'a [u8]) -> Option<(&'a [u8], AddressRef<'a>)> {
        let (rest, ()) = parse_address_with::<crate::parse::Check>(input, 0).ok()?;
        let len = input.len() - rest.len();
        Some((rest, AddressRef::checked(&input[..len])))
    }

    /// Wraps bytes that the address parser accepted whole.
    pub(crate) fn checked(bytes: &'a [u8]) -> Self {
        AddressRef { bytes }
    }

    /// The bytes of the address, AFI included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The AFI (16387 for an LCAF).
    pub fn afi(&self) -> u16 {
        match self.bytes {
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            _ => AFI_NONE,
        }
    }

    /// The address as a plain IP, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.level()? {
            Level::Ip(ip) => Some(ip),
            _ => None,
        }
    }

    /// The innermost IP address, looking through LCAFs like
    /// [`Address::innermost_ip`].
    pub fn innermost_ip(&self) -> Option<IpAddr> {
        self.innermost_ip_at(0)
    }

    fn innermost_ip_at(&self, depth: usize) -> Option<IpAddr> {
        if depth > MAX_LCAF_DEPTH {
            return None;
        }
        match self.level()? {
            Level::Ip(ip) => Some(ip),
            Level::None => None,
            Level::InstanceId { address, .. } | Level::SecurityKey { address } => {
                address.innermost_ip_at(depth + 1)
            }
            Level::NatTraversal { mut addresses } => addresses.next()?.innermost_ip_at(depth + 1),
            Level::AfiList(mut items) => items.find_map(|a| a.innermost_ip_at(depth + 1)),
            Level::DistinguishedName(_) => None,
        }
    }

    /// The longest mask an EID prefix of this address may have: looks
    /// through Instance-ID and Security Key LCAFs; `None` when it is not an
    /// EID prefix at all.
    pub(crate) fn max_mask_len(&self) -> Option<u8> {
        let mut cur = *self;
        for _ in 0..=MAX_LCAF_DEPTH {
            cur = match cur.level()? {
                Level::None => return Some(0),
                Level::Ip(IpAddr::V4(_)) => return Some(32),
                Level::Ip(IpAddr::V6(_)) => return Some(128),
                // RFC 8060: the mask length of a name is its length in
                // bits; 255 for names of 32 bytes or more.
                Level::DistinguishedName(n) => return Some((n.len() * 8).min(255) as u8),
                Level::InstanceId { address, .. } | Level::SecurityKey { address } => address,
                _ => return None,
            };
        }
        None
    }

    /// The name, if this is a Distinguished Name (looking through an
    /// Instance-ID LCAF), with its instance.
    pub fn distinguished_name(&self) -> Option<(u32, &'a str)> {
        let (iid, name) = match self.level()? {
            Level::DistinguishedName(n) => (0, n),
            Level::InstanceId { iid, address } => match address.level()? {
                Level::DistinguishedName(n) => (iid, n),
                _ => return None,
            },
            _ => return None,
        };
        // Checked as printable ASCII when the message was read.
        Some((iid, std::str::from_utf8(name).ok()?))
    }

    /// The owned form of the address.
    pub fn to_address(&self) -> Address {
        // The bytes passed this very parser (in checking mode) when the
        // message was read, so this always succeeds; AFI 0 would be the
        // answer to bytes that did not.
        parse_address(self.bytes, 0).map_or(Address::None, |(_, a)| a)
    }

    /// Decodes the outermost level.
    pub(crate) fn level(&self) -> Option<Level<'a>> {
        let b = self.bytes;
        let body = b.get(8..).unwrap_or_default();
        match self.afi() {
            AFI_NONE => Some(Level::None),
            AFI_IPV4 => {
                let o: [u8; 4] = b.get(2..6)?.try_into().ok()?;
                Some(Level::Ip(IpAddr::V4(o.into())))
            }
            AFI_IPV6 => {
                let o: [u8; 16] = b.get(2..18)?.try_into().ok()?;
                Some(Level::Ip(IpAddr::V6(o.into())))
            }
            AFI_DISTINGUISHED_NAME => {
                let body = b.get(2..)?;
                let end = body.iter().position(|&c| c == 0)?;
                Some(Level::DistinguishedName(&body[..end]))
            }
            AFI_LCAF => match *b.get(4)? {
                LCAF_INSTANCE_ID => Some(Level::InstanceId {
                    iid: u32::from_be_bytes(body.get(..4)?.try_into().ok()?),
                    address: AddressRef::checked(body.get(4..)?),
                }),
                LCAF_SECURITY_KEY => {
                    // Key count, Rsvd3, algorithm, flags, then the keys.
                    let count = *body.first()? as usize;
                    let mut at = 4;
                    for _ in 0..count {
                        let len = u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?);
                        at += 2 + len as usize;
                    }
                    Some(Level::SecurityKey {
                        address: AddressRef::checked(body.get(at..)?),
                    })
                }
                LCAF_NAT_TRAVERSAL => Some(Level::NatTraversal {
                    addresses: AddressSeq {
                        rest: body.get(4..)?,
                    },
                }),
                LCAF_AFI_LIST => Some(Level::AfiList(AddressSeq { rest: body })),
                _ => None,
            },
            _ => None,
        }
    }
}

impl std::fmt::Debug for AddressRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_address().fmt(f)
    }
}
