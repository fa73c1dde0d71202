//! The control messages: typed structs, their parsers and their encoders.

use crate::addr::{parse_address_with, Address};
use crate::auth::{Authentication, KeyId};
use crate::ecm::Ecm;
use crate::error::{EncodeError, ParseErrorKind};
use crate::parse::{array, be_u16, be_u32, be_u64, be_u8, fail, take, Build, Owned, Res};
use crate::record::{
    max_mask_len, parse_counted, parse_eid, parse_eid_record_with, parse_eid_records_with,
    validate_records, EidRecord,
};
use bytes::BufMut;

pub const TYPE_MAP_REQUEST: u8 = 1;
pub const TYPE_MAP_REPLY: u8 = 2;
pub const TYPE_MAP_REGISTER: u8 = 3;
pub const TYPE_MAP_NOTIFY: u8 = 4;
pub const TYPE_MAP_NOTIFY_ACK: u8 = 5;
pub const TYPE_ECM: u8 = 8;

/// One EID prefix asked about in a Map-Request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestRecord {
    pub eid_mask_len: u8,
    pub eid: Address,
}

/// Map-Request (type 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapRequest {
    /// A: authoritative.
    pub authoritative: bool,
    /// P: RLOC-probe.
    pub probe: bool,
    /// S: Solicit-Map-Request.
    pub smr: bool,
    /// p: sent by a PITR.
    pub pitr: bool,
    /// s: SMR-invoked.
    pub smr_invoked: bool,
    /// L: sent to a local xTR.
    pub local_xtr: bool,
    /// D: do not send a Map-Reply.
    pub dont_map_reply: bool,
    pub nonce: u64,
    pub source_eid: Address,
    /// Where the reply goes (1 to 32, IRC + 1 on the wire).
    pub itr_rlocs: Vec<Address>,
    pub records: Vec<RequestRecord>,
    /// The sender's own mapping (M bit).
    pub map_reply_record: Option<EidRecord>,
}

/// Map-Reply (type 2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapReply {
    /// P: answers an RLOC-probe.
    pub probe: bool,
    /// E: echo-nonce capable.
    pub echo_nonce: bool,
    /// S: LISP-SEC.
    pub security: bool,
    pub nonce: u64,
    pub records: Vec<EidRecord>,
}

/// The xTR-ID / Site-ID trailer (I bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct XtrSiteId {
    pub xtr_id: [u8; 16],
    pub site_id: u64,
}

/// Map-Register (type 3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapRegister {
    /// P: the map-server answers Map-Requests for these EIDs itself.
    pub proxy_reply: bool,
    /// S: LISP-SEC capable.
    pub security: bool,
    /// R: built for an RTR.
    pub rtr: bool,
    /// M: want a Map-Notify back.
    pub want_map_notify: bool,
    pub nonce: u64,
    pub auth: Authentication,
    pub records: Vec<EidRecord>,
    pub xtr_site: Option<XtrSiteId>,
}

/// Map-Notify (type 4) and Map-Notify-Ack (type 5) share this layout.
///
/// The R bit ("built for an RTR") is not supported: it announces an MS-RTR
/// authentication block after the records (NAT-traversal draft), which
/// lispwg neither sends nor reads. A message with it set is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapNotify {
    pub nonce: u64,
    pub auth: Authentication,
    pub records: Vec<EidRecord>,
    pub xtr_site: Option<XtrSiteId>,
}

/// Any LISP control message lispwg speaks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    MapRequest(MapRequest),
    MapReply(MapReply),
    MapRegister(MapRegister),
    MapNotify(MapNotify),
    MapNotifyAck(MapNotify),
    Ecm(Ecm),
}

