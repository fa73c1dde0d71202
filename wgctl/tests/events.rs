//! Address and link events: how a mobile node notices that its RLOC changed.

mod common;

use std::time::{Duration, Instant};

use testbed::{unique, veth, Netns, NsRuntime};
use wgctl::{Host, IpPrefix, NetEvent, NetEvents};

/// Generous bound for a noisy machine; the target is 50 ms and the measured
/// figure is printed.
const EVENT_BOUND: Duration = Duration::from_secs(1);

/// Operational state changes go through the kernel's linkwatch, which batches
/// non-urgent carrier changes for up to a second.
const LINK_EVENT_BOUND: Duration = Duration::from_secs(3);

/// Waits (bounded) for the first event that `want` accepts.
async fn wait_for(
    events: &mut NetEvents,
    bound: Duration,
    mut want: impl FnMut(&NetEvent) -> bool,
) -> Option<NetEvent> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if want(&event) => return Some(event),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_change_on_a_veth_is_reported_quickly() {
    common::require_root_and_wireguard_go();
    let ns = Netns::new("eva").unwrap();
    let peer_ns = Netns::new("evb").unwrap();
    let veth_a = unique("evv");
    let veth_b = unique("evv");
    veth(&ns, &veth_a, &peer_ns, &veth_b).unwrap();
    peer_ns.ip(&["link", "set", &veth_b, "up"]).unwrap();
    let rt = NsRuntime::new(&ns).unwrap();

    let ifname = veth_a.clone();
    let (added, removed) = rt
        .run(move || async move {
            let host = Host::open().await.expect("open host");
            let net = host.netlink();
            net.link_up(&ifname).await.expect("veth up");
            let ifindex = net.link_index(&ifname).await.expect("veth index");
            let mut events = net.events().await.expect("subscribe");
            let (mut added, mut removed) = (Vec::new(), Vec::new());
            for i in 0..5u8 {
                let addr: IpPrefix = format!("203.0.113.{}/24", 10 + i).parse().unwrap();

                let start = Instant::now();
                net.add_address(&ifname, addr).await.expect("add address");
                let event = wait_for(&mut events, EVENT_BOUND, |e| {
                    matches!(e, NetEvent::AddressAdded { address, .. } if *address == addr.addr())
                })
                .await;
                let elapsed = start.elapsed();
                assert_eq!(
                    event,
                    Some(NetEvent::AddressAdded {
                        ifindex,
                        ifname: ifname.clone(),
                        address: addr.addr(),
                        prefix_len: 24,
                        usable: true,
                    }),
                    "address-added event missing or wrong (waited {elapsed:?})"
                );
                added.push(elapsed);

                let start = Instant::now();
                net.del_address(&ifname, addr)
                    .await
                    .expect("delete address");
                let event = wait_for(&mut events, EVENT_BOUND, |e| {
                    matches!(e, NetEvent::AddressRemoved { address, .. } if *address == addr.addr())
                })
                .await;
                let elapsed = start.elapsed();
                assert_eq!(
                    event,
                    Some(NetEvent::AddressRemoved {
                        ifindex,
                        ifname: ifname.clone(),
                        address: addr.addr(),
                        prefix_len: 24,
                    }),
                    "address-removed event missing or wrong (waited {elapsed:?})"
                );
                removed.push(elapsed);
            }
            host.shutdown().await.expect("shutdown");
            (added, removed)
        })
        .await;

    for (what, mut figures) in [("added", added), ("removed", removed)] {
        figures.sort();
        println!(
            "address {what} -> event (incl. the netlink request): min {:?}, median {:?}, max {:?}",
            figures[0],
            figures[figures.len() / 2],
            figures[figures.len() - 1]
        );
        assert!(figures.iter().all(|d| *d < EVENT_BOUND), "{figures:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_outside_wgctl_and_link_state_are_reported() {
    common::require_root_and_wireguard_go();
    let ns = Netns::new("evc").unwrap();
    let peer_ns = Netns::new("evd").unwrap();
    let veth_a = unique("evv");
    let veth_b = unique("evv");
    veth(&ns, &veth_a, &peer_ns, &veth_b).unwrap();
    peer_ns.ip(&["link", "set", &veth_b, "up"]).unwrap();
    let rt = NsRuntime::new(&ns).unwrap();

    let host = std::sync::Arc::new(rt.run(|| async { Host::open().await.unwrap() }).await);
    let net = host.netlink();
    let mut events = rt
        .run(move || async move { net.events().await })
        .await
        .expect("subscribe");

    // An address appearing from elsewhere (as DHCP would add it): the harness
    // adds it, wgctl only reports it.
    let start = Instant::now();
    ns.ip(&["addr", "add", "198.51.100.7/24", "dev", &veth_a])
        .unwrap();
    let event = wait_for(&mut events, EVENT_BOUND, |e| {
        matches!(e, NetEvent::AddressAdded { .. })
    })
    .await;
    let elapsed = start.elapsed();
    println!("external address add -> event (incl. spawning `ip`): {elapsed:?}");
    match event {
        Some(NetEvent::AddressAdded {
            ifname,
            address,
            prefix_len,
            ..
        }) => {
            assert_eq!(ifname, veth_a);
            assert_eq!(address.to_string(), "198.51.100.7");
            assert_eq!(prefix_len, 24);
        }
        other => panic!("no address event within {EVENT_BOUND:?}: {other:?}"),
    }

    // Link up, then down, through wgctl.
    let (net, name) = (host.netlink(), veth_a.clone());
    rt.run(move || async move { net.link_up(&name).await })
        .await
        .expect("link up");
    let up = wait_for(&mut events, LINK_EVENT_BOUND, |e| {
        matches!(e, NetEvent::LinkUp { .. })
    })
    .await;
    assert!(
        matches!(&up, Some(NetEvent::LinkUp { ifname, .. }) if *ifname == veth_a),
        "{up:?}"
    );
    let (net, name) = (host.netlink(), veth_a.clone());
    rt.run(move || async move { net.link_down(&name).await })
        .await
        .expect("link down");
    let down = wait_for(&mut events, LINK_EVENT_BOUND, |e| {
        matches!(e, NetEvent::LinkDown { .. })
    })
    .await;
    assert!(
        matches!(&down, Some(NetEvent::LinkDown { ifname, .. }) if *ifname == veth_a),
        "{down:?}"
    );

    drop(events);
    let host = std::sync::Arc::into_inner(host).expect("sole owner");
    rt.run(move || async move { host.shutdown().await })
        .await
        .expect("shutdown");
    // The externally added address was not wgctl's, so it stays.
    assert!(ns
        .ip(&["-o", "addr", "show", "dev", &veth_a])
        .unwrap()
        .contains("198.51.100.7"));
}
