//! Every message kind lisp-wire emits decodes in Wireshark's LISP dissector
//! (tshark) to the fields we put in, with no malformed packet, no error
//! expert info and no undissected bytes (DESIGN.md, "Wire format").
//!
//! The payloads go through the testbed's tshark pipeline (`testbed::tshark`),
//! the one DESIGN.md names: `od -Ax -tx1 -v | text2pcap -q -u 61000,4342`,
//! then `tshark -T json -e <fields>` with IP and UDP checksum validation on,
//! so the inner checksums of an ECM are checked by Wireshark too, several
//! payloads in one capture.
//!
//! What Wireshark 4.0 cannot show: the Security Key LCAF (type 11) body is
//! skipped with a "not dissected yet" *warning*, so the WireGuard key and the
//! NAT-Traversal LCAF nested in it are invisible to it. The NAT-Traversal
//! LCAF lispwg nests there is therefore also decoded on its own, as a bare
//! locator, to check its encoding. Type 5 (Map-Notify-Ack) is shown as an
//! unknown type. HMACs are not checked by Wireshark (tests/vectors.rs checks
//! them against openssl).
//!
//! tshark and text2pcap are required: the tests fail, never skip, without
//! them (scripts/test.sh installs them; or `apt-get install tshark`).

mod common;

use lisp_wire::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use std::net::{IpAddr, SocketAddr};
use testbed::tshark::{decode_payloads, Frame, CHECKSUM_GOOD, SEVERITY_ERROR};

// ---------------------------------------------------------------------------
// The tshark pipeline is the testbed's
// ---------------------------------------------------------------------------

/// What can be checked of a Map-Notify-Ack, which Wireshark 4.0 shows as
/// "Unknown (5)" and hands whole to the `data` dissector: no errors, the
/// type, and that exactly our payload reached it.
#[track_caller]
fn assert_clean_notify_ack(f: &Frame, payload: &[u8]) {
    f.assert_no_errors();
    assert!(f.one("frame.protocols").ends_with(":lisp:data"), "{f}");
    assert_eq!(f.all("lisp.type").last(), Some(&"5"), "{f}");
    f.expect("data.data", &[&hex(payload)]);
    f.expect("data.len", &[&payload.len().to_string()]);
}

/// Encodes `msg`, checks lisp-wire reads it back, and decodes it with tshark.
fn decode(msg: &Message) -> Frame {
    let bytes = msg.encode().expect("encodable");
    decode_bytes(bytes)
}

fn decode_bytes(bytes: Vec<u8>) -> Frame {
    parse(&bytes).expect("lisp-wire parses its own output");
    let frame = decode_payloads(&[bytes]).pop().unwrap();
    frame.assert_clean();
    frame
}

// ---------------------------------------------------------------------------
// Messages as lispwg builds them
// ---------------------------------------------------------------------------

const SITE_KEY: &[u8] = b"lispwg-site-key";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn key(seed: u8) -> [u8; 32] {
    std::array::from_fn(|i| seed.wrapping_add(i as u8))
}

fn nonce_str(n: u64) -> String {
    format!("{n:#018x}")
}

/// A positive record: the WireGuard locator (priority 1, weight 100) and a
/// plain-AFI fallback locator (priority 2, weight 50).
fn wg_record(eid: EidPrefix, endpoint: &str, plain: &str) -> EidRecord {
    let wg = RlocRecord {
        local: true,
        ..RlocRecord::new(1, 100, wireguard_locator(sock(endpoint), key(1)))
    };
    EidRecord::new(
        eid,
        1440,
        vec![wg, RlocRecord::new(2, 50, Address::from(ip(plain)))],
    )
}

/// A keyless record with one plain-AFI locator, as a standard LISP peer sends.
fn plain_record(eid: EidPrefix, rloc: &str, priority: u8, weight: u8) -> EidRecord {
    EidRecord::new(
        eid,
        60,
        vec![RlocRecord::new(priority, weight, Address::from(ip(rloc)))],
    )
}

fn pfx(iid: u32, addr: &str, len: u8) -> EidPrefix {
    EidPrefix::new(iid, ip(addr), len).unwrap()
}

