//! The owner of everything wgctl does to the host. It records each interface,
//! address and route it creates, and removes them all on [`Host::shutdown`] or,
//! best effort, when dropped, so a crashed or restarted agent leaves nothing
//! behind.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread,
};

use tokio::{sync::mpsc, task::JoinHandle};
use wireguard_control::InterfaceName;

use crate::{
    backend::{Backend, BackendKind, KernelSupport},
    device::{apply_blocking, DesiredConfig, WgInner, WgInterface},
    error::{Error, Result},
    keys::PrivateKey,
    ledger::{CreatedKind, InterfaceRecord, Records, Registry},
    miss::MissTun,
    netlink::{Netlink, Rtnl},
    netns::{enter_netns, THREAD_NETNS},
    userspace::{self, RestartHook, WireguardGo},
};

/// wgctl's view of the host: the network namespace of the thread that opened
/// it. Everything created through it (WireGuard interfaces and their
/// wireguard-go processes, the miss TUN, addresses, routes) is removed by
/// [`Host::shutdown`], or best effort when it is dropped.
pub struct Host {
    rtnl: Rtnl,
    registry: Arc<Registry>,
    /// The namespace to act in, even from a thread that is elsewhere (drop,
    /// the wireguard-go supervisor).
    netns: Option<Arc<File>>,
    conn_task: JoinHandle<()>,
    restore_task: JoinHandle<()>,
    restart_tx: mpsc::UnboundedSender<String>,
    kernel_support: tokio::sync::OnceCell<KernelSupport>,
    wireguard_go: PathBuf,
}

impl Host {
    /// Opens netlink in the calling thread's network namespace. Must be called
    /// on a tokio runtime.
    pub async fn open() -> Result<Host> {
        let netns =
            File::open(THREAD_NETNS).map_err(|e| Error::io(format!("open {THREAD_NETNS}"), e))?;
        let (rtnl, conn_task) = Rtnl::connect()?;
        let registry = Arc::new(Registry::default());
        let (restart_tx, restart_rx) = mpsc::unbounded_channel();
        let restore_task = tokio::spawn(restore_after_restarts(
            rtnl.clone(),
            registry.clone(),
            restart_rx,
        ));
        Ok(Host {
            rtnl,
            registry,
            netns: Some(Arc::new(netns)),
            conn_task,
            restore_task,
            restart_tx,
            kernel_support: tokio::sync::OnceCell::new(),
            wireguard_go: PathBuf::from(userspace::DEFAULT_BINARY),
        })
    }

    /// Uses another wireguard-go binary (a path, or a name looked up on
    /// `PATH`) for the userspace backend.
    pub fn with_wireguard_go(mut self, binary: impl Into<PathBuf>) -> Self {
        self.wireguard_go = binary.into();
        self
    }

    /// Links, addresses, routes and events of this namespace.
    pub fn netlink(&self) -> Netlink {
        Netlink {
            rtnl: self.rtnl.clone(),
            registry: self.registry.clone(),
        }
    }

    /// Whether the kernel can create `wireguard` links, probed once by
    /// creating and deleting a throwaway link.
    pub async fn kernel_support(&self) -> Result<KernelSupport> {
        self.kernel_support
            .get_or_try_init(|| probe_kernel(&self.rtnl))
            .await
            .copied()
    }

    /// The backend `kind` means on this host.
    pub async fn resolve_backend(&self, kind: BackendKind) -> Result<Backend> {
        if !kind.needs_probe() {
            return kind.resolve(KernelSupport::Missing);
        }
        kind.resolve(self.kernel_support().await?)
    }

