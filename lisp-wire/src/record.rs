//! EID-records and RLOC-records, shared by Map-Reply, Map-Register,
//! Map-Notify and Map-Notify-Ack (and the Map-Reply record of a Map-Request).

use crate::addr::{parse_address_with, Address, AddressRef};
use crate::error::{EncodeError, ParseErrorKind};
use crate::parse::{be_u16, be_u32, be_u8, fail, Build, RecordFixed, Res, RlocFixed};
use bytes::BufMut;
use std::net::IpAddr;

/// What an ITR does with packets for the EID when there are no usable RLOCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    NoAction,
    NativelyForward,
    SendMapRequest,
    Drop,
    DropPolicyDenied,
    DropAuthFailure,
    /// Values 6 and 7 (not assigned by RFC 9301), kept as seen.
    Other(u8),
}

impl Action {
    pub fn from_bits(v: u8) -> Self {
        match v & 7 {
            0 => Action::NoAction,
            1 => Action::NativelyForward,
            2 => Action::SendMapRequest,
            3 => Action::Drop,
            4 => Action::DropPolicyDenied,
            5 => Action::DropAuthFailure,
            n => Action::Other(n),
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Action::NoAction => 0,
            Action::NativelyForward => 1,
            Action::SendMapRequest => 2,
            Action::Drop => 3,
            Action::DropPolicyDenied => 4,
            Action::DropAuthFailure => 5,
            Action::Other(n) => n,
        }
    }
}

/// One locator of a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RlocRecord {
    /// 255 means "do not use".
    pub priority: u8,
    pub weight: u8,
    pub m_priority: u8,
    pub m_weight: u8,
    /// L: the locator is local to the sender.
    pub local: bool,
    /// p: the locator is the one probed.
    pub probed: bool,
    /// R: the locator is reachable.
    pub reachable: bool,
    pub locator: Address,
}

/// One mapping: an EID prefix and its locators.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EidRecord {
    /// In minutes; 0xffff_ffff means forever.
    pub ttl: u32,
    pub eid_mask_len: u8,
    pub action: Action,
    pub authoritative: bool,
    /// 12 bits.
    pub map_version: u16,
    pub eid: Address,
    pub rlocs: Vec<RlocRecord>,
}

/// The longest mask an EID prefix may have, from its innermost address.
pub(crate) fn max_mask_len(eid: &Address) -> Option<u8> {
    match eid {
        Address::None => Some(0),
        Address::InstanceId { address, .. } => max_mask_len(address),
        Address::SecurityKey(sk) => max_mask_len(&sk.address),
        // RFC 8060: a name's mask length is its length in bits (255 for
        // names of 32 bytes or more).
        Address::DistinguishedName(n) => Some((n.len() * 8).min(255) as u8),
        _ => match eid.ip()? {
            IpAddr::V4(_) => Some(32),
            IpAddr::V6(_) => Some(128),
        },
    }
}

impl RlocRecord {
    pub(crate) fn encoded_len(&self) -> usize {
        6 + self.locator.encoded_len()
    }

    pub(crate) fn validate(&self) -> Result<(), EncodeError> {
        self.locator.validate(0)
    }

    pub(crate) fn write(&self, out: &mut impl BufMut) {
        out.put_u8(self.priority);
        out.put_u8(self.weight);
        out.put_u8(self.m_priority);
        out.put_u8(self.m_weight);
        let flags = (self.local as u16) << 2 | (self.probed as u16) << 1 | self.reachable as u16;
        out.put_u16(flags);
        self.locator.write(out);
    }
}

pub(crate) fn parse_rloc_record_with<B: Build>(input: &[u8]) -> Res<'_, B::Rloc> {
    let (input, priority) = be_u8(input)?;
    let (input, weight) = be_u8(input)?;
    let (input, m_priority) = be_u8(input)?;
    let (input, m_weight) = be_u8(input)?;
    let (input, flags) = be_u16(input)?;
    let (input, locator) = parse_address_with::<B>(input, 0)?;
    let fixed = RlocFixed {
        priority,
        weight,
        m_priority,
        m_weight,
        flags,
    };
    Ok((input, B::rloc(fixed, locator)))
}

