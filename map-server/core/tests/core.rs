//! The map-server core driven in memory with fake time.

use lisp_wire::*;
use map_server_core::*;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

const MS: &str = "100.64.0.1";
const A_CTL: &str = "100.64.0.2";
const B_CTL: &str = "100.64.0.3";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key_of(n: u8) -> [u8; 32] {
    [n; 32]
}

fn host(s: &str) -> EidPrefix {
    EidPrefix::host(0, ip(s))
}

struct Node {
    ctl: IpAddr,
    key: [u8; 32],
    site_key: Vec<u8>,
    eid: EidPrefix,
    rloc: SocketAddr,
}

fn node_a() -> Node {
    Node {
        ctl: ip(A_CTL),
        key: key_of(0xa),
        site_key: b"site-a".to_vec(),
        eid: host("10.0.0.1"),
        rloc: "192.0.2.10:51820".parse().unwrap(),
    }
}

fn node_b() -> Node {
    Node {
        ctl: ip(B_CTL),
        key: key_of(0xb),
        site_key: b"site-b".to_vec(),
        eid: host("10.0.0.2"),
        rloc: "198.51.100.20:51821".parse().unwrap(),
    }
}

fn peer_policy(name: &str, n: &Node) -> PeerPolicy {
    PeerPolicy {
        name: name.into(),
        control_address: n.ctl,
        wg_key: Some(n.key),
        site_key: n.site_key.clone(),
        allowed: vec![AllowedEid {
            prefix: n.eid,
            more_specifics: false,
        }],
        team: DEFAULT_TEAM.into(),
        expires: None,
        revoked: false,
        rotated_from: None,
    }
}

/// A map-server core whose commits always succeed, with the operations it
/// committed kept for inspection.
struct Ms {
    core: MapServer,
    stored: Vec<StoreOp>,
    /// What the map-server's WireGuard sees: (key, endpoint) per peer.
    seen: Vec<([u8; 32], SocketAddr)>,
}

impl From<MapServer> for Ms {
    fn from(core: MapServer) -> Self {
        Ms {
            core,
            stored: Vec::new(),
            seen: Vec::new(),
        }
    }
}

impl Deref for Ms {
    type Target = MapServer;
    fn deref(&self) -> &MapServer {
        &self.core
    }
}

impl DerefMut for Ms {
    fn deref_mut(&mut self) -> &mut MapServer {
        &mut self.core
    }
}

impl Ms {
    /// Carries out the core's commits (always successfully) and actions
    /// (endpoint reads answered with `seen`).
    fn commit_all(&mut self) {
        let now = Instant::now();
        for _ in 0..100 {
            let mut moved = false;
            while let Some(c) = self.core.poll_commit(now) {
                self.core.handle_commit_result(now, c.id, Ok(()));
                self.stored.extend(c.ops);
                moved = true;
            }
            while let Some((id, action)) = self.core.poll_action() {
                match action {
                    ControlAction::ReadEndpoints => {
                        let all = self.seen.iter().map(|&(k, e)| (k, Some(e))).collect();
                        self.core.handle_endpoints(now, id, Ok(all));
                    }
                    _ => self.core.handle_action_result(now, id, Ok(())),
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }
}

fn server(now: Instant) -> Ms {
    let policy = Policy {
        peers: vec![
            peer_policy("robot-a", &node_a()),
            peer_policy("robot-b", &node_b()),
        ],
        ..Policy::default()
    };
    MapServer::new(policy, now, 42).into()
}

fn record(eid: EidPrefix, key: [u8; 32], rloc: SocketAddr) -> EidRecord {
    EidRecord::new(
        eid,
        10,
        vec![RlocRecord::new(1, 100, wireguard_locator(rloc, key))],
    )
}

fn register_bytes(n: &Node, nonce: u64, records: Vec<EidRecord>) -> Vec<u8> {
    MapRegister::proxied(nonce, records)
        .encode_signed(&n.site_key)
        .unwrap()
}

fn from(n: &Node) -> SocketAddr {
    SocketAddr::new(n.ctl, 4342)
}

/// Commits what the core asks to persist, then takes what it sends.
fn drain(ms: &mut Ms) -> Vec<Transmit> {
    ms.commit_all();
    std::iter::from_fn(|| ms.poll_transmit()).collect()
}

fn drain_store(ms: &mut Ms) -> Vec<StoreOp> {
    ms.commit_all();
    std::mem::take(&mut ms.stored)
}

fn register(ms: &mut Ms, now: Instant, n: &Node, nonce: u64) -> Vec<Transmit> {
    let bytes = register_bytes(n, nonce, vec![record(n.eid, n.key, n.rloc)]);
    ms.handle_datagram(now, from(n), Via::Tunnel, &bytes);
    drain(ms)
}

fn ecm_request(n: &Node, nonce: u64, target: EidPrefix) -> Vec<u8> {
    MapRequest::for_eid(nonce, n.eid.to_address(), n.ctl, target)
        .encapsulated(n.ctl, 61000, ip(MS))
        .encode()
        .unwrap()
}

fn parse_notify(t: &Transmit, site_key: &[u8]) -> MapNotify {
    auth::verify(&t.payload, site_key).expect("notify signed with the peer's site key");
    match parse(&t.payload).unwrap() {
        Message::MapNotify(n) => n,
        other => panic!("expected Map-Notify, got {other:?}"),
    }
}

fn ack_bytes(n: &Node, notify: &MapNotify) -> Vec<u8> {
    MapNotify {
        auth: Authentication::unsigned(KeyId::HmacSha256),
        ..notify.clone()
    }
    .encode_signed_ack(&n.site_key)
    .unwrap()
}

fn snapshot(ms: &MapServer) -> Vec<(EidPrefix, Mapping)> {
    let mut v: Vec<_> = ms.registry().iter().map(|(p, m)| (p, m.clone())).collect();
    v.sort_by_key(|(p, _)| *p);
    v
}

#[test]
fn register_is_stored_persisted_and_answered_with_a_signed_notify() {
    let now = Instant::now();
    let mut ms = server(now);
    let a = node_a();
    let out = register(&mut ms, now, &a, 7);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, from(&a));
    assert_eq!(out[0].via, Via::Tunnel);
    let notify = parse_notify(&out[0], &a.site_key);
    assert_eq!(notify.nonce, 7);
    assert_eq!(EidPrefix::of_record(&notify.records[0]).unwrap(), a.eid);

    let (prefix, m) = ms.registry().lookup(0, a.eid.addr(), now).unwrap();
    assert_eq!(prefix, a.eid);
    assert_eq!(m.wg_key, Some(a.key));
    assert_eq!(m.rlocs[0].addr, a.rloc.ip());
    assert_eq!(m.rlocs[0].port, Some(a.rloc.port()));
    let stored = drain_store(&mut ms);
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(
        stored.iter().any(|op| matches!(op, StoreOp::Put { prefix, peer, .. } if *prefix == a.eid && peer == "robot-a")),
        "{stored:?}"
    );
    assert!(
        stored
            .iter()
            .any(|op| matches!(op, StoreOp::RegisterNonce { peer, nonce: 7 } if peer == "robot-a")),
        "the nonce that registered it is persisted with the mapping: {stored:?}"
    );
    assert_eq!(ms.counters().registrations, 1);
}

#[test]
fn resolve_gets_a_proxy_reply_after_the_destination_acks_its_notify() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    drain_store(&mut ms);

    // A asks for B: B is told about A first; A's reply waits for B's Ack.
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 99, b.eid),
    );
    let out = drain(&mut ms);
    assert_eq!(
        out.len(),
        1,
        "only the notify goes out before B acks: {out:?}"
    );
    assert_eq!(out[0].dst, SocketAddr::new(b.ctl, 4342));
    let notify = parse_notify(&out[0], &b.site_key);
    let rec = &notify.records[0];
    assert_eq!(
        EidPrefix::of_record(rec).unwrap(),
        a.eid,
        "B learns A's mapping from A's registration"
    );
    let (_, info) = rec.best_locator().unwrap();
    assert_eq!(
        (info.rloc, info.port, info.wg_key),
        (a.rloc.ip(), Some(a.rloc.port()), Some(a.key))
    );

    let t1 = now + Duration::from_millis(2);
    ms.handle_datagram(t1, from(&b), Via::Tunnel, &ack_bytes(&b, &notify));
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    // The reply goes to the ITR-RLOC at the ECM's inner source port.
    assert_eq!(out[0].dst, SocketAddr::new(a.ctl, 61000));
    let Message::MapReply(reply) = parse(&out[0].payload).unwrap() else {
        panic!("not a reply")
    };
    assert_eq!(reply.nonce, 99);
    let (_, info) = reply.records[0].best_locator().unwrap();
    assert_eq!(
        (info.rloc, info.port, info.wg_key),
        (b.rloc.ip(), Some(b.rloc.port()), Some(b.key))
    );
    assert_eq!(ms.pending_notifies(), 0);
    assert_eq!(ms.subscribers(&b.eid), 1, "A is subscribed to B");
    assert_eq!(ms.subscribers(&a.eid), 1, "B is subscribed to A");
    assert_eq!(ms.counters().notify_acks, 1);
}