    /// Creates a WireGuard interface with its key and listen port (`None`:
    /// random). The interface is left down with no address; use
    /// [`Host::netlink`] for that.
    pub async fn create_wireguard(
        &self,
        name: &str,
        kind: BackendKind,
        private_key: &PrivateKey,
        listen_port: Option<u16>,
    ) -> Result<WgInterface> {
        crate::validate_ifname(name)?;
        let wgc_name: InterfaceName = name.parse().map_err(|_| Error::InvalidInterfaceName {
            name: name.to_owned(),
            reason: "rejected by wireguard-control",
        })?;
        self.registry.check_open()?;
        let backend = self.resolve_backend(kind).await?;
        if self.rtnl.link_exists(name).await? {
            return Err(Error::InterfaceExists(name.to_owned()));
        }
        let desired = Arc::new(Mutex::new(DesiredConfig {
            private_key: private_key.clone(),
            listen_port,
            peers: BTreeMap::new(),
        }));

        let wireguard_go = match backend {
            Backend::Userspace => {
                // The socket directory is shared by all namespaces.
                if userspace::socket_is_live(name) {
                    return Err(Error::InterfaceExists(name.to_owned()));
                }
                let hook = restart_hook(name, wgc_name, desired.clone(), self.restart_tx.clone());
                let binary = self.wireguard_go.clone();
                let ifname = name.to_owned();
                let netns = self.netns.clone();
                let process = tokio::task::spawn_blocking(move || {
                    WireguardGo::start(&ifname, &binary, netns, hook)
                })
                .await
                .map_err(|e| Error::io("start wireguard-go", io::Error::other(e)))??;
                Some(Arc::new(process))
            }
            Backend::Kernel => {
                self.rtnl.create_wireguard_link(name).await?;
                None
            }
        };
        let record = InterfaceRecord {
            name: name.to_owned(),
            kind: CreatedKind::WireGuard {
                backend,
                wireguard_go: wireguard_go.clone(),
            },
            up: false,
        };
        if let Err(record) = self.registry.record_interface(record) {
            remove_interface(&self.rtnl, record).await;
            return Err(Error::ShutDown);
        }

        let update = desired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .full_update();
        let applied =
            tokio::task::spawn_blocking(move || apply_blocking(&wgc_name, backend, update)).await;
        let failure = match applied {
            Ok(Ok(())) => None,
            Ok(Err(source)) => Some(Error::WireGuard {
                ifname: name.to_owned(),
                backend,
                context: "set private key and listen port",
                source,
            }),
            Err(e) => Some(Error::io("configure interface", io::Error::other(e))),
        };
        if let Some(err) = failure {
            if let Some(record) = self.registry.take_interface(name) {
                remove_interface(&self.rtnl, record).await;
            }
            return Err(err);
        }

        let pid = wireguard_go.as_ref().and_then(|p| p.pid());
        tracing::info!(
            ifname = %name,
            %backend,
            requested = %kind,
            wireguard_go_pid = %crate::fields::Opt(&pid),
            listen_port = %crate::fields::Opt(&listen_port),
            public_key = %private_key.public_key(),
            "WireGuard interface created"
        );
        Ok(WgInterface::from_inner(WgInner {
            name: name.to_owned(),
            wgc_name,
            backend,
            desired,
            config_lock: tokio::sync::Mutex::new(()),
            wireguard_go,
            registry: self.registry.clone(),
            rtnl: self.rtnl.clone(),
            destroyed: AtomicBool::new(false),
        }))
    }

    /// Creates the miss TUN and sets it up. Route the overlay EID space to it
    /// (with [`Netlink::add_route`]) to capture packets that have no peer yet.
    pub async fn create_miss_tun(&self, name: &str, mtu: u16) -> Result<MissTun> {
        crate::validate_ifname(name)?;
        self.registry.check_open()?;
        if self.rtnl.link_exists(name).await? {
            return Err(Error::InterfaceExists(name.to_owned()));
        }
        let device = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .enable(false)
            .build_async()
            .map_err(|e| Error::io(format!("create TUN {name}"), e))?;
        let record = InterfaceRecord {
            name: name.to_owned(),
            kind: CreatedKind::Tun,
            up: false,
        };
        if let Err(record) = self.registry.record_interface(record) {
            remove_interface(&self.rtnl, record).await;
            return Err(Error::ShutDown);
        }
        let tun = MissTun {
            device,
            name: name.to_owned(),
        };
        if let Err(e) = self.rtnl.disable_ipv6_link_local(name).await {
            // Only costs some self-generated IPv6 noise on the TUN.
            tracing::debug!(ifname = %name, %e, "IPv6 link-local left on the miss TUN");
        }
        self.rtnl.set_link(name, true).await?;
        self.registry.note_link_state(name, true);
        tracing::info!(ifname = %name, "miss TUN created");
        Ok(tun)
    }

