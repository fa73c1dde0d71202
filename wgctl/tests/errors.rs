//! Bad input and missing pieces give typed errors, never panics; and the
//! kernel backend's selection logic and missing-module error, on a real host.

mod common;

use std::sync::Arc;

use testbed::{unique, Netns, NsRuntime};
use wgctl::{
    keys::{PrivateKey, PublicKey},
    Backend, BackendKind, Error, Host, IpPrefix, KernelSupport, PeerConfig, RouteSpec,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_typed_errors() {
    common::require_root_and_wireguard_go();
    assert!(matches!(
        PrivateKey::from_base64("not a key"),
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(
        "AAAA".parse::<PublicKey>(),
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(
        "10.0.0.0/40".parse::<IpPrefix>(),
        Err(Error::InvalidPrefix(_))
    ));

    let ns = Netns::new("err").unwrap();
    let rt = NsRuntime::new(&ns).unwrap();
    let wg_name = unique("erw");
    rt.run(move || async move {
        let host = Host::open().await.unwrap();
        let net = host.netlink();
        let key = PrivateKey::generate();
        let nowhere: IpPrefix = "10.9.0.1/24".parse().unwrap();

        // Unknown interfaces.
        for result in [
            net.link_up("lwnosuchif0").await,
            net.add_address("lwnosuchif0", nowhere).await,
            net.add_route(&RouteSpec::via_interface(nowhere, "lwnosuchif0"))
                .await,
        ] {
            assert!(
                matches!(&result, Err(Error::UnknownInterface(n)) if n == "lwnosuchif0"),
                "{result:?}"
            );
        }
        assert!(matches!(
            net.link_index("lwnosuchif0").await,
            Err(Error::UnknownInterface(_))
        ));

        // Names the kernel would refuse.
        for bad in ["", "much-too-long-name0", "wg/0", "wg 0"] {
            let result = host
                .create_wireguard(bad, BackendKind::Userspace, &key, None)
                .await;
            assert!(
                matches!(result, Err(Error::InvalidInterfaceName { .. })),
                "{bad:?}: {:?}",
                result.map(|_| ())
            );
        }

        // Mismatched families in a route.
        let wg = host
            .create_wireguard(&wg_name, BackendKind::Userspace, &key, None)
            .await
            .unwrap();
        let mixed =
            RouteSpec::via_interface(nowhere, &wg_name).with_src("fd00::1".parse().unwrap());
        assert!(matches!(
            net.add_route(&mixed).await,
            Err(Error::InvalidPrefix(_))
        ));

        // The name is taken.
        let again = host
            .create_wireguard(&wg_name, BackendKind::Userspace, &key, None)
            .await;
        assert!(matches!(again, Err(Error::InterfaceExists(_))));

        // A destroyed interface is unknown to every handle.
        let other_handle = wg.clone();
        wg.destroy().await.unwrap();
        let peer = PeerConfig::new(PrivateKey::generate().public_key());
        for result in [
            other_handle.upsert_peer(peer.clone()).await,
            other_handle.read().await.map(|_| ()),
            other_handle.set_listen_port(4000).await,
        ] {
            assert!(
                matches!(&result, Err(Error::UnknownInterface(n)) if *n == wg_name),
                "{result:?}"
            );
        }

        // wireguard-go missing: the message says what to install.
        let host = host.with_wireguard_go("/nonexistent/wireguard-go");
        let missing = host
            .create_wireguard(&unique("erm"), BackendKind::Userspace, &key, None)
            .await;
        match missing {
            Err(e @ Error::WireguardGoMissing { .. }) => {
                assert!(
                    e.to_string().contains("install the `wireguard-go` package"),
                    "{e}"
                )
            }
            other => panic!("expected WireguardGoMissing, got {:?}", other.map(|_| ())),
        }

        // Everything is refused once the host is shut down.
        let net_after = host.netlink();
        host.shutdown().await.unwrap();
        assert!(matches!(
            net_after.link_up("lo").await,
            Err(Error::ShutDown)
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_backend_selection_and_missing_module() {
    common::require_root_and_wireguard_go();
    let ns = Netns::new("krn").unwrap();
    let rt = NsRuntime::new(&ns).unwrap();
    let host = Arc::new(rt.run(|| async { Host::open().await.unwrap() }).await);
    let name = unique("krw");
    let (support, auto, forced, auto_created) = rt
        .run({
            let host = host.clone();
            let name = name.clone();
            move || async move {
                let key = PrivateKey::generate();
                let support = host.kernel_support().await.expect("probe");
                let auto = host.resolve_backend(BackendKind::Auto).await.unwrap();
                let forced = host
                    .create_wireguard(&name, BackendKind::Kernel, &key, Some(51830))
                    .await;
                let forced = match forced {
                    Ok(wg) => {
                        let info = wg.read().await.expect("kernel read-back");
                        assert_eq!(info.backend, Backend::Kernel);
                        assert_eq!(info.listen_port, Some(51830));
                        wg.destroy().await.unwrap();
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let auto_wg = host
                    .create_wireguard(&name, BackendKind::Auto, &key, None)
                    .await
                    .expect("auto backend works on any host");
                let auto_created = auto_wg.backend();
                auto_wg.destroy().await.unwrap();
                (support, auto, forced, auto_created)
            }
        })
        .await;
    println!("kernel WireGuard on this host: {support:?}; auto selects {auto}");
    assert_eq!(auto_created, auto);
    match support {
        KernelSupport::Missing => {
            assert_eq!(auto, Backend::Userspace);
            match forced {
                Err(e @ Error::KernelModuleMissing) => {
                    assert!(e.to_string().contains("module"), "{e}")
                }
                other => panic!("forced kernel backend without the module gave {other:?}"),
            }
            assert!(
                !ns.has_link(&name),
                "failed kernel create left {name} behind"
            );
        }
        KernelSupport::Available => {
            assert_eq!(auto, Backend::Kernel);
            forced.expect("kernel backend works where the module is loaded");
        }
    }
    // The probe's throwaway link is gone too.
    assert!(!ns.ip(&["-o", "link"]).unwrap().contains("wgp"));
    drop(Arc::into_inner(host).expect("sole owner"));
}
