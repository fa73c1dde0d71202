//! Encapsulated Control Message (type 8): a LISP message inside an inner
//! IP/UDP header, as ITRs send Map-Requests (RFC 9301 §5.8).
//!
//! The inner header says who asked: a Map-Reply goes to the ITR-RLOC at the
//! inner UDP *source* port. Both inner checksums are always computed, and
//! checked on input, with two exceptions for what deployed ITRs send:
//!
//! * an inner **IPv4 header checksum of zero** is accepted: stock `lig`
//!   sends one. Any other wrong header checksum is refused
//!   ([`ParseErrorKind::BadIpChecksum`]).
//!   [`EcmHeader::checksum_zero`] reports it, so that the daemon can count
//!   such requests.
//! * an inner **UDP checksum of zero** over IPv4 means "none" (RFC 768) and
//!   is accepted. Over IPv6 it is refused, as RFC 8200 requires.

use crate::error::{EncodeError, ParseErrorKind};
use crate::msg::{parse_message, Message, TYPE_ECM};
use crate::parse::{be_u16, be_u8, fail, take, Res};
use bytes::BufMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const IPPROTO_UDP: u8 = 17;

/// The inner IP and UDP header of an ECM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InnerHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Encapsulated Control Message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ecm {
    /// S: LISP-SEC.
    pub security: bool,
    /// D: sent by a DDT node.
    pub ddt: bool,
    /// E: forward to the ETR (RFC 8111).
    pub to_etr: bool,
    /// M: forward to the map-server (RFC 8111).
    pub to_ms: bool,
    pub inner: InnerHeader,
    pub message: Box<Message>,
}

impl Ecm {
    pub(crate) fn validate(&self) -> Result<(), EncodeError> {
        if matches!(*self.message, Message::Ecm(_)) {
            return Err(EncodeError::NestedEcm);
        }
        if self.inner.src.is_ipv4() != self.inner.dst.is_ipv4() {
            return Err(EncodeError::MixedFamilies);
        }
        let payload = self.message.encoded_len();
        // The IPv4 total length and UDP length are 16-bit.
        if payload + 28 > u16::MAX as usize {
            return Err(EncodeError::EcmTooLong(payload));
        }
        self.message.validate()
    }

    pub(crate) fn encoded_len(&self) -> usize {
        let ip = if self.inner.src.is_ipv4() { 20 } else { 40 };
        4 + ip + 8 + self.message.encoded_len()
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let flags = (self.security as u32) << 27
            | (self.ddt as u32) << 26
            | (self.to_etr as u32) << 25
            | (self.to_ms as u32) << 24;
        out.put_u32((TYPE_ECM as u32) << 28 | flags);
        let mut payload = Vec::with_capacity(self.message.encoded_len());
        self.message.write(&mut payload);
        let udp_len = (8 + payload.len()) as u16;
        let h = &self.inner;
        match (h.src, h.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
                ip[8] = h.ttl;
                ip[9] = IPPROTO_UDP;
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                let sum = fold(sum_words(&ip, 0));
                ip[10..12].copy_from_slice(&(!sum).to_be_bytes());
                out.put_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                out.put_u32(0x6000_0000);
                out.put_u16(udp_len);
                out.put_u8(IPPROTO_UDP);
                out.put_u8(h.ttl);
                out.put_slice(&src.octets());
                out.put_slice(&dst.octets());
            }
            _ => unreachable!("validate() rejects mixed families"),
        }
        let csum = udp_checksum(h.src, h.dst, h.src_port, h.dst_port, &payload);
        out.put_u16(h.src_port);
        out.put_u16(h.dst_port);
        out.put_u16(udp_len);
        out.put_u16(csum);
        out.put_slice(&payload);
    }
}

/// One's-complement sum of big-endian 16-bit words.
fn sum_words(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u16::from_be_bytes([c[0], c[1]]) as u32);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add((*last as u32) << 8);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The UDP checksum over the pseudo-header, header and payload. A computed
/// zero is sent as 0xffff (RFC 768).
pub fn udp_checksum(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> u16 {
    let udp_len = 8 + payload.len() as u32;
    let mut acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum_words(&d.octets(), sum_words(&s.octets(), 0)) + IPPROTO_UDP as u32 + udp_len
        }
        _ => {
            let s = to_v6(src).octets();
            let d = to_v6(dst).octets();
            sum_words(&d, sum_words(&s, 0)) + IPPROTO_UDP as u32 + udp_len
        }
    };
    // The UDP header's ports and length (its checksum counts as zero); no
    // buffer, so checking a request allocates nothing.
    for word in [sport, dport, udp_len as u16] {
        acc = acc.wrapping_add(word as u32);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    let c = !fold(sum_words(payload, acc));
    if c == 0 {
        0xffff
    } else {
        c
    }
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The outer layers of an ECM as read from the wire: its flags and the
/// inner IP/UDP header, with what the checksums looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EcmHeader {
    /// S: LISP-SEC.
    pub security: bool,
    /// D: sent by a DDT node.
    pub ddt: bool,
    /// E: forward to the ETR (RFC 8111).
    pub to_etr: bool,
    /// M: forward to the map-server (RFC 8111).
    pub to_ms: bool,
    pub inner: InnerHeader,
    /// The inner IPv4 header checksum was zero (not computed), as stock
    /// `lig` sends it. Accepted; never set for IPv6, which has no header
    /// checksum. A wrong non-zero checksum is refused instead.
    pub checksum_zero: bool,
}

