//! nom plumbing shared by the parsers: an error type that remembers where it
//! happened, so every [`ParseError`](crate::ParseError) carries an offset.

use crate::error::{ParseError, ParseErrorKind};
use nom::IResult;

/// A nom error that records the address of the input where it happened;
/// [`finish`] turns that into an offset from the start of the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WireErr {
    pub kind: ParseErrorKind,
    pub at: usize,
}

impl<'a> nom::error::ParseError<&'a [u8]> for WireErr {
    fn from_error_kind(input: &'a [u8], _kind: nom::error::ErrorKind) -> Self {
        WireErr {
            kind: ParseErrorKind::Truncated,
            at: input.as_ptr() as usize,
        }
    }
    fn append(_input: &'a [u8], _kind: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

pub(crate) type Res<'a, T> = IResult<&'a [u8], T, WireErr>;

/// Fails hard (no backtracking) with `kind` at the start of `input`.
pub(crate) fn fail<T>(input: &[u8], kind: ParseErrorKind) -> Res<'_, T> {
    Err(nom::Err::Failure(WireErr {
        kind,
        at: input.as_ptr() as usize,
    }))
}

/// Runs `parser` over the whole of `buf`, rejecting trailing bytes, and turns
/// the error position into an offset within `buf`.
pub(crate) fn finish<'a, T>(
    buf: &'a [u8],
    parser: impl FnOnce(&'a [u8]) -> Res<'a, T>,
) -> Result<T, ParseError> {
    let base = buf.as_ptr() as usize;
    match parser(buf) {
        Ok(([], value)) => Ok(value),
        Ok((rest, _)) => Err(ParseError {
            kind: ParseErrorKind::TrailingData(rest.len()),
            offset: buf.len() - rest.len(),
        }),
        Err(nom::Err::Error(e)) | Err(nom::Err::Failure(e)) => Err(ParseError {
            kind: e.kind,
            offset: e.at.saturating_sub(base).min(buf.len()),
        }),
        Err(nom::Err::Incomplete(_)) => Err(ParseError {
            kind: ParseErrorKind::Truncated,
            offset: buf.len(),
        }),
    }
}

pub(crate) use nom::number::complete::{be_u16, be_u32, be_u64, be_u8};

/// Takes exactly `n` bytes.
pub(crate) fn take(input: &[u8], n: usize) -> Res<'_, &[u8]> {
    if input.len() < n {
        return fail(input, ParseErrorKind::Truncated);
    }
    Ok((&input[n..], &input[..n]))
}

/// Takes a fixed-size array.
pub(crate) fn array<const N: usize>(input: &[u8]) -> Res<'_, [u8; N]> {
    let (rest, bytes) = take(input, N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok((rest, out))
}

/// What the parsers build from the bytes they accept. There is one parser
/// for addresses and records, run in two modes: [`Owned`] builds the typed
/// structs, [`Check`] builds nothing and allocates nothing. Both modes take
/// the same path through the bytes, so they accept and refuse exactly the
/// same inputs, with the same errors: the borrowed views
/// ([`crate::view`]) validate with [`Check`] what the owned parse would.
pub(crate) trait Build {
    type Addr;
    type Key;
    type Rloc;
    type Record;
    type RequestRecord;
    /// A sequence of items; nothing at all in [`Check`] mode.
    type List<T>: Default;

    fn push<T>(list: &mut Self::List<T>, item: T);
    fn key(material: &[u8]) -> Self::Key;
    fn none() -> Self::Addr;
    fn ipv4(octets: [u8; 4]) -> Self::Addr;
    fn ipv6(octets: [u8; 16]) -> Self::Addr;
    /// Bytes already checked as printable ASCII.
    fn distinguished_name(name: &[u8]) -> Self::Addr;
    fn instance_id(iid: u32, iid_mask_len: u8, address: Self::Addr) -> Self::Addr;
    fn security_key(
        algorithm: u8,
        revoke: bool,
        keys: Self::List<Self::Key>,
        address: Self::Addr,
    ) -> Self::Addr;
    fn nat_traversal(
        ms_port: u16,
        etr_port: u16,
        global: Self::Addr,
        ms: Self::Addr,
        private: Self::Addr,
        rtrs: Self::List<Self::Addr>,
    ) -> Self::Addr;
    fn afi_list(items: Self::List<Self::Addr>) -> Self::Addr;
    fn rloc(fixed: RlocFixed, locator: Self::Addr) -> Self::Rloc;
    fn record(fixed: RecordFixed, eid: Self::Addr, rlocs: Self::List<Self::Rloc>) -> Self::Record;
    fn request_record(eid_mask_len: u8, eid: Self::Addr) -> Self::RequestRecord;
}