#[test]
fn unacknowledged_notify_is_retransmitted_with_backoff_and_the_reply_released() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 5, b.eid),
    );
    let first = drain(&mut ms);
    assert_eq!(first.len(), 1);

    // Walk the clock: the reply is released at the hold time, and the notify
    // is retransmitted at growing intervals, then given up.
    let mut t = now;
    let mut retransmit_times = Vec::new();
    let mut reply_at = None;
    for _ in 0..200 {
        let Some(next) = ms.poll_timeout() else { break };
        if next > now + Duration::from_secs(30) {
            break;
        }
        t = next.max(t);
        ms.handle_timeout(t);
        for tx in drain(&mut ms) {
            match parse(&tx.payload).unwrap() {
                Message::MapNotify(_) => retransmit_times.push(t - now),
                Message::MapReply(_) => reply_at = Some(t - now),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(reply_at, Some(ms.policy().notify.reply_hold));
    let timing = ms.policy().notify;
    assert_eq!(retransmit_times.len(), timing.max_retransmits as usize);
    let gaps: Vec<_> = retransmit_times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "backoff grows: {gaps:?}"
    );
    assert_eq!(ms.pending_notifies(), 0);
    assert_eq!(ms.counters().notify_giveups, 1);
}

#[test]
fn registrations_expire_after_the_lifetime() {
    let now = Instant::now();
    let mut ms = server(now);
    let a = node_a();
    register(&mut ms, now, &a, 1);
    let lifetime = ms.policy().registration_lifetime;
    let almost = now + lifetime - Duration::from_secs(1);
    ms.handle_timeout(almost);
    assert!(ms.registry().lookup(0, a.eid.addr(), almost).is_some());
    let after = now + lifetime + Duration::from_secs(6);
    ms.handle_timeout(after);
    assert!(ms.registry().lookup(0, a.eid.addr(), after).is_none());
    assert_eq!(ms.registry().len(), 0, "swept");
    assert!(drain_store(&mut ms).contains(&StoreOp::Delete(a.eid)));

    // A refresh before expiry extends it.
    let mut ms = server(now);
    register(&mut ms, now, &a, 1);
    register(&mut ms, now + Duration::from_secs(60), &a, 2);
    let t = now + lifetime + Duration::from_secs(6);
    ms.handle_timeout(t);
    assert!(ms.registry().lookup(0, a.eid.addr(), t).is_some());
}

#[test]
fn unregistered_eid_gets_a_negative_reply_covering_the_largest_hole() {
    let now = Instant::now();
    let mut ms = server(now);
    let a = node_a();
    register(&mut ms, now, &a, 1);
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 3, host("10.0.0.9")),
    );
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    let Message::MapReply(reply) = parse(&out[0].payload).unwrap() else {
        panic!()
    };
    let rec = &reply.records[0];
    assert!(rec.rlocs.is_empty());
    assert_eq!(rec.action, Action::NativelyForward);
    assert_eq!(rec.ttl, ms.policy().negative_ttl_minutes);
    // 10.0.0.1 is registered, so the hole around 10.0.0.9 is 10.0.0.8/29.
    assert_eq!(
        EidPrefix::of_record(rec).unwrap(),
        EidPrefix::new(0, ip("10.0.0.8"), 29).unwrap()
    );
    assert_eq!(ms.counters().negative_replies, 1);
}

/// Sends `bytes` and checks that nothing changed, nothing was sent, and the
/// refusal was counted.
fn assert_refused(ms: &mut Ms, now: Instant, src: SocketAddr, via: Via, bytes: &[u8]) {
    let before = snapshot(ms);
    let counters_before = ms.counters().clone();
    ms.handle_datagram(now, src, via, bytes);
    assert!(drain(ms).is_empty(), "a refused message gets no answer");
    assert!(
        drain_store(ms).is_empty(),
        "a refused message persists nothing"
    );
    assert_eq!(
        snapshot(ms),
        before,
        "a refused message leaves the registry unchanged"
    );
    assert_ne!(ms.counters(), &counters_before, "a refusal is counted");
}

#[test]
fn refusals_leave_the_registry_unchanged() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    drain_store(&mut ms);

    // An EID outside A's authorisation, next to a valid record: the valid
    // record is not stored either.
    let outside = register_bytes(
        &a,
        10,
        vec![
            record(a.eid, a.key, a.rloc),
            record(host("10.0.0.77"), a.key, a.rloc),
        ],
    );
    assert_refused(&mut ms, now, from(&a), Via::Tunnel, &outside);
    assert_eq!(ms.counters().unauthorised, 1);

    // B's EID, registered by A.
    let hijack = register_bytes(&a, 11, vec![record(b.eid, a.key, a.rloc)]);
    assert_refused(&mut ms, now, from(&a), Via::Tunnel, &hijack);

    // A's EID with someone else's WireGuard key.
    let wrong_key = register_bytes(
        &a,
        12,
        vec![record(
            a.eid,
            key_of(0xee),
            "203.0.113.9:51820".parse().unwrap(),
        )],
    );
    assert_refused(&mut ms, now, from(&a), Via::Tunnel, &wrong_key);
    assert_eq!(ms.counters().unauthorised, 3);

    // Bad HMAC: signed with B's site key.
    let bad_mac = MapRegister {
        proxy_reply: true,
        security: false,
        rtr: false,
        want_map_notify: true,
        nonce: 13,
        auth: Authentication::unsigned(KeyId::HmacSha256),
        records: vec![record(a.eid, a.key, "203.0.113.9:51820".parse().unwrap())],
        xtr_site: None,
    }
    .encode_signed(&b.site_key)
    .unwrap();
    assert_refused(&mut ms, now, from(&a), Via::Tunnel, &bad_mac);
    assert_eq!(ms.counters().auth_failures, 1);

    // A replayed register (same nonce as the accepted one), even though its
    // content would move A.
    let replay = register_bytes(
        &a,
        1,
        vec![record(a.eid, a.key, "203.0.113.9:51820".parse().unwrap())],
    );
    assert_refused(&mut ms, now, from(&a), Via::Tunnel, &replay);
    assert_eq!(ms.counters().replays, 1);

    // Malformed: truncated, and a record whose locator count lies.
    let good = register_bytes(&a, 14, vec![record(a.eid, a.key, a.rloc)]);
    assert_refused(&mut ms, now, from(&a), Via::Tunnel, &good[..good.len() - 3]);
    let mut lying = good.clone();
    lying[48 + 4] = 2; // locator count of the first record
    assert_refused(&mut ms, now, from(&a), Via::Tunnel, &lying);
    assert_eq!(ms.counters().malformed, 2);

    // A valid register sent to the plain listener (not through the tunnel),
    // or from an unknown tunnel address.
    assert_refused(&mut ms, now, from(&a), Via::Plain, &good);
    assert_eq!(ms.counters().plain_refused, 1);
    assert_refused(
        &mut ms,
        now,
        "100.64.0.99:4342".parse().unwrap(),
        Via::Tunnel,
        &good,
    );
    assert_eq!(ms.counters().unknown_peers, 1);

    // The same message is accepted once it is sent properly.
    ms.handle_datagram(now, from(&a), Via::Tunnel, &good);
    assert_eq!(drain(&mut ms).len(), 1);
}

#[test]
fn requests_and_refusals_are_counted_per_control_peer() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    ms.handle_datagram(now, from(&a), Via::Tunnel, &ecm_request(&a, 3, b.eid));
    drain(&mut ms);
    // B signs with the wrong key: refused, and counted against B.
    let forged = MapRegister::proxied(4, vec![record(b.eid, b.key, b.rloc)])
        .encode_signed(b"not-b's-key")
        .unwrap();
    ms.handle_datagram(now, from(&b), Via::Tunnel, &forged);
    // Garbage from nobody configured is counted, but against no peer.
    ms.handle_datagram(
        now,
        "100.64.0.99:4342".parse().unwrap(),
        Via::Tunnel,
        b"\x01",
    );
    let c = ms.counters();
    assert_eq!(
        c.peer(0),
        PeerCounters {
            requests: 1,
            refusals: 0
        }
    );
    assert_eq!(
        c.peer(1),
        PeerCounters {
            requests: 0,
            refusals: 1
        }
    );
    assert_eq!(c.per_peer.len(), 2, "no series for an unconfigured sender");
    assert_eq!(c.malformed, 1);
}

#[test]
fn a_move_is_pushed_to_correspondents_which_ack() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 5, b.eid),
    );
    let notify = parse_notify(&drain(&mut ms)[0], &b.site_key);
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &notify));
    drain(&mut ms);

    // B moves: A (which resolved B) is pushed B's new RLOC.
    let t = now + Duration::from_secs(1);
    let moved = "203.0.113.5:51821".parse().unwrap();
    let bytes = register_bytes(&b, 3, vec![record(b.eid, b.key, moved)]);
    ms.handle_datagram(t, from(&b), Via::Tunnel, &bytes);
    let out = drain(&mut ms);
    let push: Vec<_> = out
        .iter()
        .filter(|tx| tx.dst == SocketAddr::new(a.ctl, 4342))
        .collect();
    assert_eq!(push.len(), 1, "{out:?}");
    let pushed = parse_notify(push[0], &a.site_key);
    let (_, info) = pushed.records[0].best_locator().unwrap();
    assert_eq!(SocketAddr::new(info.rloc, info.port.unwrap()), moved);
    assert_eq!(ms.counters().pushes, 1);
    ms.handle_datagram(t, from(&a), Via::Tunnel, &ack_bytes(&a, &pushed));
    assert_eq!(ms.pending_notifies(), 0);
}

#[test]
fn keyless_lisp_peers_register_and_resolve_on_the_plain_listener() {
    let now = Instant::now();
    let oor = PeerPolicy {
        name: "oor".into(),
        control_address: ip("192.0.2.77"),
        wg_key: None,
        site_key: b"oor-key".to_vec(),
        allowed: vec![AllowedEid {
            prefix: EidPrefix::new(3, ip("10.3.0.0"), 16).unwrap(),
            more_specifics: true,
        }],
        team: DEFAULT_TEAM.into(),
        expires: None,
        revoked: false,
        rotated_from: None,
    };
    let mut ms: Ms = MapServer::new(
        Policy {
            peers: vec![oor],
            plain_allowed: vec!["192.0.2.192/26".parse().unwrap()],
            ..Policy::default()
        },
        now,
        1,
    )
    .into();
    let eid = EidPrefix::new(3, ip("10.3.1.0"), 24).unwrap();
    let rec = EidRecord::new(
        eid,
        10,
        vec![RlocRecord::new(1, 50, Address::from(ip("192.0.2.77")))],
    );
    let reg = MapRegister {
        proxy_reply: true,
        security: false,
        rtr: false,
        want_map_notify: true,
        nonce: 8,
        auth: Authentication::unsigned(KeyId::HmacSha1),
        records: vec![rec],
        xtr_site: None,
    }
    .encode_signed(b"oor-key")
    .unwrap();
    ms.handle_datagram(now, "192.0.2.77:4342".parse().unwrap(), Via::Plain, &reg);
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    assert_eq!(
        auth::verify(&out[0].payload, b"oor-key"),
        Ok(KeyId::HmacSha1),
        "notify uses the register's algorithm"
    );

    // A source on the plain listener's allowed list may ask (like lig); the
    // reply is keyless.
    let asker = Node {
        ctl: ip("192.0.2.200"),
        key: [0; 32],
        site_key: vec![],
        eid: EidPrefix::host(3, ip("10.3.9.9")),
        rloc: "192.0.2.200:1".parse().unwrap(),
    };
    ms.handle_datagram(
        now,
        "192.0.2.200:4342".parse().unwrap(),
        Via::Plain,
        &ecm_request(&asker, 4, EidPrefix::host(3, ip("10.3.1.7"))),
    );
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, "192.0.2.200:61000".parse().unwrap());
    let Message::MapReply(reply) = parse(&out[0].payload).unwrap() else {
        panic!()
    };
    let (rloc, info) = reply.records[0].best_locator().unwrap();
    assert_eq!(
        (rloc.weight, info.rloc, info.wg_key, info.port),
        (50, ip("192.0.2.77"), None, None)
    );
}

