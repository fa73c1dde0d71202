//! The tokio shell of the xtr: brings up the WireGuard interface and the miss
//! TUN through wgctl, then feeds the core with packets, control messages,
//! link events and time, carries out its outputs in order, and reports the
//! outcome of each data-plane operation and statistics read back to it. It
//! decides nothing.

use crate::status::{PeerRow, Snapshot};
use conf::telemetry::{self, Page, PageRequest};
use conf::xtr::{Mode, XtrConfig};
use lisp_wire::{EidPrefix, LISP_CONTROL_PORT};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};
use wgctl::{Host, IpPrefix, MissTun, NetEvent, PeerConfig, Reinjector, RouteSpec, WgInterface};
use xtr_core::{
    DataplaneFault, DataplaneOp, LinkEvent, MapServerPeer, Output, PeerStats, RlocInterface, Xtr,
    XtrPolicy,
};

/// Metric of the per-peer routes: below the miss route's, though being more
/// specific they win anyway.
const PEER_ROUTE_METRIC: u32 = 100;
const MISS_ROUTE_METRIC: u32 = 1000;
/// Keepalive towards the map-servers, so they always know our current
/// endpoint (and NATs keep it open).
const MS_KEEPALIVE_SECS: u16 = 25;
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Upper bounds, in seconds, of the cache-add histogram's buckets.
const CACHE_ADD_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Time from a map-cache miss (the packet read from the miss TUN) to the
/// end of the flush that programmed its peer and route (and re-injected the
/// held packets), as the Prometheus histogram `lispwg_xtr_cache_add_seconds`.
#[derive(Debug, Default)]
struct CacheAddHistogram {
    buckets: [u64; CACHE_ADD_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl CacheAddHistogram {
    fn record(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, n) in CACHE_ADD_BUCKETS.iter().zip(&mut self.buckets) {
            if secs <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String) {
        let name = "lispwg_xtr_cache_add_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} time from a map-cache miss to its peer and route being programmed"
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, n) in CACHE_ADD_BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {:.9}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Why the agent could not start, or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{context}: {error}")]
    Host {
        context: String,
        #[source]
        error: wgctl::Error,
    },
    #[error("{context}: {error}")]
    Io {
        context: String,
        #[source]
        error: std::io::Error,
    },
    #[error(transparent)]
    Telemetry(#[from] conf::telemetry::TelemetryError),
    #[error("the netlink event stream ended")]
    EventsEnded,
    #[error("no map-server {0} in the configuration")]
    NoSuchMapServer(usize),
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Adds what was being done to a wgctl or I/O error.
trait Ctx<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T>;
}

impl<T> Ctx<T> for std::result::Result<T, wgctl::Error> {
    fn ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|error| AgentError::Host {
            context: context.into(),
            error,
        })
    }
}

impl<T> Ctx<T> for std::io::Result<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|error| AgentError::Io {
            context: context.into(),
            error,
        })
    }
}

/// Everything the shell set up, for the event loop.
struct Agent {
    cfg: XtrConfig,
    core: Xtr,
    wg: WgInterface,
    miss: MissTun,
    reinjector: Reinjector,
    control: UdpSocket,
    netlink: wgctl::Netlink,
    started: SystemTime,
    output_errors: u64,
    cache_add: CacheAddHistogram,
}

fn prefix(p: &EidPrefix) -> Result<IpPrefix> {
    IpPrefix::new(p.addr(), p.prefix_len()).ctx(format!("prefix {p}"))
}

/// Runs the agent until SIGINT or SIGTERM, then removes everything it made.
pub async fn run(cfg: XtrConfig) -> Result<()> {
    for v in &cfg.ignored_env {
        warn!(variable = %v, "ignoring environment variable: it names no xtr setting");
    }
    let host = Host::open().await.ctx("opening netlink")?;
    let result = run_with(&host, cfg).await;
    if let Err(e) = host.shutdown().await {
        error!(error = %e, "cleanup after shutdown failed");
    }
    result
}