impl EidRecord {
    /// Appends the encoded record to `out`, or says why it cannot be
    /// encoded (then nothing is written). With [`crate::encode_map_reply`]
    /// this lets a map-server encode each mapping once and answer by
    /// copying.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.validate()?;
        out.reserve(self.encoded_len());
        self.write(out);
        Ok(())
    }

    pub(crate) fn encoded_len(&self) -> usize {
        10 + self.eid.encoded_len()
            + self
                .rlocs
                .iter()
                .map(RlocRecord::encoded_len)
                .sum::<usize>()
    }

    pub(crate) fn validate(&self) -> Result<(), EncodeError> {
        if self.rlocs.len() > u8::MAX as usize {
            return Err(EncodeError::TooMany {
                what: "locators",
                count: self.rlocs.len(),
                max: u8::MAX as usize,
            });
        }
        if self.map_version > 0x0fff {
            return Err(EncodeError::MapVersion(self.map_version));
        }
        if self.action.bits() > 7 {
            return Err(EncodeError::Action(self.action.bits()));
        }
        self.eid.validate(0)?;
        match max_mask_len(&self.eid) {
            Some(max) if self.eid_mask_len <= max => {}
            Some(max) => {
                return Err(EncodeError::BadMaskLen {
                    mask_len: self.eid_mask_len,
                    max,
                })
            }
            None => {
                return Err(EncodeError::BadMaskLen {
                    mask_len: self.eid_mask_len,
                    max: 0,
                })
            }
        }
        self.rlocs.iter().try_for_each(RlocRecord::validate)
    }

    pub(crate) fn write(&self, out: &mut impl BufMut) {
        out.put_u32(self.ttl);
        out.put_u8(self.rlocs.len() as u8);
        out.put_u8(self.eid_mask_len);
        out.put_u16((self.action.bits() as u16) << 13 | (self.authoritative as u16) << 12);
        out.put_u16(self.map_version & 0x0fff);
        self.eid.write(out);
        for r in &self.rlocs {
            r.write(out);
        }
    }
}

pub(crate) fn parse_eid_record_with<B: Build>(input: &[u8]) -> Res<'_, B::Record> {
    let (input, ttl) = be_u32(input)?;
    let (input, loc_count) = be_u8(input)?;
    let mask_at = input;
    let (input, eid_mask_len) = be_u8(input)?;
    let (input, act) = be_u16(input)?;
    let (input, version) = be_u16(input)?;
    let (input, eid) = parse_eid::<B>(input, mask_at, eid_mask_len)?;
    let declared = loc_count as usize;
    let (input, rlocs) = parse_counted::<B, _>(
        input,
        declared,
        |found| ParseErrorKind::LocatorCountMismatch { declared, found },
        parse_rloc_record_with::<B>,
    )?;
    let fixed = RecordFixed {
        ttl,
        eid_mask_len,
        act,
        version,
    };
    Ok((input, B::record(fixed, eid, rlocs)))
}

/// Parses `count` EID-records, reporting a short message as a count mismatch.
pub(crate) fn parse_eid_records_with<B: Build>(
    input: &[u8],
    count: usize,
) -> Res<'_, B::List<B::Record>> {
    parse_counted::<B, _>(
        input,
        count,
        |found| ParseErrorKind::RecordCountMismatch {
            declared: count,
            found,
        },
        parse_eid_record_with::<B>,
    )
}

/// Parses `count` items with `item`. Input that ends before `count` items is
/// reported as `mismatch(found)` (the count field lies), not as a truncation.
pub(crate) fn parse_counted<'a, B: Build, T>(
    mut input: &'a [u8],
    count: usize,
    mismatch: impl Fn(usize) -> ParseErrorKind,
    mut item: impl FnMut(&'a [u8]) -> Res<'a, T>,
) -> Res<'a, B::List<T>> {
    // The count is attacker-controlled: nothing is reserved on its word.
    let mut items = B::List::default();
    for found in 0..count {
        if input.is_empty() {
            return fail(input, mismatch(found));
        }
        let (rest, v) = item(input)?;
        B::push(&mut items, v);
        input = rest;
    }
    Ok((input, items))
}

/// Parses an EID field and checks `mask_len` against the family of its
/// innermost address; `mask_at` locates a bad mask.
pub(crate) fn parse_eid<'a, B: Build>(
    input: &'a [u8],
    mask_at: &'a [u8],
    mask_len: u8,
) -> Res<'a, B::Addr> {
    let eid_at = input;
    let (rest, eid) = parse_address_with::<B>(input, 0)?;
    let bytes = AddressRef::checked(&input[..input.len() - rest.len()]);
    match bytes.max_mask_len() {
        Some(max) if mask_len <= max => Ok((rest, eid)),
        Some(max) => fail(mask_at, ParseErrorKind::BadMaskLen { mask_len, max }),
        None => fail(eid_at, ParseErrorKind::BadEidPrefix),
    }
}

pub(crate) fn validate_records(records: &[EidRecord]) -> Result<(), EncodeError> {
    if records.len() > u8::MAX as usize {
        return Err(EncodeError::TooMany {
            what: "EID-records",
            count: records.len(),
            max: u8::MAX as usize,
        });
    }
    records.iter().try_for_each(EidRecord::validate)
}
