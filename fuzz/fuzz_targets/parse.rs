//! Fuzzes `lisp_wire::parse`, the function every byte from the network goes
//! through: it must never panic, and whatever it accepts must survive
//! encode → parse unchanged (a message the map-server or an xTR accepted
//! can always be re-sent, e.g. echoed in a Map-Notify). The borrowed
//! Map-Request view (`parse_map_request`, the map-server's allocation-free
//! path) must never panic either, and must agree with `parse` on every
//! input. The record helpers the map-server and the xTR apply to accepted
//! messages run too, and WireGuard candidates must read back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lisp_wire::{auth, parse};

/// The same checks tests/robustness.rs runs.
#[path = "../../lisp-wire/tests/common/agree.rs"]
mod agree;

fuzz_target!(|data: &[u8]| {
    // MAC checking reads the same untrusted bytes before parsing does.
    let _ = auth::verify(data, b"fuzz-key");

    agree::view_agrees_with_parse(data);

    let Ok(msg) = parse(data) else { return };
    let bytes = msg
        .encode()
        .unwrap_or_else(|e| panic!("parsed {msg:?} but cannot encode it: {e}"));
    let again = parse(&bytes).unwrap_or_else(|e| panic!("re-encoded {msg:?} does not parse: {e}"));
    assert_eq!(again, msg, "encode → parse changed the message");
    assert_eq!(again.encode().unwrap(), bytes, "encoding is not canonical");

    agree::candidates_read_back(&msg);
});
