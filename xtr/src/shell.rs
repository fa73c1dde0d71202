//! The tokio shell of the xtr: brings up the WireGuard interface and the miss
//! TUN through wgctl, then feeds the core with packets, control messages,
//! link events and time, carries out its outputs in order, and reports the
//! outcome of each data-plane operation and statistics read back to it. It
//! decides nothing.

use crate::dns::Dns;
use crate::relay::Relay;
use crate::resolved::{Registration, SystemResolvectl};
use conf::telemetry::{self, PageRequest};
use conf::xtr::{Mode, XtrConfig};
use lisp_wire::{EidPrefix, LISP_CONTROL_PORT};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use wgctl::{Host, IpPrefix, MissTun, NetEvent, PeerConfig, Reinjector, RouteSpec, WgInterface};
use xtr_core::{
    DataplaneFault, DataplaneOp, LinkEvent, MapServerPeer, Output, PeerStats, RelayPolicy,
    RlocInterface, Xtr, XtrPolicy,
};

mod pages;
use pages::CacheAddHistogram;

/// Metric of the per-peer routes: below the miss route's, though being more
/// specific they win anyway.
const PEER_ROUTE_METRIC: u32 = 100;
const MISS_ROUTE_METRIC: u32 = 1000;
/// Keepalive towards the map-servers, so they always know our current
/// endpoint (and NATs keep it open).
const MS_KEEPALIVE_SECS: u16 = 25;
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
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
    reinjector: Arc<Reinjector>,
    control: UdpSocket,
    /// The relay's I/O, when the relay is on.
    relay: Option<Relay>,
    /// Answers of relay grant fetches.
    grants: (GrantSender, mpsc::UnboundedReceiver<GrantResult>),
    /// Answers of the map-server to a key rotation (`xtr rotate-key`).
    rotations: (
        mpsc::UnboundedSender<RotationResult>,
        mpsc::UnboundedReceiver<RotationResult>,
    ),
    rotating: bool,
    netlink: wgctl::Netlink,
    started: SystemTime,
    output_errors: u64,
    cache_add: CacheAddHistogram,
    /// The DNS listener for node names, when on, and the questions its
    /// TCP connections read.
    dns: Option<Dns>,
    dns_streams: Option<mpsc::Receiver<crate::dns::StreamQuestion>>,
    /// Our registration with systemd-resolved, reverted at shutdown.
    resolved: Option<Registration>,
}

type GrantResult = std::result::Result<(relay::Grant, Duration), String>;
type RotationResult = (wgctl::keys::PrivateKey, std::result::Result<(), String>);
type GrantSender = mpsc::UnboundedSender<GrantResult>;

fn prefix(p: &EidPrefix) -> Result<IpPrefix> {
    IpPrefix::new(p.addr(), p.prefix_len()).ctx(format!("prefix {p}"))
}

/// Runs the agent until SIGINT or SIGTERM, then removes everything it made.
pub async fn run(cfg: XtrConfig) -> Result<()> {
    // First: SIGHUP would end the agent otherwise. The units' ExecReload,
    // and `xtr rotate-key`.
    let mut sighup = signal(SignalKind::hangup()).ctx("installing the SIGHUP handler")?;
    for v in &cfg.ignored_env {
        warn!(variable = %v, "ignoring environment variable: it names no xtr setting");
    }
    let host = Host::open().await.ctx("opening netlink")?;
    let result = run_with(&host, cfg, &mut sighup).await;
    if let Err(e) = host.shutdown().await {
        error!(error = %e, "cleanup after shutdown failed");
    }
    result
}