impl Message {
    /// The 4-bit type code.
    pub fn type_code(&self) -> u8 {
        match self {
            Message::MapRequest(_) => TYPE_MAP_REQUEST,
            Message::MapReply(_) => TYPE_MAP_REPLY,
            Message::MapRegister(_) => TYPE_MAP_REGISTER,
            Message::MapNotify(_) => TYPE_MAP_NOTIFY,
            Message::MapNotifyAck(_) => TYPE_MAP_NOTIFY_ACK,
            Message::Ecm(_) => TYPE_ECM,
        }
    }

    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Message::MapRequest(_) => "map-request",
            Message::MapReply(_) => "map-reply",
            Message::MapRegister(_) => "map-register",
            Message::MapNotify(_) => "map-notify",
            Message::MapNotifyAck(_) => "map-notify-ack",
            Message::Ecm(_) => "ecm",
        }
    }

    /// Encodes the message, or says why it cannot be encoded. Nothing is
    /// written unless the whole message is valid.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.validate()?;
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write(&mut out);
        Ok(out)
    }

    pub(crate) fn validate(&self) -> Result<(), EncodeError> {
        match self {
            Message::MapRequest(m) => m.validate(),
            Message::MapReply(m) => validate_records(&m.records),
            Message::MapRegister(m) => {
                validate_auth(&m.auth)?;
                validate_records(&m.records)
            }
            Message::MapNotify(m) | Message::MapNotifyAck(m) => {
                validate_auth(&m.auth)?;
                validate_records(&m.records)
            }
            Message::Ecm(e) => e.validate(),
        }
    }

    pub(crate) fn encoded_len(&self) -> usize {
        let records = |r: &[EidRecord]| r.iter().map(EidRecord::encoded_len).sum::<usize>();
        let trailer = |x: &Option<XtrSiteId>| if x.is_some() { 24 } else { 0 };
        match self {
            Message::MapRequest(m) => {
                12 + m.source_eid.encoded_len()
                    + m.itr_rlocs.iter().map(Address::encoded_len).sum::<usize>()
                    + m.records
                        .iter()
                        .map(|r| 2 + r.eid.encoded_len())
                        .sum::<usize>()
                    + m.map_reply_record
                        .as_ref()
                        .map_or(0, EidRecord::encoded_len)
            }
            Message::MapReply(m) => 12 + records(&m.records),
            Message::MapRegister(m) => {
                16 + m.auth.data.len() + records(&m.records) + trailer(&m.xtr_site)
            }
            Message::MapNotify(m) | Message::MapNotifyAck(m) => {
                16 + m.auth.data.len() + records(&m.records) + trailer(&m.xtr_site)
            }
            Message::Ecm(e) => e.encoded_len(),
        }
    }

    /// Writes a validated message.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let t = (self.type_code() as u32) << 28;
        match self {
            Message::MapRequest(m) => m.write(t, out),
            Message::MapReply(m) => {
                write_reply_header(out, m.flags(), m.records.len() as u8, m.nonce);
                m.records.iter().for_each(|r| r.write(out));
            }
            Message::MapRegister(m) => {
                let flags = bit(m.proxy_reply, 0x0800_0000)
                    | bit(m.security, 0x0400_0000)
                    | bit(m.xtr_site.is_some(), 0x0200_0000)
                    | bit(m.rtr, 0x0100_0000)
                    | bit(m.want_map_notify, 0x0000_0100);
                write_authenticated(out, t | flags, m.nonce, &m.auth, &m.records, &m.xtr_site);
            }
            Message::MapNotify(m) | Message::MapNotifyAck(m) => {
                let flags = bit(m.xtr_site.is_some(), 0x0800_0000);
                write_authenticated(out, t | flags, m.nonce, &m.auth, &m.records, &m.xtr_site);
            }
            Message::Ecm(e) => e.write(out),
        }
    }
}

/// The flags of a Map-Reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ReplyFlags {
    /// P: answers an RLOC-probe.
    pub probe: bool,
    /// E: echo-nonce capable.
    pub echo_nonce: bool,
    /// S: LISP-SEC.
    pub security: bool,
}

impl MapReply {
    pub fn flags(&self) -> ReplyFlags {
        ReplyFlags {
            probe: self.probe,
            echo_nonce: self.echo_nonce,
            security: self.security,
        }
    }
}

fn write_reply_header(out: &mut Vec<u8>, flags: ReplyFlags, count: u8, nonce: u64) {
    let word = (TYPE_MAP_REPLY as u32) << 28
        | bit(flags.probe, 0x0800_0000)
        | bit(flags.echo_nonce, 0x0400_0000)
        | bit(flags.security, 0x0200_0000)
        | count as u32;
    out.put_u32(word);
    out.put_u64(nonce);
}

