//! parse(encode(m)) == m for every message kind, and encode(parse(b)) == b
//! for the canonical bytes the encoder produces; a WireGuard candidate reads
//! back as what was sent.

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

    #[test]
    fn wireguard_candidates_read_back(w in common::wg_locator(), default_port in any::<u16>()) {
        let record = EidRecord::new(
            EidPrefix::host(3, "10.0.0.3".parse().unwrap()),
            5,
            vec![RlocRecord::new(1, 1, w.to_address())],
        );
        let reply = Message::MapReply(MapReply {
            probe: false,
            echo_nonce: false,
            security: false,
            nonce: 9,
            records: vec![record],
        });
        let Ok(Message::MapReply(parsed)) = parse(&reply.encode().unwrap()) else {
            panic!("does not parse back")
        };
        let locator = &parsed.records[0].rlocs[0].locator;
        // A private address equal to the endpoint's means "not behind NAT".
        let private = w.private.filter(|&p| p != w.endpoint.ip());
        let normalized = WgLocator { private, ..w.clone() };
        prop_assert_eq!(WgLocator::from_address(locator, default_port), Some(normalized));
        let info = LocatorInfo::from_address(locator).unwrap();
        prop_assert_eq!(info, LocatorInfo {
            rloc: w.endpoint.ip(),
            port: Some(w.endpoint.port()),
            wg_key: Some(w.key),
            private_rloc: private,
            relayed: w.rtrs.contains(&w.endpoint.ip()),
        });
        prop_assert_eq!(info.behind_nat(), w.is_behind_nat());
        prop_assert_eq!(info.relayed, w.is_relayed());
        prop_assert_eq!(parsed.records[0].wg_key(), Some(w.key));
        prop_assert_eq!(wireguard_locator(w.endpoint, w.key), WgLocator::new(w.endpoint, w.key).to_address());
    }

    #[test]
    fn the_request_view_reads_every_request(m in common::request_message()) {
        let bytes = m.encode().unwrap();
        prop_assert!(common::agree::view_agrees_with_parse(&bytes));
    }

    #[test]
    fn copy_only_replies_are_byte_identical(
        records in proptest::collection::vec(common::eid_record(), 0..5),
        nonce in any::<u64>(),
        flags in any::<[bool; 3]>(),
        prefix in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let reply = MapReply {
            probe: flags[0],
            echo_nonce: flags[1],
            security: flags[2],
            nonce,
            records: records.clone(),
        };
        let expected = Message::MapReply(reply.clone()).encode().unwrap();
        // The records encoded once, back to back, as a registry keeps them.
        let mut store = Vec::new();
        let mut spans = Vec::new();
        for r in &records {
            let start = store.len();
            r.encode_into(&mut store).unwrap();
            spans.push(start..store.len());
        }
        // Appended after whatever `out` already holds.
        let mut out = prefix.clone();
        encode_map_reply(nonce, reply.flags(), spans.iter().map(|s| &store[s.clone()]), &mut out).unwrap();
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&out[prefix.len()..], &expected[..]);
    }
}