#[test]
fn deregistration_with_ttl_zero_removes_the_mapping() {
    let now = Instant::now();
    let mut ms = server(now);
    let a = node_a();
    register(&mut ms, now, &a, 1);
    let mut rec = record(a.eid, a.key, a.rloc);
    rec.ttl = 0;
    ms.handle_datagram(
        now,
        from(&a),
        Via::Tunnel,
        &register_bytes(&a, 2, vec![rec]),
    );
    assert!(ms.registry().lookup(0, a.eid.addr(), now).is_none());
}

/// A's registration as the store hands it back at start-up.
fn persisted_mapping(a: &Node, now: Instant) -> Mapping {
    Mapping {
        rlocs: vec![Rloc {
            addr: a.rloc.ip(),
            port: Some(a.rloc.port()),
            priority: 1,
            weight: 100,
            relayed: false,
        }]
        .into_boxed_slice(),
        wg_key: Some(a.key),
        origin: Origin::Static,
        ttl_minutes: 10,
        map_version: 0,
        expires: Some(now + Duration::from_secs(100)),
    }
}

#[test]
fn restore_rechecks_persisted_mappings_against_the_policy() {
    let now = Instant::now();
    let mut ms = server(now);
    let a = node_a();
    let m = persisted_mapping(&a, now);
    assert!(ms.restore(a.eid, "robot-a", m.clone(), now));
    assert!(
        !ms.restore(host("10.0.0.50"), "robot-a", m.clone(), now),
        "not authorised"
    );
    assert!(!ms.restore(a.eid, "gone", m.clone(), now), "unknown peer");
    assert!(
        !ms.restore(
            a.eid,
            "robot-a",
            Mapping {
                wg_key: Some([1; 32]),
                ..m
            },
            now
        ),
        "key changed"
    );
    assert_eq!(
        ms.registry().lookup(0, a.eid.addr(), now).unwrap().1.origin,
        Origin::Peer(0)
    );
}

#[test]
fn restore_counts_entries_and_never_overrides_a_static_mapping() {
    let now = Instant::now();
    let a = node_a();
    let m = persisted_mapping(&a, now);
    let mut ms = server(now);
    assert!(ms.restore(a.eid, "robot-a", m.clone(), now));
    assert_eq!(
        ms.counters().entries,
        1,
        "the gauge counts restored entries"
    );

    // The operator has since made A's EID a static mapping: it stays static.
    let fixed = Mapping {
        wg_key: None,
        expires: None,
        ..m.clone()
    };
    let policy = Policy {
        static_mappings: vec![(a.eid, fixed)],
        ..ms.policy().clone()
    };
    let mut ms: Ms = MapServer::new(policy, now, 1).into();
    assert_eq!(ms.counters().entries, 1, "static mappings are counted");
    assert!(!ms.restore(a.eid, "robot-a", m, now));
    assert_eq!(ms.registry().get(&a.eid).unwrap().origin, Origin::Static);
    assert!(drain_store(&mut ms).contains(&StoreOp::Delete(a.eid)));
}

#[test]
fn with_push_moves_off_a_move_is_not_pushed() {
    let now = Instant::now();
    let policy = Policy {
        peers: vec![
            peer_policy("robot-a", &node_a()),
            peer_policy("robot-b", &node_b()),
        ],
        push_moves: false,
        ..Policy::default()
    };
    let mut ms: Ms = MapServer::new(policy, now, 42).into();
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 5, b.eid),
    );
    let notify = parse_notify(&drain(&mut ms)[0], &b.site_key);
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &notify));
    drain(&mut ms);
    let moved: SocketAddr = "203.0.113.5:51821".parse().unwrap();
    ms.handle_datagram(
        now,
        from(&b),
        Via::Tunnel,
        &register_bytes(&b, 3, vec![record(b.eid, b.key, moved)]),
    );
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1, "only B's own Map-Notify: {out:?}");
    assert_eq!(out[0].dst, from(&b));
    assert_eq!(
        ms.registry().lookup(0, b.eid.addr(), now).unwrap().1.rlocs[0].addr,
        moved.ip(),
        "the move is stored"
    );
    assert_eq!(ms.counters().pushes, 0);
}

#[test]
fn a_failed_commit_withholds_only_the_confirmation_and_is_retried() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 5, b.eid),
    );
    let notify = parse_notify(&drain(&mut ms)[0], &b.site_key);
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &notify));
    drain(&mut ms);

    // B moves while the disk is full.
    let t = now + Duration::from_secs(1);
    let moved: SocketAddr = "203.0.113.5:51821".parse().unwrap();
    let bytes = register_bytes(&b, 3, vec![record(b.eid, b.key, moved)]);
    ms.handle_datagram(t, from(&b), Via::Tunnel, &bytes);
    let commit = ms.poll_commit(t).expect("the move is to be persisted");
    ms.handle_commit_result(
        t,
        commit.id,
        Err(StoreFault("No space left on device".into())),
    );
    // The push waits only for the read of where B now is.
    let (id, action) = ms.poll_action().expect("an endpoint read");
    assert_eq!(action, ControlAction::ReadEndpoints);
    ms.handle_endpoints(t, id, Ok(vec![]));
    let out: Vec<Transmit> = std::iter::from_fn(|| ms.poll_transmit()).collect();
    assert!(
        out.iter().all(|tx| tx.dst != from(&b)),
        "B's registration is not confirmed: it is not on disk"
    );
    assert_eq!(
        out.iter().filter(|tx| tx.dst == from(&a)).count(),
        1,
        "the push to A does not wait for the disk"
    );
    let fault = ms.store_fault().expect("the fault shows");
    assert!(fault.error.contains("No space"));
    assert_eq!(ms.counters().withheld_notifies, 1);

    // No retry before the backoff; then the same change is committed.
    assert!(ms.poll_commit(t).is_none());
    let retry_at = ms.poll_timeout().unwrap();
    let retry = ms.poll_commit(retry_at).expect("retried");
    assert_eq!(retry.ops.len(), 2, "{:?}", retry.ops);
    assert!(retry
        .ops
        .iter()
        .any(|op| matches!(op, StoreOp::Put { prefix, .. } if *prefix == b.eid)));
    ms.handle_commit_result(retry_at, retry.id, Ok(()));
    assert!(ms.store_fault().is_none());
    // B re-registers (it got no notify) and is confirmed at once.
    let bytes = register_bytes(&b, 4, vec![record(b.eid, b.key, moved)]);
    ms.handle_datagram(retry_at, from(&b), Via::Tunnel, &bytes);
    let out = drain(&mut ms);
    assert_eq!(parse_notify(&out[0], &b.site_key).nonce, 4);
}

// ---- observed endpoints: nodes behind NAT ----------------------------------

/// From now on the map-server's WireGuard sees the peers at `seen` (at the
/// next read the core asks for).
fn observe(ms: &mut Ms, _now: Instant, seen: &[([u8; 32], SocketAddr)]) {
    ms.seen = seen.to_vec();
    ms.commit_all();
}

fn candidates_in(t: &Transmit) -> Vec<SocketAddr> {
    let records = match parse(&t.payload).unwrap() {
        Message::MapReply(r) => r.records,
        Message::MapNotify(n) => n.records,
        other => panic!("no records in {other:?}"),
    };
    records[0]
        .rlocs
        .iter()
        .map(|r| {
            let i = r.info().unwrap();
            SocketAddr::new(i.rloc, i.port.unwrap())
        })
        .collect()
}

/// A and B behind NATs: registered with private addresses, seen by the
/// map-server's WireGuard at their NATs' public endpoints.
fn natted() -> (Node, Node) {
    let mut a = node_a();
    a.rloc = "10.20.1.5:51820".parse().unwrap();
    let mut b = node_b();
    b.rloc = "10.30.1.5:51821".parse().unwrap();
    (a, b)
}

const A_PUBLIC: &str = "198.51.100.7:51820";
const B_PUBLIC: &str = "203.0.113.9:40001";

#[test]
fn a_node_behind_nat_is_handed_out_at_its_observed_endpoint() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = natted();
    let seen = [
        (a.key, A_PUBLIC.parse().unwrap()),
        (b.key, B_PUBLIC.parse().unwrap()),
    ];
    observe(&mut ms, now, &seen);
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    assert_eq!(ms.observed(1), Some(B_PUBLIC.parse().unwrap()));

    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 5, b.eid),
    );
    let out = drain(&mut ms);
    // B is told where A is seen; after B's ack, A gets B's public endpoint
    // and not its private address.
    let notify = &out[0];
    assert_eq!(
        candidates_in(notify),
        vec![A_PUBLIC.parse::<SocketAddr>().unwrap()]
    );
    let n = parse_notify(notify, &b.site_key);
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &n));
    let reply = drain(&mut ms);
    assert_eq!(
        candidates_in(&reply[0]),
        vec![B_PUBLIC.parse::<SocketAddr>().unwrap()]
    );
    // The locator says so: B is behind a NAT, at 10.30.1.5 behind it.
    let Ok(Message::MapReply(r)) = parse(&reply[0].payload) else {
        panic!("not a reply")
    };
    let info = r.records[0].rlocs[0].info().unwrap();
    assert!(info.behind_nat());
    assert_eq!(info.private_rloc, Some(b.rloc.ip()));
}

#[test]
fn behind_the_same_nat_peers_get_each_others_private_address_first() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = natted();
    let b_public: SocketAddr = "198.51.100.7:51821".parse().unwrap();
    observe(
        &mut ms,
        now,
        &[(a.key, A_PUBLIC.parse().unwrap()), (b.key, b_public)],
    );
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 5, b.eid),
    );
    let out = drain(&mut ms);
    let n = parse_notify(&out[0], &b.site_key);
    assert_eq!(
        candidates_in(&out[0])[0],
        a.rloc,
        "A's private address first"
    );
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &n));
    let reply = drain(&mut ms);
    assert_eq!(candidates_in(&reply[0]), vec![b.rloc, b_public]);
}