/// Appends a Map-Reply to `out` by copying EID-records that were encoded
/// beforehand with [`EidRecord::encode_into`]: the map-server's copy-only
/// answer. The bytes are the same as
/// `Message::MapReply(MapReply { nonce, records, .. }).encode()` for those
/// records. Nothing is parsed or allocated (give `out` the capacity); the
/// records are copied as they are, so they must be whole EID-records as
/// `encode_into` wrote them. More than 255 records is an error, and then
/// `out` is left as it was.
pub fn encode_map_reply<'r>(
    nonce: u64,
    flags: ReplyFlags,
    records: impl IntoIterator<Item = &'r [u8]>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    write_reply_header(out, flags, 0, nonce);
    let mut records = records.into_iter();
    let mut count = 0usize;
    for record in records.by_ref() {
        if count == u8::MAX as usize {
            out.truncate(start);
            return Err(EncodeError::TooMany {
                what: "EID-records",
                count: count + 1 + records.count(),
                max: u8::MAX as usize,
            });
        }
        debug_assert!(
            crate::parse::finish(record, parse_eid_record_with::<crate::parse::Check>).is_ok(),
            "encode_map_reply: not an encoded EID-record"
        );
        out.extend_from_slice(record);
        count += 1;
    }
    out[start + 3] = count as u8;
    Ok(())
}

/// Parses one whole UDP payload. Trailing bytes are an error.
pub fn parse(buf: &[u8]) -> Result<Message, crate::ParseError> {
    crate::parse::finish(buf, |b| parse_message(b, true))
}

/// Parses a message; `allow_ecm` is false inside an ECM.
pub(crate) fn parse_message(input: &[u8], allow_ecm: bool) -> Res<'_, Message> {
    let start = input;
    let (input, word) = be_u32(input)?;
    let count = (word & 0xff) as usize;
    match (word >> 28) as u8 {
        TYPE_MAP_REQUEST => parse_map_request(input, word),
        TYPE_MAP_REPLY => {
            let (input, nonce) = be_u64(input)?;
            let (input, records) = parse_eid_records_with::<Owned>(input, count)?;
            Ok((
                input,
                Message::MapReply(MapReply {
                    probe: word & 0x0800_0000 != 0,
                    echo_nonce: word & 0x0400_0000 != 0,
                    security: word & 0x0200_0000 != 0,
                    nonce,
                    records,
                }),
            ))
        }
        TYPE_MAP_REGISTER => {
            let (input, (nonce, auth, records, xtr_site)) =
                parse_authenticated(input, count, word & 0x0200_0000 != 0)?;
            Ok((
                input,
                Message::MapRegister(MapRegister {
                    proxy_reply: word & 0x0800_0000 != 0,
                    security: word & 0x0400_0000 != 0,
                    rtr: word & 0x0100_0000 != 0,
                    want_map_notify: word & 0x0000_0100 != 0,
                    nonce,
                    auth,
                    records,
                    xtr_site,
                }),
            ))
        }
        t @ (TYPE_MAP_NOTIFY | TYPE_MAP_NOTIFY_ACK) => {
            if word & 0x0400_0000 != 0 {
                return fail(
                    start,
                    ParseErrorKind::Unsupported("Map-Notify R bit (MS-RTR authentication)"),
                );
            }
            let (input, (nonce, auth, records, xtr_site)) =
                parse_authenticated(input, count, word & 0x0800_0000 != 0)?;
            let notify = MapNotify {
                nonce,
                auth,
                records,
                xtr_site,
            };
            let msg = if t == TYPE_MAP_NOTIFY {
                Message::MapNotify(notify)
            } else {
                Message::MapNotifyAck(notify)
            };
            Ok((input, msg))
        }
        TYPE_ECM if allow_ecm => crate::ecm::parse_ecm(input, word),
        TYPE_ECM => fail(start, ParseErrorKind::NestedEcm),
        other => fail(start, ParseErrorKind::UnknownType(other)),
    }
}

fn bit(set: bool, mask: u32) -> u32 {
    if set {
        mask
    } else {
        0
    }
}

