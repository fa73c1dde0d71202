//! The one tshark pipeline: LISP payloads or a capture file in, Wireshark's
//! view of each packet out, as [`Frame`]s of the fields asked for.
//!
//! Payloads go through the pipeline DESIGN.md names,
//! `od -Ax -tx1 -v | text2pcap -q -u 61000,4342`, then `tshark -T json -e
//! <field>…` with IP and UDP checksum validation on (so the inner checksums
//! of an ECM are checked too). Several payloads share one capture (od offsets
//! restart at 0 for each packet), so a test costs one tshark start.
//!
//! An unknown field name makes tshark fail, so a renamed field is an error,
//! not a silently empty list. These are helpers for tests: they panic, with
//! the reason, when a tool is missing or fails.

use crate::cmd::run_command;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The LISP fields lispwg's tests ask for.
pub const LISP_FIELDS: &[&str] = &[
    "frame.protocols",
    "_ws.malformed",
    "_ws.expert.severity",
    "_ws.expert.message",
    "ip.src",
    "ip.dst",
    "ip.checksum.status",
    "ipv6.src",
    "ipv6.dst",
    "udp.srcport",
    "udp.dstport",
    "udp.checksum.status",
    "lisp.type",
    "lisp.nonce",
    "lisp.records",
    "lisp.irc",
    "lisp.mreq.flags.mrp",
    "lisp.mreq.srceid.afi",
    "lisp.mreq.srceid.ipv4",
    "lisp.mreq.srceid_ipv6",
    "lisp.mreq.itr_rloc_ipv4",
    "lisp.mreq.itr_rloc_ipv6",
    "lisp.mreq.record.prefix.length",
    "lisp.mreq.record.prefix.afi",
    "lisp.mreq.record.prefix.ipv4",
    "lisp.mreq.record.prefix.ipv6",
    "lisp.mreq.record.prefix.dn",
    "lisp.mapping.eid.dn",
    "lisp.lcaf.iid.dn",
    "lisp.lcaf.afi_list.dn",
    "lisp.mreg.flags.pmr",
    "lisp.mreg.flags.sec",
    "lisp.mreg.flags.xtrid",
    "lisp.mreg.flags.rtr",
    "lisp.mreg.flags.wmn",
    "lisp.mnot.flags.xtrid",
    "lisp.keyid",
    "lisp.authlen",
    "lisp.auth",
    "lisp.xtrid",
    "lisp.siteid",
    "lisp.mapping.ttl",
    "lisp.mapping.loccnt",
    "lisp.mapping.eid.masklen",
    "lisp.mapping.act",
    "lisp.mapping.auth",
    "lisp.mapping.ver",
    "lisp.mapping.eid.afi",
    "lisp.mapping.eid.ipv4",
    "lisp.mapping.eid.ipv6",
    "lisp.lcaf.type",
    "lisp.lcaf.length",
    "lisp.lcaf.iid",
    "lisp.lcaf.iid.afi",
    "lisp.lcaf.iid.ipv4",
    "lisp.lcaf.iid.ipv6",
    "lisp.lcaf.afi_list.afi",
    "lisp.lcaf.afi_list.ipv4",
    "lisp.lcaf.afi_list.ipv6",
    "lisp.lcaf.natt.msport",
    "lisp.lcaf.natt.etrport",
    "lisp.lcaf.natt.rloc.afi",
    "lisp.lcaf.natt.rloc.ipv4",
    "lisp.lcaf.natt.rloc.ipv6",
    "lisp.loc.priority",
    "lisp.loc.weight",
    "lisp.loc.multicast_priority",
    "lisp.loc.multicast_weight",
    "lisp.loc.afi",
    "lisp.loc.locator",
    "lisp.loc.flags.local",
    "lisp.loc.flags.probe",
    "lisp.loc.flags.reach",
    "lisp.undecoded",
    "data.data",
    "data.len",
];

/// `_ws.expert.severity` of PI_ERROR; PI_WARN (e.g. the undissected
/// Security Key LCAF body) is 0x00600000 and allowed.
pub const SEVERITY_ERROR: u64 = 0x0080_0000;
/// `*.checksum.status` of a verified, good checksum.
pub const CHECKSUM_GOOD: &str = "1";

/// One decoded packet: the fields asked for, each with all its occurrences
/// in dissection order.
#[derive(Debug, Clone)]
pub struct Frame {
    layers: serde_json::Map<String, Value>,
    fields: Vec<String>,
}