#[test]
fn a_nat_rebinding_is_pushed_to_correspondents() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = natted();
    let mut seen = [
        (a.key, A_PUBLIC.parse().unwrap()),
        (b.key, B_PUBLIC.parse().unwrap()),
    ];
    observe(&mut ms, now, &seen);
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 5, b.eid),
    );
    let n = parse_notify(&drain(&mut ms)[0], &b.site_key);
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &n));
    drain(&mut ms);

    // B's NAT restarts and maps it to another port; the periodic read sees
    // it at B's next keepalive. A, which resolved B, is pushed at once.
    let t = now + Duration::from_secs(30);
    let rebound: SocketAddr = "203.0.113.9:47777".parse().unwrap();
    seen[1].1 = rebound;
    ms.handle_timeout(t);
    observe(&mut ms, t, &seen);
    let out = drain(&mut ms);
    let about = |tx: &Transmit, eid: EidPrefix| {
        matches!(parse(&tx.payload), Ok(Message::MapNotify(n))
            if EidPrefix::of_record(&n.records[0]) == Ok(eid))
    };
    let push: Vec<_> = out
        .iter()
        .filter(|tx| tx.dst == from(&a) && about(tx, b.eid))
        .collect();
    assert_eq!(push.len(), 1, "{out:?}");
    assert_eq!(candidates_in(push[0]), vec![rebound]);
    // B itself is told where it is seen now.
    let own: Vec<_> = out
        .iter()
        .filter(|tx| tx.dst == from(&b) && about(tx, b.eid))
        .collect();
    assert_eq!(own.len(), 1, "{out:?}");
    assert!(candidates_in(own[0]).contains(&rebound));
    assert!(drain_store(&mut ms).contains(&StoreOp::Endpoint {
        peer: "robot-b".into(),
        endpoint: rebound
    }));
    assert_eq!(ms.counters().endpoint_changes, 3);
}

#[test]
fn a_restarted_map_server_wakes_peers_where_they_were_last_seen() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, _) = natted();
    let bytes = register_bytes(&a, 1, vec![record(a.eid, a.key, a.rloc)]);
    ms.handle_datagram(now, from(&a), Via::Tunnel, &bytes);
    let mapping = ms.registry().get(&a.eid).unwrap().clone();
    assert!(ms.restore_endpoint("robot-a", A_PUBLIC.parse().unwrap()));
    assert!(!ms.restore_endpoint("nobody", A_PUBLIC.parse().unwrap()));
    let mut fresh = server(now);
    assert!(fresh.restore(a.eid, "robot-a", mapping, now));
    fresh.restore_endpoint("robot-a", A_PUBLIC.parse().unwrap());
    fresh.finish_restore();
    let actions: Vec<_> = std::iter::from_fn(|| fresh.poll_action())
        .map(|(_, a)| a)
        .collect();
    assert!(
        actions.contains(&ControlAction::WakeControlPeer {
            peer: 0,
            endpoint: A_PUBLIC.parse().unwrap()
        }),
        "{actions:?}"
    );
}

#[test]
fn a_pair_resolving_each_other_at_once_gets_one_notify_and_one_responder() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    // A asks for B; B is told about A, A's reply waits for B's ack.
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 5, b.eid),
    );
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    let to_b = parse_notify(&out[0], &b.site_key);
    // Before acking, B asks for A too.
    ms.handle_datagram(
        now,
        SocketAddr::new(b.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&b, 6, a.eid),
    );
    assert!(
        drain(&mut ms).is_empty(),
        "no notify to A, and B's reply waits"
    );
    assert_eq!(ms.counters().crossed_requests, 1);
    // B acks the notify: both replies go out, after it.
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &to_b));
    let out = drain(&mut ms);
    let mut dsts: Vec<IpAddr> = out.iter().map(|t| t.dst.ip()).collect();
    dsts.sort();
    assert_eq!(dsts, vec![a.ctl, b.ctl]);
    assert!(out
        .iter()
        .all(|t| matches!(parse(&t.payload), Ok(Message::MapReply(_)))));
    assert_eq!(ms.pending_notifies(), 0);
}

#[test]
fn a_node_that_restarted_gets_its_correspondents_to_resolve_it_again() {
    let now = Instant::now();
    let mut policy = Policy {
        peers: vec![
            peer_policy("robot-a", &node_a()),
            peer_policy("robot-b", &node_b()),
        ],
        ..Policy::default()
    };
    policy.control_address = Some(ip(MS));
    let mut ms: Ms = MapServer::new(policy, now, 42).into();
    let (a, b) = (node_a(), node_b());
    let versioned = |n: &Node, v: u16| EidRecord {
        map_version: v,
        ..record(n.eid, n.key, n.rloc)
    };
    let reg = |n: &Node, nonce, v| register_bytes(n, nonce, vec![versioned(n, v)]);
    ms.handle_datagram(now, from(&a), Via::Tunnel, &reg(&a, 1, 7));
    ms.handle_datagram(now, from(&b), Via::Tunnel, &reg(&b, 2, 9));
    drain(&mut ms);
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 5, b.eid),
    );
    let n = parse_notify(&drain(&mut ms)[0], &b.site_key);
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &n));
    drain(&mut ms);
    // A refresh with the same version changes nothing.
    ms.handle_datagram(now, from(&b), Via::Tunnel, &reg(&b, 3, 9));
    assert_eq!(drain(&mut ms).len(), 1, "only B's confirmation");
    // B restarts: a new map version. A, which holds a tunnel to B, is asked
    // to resolve B again (an SMR from the map-server), not pushed.
    ms.handle_datagram(now, from(&b), Via::Tunnel, &reg(&b, 4, 10));
    let out = drain(&mut ms);
    let to_a: Vec<_> = out.iter().filter(|t| t.dst == from(&a)).collect();
    assert_eq!(to_a.len(), 1, "{out:?}");
    match parse(&to_a[0].payload).unwrap() {
        Message::MapRequest(r) => {
            assert!(r.smr, "a Solicit-Map-Request");
            assert_eq!(EidPrefix::from_wire(&r.records[0].eid, 32).unwrap(), b.eid);
        }
        other => panic!("expected an SMR, got {other:?}"),
    }
    assert_eq!(ms.counters().smrs, 1);
    assert_eq!(ms.counters().pushes, 0);
}

// ---- interop with standard LISP peers and tools ----------------------------

/// A keyless LISP peer (OOR) on the plain listener, allowed 10.3.0.0/16.
fn oor_policy() -> PeerPolicy {
    PeerPolicy {
        name: "oor".into(),
        control_address: ip("192.0.2.77"),
        wg_key: None,
        site_key: b"oor-key".to_vec(),
        allowed: vec![AllowedEid {
            prefix: EidPrefix::new(0, ip("10.3.0.0"), 16).unwrap(),
            more_specifics: true,
        }],
        team: DEFAULT_TEAM.into(),
        expires: None,
        revoked: false,
        rotated_from: None,
    }
}

/// OOR's registration of 10.3.1.0/24 at 192.0.2.77, signed HMAC-SHA-1 as
/// OOR does by default.
fn oor_register(nonce: u64) -> Vec<u8> {
    let rec = EidRecord::new(
        EidPrefix::new(0, ip("10.3.1.0"), 24).unwrap(),
        10,
        vec![RlocRecord::new(1, 100, Address::from(ip("192.0.2.77")))],
    );
    MapRegister {
        auth: Authentication::unsigned(KeyId::HmacSha1),
        ..MapRegister::proxied(nonce, vec![rec])
    }
    .encode_signed(b"oor-key")
    .unwrap()
}

fn reply_of(t: &Transmit) -> MapReply {
    match parse(&t.payload).unwrap() {
        Message::MapReply(r) => r,
        other => panic!("expected a Map-Reply, got {other:?}"),
    }
}

#[test]
fn a_keyless_peer_gets_no_notify_and_its_requester_no_held_reply() {
    let now = Instant::now();
    let a = node_a();
    let mut ms: Ms = MapServer::new(
        Policy {
            peers: vec![peer_policy("robot-a", &a), oor_policy()],
            ..Policy::default()
        },
        now,
        3,
    )
    .into();
    let oor_at: SocketAddr = "192.0.2.77:4342".parse().unwrap();
    ms.handle_datagram(now, oor_at, Via::Plain, &oor_register(1));
    assert_eq!(drain(&mut ms).len(), 1, "OOR's registration is confirmed");
    register(&mut ms, now, &a, 2);
    let notifies = ms.counters().notifies;

    // A resolves OOR's EID: the reply comes at once, and OOR hears nothing.
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 5, host("10.3.1.7")),
    );
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1, "only the reply: {out:?}");
    assert_eq!(out[0].dst, SocketAddr::new(a.ctl, 61000));
    let (_, info) = reply_of(&out[0]).records[0].best_locator().unwrap();
    assert_eq!((info.rloc, info.wg_key), (ip("192.0.2.77"), None));
    assert_eq!(ms.pending_notifies(), 0);
    assert_eq!(ms.counters().notifies, notifies);

    // OOR resolves A: A's reply at once, and A is not told about a peer it
    // could not program.
    let oor = Node {
        ctl: ip("192.0.2.77"),
        key: [0; 32],
        site_key: b"oor-key".to_vec(),
        eid: host("10.3.1.1"),
        rloc: oor_at,
    };
    ms.handle_datagram(now, oor_at, Via::Plain, &ecm_request(&oor, 6, a.eid));
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1, "only the reply: {out:?}");
    assert_eq!(out[0].dst, "192.0.2.77:61000".parse().unwrap());
    assert_eq!(reply_of(&out[0]).records[0].wg_key(), Some(a.key));
    assert_eq!(ms.pending_notifies(), 0);

    // Nothing is retransmitted later, nothing given up, and a move of A is
    // pushed to nobody.
    let later = now + Duration::from_secs(5);
    ms.handle_timeout(later);
    assert!(drain(&mut ms).is_empty());
    let moved: SocketAddr = "203.0.113.5:51820".parse().unwrap();
    ms.handle_datagram(
        later,
        from(&a),
        Via::Tunnel,
        &register_bytes(&a, 3, vec![record(a.eid, a.key, moved)]),
    );
    let out = drain(&mut ms);
    assert!(out.iter().all(|t| t.dst == from(&a)), "{out:?}");
    assert_eq!(ms.counters().notify_retransmits, 0);
    assert_eq!(ms.counters().notify_giveups, 0);
    assert_eq!(ms.counters().notifies, notifies + 1, "A's own confirmation");
}