    /// Clamps the MSS of TCP SYNs leaving through `wg_if` to its route MTU
    /// (an xTR: hosts behind it advertise their LAN's MSS). The nftables
    /// table goes at shutdown.
    pub fn clamp_mss(&self, wg_if: &str) -> Result<()> {
        crate::validate_ifname(wg_if)?;
        self.registry.check_open()?;
        let table = crate::nft::table_name(wg_if);
        crate::nft::run(&crate::nft::clamp_script(&table, wg_if))?;
        if let Err(table) = self.registry.record_nft_table(table) {
            let _ = crate::nft::delete_table(&table);
            return Err(Error::ShutDown);
        }
        tracing::info!(ifname = %wg_if, "TCP MSS clamped to the tunnel's MTU");
        Ok(())
    }

    /// Drops, in the kernel, what any one source sends beyond its limit
    /// (see [`crate::SourceLimit`]), so that one flooding source cannot fill
    /// a socket's queue for everyone. The nftables table, named for
    /// `ifname`, goes at shutdown.
    pub fn limit_udp_per_source(
        &self,
        ifname: &str,
        limits: &[crate::SourceLimit<'_>],
    ) -> Result<()> {
        crate::validate_ifname(ifname)?;
        self.registry.check_open()?;
        let table = format!("{}_in", crate::nft::table_name(ifname));
        crate::nft::run(&crate::nft::source_limit_script(&table, limits))?;
        if let Err(table) = self.registry.record_nft_table(table) {
            let _ = crate::nft::delete_table(&table);
            return Err(Error::ShutDown);
        }
        for l in limits {
            tracing::info!(
                ifname = l.ifname.unwrap_or("any"),
                port = l.port,
                per_second = l.per_second,
                burst = l.burst,
                "per-source UDP limit in the kernel"
            );
        }
        Ok(())
    }

    /// Removes everything this host created: routes, addresses, interfaces
    /// and wireguard-go processes. Reports the first failure, after trying
    /// everything.
    pub async fn shutdown(mut self) -> Result<()> {
        self.restore_task.abort();
        let records = self.registry.close_and_take();
        let mut errors = cleanup(&self.rtnl, records).await;
        self.netns = None;
        tracing::info!(failures = errors.len(), "wgctl host shut down");
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.swap_remove(0))
        }
    }
}

impl Drop for Host {
    /// Best-effort synchronous cleanup, in the host's own namespace even if
    /// dropped on a thread that is elsewhere. Prefer [`Host::shutdown`].
    fn drop(&mut self) {
        self.restore_task.abort();
        let records = self.registry.close_and_take();
        if !records.is_empty() {
            let netns = self.netns.take();
            let worker = thread::Builder::new()
                .name("wgctl-cleanup".into())
                .spawn(move || cleanup_on_thread(netns, records));
            match worker {
                Ok(handle) => {
                    if handle.join().is_err() {
                        tracing::error!("wgctl cleanup thread panicked");
                    }
                }
                Err(e) => tracing::error!(%e, "cannot spawn wgctl cleanup thread"),
            }
        }
        self.conn_task.abort();
    }
}

fn restart_hook(
    ifname: &str,
    wgc_name: InterfaceName,
    desired: Arc<Mutex<DesiredConfig>>,
    restarted: mpsc::UnboundedSender<String>,
) -> RestartHook {
    let ifname = ifname.to_owned();
    Box::new(move || {
        let update = desired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .full_update();
        match apply_blocking(&wgc_name, Backend::Userspace, update) {
            Ok(()) => tracing::info!(%ifname, "WireGuard configuration re-applied after restart"),
            Err(e) => {
                tracing::error!(%ifname, %e, "cannot re-apply WireGuard configuration after restart")
            }
        }
        let _ = restarted.send(ifname.clone());
    })
}

/// A restarted wireguard-go has a new TUN with nothing on it: put back what
/// wgctl had set on the old one.
async fn restore_after_restarts(
    rtnl: Rtnl,
    registry: Arc<Registry>,
    mut restarted: mpsc::UnboundedReceiver<String>,
) {
    while let Some(ifname) = restarted.recv().await {
        let Some((up, addresses, routes)) = registry.restore_plan(&ifname) else {
            continue;
        };
        let mut failures = 0;
        if up {
            if let Err(e) = rtnl.set_link(&ifname, true).await {
                tracing::error!(%ifname, %e, "cannot set restarted interface up");
                failures += 1;
            }
        }
        for address in addresses {
            if let Err(e) = rtnl.add_address(&ifname, address).await {
                tracing::error!(%ifname, %address, %e, "cannot restore address");
                failures += 1;
            }
        }
        for route in routes {
            if let Err(e) = rtnl.add_route(&route).await {
                tracing::error!(%ifname, dst = %route.dst, %e, "cannot restore route");
                failures += 1;
            }
        }
        tracing::info!(%ifname, failures, "link state restored after wireguard-go restart");
    }
}