async fn run_with(
    host: &Host,
    cfg: XtrConfig,
    sighup: &mut tokio::signal::unix::Signal,
) -> Result<()> {
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
        wg.upsert_peer(control_peer(ms, ms.endpoint))
            .await
            .ctx(format!("adding map-server peer {}", ms.name))?;
    }

    let miss_if = &cfg.miss_interface;
    // The miss TUN takes the tunnel's MTU: a TCP connection whose first
    // packet is held there advertises the MSS the tunnel can carry.
    let mtu = netlink
        .link_mtu(&wg_if)
        .await
        .ctx(format!("reading the MTU of {wg_if}"))?;
    let miss = host
        .create_miss_tun(miss_if, u16::try_from(mtu).unwrap_or(u16::MAX))
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
    if cfg.mode == Mode::Xtr {
        // Hosts behind us advertise their LAN's MSS; without the clamp their
        // TCP relies on path-MTU discovery. Degraded, not fatal, without it.
        if let Err(e) = host.clamp_mss(&wg_if) {
            error!(ifname = %wg_if, error = %e, "cannot clamp TCP MSS to the tunnel (is nftables installed?); hosts behind this xTR depend on path-MTU discovery");
        }
    }

    let control = control_socket(&cfg)?;
    let reinjector = Arc::new(Reinjector::new().ctx("opening the re-injection socket")?);
    let relay = cfg
        .relay
        .enabled
        .then(|| Relay::new(cfg.wireguard.listen_port, reinjector.clone()));
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

    // Names are a convenience: an agent whose DNS port is taken (another
    // resolver on the same address) still builds tunnels.
    let (dns, dns_streams, dns_tcp) = match cfg.dns.enabled {
        true => match dns_listener(&cfg) {
            Ok((d, streams, tcp)) => (Some(d), Some(streams), Some(tcp)),
            Err(e) => {
                error!(error = %e, "no DNS for node names; tunnels work as before");
                (None, None, None)
            }
        },
        false => (None, None, None),
    };
    let policy = policy_of(&cfg);
    let seed = rand::random::<u64>();
    let now = Instant::now();
    let mut core = Xtr::new(policy, now, seed);
    core.set_register_nonce_floor(register_nonce_floor(&cfg.register_nonce_file()));
    let mut agent = Agent {
        core,
        cfg,
        wg,
        miss,
        reinjector,
        control,
        relay,
        grants: mpsc::unbounded_channel(),
        rotations: mpsc::unbounded_channel(),
        rotating: false,
        netlink,
        started: SystemTime::now(),
        output_errors: 0,
        cache_add: CacheAddHistogram::default(),
        dns,
        dns_streams,
        resolved: None,
    };
    agent.register_with_resolved();
    // The grant first: our first registration waits (briefly) for the
    // relayed address it allows.
    agent.load_grant(now);
    agent.core.handle_link_events(now, &initial);
    agent.flush().await;

    let mut telemetry = match agent.cfg.metrics {
        Some(addr) => Some(telemetry::serve(addr).await?),
        None => None,
    };
    let mut sigterm = signal(SignalKind::terminate()).ctx("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).ctx("installing the SIGINT handler")?;
    let mut buf = vec![0u8; 65_535];
    let mut dns_buf = vec![0u8; 65_535];
    info!(eids = %agent.cfg.eids.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(","), "xtr running");
    conf::service::ready("serving");
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
            Some(ev) = next_relay_event(&mut agent.relay) => agent.core.handle_relay_event(Instant::now(), ev),
            Some(g) = agent.grants.1.recv() => agent.on_grant(g),
            _ = sighup.recv() => agent.on_sighup(),
            Some((key, result)) = agent.rotations.1.recv() => agent.on_rotated(key, result).await,
            Some(r) = next_dns(&agent.dns, &mut dns_buf) => match r {
                Ok((n, from)) => agent.on_dns(&dns_buf[..n], from),
                Err(e) => warn!(error = %e, "DNS socket receive failed"),
            },
            Some(q) = next_dns_stream(&mut agent.dns_streams) => agent.on_dns_stream(q),
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); conf::service::stopping(); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); conf::service::stopping(); break; }
        }
        agent.flush().await;
        agent.record_programmed();
    }
    if let Some(r) = agent.relay.take() {
        r.shutdown().await;
    }
    agent.revert_resolved();
    if let Some(t) = dns_tcp {
        t.abort();
    }
    Ok(())
}

type DnsTcp = (
    Dns,
    mpsc::Receiver<crate::dns::StreamQuestion>,
    tokio::task::JoinHandle<()>,
);