/// `n`'s registration of its mapping at `rloc`, signed with `key_id`.
fn register_with(n: &Node, nonce: u64, rloc: SocketAddr, key_id: KeyId) -> Vec<u8> {
    MapRegister {
        auth: Authentication::unsigned(key_id),
        ..MapRegister::proxied(nonce, vec![record(n.eid, n.key, rloc)])
    }
    .encode_signed(&n.site_key)
    .unwrap()
}

#[test]
fn notifies_to_a_peer_are_signed_as_it_signs_its_registers() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    // A signs with SHA-256, B with SHA-1: each confirmation echoes it.
    for (n, nonce, kid) in [(&a, 1, KeyId::HmacSha256), (&b, 2, KeyId::HmacSha1)] {
        ms.handle_datagram(
            now,
            from(n),
            Via::Tunnel,
            &register_with(n, nonce, n.rloc, kid),
        );
        let out = drain(&mut ms);
        assert_eq!(auth::verify(&out[0].payload, &n.site_key), Ok(kid));
    }
    // A resolves B: B's correspondent notify is SHA-1.
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 5, b.eid),
    );
    let out = drain(&mut ms);
    assert_eq!(
        auth::verify(&out[0].payload, &b.site_key),
        Ok(KeyId::HmacSha1)
    );
    let n = parse_notify(&out[0], &b.site_key);
    let ack = MapNotify {
        auth: Authentication::unsigned(KeyId::HmacSha1),
        ..n
    }
    .encode_signed_ack(&b.site_key)
    .unwrap();
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack);
    assert_eq!(drain(&mut ms).len(), 1, "A's reply, released by the ack");

    // A moves: the push to B (which learned A) is SHA-1 too.
    let t = now + Duration::from_secs(1);
    let a_moved: SocketAddr = "203.0.113.5:51820".parse().unwrap();
    ms.handle_datagram(
        t,
        from(&a),
        Via::Tunnel,
        &register_with(&a, 3, a_moved, KeyId::HmacSha256),
    );
    let out = drain(&mut ms);
    let push: Vec<_> = out.iter().filter(|x| x.dst == from(&b)).collect();
    assert_eq!(push.len(), 1, "{out:?}");
    assert_eq!(
        auth::verify(&push[0].payload, &b.site_key),
        Ok(KeyId::HmacSha1)
    );
    assert_eq!(candidates_in(push[0]), vec![a_moved]);
    // B moves: the push to A stays SHA-256.
    let b_moved: SocketAddr = "203.0.113.6:51821".parse().unwrap();
    ms.handle_datagram(
        t,
        from(&b),
        Via::Tunnel,
        &register_with(&b, 4, b_moved, KeyId::HmacSha1),
    );
    let out = drain(&mut ms);
    let push: Vec<_> = out
        .iter()
        .filter(|x| x.dst == from(&a) && parse_notify(x, &a.site_key).nonce != 3)
        .collect();
    assert_eq!(push.len(), 1, "{out:?}");
    assert_eq!(
        auth::verify(&push[0].payload, &a.site_key),
        Ok(KeyId::HmacSha256)
    );
    // B switches to SHA-256: from then on, so do the notifies to it.
    ms.handle_datagram(
        t,
        from(&b),
        Via::Tunnel,
        &register_with(&b, 5, b.rloc, KeyId::HmacSha256),
    );
    drain(&mut ms);
    let a_back = register_with(&a, 6, a.rloc, KeyId::HmacSha256);
    ms.handle_datagram(t, from(&a), Via::Tunnel, &a_back);
    let out = drain(&mut ms);
    let push: Vec<_> = out.iter().filter(|x| x.dst == from(&b)).collect();
    assert_eq!(push.len(), 1, "{out:?}");
    assert_eq!(
        auth::verify(&push[0].payload, &b.site_key),
        Ok(KeyId::HmacSha256)
    );
}

#[test]
fn the_plain_listener_answers_only_allowed_sources_and_only_to_the_source() {
    let now = Instant::now();
    let a = node_a();
    let mut ms: Ms = MapServer::new(
        Policy {
            peers: vec![peer_policy("robot-a", &a), oor_policy()],
            plain_allowed: vec!["198.51.100.0/24".parse().unwrap()],
            ..Policy::default()
        },
        now,
        4,
    )
    .into();
    register(&mut ms, now, &a, 1);
    drain_store(&mut ms);
    let asker = |at: &str, eid: &str| Node {
        ctl: ip(at),
        key: [0; 32],
        site_key: vec![],
        eid: host(eid),
        rloc: SocketAddr::new(ip(at), 4342),
    };

    // A stranger learns nothing: no reply, refused and counted, whatever
    // the form of its request.
    let stranger = asker("203.0.113.66", "10.9.9.9");
    let plain = Message::MapRequest(MapRequest::for_eid(8, Address::None, stranger.ctl, a.eid))
        .encode()
        .unwrap();
    for bytes in [ecm_request(&stranger, 7, a.eid), plain] {
        assert_refused(&mut ms, now, stranger.rloc, Via::Plain, &bytes);
    }
    assert_eq!(ms.counters().plain_refused, 2);
    assert_eq!(ms.counters().replies, 0);

    // An allowed source whose request names a third address, as ITR-RLOC
    // and as the ECM's inner source: the reply goes to the source only.
    let victim = ip("203.0.113.99");
    let reflected = MapRequest::for_eid(9, Address::None, victim, a.eid)
        .encapsulated(victim, 5353, ip(MS))
        .encode()
        .unwrap();
    let allowed: SocketAddr = "198.51.100.5:40000".parse().unwrap();
    ms.handle_datagram(now, allowed, Via::Plain, &reflected);
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, SocketAddr::new(allowed.ip(), 5353));
    assert_eq!(reply_of(&out[0]).records[0].wg_key(), Some(a.key));
    // A plain Map-Request from it: to its source address and port.
    let plain = Message::MapRequest(MapRequest::for_eid(10, Address::None, victim, a.eid))
        .encode()
        .unwrap();
    ms.handle_datagram(now, allowed, Via::Plain, &plain);
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, allowed);

    // The configured keyless peer is answered without being on the list.
    let oor = asker("192.0.2.77", "10.3.1.1");
    ms.handle_datagram(now, oor.rloc, Via::Plain, &ecm_request(&oor, 11, a.eid));
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst.ip(), oor.ctl);
    assert_eq!(ms.counters().plain_refused, 2);
    assert!(out.iter().all(|t| t.dst.ip() != victim));
}

#[test]
fn a_zero_inner_checksum_is_accepted_and_counted() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    drain_store(&mut ms);
    let src = SocketAddr::new(a.ctl, 61000);
    // As lig sends it: the inner IPv4 header checksum (after the ECM's
    // 4-byte header, at offset 10 of the IP header) left at zero.
    let mut lig = ecm_request(&a, 5, host("10.0.0.99"));
    assert_ne!(&lig[14..16], &[0, 0]);
    lig[14] = 0;
    lig[15] = 0;
    ms.handle_datagram(now, src, Via::Tunnel, &lig);
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1, "answered");
    assert_eq!(reply_of(&out[0]).nonce, 5);
    assert_eq!(ms.counters().zero_checksum_requests, 1);
    // A wrong checksum that is not zero is refused, and not counted as lig.
    let mut wrong = ecm_request(&a, 6, host("10.0.0.99"));
    wrong[14] ^= 0x5a;
    assert_refused(&mut ms, now, src, Via::Tunnel, &wrong);
    assert_eq!(ms.counters().malformed, 1);
    assert_eq!(ms.counters().zero_checksum_requests, 1);
    // A correct one is not counted either.
    ms.handle_datagram(
        now,
        src,
        Via::Tunnel,
        &ecm_request(&a, 7, host("10.0.0.99")),
    );
    assert_eq!(drain(&mut ms).len(), 1);
    assert_eq!(ms.counters().zero_checksum_requests, 1);
}

// ---- the reply path: records written straight into the reply ---------------

/// The whole Map-Reply the map-server must send, built by the codec.
fn expected_reply(nonce: u64, record: EidRecord) -> Vec<u8> {
    Message::MapReply(MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce,
        records: vec![record],
    })
    .encode()
    .unwrap()
}

#[test]
fn a_reply_is_the_codecs_encoding_and_follows_every_change_of_a_mapping() {
    let now = Instant::now();
    let (a, b) = natted();
    let mut ms: Ms = MapServer::new(
        Policy {
            peers: vec![peer_policy("robot-a", &a), peer_policy("robot-b", &b)],
            plain_allowed: vec!["192.0.2.50/32".parse().unwrap()],
            ..Policy::default()
        },
        now,
        5,
    )
    .into();
    let asker: SocketAddr = "192.0.2.50:4342".parse().unwrap();
    let mut nonce = 100;
    // Asks for `eid` on the plain listener (no notify, nothing held).
    let mut ask = |ms: &mut Ms, t: Instant, eid: EidPrefix| {
        nonce += 1;
        let req = Message::MapRequest(MapRequest::for_eid(nonce, Address::None, asker.ip(), eid))
            .encode()
            .unwrap();
        ms.handle_datagram(t, asker, Via::Plain, &req);
        // (Anything else, e.g. a notify to a node about itself, is not
        // the reply.)
        let out: Vec<Transmit> = drain(ms).into_iter().filter(|x| x.dst == asker).collect();
        assert_eq!(out.len(), 1, "{out:?}");
        (nonce, out[0].payload.clone())
    };
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);

    // As registered, asked twice: byte for byte what the codec builds.
    for _ in 0..2 {
        let (n, bytes) = ask(&mut ms, now, a.eid);
        assert_eq!(bytes, expected_reply(n, record(a.eid, a.key, a.rloc)));
    }
    // A re-registers elsewhere.
    let moved: SocketAddr = "10.20.1.6:51820".parse().unwrap();
    ms.handle_datagram(
        now,
        from(&a),
        Via::Tunnel,
        &register_bytes(&a, 3, vec![record(a.eid, a.key, moved)]),
    );
    drain(&mut ms);
    let (n, bytes) = ask(&mut ms, now, a.eid);
    assert_eq!(bytes, expected_reply(n, record(a.eid, a.key, moved)));

    // The map-server's WireGuard sees A behind a NAT: its public endpoint,
    // with its own address behind it.
    let public: SocketAddr = A_PUBLIC.parse().unwrap();
    observe(&mut ms, now, &[(a.key, public)]);
    let t = now + Duration::from_secs(2);
    ms.handle_timeout(t);
    ms.commit_all();
    assert_eq!(ms.observed(0), Some(public));
    let natted_record = |ep: SocketAddr| {
        EidRecord::new(
            a.eid,
            10,
            vec![RlocRecord::new(
                1,
                100,
                WgLocator::new(ep, a.key)
                    .with_private(moved.ip())
                    .to_address(),
            )],
        )
    };
    let (n, bytes) = ask(&mut ms, t, a.eid);
    assert_eq!(bytes, expected_reply(n, natted_record(public)));
    // Its NAT remaps it.
    let rebound: SocketAddr = "198.51.100.7:47777".parse().unwrap();
    observe(&mut ms, t, &[(a.key, rebound)]);
    let t = t + Duration::from_secs(2);
    ms.handle_timeout(t);
    ms.commit_all();
    let (n, bytes) = ask(&mut ms, t, a.eid);
    assert_eq!(bytes, expected_reply(n, natted_record(rebound)));

    // B behind the same NAT gets A's private address first; the others
    // still get the common view.
    let b_public: SocketAddr = "198.51.100.7:51821".parse().unwrap();
    observe(&mut ms, t, &[(a.key, rebound), (b.key, b_public)]);
    let t = t + Duration::from_secs(2);
    ms.handle_timeout(t);
    ms.commit_all();
    ms.handle_datagram(
        t,
        SocketAddr::new(b.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&b, 7, a.eid),
    );
    // A acks what it is told (about B; about itself, where it is seen),
    // which releases B's reply.
    let mut out = drain(&mut ms);
    let mut reply = None;
    for _ in 0..4 {
        for x in std::mem::take(&mut out) {
            if x.dst == SocketAddr::new(b.ctl, 61000) {
                reply = Some(x);
            } else if x.dst == from(&a) {
                let n = parse_notify(&x, &a.site_key);
                ms.handle_datagram(t, from(&a), Via::Tunnel, &ack_bytes(&a, &n));
            }
        }
        out = drain(&mut ms);
    }
    let reply = reply.expect("B's reply");
    assert_eq!(candidates_in(&reply), vec![moved, rebound]);
    let (n, bytes) = ask(&mut ms, t, a.eid);
    assert_eq!(bytes, expected_reply(n, natted_record(rebound)));

    // A's registration expires: a negative answer.
    let expired = t + Policy::default().registration_lifetime;
    let (_, bytes) = ask(&mut ms, expired, a.eid);
    let Ok(Message::MapReply(r)) = parse(&bytes) else {
        panic!()
    };
    assert!(r.records[0].rlocs.is_empty(), "{r:?}");
}

