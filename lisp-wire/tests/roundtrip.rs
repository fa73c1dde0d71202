//! parse(encode(m)) == m for every message kind, and encode(parse(b)) == b
//! for the canonical bytes the encoder produces.

mod common;
use lisp_wire::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(m in common::message()) {
        let bytes = m.encode().expect("strategy yields encodable messages");
        let parsed = parse(&bytes).unwrap_or_else(|e| panic!("{e} in {bytes:02x?}"));
        prop_assert_eq!(&parsed, &m);
        prop_assert_eq!(parsed.encode().unwrap(), bytes);
    }

    #[test]
    fn signed_messages_verify_and_detect_any_flipped_bit(
        m in common::inner_message(),
        key in proptest::collection::vec(any::<u8>(), 1..64),
        flip in any::<prop::sample::Index>(),
    ) {
        let signed = match m {
            Message::MapRegister(r) => MapRegister { auth: Authentication::unsigned(KeyId::HmacSha256), ..r }.encode_signed(&key),
            Message::MapNotify(n) => MapNotify { auth: Authentication::unsigned(KeyId::HmacSha1), ..n }.encode_signed_notify(&key),
            Message::MapNotifyAck(n) => MapNotify { auth: Authentication::unsigned(KeyId::HmacSha256), ..n }.encode_signed_ack(&key),
            _ => return Ok(()),
        }.unwrap();
        prop_assert!(auth::verify(&signed, &key).is_ok());
        let mut bad = signed.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 0x01;
        prop_assert!(auth::verify(&bad, &key).is_err(), "flipped byte {} not detected", i);
    }
}