fn request_plain() -> MapRequest {
    MapRequest {
        authoritative: false,
        probe: false,
        smr: false,
        pitr: false,
        smr_invoked: false,
        local_xtr: false,
        dont_map_reply: false,
        nonce: 0x1111_2222_3333_4444,
        source_eid: Address::from(ip("10.0.0.1")),
        itr_rlocs: vec![
            Address::from(ip("192.0.2.1")),
            Address::from(ip("2001:db8::1")),
        ],
        records: vec![
            RequestRecord {
                eid_mask_len: 32,
                eid: pfx(0, "10.0.0.2", 32).to_address(),
            },
            RequestRecord {
                eid_mask_len: 128,
                eid: pfx(0, "fd00::2", 128).to_address(),
            },
        ],
        map_reply_record: None,
    }
}

/// IID 7 source EID, IID 7 and IID 42 records, and the requester's own
/// WireGuard mapping (M bit), as an xTR asks for a peer.
fn request_iid() -> MapRequest {
    MapRequest {
        nonce: 0x5555_6666_7777_8888,
        source_eid: pfx(7, "10.0.0.1", 32).to_address(),
        itr_rlocs: vec![Address::from(ip("192.0.2.1"))],
        records: vec![
            RequestRecord {
                eid_mask_len: 32,
                eid: pfx(7, "10.0.0.2", 32).to_address(),
            },
            RequestRecord {
                eid_mask_len: 64,
                eid: pfx(42, "fd00:42::", 64).to_address(),
            },
        ],
        map_reply_record: Some(wg_record(
            pfx(7, "10.0.0.1", 32),
            "192.0.2.1:51820",
            "192.0.2.1",
        )),
        ..request_plain()
    }
}

fn ecm(inner_src: &str, inner_dst: &str, req: MapRequest) -> Message {
    Message::Ecm(Ecm {
        security: false,
        ddt: false,
        to_etr: false,
        to_ms: false,
        inner: InnerHeader {
            src: ip(inner_src),
            dst: ip(inner_dst),
            ttl: 64,
            src_port: 61001,
            dst_port: LISP_CONTROL_PORT,
        },
        message: Box::new(Message::MapRequest(req)),
    })
}

fn registered_records() -> Vec<EidRecord> {
    vec![
        wg_record(pfx(7, "10.0.0.2", 32), "192.0.2.10:51820", "198.51.100.10"),
        wg_record(
            pfx(42, "fd00:42::", 64),
            "[2001:db8::10]:51821",
            "2001:db8::20",
        ),
    ]
}

fn xtr_site() -> XtrSiteId {
    XtrSiteId {
        xtr_id: std::array::from_fn(|i| 0x10 + i as u8),
        site_id: 0xa1,
    }
}

fn register(key_id: KeyId) -> MapRegister {
    MapRegister {
        proxy_reply: true,
        security: false,
        rtr: false,
        want_map_notify: true,
        nonce: 0x0102_0304_0506_0708,
        auth: Authentication::unsigned(key_id),
        records: registered_records(),
        xtr_site: Some(xtr_site()),
    }
}

fn notify() -> MapNotify {
    MapNotify {
        nonce: 0x0102_0304_0506_0708,
        auth: Authentication::unsigned(KeyId::HmacSha256),
        records: vec![
            wg_record(pfx(7, "10.0.0.2", 32), "192.0.2.10:51820", "198.51.100.10"),
            plain_record(pfx(0, "fd00::2", 128), "2001:db8::30", 3, 10),
        ],
        xtr_site: Some(xtr_site()),
    }
}

/// tshark prints FT_BYTES as lower-case hex without separators.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------
// One test per message kind
// ---------------------------------------------------------------------------

#[test]
fn checker_flags_a_truncated_message() {
    // Guards the guard: if tshark renamed its fields the checks below would
    // pass vacuously.
    let mut bytes = Message::MapRegister(register(KeyId::HmacSha256))
        .encode()
        .unwrap();
    bytes.truncate(60);
    let frame = decode_payloads(&[bytes]).pop().unwrap();
    assert!(frame.has("_ws.malformed"), "{frame}");
    assert!(frame
        .all("_ws.expert.severity")
        .iter()
        .any(|s| s.parse::<u64>().unwrap() >= SEVERITY_ERROR));
    assert!(std::panic::catch_unwind(|| frame.assert_clean()).is_err());
}