/// The fixed fields of an RLOC-record.
#[derive(Clone, Copy)]
pub(crate) struct RlocFixed {
    pub priority: u8,
    pub weight: u8,
    pub m_priority: u8,
    pub m_weight: u8,
    pub flags: u16,
}

/// The fixed fields of an EID-record.
#[derive(Clone, Copy)]
pub(crate) struct RecordFixed {
    pub ttl: u32,
    pub eid_mask_len: u8,
    pub act: u16,
    pub version: u16,
}

/// Builds the owned, typed message structs.
pub(crate) struct Owned;

/// Builds nothing: validation only, without allocating.
pub(crate) struct Check;

impl Build for Owned {
    type Addr = crate::Address;
    type Key = Vec<u8>;
    type Rloc = crate::RlocRecord;
    type Record = crate::EidRecord;
    type RequestRecord = crate::RequestRecord;
    type List<T> = Vec<T>;

    fn push<T>(list: &mut Vec<T>, item: T) {
        list.push(item);
    }
    fn key(material: &[u8]) -> Vec<u8> {
        material.to_vec()
    }
    fn none() -> Self::Addr {
        crate::Address::None
    }
    fn ipv4(octets: [u8; 4]) -> Self::Addr {
        crate::Address::Ipv4(octets.into())
    }
    fn ipv6(octets: [u8; 16]) -> Self::Addr {
        crate::Address::Ipv6(octets.into())
    }
    fn distinguished_name(name: &[u8]) -> Self::Addr {
        crate::Address::DistinguishedName(String::from_utf8_lossy(name).into_owned())
    }
    fn instance_id(iid: u32, iid_mask_len: u8, address: Self::Addr) -> Self::Addr {
        crate::Address::InstanceId {
            iid,
            iid_mask_len,
            address: Box::new(address),
        }
    }
    fn security_key(
        algorithm: u8,
        revoke: bool,
        keys: Vec<Vec<u8>>,
        address: Self::Addr,
    ) -> Self::Addr {
        crate::Address::SecurityKey(crate::SecurityKey {
            algorithm,
            revoke,
            keys,
            address: Box::new(address),
        })
    }
    fn nat_traversal(
        ms_port: u16,
        etr_port: u16,
        global: Self::Addr,
        ms: Self::Addr,
        private: Self::Addr,
        rtrs: Vec<Self::Addr>,
    ) -> Self::Addr {
        crate::Address::NatTraversal(crate::NatTraversal {
            ms_port,
            etr_port,
            global_etr_rloc: Box::new(global),
            ms_rloc: Box::new(ms),
            private_etr_rloc: Box::new(private),
            rtr_rlocs: rtrs,
        })
    }
    fn afi_list(items: Vec<Self::Addr>) -> Self::Addr {
        crate::Address::AfiList(items)
    }
    fn rloc(f: RlocFixed, locator: Self::Addr) -> Self::Rloc {
        crate::RlocRecord {
            priority: f.priority,
            weight: f.weight,
            m_priority: f.m_priority,
            m_weight: f.m_weight,
            local: f.flags & 4 != 0,
            probed: f.flags & 2 != 0,
            reachable: f.flags & 1 != 0,
            locator,
        }
    }
    fn record(f: RecordFixed, eid: Self::Addr, rlocs: Vec<Self::Rloc>) -> Self::Record {
        crate::EidRecord {
            ttl: f.ttl,
            eid_mask_len: f.eid_mask_len,
            action: crate::Action::from_bits((f.act >> 13) as u8),
            authoritative: f.act & 0x1000 != 0,
            map_version: f.version & 0x0fff,
            eid,
            rlocs,
        }
    }
    fn request_record(eid_mask_len: u8, eid: Self::Addr) -> Self::RequestRecord {
        crate::RequestRecord { eid_mask_len, eid }
    }
}

impl Build for Check {
    type Addr = ();
    type Key = ();
    type Rloc = ();
    type Record = ();
    type RequestRecord = ();
    type List<T> = ();

    fn push<T>(_: &mut (), _: T) {}
    fn key(_: &[u8]) {}
    fn none() {}
    fn ipv4(_: [u8; 4]) {}
    fn ipv6(_: [u8; 16]) {}
    fn distinguished_name(_: &[u8]) {}
    fn instance_id(_: u32, _: u8, _: ()) {}
    fn security_key(_: u8, _: bool, _: (), _: ()) {}
    fn nat_traversal(_: u16, _: u16, _: (), _: (), _: (), _: ()) {}
    fn afi_list(_: ()) {}
    fn rloc(_: RlocFixed, _: ()) {}
    fn record(_: RecordFixed, _: (), _: ()) {}
    fn request_record(_: u8, _: ()) {}
}