impl Frame {
    /// Every occurrence of `field` (empty when absent). Panics on a field
    /// that was not asked for: a typo would otherwise pass as "absent".
    pub fn all(&self, field: &str) -> Vec<&str> {
        assert!(
            self.fields.iter().any(|f| f == field),
            "{field} is not among the fields asked from tshark"
        );
        match self.layers.get(field) {
            None => Vec::new(),
            Some(Value::Array(v)) => v.iter().map(|x| x.as_str().unwrap_or("?")).collect(),
            Some(other) => panic!("{field}: unexpected JSON {other}"),
        }
    }

    /// The single occurrence of `field`.
    #[track_caller]
    pub fn one(&self, field: &str) -> &str {
        match self.all(field)[..] {
            [v] => v,
            ref v => panic!("{field}: expected one value, got {v:?}\n{self}"),
        }
    }

    pub fn has(&self, field: &str) -> bool {
        !self.all(field).is_empty()
    }

    /// `field` occurs exactly with `want`, in this order.
    #[track_caller]
    pub fn expect(&self, field: &str, want: &[&str]) {
        assert_eq!(self.all(field), want, "field {field}\n{self}");
    }

    /// Wireshark found nothing wrong: no malformed packet, no expert info of
    /// error severity (warnings are allowed), and every checksum it verified
    /// is good.
    #[track_caller]
    pub fn assert_no_errors(&self) {
        assert!(!self.has("_ws.malformed"), "malformed packet\n{self}");
        let messages = self.all("_ws.expert.message");
        for (i, s) in self.all("_ws.expert.severity").iter().enumerate() {
            let sev: u64 = s.parse().unwrap_or_else(|_| panic!("severity {s:?}"));
            assert!(
                sev < SEVERITY_ERROR,
                "expert info of error severity: {:?}\n{self}",
                messages.get(i)
            );
        }
        for field in ["ip.checksum.status", "udp.checksum.status"] {
            for s in self.all(field) {
                assert_eq!(s, CHECKSUM_GOOD, "{field} is not good\n{self}");
            }
        }
    }

    /// No errors, and LISP dissected every byte: nothing was left to the
    /// generic `data` dissector.
    #[track_caller]
    pub fn assert_clean(&self) {
        self.assert_no_errors();
        let protocols = self.one("frame.protocols");
        assert!(
            protocols.ends_with(":lisp") && !protocols.split(':').any(|p| p == "data"),
            "bytes left undissected after LISP: {protocols}\n{self}"
        );
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string_pretty(&self.layers).map_err(|_| std::fmt::Error)?;
        write!(f, "tshark fields: {json}")
    }
}

/// Decodes the capture at `pcap` with tshark, `extra` options added, and
/// returns each packet's `fields`. Panics with tshark's error if it fails.
pub fn decode_pcap(pcap: &Path, fields: &[&str], extra: &[&str]) -> Vec<Frame> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-n").arg("-r").arg(pcap).args(extra);
    cmd.args(["-T", "json"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = run_command(&mut cmd, None).unwrap_or_else(|e| panic!("{e:#}"));
    let json: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("tshark JSON of {}: {e}", pcap.display()));
    json.as_array()
        .expect("tshark JSON is an array of packets")
        .iter()
        .map(|p| Frame {
            layers: p["_source"]["layers"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            fields: fields.iter().map(|f| f.to_string()).collect(),
        })
        .collect()
}

/// Decodes each payload as one UDP datagram 61000 → 4342 (IP and UDP
/// checksum validation on) and returns the [`LISP_FIELDS`] of each, in
/// order. The capture is kept (and its path printed) if the number of
/// packets does not match.
pub fn decode_payloads(payloads: &[Vec<u8>]) -> Vec<Frame> {
    let mut dump = Vec::new();
    for p in payloads {
        let od = run_command(Command::new("od").args(["-Ax", "-tx1", "-v"]), Some(p));
        dump.extend(od.unwrap_or_else(|e| panic!("{e:#}")));
    }
    let dir = crate::tempdir();
    let pcap = dir.path().join("msgs.pcap");
    let mut text2pcap = Command::new("text2pcap");
    text2pcap.args(["-q", "-u", "61000,4342", "-"]).arg(&pcap);
    run_command(&mut text2pcap, Some(&dump)).unwrap_or_else(|e| panic!("{e:#}"));
    let checks = [
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
    ];
    let frames = decode_pcap(&pcap, LISP_FIELDS, &checks);
    if frames.len() != payloads.len() {
        let kept = dir.keep();
        panic!(
            "tshark saw {} packets for {} payloads; capture kept in {}",
            frames.len(),
            payloads.len(),
            kept.display()
        );
    }
    frames
}