#[test]
fn map_request_plain_afi() {
    let m = request_plain();
    let f = decode(&Message::MapRequest(m.clone()));
    f.expect("lisp.type", &["1"]);
    f.expect("lisp.nonce", &[&nonce_str(m.nonce)]);
    f.expect("lisp.irc", &["1"]);
    f.expect("lisp.records", &["2"]);
    f.expect("lisp.mreq.flags.mrp", &["0"]);
    f.expect("lisp.mreq.srceid.ipv4", &["10.0.0.1"]);
    f.expect("lisp.mreq.itr_rloc_ipv4", &["192.0.2.1"]);
    f.expect("lisp.mreq.itr_rloc_ipv6", &["2001:db8::1"]);
    f.expect("lisp.mreq.record.prefix.length", &["32", "128"]);
    f.expect("lisp.mreq.record.prefix.ipv4", &["10.0.0.2"]);
    f.expect("lisp.mreq.record.prefix.ipv6", &["fd00::2"]);
    f.expect("lisp.lcaf.type", &[]);
}

/// Fields of `request_iid()`, plain or inside an ECM.
fn check_request_iid(f: &Frame, m: &MapRequest) {
    f.expect("lisp.nonce", &[&nonce_str(m.nonce)]);
    f.expect("lisp.irc", &["0"]);
    f.expect("lisp.records", &["2"]);
    f.expect("lisp.mreq.flags.mrp", &["1"]);
    f.expect("lisp.mreq.itr_rloc_ipv4", &["192.0.2.1"]);
    f.expect("lisp.mreq.record.prefix.length", &["32", "64"]);
    // Source EID, two request records, the Map-Reply record's EID; then the
    // Security Key LCAF of its WireGuard locator.
    f.expect("lisp.lcaf.type", &["2", "2", "2", "2", "11"]);
    f.expect("lisp.lcaf.iid", &["7", "7", "42", "7"]);
    f.expect("lisp.lcaf.iid.ipv4", &["10.0.0.1", "10.0.0.2", "10.0.0.1"]);
    f.expect("lisp.lcaf.iid.ipv6", &["fd00:42::"]);
    f.expect("lisp.mapping.eid.masklen", &["32"]);
    f.expect("lisp.loc.priority", &["1", "2"]);
    f.expect("lisp.loc.weight", &["100", "50"]);
    f.expect("lisp.loc.locator", &["192.0.2.1"]);
    assert!(f.has("lisp.undecoded"), "Security Key body: {f}");
}

#[test]
fn map_request_instance_id_with_map_reply_record() {
    let m = request_iid();
    let f = decode(&Message::MapRequest(m.clone()));
    f.expect("lisp.type", &["1"]);
    check_request_iid(&f, &m);
}

#[test]
fn ecm_ipv4_inner_header() {
    let m = request_iid();
    let f = decode(&ecm("192.0.2.1", "198.51.100.1", m.clone()));
    f.expect(
        "frame.protocols",
        &["eth:ethertype:ip:udp:lisp:ip:udp:lisp"],
    );
    f.expect("lisp.type", &["8", "1"]);
    // Outer (text2pcap's), then inner header.
    f.expect("ip.src", &["10.1.1.1", "192.0.2.1"]);
    f.expect("ip.dst", &["10.2.2.2", "198.51.100.1"]);
    f.expect("udp.srcport", &["61000", "61001"]);
    f.expect("udp.dstport", &["4342", "4342"]);
    // assert_clean() already checked every status is good; make sure the
    // inner ones were verified at all.
    f.expect("ip.checksum.status", &[CHECKSUM_GOOD, CHECKSUM_GOOD]);
    f.expect("udp.checksum.status", &[CHECKSUM_GOOD, CHECKSUM_GOOD]);
    check_request_iid(&f, &m);
}

#[test]
fn ecm_ipv6_inner_header() {
    let m = request_plain();
    let f = decode(&ecm("2001:db8::1", "2001:db8::100", m.clone()));
    f.expect(
        "frame.protocols",
        &["eth:ethertype:ip:udp:lisp:ipv6:udp:lisp"],
    );
    f.expect("lisp.type", &["8", "1"]);
    f.expect("ipv6.src", &["2001:db8::1"]);
    f.expect("ipv6.dst", &["2001:db8::100"]);
    f.expect("udp.srcport", &["61000", "61001"]);
    f.expect("udp.checksum.status", &[CHECKSUM_GOOD, CHECKSUM_GOOD]);
    f.expect("lisp.nonce", &[&nonce_str(m.nonce)]);
    f.expect("lisp.records", &["2"]);
    f.expect("lisp.mreq.record.prefix.ipv6", &["fd00::2"]);
}

