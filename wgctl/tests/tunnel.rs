//! Two namespaces joined by a veth, with userspace WireGuard configured only
//! through wgctl: traffic, read-back, in-place endpoint change, peer removal,
//! restart of a dead wireguard-go, and cleanup.

mod common;

use std::{process::Stdio, sync::Arc, time::Duration};

use testbed::leftovers::{is_live_wireguard_go, socket_path};
use testbed::{wait_until, Netns, NsRuntime};
use wgctl::{keys::PrivateKey, Backend, BackendKind, Error, Host, IpPrefix, RouteSpec};

/// Sum of "N received" from ping's summary line.
fn received(ping_output: &str) -> u32 {
    ping_output
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_tunnel_traffic_readback_endpoint_change_and_removal() {
    let (mut a, b) = common::two_nodes("tu").await;
    assert_eq!(a.wg.backend(), Backend::Userspace);
    a.upsert_peer(b.as_peer()).await;
    b.upsert_peer(a.as_peer()).await;

    assert!(
        a.ns.ping_until_ok(&b.overlay, 10),
        "no ping reply from B through the WireGuard tunnel"
    );

    // Read-back: handshake, counters, endpoint, our own key and port.
    let wg = a.wg.clone();
    let before =
        a.rt.run(move || async move { wg.read().await })
            .await
            .unwrap();
    assert_eq!(before.backend, Backend::Userspace);
    assert_eq!(before.listen_port, Some(a.port));
    assert_eq!(before.public_key, Some(a.key.public_key()));
    let peer = before.peer(&b.key.public_key()).expect("peer B read back");
    assert!(
        peer.last_handshake.is_some(),
        "no handshake reported: {peer:?}"
    );
    assert!(
        peer.rx_bytes > 0 && peer.tx_bytes > 0,
        "no counters: {peer:?}"
    );
    assert_eq!(peer.endpoint, Some(b.endpoint()));
    assert_eq!(
        peer.allowed_ips,
        vec!["10.0.0.2/32".parse::<IpPrefix>().unwrap()]
    );
    println!(
        "read-back after ping: handshake={:?} rx={} tx={}",
        peer.last_handshake, peer.rx_bytes, peer.tx_bytes
    );

    // Second underlay subnet on both veth ends; move A's endpoint for B to it
    // while a ping runs.
    for (node, addr) in [(&a, "198.51.100.1/24"), (&b, "198.51.100.2/24")] {
        let net = node.host().netlink();
        let veth = node.veth.clone();
        let addr: IpPrefix = addr.parse().unwrap();
        node.rt
            .run(move || async move { net.add_address(&veth, addr).await })
            .await
            .expect("add second underlay address");
    }
    let net_a = a.host().netlink();
    let wg_name = a.wg.name().to_owned();
    let ifindex_before =
        a.rt.run(move || async move { net_a.link_index(&wg_name).await })
            .await
            .unwrap();
    let pid_before = a.wg.wireguard_go_pid().expect("wireguard-go pid");

    let pinger =
        a.ns.command("ping")
            .args(["-n", "-i", "0.05", "-c", "60", "-W", "1", &b.overlay])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ping");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut moved = b.as_peer();
    moved.endpoint = Some(format!("198.51.100.2:{}", b.port).parse().unwrap());
    a.upsert_peer(moved.clone()).await;
    // Read back at once: this is what wgctl programmed. Later, WireGuard's
    // roaming may move the endpoint to wherever B's last packet came from.
    let wg = a.wg.clone();
    let programmed =
        a.rt.run(move || async move { wg.read().await })
            .await
            .unwrap();
    let programmed = programmed
        .peer(&b.key.public_key())
        .expect("peer B")
        .endpoint;
    let output = tokio::task::spawn_blocking(move || pinger.wait_with_output())
        .await
        .unwrap()
        .expect("ping output");
    let got = received(&String::from_utf8_lossy(&output.stdout));
    println!("pings answered across the endpoint change: {got}/60");
    assert!(
        got >= 57,
        "ping did not continue across the in-place endpoint change: {got}/60"
    );

    let wg = a.wg.clone();
    let after =
        a.rt.run(move || async move { wg.read().await })
            .await
            .unwrap();
    let peer_after = after.peer(&b.key.public_key()).expect("peer B still there");
    assert_eq!(programmed, moved.endpoint);
    // B answers from either of its addresses; WireGuard roams to the last.
    let old_endpoint = Some(b.endpoint());
    assert!(
        peer_after.endpoint == moved.endpoint || peer_after.endpoint == old_endpoint,
        "endpoint {:?} is neither of B's",
        peer_after.endpoint
    );
    assert!(
        peer_after.tx_bytes >= peer.tx_bytes && peer_after.rx_bytes >= peer.rx_bytes,
        "counters went back: the peer was re-created"
    );
    let net_a = a.host().netlink();
    let wg_name = a.wg.name().to_owned();
    let ifindex_after =
        a.rt.run(move || async move { net_a.link_index(&wg_name).await })
            .await
            .unwrap();
    assert_eq!(ifindex_after, ifindex_before, "interface was re-created");
    assert_eq!(
        a.wg.wireguard_go_pid(),
        Some(pid_before),
        "wireguard-go restarted"
    );
    // B sees A's packets arrive from the new subnet: the traffic really moved.
    let wg_b = b.wg.clone();
    let b_view =
        b.rt.run(move || async move { wg_b.read().await })
            .await
            .unwrap();
    let a_seen_from = b_view
        .peer(&a.key.public_key())
        .and_then(|p| p.endpoint)
        .expect("B knows A's endpoint");
    assert_eq!(a_seen_from.ip().to_string(), "198.51.100.1");

    // Removing the peer stops traffic.
    let wg = a.wg.clone();
    let b_key = b.key.public_key();
    a.rt.run(move || async move { wg.remove_peer(&b_key).await })
        .await
        .expect("remove peer");
    let wg = a.wg.clone();
    let removed =
        a.rt.run(move || async move { wg.read().await })
            .await
            .unwrap();
    assert!(removed.peers.is_empty(), "peer still listed: {removed:?}");
    assert!(
        !a.ns.ping(&b.overlay, 2, 1),
        "ping still answered after the peer was removed"
    );

    // Explicit shutdown removes what A's host created.
    let wg_name = a.wg.name().to_owned();
    let host = Arc::into_inner(a.host.take().unwrap()).expect("sole owner of host");
    a.rt.run(move || async move { host.shutdown().await })
        .await
        .expect("clean shutdown");
    assert!(!a.ns.has_link(&wg_name), "{wg_name} left behind");
    assert!(!std::path::Path::new(&socket_path(&wg_name)).exists());
    assert!(
        !is_live_wireguard_go(pid_before),
        "wireguard-go {pid_before} left running"
    );
    let veth_addrs = a.ns.ip(&["-o", "addr", "show", "dev", &a.veth]).unwrap();
    assert!(
        !veth_addrs.contains("192.0.2.1") && !veth_addrs.contains("198.51.100.1"),
        "addresses left on the veth: {veth_addrs}"
    );
    let wg = a.wg.clone();
    let late = a.rt.run(move || async move { wg.read().await }).await;
    assert!(matches!(late, Err(Error::ShutDown)), "{late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_wireguard_go_is_restarted_and_reconfigured() {
    let (a, b) = common::two_nodes("rs").await;
    a.upsert_peer(b.as_peer()).await;
    b.upsert_peer(a.as_peer()).await;
    assert!(a.ns.ping_until_ok(&b.overlay, 10), "tunnel did not come up");

    let old = a.wg.wireguard_go_pid().expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill wireguard-go");
    let wg = a.wg.clone();
    assert!(
        wait_until(Duration::from_secs(10), || {
            wg.wireguard_go_pid().is_some_and(|p| p != old) && wg.wireguard_go_restarts() == 1
        }),
        "wireguard-go was not restarted"
    );
    assert!(!is_live_wireguard_go(old));
    // Key, port, peer, address, link state and routes come back by themselves.
    assert!(
        a.ns.ping_until_ok(&b.overlay, 20),
        "no traffic after wireguard-go was restarted"
    );
    let wg = a.wg.clone();
    let info =
        a.rt.run(move || async move { wg.read().await })
            .await
            .unwrap();
    assert_eq!(info.listen_port, Some(a.port));
    assert_eq!(info.public_key, Some(a.key.public_key()));
    assert!(info.peer(&b.key.public_key()).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_host_removes_everything_it_created() {
    common::require_root_and_wireguard_go();
    let ns = Netns::new("dr").unwrap();
    let rt = NsRuntime::new(&ns).unwrap();
    let host = Arc::new(rt.run(|| async { Host::open().await.unwrap() }).await);
    let wg_name = testbed::unique("drw");
    let tun_name = testbed::unique("drt");
    let (wg, tun) = rt
        .run({
            let host = host.clone();
            let wg_name = wg_name.clone();
            let tun_name = tun_name.clone();
            move || async move {
                let key = PrivateKey::generate();
                let wg = host
                    .create_wireguard(&wg_name, BackendKind::Userspace, &key, None)
                    .await?;
                let net = host.netlink();
                net.add_address(&wg_name, "10.7.0.1/24".parse()?).await?;
                net.link_up(&wg_name).await?;
                let tun = host.create_miss_tun(&tun_name, 1420).await?;
                net.add_route(
                    &RouteSpec::via_interface("10.0.0.0/8".parse()?, &tun_name).with_metric(1000),
                )
                .await?;
                net.add_route(
                    &RouteSpec::via_interface("10.8.0.0/24".parse()?, &wg_name)
                        .with_metric(10)
                        .with_src("10.7.0.1".parse().unwrap()),
                )
                .await?;
                Ok::<_, Error>((wg, tun))
            }
        })
        .await
        .expect("create resources through wgctl");

    let pid = wg.wireguard_go_pid().expect("pid");
    let routes = ns.ip(&["route", "show"]).unwrap();
    assert!(
        routes.contains(&format!("10.0.0.0/8 dev {tun_name}")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("10.8.0.0/24 dev {wg_name}"))
            && routes.contains("src 10.7.0.1 metric 10"),
        "{routes}"
    );
    assert!(ns.has_link(&wg_name) && ns.has_link(&tun_name));
    assert!(std::path::Path::new(&socket_path(&wg_name)).exists());
    assert!(is_live_wireguard_go(pid));

    // Dropped here, on a thread in another namespace: cleanup must still act
    // on the host's own namespace.
    drop(Arc::into_inner(host).expect("sole owner of host"));

    let routes = ns.ip(&["route", "show"]).unwrap();
    assert!(
        !routes.contains("10.0.0.0/8") && !routes.contains("10.8.0.0/24"),
        "{routes}"
    );
    assert!(!ns.has_link(&wg_name), "{wg_name} left behind");
    assert!(!ns.has_link(&tun_name), "{tun_name} left behind");
    assert!(!std::path::Path::new(&socket_path(&wg_name)).exists());
    assert!(
        !is_live_wireguard_go(pid),
        "wireguard-go {pid} left running"
    );
    drop(tun);
    drop(wg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rloc_change_noticed_by_events_then_listen_port_reapplied() {
    let (a, b) = common::two_nodes("ho").await;
    a.upsert_peer(b.as_peer()).await;
    b.upsert_peer(a.as_peer()).await;
    assert!(a.ns.ping_until_ok(&b.overlay, 10), "tunnel did not come up");
    let pid = a.wg.wireguard_go_pid();

    // A roams: its RLOC moves from 192.0.2.1 to 192.0.2.11. It notices from
    // the event stream and re-applies its listen port, as the agent does.
    let (net, wg, veth) = (a.host().netlink(), a.wg.clone(), a.veth.clone());
    let (new_rloc, port) =
        a.rt.run(move || async move {
            let mut events = net.events().await?;
            net.del_address(&veth, "192.0.2.1/24".parse()?).await?;
            net.add_address(&veth, "192.0.2.11/24".parse()?).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            let new_rloc = loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(wgctl::NetEvent::AddressAdded {
                        ifname, address, ..
                    })) if ifname == veth => break address,
                    Ok(Some(_)) => continue,
                    other => panic!("no address event for the new RLOC: {other:?}"),
                }
            };
            let port = wg.reapply_listen_port().await?;
            Ok::<_, Error>((new_rloc, port))
        })
        .await
        .expect("handover through wgctl");
    assert_eq!(new_rloc.to_string(), "192.0.2.11");
    assert_eq!(port, a.port);
    assert_eq!(
        a.wg.wireguard_go_pid(),
        pid,
        "re-applying the port restarted wireguard-go"
    );

    assert!(
        a.ns.ping_until_ok(&b.overlay, 10),
        "no traffic after the RLOC change and listen-port re-apply"
    );
    let wg_b = b.wg.clone();
    let seen =
        b.rt.run(move || async move { wg_b.read().await })
            .await
            .unwrap();
    let a_endpoint = seen
        .peer(&a.key.public_key())
        .and_then(|p| p.endpoint)
        .expect("B has an endpoint for A");
    assert_eq!(a_endpoint.to_string(), format!("192.0.2.11:{}", a.port));
}