async fn probe_kernel(rtnl: &Rtnl) -> Result<KernelSupport> {
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "wgp{:x}x{:x}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    let support = match rtnl.create_wireguard_link(&name).await {
        Ok(()) => {
            rtnl.delete_link(&name).await?;
            KernelSupport::Available
        }
        Err(Error::KernelModuleMissing) => KernelSupport::Missing,
        Err(e) => return Err(e),
    };
    tracing::info!(
        kernel_wireguard = matches!(support, KernelSupport::Available),
        "probed kernel WireGuard support"
    );
    Ok(support)
}

/// Stops an interface's wireguard-go (if any) and deletes its link.
async fn remove_interface(rtnl: &Rtnl, record: InterfaceRecord) -> Option<Error> {
    let userspace = matches!(
        record.kind,
        CreatedKind::WireGuard {
            backend: Backend::Userspace,
            ..
        }
    );
    if let CreatedKind::WireGuard {
        wireguard_go: Some(process),
        ..
    } = record.kind
    {
        if let Err(e) = tokio::task::spawn_blocking(move || process.stop()).await {
            tracing::error!(ifname = %record.name, %e, "stopping wireguard-go failed");
        }
    }
    let result = rtnl.delete_link(&record.name).await;
    if userspace {
        let socket = userspace::socket_path(&record.name);
        if socket.exists() && !userspace::socket_is_live(&record.name) {
            let _ = std::fs::remove_file(socket);
        }
    }
    match result {
        Ok(()) => {
            tracing::debug!(ifname = %record.name, "interface removed");
            None
        }
        Err(e) => {
            tracing::error!(ifname = %record.name, %e, "cannot remove interface");
            Some(e)
        }
    }
}

/// Routes, then addresses, then interfaces, each newest first. Anything that
/// is already gone (e.g. a route whose interface was deleted) is fine.
async fn cleanup(rtnl: &Rtnl, records: Records) -> Vec<Error> {
    let mut errors = Vec::new();
    for route in records.routes.iter().rev() {
        match rtnl.del_route(route).await {
            Ok(_) | Err(Error::UnknownInterface(_)) => {}
            Err(e) => {
                tracing::error!(dst = %route.dst, ifname = %route.ifname, %e, "cannot remove route");
                errors.push(e);
            }
        }
    }
    for (ifname, address) in records.addresses.iter().rev() {
        match rtnl.del_address(ifname, *address).await {
            Ok(_) | Err(Error::UnknownInterface(_)) => {}
            Err(e) => {
                tracing::error!(%ifname, %address, %e, "cannot remove address");
                errors.push(e);
            }
        }
    }
    for table in records.nft_tables.iter().rev() {
        if let Err(e) = crate::nft::delete_table(table) {
            tracing::error!(%table, %e, "cannot remove nftables table");
            errors.push(e);
        }
    }
    for record in records.interfaces.into_iter().rev() {
        errors.extend(remove_interface(rtnl, record).await);
    }
    errors
}

fn cleanup_on_thread(netns: Option<Arc<File>>, records: Records) {
    if let Err(e) = enter_netns(netns.as_deref()) {
        // Stopping wireguard-go needs no namespace; the rest would hit the
        // wrong one.
        tracing::error!(%e, "cannot enter the host's network namespace: only stopping wireguard-go");
        for record in records.interfaces {
            if let CreatedKind::WireGuard {
                wireguard_go: Some(process),
                ..
            } = record.kind
            {
                process.stop();
            }
        }
        return;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(%e, "cannot build cleanup runtime");
            return;
        }
    };
    runtime.block_on(async move {
        match Rtnl::connect() {
            Ok((rtnl, conn)) => {
                let errors = cleanup(&rtnl, records).await;
                conn.abort();
                tracing::info!(failures = errors.len(), "wgctl host cleaned up on drop");
            }
            Err(e) => tracing::error!(%e, "cannot open netlink for cleanup"),
        }
    });
}