#[test]
fn map_reply_with_wireguard_and_plain_locators() {
    let m = MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce: 0x0a0b_0c0d_0e0f_1011,
        records: vec![
            wg_record(pfx(7, "10.0.0.2", 32), "192.0.2.10:51820", "198.51.100.10"),
            wg_record(
                pfx(0, "fd00::2", 128),
                "[2001:db8::10]:51821",
                "2001:db8::20",
            ),
        ],
    };
    let f = decode(&Message::MapReply(m.clone()));
    f.expect("lisp.type", &["2"]);
    f.expect("lisp.nonce", &[&nonce_str(m.nonce)]);
    f.expect("lisp.records", &["2"]);
    f.expect("lisp.mapping.ttl", &["1440", "1440"]);
    f.expect("lisp.mapping.loccnt", &["2", "2"]);
    f.expect("lisp.mapping.eid.masklen", &["32", "128"]);
    f.expect("lisp.lcaf.iid", &["7"]);
    f.expect("lisp.lcaf.iid.ipv4", &["10.0.0.2"]);
    f.expect("lisp.mapping.eid.ipv6", &["fd00::2"]);
    // The WireGuard locators are Security Key LCAFs whose length Wireshark
    // honours (the next RLOC-record is read at the right place); their body,
    // with the nested NAT-Traversal LCAF, is not dissected (a warning).
    f.expect("lisp.lcaf.type", &["2", "11", "11"]);
    let wg_len = |ep: &str| (wireguard_locator(sock(ep), key(1)).encoded_len() - 8).to_string();
    f.expect(
        "lisp.lcaf.length",
        &[
            "10",
            &wg_len("192.0.2.10:51820"),
            &wg_len("[2001:db8::10]:51821"),
        ],
    );
    assert_eq!(wg_len("192.0.2.10:51820"), "64");
    assert!(f.has("lisp.undecoded"));
    f.expect("lisp.loc.afi", &["16387", "1", "16387", "2"]);
    f.expect("lisp.loc.priority", &["1", "2", "1", "2"]);
    f.expect("lisp.loc.weight", &["100", "50", "100", "50"]);
    f.expect("lisp.loc.flags.local", &["1", "0", "1", "0"]);
    f.expect("lisp.loc.flags.reach", &["1", "1", "1", "1"]);
    f.expect("lisp.loc.locator", &["198.51.100.10", "2001:db8::20"]);
}

#[test]
fn nat_traversal_lcaf_of_the_wireguard_locator_decodes() {
    // Wireshark cannot look inside the Security Key LCAF, so decode the
    // NAT-Traversal LCAF that wireguard_locator() nests there on its own.
    let natt = |ep: &str| match wireguard_locator(sock(ep), key(2)) {
        Address::SecurityKey(sk) => *sk.address,
        other => panic!("not a Security Key LCAF: {other:?}"),
    };
    let m = MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce: 0x42,
        records: vec![EidRecord::new(
            pfx(9, "10.9.0.0", 16),
            10,
            vec![
                RlocRecord::new(1, 100, natt("192.0.2.10:51820")),
                RlocRecord::new(1, 0, natt("[2001:db8::10]:51821")),
            ],
        )],
    };
    let f = decode(&Message::MapReply(m));
    f.expect("lisp.nonce", &["0x0000000000000042"]);
    f.expect("lisp.lcaf.type", &["2", "7", "7"]);
    f.expect("lisp.lcaf.iid", &["9"]);
    f.expect("lisp.lcaf.iid.ipv4", &["10.9.0.0"]);
    f.expect("lisp.lcaf.natt.msport", &["4342", "4342"]);
    f.expect("lisp.lcaf.natt.etrport", &["51820", "51821"]);
    // Global ETR RLOC, MS RLOC (none), private ETR RLOC.
    f.expect("lisp.lcaf.natt.rloc.afi", &["1", "0", "1", "2", "0", "2"]);
    f.expect("lisp.lcaf.natt.rloc.ipv4", &["192.0.2.10", "192.0.2.10"]);
    f.expect(
        "lisp.lcaf.natt.rloc.ipv6",
        &["2001:db8::10", "2001:db8::10"],
    );
    f.expect("lisp.loc.priority", &["1", "1"]);
    f.expect("lisp.loc.weight", &["100", "0"]);
}

