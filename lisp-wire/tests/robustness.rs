//! The parser never panics, on random bytes or on mutations of valid
//! messages, and whatever it accepts re-encodes to something it accepts
//! identically. The borrowed Map-Request view never panics either and
//! agrees with it on every input. Malformed inputs get the right typed
//! error and offset.

mod common;
use lisp_wire::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

/// Small deterministic PRNG so a failure can be replayed from its seed.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            2 => m.truncate(rng.below(m.len() + 1)),
            3 => m.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
            4 if !m.is_empty() => {
                // Lengths and counts are 8 or 16 bits: hit them with extremes.
                let i = rng.below(m.len());
                m[i] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            5 if m.len() > 2 => {
                let i = rng.below(m.len() - 1);
                m.remove(i);
            }
            _ => {
                let i = rng.below(m.len() + 1);
                m.insert(i, rng.next() as u8);
            }
        }
    }
    m
}

/// Anything accepted must survive encode → parse unchanged, and the
/// borrowed Map-Request view must agree with the owned parse. Returns
/// whether the parser and the view accepted `bytes`.
fn check(bytes: &[u8]) -> (bool, bool) {
    let view = common::agree::view_agrees_with_parse(bytes);
    (check_parse(bytes), view)
}

fn check_parse(bytes: &[u8]) -> bool {
    match parse(bytes) {
        Ok(msg) => {
            common::agree::candidates_read_back(&msg);
            let again = msg
                .encode()
                .unwrap_or_else(|e| panic!("accepted {bytes:02x?} but cannot encode: {e}"));
            assert_eq!(
                parse(&again).as_ref(),
                Ok(&msg),
                "re-parse differs for {bytes:02x?}"
            );
            true
        }
        Err(e) => {
            assert!(
                e.offset <= bytes.len(),
                "offset {} beyond {} bytes",
                e.offset,
                bytes.len()
            );
            false
        }
    }
}

#[test]
fn a_few_hundred_thousand_random_and_mutated_messages_never_panic() {
    let mut runner = TestRunner::deterministic();
    let strategy = common::message();
    let request_strategy = common::request_message();
    let mut seeds: Vec<Vec<u8>> = (0..300)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .encode()
                .unwrap()
        })
        .collect();
    // More Map-Requests, for the borrowed view.
    seeds.extend((0..100).map(|_| {
        let m = request_strategy.new_tree(&mut runner).unwrap().current();
        m.encode().unwrap()
    }));
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut requests, mut total) = (0usize, 0usize, 0usize);
    for round in 0..250_000 {
        let bytes = if round % 5 == 0 {
            let mut b: Vec<u8> = (0..rng.below(160)).map(|_| rng.next() as u8).collect();
            if let Some(first) = b.first_mut() {
                // Steer random bytes towards real type codes half the time.
                if round % 10 == 0 {
                    *first = (*first & 0x0f) | ([1u8, 2, 3, 4, 5, 8][rng.below(6)] << 4);
                }
            }
            b
        } else {
            let pick = rng.below(seeds.len());
            mutate(&mut rng, &seeds[pick])
        };
        let (parsed, viewed) = check(&bytes);
        accepted += parsed as usize;
        requests += viewed as usize;
        total += 1;
    }
    // And enough of them are Map-Requests to exercise the view.
    assert!(
        requests > 3000,
        "only {requests} of {total} inputs were Map-Requests"
    );
    // Mutations that keep a message valid must exist, or the mutator is broken.
    assert!(
        accepted > 1000,
        "only {accepted} of {total} inputs parsed: mutator too destructive"
    );
    assert!(accepted < total, "every input parsed: parser too lax");
}

