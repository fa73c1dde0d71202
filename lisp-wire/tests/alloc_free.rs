//! The map-server's request path allocates nothing: reading a Map-Request
//! through the borrowed view, plain or in an ECM, good or bad, and answering
//! it by copying pre-encoded EID-records into a buffer with room count zero
//! heap allocations on this thread (a counting global allocator, per thread
//! so the test harness's own threads do not interfere).

use lisp_wire::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap allocations `f` makes on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let v = f();
    (ALLOCATIONS.with(Cell::get) - before, v)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A request as an xTR sends it: IID source EID, two ITR-RLOCs, two
/// records, and its own WireGuard mapping (M bit).
fn request() -> MapRequest {
    let own = EidRecord::new(
        EidPrefix::host(7, ip("10.0.0.1")),
        1440,
        vec![RlocRecord::new(
            1,
            100,
            WgLocator::new(SocketAddr::new(ip("192.0.2.1"), 51820), [3; 32])
                .with_private(ip("10.9.0.1"))
                .with_rtrs([ip("203.0.113.1")])
                .to_address(),
        )],
    );
    MapRequest {
        itr_rlocs: vec![
            Address::from(ip("100.64.0.2")),
            Address::from(ip("fd64::2")),
        ],
        records: vec![
            RequestRecord {
                eid_mask_len: 32,
                eid: EidPrefix::host(7, ip("10.0.0.2")).to_address(),
            },
            RequestRecord {
                eid_mask_len: 64,
                eid: EidPrefix::new(0, ip("fd00::"), 64).unwrap().to_address(),
            },
        ],
        map_reply_record: Some(own),
        ..MapRequest::for_eid(
            0x1122,
            EidPrefix::host(7, ip("10.0.0.1")).to_address(),
            ip("100.64.0.2"),
            EidPrefix::host(7, ip("10.0.0.2")),
        )
    }
}

/// Reads every field the map-server uses.
fn read_all(bytes: &[u8]) -> Result<u64, ParseError> {
    let req = parse_map_request(bytes)?;
    let mut acc = req.nonce();
    acc += req.probe() as u64 + req.smr() as u64 + req.dont_map_reply() as u64;
    if let Some(h) = req.ecm() {
        acc += h.inner.src_port as u64 + h.checksum_zero as u64;
    }
    acc += req
        .source_eid()
        .eid_host()
        .map_or(0, |p| p.prefix_len() as u64);
    acc += req.source_eid().innermost_ip().is_some() as u64;
    acc += req.itr_rlocs().filter(IpAddr::is_ipv4).count() as u64;
    for r in req.records() {
        acc += r
            .prefix()
            .map_or(0, |p| p.iid as u64 + p.prefix_len() as u64);
    }
    acc += req.map_reply_record_bytes().map_or(0, |b| b.len() as u64);
    Ok(acc)
}

#[test]
fn reading_a_request_allocates_nothing() {
    let plain = Message::MapRequest(request()).encode().unwrap();
    let ecm = request()
        .encapsulated(ip("100.64.0.2"), 61001, ip("100.64.0.1"))
        .encode()
        .unwrap();
    let mut lig = ecm.clone();
    lig[14..16].copy_from_slice(&[0, 0]);
    let mut bad = ecm.clone();
    *bad.last_mut().unwrap() ^= 0xff;
    let mut short = plain.clone();
    short.truncate(plain.len() - 3);
    let reply = Message::MapReply(MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce: 1,
        records: vec![],
    })
    .encode()
    .unwrap();

    for (name, bytes, ok) in [
        ("plain", &plain, true),
        ("ecm", &ecm, true),
        ("lig", &lig, true),
        ("bad UDP checksum", &bad, false),
        ("truncated", &short, false),
        ("not a request", &reply, false),
    ] {
        // Warm up anything lazily initialised, then count.
        let _ = read_all(bytes);
        let (n, result) = allocations(|| read_all(bytes));
        assert_eq!(result.is_ok(), ok, "{name}: {result:?}");
        assert_eq!(n, 0, "{name}: {n} allocations");
    }
    // The counter does count: the owned parse allocates.
    let (n, _) = allocations(|| parse(&plain));
    assert!(n > 0);
}