#[test]
fn negative_map_reply() {
    let m = MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce: 0xdead_beef_0000_0001,
        records: vec![
            EidRecord::negative(pfx(0, "10.0.0.0", 8), 1, Action::NativelyForward),
            EidRecord::negative(pfx(7, "fd00:7::", 48), 15, Action::SendMapRequest),
        ],
    };
    let f = decode(&Message::MapReply(m.clone()));
    f.expect("lisp.type", &["2"]);
    f.expect("lisp.nonce", &[&nonce_str(m.nonce)]);
    f.expect("lisp.records", &["2"]);
    f.expect("lisp.mapping.ttl", &["1", "15"]);
    f.expect("lisp.mapping.loccnt", &["0", "0"]);
    f.expect("lisp.mapping.act", &["1", "2"]);
    f.expect("lisp.mapping.eid.masklen", &["8", "48"]);
    f.expect("lisp.mapping.eid.ipv4", &["10.0.0.0"]);
    f.expect("lisp.lcaf.iid", &["7"]);
    f.expect("lisp.lcaf.iid.ipv6", &["fd00:7::"]);
    f.expect("lisp.loc.priority", &[]);
}

/// Fields of `registered_records()` in a Map-Register.
fn check_registered_records(f: &Frame) {
    f.expect("lisp.records", &["2"]);
    f.expect("lisp.mapping.eid.masklen", &["32", "64"]);
    f.expect("lisp.lcaf.type", &["2", "11", "2", "11"]);
    f.expect("lisp.lcaf.iid", &["7", "42"]);
    f.expect("lisp.lcaf.iid.ipv4", &["10.0.0.2"]);
    f.expect("lisp.lcaf.iid.ipv6", &["fd00:42::"]);
    f.expect("lisp.loc.priority", &["1", "2", "1", "2"]);
    f.expect("lisp.loc.weight", &["100", "50", "100", "50"]);
    f.expect("lisp.loc.locator", &["198.51.100.10", "2001:db8::20"]);
}

#[test]
fn map_register_hmac_sha256_with_xtr_id() {
    let m = register(KeyId::HmacSha256);
    let bytes = m.encode_signed(SITE_KEY).unwrap();
    assert_eq!(auth::verify(&bytes, SITE_KEY), Ok(KeyId::HmacSha256));
    let f = decode_bytes(bytes.clone());
    f.expect("lisp.type", &["3"]);
    f.expect("lisp.nonce", &[&nonce_str(m.nonce)]);
    f.expect("lisp.mreg.flags.pmr", &["1"]);
    f.expect("lisp.mreg.flags.wmn", &["1"]);
    f.expect("lisp.mreg.flags.xtrid", &["1"]);
    f.expect("lisp.mreg.flags.sec", &["0"]);
    f.expect("lisp.mreg.flags.rtr", &["0"]);
    f.expect("lisp.keyid", &["0x0002"]);
    f.expect("lisp.authlen", &["32"]);
    f.expect("lisp.auth", &[&hex(&bytes[16..48])]);
    check_registered_records(&f);
    f.expect("lisp.xtrid", &[&hex(&xtr_site().xtr_id)]);
    f.expect("lisp.siteid", &["00000000000000a1"]);
}

