//! The relay self-check: a datagram an allocation sends to its own relayed
//! address. coturn relays it back to us (its permission for its own
//! address covers it), so an answer proves the allocation is alive end to
//! end; no answer means the relay lost it (a restart) or the path to it
//! broke (our NAT rebound the TURN socket). It also keeps our NAT's mapping
//! toward the relay open.
//!
//! Never confused with WireGuard: WireGuard's first byte is a message type
//! 1 to 4 followed by three zero bytes; this starts with the 8-byte tag.

/// First bytes of a self-check.
pub const TAG: &[u8; 8] = b"lwrelay1";
/// Bytes of a self-check: the tag and a 64-bit nonce.
pub const LEN: usize = 16;

/// The self-check datagram carrying `nonce`.
pub fn encode(nonce: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(TAG);
    b[8..].copy_from_slice(&nonce.to_be_bytes());
    b
}

/// The nonce of a self-check, `None` for anything else.
pub fn decode(b: &[u8]) -> Option<u64> {
    if b.len() != LEN || &b[..8] != TAG {
        return None;
    }
    Some(u64::from_be_bytes(b[8..].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_check_round_trips_and_wireguard_is_not_one() {
        assert_eq!(decode(&encode(42)), Some(42));
        // A WireGuard keepalive: type 4, reserved zeros, then 28 bytes.
        let mut wg = vec![4, 0, 0, 0];
        wg.resize(32, 7);
        assert_eq!(decode(&wg), None);
        assert_eq!(decode(&encode(1)[..15]), None);
    }
}
