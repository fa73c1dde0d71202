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
    4003 00 00 0b 00 0040                 # Security Key LCAF, length 64
       01 00 06 00                        #   key count 1, alg 6 (Curve25519+ChaCha20-Poly1305)
       0020 0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20
       4003 00 00 07 00 0012              #   NAT-Traversal LCAF, length 18
          10f6 ca6c                       #     MS port 4342, ETR (WireGuard) port 51820
          0001 c000020a 0000 0001 c000020a  # global ETR 192.0.2.10, MS none, private 192.0.2.10
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

    let mac = hex("f8599dfde5e82e63bb92ccd4110cb5def9b1531b5e555aabb409fe2eff7eca0b");
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
    let mac = hex("533b33d1c688c78df15f3c6ad1d323016f168615");
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

    // Stock lig leaves the inner IPv4 header checksum at zero: accepted.
    let mut lig = bytes.clone();
    lig[14..16].copy_from_slice(&[0, 0]);
    assert_eq!(parse(&lig).unwrap(), Message::Ecm(ecm));
    // Any other wrong value, including a one-bit change of a zero, is not.
    for bad in [[0x00, 0x01], [0x80, 0x00], [0xb2, 0x17]] {
        let mut b = bytes.clone();
        b[14..16].copy_from_slice(&bad);
        assert_eq!(
            parse(&b).unwrap_err(),
            ParseError {
                kind: ParseErrorKind::BadIpChecksum,
                offset: 4
            },
            "checksum {bad:02x?}"
        );
    }
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