async fn run_with(host: &Host, cfg: XtrConfig) -> Result<()> {
    let netlink = host.netlink();
    let wg_if = cfg.wireguard.interface.clone();
    let wg = host
        .create_wireguard(
            &wg_if,
            cfg.wireguard.backend,
            &cfg.wireguard.private_key,
            Some(cfg.wireguard.listen_port),
        )
        .await
        .ctx(format!("creating WireGuard interface {wg_if}"))?;
    info!(interface = %wg_if, backend = ?wg.backend(), port = cfg.wireguard.listen_port, "WireGuard interface up");
    let control =
        IpPrefix::new(cfg.control_address, cfg.control_prefix_len).ctx("the control address")?;
    netlink
        .add_address(&wg_if, control)
        .await
        .ctx(format!("adding the control address {control} to {wg_if}"))?;
    if cfg.mode == Mode::MobileNode {
        // The EID lives on the node itself.
        for e in &cfg.eids {
            let eid = prefix(e)?;
            netlink
                .add_address(&wg_if, eid)
                .await
                .ctx(format!("adding the EID {eid} to {wg_if}"))?;
        }
    }
    netlink
        .link_up(&wg_if)
        .await
        .ctx(format!("setting {wg_if} up"))?;
    for ms in &cfg.map_servers {
        wg.upsert_peer(control_peer(ms))
            .await
            .ctx(format!("adding map-server peer {}", ms.name))?;
    }

    let miss_if = &cfg.miss_interface;
    let miss = host
        .create_miss_tun(miss_if)
        .await
        .ctx(format!("creating miss TUN {miss_if}"))?;
    netlink
        .link_up(miss_if)
        .await
        .ctx(format!("setting {miss_if} up"))?;
    for &(addr, len) in &cfg.capture {
        let dst = IpPrefix::new(addr, len).ctx("a capture prefix")?;
        let mut route = RouteSpec::via_interface(dst, miss_if).with_metric(MISS_ROUTE_METRIC);
        if let Some(src) = source_for(&cfg, addr) {
            route = route.with_src(src);
        }
        netlink
            .add_route(&route)
            .await
            .ctx(format!("routing {dst} to the miss TUN"))?;
    }
    let _forwarding = match cfg.mode {
        Mode::Xtr => Some(Forwarding::enable()?),
        Mode::MobileNode => None,
    };

    let control = control_socket(&cfg)?;
    let reinjector = Reinjector::new().ctx("opening the re-injection socket")?;
    let mut events = netlink
        .events()
        .await
        .ctx("subscribing to netlink events")?;
    // The state at start-up, as one batch: the core decides which of these
    // addresses are RLOCs.
    let mut initial = Vec::new();
    for r in &cfg.rlocs {
        match netlink.address_states(&r.interface).await {
            Ok(addrs) => initial.extend(addrs.into_iter().map(|(p, usable)| LinkEvent::Address {
                ifname: r.interface.clone(),
                addr: p.addr(),
                added: true,
                tentative: !usable,
            })),
            Err(e) => {
                warn!(interface = %r.interface, error = %e, "RLOC interface not available yet")
            }
        }
    }

    let policy = policy_of(&cfg);
    let seed = rand::random::<u64>();
    let now = Instant::now();
    let mut agent = Agent {
        core: Xtr::new(policy, now, seed),
        cfg,
        wg,
        miss,
        reinjector,
        control,
        netlink,
        started: SystemTime::now(),
        output_errors: 0,
        cache_add: CacheAddHistogram::default(),
    };
    agent.core.handle_link_events(now, &initial);
    agent.flush().await;

    let mut telemetry = match agent.cfg.metrics {
        Some(addr) => Some(telemetry::serve(addr).await?),
        None => None,
    };
    let mut sigterm = signal(SignalKind::terminate()).ctx("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).ctx("installing the SIGINT handler")?;
    let mut buf = vec![0u8; 65_535];
    info!(eids = ?agent.cfg.eids.iter().map(|e| e.to_string()).collect::<Vec<_>>(), "xtr running");
    loop {
        let deadline = agent
            .core
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            r = agent.control.recv_from(&mut buf) => match r {
                Ok((n, from)) => agent.core.handle_control(Instant::now(), from, &buf[..n]),
                Err(e) => warn!(error = %e, "control socket receive failed"),
            },
            r = agent.miss.recv() => match r {
                Ok(packet) => agent.core.handle_miss(Instant::now(), packet),
                Err(e) => warn!(error = %e, "miss TUN read failed"),
            },
            ev = events.recv() => match ev {
                Some(ev) => agent.on_net_event(ev),
                None => return Err(AgentError::EventsEnded),
            },
            _ = sleep_until(deadline) => agent.core.handle_timeout(Instant::now()),
            Some(req) = next_request(&mut telemetry) => agent.answer(req).await,
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
        }
        agent.flush().await;
        agent.record_programmed();
    }
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn next_request(t: &mut Option<telemetry::Telemetry>) -> Option<PageRequest> {
    match t {
        Some(t) => t.requests.recv().await,
        None => std::future::pending().await,
    }
}

/// The manually keyed WireGuard peer of a map-server.
fn control_peer(ms: &conf::xtr::MapServerConfig) -> PeerConfig {
    PeerConfig {
        public_key: ms.public_key,
        endpoint: Some(ms.endpoint),
        allowed_ips: vec![IpPrefix::host(ms.control_address)],
        persistent_keepalive: Some(MS_KEEPALIVE_SECS),
    }
}

/// The address routes to the overlay use as source: the node's own EID of
/// that family (mobile nodes only; a router forwards for others).
fn source_for(cfg: &XtrConfig, dst: IpAddr) -> Option<IpAddr> {
    match cfg.mode {
        Mode::MobileNode => cfg
            .eids
            .iter()
            .map(|e| e.addr())
            .find(|a| a.is_ipv4() == dst.is_ipv4()),
        Mode::Xtr => None,
    }
}

fn policy_of(cfg: &XtrConfig) -> XtrPolicy {
    let servers = cfg
        .map_servers
        .iter()
        .map(|m| MapServerPeer {
            name: m.name.clone(),
            control_address: m.control_address,
            site_key: m.site_key.as_bytes().to_vec(),
            key_id: m.key_id,
        })
        .collect();
    let rloc_interfaces = cfg
        .rlocs
        .iter()
        .map(|r| RlocInterface {
            name: r.interface.clone(),
            priority: r.priority,
            weight: r.weight,
        })
        .collect();
    let mut p = XtrPolicy::new(
        cfg.control_address,
        *cfg.wireguard.private_key.public_key().as_bytes(),
        cfg.wireguard.listen_port,
        cfg.eids.clone(),
        servers,
        rloc_interfaces,
    );
    p.record_ttl_minutes = cfg.cache.record_ttl_minutes;
    p.held_packets_per_eid = cfg.cache.held_packets;
    p.held_bytes_per_eid = cfg.cache.held_bytes;
    p.max_cache_entries = cfg.cache.max_entries;
    p.idle_timeout = cfg.cache.idle_timeout;
    p
}

/// The control socket: our control address, port 4342, bound to the
/// WireGuard interface so nothing arriving over the underlay reaches it.
fn control_socket(cfg: &XtrConfig) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(cfg.control_address, LISP_CONTROL_PORT);
    let what = format!("binding the control socket {addr}");
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).ctx(&what)?;
    s.bind_device(Some(cfg.wireguard.interface.as_bytes()))
        .ctx(&what)?;
    s.set_nonblocking(true).ctx(&what)?;
    s.bind(&addr.into()).ctx(&what)?;
    UdpSocket::from_std(s.into()).ctx(&what)
}

