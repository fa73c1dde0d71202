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
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{debug, error, info, warn};
use wgctl::{Host, IpPrefix, PeerConfig, WgInterface};

mod join;
mod pages;

/// The daemon's pid, in `server.state_dir`: where `map-server revoke` sends
/// its SIGHUP.
pub const PID_FILE: &str = "map-server.pid";
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

/// Compiles the configuration into what the protocol core trusts. Enrolment
/// ends (wall-clock times) become instants of the monotonic clock, relative
/// to `now`.
pub fn policy_from_config(cfg: &MapServerConfig) -> Result<Policy, ShellError> {
    policy_at(cfg, Instant::now(), std::time::SystemTime::now())
}

fn policy_at(
    cfg: &MapServerConfig,
    now: Instant,
    wall: std::time::SystemTime,
) -> Result<Policy, ShellError> {
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
            team: p.team.clone(),
            // Already over: due at once.
            expires: p
                .expires
                .map(|e| now + e.duration_since(wall).unwrap_or_default()),
            revoked: false,
            rotated_from: p.rotated_from.map(|k| *k.as_bytes()),
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
        teams: cfg.teams.clone(),
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
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| ShellError::Signal("SIGHUP", e))?;

    let started = Instant::now();
    let store = Store::open(&cfg.state_dir, DEFAULT_CACHE_BYTES)?;
    // `map-server revoke` and `enroll` find the daemon to reload here.
    let pid_file = cfg.state_dir.join(PID_FILE);
    if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        warn!(path = %pid_file.display(), error = %e, "cannot write the pid file; `map-server revoke` will not find this daemon");
    }
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
        reloads: Reloads::default(),
        cfg: cfg.clone(),
        join: None,
        join_stats: JoinStats::default(),
        peers_seen: peers_fingerprint(&cfg.peers_dir),
        rotations: HashMap::new(),
    };
    let mut rotate_rx = shell.node_api.take_rotations();
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
        if let Some(j) = &cfg.join {
            // On the underlay: the robot has no tunnel yet.
            shell.join = Some(bind_udp(j.listen, None)?);
            info!(addr = %j.listen, "listening for join requests (bundles and team keys)");
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
        let why = shell
            .event_loop(&mut sigterm, &mut sigint, &mut sighup, &mut rotate_rx)
            .await;
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
    let _ = std::fs::remove_file(&pid_file);
    info!("map-server stopped");
    result
}

/// Where the answer to a node's rotation request goes.
type RotationReply = tokio::sync::oneshot::Sender<Result<(), (axum::http::StatusCode, String)>>;

/// A peer file's name and (inode, size, mtime, ctime).
type PeerFileStamp = (std::ffi::OsString, [u64; 6]);

/// How often the peers directory is checked for changes.
const PEERS_DIR_POLL: Duration = Duration::from_secs(1);

/// The `*.toml` files of the peers directory, with size and time: what a
/// change of it is seen by.
/// The ctime is in it: a chmod (a file made private after it was written)
/// changes what the loader accepts.
fn peers_fingerprint(dir: &std::path::Path) -> Vec<PeerFileStamp> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((
                e.file_name(),
                [
                    m.ino(),
                    m.len(),
                    m.mtime() as u64,
                    m.mtime_nsec() as u64,
                    m.ctime() as u64,
                    m.ctime_nsec() as u64,
                ],
            ))
        })
        .collect();
    v.sort();
    v
}

