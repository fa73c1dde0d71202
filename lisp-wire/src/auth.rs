//! Map-Register / Map-Notify / Map-Notify-Ack authentication.
//!
//! The MAC is an HMAC over the whole message, xTR-ID/Site-ID trailer
//! included, with the authentication data zeroed (RFC 9301 §5.6). Key-id 1 is
//! HMAC-SHA-1 (20 bytes), key-id 2 HMAC-SHA-256 (32 bytes). lispwg sends
//! SHA-256 and accepts both; comparisons are constant-time.

use crate::error::AuthError;
use crate::{TYPE_MAP_NOTIFY, TYPE_MAP_NOTIFY_ACK, TYPE_MAP_REGISTER};
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

/// The authentication algorithm named by the 16-bit key-id field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyId {
    /// 0: no authentication data.
    None,
    /// 1: HMAC-SHA-1-96 in the RFC, a full 20-byte HMAC-SHA-1 on the wire.
    HmacSha1,
    /// 2: HMAC-SHA-256-128 in the RFC, a full 32-byte HMAC-SHA-256 on the wire.
    #[default]
    HmacSha256,
}

impl KeyId {
    pub fn from_wire(v: u16) -> Option<Self> {
        match v {
            0 => Some(KeyId::None),
            1 => Some(KeyId::HmacSha1),
            2 => Some(KeyId::HmacSha256),
            _ => None,
        }
    }

    pub fn wire(self) -> u16 {
        match self {
            KeyId::None => 0,
            KeyId::HmacSha1 => 1,
            KeyId::HmacSha256 => 2,
        }
    }

    /// Length of the authentication data this algorithm carries.
    pub fn mac_len(self) -> usize {
        match self {
            KeyId::None => 0,
            KeyId::HmacSha1 => 20,
            KeyId::HmacSha256 => 32,
        }
    }
}

/// The authentication fields of a Map-Register, Map-Notify or Map-Notify-Ack.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Authentication {
    pub key_id: KeyId,
    /// Exactly `key_id.mac_len()` bytes.
    pub data: Vec<u8>,
}

impl Authentication {
    /// Zeroed authentication data of the right length, ready for [`sign`].
    pub fn unsigned(key_id: KeyId) -> Self {
        Authentication {
            key_id,
            data: vec![0; key_id.mac_len()],
        }
    }
}

/// Offset of the key-id field in every authenticated message.
const KEY_ID_OFFSET: usize = 12;
/// Offset of the authentication data.
const AUTH_DATA_OFFSET: usize = 16;

fn auth_field(msg: &[u8]) -> Result<(KeyId, usize), AuthError> {
    if msg.len() < AUTH_DATA_OFFSET {
        return Err(AuthError::Truncated);
    }
    let msg_type = msg[0] >> 4;
    if ![TYPE_MAP_REGISTER, TYPE_MAP_NOTIFY, TYPE_MAP_NOTIFY_ACK].contains(&msg_type) {
        return Err(AuthError::NotAuthenticated(msg_type));
    }
    let raw_key_id = u16::from_be_bytes([msg[KEY_ID_OFFSET], msg[KEY_ID_OFFSET + 1]]);
    let len = u16::from_be_bytes([msg[KEY_ID_OFFSET + 2], msg[KEY_ID_OFFSET + 3]]);
    let key_id = KeyId::from_wire(raw_key_id).ok_or(AuthError::UnknownKeyId(raw_key_id))?;
    if key_id.mac_len() != len as usize {
        return Err(AuthError::BadAuthLength {
            key_id: raw_key_id,
            len,
        });
    }
    if msg.len() < AUTH_DATA_OFFSET + len as usize {
        return Err(AuthError::Truncated);
    }
    Ok((key_id, len as usize))
}

/// HMAC over `msg` as if its authentication data were zero.
fn compute(key_id: KeyId, key: &[u8], msg: &[u8], mac_len: usize) -> Vec<u8> {
    let zeros = [0u8; 32];
    let parts = [
        &msg[..AUTH_DATA_OFFSET],
        &zeros[..mac_len],
        &msg[AUTH_DATA_OFFSET + mac_len..],
    ];
    match key_id {
        KeyId::None => Vec::new(),
        KeyId::HmacSha1 => {
            let mut mac =
                Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key length");
            parts.iter().for_each(|p| mac.update(p));
            mac.finalize().into_bytes().to_vec()
        }
        KeyId::HmacSha256 => {
            let mut mac =
                Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            parts.iter().for_each(|p| mac.update(p));
            mac.finalize().into_bytes().to_vec()
        }
    }
}

/// Fills in the MAC of an encoded message whose key-id and length are set.
pub fn sign(msg: &mut [u8], key: &[u8]) -> Result<(), AuthError> {
    let (key_id, len) = auth_field(msg)?;
    if key_id == KeyId::None {
        return Err(AuthError::NoAuthentication);
    }
    let mac = compute(key_id, key, msg, len);
    msg[AUTH_DATA_OFFSET..AUTH_DATA_OFFSET + len].copy_from_slice(&mac);
    Ok(())
}

/// Checks the MAC of an encoded message in constant time and returns the
/// algorithm it used. Key-id 0 (no MAC) is refused.
pub fn verify(msg: &[u8], key: &[u8]) -> Result<KeyId, AuthError> {
    let (key_id, len) = auth_field(msg)?;
    if key_id == KeyId::None {
        return Err(AuthError::NoAuthentication);
    }
    let expected = compute(key_id, key, msg, len);
    let received = &msg[AUTH_DATA_OFFSET..AUTH_DATA_OFFSET + len];
    if bool::from(expected.as_slice().ct_eq(received)) {
        Ok(key_id)
    } else {
        Err(AuthError::Mismatch)
    }
}