/// The DNS listener on the control address, UDP and TCP: upstream servers
/// as configured, or those of /etc/resolv.conf (ourselves left out).
fn dns_listener(cfg: &XtrConfig) -> Result<DnsTcp> {
    let listen = cfg.dns.listen;
    let upstream = match &cfg.dns.upstream {
        Some(u) => u.clone(),
        None => match std::fs::read_to_string("/etc/resolv.conf") {
            Ok(text) => crate::dns::nameservers(&text, listen),
            Err(e) => {
                warn!(error = %e, "cannot read /etc/resolv.conf: names outside the domain will fail");
                Vec::new()
            }
        },
    };
    // The node itself, and in xTR mode the hosts behind it.
    let clients = crate::dns::Clients {
        addrs: vec![cfg.control_address],
        prefixes: cfg.eids.clone(),
    };
    let dns = Dns::bind(listen, upstream, clients.clone()).ctx(format!(
        "binding the DNS listener {listen} (dns.enabled = false turns it off)"
    ))?;
    let (tx, rx) = mpsc::channel(256);
    let what = format!("binding the DNS listener {listen}/tcp");
    let tcp = std::net::TcpListener::bind(listen)
        .and_then(|l| crate::dns::serve_tcp(l, clients, dns.counters.clone(), tx))
        .ctx(what)?;
    info!(
        %listen,
        domain = %cfg.dns.domain,
        upstream = %dns.upstream.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(","),
        "answering DNS for node names"
    );
    Ok((dns, rx, tcp))
}

async fn next_dns_stream(
    rx: &mut Option<mpsc::Receiver<crate::dns::StreamQuestion>>,
) -> Option<crate::dns::StreamQuestion> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_dns(
    dns: &Option<Dns>,
    buf: &mut [u8],
) -> Option<std::io::Result<(usize, SocketAddr)>> {
    match dns {
        Some(d) => Some(d.recv(buf).await),
        None => std::future::pending().await,
    }
}