fn validate_auth(auth: &Authentication) -> Result<(), EncodeError> {
    if auth.data.len() != auth.key_id.mac_len() {
        return Err(EncodeError::BadAuthLength {
            key_id: auth.key_id.wire(),
            len: auth.data.len(),
        });
    }
    Ok(())
}

fn write_authenticated(
    out: &mut Vec<u8>,
    word: u32,
    nonce: u64,
    auth: &Authentication,
    records: &[EidRecord],
    xtr_site: &Option<XtrSiteId>,
) {
    out.put_u32(word | records.len() as u32);
    out.put_u64(nonce);
    out.put_u16(auth.key_id.wire());
    out.put_u16(auth.data.len() as u16);
    out.put_slice(&auth.data);
    records.iter().for_each(|r| r.write(out));
    if let Some(x) = xtr_site {
        out.put_slice(&x.xtr_id);
        out.put_u64(x.site_id);
    }
}

type AuthenticatedBody = (u64, Authentication, Vec<EidRecord>, Option<XtrSiteId>);

fn parse_authenticated(
    input: &[u8],
    count: usize,
    has_trailer: bool,
) -> Res<'_, AuthenticatedBody> {
    let (input, nonce) = be_u64(input)?;
    let key_at = input;
    let (input, raw_key_id) = be_u16(input)?;
    let (input, len) = be_u16(input)?;
    let Some(key_id) = KeyId::from_wire(raw_key_id) else {
        return fail(key_at, ParseErrorKind::UnknownKeyId(raw_key_id));
    };
    if key_id.mac_len() != len as usize {
        return fail(
            key_at,
            ParseErrorKind::BadAuthLength {
                key_id: raw_key_id,
                len,
            },
        );
    }
    let (input, data) = take(input, len as usize)?;
    // The trailer is fixed-size at the very end: split it off first so that a
    // short record section is reported as a count mismatch, not as garbage.
    let (body, trailer) = if has_trailer {
        if input.len() < 24 {
            return fail(input, ParseErrorKind::Truncated);
        }
        input.split_at(input.len() - 24)
    } else {
        (input, &input[input.len()..])
    };
    let (rest, records) = parse_eid_records_with::<Owned>(body, count)?;
    if !rest.is_empty() {
        return fail(rest, ParseErrorKind::TrailingData(rest.len()));
    }
    let xtr_site = if has_trailer {
        let (t, xtr_id) = array::<16>(trailer)?;
        let (_, site_id) = be_u64(t)?;
        Some(XtrSiteId { xtr_id, site_id })
    } else {
        None
    };
    let auth = Authentication {
        key_id,
        data: data.to_vec(),
    };
    Ok((&input[input.len()..], (nonce, auth, records, xtr_site)))
}

impl MapRequest {
    fn validate(&self) -> Result<(), EncodeError> {
        if self.itr_rlocs.is_empty() || self.itr_rlocs.len() > 32 {
            return Err(EncodeError::ItrRlocCount(self.itr_rlocs.len()));
        }
        if self.records.len() > u8::MAX as usize {
            return Err(EncodeError::TooMany {
                what: "request records",
                count: self.records.len(),
                max: u8::MAX as usize,
            });
        }
        self.source_eid.validate(0)?;
        if self.itr_rlocs.iter().any(|a| a.ip().is_none()) {
            return Err(EncodeError::ItrRlocNotIp);
        }
        for r in &self.records {
            r.eid.validate(0)?;
            let max = max_mask_len(&r.eid).unwrap_or(0);
            if r.eid_mask_len > max {
                return Err(EncodeError::BadMaskLen {
                    mask_len: r.eid_mask_len,
                    max,
                });
            }
        }
        if let Some(rec) = &self.map_reply_record {
            rec.validate()?;
        }
        Ok(())
    }

