//! Known-answer tests: one hand-checked byte vector per message kind.
//!
//! The expected bytes are written field by field from the layouts in
//! shared/reference/lisp-wire-layouts.md; the MACs were computed with
//! `openssl dgst -sha256 -hmac lispwg-site-key` over the zeroed message, and
//! the test also re-runs openssl when it is installed.

use lisp_wire::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const SITE_KEY: &[u8] = b"lispwg-site-key";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn wg_key() -> [u8; 32] {
    std::array::from_fn(|i| i as u8 + 1)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// [7]10.0.0.2/32 → 192.0.2.10:51820, priority 1, weight 100, WireGuard key.
fn robot_b_record() -> EidRecord {
    let eid = EidPrefix::host(7, v4(10, 0, 0, 2));
    let locator = wireguard_locator(SocketAddr::new(v4(192, 0, 2, 10), 51820), wg_key());
    let rloc = RlocRecord {
        local: true,
        ..RlocRecord::new(1, 100, locator)
    };
    EidRecord::new(eid, 1440, vec![rloc])
}

/// The EID-record above, field by field.
const ROBOT_B_RECORD: &str = "
    000005a0 01 20 0000 0000             # TTL 1440 min, 1 locator, /32, ACT 0, version 0
    4003 00 00 02 00 000a 00000007        # EID: Instance-ID LCAF, length 10, IID 7
       0001 0a000002                      #   AFI 1, 10.0.0.2
    01 64 ff 00 0005                      # RLOC: priority 1, weight 100, M 255/0, L+R
    4003 00 00 01 00 0054                 # AFI-List LCAF, length 84
       0001 c000020a                      #   the RLOC 192.0.2.10, plain
       4003 00 00 0b 00 002c              #   Security Key LCAF, length 44
          01 00 06 00                     #     key count 1, alg 6 (Curve25519+ChaCha20-Poly1305)
          0020 0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20
          0001 c000020a                   #     the RLOC again, plain
       4003 00 00 07 00 0012              #   NAT-Traversal LCAF, length 18
          10f6 ca6c                       #     MS port 4342, ETR (WireGuard) port 51820
          0001 c000020a 0000 0001 c000020a  # global ETR 192.0.2.10, MS none, private 192.0.2.10
";

/// The same record in the encoding lispwg sent before the AFI-List: a
/// Security Key LCAF around a NAT-Traversal LCAF. Still accepted.
const ROBOT_B_RECORD_OLD: &str = "
    000005a0 01 20 0000 0000
    4003 00 00 02 00 000a 00000007 0001 0a000002
    01 64 ff 00 0005
    4003 00 00 0b 00 0040                 # Security Key LCAF, length 64
       01 00 06 00
       0020 0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20
       4003 00 00 07 00 0012              #   NAT-Traversal LCAF, length 18
          10f6 ca6c 0001 c000020a 0000 0001 c000020a
";

fn strip_comments(s: &str) -> String {
    s.lines()
        .map(|l| l.split('#').next().unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

fn vector(parts: &[&str]) -> Vec<u8> {
    hex(&parts
        .iter()
        .map(|p| strip_comments(p))
        .collect::<Vec<_>>()
        .join(" "))
}

fn register(key_id: KeyId) -> MapRegister {
    MapRegister {
        proxy_reply: true,
        security: false,
        rtr: false,
        want_map_notify: true,
        nonce: 0x0102030405060708,
        auth: Authentication::unsigned(key_id),
        records: vec![robot_b_record()],
        xtr_site: Some(XtrSiteId {
            xtr_id: std::array::from_fn(|i| 0x10 + i as u8),
            site_id: 0xa1,
        }),
    }
}

const TRAILER: &str = "101112131415161718191a1b1c1d1e1f 00000000000000a1  # xTR-ID, Site-ID";

/// Runs `openssl dgst -hmac` over `data`; openssl is the independent check.
fn openssl_hmac(alg: &str, data: &[u8]) -> Vec<u8> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lisp-wire-kat-{}-{seq}", std::process::id()));
    std::fs::write(&dir, data).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", &format!("-{alg}"), "-hmac", std::str::from_utf8(SITE_KEY).unwrap(), "-r"])
        .arg(&dir)
        .output()
        .expect("openssl is needed for this test (apt-get install openssl); scripts/test.sh installs it");
    std::fs::remove_file(&dir).ok();
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    hex(String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap())
}

#[test]
fn map_register_hmac_sha256_matches_openssl() {
    let zeroed = vector(&[
        "3a000101 0102030405060708 0002 0020  # type 3, P I M, 1 record; nonce; key-id 2, 32 bytes",
        &"00".repeat(32),
        ROBOT_B_RECORD,
        TRAILER,
    ]);
    let reg = register(KeyId::HmacSha256);
    assert_eq!(Message::MapRegister(reg.clone()).encode().unwrap(), zeroed);

    let mac = hex("098813319dc09e30fdba3155413b4c535ba589f2bf5575bf058243c70208d5c8");
    assert_eq!(
        openssl_hmac("sha256", &zeroed),
        mac,
        "stored vector disagrees with openssl"
    );
    let signed = reg.encode_signed(SITE_KEY).unwrap();
    assert_eq!(&signed[16..48], &mac[..]);
    assert_eq!(auth::verify(&signed, SITE_KEY), Ok(KeyId::HmacSha256));
    assert_eq!(
        auth::verify(&signed, b"wrong key"),
        Err(AuthError::Mismatch)
    );

    let Message::MapRegister(parsed) = parse(&signed).unwrap() else {
        panic!("not a register")
    };
    assert_eq!(parsed.auth.data, mac);
    assert_eq!(parsed.records, reg.records);
}

#[test]
fn map_register_hmac_sha1_matches_openssl() {
    let zeroed = vector(&[
        "3a000101 0102030405060708 0001 0014  # key-id 1, 20 bytes",
        &"00".repeat(20),
        ROBOT_B_RECORD,
        TRAILER,
    ]);
    let reg = register(KeyId::HmacSha1);
    assert_eq!(Message::MapRegister(reg.clone()).encode().unwrap(), zeroed);
    let mac = hex("676f6237417b1073b4b382c5095aaf37735dc97f");
    assert_eq!(
        openssl_hmac("sha1", &zeroed),
        mac,
        "stored vector disagrees with openssl"
    );
    let signed = reg.encode_signed(SITE_KEY).unwrap();
    assert_eq!(&signed[16..36], &mac[..]);
    assert_eq!(auth::verify(&signed, SITE_KEY), Ok(KeyId::HmacSha1));
}

fn notify() -> MapNotify {
    MapNotify {
        nonce: 0x0102030405060708,
        auth: Authentication::unsigned(KeyId::HmacSha256),
        records: vec![robot_b_record()],
        xtr_site: None,
    }
}

#[test]
fn map_notify_and_ack_vectors() {
    let body = [ROBOT_B_RECORD];
    let zeroed_notify = vector(&[
        "40000001 0102030405060708 0002 0020  # type 4, 1 record",
        &"00".repeat(32),
        body[0],
    ]);
    assert_eq!(
        Message::MapNotify(notify()).encode().unwrap(),
        zeroed_notify
    );
    let signed = notify().encode_signed_notify(SITE_KEY).unwrap();
    assert_eq!(signed[16..48], openssl_hmac("sha256", &zeroed_notify)[..]);
    assert_eq!(parse(&signed).unwrap().type_code(), TYPE_MAP_NOTIFY);

    let mut zeroed_ack = zeroed_notify.clone();
    zeroed_ack[0] = 0x50; // type 5
    assert_eq!(
        Message::MapNotifyAck(notify()).encode().unwrap(),
        zeroed_ack
    );
    let signed_ack = notify().encode_signed_ack(SITE_KEY).unwrap();
    assert_eq!(signed_ack[16..48], openssl_hmac("sha256", &zeroed_ack)[..]);
    assert!(matches!(
        parse(&signed_ack).unwrap(),
        Message::MapNotifyAck(_)
    ));
}

fn request() -> MapRequest {
    MapRequest {
        authoritative: false,
        probe: false,
        smr: false,
        pitr: false,
        smr_invoked: false,
        local_xtr: false,
        dont_map_reply: false,
        nonce: 0x0102030405060708,
        source_eid: EidPrefix::host(7, v4(10, 0, 0, 1)).to_address(),
        itr_rlocs: vec![Address::from(v4(100, 64, 0, 2))],
        records: vec![RequestRecord {
            eid_mask_len: 32,
            eid: EidPrefix::host(7, v4(10, 0, 0, 2)).to_address(),
        }],
        map_reply_record: None,
    }
}

const REQUEST: &str = "
    10000001 0102030405060708            # type 1, IRC 0, 1 record; nonce
    4003 00 00 02 00 000a 00000007 0001 0a000001   # source EID [7]10.0.0.1
    0001 64400002                        # ITR-RLOC 100.64.0.2
    00 20 4003 00 00 02 00 000a 00000007 0001 0a000002  # record: /32 [7]10.0.0.2
";

#[test]
fn map_request_vector() {
    let bytes = vector(&[REQUEST]);
    assert_eq!(Message::MapRequest(request()).encode().unwrap(), bytes);
    assert_eq!(parse(&bytes).unwrap(), Message::MapRequest(request()));
}

#[test]
fn ecm_vector_has_correct_checksums() {
    let ecm = Ecm {
        security: false,
        ddt: false,
        to_etr: false,
        to_ms: false,
        inner: InnerHeader {
            src: v4(100, 64, 0, 2),
            dst: v4(100, 64, 0, 1),
            ttl: 64,
            src_port: 61001,
            dst_port: 4342,
        },
        message: Box::new(Message::MapRequest(request())),
    };
    let bytes = vector(&[
        "80000000                             # type 8",
        "4500 0054 0000 0000 40 11 b216        # IPv4, total 84, TTL 64, UDP, header checksum",
        "64400002 64400001                    # 100.64.0.2 -> 100.64.0.1",
        "ee49 10f6 0040 1b05                  # UDP 61001 -> 4342, length 64, checksum",
        REQUEST,
    ]);
    assert_eq!(Message::Ecm(ecm.clone()).encode().unwrap(), bytes);
    assert_eq!(parse(&bytes).unwrap(), Message::Ecm(ecm.clone()));

    let mut bad_udp = bytes.clone();
    bad_udp[30] ^= 0xff;
    assert_eq!(
        parse(&bad_udp).unwrap_err().kind,
        ParseErrorKind::BadUdpChecksum
    );
    let mut bad_ip = bytes.clone();
    bad_ip[14] ^= 0xff;
    assert_eq!(
        parse(&bad_ip).unwrap_err().kind,
        ParseErrorKind::BadIpChecksum
    );

    let view = parse_map_request(&bytes).unwrap();
    assert_eq!(
        view.ecm().map(|h| (h.inner, h.checksum_zero)),
        Some((ecm.inner, false))
    );

    // Stock lig leaves the inner IPv4 header checksum at zero: accepted,
    // and the view says so, for the daemon's counter.
    let mut lig = bytes.clone();
    lig[14..16].copy_from_slice(&[0, 0]);
    assert_eq!(parse(&lig).unwrap(), Message::Ecm(ecm.clone()));
    let view = parse_map_request(&lig).unwrap();
    assert_eq!(
        view.ecm().map(|h| (h.inner, h.checksum_zero)),
        Some((ecm.inner, true))
    );
    assert_eq!(view.to_map_request(), request());
    // Any other wrong value, including a one-bit change of a zero, is not.
    for bad in [[0x00, 0x01], [0x80, 0x00], [0xb2, 0x17]] {
        let mut b = bytes.clone();
        b[14..16].copy_from_slice(&bad);
        let refused = ParseError {
            kind: ParseErrorKind::BadIpChecksum,
            offset: 4,
        };
        assert_eq!(parse(&b).unwrap_err(), refused, "checksum {bad:02x?}");
        assert_eq!(parse_map_request(&b).unwrap_err(), refused);
    }
}

#[test]
fn map_request_view_reads_the_vector() {
    let bytes = vector(&[REQUEST]);
    let view = parse_map_request(&bytes).unwrap();
    assert!(view.ecm().is_none());
    assert_eq!(view.nonce(), 0x0102030405060708);
    assert!(!(view.authoritative() || view.probe() || view.smr() || view.pitr()));
    assert_eq!(
        view.source_eid().eid_host(),
        Ok(EidPrefix::host(7, v4(10, 0, 0, 1)))
    );
    assert_eq!(view.source_eid().innermost_ip(), Some(v4(10, 0, 0, 1)));
    // Borrowed from the datagram, not copied.
    assert!(std::ptr::eq(view.source_eid().as_bytes(), &bytes[12..30]));
    assert!(view.itr_rlocs().eq([v4(100, 64, 0, 2)]));
    let records: Vec<_> = view.records().map(|r| r.prefix()).collect();
    assert_eq!(records, [Ok(EidPrefix::host(7, v4(10, 0, 0, 2)))]);
    assert_eq!(view.map_reply_record_bytes(), None);
    assert_eq!(view.to_map_request(), request());

    // Anything but a Map-Request is refused by type, without reading on.
    let reply = Message::MapReply(MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce: 1,
        records: vec![],
    })
    .encode()
    .unwrap();
    assert_eq!(
        parse_map_request(&reply).unwrap_err(),
        ParseError {
            kind: ParseErrorKind::NotAMapRequest(2),
            offset: 0
        }
    );
    // And a bad request gets the parser's own error.
    let mut short = bytes.clone();
    short.pop();
    assert_eq!(
        parse_map_request(&short).unwrap_err(),
        parse(&short).unwrap_err()
    );
}

#[test]
fn map_reply_vectors_positive_and_negative() {
    let reply = MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce: 0x0102030405060708,
        records: vec![robot_b_record()],
    };
    let bytes = vector(&[
        "20000001 0102030405060708  # type 2, 1 record; nonce",
        ROBOT_B_RECORD,
    ]);
    assert_eq!(Message::MapReply(reply.clone()).encode().unwrap(), bytes);
    let Message::MapReply(parsed) = parse(&bytes).unwrap() else {
        panic!()
    };
    let (rloc, info) = parsed.records[0].best_locator().unwrap();
    assert_eq!((rloc.priority, rloc.weight), (1, 100));
    assert_eq!(info.rloc, v4(192, 0, 2, 10));
    assert_eq!(info.port, Some(51820));
    assert_eq!(info.wg_key, Some(wg_key()));
    assert_eq!(
        EidPrefix::of_record(&parsed.records[0]).unwrap(),
        EidPrefix::host(7, v4(10, 0, 0, 2))
    );

    let negative = MapReply {
        records: vec![EidRecord::negative(
            EidPrefix::new(0, v4(10, 0, 0, 0), 8).unwrap(),
            1,
            Action::NativelyForward,
        )],
        ..reply
    };
    let bytes = vector(&[
        "20000001 0102030405060708",
        "00000001 00 08 2000 0000 0001 0a000000  # TTL 1, 0 locators, /8, ACT 1 (native fwd); 10.0.0.0 as plain AFI (IID 0)",
    ]);
    assert_eq!(Message::MapReply(negative).encode().unwrap(), bytes);
}

