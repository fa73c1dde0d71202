//! The tokio shell: owns the WireGuard control interface, the sockets, the
//! store, the clock and the telemetry endpoint, and drives the sans-IO
//! [`MapServer`] with them.
//!
//! One event loop, one task: each iteration takes one event (datagrams, a
//! timer, a page request or a signal), then *flushes*: first it commits every
//! store operation of the iteration in one durable transaction, then it sends
//! the iteration's datagrams. So a Map-Notify is only sent for a registration
//! that survives a crash.

use crate::counters::Counters;
use crate::policy::{AllowedEid, PeerPolicy, Policy};
use crate::registry::{Mapping, Origin, Rloc};
use crate::server::{MapServer, StoreOp, Transmit, Via, DEFAULT_WG_PORT, MAX_PEERS};
use crate::store::{Clock, Store, StoreError, DEFAULT_CACHE_BYTES};
use conf::map_server::{ControlInterface, MapServerConfig};
use conf::telemetry::{self, Page, PageRequest, Telemetry, TelemetryError};
use lisp_wire::{EidPrefix, LISP_CONTROL_PORT, TYPE_MAP_NOTIFY};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{debug, error, info, warn};
use wgctl::{Host, IpPrefix, PeerConfig, WgInterface};

/// Datagrams handled per iteration before the flush, so a burst is committed
/// in one transaction without starving the timers.
const DRAIN_LIMIT: usize = 256;
/// Largest UDP payload.
const BUF_LEN: usize = 65_535;
/// Receive buffer asked for on each socket: room for bursts of registrations
/// while a commit is in progress.
const SOCKET_RCVBUF: usize = 4 << 20;
/// How long to wait for the interface of a killed predecessor to go away
/// (its wireguard-go exits on the death of its parent, a moment later).
const STALE_INTERFACE_WAIT: Duration = Duration::from_secs(3);
/// Registrations listed on the status page, at most.
const STATUS_ROWS: usize = 1000;

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
            allowed: p
                .eids
                .iter()
                .map(|a| AllowedEid {
                    prefix: a.prefix,
                    more_specifics: a.more_specifics,
                })
                .collect(),
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
        ..Policy::default()
    })
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
        tunnel: None,
        plain: None,
        telemetry: None,
        unsaved: Vec::new(),
        stats: Stats::default(),
        started,
        restored,
        interface: cfg.control.as_ref().map(|c| c.interface.clone()),
        lifetime: cfg.registration_lifetime,
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
            let hints = endpoint_hints(&shell.core);
            bring_up_control(host, ctl, &cfg, &hints).await?;
            let addr = SocketAddr::new(ctl.address, LISP_CONTROL_PORT);
            shell.tunnel = Some(bind_udp(addr, Some(&ctl.interface))?);
            info!(%addr, ifname = %ctl.interface, "listening for control messages inside the WireGuard tunnel only");
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
        let why = shell.event_loop(&mut sigterm, &mut sigint).await;
        info!(signal = why, "stopping");
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
    info!(
        restored,
        dropped,
        undecodable = report.undecodable,
        elapsed_ms = t0.elapsed().as_millis() as u64,
        path = %store.path().display(),
        "registrations restored from the store"
    );
    Ok(restored)
}

/// Where the restored registrations say each keyed control peer's WireGuard
/// socket is (its first RLOC and data port: one socket serves both planes).
fn endpoint_hints(core: &MapServer) -> HashMap<String, SocketAddr> {
    let mut hints = HashMap::new();
    for (_, m) in core.registry().iter() {
        let Some(peer) = core.policy().peer(m.origin) else {
            continue;
        };
        if peer.wg_key.is_none() || hints.contains_key(&peer.name) {
            continue;
        }
        if let Some(r) = m.rlocs.first() {
            hints.insert(
                peer.name.clone(),
                SocketAddr::new(r.addr, r.port.unwrap_or(DEFAULT_WG_PORT)),
            );
        }
    }
    hints
}

