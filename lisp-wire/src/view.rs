//! Reading a Map-Request without allocating: the map-server's hot path.
//!
//! [`parse_map_request`] checks a whole Map-Request, plain or inside an
//! ECM, with the very parser [`crate::parse`] uses (run in checking mode:
//! same rules, same errors, nothing built), and returns a [`MapRequestRef`]
//! that borrows the datagram. Reading its fields afterwards cannot fail and
//! allocates nothing; [`MapRequestRef::to_map_request`] builds the owned
//! [`MapRequest`] when one is needed (logs, tests).
//!
//! The answer can be built without allocating too, from EID-records encoded
//! once ([`EidRecord::encode_into`](crate::EidRecord::encode_into)) and
//! copied into the reply ([`encode_map_reply`](crate::encode_map_reply)).

use crate::addr::AddressRef;
use crate::ecm::{parse_ecm_header, EcmHeader};
use crate::error::{ParseError, ParseErrorKind};
use crate::mapping::{EidError, EidPrefix};
use crate::msg::{parse_map_request_with, MapRequest, RequestParts, TYPE_ECM, TYPE_MAP_REQUEST};
use crate::parse::{be_u32, fail, Check, Res};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A checked Map-Request, borrowed from the datagram it was read from.
#[derive(Clone, Copy)]
pub struct MapRequestRef<'a> {
    ecm: Option<EcmHeader>,
    word: u32,
    nonce: u64,
    source_eid: AddressRef<'a>,
    itr_rlocs: &'a [u8],
    itr_count: usize,
    records: &'a [u8],
    record_count: usize,
    map_reply_record: Option<&'a [u8]>,
}

/// One EID prefix asked about, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestRecordRef<'a> {
    pub eid_mask_len: u8,
    pub eid: AddressRef<'a>,
}

impl RequestRecordRef<'_> {
    /// The prefix asked about (IID and address, host bits cleared).
    pub fn prefix(&self) -> Result<EidPrefix, EidError> {
        self.eid.eid_prefix(self.eid_mask_len)
    }
}

/// Checks `buf` as one whole Map-Request, or one ECM carrying a Map-Request,
/// and returns a borrowed view of it. Accepts exactly what [`crate::parse`]
/// accepts as a [`Message::MapRequest`](crate::Message::MapRequest) or an
/// ECM around one, with the same errors; any other message type is
/// [`ParseErrorKind::NotAMapRequest`]. Never allocates, never panics.
pub fn parse_map_request(buf: &[u8]) -> Result<MapRequestRef<'_>, ParseError> {
    crate::parse::finish(buf, |input| {
        let start = input;
        let (input, word) = be_u32(input)?;
        match (word >> 28) as u8 {
            TYPE_MAP_REQUEST => request(input, word, None),
            TYPE_ECM => {
                let (rest, (header, payload)) = parse_ecm_header(input, word)?;
                let (inner, inner_word) = be_u32(payload)?;
                match (inner_word >> 28) as u8 {
                    TYPE_MAP_REQUEST => {}
                    TYPE_ECM => return fail(payload, ParseErrorKind::NestedEcm),
                    other => return fail(payload, ParseErrorKind::NotAMapRequest(other)),
                }
                let (left, view) = request(inner, inner_word, Some(header))?;
                if !left.is_empty() {
                    return fail(left, ParseErrorKind::TrailingData(left.len()));
                }
                Ok((rest, view))
            }
            other => fail(start, ParseErrorKind::NotAMapRequest(other)),
        }
    })
}