#[test]
fn iid_zero_is_accepted_in_both_forms() {
    let plain = EidPrefix::from_wire(&Address::from(v4(10, 1, 0, 0)), 16).unwrap();
    let lcaf = EidPrefix::from_wire(
        &Address::InstanceId {
            iid: 0,
            iid_mask_len: 0,
            address: Box::new(Address::from(v4(10, 1, 0, 0))),
        },
        16,
    )
    .unwrap();
    assert_eq!(plain, lcaf);
    assert_eq!(plain.to_address(), Address::from(v4(10, 1, 0, 0)));
}

#[test]
fn key_on_the_eid_side_is_accepted() {
    let eid = Address::SecurityKey(SecurityKey {
        algorithm: 6,
        revoke: false,
        keys: vec![wg_key().to_vec()],
        address: Box::new(EidPrefix::host(3, v4(10, 9, 0, 1)).to_address()),
    });
    let rec = EidRecord {
        eid,
        eid_mask_len: 32,
        ..EidRecord::new(
            EidPrefix::host(3, v4(10, 9, 0, 1)),
            10,
            vec![RlocRecord::new(1, 1, Address::from(v4(192, 0, 2, 1)))],
        )
    };
    let bytes = Message::MapReply(MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce: 1,
        records: vec![rec],
    })
    .encode()
    .unwrap();
    let Message::MapReply(parsed) = parse(&bytes).unwrap() else {
        panic!()
    };
    assert_eq!(parsed.records[0].wg_key(), Some(wg_key()));
    assert_eq!(
        EidPrefix::of_record(&parsed.records[0]).unwrap(),
        EidPrefix::host(3, v4(10, 9, 0, 1))
    );
}