#[test]
fn malformed_inputs_get_typed_errors_with_offsets() {
    let reply_hdr = |count: u8| [&[0x20, 0, 0, count][..], &[0; 8]].concat();
    let rec_v4 = |mask: u8, afi: u16, loc_count: u8| {
        let mut r = vec![0, 0, 0, 1, loc_count, mask, 0, 0, 0, 0];
        r.extend_from_slice(&afi.to_be_bytes());
        r.extend_from_slice(&[10, 0, 0, 1]);
        r
    };
    let mut cases: Vec<(&str, Vec<u8>, ParseErrorKind, usize)> = vec![
        ("empty", vec![], ParseErrorKind::Truncated, 0),
        (
            "type 6",
            vec![0x60, 0, 0, 0],
            ParseErrorKind::UnknownType(6),
            0,
        ),
        (
            "short nonce",
            vec![0x20, 0, 0, 0, 1, 2],
            ParseErrorKind::Truncated,
            4,
        ),
        (
            "record count 2, one record",
            [reply_hdr(2), rec_v4(32, 1, 0)].concat(),
            ParseErrorKind::RecordCountMismatch {
                declared: 2,
                found: 1,
            },
            28,
        ),
        (
            "bad AFI",
            [reply_hdr(1), rec_v4(32, 9, 0)].concat(),
            ParseErrorKind::UnknownAfi(9),
            22,
        ),
        (
            "mask 33 on IPv4",
            [reply_hdr(1), rec_v4(33, 1, 0)].concat(),
            ParseErrorKind::BadMaskLen {
                mask_len: 33,
                max: 32,
            },
            17,
        ),
        (
            "locator count 1, none",
            [reply_hdr(1), rec_v4(32, 1, 1)].concat(),
            ParseErrorKind::LocatorCountMismatch {
                declared: 1,
                found: 0,
            },
            28,
        ),
        (
            "trailing byte",
            [reply_hdr(1), rec_v4(32, 1, 0), vec![0]].concat(),
            ParseErrorKind::TrailingData(1),
            28,
        ),
        (
            "unknown LCAF type 4",
            [
                reply_hdr(1),
                vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0x03, 0, 0, 4, 0, 0, 0],
            ]
            .concat(),
            ParseErrorKind::UnknownLcafType(4),
            26,
        ),
        (
            "LCAF length too long for its body",
            [
                reply_hdr(1),
                vec![
                    0, 0, 0, 1, 0, 32, 0, 0, 0, 0, 0x40, 0x03, 0, 0, 2, 0, 0, 11, 0, 0, 0, 7, 0, 1,
                    10, 0, 0, 1, 0,
                ],
            ]
            .concat(),
            ParseErrorKind::BadLcafLength {
                declared: 11,
                used: 10,
            },
            40, // the stray byte inside the LCAF body
        ),
        (
            "key-id 2 with 20 bytes",
            [&[0x30, 0, 0, 0][..], &[0; 8], &[0, 2, 0, 20], &[0; 20]].concat(),
            ParseErrorKind::BadAuthLength { key_id: 2, len: 20 },
            12,
        ),
        (
            "key-id 7",
            [&[0x30, 0, 0, 0][..], &[0; 8], &[0, 7, 0, 0]].concat(),
            ParseErrorKind::UnknownKeyId(7),
            12,
        ),
        (
            "WireGuard key of 31 bytes",
            [
                reply_hdr(1),
                vec![
                    0, 0, 0, 1, 1, 32, 0, 0, 0, 0, 0, 1, 10, 0, 0, 1, 1, 1, 0, 0, 0, 0,
                ],
                vec![0x40, 0x03, 0, 0, 11, 0, 0, 43, 1, 0, 6, 0, 0, 31],
                vec![0; 31],
                vec![0, 1, 192, 0, 2, 1],
            ]
            .concat(),
            ParseErrorKind::BadKeyLength {
                algorithm: 6,
                expected: 32,
                len: 31,
            },
            46,
        ),
        (
            "ECM in ECM",
            {
                let inner = [0x80u8, 0, 0, 0];
                let mut ip = vec![
                    0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                ];
                let sum = !fold(&ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                [
                    vec![0x80, 0, 0, 0],
                    ip,
                    vec![0, 1, 0x10, 0xf6, 0, 12, 0, 0],
                    inner.to_vec(),
                ]
                .concat()
            },
            ParseErrorKind::NestedEcm,
            32,
        ),
    ];
    cases.push((
        "Map-Notify with the R bit",
        [&[0x44, 0, 0, 0][..], &[0; 8], &[0, 0, 0, 0]].concat(),
        ParseErrorKind::Unsupported("Map-Notify R bit (MS-RTR authentication)"),
        0,
    ));
    cases.push((
        "ITR-RLOC of AFI 0",
        [
            &[0x10, 0, 0, 1][..],
            &[0; 8],
            &[0, 0],
            &[0, 0],
            &[0, 32, 0, 1, 10, 0, 0, 1],
        ]
        .concat(),
        ParseErrorKind::ItrRlocNotIp,
        14,
    ));
    for (name, bytes, kind, offset) in cases {
        let err = parse(&bytes).expect_err(name);
        assert_eq!(
            (err.kind.clone(), err.offset),
            (kind, offset),
            "{name}: {err}"
        );
    }
}

