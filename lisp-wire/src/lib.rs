//! # lisp-wire: the LISP control-plane codec of lispwg
//!
//! A pure codec, no I/O: typed messages in, exact bytes out, and the
//! reverse. It covers what lispwg and standard LISP peers exchange (RFC 9301):
//! Map-Request, Map-Reply, Map-Register, Map-Notify, Map-Notify-Ack and the
//! Encapsulated Control Message, with EID- and RLOC-records, AFI 1/2 addresses,
//! Distinguished Names (AFI 17, node names) and the AFI-List (1), Instance-ID (2), NAT-Traversal (7) and Security Key
//! (11) LCAFs.
//!
//! * [`parse`] never panics, on any byte string. Every defect is a typed
//!   [`ParseError`] with the offset where it was found; unknown LCAF types and
//!   trailing bytes are errors, never silently dropped.
//! * [`Message::encode`] checks the whole message before writing, so a
//!   message that cannot be expressed is an [`EncodeError`], not bad bytes.
//! * [`auth`] signs and verifies Map-Register/-Notify/-Notify-Ack MACs
//!   (HMAC-SHA-1 and HMAC-SHA-256, constant-time comparison).
//! * [`mapping`] is the wire-format page: how a WireGuard candidate (key,
//!   RLOC, data port, NAT and relay) travels in a locator, and what is read
//!   back.
//! * [`view`] reads a Map-Request (plain or in an ECM) without allocating,
//!   and [`encode_map_reply`] answers it by copying EID-records encoded once
//!   ([`EidRecord::encode_into`]): byte for byte the reply
//!   [`Message::encode`] would build.

pub mod addr;
pub mod auth;
pub mod ecm;
pub mod error;
pub mod mapping;
pub mod msg;
pub mod nonce;
mod parse;
pub mod record;
pub mod scope;
pub mod table;
pub mod view;

pub use addr::{Address, AddressRef, NatTraversal, SecurityKey};
pub use auth::{Authentication, KeyId};
pub use ecm::{Ecm, EcmHeader, InnerHeader};
pub use error::{AuthError, EncodeError, ParseError, ParseErrorKind};
pub use mapping::{
    wireguard_locator, EidPrefix, LocatorInfo, WgLocator, DEFAULT_WG_PORT, LISP_CONTROL_PORT,
};
pub use msg::{
    encode_map_reply, parse, MapNotify, MapRegister, MapReply, MapRequest, Message, ReplyFlags,
    RequestRecord, XtrSiteId, TYPE_ECM, TYPE_MAP_NOTIFY, TYPE_MAP_NOTIFY_ACK, TYPE_MAP_REGISTER,
    TYPE_MAP_REPLY, TYPE_MAP_REQUEST,
};
pub use nonce::Nonces;
pub use record::{Action, EidRecord, RlocRecord};
pub use scope::is_private;
pub use table::EidTable;
pub use view::{parse_map_request, MapRequestRef, RequestRecordRef};

impl MapRequest {
    /// The request an ITR sends: one EID prefix, answered to one ITR-RLOC,
    /// no flags.
    pub fn for_eid(
        nonce: u64,
        source_eid: Address,
        itr_rloc: std::net::IpAddr,
        target: EidPrefix,
    ) -> Self {
        MapRequest {
            authoritative: false,
            probe: false,
            smr: false,
            pitr: false,
            smr_invoked: false,
            local_xtr: false,
            dont_map_reply: false,
            nonce,
            source_eid,
            itr_rlocs: vec![Address::from(itr_rloc)],
            records: vec![RequestRecord {
                eid_mask_len: target.prefix_len(),
                eid: target.to_address(),
            }],
            map_reply_record: None,
        }
    }

    /// This request in an Encapsulated Control Message from `src`:`src_port`
    /// to `dst`:4342, as ITRs send it to a map-server.
    pub fn encapsulated(
        self,
        src: std::net::IpAddr,
        src_port: u16,
        dst: std::net::IpAddr,
    ) -> Message {
        Message::Ecm(Ecm {
            security: false,
            ddt: false,
            to_etr: false,
            to_ms: false,
            inner: InnerHeader {
                src,
                dst,
                ttl: 64,
                src_port,
                dst_port: LISP_CONTROL_PORT,
            },
            message: Box::new(Message::MapRequest(self)),
        })
    }
}

impl MapRegister {
    /// The registration lispwg sends: proxy-reply and want-map-notify set,
    /// HMAC-SHA-256, no xTR-ID.
    pub fn proxied(nonce: u64, records: Vec<EidRecord>) -> Self {
        MapRegister {
            proxy_reply: true,
            security: false,
            rtr: false,
            want_map_notify: true,
            nonce,
            auth: Authentication::unsigned(KeyId::HmacSha256),
            records,
            xtr_site: None,
        }
    }

    /// Encodes and signs with `key` using `self.auth.key_id` (the
    /// authentication data in `self` is ignored).
    pub fn encode_signed(&self, key: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let msg = MapRegister {
            auth: Authentication::unsigned(self.auth.key_id),
            ..self.clone()
        };
        sign_encoded(Message::MapRegister(msg), key)
    }
}

impl MapNotify {
    /// Encodes as a Map-Notify and signs with `key`.
    pub fn encode_signed_notify(&self, key: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let msg = MapNotify {
            auth: Authentication::unsigned(self.auth.key_id),
            ..self.clone()
        };
        sign_encoded(Message::MapNotify(msg), key)
    }

    /// Encodes as a Map-Notify-Ack and signs with `key`.
    pub fn encode_signed_ack(&self, key: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let msg = MapNotify {
            auth: Authentication::unsigned(self.auth.key_id),
            ..self.clone()
        };
        sign_encoded(Message::MapNotifyAck(msg), key)
    }
}

fn sign_encoded(msg: Message, key: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let key_id = match &msg {
        Message::MapRegister(m) => m.auth.key_id,
        Message::MapNotify(m) | Message::MapNotifyAck(m) => m.auth.key_id,
        _ => KeyId::None,
    };
    let mut bytes = msg.encode()?;
    if key_id != KeyId::None {
        // The message was just encoded with a matching key-id and length, so
        // signing cannot fail.
        auth::sign(&mut bytes, key).map_err(|_| EncodeError::BadAuthLength {
            key_id: key_id.wire(),
            len: 0,
        })?;
    }
    Ok(bytes)
}