#[test]
fn afi_list_lcaf_vector() {
    let list = Address::AfiList(vec![
        Address::from(v4(192, 0, 2, 1)),
        Address::from("2001:db8::1".parse::<IpAddr>().unwrap()),
        Address::InstanceId {
            iid: 9,
            iid_mask_len: 0,
            address: Box::new(Address::from(v4(10, 0, 0, 9))),
        },
    ]);
    let rec = EidRecord::new(
        EidPrefix::host(0, v4(10, 0, 0, 1)),
        1,
        vec![RlocRecord::new(1, 2, list)],
    );
    let reply = Message::MapReply(MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce: 5,
        records: vec![rec],
    });
    let bytes = vector(&["
        20000001 0000000000000005            # Map-Reply, 1 record, nonce 5
        00000001 01 20 0000 0000 0001 0a000001  # TTL 1, 1 locator, /32 10.0.0.1
        01 02 ff 00 0001                     # priority 1, weight 2, R
        4003 00 00 01 00 002a                # AFI-List LCAF, length 42
           0001 c0000201                     #   192.0.2.1
           0002 20010db8000000000000000000000001  # 2001:db8::1
           4003 00 00 02 00 000a 00000009 0001 0a000009  # [9]10.0.0.9
    "]);
    assert_eq!(reply.encode().unwrap(), bytes);
    assert_eq!(parse(&bytes).unwrap(), reply);

    // An item that runs past the list's length is caught inside the list.
    let mut short = bytes.clone();
    short[41] = 0x29; // length 41: the Instance-ID item loses its last byte
    short.pop();
    assert_eq!(
        parse(&short).unwrap_err(),
        ParseError {
            kind: ParseErrorKind::Truncated,
            offset: 74 // the Instance-ID item's body
        }
    );
    // An item of an unknown AFI is named, with its offset.
    let mut unknown = bytes.clone();
    unknown[42..44].copy_from_slice(&[0, 9]);
    assert_eq!(
        parse(&unknown).unwrap_err(),
        ParseError {
            kind: ParseErrorKind::UnknownAfi(9),
            offset: 42
        }
    );
}

const KEY_HEX: &str = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";

/// A reply with two candidates for [7]10.0.0.2/32 as the map-server hands
/// them out for a node behind a NAT: the endpoint it observed (the NAT's
/// mapping, with the node's private address behind it), then a relayed one.
#[test]
fn nat_and_relay_candidate_vectors() {
    let key = wg_key();
    let natted = WgLocator::new(SocketAddr::new(v4(198, 51, 100, 7), 40001), key)
        .with_private(v4(10, 1, 0, 5));
    let relayed = WgLocator::new(SocketAddr::new(v4(203, 0, 113, 1), 3478), key)
        .with_rtrs([v4(203, 0, 113, 1), "2001:db8::99".parse().unwrap()]);
    let reply = Message::MapReply(MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce: 0x0102030405060708,
        records: vec![EidRecord::new(
            EidPrefix::host(7, v4(10, 0, 0, 2)),
            1440,
            vec![
                RlocRecord::new(1, 100, natted.to_address()),
                RlocRecord::new(2, 100, relayed.to_address()),
            ],
        )],
    });
    let bytes = vector(&[
        "20000001 0102030405060708               # Map-Reply, 1 record",
        "000005a0 02 20 0000 0000                # TTL 1440, 2 locators, /32",
        "4003 00 00 02 00 000a 00000007 0001 0a000002   # [7]10.0.0.2",
        "01 64 ff 00 0001                        # priority 1, weight 100, R
         4003 00 00 01 00 0054                   # AFI-List, length 84
            0001 c6336407                        #   198.51.100.7
            4003 00 00 0b 00 002c 01 00 06 00 0020",
        KEY_HEX,
        "           0001 c6336407                #   (the Security Key's RLOC)
            4003 00 00 07 00 0012                #   NAT-Traversal, length 18
               10f6 9c41                         #     MS port 4342, ETR port 40001
               0001 c6336407                     #     global ETR: the NAT's address
               0000                              #     MS RLOC: none
               0001 0a010005                     #     private ETR 10.1.0.5: behind a NAT",
        "02 64 ff 00 0001                        # priority 2, weight 100, R
         4003 00 00 01 00 006c                   # AFI-List, length 108
            0001 cb007101                        #   203.0.113.1
            4003 00 00 0b 00 002c 01 00 06 00 0020",
        KEY_HEX,
        "           0001 cb007101
            4003 00 00 07 00 002a                #   NAT-Traversal, length 42
               10f6 0d96                         #     MS port 4342, ETR port 3478
               0001 cb007101 0000 0001 cb007101  #     global = private = 203.0.113.1
               0001 cb007101                     #     RTR 1: 203.0.113.1 (= global: relayed)
               0002 20010db8000000000000000000000099  # RTR 2: 2001:db8::99",
    ]);
    assert_eq!(reply.encode().unwrap(), bytes);
    let Message::MapReply(parsed) = parse(&bytes).unwrap() else {
        panic!("not a reply")
    };
    assert_eq!(Message::MapReply(parsed.clone()), reply);

    let rec = &parsed.records[0];
    let nat = rec.rlocs[0].info().unwrap();
    assert_eq!(
        nat,
        LocatorInfo {
            rloc: v4(198, 51, 100, 7),
            port: Some(40001),
            wg_key: Some(key),
            private_rloc: Some(v4(10, 1, 0, 5)),
            relayed: false,
        }
    );
    assert!(nat.behind_nat());
    let relay = rec.rlocs[1].info().unwrap();
    assert_eq!((relay.relayed, relay.behind_nat()), (true, false));
    assert_eq!(
        WgLocator::from_address(&rec.rlocs[0].locator, DEFAULT_WG_PORT),
        Some(natted.clone())
    );
    assert_eq!(
        WgLocator::from_address(&rec.rlocs[1].locator, DEFAULT_WG_PORT),
        Some(relayed.clone())
    );
    assert!(natted.is_behind_nat() && !natted.is_relayed());
    assert!(relayed.is_relayed() && !relayed.is_behind_nat());
    // Priority order: the direct-through-NAT candidate first.
    assert_eq!(rec.best_locator().unwrap().1, nat);
}