#[test]
fn map_register_hmac_sha1_plain_afi() {
    let m = MapRegister {
        proxy_reply: false,
        want_map_notify: false,
        nonce: 0x77,
        records: vec![plain_record(pfx(0, "10.1.0.0", 16), "192.0.2.77", 5, 20)],
        xtr_site: None,
        ..register(KeyId::HmacSha1)
    };
    let bytes = m.encode_signed(SITE_KEY).unwrap();
    assert_eq!(auth::verify(&bytes, SITE_KEY), Ok(KeyId::HmacSha1));
    let f = decode_bytes(bytes.clone());
    f.expect("lisp.type", &["3"]);
    f.expect("lisp.nonce", &["0x0000000000000077"]);
    f.expect("lisp.mreg.flags.pmr", &["0"]);
    f.expect("lisp.mreg.flags.wmn", &["0"]);
    f.expect("lisp.mreg.flags.xtrid", &["0"]);
    f.expect("lisp.keyid", &["0x0001"]);
    f.expect("lisp.authlen", &["20"]);
    f.expect("lisp.auth", &[&hex(&bytes[16..36])]);
    f.expect("lisp.records", &["1"]);
    f.expect("lisp.mapping.eid.masklen", &["16"]);
    f.expect("lisp.mapping.eid.ipv4", &["10.1.0.0"]);
    f.expect("lisp.lcaf.type", &[]);
    f.expect("lisp.loc.priority", &["5"]);
    f.expect("lisp.loc.weight", &["20"]);
    f.expect("lisp.loc.locator", &["192.0.2.77"]);
    f.expect("lisp.xtrid", &[]);
}

/// Fields of `notify()`.
fn check_notify_records(f: &Frame) {
    f.expect("lisp.records", &["2"]);
    f.expect("lisp.mapping.eid.masklen", &["32", "128"]);
    f.expect("lisp.lcaf.type", &["2", "11"]);
    f.expect("lisp.lcaf.iid", &["7"]);
    f.expect("lisp.lcaf.iid.ipv4", &["10.0.0.2"]);
    f.expect("lisp.mapping.eid.ipv6", &["fd00::2"]);
    f.expect("lisp.loc.priority", &["1", "2", "3"]);
    f.expect("lisp.loc.weight", &["100", "50", "10"]);
    f.expect("lisp.loc.locator", &["198.51.100.10", "2001:db8::30"]);
}

#[test]
fn map_notify() {
    let m = notify();
    let bytes = m.encode_signed_notify(SITE_KEY).unwrap();
    let f = decode_bytes(bytes.clone());
    f.expect("lisp.type", &["4"]);
    f.expect("lisp.nonce", &[&nonce_str(m.nonce)]);
    f.expect("lisp.mnot.flags.xtrid", &["1"]);
    f.expect("lisp.keyid", &["0x0002"]);
    f.expect("lisp.authlen", &["32"]);
    f.expect("lisp.auth", &[&hex(&bytes[16..48])]);
    check_notify_records(&f);
    f.expect("lisp.xtrid", &[&hex(&xtr_site().xtr_id)]);
    f.expect("lisp.siteid", &["00000000000000a1"]);
}

#[test]
fn map_notify_ack() {
    // Wireshark 4.0 does not dissect type 5. The Map-Notify-Ack has the
    // Map-Notify layout, so the same bytes with the type set to 4 show that
    // everything after the type is well formed (the MAC no longer matches,
    // but Wireshark does not check MACs).
    let m = notify();
    let ack = m.encode_signed_ack(SITE_KEY).unwrap();
    assert!(matches!(parse(&ack), Ok(Message::MapNotifyAck(_))));
    let mut as_notify = ack.clone();
    as_notify[0] = (as_notify[0] & 0x0f) | (TYPE_MAP_NOTIFY << 4);
    let frames = decode_payloads(&[ack.clone(), as_notify]);

    assert_clean_notify_ack(&frames[0], &ack);

    let f = &frames[1];
    f.assert_clean();
    f.expect("lisp.type", &["4"]);
    f.expect("lisp.nonce", &[&nonce_str(m.nonce)]);
    f.expect("lisp.mnot.flags.xtrid", &["1"]);
    f.expect("lisp.keyid", &["0x0002"]);
    f.expect("lisp.authlen", &["32"]);
    f.expect("lisp.auth", &[&hex(&ack[16..48])]);
    check_notify_records(f);
    f.expect("lisp.xtrid", &[&hex(&xtr_site().xtr_id)]);
}

// ---------------------------------------------------------------------------
// Random messages
// ---------------------------------------------------------------------------

