//! The tokio shell: owns the WireGuard control interface, the sockets, the
//! store, the clock and the telemetry endpoint, and drives the sans-IO
//! [`MapServer`] with them.
//!
//! One event loop, one task: each iteration takes one event (a socket
//! turning readable, a timer, a page request or a signal), then *flushes*:
//! it carries out the commits and control-interface actions the core asks
//! for, reporting each outcome back, then sends the datagrams the core
//! releases. The core holds back a Map-Notify until the commit of its
//! registration is reported done, so the shell needs no knowledge of which
//! datagram promises what.
//!
//! A readable socket is served in batches (recvmmsg, see [`crate::udp`]):
//! each batch is handed to the core and what the core releases at once
//! (replies, notifies) is sent right away (sendmmsg), before the next batch
//! is read, so a requester's next request overlaps with the map-server's
//! work instead of waiting for a whole drained queue. Up to [`DRAIN_LIMIT`]
//! datagrams are taken before the flush, so that a burst of registrations is
//! still committed in one transaction.

use crate::store::{Clock, Store, StoreError, DEFAULT_CACHE_BYTES};
use crate::udp::{RecvBatch, SendBatch};
use conf::map_server::{ControlInterface, MapServerConfig};
use conf::telemetry::{self, PageRequest, Telemetry, TelemetryError};
use lisp_wire::LISP_CONTROL_PORT;
use map_server_core::{
    ActionFault, ControlAction, Endpoints, MapServer, Mapping, Origin, PeerPolicy, Policy, Rloc,
    StoreFault, Transmit, Via, MAX_PEERS,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{debug, error, info, warn};
use wgctl::{Host, IpPrefix, PeerConfig, WgInterface};

mod pages;

/// Datagrams handled per iteration before the flush, so a burst is committed
/// in one transaction without starving the timers.
const DRAIN_LIMIT: usize = 256;
/// Receive buffer asked for on each socket: room for bursts of registrations
/// while a commit is in progress.
const SOCKET_RCVBUF: usize = 4 << 20;
/// How long to wait for the interface of a killed predecessor to go away
/// (its wireguard-go exits on the death of its parent, a moment later).
const STALE_INTERFACE_WAIT: Duration = Duration::from_secs(3);

/// Why the map-server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("{file}: {count} control peers configured; at most {MAX_PEERS} are supported")]
    TooManyPeers { file: String, count: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("WireGuard control interface {ifname}: {context}: {error}")]
    WireGuard {
        ifname: String,
        context: &'static str,
        error: Box<wgctl::Error>,
    },
    #[error("cannot listen on {addr}{}: {error}", device.as_ref().map(|d| format!(" (device {d})")).unwrap_or_default())]
    Socket {
        addr: SocketAddr,
        device: Option<String>,
        error: io::Error,
    },
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("cannot install the {0} handler: {1}")]
    Signal(&'static str, io::Error),
}

/// Compiles the configuration into what the protocol core trusts.
pub fn policy_from_config(cfg: &MapServerConfig) -> Result<Policy, ShellError> {
    if cfg.peers.len() > MAX_PEERS {
        return Err(ShellError::TooManyPeers {
            file: cfg.file.display().to_string(),
            count: cfg.peers.len(),
        });
    }
    let peers = cfg
        .peers
        .iter()
        .map(|p| PeerPolicy {
            name: p.name.clone(),
            control_address: p.control_address,
            wg_key: p.public_key.map(|k| *k.as_bytes()),
            site_key: p.site_key.as_bytes().to_vec(),
            allowed: p.eids.clone(),
        })
        .collect();
    let static_mappings = cfg
        .static_mappings
        .iter()
        .map(|s| {
            let mapping = Mapping {
                rlocs: s
                    .rlocs
                    .iter()
                    .map(|r| Rloc {
                        addr: r.address,
                        port: s.port,
                        priority: r.priority,
                        weight: r.weight,
                        relayed: false,
                    })
                    .collect(),
                wg_key: s.public_key.map(|k| *k.as_bytes()),
                origin: Origin::Static,
                ttl_minutes: s.ttl_minutes,
                map_version: 0,
                expires: None,
            };
            (s.prefix, mapping)
        })
        .collect();
    Ok(Policy {
        peers,
        registration_lifetime: cfg.registration_lifetime,
        negative_ttl_minutes: cfg.negative_ttl_minutes,
        static_mappings,
        push_moves: cfg.push_moves,
        control_address: cfg.control.as_ref().map(|c| c.address),
        plain_allowed: cfg.plain_allowed.clone(),
        limits: cfg.limits,
        own_addresses: host_addresses(),
        domain: cfg.domain.clone(),
        ..Policy::default()
    })
}

