//! Miss capture and re-injection: the first packet to an EID with no peer is
//! caught by the miss TUN, held while the peer and its route are added, then
//! re-injected and answered.

mod common;

use std::{
    net::IpAddr,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use wgctl::{packet_destination, IpPrefix, PeerConfig, Reinjector, RouteSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_packet_is_captured_then_reinjected_and_answered() {
    let (a, b) = common::two_nodes("mi").await;
    // EIDs: A is 10.1.0.1, B is 10.2.0.1, each a /32 on its WireGuard
    // interface. B already knows A (as after the Map-Notify); A knows nothing.
    let a_eid: IpPrefix = "10.1.0.1/32".parse().unwrap();
    let b_eid: IpPrefix = "10.2.0.1/32".parse().unwrap();
    for (node, eid) in [(&a, a_eid), (&b, b_eid)] {
        let net = node.host().netlink();
        let wg = node.wg.name().to_owned();
        node.rt
            .run(move || async move { net.add_address(&wg, eid).await })
            .await
            .expect("add EID");
    }
    let mut a_for_b = a.as_peer();
    a_for_b.allowed_ips = vec![a_eid];
    b.upsert_peer(a_for_b).await;
    let (net, wg) = (b.host().netlink(), b.wg.name().to_owned());
    b.rt.run(move || async move {
        net.add_route(&RouteSpec::via_interface(a_eid, &wg).with_src(b_eid.addr()))
            .await
    })
    .await
    .expect("route to A's EID on B");

    // On A, the whole overlay goes to the miss TUN at low priority.
    let tun_name = testbed::unique("mit");
    let host_a = a.host();
    let (tun, reinjector) =
        a.rt.run({
            let tun_name = tun_name.clone();
            move || async move {
                let tun = host_a.create_miss_tun(&tun_name, 1420).await?;
                host_a
                    .netlink()
                    .add_route(
                        &RouteSpec::via_interface("10.0.0.0/8".parse()?, &tun_name)
                            .with_metric(1000),
                    )
                    .await?;
                Ok::<_, wgctl::Error>((Arc::new(tun), Arc::new(Reinjector::new()?)))
            }
        })
        .await
        .expect("miss TUN");

    // The first packet: one echo request from A's EID to B's EID.
    let started = Instant::now();
    let pinger =
        a.ns.command("ping")
            .args(["-n", "-c", "1", "-W", "5", "-I", "10.1.0.1", "10.2.0.1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ping");

    let b_peer = PeerConfig {
        public_key: b.key.public_key(),
        endpoint: Some(b.endpoint()),
        allowed_ips: vec![b_eid],
        persistent_keepalive: None,
    };
    let (wg_a, net_a, wg_a_name) = (a.wg.clone(), a.host().netlink(), a.wg.name().to_owned());
    let (packet, capture_at, programmed_at, reinjected_at) =
        a.rt.run(move || async move {
            // Anything else routed to the TUN is not the miss under test.
            let want: IpAddr = "10.2.0.1".parse().unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let packet = loop {
                let packet = tokio::time::timeout_at(deadline, tun.recv())
                    .await
                    .expect("no packet to 10.2.0.1 reached the miss TUN within 5 s")
                    .expect("read miss TUN");
                if packet_destination(&packet).ok() == Some(want) {
                    break packet;
                }
            };
            let capture_at = Instant::now();
            // What the agent does on the Map-Reply: peer, route, re-inject.
            wg_a.upsert_peer(b_peer).await.expect("add peer B");
            net_a
                .add_route(&RouteSpec::via_interface(b_eid, &wg_a_name).with_src(a_eid.addr()))
                .await
                .expect("route to B's EID");
            let programmed_at = Instant::now();
            reinjector.send(&packet).await.expect("re-inject");
            (packet, capture_at, programmed_at, Instant::now())
        })
        .await;
    assert_eq!(
        packet_destination(&packet).unwrap(),
        "10.2.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(packet[9], 1, "captured packet is not ICMP");
    assert_eq!(packet[20], 8, "captured packet is not an echo request");

    let output = tokio::task::spawn_blocking(move || pinger.wait_with_output())
        .await
        .unwrap()
        .expect("ping output");
    let replied_at = Instant::now();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("1 received"),
        "the held echo request was not answered after re-injection:\n{text}"
    );
    println!(
        "miss capture after ping start: {:?}; peer+route programmed in {:?}; \
         re-injected {:?} after capture; ping exited {:?} after re-injection",
        capture_at - started,
        programmed_at - capture_at,
        reinjected_at - capture_at,
        replied_at - reinjected_at
    );
    if let Some(rtt) = text.lines().find(|l| l.contains("time=")) {
        println!("ping's own report (includes the hold): {rtt}");
    }
}

#[tokio::test]
async fn reinjector_rejects_garbage_with_typed_errors() {
    common::require_root_and_wireguard_go();
    let reinjector = Reinjector::new().expect("raw sockets (root)");
    for bad in [&[][..], &[0x45u8; 8][..], &[0x20u8; 40][..]] {
        assert!(matches!(
            reinjector.send(bad).await,
            Err(wgctl::Error::InvalidPacket(_))
        ));
    }
}