/// Settings a reload cannot change in a running map-server, and whether
/// they differ between `old` and `new`.
fn restart_only_changes(old: &MapServerConfig, new: &MapServerConfig) -> [(&'static str, bool); 5] {
    let ctl = |c: &MapServerConfig| {
        c.control.as_ref().map(|c| {
            (
                c.interface.clone(),
                c.listen_port,
                c.address,
                c.prefix_len,
                c.private_key.public_key().to_string(),
            )
        })
    };
    [
        ("control", ctl(old) != ctl(new)),
        ("server.plain_listen", old.plain_listen != new.plain_listen),
        ("server.metrics", old.metrics != new.metrics),
        ("server.state_dir", old.state_dir != new.state_dir),
        ("relay", old.relay.is_some() != new.relay.is_some()),
    ]
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

/// Join requests, by outcome (metrics, and the warnings' rate limit).
#[derive(Debug, Default)]
pub(crate) struct JoinStats {
    /// Not a join request, or an unknown token id: dropped silently.
    pub(crate) unknown: u64,
    /// A known token id whose secret (or pinned key) did not match: dropped
    /// silently.
    pub(crate) bad_secret: u64,
    pub(crate) expired: u64,
    pub(crate) reused: u64,
    pub(crate) revoked: u64,
    pub(crate) redeemed: u64,
    /// Admitted, but the peer could not be written or taken.
    pub(crate) failed: u64,
}

/// Live reloads (SIGHUP), for metrics and status.
#[derive(Debug, Default)]
pub(crate) struct Reloads {
    pub(crate) applied: u64,
    /// Configurations refused (unreadable, invalid, or refused by the core):
    /// the previous one kept running.
    pub(crate) failed: u64,
    pub(crate) last_error: Option<String>,
}

enum Event {
    Readable(Via, io::Result<()>),
    Timeout,
    Page(PageRequest),
    Reload,
    Join,
    PeersTick,
    Rotate(crate::node_api::RotateRequest),
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
    reloads: Reloads,
    /// The configuration running now (the last one taken).
    cfg: MapServerConfig,
    /// The join listener (`[join]`).
    join: Option<UdpSocket>,
    join_stats: JoinStats,
    /// The peers directory as last read (names, sizes, times): a change is
    /// reloaded without a SIGHUP, so map-servers sharing the directory (or a
    /// synced copy) take enrolments made at another.
    peers_seen: Vec<PeerFileStamp>,
    /// Key rotations under way: who to answer once the core is ready.
    rotations: HashMap<map_server_core::RotationId, RotationReply>,
}

async fn next_rotation(
    rx: &mut Option<tokio::sync::mpsc::Receiver<crate::node_api::RotateRequest>>,
) -> Option<crate::node_api::RotateRequest> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
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
    async fn event_loop(
        &mut self,
        sigterm: &mut Signal,
        sigint: &mut Signal,
        sighup: &mut Signal,
        rotate_rx: &mut Option<tokio::sync::mpsc::Receiver<crate::node_api::RotateRequest>>,
    ) -> &'static str {
        // One timer, moved when the core's next deadline moves (a fresh one
        // per iteration would be set and cancelled for every datagram).
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut peers_tick = tokio::time::interval(PEERS_DIR_POLL);
        peers_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
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
                _ = sighup.recv() => Event::Reload,
                Ok(()) = readable(self.join.as_ref()) => Event::Join,
                _ = peers_tick.tick() => Event::PeersTick,
                Some(req) = next_rotation(rotate_rx) => Event::Rotate(req),
            };
            match event {
                Event::Readable(_, Ok(())) => self.serve().await,
                Event::Readable(via, Err(e)) => {
                    self.stats.recv_errors += 1;
                    warn!(via = via.name(), error = %e, "socket failed");
                }
                Event::Timeout => self.core.handle_timeout(Instant::now()),
                Event::Page(req) => self.answer_page(req),
                Event::Reload => self.reload(),
                Event::Join => self.serve_join(),
                Event::Rotate(req) => self.start_rotation(req),
                Event::PeersTick => {
                    if peers_fingerprint(&self.cfg.peers_dir) != self.peers_seen {
                        info!(dir = %self.cfg.peers_dir.display(), "peers directory changed; reloading");
                        self.reload();
                    }
                }
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

    /// SIGHUP: reads the configuration file and the peers directory again
    /// and hands the result to the core, which decides what changes. A
    /// configuration that does not load, or that the core refuses, changes
    /// nothing: the running one stays, and the refusal is logged and counted.
    fn reload(&mut self) {
        let file = self.cfg.file.clone();
        // What this reload reads (a failed one is not retried every poll).
        self.peers_seen = peers_fingerprint(&self.cfg.peers_dir);
        let loaded = MapServerConfig::load(&file)
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                policy_from_config(&cfg)
                    .map(|p| (cfg, p))
                    .map_err(|e| e.to_string())
            });
        let (cfg, policy) = match loaded {
            Ok(x) => x,
            Err(e) => return self.reload_failed(e),
        };
        let change = match self.core.handle_config(Instant::now(), policy) {
            Ok(c) => c,
            Err(e) => return self.reload_failed(format!("{}: {e}", file.display())),
        };
        for (what, differs) in restart_only_changes(&self.cfg, &cfg) {
            if differs {
                warn!(
                    setting = what,
                    "changed in the configuration; takes effect at the next restart"
                );
            }
        }
        self.node_api.set_peers(&cfg);
        self.reloads.applied += 1;
        self.reloads.last_error = None;
        info!(
            file = %file.display(),
            peers = cfg.peers.len(),
            added = change.added.len(),
            changed = change.changed.len(),
            revoked = change.revoked.len(),
            "configuration reloaded"
        );
        self.cfg = cfg;
    }

    /// A node asks to move to a new key: its peer file gets the new key
    /// (so a reload keeps it), then the core starts the rotation; the node
    /// is answered once the core says its correspondents have the key.
    fn start_rotation(&mut self, req: crate::node_api::RotateRequest) {
        use axum::http::StatusCode;
        let refuse = |reply: tokio::sync::oneshot::Sender<_>, code, why: String| {
            warn!(reason = %why, "key rotation refused");
            let _ = reply.send(Err((code, format!("{why}\n"))));
        };
        let Some(peer) = self.core.tunnel_peer_at(req.from) else {
            return refuse(
                req.reply,
                StatusCode::FORBIDDEN,
                format!("{} is no keyed peer", req.from),
            );
        };
        let Some(p) = self.core.policy().peers.get(peer as usize).cloned() else {
            return refuse(req.reply, StatusCode::FORBIDDEN, "no such peer".into());
        };
        let source = self
            .cfg
            .peers
            .iter()
            .find(|c| c.name == p.name)
            .and_then(|c| c.source.clone());
        let Some(file) = source else {
            return refuse(
                req.reply,
                StatusCode::CONFLICT,
                format!(
                    "{} is a [[peers]] entry of {}: its key is changed there, by hand",
                    p.name,
                    self.cfg.file.display()
                ),
            );
        };
        let old = p
            .wg_key
            .map(|k| wgctl::keys::PublicKey::from_bytes(k).to_base64());
        let new = wgctl::keys::PublicKey::from_bytes(req.new_key).to_base64();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                return refuse(
                    req.reply,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{}: {e}", file.display()),
                )
            }
        };
        let Some(old) = old.filter(|o| text.matches(o.as_str()).count() == 1) else {
            return refuse(
                req.reply,
                StatusCode::CONFLICT,
                format!("{} does not name {}'s key once", file.display(), p.name),
            );
        };
        // The new key, and which one it replaced: map-servers sharing the
        // directory follow the rotation instead of revoking the peer.
        let mut rewritten: String = text
            .replace(&old, &new)
            .lines()
            .filter(|l| !l.trim_start().starts_with("rotated_from"))
            .map(|l| format!("{l}\n"))
            .collect();
        rewritten += &format!("rotated_from = \"{old}\"\n");
        if let Err(e) = crate::join::write_private(&file, rewritten.as_bytes()) {
            return refuse(
                req.reply,
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e:#}"),
            );
        }
        match self.core.handle_rotation(Instant::now(), peer, req.new_key) {
            Ok(id) => {
                self.rotations.insert(id, req.reply);
            }
            Err(e) => {
                let _ = crate::join::write_private(&file, text.as_bytes());
                refuse(req.reply, StatusCode::CONFLICT, e.to_string());
            }
        }
    }

    fn reload_failed(&mut self, error: String) {
        self.reloads.failed += 1;
        error!(error = %error, "configuration reload refused; the running configuration stays");
        self.reloads.last_error = Some(error);
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
        // Correspondents have the new key: the node may switch.
        while let Some(id) = self.core.poll_rotation_ready(Instant::now()) {
            if let Some(reply) = self.rotations.remove(&id) {
                let _ = reply.send(Ok(()));
            }
            self.core.rotation_answered(Instant::now(), id);
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
            ControlAction::AddControlPeer {
                key,
                control_address,
            } => {
                let key = wgctl::keys::PublicKey::from_bytes(*key);
                wg.upsert_peer(control_peer(key, *control_address, None, None))
                    .await
                    .map_err(fault)?;
                info!(peer = %key, %control_address, "control peer added");
                Ok(())
            }
            ControlAction::RemoveControlPeer { key } => {
                let key = wgctl::keys::PublicKey::from_bytes(*key);
                wg.remove_peer(&key).await.map_err(fault)
            }
            ControlAction::StageControlPeer { key } => {
                let key = wgctl::keys::PublicKey::from_bytes(*key);
                wg.upsert_peer(PeerConfig {
                    public_key: key,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    persistent_keepalive: None,
                })
                .await
                .map_err(fault)
            }
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