/// Every form lispwg accepted before the AFI-List is still read.
#[test]
fn old_locator_forms_are_accepted() {
    let key = wg_key();
    // Security Key LCAF around a NAT-Traversal LCAF (lispwg until now).
    let old = vector(&["20000001 0102030405060708", ROBOT_B_RECORD_OLD]);
    let Message::MapReply(reply) = parse(&old).unwrap() else {
        panic!("not a reply")
    };
    let rec = &reply.records[0];
    let (_, info) = rec.best_locator().unwrap();
    assert_eq!(
        info,
        LocatorInfo {
            rloc: v4(192, 0, 2, 10),
            port: Some(51820),
            wg_key: Some(key),
            private_rloc: None,
            relayed: false,
        }
    );
    assert_eq!(rec.wg_key(), Some(key));
    assert_eq!(
        WgLocator::from_address(&rec.rlocs[0].locator, 1),
        Some(WgLocator::new(
            SocketAddr::new(v4(192, 0, 2, 10), 51820),
            key
        ))
    );
    // It reads the same as the new form of the same candidate.
    let new = vector(&["20000001 0102030405060708", ROBOT_B_RECORD]);
    let Message::MapReply(new_reply) = parse(&new).unwrap() else {
        panic!("not a reply")
    };
    assert_eq!(new_reply.records[0].best_locator().unwrap().1, info);

    // Security Key LCAF around a plain RLOC: no port, the caller's default.
    let sk_plain = Address::SecurityKey(SecurityKey {
        algorithm: 6,
        revoke: false,
        keys: vec![key.to_vec()],
        address: Box::new(Address::from(v4(192, 0, 2, 1))),
    });
    let info = LocatorInfo::from_address(&sk_plain).unwrap();
    assert_eq!(
        (info.rloc, info.port, info.wg_key),
        (v4(192, 0, 2, 1), None, Some(key))
    );
    assert_eq!(
        WgLocator::from_address(&sk_plain, DEFAULT_WG_PORT)
            .unwrap()
            .endpoint,
        SocketAddr::new(v4(192, 0, 2, 1), DEFAULT_WG_PORT)
    );

    // A plain RLOC from a keyless peer: an RLOC, nothing else.
    let plain = Address::from(v4(192, 0, 2, 2));
    assert_eq!(
        LocatorInfo::from_address(&plain),
        Some(LocatorInfo {
            rloc: v4(192, 0, 2, 2),
            port: None,
            wg_key: None,
            private_rloc: None,
            relayed: false,
        })
    );
    assert_eq!(WgLocator::from_address(&plain, DEFAULT_WG_PORT), None);
    // A revoked key, or one of another algorithm, is no WireGuard key.
    for (algorithm, revoke) in [(6, true), (2, false)] {
        let sk = Address::SecurityKey(SecurityKey {
            algorithm,
            revoke,
            keys: vec![key.to_vec()],
            address: Box::new(Address::from(v4(192, 0, 2, 3))),
        });
        let info = LocatorInfo::from_address(&sk).unwrap();
        assert_eq!((info.rloc, info.wg_key), (v4(192, 0, 2, 3), None));
    }
}