/// IPv4 forwarding for xtr mode, restored to its old value on drop.
struct Forwarding {
    previous: String,
}

impl Forwarding {
    fn enable() -> Result<Self> {
        let previous = std::fs::read_to_string(IP_FORWARD).ctx("reading net.ipv4.ip_forward")?;
        if previous.trim() != "1" {
            std::fs::write(IP_FORWARD, "1").ctx("enabling net.ipv4.ip_forward for xtr mode")?;
            info!("enabled IPv4 forwarding");
        }
        Ok(Forwarding { previous })
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        if self.previous.trim() != "1" {
            if let Err(e) = std::fs::write(IP_FORWARD, self.previous.trim()) {
                warn!(error = %e, "could not restore net.ipv4.ip_forward");
            }
        }
    }
}

impl Agent {
    fn on_net_event(&mut self, ev: NetEvent) {
        let ev = match ev {
            NetEvent::AddressAdded {
                ifname,
                address,
                usable,
                ..
            } => LinkEvent::Address {
                ifname,
                addr: address,
                added: true,
                tentative: !usable,
            },
            NetEvent::AddressRemoved {
                ifname, address, ..
            } => LinkEvent::Address {
                ifname,
                addr: address,
                added: false,
                tentative: false,
            },
            NetEvent::LinkUp { ifname, .. } => LinkEvent::Link { ifname, up: true },
            NetEvent::LinkDown { ifname, .. } => LinkEvent::Link { ifname, up: false },
        };
        self.core.handle_link_events(Instant::now(), &[ev]);
    }