    fn write(&self, t: u32, out: &mut Vec<u8>) {
        let flags = bit(self.authoritative, 0x0800_0000)
            | bit(self.map_reply_record.is_some(), 0x0400_0000)
            | bit(self.probe, 0x0200_0000)
            | bit(self.smr, 0x0100_0000)
            | bit(self.pitr, 0x0080_0000)
            | bit(self.smr_invoked, 0x0040_0000)
            | bit(self.local_xtr, 0x0000_4000)
            | bit(self.dont_map_reply, 0x0000_2000);
        let irc = (self.itr_rlocs.len() as u32 - 1) << 8;
        out.put_u32(t | flags | irc | self.records.len() as u32);
        out.put_u64(self.nonce);
        self.source_eid.write(out);
        self.itr_rlocs.iter().for_each(|a| a.write(out));
        for r in &self.records {
            out.put_u8(0);
            out.put_u8(r.eid_mask_len);
            r.eid.write(out);
        }
        if let Some(rec) = &self.map_reply_record {
            rec.write(out);
        }
    }
}

/// A Map-Request as the parser found it: each part built with `B`, and the
/// bytes it came from (for the borrowed view).
pub(crate) struct RequestParts<'a, B: Build> {
    pub nonce: u64,
    pub source_eid: (&'a [u8], B::Addr),
    pub itr_rlocs: (&'a [u8], B::List<B::Addr>),
    pub records: (&'a [u8], B::List<B::RequestRecord>),
    pub map_reply_record: Option<(&'a [u8], B::Record)>,
}

fn parse_map_request(input: &[u8], word: u32) -> Res<'_, Message> {
    let (rest, p) = parse_map_request_with::<Owned>(input, word)?;
    Ok((
        rest,
        Message::MapRequest(MapRequest {
            authoritative: word & 0x0800_0000 != 0,
            probe: word & 0x0200_0000 != 0,
            smr: word & 0x0100_0000 != 0,
            pitr: word & 0x0080_0000 != 0,
            smr_invoked: word & 0x0040_0000 != 0,
            local_xtr: word & 0x0000_4000 != 0,
            dont_map_reply: word & 0x0000_2000 != 0,
            nonce: p.nonce,
            source_eid: p.source_eid.1,
            itr_rlocs: p.itr_rlocs.1,
            records: p.records.1,
            map_reply_record: p.map_reply_record.map(|(_, r)| r),
        }),
    ))
}

/// Parses the Map-Request after its first word, `word`.
pub(crate) fn parse_map_request_with<B: Build>(
    input: &[u8],
    word: u32,
) -> Res<'_, RequestParts<'_, B>> {
    let count = (word & 0xff) as usize;
    let irc = ((word >> 8) & 0x1f) as usize + 1;
    let (input, nonce) = be_u64(input)?;
    let eid_at = input;
    let (input, source_eid) = parse_address_with::<B>(input, 0)?;
    let source_eid = (&eid_at[..eid_at.len() - input.len()], source_eid);
    let itr_at = input;
    let mut input = input;
    let mut itr_rlocs = B::List::default();
    for _ in 0..irc {
        let (rest, a) = parse_address_with::<B>(input, 0)?;
        // A reply goes to an ITR-RLOC: it has to be an address.
        if !matches!(input, [0, 1 | 2, ..]) {
            return fail(input, ParseErrorKind::ItrRlocNotIp);
        }
        B::push(&mut itr_rlocs, a);
        input = rest;
    }
    let itr_rlocs = (&itr_at[..itr_at.len() - input.len()], itr_rlocs);
    let records_at = input;
    let (rest, records) = parse_counted::<B, _>(
        input,
        count,
        |found| ParseErrorKind::RecordCountMismatch {
            declared: count,
            found,
        },
        |input| {
            let (rest, _reserved) = be_u8(input)?;
            let mask_at = rest;
            let (rest, eid_mask_len) = be_u8(rest)?;
            let (rest, eid) = parse_eid::<B>(rest, mask_at, eid_mask_len)?;
            Ok((rest, B::request_record(eid_mask_len, eid)))
        },
    )?;
    let records = (&records_at[..records_at.len() - rest.len()], records);
    input = rest;
    let map_reply_record = if word & 0x0400_0000 != 0 {
        let (rest, rec) = parse_eid_record_with::<B>(input)?;
        let bytes = &input[..input.len() - rest.len()];
        input = rest;
        Some((bytes, rec))
    } else {
        None
    };
    Ok((
        input,
        RequestParts {
            nonce,
            source_eid,
            itr_rlocs,
            records,
            map_reply_record,
        },
    ))
}