/// A locator whose parts disagree cannot be used.
#[test]
fn contradicting_locators_are_not_used() {
    let good = WgLocator::new(SocketAddr::new(v4(192, 0, 2, 1), 51820), wg_key());
    let Address::AfiList(items) = good.to_address() else {
        panic!("not an AFI-List")
    };
    let replace = |i: usize, a: Address| {
        let mut items = items.clone();
        items[i] = a;
        Address::AfiList(items)
    };
    let other_key = Address::SecurityKey(SecurityKey {
        algorithm: 6,
        revoke: false,
        keys: vec![vec![9; 32]],
        address: Box::new(Address::from(v4(192, 0, 2, 1))),
    });
    let mut two_keys = items.clone();
    two_keys.push(other_key);
    let mut two_ports = items.clone();
    two_ports.push(WgLocator::new(SocketAddr::new(v4(192, 0, 2, 1), 51821), wg_key()).to_address());
    for bad in [
        replace(0, Address::from(v4(192, 0, 2, 2))), // plain RLOC ≠ NAT-T global
        Address::AfiList(two_keys),
        Address::AfiList(two_ports),
    ] {
        assert_eq!(LocatorInfo::from_address(&bad), None, "{bad:?}");
        assert_eq!(WgLocator::from_address(&bad, 1), None, "{bad:?}");
    }
    // The same parts twice agree.
    let mut twice = items.clone();
    twice.extend(items.clone());
    assert!(LocatorInfo::from_address(&Address::AfiList(twice)).is_some());
}

