//! Writes the seed corpus of the `parse` fuzz target (fuzz/README.md):
//!
//! ```text
//! cargo test -p lisp-wire --test fuzz_seeds -- --ignored
//! ```
//!
//! Valid messages of every kind give libFuzzer a head start past the type,
//! count and length checks. The corpus directory is not versioned.

mod common;

use lisp_wire::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use std::net::SocketAddr;

/// The message lispwg sends most: a signed Map-Register of a WireGuard
/// locator, with the xTR-ID trailer.
fn wireguard_register() -> Vec<u8> {
    let endpoint: SocketAddr = "192.0.2.10:51820".parse().unwrap();
    let rloc = RlocRecord::new(1, 100, wireguard_locator(endpoint, [7; 32]));
    let eid = EidPrefix::host(7, "10.0.0.2".parse().unwrap());
    MapRegister {
        proxy_reply: true,
        security: false,
        rtr: false,
        want_map_notify: true,
        nonce: 1,
        auth: Authentication::unsigned(KeyId::HmacSha256),
        records: vec![EidRecord::new(eid, 1440, vec![rloc])],
        xtr_site: Some(XtrSiteId {
            xtr_id: [1; 16],
            site_id: 1,
        }),
    }
    .encode_signed(b"seed")
    .unwrap()
}

#[test]
#[ignore = "writes fuzz/corpus/parse; run with --ignored"]
fn write_fuzz_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/parse");
    std::fs::create_dir_all(&dir).unwrap();
    let mut runner = TestRunner::deterministic();
    let strategy = common::message();
    let mut seeds = vec![wireguard_register()];
    for _ in 0..300 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        seeds.push(m.encode().unwrap());
    }
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), s).unwrap();
    }
    println!("{} seeds in {}", seeds.len(), dir.display());
}
