//! [`WgNode`]: a WireGuard interface in a namespace set up through wgctl
//! (userspace backend), the way a test plays a node without running the
//! agent.

use crate::netns::{Netns, NsRuntime};
use anyhow::Result;

/// Its wgctl host is shut down on drop (interface, wireguard-go and
/// addresses removed).
pub struct WgNode {
    host: Option<wgctl::Host>,
    pub wg: wgctl::WgInterface,
    pub key: wgctl::keys::PrivateKey,
    pub port: u16,
    rt: NsRuntime,
}

impl WgNode {
    /// Creates interface `ifname` with a fresh key, `port` and `address`
    /// (`addr/len`), and sets it up.
    pub fn new(ns: &Netns, ifname: &str, port: u16, address: &str) -> Result<WgNode> {
        let rt = NsRuntime::new(ns)?;
        let key = wgctl::keys::PrivateKey::generate();
        let (ifname, k) = (ifname.to_owned(), key.clone());
        let address: wgctl::IpPrefix = address
            .parse()
            .map_err(|e| anyhow::anyhow!("{address}: {e}"))?;
        let (host, wg) = rt.block_on(move || async move {
            let host = wgctl::Host::open().await?;
            let wg = host
                .create_wireguard(&ifname, wgctl::BackendKind::Userspace, &k, Some(port))
                .await?;
            let net = host.netlink();
            net.add_address(&ifname, address).await?;
            net.link_up(&ifname).await?;
            Ok::<_, wgctl::Error>((host, wg))
        })?;
        Ok(WgNode {
            host: Some(host),
            wg,
            key,
            port,
            rt,
        })
    }

    pub fn public_key(&self) -> wgctl::keys::PublicKey {
        self.key.public_key()
    }

    pub fn ifname(&self) -> &str {
        self.wg.name()
    }

    pub fn upsert_peer(&self, peer: wgctl::PeerConfig) -> Result<()> {
        let wg = self.wg.clone();
        Ok(self
            .rt
            .block_on(move || async move { wg.upsert_peer(peer).await })?)
    }

    pub fn remove_peer(&self, key: wgctl::keys::PublicKey) -> Result<()> {
        let wg = self.wg.clone();
        Ok(self
            .rt
            .block_on(move || async move { wg.remove_peer(&key).await })?)
    }

    pub fn read(&self) -> Result<wgctl::DeviceInfo> {
        let wg = self.wg.clone();
        Ok(self.rt.block_on(move || async move { wg.read().await })?)
    }

    /// Removes what wgctl created here.
    pub fn shutdown(&mut self) {
        if let Some(host) = self.host.take() {
            if let Err(e) = self.rt.block_on(move || host.shutdown()) {
                eprintln!("wgctl shutdown of {}: {e}", self.wg.name());
            }
        }
    }
}

impl Drop for WgNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}