// ---- the fleet: live reload, revocation, expiry, teams ---------------------

fn node_c() -> Node {
    Node {
        ctl: ip("100.64.0.4"),
        key: key_of(0xc),
        site_key: b"site-c".to_vec(),
        eid: host("10.0.0.3"),
        rloc: "203.0.113.30:51822".parse().unwrap(),
    }
}

fn fleet_policy(peers: Vec<PeerPolicy>) -> Policy {
    Policy {
        peers,
        ..Policy::default()
    }
}

/// A resolves B and B acks: both now hold a tunnel to each other (each is a
/// subscriber of the other's EID).
fn resolve_and_ack(ms: &mut Ms, now: Instant, a: &Node, b: &Node, nonce: u64) -> Vec<Transmit> {
    ms.handle_datagram(
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(a, nonce, b.eid),
    );
    let out = drain(ms);
    let notify = out
        .iter()
        .find(|t| t.dst == SocketAddr::new(b.ctl, 4342))
        .map(|t| parse_notify(t, &b.site_key));
    if let Some(n) = notify {
        ms.handle_datagram(now, from(b), Via::Tunnel, &ack_bytes(b, &n));
    }
    drain(ms)
}

fn actions(ms: &mut Ms) -> Vec<ControlAction> {
    let mut out = Vec::new();
    while let Some((id, a)) = ms.poll_action() {
        if a == ControlAction::ReadEndpoints {
            ms.handle_endpoints(Instant::now(), id, Ok(Vec::new()));
            continue;
        }
        ms.handle_action_result(Instant::now(), id, Ok(()));
        out.push(a);
    }
    out
}

#[test]
fn a_reload_diffs_peers_by_name_and_keeps_what_did_not_change() {
    let now = Instant::now();
    let (a, b, c) = (node_a(), node_b(), node_c());
    let mut ms: Ms = MapServer::new(
        fleet_policy(vec![peer_policy("robot-a", &a), peer_policy("robot-b", &b)]),
        now,
        1,
    )
    .into();
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    resolve_and_ack(&mut ms, now, &a, &b, 10);
    drain_store(&mut ms);
    actions(&mut ms);
    assert_eq!(ms.subscribers(&b.eid), 1);

    // Same peers in another order, robot-b in a team now, robot-c new.
    let mut b_team = peer_policy("robot-b", &b);
    b_team.team = "lab".into();
    let change = ms
        .handle_config(
            now,
            fleet_policy(vec![
                peer_policy("robot-c", &c),
                b_team,
                peer_policy("robot-a", &a),
            ]),
        )
        .unwrap();
    assert_eq!(change.added, vec!["robot-c".to_string()]);
    assert_eq!(change.changed, vec!["robot-b".to_string()]);
    assert!(change.revoked.is_empty());
    assert_eq!(
        actions(&mut ms),
        vec![ControlAction::AddControlPeer {
            key: c.key,
            control_address: c.ctl
        }]
    );
    // Nothing withdrawn, nothing deleted, the tunnels' subscriptions kept.
    assert!(drain(&mut ms).is_empty());
    assert!(drain_store(&mut ms).is_empty());
    assert_eq!(ms.registry().len(), 2);
    assert_eq!(ms.subscribers(&b.eid), 1);
    // The new peer registers; the kept ones refresh without a hitch.
    assert_eq!(register(&mut ms, now, &c, 3).len(), 1);
    assert_eq!(register(&mut ms, now, &a, 4).len(), 1);
    assert_eq!(ms.counters().reloads, 1);
    assert_eq!(ms.counters().peers_added, 1);

    // The very same configuration again changes nothing.
    let same = ms.policy().clone();
    let change = ms.handle_config(now, same).unwrap();
    assert!(change.is_empty(), "{change:?}");
}

#[test]
fn a_configuration_the_core_cannot_take_is_refused_whole() {
    let now = Instant::now();
    let (a, b) = (node_a(), node_b());
    let mut ms = server(now);
    register(&mut ms, now, &a, 1);
    drain_store(&mut ms);
    let mut clash = peer_policy("robot-c", &node_c());
    clash.control_address = b.ctl;
    let before = ms.policy().clone();
    let refused = ms.handle_config(now, fleet_policy(vec![peer_policy("robot-b", &b), clash]));
    assert!(matches!(refused, Err(ConfigRefused::DuplicateAddress(x)) if x == b.ctl));
    // robot-a would have been removed: it was not.
    assert_eq!(ms.policy().peers, before.peers);
    assert_eq!(ms.registry().len(), 1);
    assert!(drain(&mut ms).is_empty());
    assert!(actions(&mut ms).is_empty());
    assert_eq!(ms.counters().reloads_refused, 1);
}

#[test]
fn a_removed_peer_is_revoked_and_its_correspondents_told_by_push() {
    let now = Instant::now();
    let (a, b) = (node_a(), node_b());
    let mut ms = server(now);
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    resolve_and_ack(&mut ms, now, &a, &b, 10);
    drain_store(&mut ms);
    actions(&mut ms);

    // robot-a leaves the configuration.
    let change = ms
        .handle_config(now, fleet_policy(vec![peer_policy("robot-b", &b)]))
        .unwrap();
    assert_eq!(change.revoked, vec!["robot-a".to_string()]);
    // Its control peer goes.
    assert_eq!(
        actions(&mut ms),
        vec![ControlAction::RemoveControlPeer { key: a.key }]
    );
    // Its registration is withdrawn, durably.
    assert!(ms.registry().get(&a.eid).is_none());
    assert_eq!(drain_store(&mut ms), vec![StoreOp::Delete(a.eid)]);
    // B, which had a tunnel to it, is told at once: a negative record.
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].dst, SocketAddr::new(b.ctl, 4342));
    let n = parse_notify(&out[0], &b.site_key);
    assert_eq!(EidPrefix::of_record(&n.records[0]).unwrap(), a.eid);
    assert!(n.records[0].rlocs.is_empty(), "a withdrawal has no locator");
    assert_eq!(ms.counters().withdrawals, 1);
    // Retransmitted until B acks.
    let later = now + Duration::from_millis(150);
    ms.handle_timeout(later);
    assert_eq!(drain(&mut ms).len(), 1);
    ms.handle_datagram(later, from(&b), Via::Tunnel, &ack_bytes(&b, &n));
    assert_eq!(ms.pending_notifies(), 0);
    // robot-a is heard no more: its register and its requests are refused.
    ms.handle_datagram(
        later,
        from(&a),
        Via::Tunnel,
        &register_bytes(&a, 5, vec![record(a.eid, a.key, a.rloc)]),
    );
    assert!(ms.registry().get(&a.eid).is_none());
    assert_eq!(ms.counters().unknown_peers, 1);
    // B resolving A now gets a negative answer.
    ms.handle_datagram(
        later,
        SocketAddr::new(b.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&b, 11, a.eid),
    );
    let out = drain(&mut ms);
    let Message::MapReply(r) = parse(&out[0].payload).unwrap() else {
        panic!("a reply")
    };
    assert!(r.records[0].rlocs.is_empty());
}

#[test]
fn a_new_key_for_a_peer_revokes_the_old_one() {
    let now = Instant::now();
    let (a, b) = (node_a(), node_b());
    let mut ms = server(now);
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    resolve_and_ack(&mut ms, now, &b, &a, 10);
    drain_store(&mut ms);
    actions(&mut ms);
    let mut rekeyed = peer_policy("robot-a", &a);
    rekeyed.wg_key = Some(key_of(0xee));
    let change = ms
        .handle_config(now, fleet_policy(vec![rekeyed, peer_policy("robot-b", &b)]))
        .unwrap();
    assert_eq!(change.revoked, vec!["robot-a".to_string()]);
    assert_eq!(
        actions(&mut ms),
        vec![
            ControlAction::RemoveControlPeer { key: a.key },
            ControlAction::AddControlPeer {
                key: key_of(0xee),
                control_address: a.ctl
            }
        ]
    );
    assert!(ms.registry().get(&a.eid).is_none());
    assert_eq!(drain(&mut ms).len(), 1, "B is told to drop the old key");
    // Under the new key robot-a registers again.
    let new_a = Node {
        key: key_of(0xee),
        ..node_a()
    };
    assert_eq!(register(&mut ms, now, &new_a, 3).len(), 1);
    assert_eq!(
        ms.registry().get(&a.eid).unwrap().wg_key,
        Some(key_of(0xee))
    );
}