/// Brings up the control tunnel. Peers with an endpoint hint (a restart with
/// restored registrations) get it, and a one-off keepalive that makes
/// WireGuard start a handshake at once: their old sessions died with the old
/// process, and without this the nodes' WireGuard would only re-handshake
/// after about 15 s, dropping the Map-Notifies meant for them meanwhile.
async fn bring_up_control(
    host: &Host,
    ctl: &ControlInterface,
    cfg: &MapServerConfig,
    hints: &HashMap<String, SocketAddr>,
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
    for peer in &cfg.peers {
        let Some(key) = peer.public_key else { continue };
        // Normally no endpoint: the nodes initiate, and WireGuard learns
        // where they are.
        let hint = hints.get(&peer.name).copied();
        let config = PeerConfig {
            public_key: key,
            endpoint: hint,
            allowed_ips: vec![IpPrefix::host(peer.control_address)],
            persistent_keepalive: hint.map(|_| 1),
        };
        wg.upsert_peer(config.clone())
            .await
            .map_err(err("add peer"))?;
        if hint.is_some() {
            // The keepalive was sent when it was switched on; switch it off.
            let config = PeerConfig {
                endpoint: None,
                persistent_keepalive: None,
                ..config
            };
            wg.upsert_peer(config).await.map_err(err("add peer"))?;
        }
        debug!(peer = %peer.name, control_address = %peer.control_address, endpoint = ?hint, "control peer configured");
    }
    info!(
        ifname = %ctl.interface,
        address = %address,
        listen_port = ctl.listen_port,
        backend = %wg.backend(),
        public_key = %wg.public_key(),
        "control tunnel up"
    );
    Ok(wg)
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
    store_commits: u64,
    store_failures: u64,
    /// Map-Notifies not sent because their registration was not durable.
    withheld_notifies: u64,
    send_errors: u64,
    recv_errors: u64,
}

enum Event {
    Datagram(Via, io::Result<(usize, SocketAddr)>),
    Timeout,
    Page(PageRequest),
    Stop(&'static str),
}

struct Shell {
    core: MapServer,
    store: Store,
    tunnel: Option<UdpSocket>,
    plain: Option<UdpSocket>,
    telemetry: Option<Telemetry>,
    /// Store operations whose commit failed, retried with the next flush.
    unsaved: Vec<StoreOp>,
    stats: Stats,
    started: Instant,
    restored: usize,
    interface: Option<String>,
    lifetime: Duration,
}

async fn recv_on(sock: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
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
        let mut tunnel_buf = vec![0u8; BUF_LEN];
        let mut plain_buf = vec![0u8; BUF_LEN];
        loop {
            let deadline = self
                .core
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let event = tokio::select! {
                r = recv_on(self.tunnel.as_ref(), &mut tunnel_buf) => Event::Datagram(Via::Tunnel, r),
                r = recv_on(self.plain.as_ref(), &mut plain_buf) => Event::Datagram(Via::Plain, r),
                _ = tokio::time::sleep_until(deadline.into()) => Event::Timeout,
                Some(req) = next_page(self.telemetry.as_mut()) => Event::Page(req),
                _ = sigterm.recv() => Event::Stop("SIGTERM"),
                _ = sigint.recv() => Event::Stop("SIGINT"),
            };
            match event {
                Event::Datagram(via, r) => {
                    let buf = match via {
                        Via::Tunnel => &tunnel_buf,
                        Via::Plain => &plain_buf,
                    };
                    self.on_datagram(via, r, buf);
                    self.drain(&mut tunnel_buf);
                }
                Event::Timeout => self.core.handle_timeout(Instant::now()),
                Event::Page(req) => {
                    let body = match req.page {
                        Page::Metrics => self.metrics(),
                        Page::Status => self.status(),
                    };
                    req.respond(body);
                }
                Event::Stop(name) => return name,
            }
            self.flush().await;
        }
    }

    fn on_datagram(&mut self, via: Via, r: io::Result<(usize, SocketAddr)>, buf: &[u8]) {
        match r {
            Ok((n, from)) => self
                .core
                .handle_datagram(Instant::now(), from, via, &buf[..n]),
            Err(e) => {
                self.stats.recv_errors += 1;
                warn!(?via, error = %e, "receive failed");
            }
        }
    }

    /// Takes whatever else is already queued on the sockets, up to
    /// [`DRAIN_LIMIT`], so that a burst is committed in one transaction.
    fn drain(&mut self, buf: &mut [u8]) {
        let mut taken = 1;
        let mut progress = true;
        while progress && taken < DRAIN_LIMIT {
            progress = false;
            for via in [Via::Tunnel, Via::Plain] {
                let sock = match via {
                    Via::Tunnel => self.tunnel.as_ref(),
                    Via::Plain => self.plain.as_ref(),
                };
                let Some(sock) = sock else { continue };
                match sock.try_recv_from(buf) {
                    Ok((n, from)) => {
                        self.core
                            .handle_datagram(Instant::now(), from, via, &buf[..n]);
                        taken += 1;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.stats.recv_errors += 1;
                        warn!(?via, error = %e, "receive failed");
                    }
                }
            }
        }
    }

