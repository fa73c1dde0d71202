//! Test harness: namespaces, veth pairs and code run inside a namespace come
//! from the testbed; this adds wgctl's own test node, set up only through
//! wgctl. The code under test touches the host only through wgctl; `ip` is
//! used for topology and for independent checks of what is left behind.
#![allow(dead_code)]

use testbed::{unique, veth, Netns, NsRuntime};

/// Integration tests need root, wireguard-go and ip: without them, fail
/// loudly.
pub fn require_root_and_wireguard_go() {
    init_tracing();
    testbed::require_root_and_tools(&["ip", "ping", "wireguard-go"])
        .unwrap_or_else(|e| panic!("wgctl's namespace tests: {e:#}"));
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "wgctl=info".into()),
        )
        .with_test_writer()
        .try_init();
}

use std::{net::SocketAddr, sync::Arc};
use wgctl::{keys::PrivateKey, BackendKind, Host, IpPrefix, PeerConfig, WgInterface};

/// One test host: a namespace with a wgctl [`Host`], a veth end and a
/// userspace WireGuard interface. Fields drop in order: the host (which cleans
/// up), then the runtime, then the namespace.
pub struct Node {
    pub host: Option<Arc<Host>>,
    pub wg: WgInterface,
    pub key: PrivateKey,
    pub port: u16,
    pub veth: String,
    /// Underlay address on the veth (192.0.2.0/24).
    pub underlay: String,
    /// Overlay address on the WireGuard interface (10.0.0.0/24).
    pub overlay: String,
    pub rt: NsRuntime,
    pub ns: Netns,
}

impl Node {
    pub fn host(&self) -> Arc<Host> {
        self.host.clone().expect("host still open")
    }

    pub fn endpoint(&self) -> SocketAddr {
        format!("{}:{}", self.underlay, self.port).parse().unwrap()
    }

    /// This node as a peer: its overlay address only.
    pub fn as_peer(&self) -> PeerConfig {
        PeerConfig {
            public_key: self.key.public_key(),
            endpoint: Some(self.endpoint()),
            allowed_ips: vec![format!("{}/32", self.overlay).parse().unwrap()],
            persistent_keepalive: None,
        }
    }

    pub async fn upsert_peer(&self, peer: PeerConfig) {
        let wg = self.wg.clone();
        self.rt
            .run(move || async move { wg.upsert_peer(peer).await })
            .await
            .expect("upsert peer");
    }
}

/// Two namespaces joined by a veth (192.0.2.1 and .2), each with a userspace
/// WireGuard interface (10.0.0.1 and .2, ports 51820 and 51821), set up only
/// through wgctl. Peers are left to the test.
pub async fn two_nodes(tag: &str) -> (Node, Node) {
    require_root_and_wireguard_go();
    let ns_a = Netns::new(&format!("{tag}a")).unwrap();
    let ns_b = Netns::new(&format!("{tag}b")).unwrap();
    let veth_a = unique(&format!("{tag}v"));
    let veth_b = unique(&format!("{tag}v"));
    veth(&ns_a, &veth_a, &ns_b, &veth_b).unwrap();
    let a = node(ns_a, veth_a, "192.0.2.1", "10.0.0.1", 51820, tag).await;
    let b = node(ns_b, veth_b, "192.0.2.2", "10.0.0.2", 51821, tag).await;
    (a, b)
}

async fn node(
    ns: Netns,
    veth: String,
    underlay: &str,
    overlay: &str,
    port: u16,
    tag: &str,
) -> Node {
    let rt = NsRuntime::new(&ns).unwrap();
    let host = Arc::new(
        rt.run(|| async { Host::open().await.expect("open wgctl host") })
            .await,
    );
    let key = PrivateKey::generate();
    let wg_name = unique(&format!("{tag}w"));
    let wg = rt
        .run({
            let host = host.clone();
            let veth = veth.clone();
            let key = key.clone();
            let underlay: IpPrefix = format!("{underlay}/24").parse().unwrap();
            let overlay: IpPrefix = format!("{overlay}/24").parse().unwrap();
            move || async move {
                let net = host.netlink();
                net.link_up(&veth).await?;
                net.add_address(&veth, underlay).await?;
                let wg = host
                    .create_wireguard(&wg_name, BackendKind::Userspace, &key, Some(port))
                    .await?;
                net.add_address(&wg_name, overlay).await?;
                net.link_up(&wg_name).await?;
                Ok::<_, wgctl::Error>(wg)
            }
        })
        .await
        .expect("set up node through wgctl");
    Node {
        host: Some(host),
        wg,
        key,
        port,
        veth,
        underlay: underlay.to_owned(),
        overlay: overlay.to_owned(),
        rt,
        ns,
    }
}