#[test]
fn an_expired_enrolment_is_revoked_on_time() {
    let now = Instant::now();
    let (a, b) = (node_a(), node_b());
    let mut short = peer_policy("robot-a", &a);
    short.expires = Some(now + Duration::from_secs(30));
    let mut ms: Ms = MapServer::new(
        fleet_policy(vec![short, peer_policy("robot-b", &b)]),
        now,
        1,
    )
    .into();
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    resolve_and_ack(&mut ms, now, &b, &a, 10);
    drain_store(&mut ms);
    actions(&mut ms);
    let due = ms.poll_timeout().unwrap();
    assert!(due <= now + Duration::from_secs(30));
    ms.handle_timeout(now + Duration::from_secs(29));
    assert!(ms.registry().get(&a.eid).is_some());
    let end = now + Duration::from_secs(30);
    ms.handle_timeout(end);
    assert!(ms.registry().get(&a.eid).is_none());
    assert_eq!(ms.counters().peers_expired, 1);
    assert_eq!(
        actions(&mut ms),
        vec![ControlAction::RemoveControlPeer { key: a.key }]
    );
    let out = drain(&mut ms);
    assert!(out.iter().any(|t| t.dst == SocketAddr::new(b.ctl, 4342)));
    // A reload of a file that still names it does not bring it back.
    let mut still = peer_policy("robot-a", &a);
    still.expires = Some(now + Duration::from_secs(30));
    let change = ms
        .handle_config(end, fleet_policy(vec![still, peer_policy("robot-b", &b)]))
        .unwrap();
    assert!(change.added.is_empty(), "{change:?}");
    assert!(actions(&mut ms).is_empty());
    ms.handle_datagram(
        end,
        from(&a),
        Via::Tunnel,
        &register_bytes(&a, 9, vec![record(a.eid, a.key, a.rloc)]),
    );
    assert!(ms.registry().get(&a.eid).is_none());
}

#[test]
fn a_team_resolves_its_own_and_what_its_policy_opens_and_nothing_else() {
    let now = Instant::now();
    let (a, b, c) = (node_a(), node_b(), node_c());
    let team = |name: &str, n: &Node, t: &str| PeerPolicy {
        team: t.into(),
        ..peer_policy(name, n)
    };
    let policy = Policy {
        peers: vec![
            team("robot-a", &a, "red"),
            team("robot-b", &b, "blue"),
            team("robot-c", &c, "ops"),
        ],
        teams: vec![TeamPolicy {
            name: "ops".into(),
            may_resolve: vec!["red".into(), "blue".into()],
        }],
        ..Policy::default()
    };
    let mut ms: Ms = MapServer::new(policy, now, 1).into();
    for (n, nonce) in [(&a, 1), (&b, 2), (&c, 3)] {
        register(&mut ms, now, n, nonce);
    }
    drain_store(&mut ms);
    let ask = |ms: &mut Ms, who: &Node, target: &Node, nonce| {
        ms.handle_datagram(
            now,
            SocketAddr::new(who.ctl, 61000),
            Via::Tunnel,
            &ecm_request(who, nonce, target.eid),
        );
        drain(ms)
    };
    // red asks blue: negative reply, blue is not told, a counter.
    let out = ask(&mut ms, &a, &b, 10);
    assert_eq!(out.len(), 1, "only the reply: {out:?}");
    assert_eq!(out[0].dst.ip(), a.ctl);
    let Message::MapReply(r) = parse(&out[0].payload).unwrap() else {
        panic!("a reply")
    };
    assert!(r.records[0].rlocs.is_empty(), "refused: negative");
    assert_eq!(ms.counters().team_refusals, 1);
    assert_eq!(ms.subscribers(&b.eid), 0);
    // ops may resolve red: the usual notify to the owner first.
    let out = ask(&mut ms, &c, &a, 11);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, SocketAddr::new(a.ctl, 4342));
    assert_eq!(ms.counters().team_refusals, 1);
    // blue may not resolve ops (the opening is one way).
    ask(&mut ms, &b, &c, 12);
    assert_eq!(ms.counters().team_refusals, 2);
}

// ---- abuse: budgets, caps, locators, replays --------------------------------

fn server_with(now: Instant, limits: Limits, own: Vec<IpAddr>) -> Ms {
    let policy = Policy {
        peers: vec![
            peer_policy("robot-a", &node_a()),
            peer_policy("robot-b", &node_b()),
        ],
        limits,
        own_addresses: own,
        ..Policy::default()
    };
    MapServer::new(policy, now, 42).into()
}

fn request_many(n: &Node, nonce: u64, targets: &[EidPrefix]) -> Vec<u8> {
    let mut req = MapRequest::for_eid(nonce, n.eid.to_address(), n.ctl, targets[0]);
    req.records = targets
        .iter()
        .map(|t| MapRequest::for_eid(nonce, n.eid.to_address(), n.ctl, *t).records[0].clone())
        .collect();
    req.encapsulated(n.ctl, 61000, ip(MS)).encode().unwrap()
}

#[test]
fn a_flooding_peer_is_slowed_and_counted_while_another_is_served() {
    let now = Instant::now();
    let limits = Limits {
        requests: Rate::new(100.0, 10.0),
        ..Default::default()
    };
    let mut ms = server_with(now, limits, vec![]);
    let (a, b) = (node_a(), node_b());
    // A floods with requests for an unregistered EID (negative replies, no
    // notifies): 1000 at one instant.
    let unknown = host("10.9.9.9");
    for i in 0..1000 {
        ms.handle_datagram(
            now,
            SocketAddr::new(a.ctl, 61000),
            Via::Tunnel,
            &ecm_request(&a, i, unknown),
        );
    }
    let answered_a = drain(&mut ms).len();
    assert_eq!(answered_a, 10, "A gets its burst, no more");
    assert_eq!(ms.counters().rate_limited, 990);
    // Refusals are logged within a budget, the rest counted.
    assert!(
        ms.counters().suppressed_log_lines >= 980,
        "{:?}",
        ms.counters()
    );
    // B, at the same instant, is served as if A were not there.
    ms.handle_datagram(
        now,
        SocketAddr::new(b.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&b, 5000, unknown),
    );
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, SocketAddr::new(b.ctl, 61000));
    // A's budget refills with time.
    let later = now + Duration::from_millis(100);
    ms.handle_datagram(
        later,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &ecm_request(&a, 6000, unknown),
    );
    assert_eq!(drain(&mut ms).len(), 1);
}

#[test]
fn one_request_naming_an_eid_many_times_costs_one_record_and_one_notify() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    drain_store(&mut ms);
    let bytes = request_many(&a, 77, &[b.eid; 20]);
    ms.handle_datagram(now, SocketAddr::new(a.ctl, 61000), Via::Tunnel, &bytes);
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1, "one notify to B, the reply held: {out:?}");
    let notify = parse_notify(&out[0], &b.site_key);
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &notify));
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    let Message::MapReply(reply) = parse(&out[0].payload).unwrap() else {
        panic!("not a reply")
    };
    assert_eq!(reply.records.len(), 1, "the same EID is answered once");

    // Beyond the cap on records per request, the request is refused.
    let many: Vec<EidPrefix> = (1..=40u8).map(|i| host(&format!("10.0.1.{i}"))).collect();
    let bytes = request_many(&a, 78, &many);
    assert_refused(
        &mut ms,
        now,
        SocketAddr::new(a.ctl, 61000),
        Via::Tunnel,
        &bytes,
    );
    assert_eq!(ms.counters().over_limit, 1);
}

#[test]
fn unusable_locators_are_dropped_and_a_record_left_with_none_is_refused() {
    let now = Instant::now();
    let own = ip("192.0.2.1");
    let mut ms = server_with(now, Default::default(), vec![own]);
    let a = node_a();
    for (i, bad) in [
        "127.0.0.1:51820",
        "0.0.0.0:51820",
        "224.0.0.5:51820",
        "169.254.1.1:51820",
        "192.0.2.1:51820",
        "[fe80::1]:51820",
        "[::1]:51820",
    ]
    .iter()
    .enumerate()
    {
        let bytes = register_bytes(
            &a,
            10 + i as u64,
            vec![record(a.eid, a.key, bad.parse().unwrap())],
        );
        assert_refused(&mut ms, now, from(&a), Via::Tunnel, &bytes);
    }
    assert_eq!(ms.counters().bad_locators, 7);
    // A good locator beside a loopback one: only the good one is kept.
    let rec = EidRecord::new(
        a.eid,
        10,
        vec![
            RlocRecord::new(
                1,
                100,
                wireguard_locator("127.0.0.1:51820".parse().unwrap(), a.key),
            ),
            RlocRecord::new(1, 100, wireguard_locator(a.rloc, a.key)),
        ],
    );
    ms.handle_datagram(
        now,
        from(&a),
        Via::Tunnel,
        &register_bytes(&a, 30, vec![rec]),
    );
    drain(&mut ms);
    let (_, m) = ms.registry().lookup(0, a.eid.addr(), now).unwrap();
    assert_eq!(m.rlocs.len(), 1);
    assert_eq!(m.rlocs[0].addr, a.rloc.ip());
}

#[test]
fn registrations_per_peer_are_capped() {
    let now = Instant::now();
    let a = node_a();
    let mut pa = peer_policy("robot-a", &a);
    pa.allowed.push(AllowedEid {
        prefix: EidPrefix::new(0, ip("10.7.0.0"), 16).unwrap(),
        more_specifics: true,
    });
    let policy = Policy {
        peers: vec![pa],
        limits: Limits {
            max_registrations_per_peer: 4,
            ..Default::default()
        },
        ..Policy::default()
    };
    let mut ms: Ms = MapServer::new(policy, now, 1).into();
    for i in 1..=4u64 {
        let eid = host(&format!("10.7.0.{i}"));
        ms.handle_datagram(
            now,
            from(&a),
            Via::Tunnel,
            &register_bytes(&a, i, vec![record(eid, a.key, a.rloc)]),
        );
    }
    drain(&mut ms);
    assert_eq!(ms.registry().len(), 4);
    // Refreshing one it holds is fine; a fifth is refused.
    ms.handle_datagram(
        now,
        from(&a),
        Via::Tunnel,
        &register_bytes(&a, 5, vec![record(host("10.7.0.1"), a.key, a.rloc)]),
    );
    assert_eq!(drain(&mut ms).len(), 1);
    drain_store(&mut ms);
    let fifth = register_bytes(&a, 6, vec![record(host("10.7.0.5"), a.key, a.rloc)]);
    assert_refused(&mut ms, now, from(&a), Via::Tunnel, &fifth);
    assert_eq!(ms.counters().over_limit, 1);
}

