//! A WireGuard interface, with the same operations on either backend.
//!
//! wireguard-control does the talking (generic netlink for the kernel, the
//! UAPI socket for wireguard-go); its calls block, so they run in
//! `spawn_blocking`. Its `Key` type never leaves this module.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::SystemTime,
};

use wireguard_control::{Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};
use zeroize::Zeroize;

use crate::{
    backend::Backend,
    error::{Error, Result},
    keys::{PrivateKey, PublicKey},
    ledger::Registry,
    netlink::Rtnl,
    prefix::IpPrefix,
    userspace::{self, WireguardGo},
};

/// A peer as wgctl sets it: `upsert_peer` makes the peer look like this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    /// `None` keeps whatever endpoint WireGuard has (learnt from the peer's
    /// packets, or set earlier).
    pub endpoint: Option<SocketAddr>,
    /// Replaces the peer's allowed-ips.
    pub allowed_ips: Vec<IpPrefix>,
    /// Seconds; `None` turns persistent keepalive off.
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    pub fn new(public_key: PublicKey) -> Self {
        PeerConfig {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
        }
    }
}

/// A device as read back from WireGuard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub backend: Backend,
    pub public_key: Option<PublicKey>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerInfo>,
}

impl DeviceInfo {
    pub fn peer(&self, public_key: &PublicKey) -> Option<&PeerInfo> {
        self.peers.iter().find(|p| &p.public_key == public_key)
    }
}

/// A peer as read back, with its traffic state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpPrefix>,
    pub persistent_keepalive: Option<u16>,
    /// `None` until the first handshake completes.
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// What the interface should look like; re-applied when wireguard-go is
/// restarted, since a new process starts empty.
pub(crate) struct DesiredConfig {
    pub(crate) private_key: PrivateKey,
    pub(crate) listen_port: Option<u16>,
    pub(crate) peers: BTreeMap<PublicKey, PeerConfig>,
}

impl DesiredConfig {
    /// The whole configuration as one update that replaces what is there.
    pub(crate) fn full_update(&self) -> DeviceUpdate {
        let mut update = DeviceUpdate::new()
            .set_private_key(Key(*self.private_key.expose_bytes()))
            .replace_peers();
        if let Some(port) = self.listen_port {
            update = update.set_listen_port(port);
        }
        for peer in self.peers.values() {
            update = update.add_peer(peer_builder(peer));
        }
        update
    }
}

fn peer_builder(peer: &PeerConfig) -> PeerConfigBuilder {
    let mut builder = PeerConfigBuilder::new(&Key(*peer.public_key.as_bytes()))
        .replace_allowed_ips()
        .set_persistent_keepalive_interval(peer.persistent_keepalive.unwrap_or(0));
    if let Some(endpoint) = peer.endpoint {
        builder = builder.set_endpoint(endpoint);
    }
    for ip in &peer.allowed_ips {
        builder = builder.add_allowed_ip(ip.addr(), ip.len());
    }
    builder
}

/// Applies an update synchronously. For wireguard-go, refuses when the control
/// socket is not answering: wireguard-control would otherwise start a second,
/// unsupervised wireguard-go.
pub(crate) fn apply_blocking(
    name: &InterfaceName,
    backend: Backend,
    update: DeviceUpdate,
) -> io::Result<()> {
    if backend == Backend::Userspace && !userspace::socket_is_live(&name.to_string()) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "wireguard-go control socket is not answering",
        ));
    }
    update.apply(name, backend.to_wgc())
}

/// A WireGuard interface created by a [`crate::Host`]. Cloning gives another
/// handle to the same interface. Dropping handles does not remove it: the
/// host does, on shutdown, or [`WgInterface::destroy`] does.
#[derive(Clone)]
pub struct WgInterface {
    inner: Arc<WgInner>,
}

pub(crate) struct WgInner {
    pub(crate) name: String,
    pub(crate) wgc_name: InterfaceName,
    pub(crate) backend: Backend,
    pub(crate) desired: Arc<Mutex<DesiredConfig>>,
    /// Serialises configuration changes so `desired` matches what was applied.
    pub(crate) config_lock: tokio::sync::Mutex<()>,
    pub(crate) wireguard_go: Option<Arc<WireguardGo>>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) rtnl: Rtnl,
    pub(crate) destroyed: AtomicBool,
}

