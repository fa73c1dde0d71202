//! Typed errors for every way a LISP control message can be wrong.

use thiserror::Error;

/// Why a byte string is not a valid LISP control message.
///
/// Every variant is a distinct counter-worthy reason; the offset in
/// [`ParseError`] says where in the UDP payload it was found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseErrorKind {
    #[error("truncated message")]
    Truncated,
    #[error("unknown or unsupported message type {0}")]
    UnknownType(u8),
    #[error("unknown AFI {0}")]
    UnknownAfi(u16),
    #[error("unknown LCAF type {0}")]
    UnknownLcafType(u8),
    #[error("LCAF length {declared} does not match its body ({used} bytes used)")]
    BadLcafLength { declared: u16, used: usize },
    #[error("LCAF nesting deeper than {0}")]
    LcafTooDeep(usize),
    #[error("unknown authentication key-id {0}")]
    UnknownKeyId(u16),
    #[error("authentication data length {len} is wrong for key-id {key_id}")]
    BadAuthLength { key_id: u16, len: u16 },
    #[error("record count says {declared} but only {found} records are present")]
    RecordCountMismatch { declared: usize, found: usize },
    #[error("locator count says {declared} but only {found} locators are present")]
    LocatorCountMismatch { declared: usize, found: usize },
    #[error("EID mask length {mask_len} exceeds {max} for the prefix's family")]
    BadMaskLen { mask_len: u8, max: u8 },
    #[error(
        "EID prefix is not an IP address (optionally inside Instance-ID or Security Key LCAFs)"
    )]
    BadEidPrefix,
    #[error("security key LCAF: key count {0} is not supported (must be at least 1)")]
    BadKeyCount(u8),
    #[error("security key LCAF: algorithm {algorithm} needs a {expected}-byte key, got {len}")]
    BadKeyLength {
        algorithm: u8,
        expected: u16,
        len: u16,
    },
    #[error("{0} trailing bytes after the message")]
    TrailingData(usize),
    #[error("ECM inner header: {0}")]
    BadInnerHeader(&'static str),
    #[error("ECM inner IPv4 header checksum is wrong")]
    BadIpChecksum,
    #[error("Distinguished Name: {0}")]
    BadDistinguishedName(&'static str),
    #[error("ECM inner UDP checksum is wrong")]
    BadUdpChecksum,
    #[error("an ECM may not carry another ECM")]
    NestedEcm,
    #[error("message type {0} is not a Map-Request")]
    NotAMapRequest(u8),
    #[error("an ITR-RLOC must be an IPv4 or IPv6 address")]
    ItrRlocNotIp,
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// A parse failure: what went wrong, and the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind} at offset {offset}")]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub offset: usize,
}

/// A typed message that cannot be put on the wire as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("too many {what}: {count} (at most {max})")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("a Map-Request needs between 1 and 32 ITR-RLOCs, got {0}")]
    ItrRlocCount(usize),
    #[error("an ITR-RLOC must be an IPv4 or IPv6 address")]
    ItrRlocNotIp,
    #[error("map-version {0} does not fit in 12 bits")]
    MapVersion(u16),
    #[error("action {0} does not fit in 3 bits")]
    Action(u8),
    #[error("EID mask length {mask_len} exceeds {max} for the prefix's family")]
    BadMaskLen { mask_len: u8, max: u8 },
    #[error("LCAF body of {0} bytes does not fit the 16-bit length field")]
    LcafTooLong(usize),
    #[error("LCAF nesting deeper than {0}")]
    LcafTooDeep(usize),
    #[error("authentication data of {len} bytes is wrong for key-id {key_id}")]
    BadAuthLength { key_id: u16, len: usize },
    #[error("security key LCAF: {0}")]
    BadSecurityKey(&'static str),
    #[error("Distinguished Name: {0}")]
    BadDistinguishedName(&'static str),
    #[error("ECM inner source and destination are of different IP families")]
    MixedFamilies,
    #[error("an ECM may not carry another ECM")]
    NestedEcm,
    #[error("ECM payload of {0} bytes is too long for the inner header")]
    EcmTooLong(usize),
}

/// Why an authenticated message failed its check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("message too short to hold an authentication field")]
    Truncated,
    #[error("message type {0} carries no authentication field")]
    NotAuthenticated(u8),
    #[error("unknown authentication key-id {0}")]
    UnknownKeyId(u16),
    #[error("authentication data length {len} is wrong for key-id {key_id}")]
    BadAuthLength { key_id: u16, len: u16 },
    #[error("message is not authenticated (key-id 0)")]
    NoAuthentication,
    #[error("HMAC does not match")]
    Mismatch,
}