fn request(input: &[u8], word: u32, ecm: Option<EcmHeader>) -> Res<'_, MapRequestRef<'_>> {
    let (rest, parts): (_, RequestParts<'_, Check>) = parse_map_request_with::<Check>(input, word)?;
    Ok((
        rest,
        MapRequestRef {
            ecm,
            word,
            nonce: parts.nonce,
            source_eid: AddressRef::checked(parts.source_eid.0),
            itr_rlocs: parts.itr_rlocs.0,
            itr_count: ((word >> 8) & 0x1f) as usize + 1,
            records: parts.records.0,
            record_count: (word & 0xff) as usize,
            map_reply_record: parts.map_reply_record.map(|(bytes, ())| bytes),
        },
    ))
}

impl<'a> MapRequestRef<'a> {
    /// The ECM the request came in, with its inner IP/UDP header (the reply
    /// goes to the inner source port), or `None` for a plain Map-Request.
    pub fn ecm(&self) -> Option<&EcmHeader> {
        self.ecm.as_ref()
    }

    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// A: authoritative.
    pub fn authoritative(&self) -> bool {
        self.word & 0x0800_0000 != 0
    }

    /// P: RLOC-probe.
    pub fn probe(&self) -> bool {
        self.word & 0x0200_0000 != 0
    }

    /// S: Solicit-Map-Request.
    pub fn smr(&self) -> bool {
        self.word & 0x0100_0000 != 0
    }

    /// p: sent by a PITR.
    pub fn pitr(&self) -> bool {
        self.word & 0x0080_0000 != 0
    }

    /// s: SMR-invoked.
    pub fn smr_invoked(&self) -> bool {
        self.word & 0x0040_0000 != 0
    }

    /// L: sent to a local xTR.
    pub fn local_xtr(&self) -> bool {
        self.word & 0x0000_4000 != 0
    }

    /// D: do not send a Map-Reply.
    pub fn dont_map_reply(&self) -> bool {
        self.word & 0x0000_2000 != 0
    }

    /// The source EID (AFI 0 when the requester gave none).
    pub fn source_eid(&self) -> AddressRef<'a> {
        self.source_eid
    }

    /// Where the reply may go: the ITR-RLOCs, all IPv4 or IPv6 addresses.
    pub fn itr_rlocs(&self) -> ItrRlocs<'a> {
        ItrRlocs {
            rest: self.itr_rlocs,
            left: self.itr_count,
        }
    }

    /// The EID prefixes asked about, in order.
    pub fn records(&self) -> RequestRecords<'a> {
        RequestRecords {
            rest: self.records,
            left: self.record_count,
        }
    }

    /// The bytes of the requester's own EID-record (M bit), if it sent one;
    /// already checked, so it parses.
    pub fn map_reply_record_bytes(&self) -> Option<&'a [u8]> {
        self.map_reply_record
    }

    /// The owned request (allocates).
    pub fn to_map_request(&self) -> MapRequest {
        MapRequest {
            authoritative: self.authoritative(),
            probe: self.probe(),
            smr: self.smr(),
            pitr: self.pitr(),
            smr_invoked: self.smr_invoked(),
            local_xtr: self.local_xtr(),
            dont_map_reply: self.dont_map_reply(),
            nonce: self.nonce,
            source_eid: self.source_eid.to_address(),
            itr_rlocs: self.itr_rlocs().map(Into::into).collect(),
            records: self
                .records()
                .map(|r| crate::RequestRecord {
                    eid_mask_len: r.eid_mask_len,
                    eid: r.eid.to_address(),
                })
                .collect(),
            // These bytes passed the same record parser when the request was
            // checked, so parsing them again succeeds.
            map_reply_record: self.map_reply_record.and_then(|b| {
                crate::parse::finish(
                    b,
                    crate::record::parse_eid_record_with::<crate::parse::Owned>,
                )
                .ok()
            }),
        }
    }
}

impl std::fmt::Debug for MapRequestRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapRequestRef")
            .field("ecm", &self.ecm)
            .field("request", &self.to_map_request())
            .finish()
    }
}

/// The ITR-RLOCs of a [`MapRequestRef`].
#[derive(Debug, Clone)]
pub struct ItrRlocs<'a> {
    rest: &'a [u8],
    left: usize,
}

impl Iterator for ItrRlocs<'_> {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        if self.left == 0 {
            return None;
        }
        // Checked: each is AFI 1 or 2 and its address.
        let (ip, len) = match self.rest {
            [0, 1, a, b, c, d, ..] => (IpAddr::V4(Ipv4Addr::new(*a, *b, *c, *d)), 6),
            [0, 2, rest @ ..] => {
                let o: [u8; 16] = rest.get(..16)?.try_into().ok()?;
                (IpAddr::V6(Ipv6Addr::from(o)), 18)
            }
            _ => return None,
        };
        self.rest = self.rest.get(len..)?;
        self.left -= 1;
        Some(ip)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for ItrRlocs<'_> {}

/// The request records of a [`MapRequestRef`].
#[derive(Debug, Clone)]
pub struct RequestRecords<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for RequestRecords<'a> {
    type Item = RequestRecordRef<'a>;

    fn next(&mut self) -> Option<RequestRecordRef<'a>> {
        if self.left == 0 {
            return None;
        }
        // Checked: Reserved, EID mask-len, then the EID.
        let eid_mask_len = *self.rest.get(1)?;
        let (rest, eid) = AddressRef::split(self.rest.get(2..)?)?;
        self.rest = rest;
        self.left -= 1;
        Some(RequestRecordRef { eid_mask_len, eid })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for RequestRecords<'_> {}