/// Turns a random message into one lispwg could emit, by removing the one
/// construct of `common::message()` that is valid for lisp-wire but that
/// Wireshark 4.0 cannot follow (and that lispwg never sends):
///
/// * NAT-Traversal RTR RLOCs of AFI 0: Wireshark's NAT-T dissector counts
///   the two port fields twice (`remaining -= 4` and then `-= 2` twice), so
///   it stops 4 bytes early and leaves a trailing 2-byte RTR RLOC to `data`.
///   An RTR RLOC of AFI 0 says nothing; lispwg sends no RTR RLOCs at all.
///
/// (Two other constructs this test found are now refused by lisp-wire
/// itself: the Map-Notify R bit, whose MS-RTR authentication block it does
/// not implement, and ITR-RLOCs that are not IP addresses.)
///
/// An ECM's inner UDP header is also made the way lispwg sends it: to port
/// 4342 from an ephemeral port. Wireshark picks the inner dissector by port,
/// trying the lower one first, so a random low source port (e.g. 496) would
/// be dissected as another protocol (PIM Auto-RP).
fn as_lispwg_emits(m: Message) -> Message {
    fn addr(a: &mut Address) {
        match a {
            Address::None | Address::Ipv4(_) | Address::Ipv6(_) => {}
            Address::InstanceId { address, .. } => addr(address),
            Address::SecurityKey(sk) => addr(&mut sk.address),
            Address::NatTraversal(n) => {
                n.rtr_rlocs.retain(|r| *r != Address::None);
                for a in [
                    &mut n.global_etr_rloc,
                    &mut n.ms_rloc,
                    &mut n.private_etr_rloc,
                ] {
                    addr(a);
                }
                n.rtr_rlocs.iter_mut().for_each(addr);
            }
        }
    }
    fn records(rs: &mut [EidRecord]) {
        for r in rs {
            addr(&mut r.eid);
            r.rlocs.iter_mut().for_each(|l| addr(&mut l.locator));
        }
    }
    match m {
        Message::MapRequest(mut r) => {
            addr(&mut r.source_eid);
            r.records.iter_mut().for_each(|q| addr(&mut q.eid));
            records(r.map_reply_record.as_mut_slice());
            Message::MapRequest(r)
        }
        Message::MapReply(mut r) => {
            records(&mut r.records);
            Message::MapReply(r)
        }
        Message::MapRegister(mut r) => {
            records(&mut r.records);
            Message::MapRegister(r)
        }
        Message::MapNotify(mut n) => {
            records(&mut n.records);
            Message::MapNotify(n)
        }
        Message::MapNotifyAck(mut n) => {
            records(&mut n.records);
            Message::MapNotifyAck(n)
        }
        Message::Ecm(mut e) => {
            e.inner.dst_port = LISP_CONTROL_PORT;
            e.inner.src_port |= 0xc000; // 49152 and up: the dynamic range
            e.message = Box::new(as_lispwg_emits(*e.message));
            Message::Ecm(e)
        }
    }
}

/// The bytes of the Map-Notify-Ack in `m` (itself or inside an ECM).
fn notify_ack_bytes(m: &Message) -> Option<Vec<u8>> {
    match m {
        Message::MapNotifyAck(_) => m.encode().ok(),
        Message::Ecm(e) => notify_ack_bytes(&e.message),
        _ => None,
    }
}

/// Number of random messages; `LISP_WIRE_TSHARK_CASES` overrides it for a
/// longer hunt.
fn random_cases() -> usize {
    std::env::var("LISP_WIRE_TSHARK_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

#[test]
fn random_messages_decode_cleanly() {
    let mut runner = TestRunner::deterministic();
    let strategy = common::message();
    let msgs: Vec<Message> = (0..random_cases())
        .map(|_| as_lispwg_emits(strategy.new_tree(&mut runner).unwrap().current()))
        .collect();
    let payloads: Vec<Vec<u8>> = msgs.iter().map(|m| m.encode().unwrap()).collect();
    for (p, m) in payloads.iter().zip(&msgs) {
        assert_eq!(parse(p).as_ref(), Ok(m));
    }
    let frames = decode_payloads(&payloads);
    let mut failures = Vec::new();
    for (i, (f, m)) in frames.iter().zip(&msgs).enumerate() {
        let checked = std::panic::catch_unwind(|| {
            if let Some(ack) = notify_ack_bytes(m) {
                assert_clean_notify_ack(f, &ack)
            } else {
                f.assert_clean()
            }
        });
        if checked.is_err() {
            failures.push(format!("#{i}: {m:?}\n  bytes {}\n  {f}", hex(&payloads[i])));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} random messages do not decode cleanly:\n{}",
        failures.len(),
        msgs.len(),
        failures.join("\n\n")
    );
}