    /// Reads WireGuard's peer counters for the core.
    async fn read_peer_stats(&mut self) {
        let info = match self.wg.read().await {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "reading WireGuard peer statistics failed");
                self.core.handle_peer_stats_failed(Instant::now());
                return;
            }
        };
        let now = SystemTime::now();
        let stats: Vec<PeerStats> = info
            .peers
            .iter()
            .map(|p| PeerStats {
                key: *p.public_key.as_bytes(),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                since_handshake: p.last_handshake.and_then(|t| now.duration_since(t).ok()),
            })
            .collect();
        self.core.handle_peer_stats(Instant::now(), &stats);
    }

    /// Records the cache-add time of the resolutions whose peer and route
    /// the last flush programmed.
    fn record_programmed(&mut self) {
        let now = Instant::now();
        while let Some((_, missed_at)) = self.core.poll_programmed() {
            self.cache_add
                .record(now.saturating_duration_since(missed_at));
        }
    }

    /// Carries out the core's outputs in order, reporting each data-plane
    /// outcome back (which may queue more outputs).
    async fn flush(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Dataplane { id, op } => {
                    let result = self.carry_out(&op).await.map_err(|e| {
                        self.output_errors += 1;
                        DataplaneFault(format!("{e:#}"))
                    });
                    self.core
                        .handle_dataplane_result(Instant::now(), id, result);
                }
                Output::ReadPeerStats => self.read_peer_stats().await,
                Output::Transmit { dst, payload } => {
                    if let Err(e) = self.control.send_to(&payload, dst).await {
                        self.output_errors += 1;
                        warn!(%dst, error = %e, "control message could not be sent");
                    }
                }
                Output::Reinject(packet) => {
                    if let Err(e) = self.reinjector.send(&packet).await {
                        self.output_errors += 1;
                        warn!(error = %e, "held packet could not be re-injected");
                    }
                }
                Output::Deliver(packet) => {
                    if let Err(e) = self.miss.deliver(&packet).await {
                        self.output_errors += 1;
                        warn!(error = %e, "ICMP error could not be delivered");
                    }
                }
                Output::Punch { to } => {
                    if let Err(e) = self.punch(to).await {
                        self.output_errors += 1;
                        debug!(%to, error = %e, "punch could not be sent");
                    }
                }
            }
        }
    }

    /// A one-byte datagram from our WireGuard port to `to`, from the source
    /// address the kernel would pick for WireGuard's own packets to it.
    async fn punch(&self, to: SocketAddr) -> Result<()> {
        let probe = std::net::UdpSocket::bind(match to {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
        })
        .ctx("choosing the punch's source")?;
        probe.connect(to).ctx(format!("routing a punch to {to}"))?;
        let src = SocketAddr::new(
            probe.local_addr().ctx("choosing the punch's source")?.ip(),
            self.cfg.wireguard.listen_port,
        );
        let Some(packet) = xtr_core::packet::udp(src, to, &[0]) else {
            return Ok(());
        };
        self.reinjector
            .send(&packet)
            .await
            .ctx(format!("punching toward {to}"))
    }

    async fn carry_out(&mut self, op: &DataplaneOp) -> Result<()> {
        let wg_if = &self.cfg.wireguard.interface;
        match op {
            DataplaneOp::UpsertPeer {
                key,
                endpoint,
                allowed,
                keepalive,
                fresh,
            } => {
                let allowed_ips = allowed.iter().map(prefix).collect::<Result<Vec<_>>>()?;
                let public_key = wgctl::keys::PublicKey::from_bytes(*key);
                if *fresh {
                    // A new peer object: WireGuard forgets the last
                    // initiation and may start one at once.
                    self.wg
                        .remove_peer(&public_key)
                        .await
                        .ctx("remove peer to re-create it")?;
                }
                self.wg
                    .upsert_peer(PeerConfig {
                        public_key,
                        endpoint: *endpoint,
                        allowed_ips,
                        persistent_keepalive: *keepalive,
                    })
                    .await
                    .ctx("upsert peer")?;
            }
            DataplaneOp::RemovePeer { key } => self
                .wg
                .remove_peer(&wgctl::keys::PublicKey::from_bytes(*key))
                .await
                .ctx("remove peer")?,
            DataplaneOp::AddRoute(p) => self
                .netlink
                .add_route(&self.peer_route(p, wg_if)?)
                .await
                .ctx(format!("add route {p}"))?,
            DataplaneOp::DelRoute(p) => self
                .netlink
                .del_route(&self.peer_route(p, wg_if)?)
                .await
                .ctx(format!("delete route {p}"))?,
            DataplaneOp::ReapplyListenPort => {
                self.wg
                    .reapply_listen_port()
                    .await
                    .ctx("re-apply the listen port")?;
            }
            DataplaneOp::RenewControlPeer { map_server } => {
                let ms = self
                    .cfg
                    .map_servers
                    .get(*map_server)
                    .ok_or(AgentError::NoSuchMapServer(*map_server))?;
                self.wg
                    .remove_peer(&ms.public_key)
                    .await
                    .ctx("remove control peer")?;
                self.wg
                    .upsert_peer(control_peer(ms))
                    .await
                    .ctx("add control peer")?;
            }
        }
        Ok(())
    }

    fn peer_route(&self, p: &EidPrefix, wg_if: &str) -> Result<RouteSpec> {
        let mut r = RouteSpec::via_interface(prefix(p)?, wg_if).with_metric(PEER_ROUTE_METRIC);
        if let Some(src) = source_for(&self.cfg, p.addr()) {
            r = r.with_src(src);
        }
        Ok(r)
    }

    async fn answer(&mut self, req: PageRequest) {
        let body = match req.page {
            Page::Metrics => {
                let c = self.core.counters();
                let mut m = c.metrics();
                m.push((
                    "lispwg_xtr_peers",
                    "data peers programmed now",
                    "gauge",
                    self.core.peer_count() as u64,
                ));
                m.push((
                    "lispwg_xtr_pending",
                    "resolutions in flight",
                    "gauge",
                    self.core.pending_count() as u64,
                ));
                m.push((
                    "lispwg_xtr_output_errors_total",
                    "dataplane or send operations that failed",
                    "counter",
                    self.output_errors,
                ));
                let mut page = telemetry::render_metrics(m);
                self.cache_add.render(&mut page);
                page
            }
            Page::Status => self.status().await,
        };
        req.respond(body);
    }

    /// What `xtr status` prints.
    async fn status(&self) -> String {
        let now = Instant::now();
        let wall = SystemTime::now();
        let peers = self.wg.read().await.ok().map(|info| {
            info.peers
                .iter()
                .map(|p| PeerRow {
                    public_key: p.public_key.to_string(),
                    role: self
                        .cfg
                        .map_servers
                        .iter()
                        .find(|m| m.public_key == p.public_key)
                        .map(|m| format!("map-server {}", m.name)),
                    endpoint: p.endpoint,
                    allowed_ips: p.allowed_ips.iter().map(|a| a.to_string()).collect(),
                    since_handshake: p.last_handshake.and_then(|t| wall.duration_since(t).ok()),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                })
                .collect()
        });
        Snapshot {
            interface: self.cfg.wireguard.interface.clone(),
            mode: match self.cfg.mode {
                Mode::MobileNode => "mobile-node",
                Mode::Xtr => "xtr",
            },
            public_key: self.cfg.wireguard.private_key.public_key().to_string(),
            listen_port: self.cfg.wireguard.listen_port,
            eids: self.cfg.eids.iter().map(|e| e.to_string()).collect(),
            rlocs: self.core.current_rlocs(),
            uptime: self.started.elapsed().unwrap_or_default(),
            map_servers: self.core.map_servers(),
            cache: self.core.cache_entries(now),
            peers,
        }
        .render_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_add_histogram_is_cumulative_with_sum_and_count() {
        let mut h = CacheAddHistogram::default();
        h.record(Duration::from_micros(800));
        h.record(Duration::from_millis(4));
        let mut page = String::new();
        h.render(&mut page);
        assert!(page.contains("lispwg_xtr_cache_add_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(page.contains("lispwg_xtr_cache_add_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(page.contains("lispwg_xtr_cache_add_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(page.contains("lispwg_xtr_cache_add_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(page.contains("lispwg_xtr_cache_add_seconds_sum 0.004800000\n"));
        assert!(page.contains("lispwg_xtr_cache_add_seconds_count 2\n"));
    }
}