    /// Commits the pending store operations, then sends the pending
    /// datagrams. If the commit fails, the operations are kept for the next
    /// flush, and the Map-Notifies of this flush are withheld: a Map-Notify
    /// tells a node its registration is safe, and the node re-registers when it
    /// gets none. Replies, which promise nothing about durability, still go.
    async fn flush(&mut self) {
        let mut ops = std::mem::take(&mut self.unsaved);
        ops.extend(std::iter::from_fn(|| self.core.poll_store()));
        let durable = if ops.is_empty() {
            true
        } else {
            match self.store.apply(&ops, Clock::now()) {
                Ok(()) => {
                    self.stats.store_commits += 1;
                    true
                }
                Err(e) => {
                    self.stats.store_failures += 1;
                    error!(error = %e, ops = ops.len(), "cannot persist registrations; will retry");
                    self.unsaved = coalesce(ops);
                    false
                }
            }
        };
        while let Some(t) = self.core.poll_transmit() {
            if !durable && is_map_notify(&t.payload) {
                self.stats.withheld_notifies += 1;
                continue;
            }
            self.send(t).await;
        }
    }

    async fn send(&mut self, t: Transmit) {
        let sock = match t.via {
            Via::Tunnel => self.tunnel.as_ref(),
            Via::Plain => self.plain.as_ref(),
        };
        let Some(sock) = sock else {
            self.stats.send_errors += 1;
            warn!(dst = %t.dst, via = ?t.via, "no socket for this transmit; dropped");
            return;
        };
        if let Err(e) = sock.send_to(&t.payload, t.dst).await {
            self.stats.send_errors += 1;
            warn!(dst = %t.dst, via = ?t.via, error = %e, "send failed");
        }
    }

    fn metrics(&self) -> String {
        let shell = [
            (
                "lispwg_ms_store_commits_total",
                "durable store transactions committed",
                "counter",
                self.stats.store_commits,
            ),
            (
                "lispwg_ms_store_failures_total",
                "store transactions that failed (retried)",
                "counter",
                self.stats.store_failures,
            ),
            (
                "lispwg_ms_withheld_notifies_total",
                "Map-Notifies not sent because the store commit failed",
                "counter",
                self.stats.withheld_notifies,
            ),
            (
                "lispwg_ms_send_errors_total",
                "datagrams that could not be sent",
                "counter",
                self.stats.send_errors,
            ),
            (
                "lispwg_ms_recv_errors_total",
                "socket receive errors",
                "counter",
                self.stats.recv_errors,
            ),
            (
                "lispwg_ms_pending_notifies",
                "Map-Notifies awaiting their Ack",
                "gauge",
                self.core.pending_notifies() as u64,
            ),
            (
                "lispwg_ms_uptime_seconds",
                "seconds since start",
                "gauge",
                self.started.elapsed().as_secs(),
            ),
        ];
        telemetry::render_metrics(self.core.counters().metrics().into_iter().chain(shell))
    }

    fn status(&self) -> String {
        let now = Instant::now();
        let mut out = String::new();
        let up = self.started.elapsed().as_secs();
        let _ = writeln!(
            out,
            "lispwg map-server: up {}h{:02}m{:02}s, {} registrations restored at start",
            up / 3600,
            up / 60 % 60,
            up % 60,
            self.restored
        );
        let listen = |s: &Option<UdpSocket>| {
            s.as_ref()
                .and_then(|s| s.local_addr().ok())
                .map_or("off".to_string(), |a| a.to_string())
        };
        let tunnel = match &self.interface {
            Some(ifname) => format!("{} on {ifname}", listen(&self.tunnel)),
            None => "none".into(),
        };
        let _ = writeln!(
            out,
            "control tunnel: {tunnel}; plain listener: {}",
            listen(&self.plain)
        );
        let _ = writeln!(
            out,
            "store: {} ({} commits, {} failures)",
            self.store.path().display(),
            self.stats.store_commits,
            self.stats.store_failures
        );
        let c = self.core.counters();
        let _ = writeln!(
            out,
            "counters: {} registrations, {} requests, {} replies ({} negative), {} notifies, \
             {} retransmits, {} auth failures, {} unauthorised, {} unknown peers, {} malformed",
            c.registrations,
            c.requests,
            c.replies,
            c.negative_replies,
            c.notifies,
            c.notify_retransmits,
            c.auth_failures,
            c.unauthorised,
            c.unknown_peers,
            c.malformed
        );
        out.push('\n');
        self.status_table(&mut out, now, c);
        out
    }

