//! Fuzzes `lisp_wire::parse`, the function every byte from the network goes
//! through: it must never panic, and whatever it accepts must survive
//! encode → parse unchanged (a message the map-server or an xTR accepted
//! can always be re-sent, e.g. echoed in a Map-Notify).

#![no_main]

use libfuzzer_sys::fuzz_target;
use lisp_wire::{auth, parse, EidPrefix, EidRecord, Message};

fuzz_target!(|data: &[u8]| {
    // MAC checking reads the same untrusted bytes before parsing does.
    let _ = auth::verify(data, b"fuzz-key");

    let Ok(msg) = parse(data) else { return };
    let bytes = msg
        .encode()
        .unwrap_or_else(|e| panic!("parsed {msg:?} but cannot encode it: {e}"));
    let again = parse(&bytes).unwrap_or_else(|e| panic!("re-encoded {msg:?} does not parse: {e}"));
    assert_eq!(again, msg, "encode → parse changed the message");
    assert_eq!(again.encode().unwrap(), bytes, "encoding is not canonical");

    // What the map-server and the xTR read out of accepted records.
    for rec in records(&msg) {
        let _ = EidPrefix::of_record(rec);
        let _ = rec.best_locator();
        let _ = rec.wg_key();
    }
});

fn records(msg: &Message) -> Vec<&EidRecord> {
    match msg {
        Message::MapRequest(r) => r.map_reply_record.iter().collect(),
        Message::MapReply(r) => r.records.iter().collect(),
        Message::MapRegister(r) => r.records.iter().collect(),
        Message::MapNotify(n) | Message::MapNotifyAck(n) => n.records.iter().collect(),
        Message::Ecm(e) => records(&e.message),
    }
}
