//! The borrowed Map-Request view agrees with the owned parser on any bytes.
//! Shared by tests/robustness.rs and the fuzz target (fuzz/fuzz_targets),
//! so it uses nothing but lisp-wire.

use lisp_wire::{parse, parse_map_request, EidPrefix, Message, ParseErrorKind};

/// Panics unless [`parse_map_request`] accepts `bytes` exactly when
/// [`parse`] reads a Map-Request (plain or in an ECM) from them, reads the
/// same fields, and fails with the same error when both fail on a
/// Map-Request. Returns whether the view accepted `bytes`.
pub fn view_agrees_with_parse(bytes: &[u8]) -> bool {
    let view = parse_map_request(bytes);
    let owned = parse(bytes);
    let (request, inner) = match &owned {
        Ok(Message::MapRequest(r)) => (Some(r), None),
        Ok(Message::Ecm(e)) => match &*e.message {
            Message::MapRequest(r) => (Some(r), Some(e)),
            _ => (None, None),
        },
        _ => (None, None),
    };
    let Some(request) = request else {
        let err = view.expect_err("the view accepted what is no Map-Request");
        // Where both read a Map-Request, both fail the same way.
        let is_request = |b: &[u8]| b.first().is_some_and(|t| t >> 4 == 1);
        let ecm_of_request = bytes.first().is_some_and(|t| t >> 4 == 8)
            && ecm_payload(bytes).is_some_and(is_request);
        if let Err(owned_err) = &owned {
            if is_request(bytes) || ecm_of_request {
                assert_eq!(&err, owned_err, "view and parse fail differently");
            }
        }
        if owned.is_ok() {
            assert!(
                matches!(
                    err.kind,
                    ParseErrorKind::NotAMapRequest(_) | ParseErrorKind::NestedEcm
                ),
                "{err}"
            );
        }
        return false;
    };
    let view = view.unwrap_or_else(|e| panic!("parse read a Map-Request, the view: {e}"));
    assert_eq!(&view.to_map_request(), request);
    assert_eq!(view.nonce(), request.nonce);
    assert_eq!(view.source_eid().to_address(), request.source_eid);
    assert_eq!(
        view.source_eid().innermost_ip(),
        request.source_eid.innermost_ip()
    );
    assert!(view
        .itr_rlocs()
        .eq(request.itr_rlocs.iter().map(|a| a.ip().unwrap())));
    assert_eq!(view.records().len(), request.records.len());
    for (v, r) in view.records().zip(&request.records) {
        assert_eq!(v.eid_mask_len, r.eid_mask_len);
        assert_eq!(v.eid.to_address(), r.eid);
        assert_eq!(v.prefix(), EidPrefix::from_wire(&r.eid, r.eid_mask_len));
        // The map-server reads a name lookup from the view.
        assert_eq!(v.eid.distinguished_name(), r.eid.distinguished_name());
    }
    match (view.ecm(), inner) {
        (None, None) => {}
        (Some(h), Some(e)) => {
            assert_eq!(h.inner, e.inner);
            assert_eq!(
                (h.security, h.ddt, h.to_etr, h.to_ms),
                (e.security, e.ddt, e.to_etr, e.to_ms)
            );
            assert_eq!(
                h.checksum_zero,
                bytes[14..16] == [0, 0] && bytes[4] >> 4 == 4
            );
        }
        _ => panic!("the view and parse disagree on the ECM"),
    }
    true
}

/// The inner LISP message of an ECM, going by its IP header length.
fn ecm_payload(bytes: &[u8]) -> Option<&[u8]> {
    let ip = bytes.get(4..)?;
    let hdr = match ip.first()? >> 4 {
        4 => (ip[0] & 0x0f) as usize * 4,
        6 => 40,
        _ => return None,
    };
    ip.get(hdr + 8..)
}

/// Panics unless every locator of `msg` that reads as a WireGuard candidate
/// reads back the same once re-encoded the way lispwg sends it, and
/// [`LocatorInfo`](lisp_wire::LocatorInfo) says the same as the candidate.
pub fn candidates_read_back(msg: &Message) {
    use lisp_wire::{LocatorInfo, WgLocator};
    for rec in records(msg) {
        let _ = EidPrefix::of_record(rec);
        let _ = rec.best_locator();
        let _ = rec.wg_key();
        for r in &rec.rlocs {
            let info = LocatorInfo::from_address(&r.locator);
            let Some(wg) = WgLocator::from_address(&r.locator, 51820) else {
                continue;
            };
            let info = info.expect("a candidate is a locator");
            assert_eq!(
                (info.rloc, info.wg_key, info.private_rloc),
                (wg.endpoint.ip(), Some(wg.key), wg.private)
            );
            assert_eq!(
                (info.relayed, info.behind_nat()),
                (wg.is_relayed(), wg.is_behind_nat())
            );
            assert_eq!(
                WgLocator::from_address(&wg.to_address(), 1).as_ref(),
                Some(&wg)
            );
        }
    }
}

fn records(msg: &Message) -> Vec<&lisp_wire::EidRecord> {
    match msg {
        Message::MapRequest(r) => r.map_reply_record.iter().collect(),
        Message::MapReply(r) => r.records.iter().collect(),
        Message::MapRegister(r) => r.records.iter().collect(),
        Message::MapNotify(n) | Message::MapNotifyAck(n) => n.records.iter().collect(),
        Message::Ecm(e) => records(&e.message),
    }
}