#[test]
fn a_replayed_register_is_refused_however_old_and_across_restarts() {
    let now = Instant::now();
    let mut ms = server(now);
    let a = node_a();
    let old = register_bytes(
        &a,
        100,
        vec![record(a.eid, a.key, "203.0.113.9:51820".parse().unwrap())],
    );
    ms.handle_datagram(now, from(&a), Via::Tunnel, &old);
    register(&mut ms, now, &a, 101);
    // Much later (past any window), the old register comes back.
    let later = now + Duration::from_secs(3600);
    register(&mut ms, later, &a, 5000);
    drain_store(&mut ms);
    assert_refused(&mut ms, later, from(&a), Via::Tunnel, &old);

    // A restarted map-server, its floor restored from the store.
    let mut ms2 = server(later);
    assert!(ms2.restore_register_nonce("robot-a", 5000));
    assert_refused(&mut ms2, later, from(&a), Via::Tunnel, &old);
    let again = register_bytes(&a, 5000, vec![record(a.eid, a.key, a.rloc)]);
    assert_refused(&mut ms2, later, from(&a), Via::Tunnel, &again);
    assert_eq!(
        register(&mut ms2, later, &a, 5001).len(),
        1,
        "a newer nonce is accepted"
    );
}

#[test]
fn a_key_rotation_pushes_the_new_key_and_is_ready_once_correspondents_ack() {
    let now = Instant::now();
    let (a, b) = (node_a(), node_b());
    let mut ms = server(now);
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    resolve_and_ack(&mut ms, now, &b, &a, 10);
    drain_store(&mut ms);
    actions(&mut ms);
    let new_key = key_of(0xa2);
    let peer = ms.tunnel_peer_at(a.ctl).unwrap();
    assert_eq!(
        ms.handle_rotation(now, peer, a.key),
        Err(RotationRefused::SameKey)
    );
    assert_eq!(
        ms.handle_rotation(now, peer, b.key),
        Err(RotationRefused::KeyInUse)
    );
    let id = ms.handle_rotation(now, peer, new_key).unwrap();
    // A control peer for the new key, with no address yet.
    assert_eq!(
        actions(&mut ms),
        vec![ControlAction::StageControlPeer { key: new_key }]
    );
    // B, which talks to A, is pushed A's mapping with the new key.
    let out = drain(&mut ms);
    let push = out
        .iter()
        .find(|t| t.dst == SocketAddr::new(b.ctl, 4342))
        .expect("a push to B");
    let n = parse_notify(push, &b.site_key);
    assert_eq!(n.records[0].wg_key(), Some(new_key));
    assert_eq!(ms.registry().get(&a.eid).unwrap().wg_key, Some(new_key));
    // Not ready before B has it.
    assert_eq!(ms.poll_rotation_ready(now), None);
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &n));
    assert_eq!(ms.poll_rotation_ready(now), Some(id));
    assert_eq!(ms.poll_rotation_ready(now), None, "once");
    ms.rotation_answered(now, id);
    ms.handle_timeout(now + Duration::from_millis(10));
    assert!(actions(&mut ms).is_empty(), "the answer leaves first");
    ms.handle_timeout(now + Duration::from_millis(60));
    assert_eq!(
        actions(&mut ms),
        vec![
            ControlAction::AddControlPeer {
                key: new_key,
                control_address: a.ctl
            },
            ControlAction::RemoveControlPeer { key: a.key }
        ]
    );
    // Registrations carry the new key now; the old one is refused.
    let later = now + Duration::from_millis(70);
    let rotated = Node {
        key: new_key,
        ..node_a()
    };
    assert_eq!(register(&mut ms, later, &rotated, 3).len(), 1);
    let before = ms.counters().unauthorised;
    register(&mut ms, later, &a, 4);
    assert_eq!(ms.counters().unauthorised, before + 1);
    assert_eq!(ms.counters().rotations, 1);
    assert_eq!(ms.counters().peers_revoked, 0);
}

fn name_request(n: &Node, nonce: u64, name: &str) -> Vec<u8> {
    MapRequest {
        records: vec![RequestRecord {
            eid_mask_len: (name.len() * 8).min(255) as u8,
            eid: Address::DistinguishedName(name.into()),
        }],
        ..MapRequest::for_eid(nonce, n.eid.to_address(), n.ctl, n.eid)
    }
    .encapsulated(n.ctl, 61000, ip(MS))
    .encode()
    .unwrap()
}

#[test]
fn a_name_lookup_is_answered_with_the_nodes_records_after_it_learns_the_requester() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    drain_store(&mut ms);

    // A asks for "robot-b": B is told about A first, as for an EID lookup.
    let src = SocketAddr::new(a.ctl, 61000);
    ms.handle_datagram(now, src, Via::Tunnel, &name_request(&a, 7, "robot-b"));
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1, "only the notify before B acks: {out:?}");
    let notify = parse_notify(&out[0], &b.site_key);
    assert_eq!(EidPrefix::of_record(&notify.records[0]).unwrap(), a.eid);
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &notify));
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, src);
    let reply = reply_of(&out[0]);
    assert_eq!(reply.nonce, 7);
    assert_eq!(reply.records.len(), 1);
    assert_eq!(EidPrefix::of_record(&reply.records[0]).unwrap(), b.eid);
    let (_, info) = reply.records[0].best_locator().unwrap();
    assert_eq!((info.rloc, info.wg_key), (b.rloc.ip(), Some(b.key)));
    assert_eq!(ms.subscribers(&b.eid), 1, "a move of B is pushed to A");

    // The full DNS name, in any case, is the same name; B asking for A.
    ms.handle_datagram(
        now,
        SocketAddr::new(b.ctl, 61000),
        Via::Tunnel,
        &name_request(&b, 8, "Robot-A.lispwg.internal."),
    );
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1, "A is told about B first: {out:?}");
    let notify = parse_notify(&out[0], &a.site_key);
    ms.handle_datagram(now, from(&a), Via::Tunnel, &ack_bytes(&a, &notify));
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    let reply = reply_of(&out[0]);
    assert_eq!(reply.nonce, 8);
    assert_eq!(EidPrefix::of_record(&reply.records[0]).unwrap(), a.eid);
    assert_eq!(ms.counters().name_lookups, 2);
    assert_eq!(ms.counters().unknown_names, 0);
}

#[test]
fn an_unknown_or_unregistered_name_gets_a_negative_record_for_the_name() {
    let now = Instant::now();
    let mut ms = server(now);
    let a = node_a();
    register(&mut ms, now, &a, 1);
    drain_store(&mut ms);
    let src = SocketAddr::new(a.ctl, 61000);
    // robot-c is nobody; robot-b is configured but not registered; a name
    // in another domain is not ours.
    for (nonce, name) in [(1, "robot-c"), (2, "robot-b"), (3, "robot-b.example.org")] {
        ms.handle_datagram(now, src, Via::Tunnel, &name_request(&a, nonce, name));
        let out = drain(&mut ms);
        assert_eq!(out.len(), 1, "{name}: {out:?}");
        let reply = reply_of(&out[0]);
        assert_eq!(reply.nonce, nonce);
        assert_eq!(reply.records.len(), 1);
        let r = &reply.records[0];
        assert!(r.rlocs.is_empty());
        assert_eq!(r.action, Action::NativelyForward);
        assert_eq!(r.eid, Address::DistinguishedName(name.into()));
        assert_eq!(r.ttl, 1);
    }
    assert_eq!(ms.counters().unknown_names, 3);
    assert_eq!(ms.subscribers(&a.eid), 0, "nobody was told about A");
}

#[test]
fn a_name_asked_many_times_in_one_request_costs_one_record_and_one_notify() {
    let now = Instant::now();
    let mut ms = server(now);
    let (a, b) = (node_a(), node_b());
    register(&mut ms, now, &a, 1);
    register(&mut ms, now, &b, 2);
    drain_store(&mut ms);
    let dn = |n: &str| RequestRecord {
        eid_mask_len: (n.len() * 8) as u8,
        eid: Address::DistinguishedName(n.into()),
    };
    let bytes = MapRequest {
        records: vec![
            dn("robot-b"),
            dn("ROBOT-B"),
            RequestRecord {
                eid_mask_len: 32,
                eid: b.eid.to_address(),
            },
            dn("robot-b.lispwg.internal"),
        ],
        ..MapRequest::for_eid(9, a.eid.to_address(), a.ctl, a.eid)
    }
    .encapsulated(a.ctl, 61000, ip(MS))
    .encode()
    .unwrap();
    ms.handle_datagram(now, SocketAddr::new(a.ctl, 61000), Via::Tunnel, &bytes);
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1, "one notify to B, the reply held: {out:?}");
    let notify = parse_notify(&out[0], &b.site_key);
    ms.handle_datagram(now, from(&b), Via::Tunnel, &ack_bytes(&b, &notify));
    let out = drain(&mut ms);
    assert_eq!(out.len(), 1);
    let reply = reply_of(&out[0]);
    // "robot-b.lispwg.internal" is another spelling of the same node: its
    // prefix is in the reply already.
    assert_eq!(reply.records.len(), 1, "{reply:?}");
    assert_eq!(EidPrefix::of_record(&reply.records[0]).unwrap(), b.eid);
    assert_eq!(ms.counters().name_lookups, 2);
}

#[test]
fn an_ack_for_no_pending_notify_is_counted_and_changes_nothing() {
    let now = Instant::now();
    let mut ms = server(now);
    let a = node_a();
    register(&mut ms, now, &a, 1);
    drain_store(&mut ms);
    let forged = MapNotify {
        nonce: 0xdead_beef,
        auth: Authentication::unsigned(KeyId::HmacSha256),
        records: vec![record(a.eid, a.key, a.rloc)],
        xtr_site: None,
    };
    let before = snapshot(&ms);
    ms.handle_datagram(now, from(&a), Via::Tunnel, &ack_bytes(&a, &forged));
    assert!(drain(&mut ms).is_empty());
    assert_eq!(snapshot(&ms), before);
    assert_eq!(ms.counters().unmatched_acks, 1);
}