/// Reads and checks the inner IP and UDP headers of an ECM whose first word
/// was `word`, and returns them with the inner LISP payload.
pub(crate) fn parse_ecm_header(input: &[u8], word: u32) -> Res<'_, (EcmHeader, &[u8])> {
    let ip_start = input;
    let (_, first) = be_u8(input)?;
    let (input, src, dst, ttl, ip_payload_len, checksum_zero) = match first >> 4 {
        4 => {
            let ihl = (first & 0x0f) as usize * 4;
            if ihl < 20 {
                return fail(ip_start, ParseErrorKind::BadInnerHeader("IPv4 IHL below 5"));
            }
            let (rest, hdr) = take(input, ihl)?;
            // lig leaves the header checksum at zero: accept that, and
            // nothing else that does not add up.
            let checksum_zero = hdr[10] == 0 && hdr[11] == 0;
            if !checksum_zero && fold(sum_words(hdr, 0)) != 0xffff {
                return fail(ip_start, ParseErrorKind::BadIpChecksum);
            }
            let total = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
            let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
            if frag & 0x3fff != 0 {
                return fail(ip_start, ParseErrorKind::BadInnerHeader("fragmented IPv4"));
            }
            if hdr[9] != IPPROTO_UDP {
                return fail(
                    ip_start,
                    ParseErrorKind::BadInnerHeader("inner protocol is not UDP"),
                );
            }
            if total < ihl || total - ihl != rest.len() {
                return fail(
                    ip_start,
                    ParseErrorKind::BadInnerHeader("IPv4 total length"),
                );
            }
            let src = Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]);
            let dst = Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]);
            (
                rest,
                IpAddr::V4(src),
                IpAddr::V4(dst),
                hdr[8],
                total - ihl,
                checksum_zero,
            )
        }
        6 => {
            let (rest, hdr) = take(input, 40)?;
            let payload_len = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
            if hdr[6] != IPPROTO_UDP {
                return fail(
                    ip_start,
                    ParseErrorKind::BadInnerHeader("inner next header is not UDP"),
                );
            }
            if payload_len != rest.len() {
                return fail(
                    ip_start,
                    ParseErrorKind::BadInnerHeader("IPv6 payload length"),
                );
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&hdr[8..24]);
            d.copy_from_slice(&hdr[24..40]);
            (
                rest,
                IpAddr::V6(s.into()),
                IpAddr::V6(d.into()),
                hdr[7],
                payload_len,
                false,
            )
        }
        _ => {
            return fail(
                ip_start,
                ParseErrorKind::BadInnerHeader("IP version is not 4 or 6"),
            )
        }
    };
    let udp_start = input;
    let (input, src_port) = be_u16(input)?;
    let (input, dst_port) = be_u16(input)?;
    let (input, udp_len) = be_u16(input)?;
    let (input, csum) = be_u16(input)?;
    if udp_len as usize != ip_payload_len || (udp_len as usize) < 8 {
        return fail(udp_start, ParseErrorKind::BadInnerHeader("UDP length"));
    }
    let payload = input;
    let zero_ok = src.is_ipv4() && csum == 0;
    if !zero_ok && udp_checksum(src, dst, src_port, dst_port, payload) != csum {
        return fail(udp_start, ParseErrorKind::BadUdpChecksum);
    }
    let header = EcmHeader {
        security: word & 0x0800_0000 != 0,
        ddt: word & 0x0400_0000 != 0,
        to_etr: word & 0x0200_0000 != 0,
        to_ms: word & 0x0100_0000 != 0,
        inner: InnerHeader {
            src,
            dst,
            ttl,
            src_port,
            dst_port,
        },
        checksum_zero,
    };
    Ok((&payload[payload.len()..], (header, payload)))
}

pub(crate) fn parse_ecm(input: &[u8], word: u32) -> Res<'_, Message> {
    let (_, (header, payload)) = parse_ecm_header(input, word)?;
    let (rest, message) = parse_message(payload, false)?;
    if !rest.is_empty() {
        return fail(rest, ParseErrorKind::TrailingData(rest.len()));
    }
    Ok((
        rest,
        Message::Ecm(Ecm {
            security: header.security,
            ddt: header.ddt,
            to_etr: header.to_etr,
            to_ms: header.to_ms,
            inner: header.inner,
            message: Box::new(message),
        }),
    ))
}