#[test]
fn answering_by_copy_allocates_nothing() {
    let records: Vec<Vec<u8>> = [
        WgLocator::new(SocketAddr::new(ip("192.0.2.10"), 51820), [1; 32]),
        WgLocator::new(SocketAddr::new(ip("2001:db8::10"), 51821), [2; 32])
            .with_rtrs([ip("2001:db8::99")]),
    ]
    .iter()
    .enumerate()
    .map(|(i, w)| {
        let rec = EidRecord::new(
            EidPrefix::host(7, IpAddr::from([10, 0, 0, i as u8])),
            1440,
            vec![RlocRecord::new(1, 100, w.to_address())],
        );
        let mut b = Vec::new();
        rec.encode_into(&mut b).unwrap();
        b
    })
    .collect();
    let request = Message::MapRequest(request()).encode().unwrap();
    let mut out = Vec::with_capacity(1500);
    let (n, ()) = allocations(|| {
        let req = parse_map_request(&request).unwrap();
        out.clear();
        encode_map_reply(
            req.nonce(),
            ReplyFlags::default(),
            records.iter().map(Vec::as_slice),
            &mut out,
        )
        .unwrap();
    });
    assert_eq!(n, 0, "{n} allocations");
    let Ok(Message::MapReply(reply)) = parse(&out) else {
        panic!("not a reply")
    };
    assert_eq!((reply.nonce, reply.records.len()), (0x1122, 2));
}

use proptest::prelude::*;

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn any_locator() -> impl Strategy<Value = WgLocator> {
    (
        any_ip(),
        any::<u16>(),
        any::<[u8; 32]>(),
        proptest::option::of(any_ip()),
        proptest::collection::vec(any_ip(), 0..4),
    )
        .prop_map(|(ip, port, key, private, rtrs)| {
            let w = WgLocator::new(SocketAddr::new(ip, port), key).with_rtrs(rtrs);
            match private {
                Some(p) => w.with_private(p),
                None => w,
            }
        })
}

fn any_prefix() -> impl Strategy<Value = EidPrefix> {
    (any::<u32>(), any_ip(), any::<u8>()).prop_map(|(iid, ip, len)| {
        let iid = if iid % 3 == 0 { 0 } else { iid };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        EidPrefix::new(iid, ip, len % (max + 1)).unwrap()
    })
}

proptest! {
    /// Writing a record directly is byte for byte the codec's encoding.
    #[test]
    fn a_record_written_directly_is_the_encoded_one(
        prefix in any_prefix(),
        ttl in any::<u32>(),
        version in 0u16..0x1000,
        locators in proptest::collection::vec((any::<u8>(), any::<u8>(), any_locator()), 0..4),
    ) {
        let record = EidRecord {
            map_version: version,
            ..EidRecord::new(
                prefix,
                ttl,
                locators
                    .iter()
                    .map(|(p, w, l)| RlocRecord::new(*p, *w, l.to_address()))
                    .collect(),
            )
        };
        let mut want = Vec::new();
        record.encode_into(&mut want).unwrap();
        let mut got = vec![0xee];
        EidRecord::encode_header_into(prefix, ttl, version, locators.len() as u8, &mut got).unwrap();
        for (p, w, l) in &locators {
            l.encode_rloc_record_into(*p, *w, &mut got).unwrap();
        }
        prop_assert_eq!(&got[1..], &want[..]);
    }
}

#[test]
fn writing_a_record_directly_allocates_nothing() {
    let w = WgLocator::new(SocketAddr::new(ip("192.0.2.10"), 51820), [1; 32])
        .with_private(ip("10.1.0.5"));
    let mut out = Vec::with_capacity(1500);
    let (n, r) = allocations(|| {
        EidRecord::encode_header_into(EidPrefix::host(7, ip("10.0.0.1")), 10, 3, 1, &mut out)
            .and_then(|()| w.encode_rloc_record_into(1, 100, &mut out))
    });
    assert_eq!((n, r), (0, Ok(())));
    assert!(EidRecord::encode_header_into(
        EidPrefix::host(0, ip("10.0.0.1")),
        1,
        0x1000,
        0,
        &mut out
    )
    .is_err());
}