fn fold(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn lcaf_nesting_is_bounded() {
    // 40 nested Instance-ID or AFI-List LCAFs: refused, without recursing
    // 40 deep.
    for (lcaf_type, prefix) in [(2u8, &[0u8, 0, 0, 1][..]), (1, &[][..])] {
        let mut addr = vec![0, 1, 10, 0, 0, 1];
        for _ in 0..40 {
            let mut l = vec![0x40, 0x03, 0, 0, lcaf_type, 0];
            l.extend_from_slice(&((addr.len() + prefix.len()) as u16).to_be_bytes());
            l.extend_from_slice(prefix);
            l.extend_from_slice(&addr);
            addr = l;
        }
        let msg = [
            vec![0x20, 0, 0, 1],
            vec![0; 8],
            vec![0, 0, 0, 1, 1, 32, 0, 0, 0, 0, 0, 1, 10, 0, 0, 1],
            vec![1, 1, 0, 0, 0, 1],
            addr,
        ]
        .concat();
        assert_eq!(
            parse(&msg).unwrap_err().kind,
            ParseErrorKind::LcafTooDeep(4),
            "LCAF type {lcaf_type}"
        );
    }
}

#[test]
fn encoder_refuses_what_the_wire_cannot_hold() {
    let prefix = EidPrefix::host(0, "10.0.0.1".parse().unwrap());
    let mut rec = EidRecord::new(prefix, 1, vec![]);
    rec.map_version = 4096;
    let reply = |records| {
        Message::MapReply(MapReply {
            probe: false,
            echo_nonce: false,
            security: false,
            nonce: 0,
            records,
        })
    };
    assert_eq!(
        reply(vec![rec.clone()]).encode(),
        Err(EncodeError::MapVersion(4096))
    );
    rec.map_version = 0;
    rec.eid_mask_len = 33;
    assert_eq!(
        reply(vec![rec]).encode(),
        Err(EncodeError::BadMaskLen {
            mask_len: 33,
            max: 32
        })
    );
    let too_many = vec![EidRecord::new(prefix, 1, vec![]); 256];
    assert!(matches!(
        reply(too_many.clone()).encode(),
        Err(EncodeError::TooMany { .. })
    ));
    // The copy-only reply refuses them too, and leaves its buffer alone.
    let mut one = Vec::new();
    too_many[0].encode_into(&mut one).unwrap();
    let mut out = vec![0xaa];
    assert_eq!(
        encode_map_reply(
            0,
            ReplyFlags::default(),
            std::iter::repeat_n(&one[..], 300),
            &mut out
        ),
        Err(EncodeError::TooMany {
            what: "EID-records",
            count: 300,
            max: 255
        })
    );
    assert_eq!(out, [0xaa]);
    encode_map_reply(
        0,
        ReplyFlags::default(),
        std::iter::repeat_n(&one[..], 255),
        &mut out,
    )
    .unwrap();
    assert_eq!(out[4], 255);
    // An EID-record that cannot be encoded writes nothing.
    let mut bad = too_many[0].clone();
    bad.map_version = 4096;
    let mut buf = vec![1, 2];
    assert_eq!(
        bad.encode_into(&mut buf),
        Err(EncodeError::MapVersion(4096))
    );
    assert_eq!(buf, [1, 2]);
    let reg = MapRegister {
        proxy_reply: false,
        security: false,
        rtr: false,
        want_map_notify: false,
        nonce: 0,
        auth: Authentication {
            key_id: KeyId::HmacSha256,
            data: vec![0; 20],
        },
        records: vec![],
        xtr_site: None,
    };
    assert!(matches!(
        Message::MapRegister(reg).encode(),
        Err(EncodeError::BadAuthLength { .. })
    ));
}

/// Inputs the fuzzer (fuzz/) found, kept as regressions.
#[test]
fn fuzz_regressions() {
    // An AFI-List whose NAT-Traversal LCAF has no global ETR RLOC (AFI 0)
    // but lists the plain RLOC as an RTR: LocatorInfo said "not relayed",
    // WgLocator "relayed". Relayed is now judged against the locator's RLOC
    // wherever it is given.
    let crash: String = [
        "2c00000119da25c5f6252ae9779952700106e0000afc400300000200000a30c1",
        "57ce0001f700548b33c68a04000240030000010000ae00025193db27fb0613aa",
        "c333f2f5bfc2164f400300000b00003801000600002074aae95a02f4105ce509",
        "99b6064a4c8e7b6c6d64a340168ec6076716aadcc91100025193db27fb0613aa",
        "c333f2f5bfc2164f40030000070000540000000000000002db27fb0613aac333",
        "f2f5bfc2164f000000025193db27fb0613aac333f2f5bfc2164f000124bc811e",
        "0002db100ef15ebcabc045328c4e014ebdce00025193db27fb0613aac333f2f5",
        "bfc2164f",
    ]
    .concat();
    let crash: Vec<u8> = (0..crash.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&crash[i..i + 2], 16).unwrap())
        .collect();
    assert!(check(&crash).0, "the artifact is a valid Map-Reply");
    // The same, reduced.
    let rloc: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let natt = Address::NatTraversal(NatTraversal {
        ms_port: 0,
        etr_port: 51820,
        global_etr_rloc: Box::new(Address::None),
        ms_rloc: Box::new(Address::None),
        private_etr_rloc: Box::new(Address::None),
        rtr_rlocs: vec![Address::from(rloc)],
    });
    let key = Address::SecurityKey(SecurityKey {
        algorithm: 6,
        revoke: false,
        keys: vec![vec![1; 32]],
        address: Box::new(Address::from(rloc)),
    });
    let locator = Address::AfiList(vec![Address::from(rloc), key, natt]);
    let info = LocatorInfo::from_address(&locator).unwrap();
    let wg = WgLocator::from_address(&locator, 1).unwrap();
    assert!(info.relayed && wg.is_relayed());
    let msg = Message::MapReply(MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce: 1,
        records: vec![EidRecord::new(
            EidPrefix::host(0, "10.0.0.1".parse().unwrap()),
            1,
            vec![RlocRecord::new(1, 1, locator)],
        )],
    });
    common::agree::candidates_read_back(&msg);
}