#[test]
fn map_notify_hmac_sha1_matches_openssl() {
    let n = MapNotify {
        auth: Authentication::unsigned(KeyId::HmacSha1),
        ..notify()
    };
    let zeroed = vector(&[
        "40000001 0102030405060708 0001 0014  # type 4, 1 record; key-id 1, 20 bytes",
        &"00".repeat(20),
        ROBOT_B_RECORD,
    ]);
    assert_eq!(Message::MapNotify(n.clone()).encode().unwrap(), zeroed);
    let signed = n.encode_signed_notify(SITE_KEY).unwrap();
    assert_eq!(signed[16..36], openssl_hmac("sha1", &zeroed)[..]);
    assert_eq!(auth::verify(&signed, SITE_KEY), Ok(KeyId::HmacSha1));
    let mut tampered = signed.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(auth::verify(&tampered, SITE_KEY), Err(AuthError::Mismatch));
    let Message::MapNotify(parsed) = parse(&signed).unwrap() else {
        panic!("not a notify")
    };
    assert_eq!(parsed.auth.key_id, KeyId::HmacSha1);
    assert_eq!(parsed.records, n.records);
}

/// A Distinguished Name EID (RFC 8060, AFI 17): the ASCII bytes and a NUL,
/// mask length up to the name's length in bits.
#[test]
fn distinguished_name_eid_bytes_and_errors() {
    let req = MapRequest {
        authoritative: false,
        probe: false,
        smr: false,
        pitr: false,
        smr_invoked: false,
        local_xtr: false,
        dont_map_reply: false,
        nonce: 1,
        source_eid: Address::None,
        itr_rlocs: vec![Address::Ipv4([100, 64, 0, 2].into())],
        records: vec![RequestRecord {
            eid_mask_len: 24,
            eid: Address::DistinguishedName("r-a".into()),
        }],
        map_reply_record: None,
    };
    let bytes = Message::MapRequest(req.clone()).encode().unwrap();
    let record = &bytes[bytes.len() - 8..];
    assert_eq!(record, &[0, 24, 0, 17, b'r', b'-', b'a', 0]);
    assert_eq!(parse(&bytes), Ok(Message::MapRequest(req.clone())));
    let view = parse_map_request(&bytes).unwrap();
    let asked = view.records().next().unwrap();
    assert_eq!(asked.eid.distinguished_name(), Some((0, "r-a")));
    assert!(asked.prefix().is_err(), "a name is not an IP prefix");

    let with = |tail: &[u8]| {
        let mut b = bytes[..bytes.len() - 6].to_vec();
        b.extend_from_slice(tail);
        b
    };
    let kind = |b: &[u8]| parse(b).unwrap_err().kind;
    // No NUL before the end of the message.
    assert_eq!(
        kind(&with(&[0, 17, b'r', b'-', b'a'])),
        ParseErrorKind::BadDistinguishedName("no NUL")
    );
    // Empty, and a byte outside printable ASCII.
    assert_eq!(
        kind(&with(&[0, 17, 0])),
        ParseErrorKind::BadDistinguishedName("empty name")
    );
    assert_eq!(
        kind(&with(&[0, 17, b'r', 0xc3, 0])),
        ParseErrorKind::BadDistinguishedName("not printable ASCII")
    );
    // A mask longer than the name.
    let mut long_mask = bytes.clone();
    let at = long_mask.len() - 7;
    long_mask[at] = 25;
    assert_eq!(
        kind(&long_mask),
        ParseErrorKind::BadMaskLen {
            mask_len: 25,
            max: 24
        }
    );

    // Nothing unencodable is written.
    for bad in ["", "a\0b", "é", &"x".repeat(256)] {
        let mut r = req.clone();
        r.records[0].eid = Address::DistinguishedName(bad.into());
        r.records[0].eid_mask_len = 0;
        assert!(
            matches!(
                Message::MapRequest(r).encode(),
                Err(EncodeError::BadDistinguishedName(_))
            ),
            "{bad:?}"
        );
    }
}