    fn status_table(&self, out: &mut String, now: Instant, c: &Counters) {
        let mut rows: Vec<(EidPrefix, &Mapping)> = self
            .core
            .registry()
            .iter()
            .filter(|(_, m)| m.is_live(now))
            .collect();
        let total = rows.len();
        rows.sort_unstable_by_key(|(p, _)| *p);
        rows.truncate(STATUS_ROWS);
        let _ = writeln!(
            out,
            "{} mappings (gauge {}); lifetime {} s",
            total,
            c.entries,
            self.lifetime.as_secs()
        );
        let _ = writeln!(
            out,
            "{:<28} {:<40} {:<16} {:>8} {:>10}",
            "EID", "RLOC:PORT", "PEER", "AGE", "EXPIRES IN"
        );
        let mut peers_seen = HashSet::new();
        for (prefix, m) in rows {
            let rloc = m.rlocs.first().map_or("-".to_string(), |r| match r.port {
                Some(port) => SocketAddr::new(r.addr, port).to_string(),
                None => r.addr.to_string(),
            });
            let more = if m.rlocs.len() > 1 {
                format!(" (+{})", m.rlocs.len() - 1)
            } else {
                String::new()
            };
            let (peer, age, left) = match (self.core.policy().peer(m.origin), m.expires) {
                (Some(p), Some(exp)) => {
                    peers_seen.insert(p.name.as_str());
                    let left = exp.saturating_duration_since(now);
                    // Every registration sets expiry to now + lifetime.
                    let age = self.lifetime.saturating_sub(left);
                    (
                        p.name.as_str(),
                        format!("{}s", age.as_secs()),
                        format!("{}s", left.as_secs()),
                    )
                }
                _ => ("(static)", "-".into(), "never".into()),
            };
            let _ = writeln!(
                out,
                "{:<28} {:<40} {:<16} {:>8} {:>10}",
                prefix.to_string(),
                format!("{rloc}{more}"),
                peer,
                age,
                left
            );
        }
        if total > STATUS_ROWS {
            let _ = writeln!(out, "... and {} more", total - STATUS_ROWS);
        }
        let silent: Vec<&str> = self
            .core
            .policy()
            .peers
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| !peers_seen.contains(n))
            .collect();
        if !silent.is_empty() && total <= STATUS_ROWS {
            let _ = writeln!(
                out,
                "\npeers with no live registration: {}",
                silent.join(", ")
            );
        }
    }
}

fn is_map_notify(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b >> 4 == TYPE_MAP_NOTIFY)
}

/// Keeps only the last operation per prefix: that is all a retry needs, and
/// it bounds what is kept while the disk is failing.
fn coalesce(ops: Vec<StoreOp>) -> Vec<StoreOp> {
    let prefix = |op: &StoreOp| match op {
        StoreOp::Put { prefix, .. } | StoreOp::Delete(prefix) => *prefix,
    };
    let mut seen = HashSet::new();
    let mut kept: Vec<StoreOp> = ops
        .into_iter()
        .rev()
        .filter(|op| seen.insert(prefix(op)))
        .collect();
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_keeps_the_last_operation_per_prefix() {
        let a = EidPrefix::host(0, "10.0.0.1".parse().unwrap());
        let b = EidPrefix::host(0, "10.0.0.2".parse().unwrap());
        let put = |prefix, ttl| StoreOp::Put {
            prefix,
            mapping: Mapping {
                rlocs: Box::new([]),
                wg_key: None,
                origin: Origin::Static,
                ttl_minutes: ttl,
                map_version: 0,
                expires: None,
            },
            peer: "p".into(),
        };
        let kept = coalesce(vec![put(a, 1), put(b, 1), StoreOp::Delete(a), put(b, 2)]);
        assert_eq!(kept, vec![StoreOp::Delete(a), put(b, 2)]);
    }

    #[test]
    fn map_notifies_are_recognised_by_type() {
        assert!(is_map_notify(&[0x40, 0, 0, 1]));
        assert!(!is_map_notify(&[0x20, 0, 0, 1]));
        assert!(!is_map_notify(&[]));
    }
}