async fn next_relay_event(r: &mut Option<Relay>) -> Option<xtr_core::RelayEvent> {
    match r {
        Some(r) => r.events.recv().await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Agent {
    /// SIGHUP: a key rotation when `xtr rotate-key` left the next key;
    /// otherwise nothing (the agent does not reload its configuration).
    fn on_sighup(&mut self) {
        let next = self.cfg.next_key_file();
        if !next.exists() {
            warn!("SIGHUP: reload not supported yet; ignored");
            return;
        }
        if self.rotating {
            info!("SIGHUP: a key rotation is under way already");
            return;
        }
        let key = match std::fs::read_to_string(&next)
            .map_err(|e| e.to_string())
            .and_then(|t| wgctl::keys::PrivateKey::from_base64(t.trim()).map_err(|e| e.to_string()))
        {
            Ok(k) => k,
            Err(e) => {
                error!(file = %next.display(), error = %e, "the next key does not read; no rotation");
                fail_rotation(&next);
                return;
            }
        };
        let Some(ms) = self.cfg.map_servers.first() else {
            return;
        };
        let (addr, name) = (ms.control_address, ms.name.clone());
        let public = key.public_key().to_base64();
        let tx = self.rotations.0.clone();
        self.rotating = true;
        info!(map_server = %name, new_key = %public, "key rotation: asking the map-server");
        tokio::task::spawn_blocking(move || {
            let _ = tx.send((key, ask_rotation(addr, &name, &public)));
        });
    }

    /// The map-server's answer: on yes, switch the interface's key, tell the
    /// core (it registers the new key), and keep the key.
    async fn on_rotated(
        &mut self,
        key: wgctl::keys::PrivateKey,
        result: std::result::Result<(), String>,
    ) {
        self.rotating = false;
        let next = self.cfg.next_key_file();
        if let Err(e) = result {
            error!(error = %e, "key rotation refused; the old key stays");
            fail_rotation(&next);
            return;
        }
        let public = *key.public_key().as_bytes();
        if let Err(e) = self.wg.set_private_key(key).await {
            error!(error = %e, "cannot switch the interface to the new key");
            fail_rotation(&next);
            return;
        }
        self.core.set_own_key(Instant::now(), public);
        let file = &self.cfg.wireguard.private_key_file;
        match std::fs::rename(&next, file) {
            Ok(()) => info!(file = %file.display(), "key rotation done; the new key is kept"),
            Err(e) => {
                error!(file = %file.display(), error = %e, "the new key runs but could not replace the key file; move it by hand")
            }
        }
    }
}

/// A rotation that did not happen: its key file is set aside, so that
/// `xtr rotate-key` can tell.
fn fail_rotation(next: &std::path::Path) {
    let mut failed = next.as_os_str().to_owned();
    failed.push(".failed");
    let _ = std::fs::rename(next, failed);
}

/// Asks map-server `name` to move us to `public` (run off the event loop):
/// it answers once our correspondents have the new key.
fn ask_rotation(
    control_address: IpAddr,
    name: &str,
    public: &str,
) -> std::result::Result<(), String> {
    let (url, agent) = node_api(control_address, "/v1/rotate", Duration::from_secs(8));
    let mut resp = agent
        .post(&url)
        .send(public)
        .map_err(|e| format!("{name}: {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    match status {
        200 => Ok(()),
        s => Err(format!("{name}: HTTP {s}: {}", body.trim())),
    }
}

/// The URL of `path` on a map-server's node API (inside the control
/// tunnel) and a client that gives up after `timeout` and hands back every
/// HTTP status for the caller to read.
fn node_api(control_address: IpAddr, path: &str, timeout: Duration) -> (String, ureq::Agent) {
    let url = format!(
        "http://{}{path}",
        SocketAddr::new(control_address, conf::NODE_API_PORT)
    );
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    (url, agent)
}

/// Asks map-server `ms` for a relay grant, over the control tunnel (run
/// off the event loop).
fn fetch_grant(control_address: IpAddr, name: String) -> GrantResult {
    let (url, agent) = node_api(control_address, "/v1/relay", Duration::from_secs(5));
    let mut resp = agent
        .get(&url)
        .call()
        .map_err(|e| format!("{name}: {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{name}: {url}: {e}"))?;
    match status {
        200 => {}
        404 => return Err(format!("{name} offers no relay")),
        s => return Err(format!("{name}: {url}: HTTP {s}: {}", body.trim())),
    }
    let grant: relay::Grant = serde_json::from_str(&body)
        .map_err(|e| format!("{name}: the grant does not parse: {e}"))?;
    let valid = grant.valid_for(unix_now());
    Ok((grant, valid))
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

/// The manually keyed WireGuard peer of a map-server, at `endpoint`.
fn control_peer(ms: &conf::xtr::MapServerConfig, endpoint: SocketAddr) -> PeerConfig {
    PeerConfig {
        public_key: ms.public_key,
        endpoint: Some(endpoint),
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
            endpoints: m.endpoints.clone(),
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
    p.relay = RelayPolicy {
        enabled: cfg.relay.enabled,
        only: cfg.relay.only,
    };
    p.names.domain = cfg.dns.domain.clone();
    p
}

/// Writes the grant atomically (a temporary file renamed over it), 0600:
/// it holds credentials.
fn save_grant(path: &std::path::Path, grant: &relay::Grant) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(grant).map_err(std::io::Error::other)?;
    write_private_file(path, text.as_bytes())
}

/// The floor of this run's register nonces: the wall clock in microseconds,
/// or the end of the last run's reservation if the clock is behind it.
fn register_nonce_floor(path: &std::path::Path) -> u64 {
    let clock = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let saved = match std::fs::read_to_string(path) {
        Ok(t) => match t.trim().parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                warn!(file = %path.display(), "the register nonce reservation does not parse; using the clock");
                0
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read the register nonce reservation; using the clock");
            0
        }
    };
    if saved > clock {
        info!(file = %path.display(), "the clock is behind the last run's register nonces: continuing after them");
    }
    clock.max(saved)
}

/// Writes `bytes` to `path` (mode 0600) so that a crash leaves the old file
/// or the new one, never a torn one.
fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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

    /// The grant kept from an earlier run (or put there by the operator),
    /// if it still works.
    fn load_grant(&mut self, now: Instant) {
        if !self.cfg.relay.enabled {
            return;
        }
        let path = &self.cfg.relay.grant_file;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot read the relay grant");
                return;
            }
        };
        match serde_json::from_str::<relay::Grant>(&text) {
            Ok(g) => {
                let valid = g.valid_for(unix_now());
                info!(file = %path.display(), valid_for_secs = valid.as_secs(), "relay grant from file");
                self.core.handle_relay_grant_from_file(now, g, valid);
            }
            Err(e) => {
                warn!(file = %path.display(), error = %e, "the relay grant file does not parse")
            }
        }
    }

    /// A fetched grant: kept on disk (so a restart in a network that lets
    /// only TCP out still reaches the relay), then handed to the core.
    fn on_grant(&mut self, g: GrantResult) {
        if let Ok((grant, _)) = &g {
            if let Err(e) = save_grant(&self.cfg.relay.grant_file, grant) {
                warn!(file = %self.cfg.relay.grant_file.display(), error = %e, "cannot keep the relay grant");
            }
        }
        self.core.handle_relay_grant(Instant::now(), g);
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
                endpoint: p.endpoint,
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

    /// A DNS datagram: its name question, if any, for the core.
    fn on_dns(&mut self, bytes: &[u8], from: SocketAddr) {
        let Some(dns) = &mut self.dns else { return };
        if let Some((query, name)) = dns.on_datagram(bytes, from) {
            self.core.handle_name_query(Instant::now(), query, &name);
        }
    }

    /// A question read from a DNS TCP connection.
    fn on_dns_stream(&mut self, q: crate::dns::StreamQuestion) {
        let Some(dns) = &mut self.dns else { return };
        if let Some((query, name)) = dns.on_stream(q) {
            self.core.handle_name_query(Instant::now(), query, &name);
        }
    }

    /// Where systemd-resolved runs, become the DNS server of our interface
    /// for `~DOMAIN`; elsewhere say once how to point resolv.conf at us.
    fn register_with_resolved(&mut self) {
        let Some(dns) = &self.dns else { return };
        if !self.cfg.dns.resolved {
            return;
        }
        let (ifname, domain) = (&self.cfg.wireguard.interface, &self.cfg.dns.domain);
        let search = self.cfg.dns.search;
        match crate::resolved::register(&mut SystemResolvectl, ifname, dns.listen, domain, search) {
            Ok(Some(reg)) => {
                info!(interface = %ifname, %domain, search, "registered with systemd-resolved");
                self.resolved = Some(reg);
            }
            Ok(None) => crate::dns::log_resolv_conf_hint(dns.listen, domain, search),
            Err(e) => warn!(error = %e, "could not register with systemd-resolved"),
        }
    }

    fn revert_resolved(&mut self) {
        if let Some(reg) = self.resolved.take() {
            match crate::resolved::revert(&mut SystemResolvectl, &reg) {
                Ok(()) => {
                    info!(interface = %reg.interface, "systemd-resolved registration reverted")
                }
                Err(e) => warn!(error = %e, "could not revert the systemd-resolved registration"),
            }
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
                Output::Relay(op) => match &self.relay {
                    Some(r) => r.apply(op),
                    None => debug!("relay operation with the relay off"),
                },
                Output::ReserveRegisterNonces { until } => {
                    let path = self.cfg.register_nonce_file();
                    if let Err(e) = write_private_file(&path, format!("{until}\n").as_bytes()) {
                        // This run's nonces are still above the last one's;
                        // only a clock that goes back before the next start
                        // could make them repeat.
                        warn!(file = %path.display(), error = %e, "cannot save the register nonce reservation");
                    }
                }
                Output::FetchRelayGrant { map_server } => {
                    match self.cfg.map_servers.get(map_server) {
                        Some(ms) => {
                            let (addr, name) = (ms.control_address, ms.name.clone());
                            let tx = self.grants.0.clone();
                            tokio::task::spawn_blocking(move || {
                                let _ = tx.send(fetch_grant(addr, name));
                            });
                        }
                        None => {
                            let _ = self
                                .grants
                                .0
                                .send(Err(format!("no map-server {map_server}")));
                        }
                    }
                }
                Output::NameAnswer { query, answer } => {
                    if let Some(dns) = &mut self.dns {
                        dns.answer(query, answer);
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
            DataplaneOp::RenewControlPeer {
                map_server,
                endpoint,
            } => {
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
                    .upsert_peer(control_peer(ms, *endpoint))
                    .await
                    .ctx("add control peer")?;
            }
            DataplaneOp::SetControlEndpoint {
                map_server,
                endpoint,
            } => {
                let ms = self
                    .cfg
                    .map_servers
                    .get(*map_server)
                    .ok_or(AgentError::NoSuchMapServer(*map_server))?;
                self.wg
                    .upsert_peer(control_peer(ms, *endpoint))
                    .await
                    .ctx("move control peer")?;
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
}