/// The addresses of this host's interfaces (in the map-server's network
/// namespace): a node may not register one as its locator.
fn host_addresses() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        warn!(
            "cannot list this host's addresses; nodes registering them as locators are not refused"
        );
        return Vec::new();
    };
    let mut out: Vec<std::net::IpAddr> = addrs
        .filter_map(|a| {
            let sa = a.address?;
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Runs the map-server until SIGINT or SIGTERM, then removes the control
/// interface and everything else it created.
pub async fn run(cfg: MapServerConfig) -> Result<(), ShellError> {
    for var in &cfg.ignored_env {
        warn!(%var, "environment variable matches no setting; ignored");
    }
    let policy = policy_from_config(&cfg)?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| ShellError::Signal("SIGTERM", e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| ShellError::Signal("SIGINT", e))?;

    let started = Instant::now();
    let store = Store::open(&cfg.state_dir, DEFAULT_CACHE_BYTES)?;
    let mut core = MapServer::new(policy, started, rand::random());
    let restored = restore(&store, &mut core)?;
    let mut shell = Shell {
        core,
        store,
        wg: None,
        tunnel: None,
        plain: None,
        telemetry: None,
        stats: Stats::default(),
        rx: RecvBatch::default(),
        tx: SendBatch::default(),
        outbox: Vec::new(),
        started,
        restored,
        interface: cfg.control.as_ref().map(|c| c.interface.clone()),
        node_api: Arc::new(crate::node_api::NodeApi::new(&cfg)),
    };
    // Drop what no longer passes the policy before anything else happens.
    shell.flush().await;

    if let Some(addr) = cfg.metrics {
        shell.telemetry = Some(telemetry::serve(addr).await?);
    }

    let host = match &cfg.control {
        None => None,
        Some(_) => Some(Host::open().await.map_err(|error| ShellError::WireGuard {
            ifname: shell.interface.clone().unwrap_or_default(),
            context: "open netlink",
            error: Box::new(error),
        })?),
    };
    let result = async {
        if let (Some(host), Some(ctl)) = (&host, &cfg.control) {
            shell.wg = Some(bring_up_control(host, ctl, &cfg).await?);
            let addr = SocketAddr::new(ctl.address, LISP_CONTROL_PORT);
            shell.tunnel = Some(bind_udp(addr, Some(&ctl.interface))?);
            info!(%addr, ifname = %ctl.interface, "listening for control messages inside the WireGuard tunnel only");
            let api = SocketAddr::new(ctl.address, conf::NODE_API_PORT);
            crate::node_api::serve(api, &ctl.interface, shell.node_api.clone())
                .await
                .map_err(|error| ShellError::Socket {
                    addr: api,
                    device: Some(ctl.interface.clone()),
                    error,
                })?;
            // The core wakes the control peers whose registrations it restored.
            shell.core.finish_restore();
            shell.flush().await;
        }
        if let Some(addr) = cfg.plain_listen {
            shell.plain = Some(bind_udp(addr, None)?);
            info!(%addr, "listening for keyless LISP peers on the plain listener");
        }
        info!(
            entries = shell.core.registry().len(),
            peers = cfg.peers.len(),
            startup_ms = started.elapsed().as_millis() as u64,
            "map-server ready"
        );
        conf::service::ready("serving");
        let why = shell.event_loop(&mut sigterm, &mut sigint).await;
        info!(signal = %why, "stopping");
        conf::service::stopping();
        Ok(())
    }
    .await;
    // Commit whatever the last iteration left, then remove the interface.
    shell.flush().await;
    drop(shell);
    if let Some(host) = host {
        if let Err(e) = host.shutdown().await {
            error!(error = %e, "could not remove everything the map-server created");
        }
    }
    info!("map-server stopped");
    result
}

/// Loads the store into the core; returns how many registrations are served.
fn restore(store: &Store, core: &mut MapServer) -> Result<usize, ShellError> {
    let t0 = Instant::now();
    let clock = Clock::now();
    let mut restored = 0usize;
    let mut dropped = 0usize;
    let report = store.load(clock, |prefix, stored| {
        if core.restore(prefix, stored.peer, stored.mapping, clock.now) {
            restored += 1;
        } else {
            dropped += 1;
        }
    })?;
    for (peer, nonce) in store.load_register_nonces()? {
        core.restore_register_nonce(&peer, nonce);
    }
    let endpoints = store.load_endpoints()?;
    let known = endpoints
        .into_iter()
        .filter(|(peer, ep)| core.restore_endpoint(peer, *ep))
        .count();
    info!(
        restored,
        dropped,
        endpoints = known,
        undecodable = report.undecodable,
        elapsed_ms = t0.elapsed().as_millis() as u64,
        path = %store.path().display(),
        "registrations restored from the store"
    );
    Ok(restored)
}

/// Brings up the control tunnel: the interface, its address, and one peer
/// per keyed control peer, with no endpoint (the nodes initiate, and
/// WireGuard learns where they are).
async fn bring_up_control(
    host: &Host,
    ctl: &ControlInterface,
    cfg: &MapServerConfig,
) -> Result<WgInterface, ShellError> {
    let err = |context| {
        move |error| ShellError::WireGuard {
            ifname: ctl.interface.clone(),
            context,
            error: Box::new(error),
        }
    };
    let deadline = Instant::now() + STALE_INTERFACE_WAIT;
    let wg = loop {
        match host
            .create_wireguard(
                &ctl.interface,
                ctl.backend,
                &ctl.private_key,
                Some(ctl.listen_port),
            )
            .await
        {
            Err(wgctl::Error::InterfaceExists(_)) if Instant::now() < deadline => {
                debug!(ifname = %ctl.interface, "interface still exists; waiting for a killed predecessor's to go");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other.map_err(err("create"))?,
        }
    };
    let net = host.netlink();
    let address = IpPrefix::new(ctl.address, ctl.prefix_len).map_err(err("address"))?;
    net.add_address(&ctl.interface, address)
        .await
        .map_err(err("add address"))?;
    net.link_up(&ctl.interface).await.map_err(err("link up"))?;
    limit_floods_in_kernel(host, ctl, &cfg.limits);
    for peer in &cfg.peers {
        let Some(key) = peer.public_key else { continue };
        wg.upsert_peer(control_peer(key, peer.control_address, None, None))
            .await
            .map_err(err("add peer"))?;
        debug!(peer = %peer.name, control_address = %peer.control_address, "control peer configured");
    }
    // wgctl logged the interface itself (backend, port, key).
    info!(ifname = %ctl.interface, address = %address, peers = cfg.peers.len(), "control tunnel up");
    Ok(wg)
}

/// Past twice its budget, what a source sends is dropped by the kernel
/// before it reaches a socket: the control messages inside the tunnel (per
/// control address), and the WireGuard datagrams that carry them (per
/// underlay address and port: robots behind one NAT have their own ports).
/// The WireGuard port carries only the control tunnel, so its budget is the
/// control budget plus handshakes. One flooding robot then cannot fill the
/// sockets' queues (WireGuard's first) and crowd the others out, which the
/// core's budget alone cannot prevent: it only sees what the queues kept.
/// Without nftables this protection is lost, not the service.
fn limit_floods_in_kernel(host: &Host, ctl: &ControlInterface, limits: &map_server_core::Limits) {
    let (req, reg) = (limits.requests, limits.registers);
    if !(req.per_second.is_finite() && reg.per_second.is_finite()) {
        return;
    }
    let clamp = |v: f64| v.ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
    let per_second = clamp(2.0 * (req.per_second + reg.per_second));
    let burst = clamp(2.0 * (req.burst + reg.burst));
    let rules = [
        wgctl::SourceLimit {
            ifname: Some(&ctl.interface),
            port: lisp_wire::LISP_CONTROL_PORT,
            per_source_port: false,
            per_second,
            burst,
        },
        wgctl::SourceLimit {
            ifname: None,
            port: ctl.listen_port,
            per_source_port: true,
            per_second: per_second.saturating_add(50),
            burst: burst.saturating_add(50),
        },
    ];
    if let Err(e) = host.limit_udp_per_source(&ctl.interface, &rules) {
        warn!(ifname = %ctl.interface, error = %e, "cannot install the per-source flood limits (is nftables installed?); one flooding peer can crowd out others");
    }
}

/// The WireGuard peer of a control peer.
fn control_peer(
    key: wgctl::keys::PublicKey,
    control_address: std::net::IpAddr,
    endpoint: Option<SocketAddr>,
    keepalive: Option<u16>,
) -> PeerConfig {
    PeerConfig {
        public_key: key,
        endpoint,
        allowed_ips: vec![IpPrefix::host(control_address)],
        persistent_keepalive: keepalive,
    }
}

/// A UDP socket on `addr`; with `device`, bound to that interface too, so
/// that a datagram for `addr` arriving on any other interface (the underlay)
/// is never delivered to it, whatever the host's routing accepts.
fn bind_udp(addr: SocketAddr, device: Option<&str>) -> Result<UdpSocket, ShellError> {
    let fail = |error| ShellError::Socket {
        addr,
        device: device.map(str::to_owned),
        error,
    };
    let sock =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    if let Some(dev) = device {
        sock.bind_device(Some(dev.as_bytes())).map_err(fail)?;
        // The address was just added; an IPv6 one is still tentative (DAD).
        match addr {
            SocketAddr::V4(_) => sock.set_freebind_v4(true),
            SocketAddr::V6(_) => sock.set_freebind_v6(true),
        }
        .map_err(fail)?;
    }
    if let Err(e) = sock.set_recv_buffer_size(SOCKET_RCVBUF) {
        debug!(%addr, error = %e, "could not enlarge the receive buffer");
    }
    sock.set_nonblocking(true).map_err(fail)?;
    sock.bind(&addr.into()).map_err(fail)?;
    UdpSocket::from_std(sock.into()).map_err(fail)
}

#[derive(Debug, Default)]
struct Stats {
    send_errors: u64,
    recv_errors: u64,
}

enum Event {
    Readable(Via, io::Result<()>),
    Timeout,
    Page(PageRequest),
    Stop(&'static str),
}

struct Shell {
    core: MapServer,
    store: Store,
    /// The control interface, once it is up.
    wg: Option<WgInterface>,
    tunnel: Option<UdpSocket>,
    plain: Option<UdpSocket>,
    telemetry: Option<Telemetry>,
    stats: Stats,
    rx: RecvBatch,
    tx: SendBatch,
    /// What is being sent (kept for its capacity).
    outbox: Vec<Transmit>,
    started: Instant,
    restored: usize,
    interface: Option<String>,
    node_api: Arc<crate::node_api::NodeApi>,
}

async fn readable(sock: Option<&UdpSocket>) -> io::Result<()> {
    match sock {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

async fn next_page(t: Option<&mut Telemetry>) -> Option<PageRequest> {
    match t {
        Some(t) => t.requests.recv().await,
        None => std::future::pending().await,
    }
}

impl Shell {
    /// Runs until a signal; returns its name.
    async fn event_loop(&mut self, sigterm: &mut Signal, sigint: &mut Signal) -> &'static str {
        // One timer, moved when the core's next deadline moves (a fresh one
        // per iteration would be set and cancelled for every datagram).
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        loop {
            let deadline: tokio::time::Instant = self
                .core
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
                .into();
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            let event = tokio::select! {
                r = readable(self.tunnel.as_ref()) => Event::Readable(Via::Tunnel, r),
                r = readable(self.plain.as_ref()) => Event::Readable(Via::Plain, r),
                _ = &mut sleep => Event::Timeout,
                Some(req) = next_page(self.telemetry.as_mut()) => Event::Page(req),
                _ = sigterm.recv() => Event::Stop("SIGTERM"),
                _ = sigint.recv() => Event::Stop("SIGINT"),
            };
            match event {
                Event::Readable(_, Ok(())) => self.serve().await,
                Event::Readable(via, Err(e)) => {
                    self.stats.recv_errors += 1;
                    warn!(via = via.name(), error = %e, "socket failed");
                }
                Event::Timeout => self.core.handle_timeout(Instant::now()),
                Event::Page(req) => self.answer_page(req),
                Event::Stop(name) => return name,
            }
            self.flush().await;
        }
    }

    /// Takes what is queued on the sockets, a batch at a time, up to
    /// [`DRAIN_LIMIT`] datagrams; after each batch, sends what the core
    /// released for it.
    async fn serve(&mut self) {
        let mut taken = 0;
        // A socket emptied by a short batch is not asked again: a datagram
        // arriving since makes it readable again for the next iteration.
        let mut emptied = [false; 2];
        while taken < DRAIN_LIMIT {
            let mut progress = false;
            for (i, via) in [Via::Tunnel, Via::Plain].into_iter().enumerate() {
                let sock = match via {
                    Via::Tunnel => self.tunnel.as_ref(),
                    Via::Plain => self.plain.as_ref(),
                };
                let Some(sock) = sock.filter(|_| !emptied[i]) else {
                    continue;
                };
                match self.rx.recv(sock) {
                    Ok((n, empty)) => {
                        let now = Instant::now();
                        for i in 0..n {
                            if let Some((from, bytes)) = self.rx.get(i) {
                                self.core.handle_datagram(now, from, via, bytes);
                            }
                        }
                        taken += n;
                        progress |= n > 0;
                        emptied[i] = empty;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => emptied[i] = true,
                    Err(e) => {
                        self.stats.recv_errors += 1;
                        warn!(via = via.name(), error = %e, "receive failed");
                    }
                }
            }
            // Reply as we read (a confirmation of a registration is not
            // released before its commit, in the flush).
            self.send_released().await;
            if !progress {
                break;
            }
        }
    }

    /// Carries out what the core asks for, reporting each outcome: the store
    /// commits, then the control-interface actions, then the datagrams the
    /// core releases (a Map-Notify confirming a registration only comes out
    /// once its commit is reported done).
    async fn flush(&mut self) {
        while let Some(commit) = self.core.poll_commit(Instant::now()) {
            let result = self
                .store
                .apply(&commit.ops, Clock::now())
                .map_err(|e| StoreFault(e.to_string()));
            self.core
                .handle_commit_result(Instant::now(), commit.id, result);
        }
        while let Some((id, action)) = self.core.poll_action() {
            if action == ControlAction::ReadEndpoints {
                let result = self.read_endpoints().await;
                self.core.handle_endpoints(Instant::now(), id, result);
                continue;
            }
            let result = self.carry_out(&action).await;
            self.core.handle_action_result(Instant::now(), id, result);
        }
        self.send_released().await;
    }

    /// The endpoint WireGuard sees each control peer at (nothing without a
    /// control interface).
    async fn read_endpoints(&self) -> Result<Endpoints, ActionFault> {
        let Some(wg) = &self.wg else {
            return Ok(Vec::new());
        };
        let info = wg.read().await.map_err(|e| ActionFault(e.to_string()))?;
        Ok(info
            .peers
            .iter()
            .map(|p| (*p.public_key.as_bytes(), p.endpoint))
            .collect())
    }

    async fn carry_out(&self, action: &ControlAction) -> Result<(), ActionFault> {
        let fault = |e: wgctl::Error| ActionFault(e.to_string());
        let wg = self
            .wg
            .as_ref()
            .ok_or_else(|| ActionFault("no control interface".into()))?;
        match action {
            ControlAction::WakeControlPeer { peer, endpoint } => {
                let p = self
                    .core
                    .policy()
                    .peers
                    .get(*peer as usize)
                    .ok_or_else(|| ActionFault(format!("no control peer {peer}")))?;
                let key = p
                    .wg_key
                    .map(wgctl::keys::PublicKey::from_bytes)
                    .ok_or_else(|| ActionFault(format!("control peer {} has no key", p.name)))?;
                // Switching a keepalive on sends one at once, which starts a
                // handshake; then switch it off again.
                wg.upsert_peer(control_peer(
                    key,
                    p.control_address,
                    Some(*endpoint),
                    Some(1),
                ))
                .await
                .map_err(fault)?;
                wg.upsert_peer(control_peer(key, p.control_address, None, None))
                    .await
                    .map_err(fault)?;
                debug!(peer = %p.name, %endpoint, "woke control peer");
                Ok(())
            }
            ControlAction::ReadEndpoints => Ok(()),
        }
    }

    /// Sends every datagram the core releases now, in batches per socket.
    async fn send_released(&mut self) {
        let mut out = std::mem::take(&mut self.outbox);
        out.extend(std::iter::from_fn(|| self.core.poll_transmit()));
        for via in [Via::Tunnel, Via::Plain] {
            let count = out.iter().filter(|t| t.via == via).count();
            if count == 0 {
                continue;
            }
            let sock = match via {
                Via::Tunnel => self.tunnel.as_ref(),
                Via::Plain => self.plain.as_ref(),
            };
            let Some(sock) = sock else {
                self.stats.send_errors += count as u64;
                warn!(
                    via = via.name(),
                    dropped = count,
                    "no socket for these transmits; dropped"
                );
                continue;
            };
            for (dst, e) in self.tx.send(sock, &out, via).await {
                self.stats.send_errors += 1;
                warn!(%dst, via = via.name(), error = %e, "send failed");
            }
        }
        // Kept for its capacity.
        out.clear();
        self.outbox = out;
    }
}