impl WgInterface {
    pub(crate) fn from_inner(inner: WgInner) -> Self {
        WgInterface {
            inner: Arc::new(inner),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    pub fn public_key(&self) -> PublicKey {
        self.desired().private_key.public_key()
    }

    /// The PID of the wireguard-go process currently serving this interface
    /// (userspace backend only).
    pub fn wireguard_go_pid(&self) -> Option<u32> {
        self.inner.wireguard_go.as_ref().and_then(|p| p.pid())
    }

    /// How many times wireguard-go had to be restarted.
    pub fn wireguard_go_restarts(&self) -> u32 {
        self.inner.wireguard_go.as_ref().map_or(0, |p| p.restarts())
    }

    fn desired(&self) -> std::sync::MutexGuard<'_, DesiredConfig> {
        self.inner.desired.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_alive(&self) -> Result<()> {
        self.inner.registry.check_open()?;
        if self.inner.destroyed.load(Ordering::SeqCst) {
            return Err(Error::UnknownInterface(self.inner.name.clone()));
        }
        Ok(())
    }

    /// Runs one wireguard-control update off the async threads.
    async fn apply(&self, context: &'static str, update: DeviceUpdate) -> Result<()> {
        self.check_alive()?;
        let inner = &self.inner;
        if inner.backend == Backend::Kernel && !inner.rtnl.link_exists(&inner.name).await? {
            // The kernel backend would silently re-create a missing link.
            return Err(Error::UnknownInterface(inner.name.clone()));
        }
        let name = inner.wgc_name;
        let backend = inner.backend;
        let result = tokio::task::spawn_blocking(move || apply_blocking(&name, backend, update))
            .await
            .map_err(|e| Error::io(context, io::Error::other(e)))?;
        result.map_err(|e| self.backend_error(context, e))
    }

    fn backend_error(&self, context: &'static str, source: io::Error) -> Error {
        let gone = match self.inner.backend {
            Backend::Userspace => matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ),
            Backend::Kernel => source.raw_os_error() == Some(libc::ENODEV),
        };
        if gone {
            Error::UnknownInterface(self.inner.name.clone())
        } else {
            Error::WireGuard {
                ifname: self.inner.name.clone(),
                backend: self.inner.backend,
                context,
                source,
            }
        }
    }

    /// Adds the peer, or updates it in place (endpoint, allowed-ips,
    /// keepalive) without tearing down its session.
    pub async fn upsert_peer(&self, peer: PeerConfig) -> Result<()> {
        let _serialised = self.inner.config_lock.lock().await;
        let update = DeviceUpdate::new().add_peer(peer_builder(&peer));
        self.apply("upsert peer", update).await?;
        // The daemons log why at info; this is the detail.
        tracing::debug!(
            ifname = %self.inner.name,
            peer = %peer.public_key,
            endpoint = %crate::fields::Opt(&peer.endpoint),
            allowed_ips = %crate::fields::List(&peer.allowed_ips),
            keepalive = %crate::fields::Opt(&peer.persistent_keepalive),
            "peer upserted"
        );
        self.desired().peers.insert(peer.public_key, peer);
        Ok(())
    }

    /// Replaces the interface's private key (a key rotation). WireGuard
    /// expires every session with the old key; a handshake with the new one
    /// is started at once with every peer WireGuard knows an endpoint of
    /// (configured, or learnt from the peer: a responder's), by a keepalive
    /// switched on and back off, so that neither side waits for the other's
    /// next packet (a correspondent that waits as responder would only take
    /// over after seconds). Peers and the port stay.
    pub async fn set_private_key(&self, key: PrivateKey) -> Result<()> {
        let seen = self.read().await?;
        let _serialised = self.inner.config_lock.lock().await;
        let update = DeviceUpdate::new().set_private_key(Key(*key.expose_bytes()));
        self.apply("set private key", update).await?;
        tracing::info!(ifname = %self.inner.name, public_key = %key.public_key(), "private key replaced");
        self.desired().private_key = key;
        let peers: Vec<(PeerConfig, SocketAddr)> = {
            let desired = self.desired();
            seen.peers
                .iter()
                .filter_map(|p| {
                    let endpoint = p.endpoint?;
                    Some((desired.peers.get(&p.public_key)?.clone(), endpoint))
                })
                .collect()
        };
        for (p, endpoint) in peers {
            let kick = PeerConfig {
                endpoint: Some(endpoint),
                persistent_keepalive: Some(1),
                ..p.clone()
            };
            let on = DeviceUpdate::new().add_peer(peer_builder(&kick));
            self.apply("start a handshake", on).await?;
            // Back as configured (an endpoint left out stays as learnt).
            let back = DeviceUpdate::new().add_peer(peer_builder(&p));
            self.apply("start a handshake", back).await?;
        }
        Ok(())
    }

    /// Removes the peer; removing an absent peer is not an error.
    pub async fn remove_peer(&self, public_key: &PublicKey) -> Result<()> {
        let _serialised = self.inner.config_lock.lock().await;
        let update = DeviceUpdate::new().remove_peer_by_key(&Key(*public_key.as_bytes()));
        self.apply("remove peer", update).await?;
        tracing::info!(ifname = %self.inner.name, peer = %public_key, "peer removed");
        self.desired().peers.remove(public_key);
        Ok(())
    }

    /// Changes the UDP listen port (0 picks a random one).
    pub async fn set_listen_port(&self, port: u16) -> Result<()> {
        let _serialised = self.inner.config_lock.lock().await;
        self.apply("set listen port", DeviceUpdate::new().set_listen_port(port))
            .await?;
        tracing::info!(ifname = %self.inner.name, port, "listen port set");
        self.desired().listen_port = (port != 0).then_some(port);
        Ok(())
    }

    /// Sets the listen port to the port in use again. After a host address
    /// change wireguard-go stops sending until its socket is re-bound, which
    /// this does; on the kernel backend it is harmless. Returns the port.
    pub async fn reapply_listen_port(&self) -> Result<u16> {
        let configured = self.desired().listen_port;
        let port = match configured {
            Some(port) => port,
            None => self
                .read()
                .await?
                .listen_port
                .ok_or_else(|| Error::UnknownInterface(self.inner.name.clone()))?,
        };
        let _serialised = self.inner.config_lock.lock().await;
        self.apply(
            "re-apply listen port",
            DeviceUpdate::new().set_listen_port(port),
        )
        .await?;
        tracing::info!(ifname = %self.inner.name, port, "listen port re-applied");
        Ok(port)
    }

    /// Reads the device back: listen port and peers with endpoint, last
    /// handshake and byte counters.
    pub async fn read(&self) -> Result<DeviceInfo> {
        self.check_alive()?;
        let name = self.inner.wgc_name;
        let backend = self.inner.backend;
        let result = tokio::task::spawn_blocking(move || {
            if backend == Backend::Userspace && !userspace::socket_is_live(&name.to_string()) {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            Device::get(&name, backend.to_wgc())
        })
        .await
        .map_err(|e| Error::io("read device", io::Error::other(e)))?;
        let device = result.map_err(|e| self.backend_error("read device", e))?;
        Ok(device_info(device, backend))
    }

    /// Removes the interface now (and stops its wireguard-go), instead of at
    /// host shutdown. Further operations on any handle give
    /// [`Error::UnknownInterface`]. A no-op after the host has shut down.
    pub async fn destroy(&self) -> Result<()> {
        if self.inner.destroyed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if self.inner.registry.check_open().is_err() {
            // The host's shutdown already removed it.
            return Ok(());
        }
        let record = self.inner.registry.take_interface(&self.inner.name);
        if let Some(process) = self.inner.wireguard_go.clone() {
            tokio::task::spawn_blocking(move || process.stop())
                .await
                .map_err(|e| Error::io("stop wireguard-go", io::Error::other(e)))?;
        }
        self.inner.rtnl.delete_link(&self.inner.name).await?;
        drop(record);
        tracing::info!(ifname = %self.inner.name, backend = %self.inner.backend, "WireGuard interface destroyed");
        Ok(())
    }
}

/// Converts wireguard-control's device, wiping the private key it read back.
fn device_info(mut device: Device, backend: Backend) -> DeviceInfo {
    if let Some(mut key) = device.private_key.take() {
        key.0.zeroize();
    }
    let peers = device
        .peers
        .iter()
        .map(|p| PeerInfo {
            public_key: PublicKey::from_bytes(p.config.public_key.0),
            endpoint: p.config.endpoint,
            allowed_ips: p
                .config
                .allowed_ips
                .iter()
                .filter_map(|ip| IpPrefix::new(ip.address, ip.cidr).ok())
                .collect(),
            persistent_keepalive: p.config.persistent_keepalive_interval.filter(|&k| k != 0),
            last_handshake: p.stats.last_handshake_time,
            rx_bytes: p.stats.rx_bytes,
            tx_bytes: p.stats.tx_bytes,
        })
        .collect();
    DeviceInfo {
        name: device.name.to_string(),
        backend,
        public_key: device.public_key.map(|k| PublicKey::from_bytes(k.0)),
        listen_port: device.listen_port.filter(|&p| p != 0),
        peers,
    }
}
