//! The relay's I/O: the connection to the TURN server (UDP, TCP or TLS),
//! the local proxy sockets that stand for peers behind the relay, the
//! self-checks and a probe's direct copies.
//!
//! The TURN protocol is [`relay::Allocation`]'s (sans-IO) and what to do is
//! the core's ([`RelayOp`]); this carries it out and reports what happened
//! ([`RelayEvent`]). It decides nothing.
//!
//! Data path: WireGuard sends a peer's packets to that peer's proxy socket
//! (127.0.0.1, one per peer), whose task wraps them for the allocation and
//! writes them to the TURN connection; what the relay delivers from a peer
//! leaves the peer's proxy socket toward WireGuard's port, so WireGuard
//! only ever sees the proxy as the peer's endpoint. The relay only ever
//! sees WireGuard ciphertext.

use relay::{probe, Allocation, Event, Transport};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};
use wgctl::Reinjector;
use xtr_core::{RelayEvent, RelayOp};

/// Proxy sockets at most: one per peer behind the relay.
const MAX_PROXIES: usize = 1024;
/// Datagrams queued per proxy while there is no allocation (a move).
const MAX_QUEUED: usize = 64;
/// Messages waiting for a TCP or TLS connection's writer.
const STREAM_QUEUE: usize = 2048;
/// Socket buffers of the proxy and TURN sockets (like wireguard-go's).
const SOCKET_BUFFER: usize = 4 << 20;
/// How long a TCP or TLS connection to the relay may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The name sent in TLS (the pin, not the name, is what is checked).
const TLS_NAME: &str = "turn.lispwg";

/// Relay traffic, for metrics.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Datagrams and bytes WireGuard sent through the relay.
    pub out_datagrams: AtomicU64,
    pub out_bytes: AtomicU64,
    /// Datagrams and bytes the relay delivered to WireGuard.
    pub in_datagrams: AtomicU64,
    pub in_bytes: AtomicU64,
    /// Datagrams dropped: no allocation, no permission, a full queue.
    pub dropped: AtomicU64,
    /// Copies sent straight during probes.
    pub mirrored: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// How the allocation's messages reach the relay.
enum Writer {
    /// A second descriptor of the TURN socket, sending directly: tokio's
    /// `try_send` refuses until its reactor has seen the socket writable,
    /// which drops the first datagram of a new socket (a lost Allocate
    /// costs the 500 ms retransmission timeout).
    Udp(std::net::UdpSocket),
    Stream(mpsc::Sender<Vec<u8>>),
}

impl Writer {
    /// Never waits: a full socket or queue drops the datagram, as UDP would.
    fn write(&self, data: &[u8]) -> bool {
        match self {
            Writer::Udp(s) => s.send(data).is_ok(),
            Writer::Stream(tx) => tx.try_send(data.to_vec()).is_ok(),
        }
    }
}

/// A non-blocking UDP socket bound as `s2` is, as a std socket for sending
/// and a tokio one (another descriptor of the same socket) for receiving.
fn split_udp(s2: socket2::Socket) -> Result<(std::net::UdpSocket, UdpSocket), String> {
    s2.set_nonblocking(true).map_err(|e| e.to_string())?;
    let std_sock: std::net::UdpSocket = s2.into();
    let recv = std_sock.try_clone().map_err(|e| e.to_string())?;
    let recv = UdpSocket::from_std(recv).map_err(|e| e.to_string())?;
    Ok((std_sock, recv))
}

struct Conn {
    id: u64,
    alloc: Allocation,
    writer: Writer,
    tasks: Vec<AbortHandle>,
    reported_up: bool,
}

struct Proxy {
    /// Sends to WireGuard (see [`Writer::Udp`] for why not tokio's).
    send: Arc<std::net::UdpSocket>,
    local: SocketAddr,
    task: AbortHandle,
}

/// A probe's copies: (source from our WireGuard port, destination).
struct Mirror {
    to: Vec<(SocketAddr, SocketAddr)>,
    until: Instant,
}

struct State {
    /// The allocation being made (connecting).
    connecting: Option<u64>,
    conn: Option<Conn>,
    permissions: BTreeSet<IpAddr>,
    proxies: HashMap<SocketAddr, Proxy>,
    mirrors: HashMap<SocketAddr, Mirror>,
    /// Datagrams from WireGuard waiting for an allocation, per remote.
    queued: HashMap<SocketAddr, VecDeque<Vec<u8>>>,
    buf: Vec<u8>,
}

struct Shared {
    state: Mutex<State>,
    /// The timer task re-reads the allocation's deadline.
    wake: Notify,
    events: mpsc::UnboundedSender<RelayEvent>,
    /// Where proxies deliver: WireGuard's port on loopback.
    wg: SocketAddr,
    wg_port: u16,
    reinjector: Arc<Reinjector>,
    counters: RelayCounters,
}

/// The relay, from the agent's side.
pub struct Relay {
    shared: Arc<Shared>,
    timer: AbortHandle,
    pub events: mpsc::UnboundedReceiver<RelayEvent>,
}

impl Relay {
    pub fn new(wg_port: u16, reinjector: Arc<Reinjector>) -> Relay {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                connecting: None,
                conn: None,
                permissions: BTreeSet::new(),
                proxies: HashMap::new(),
                mirrors: HashMap::new(),
                queued: HashMap::new(),
                buf: vec![0u8; 65_535 + relay::allocation::MAX_OVERHEAD],
            }),
            wake: Notify::new(),
            events: tx,
            wg: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), wg_port),
            wg_port,
            reinjector,
            counters: RelayCounters::default(),
        });
        let timer = tokio::spawn(timer_task(shared.clone())).abort_handle();
        Relay {
            shared,
            timer,
            events: rx,
        }
    }

    pub fn counters(&self) -> &RelayCounters {
        &self.shared.counters
    }

    /// Proxy sockets open now.
    pub fn proxies(&self) -> usize {
        self.shared.lock().proxies.len()
    }

    /// Carries out one of the core's relay operations.
    pub fn apply(&self, op: RelayOp) {
        let now = Instant::now();
        match op {
            RelayOp::Allocate {
                id,
                server,
                transport,
                username,
                password,
                tls_pin,
            } => {
                {
                    let mut st = self.shared.lock();
                    drop_conn(&mut st, now);
                    st.connecting = Some(id);
                }
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let user = (username, password);
                    match connect(&shared, id, server, transport, tls_pin).await {
                        Ok((local, writer, tasks)) => {
                            install(&shared, id, local, server, transport, &user, writer, tasks)
                        }
                        Err(reason) => {
                            let mut st = shared.lock();
                            if st.connecting == Some(id) {
                                st.connecting = None;
                                drop(st);
                                let _ = shared.events.send(RelayEvent::Lost { id, reason });
                            }
                        }
                    }
                });
            }
            RelayOp::Release { id } => {
                let mut st = self.shared.lock();
                if st.connecting == Some(id) {
                    st.connecting = None;
                }
                if st.conn.as_ref().is_some_and(|c| c.id == id) {
                    drop_conn(&mut st, now);
                }
            }
            RelayOp::Permit { ips } => {
                let mut st = self.shared.lock();
                st.permissions = ips.into_iter().collect();
                let State {
                    conn, permissions, ..
                } = &mut *st;
                if let Some(c) = conn {
                    c.alloc.set_permissions(permissions, now);
                    flush(c, now);
                }
                drop(st);
                self.shared.wake.notify_one();
            }
            RelayOp::Proxy { remote } => {
                let mut st = self.shared.lock();
                if let Err(e) = ensure_proxy(&self.shared, &mut st, remote) {
                    warn!(%remote, error = %e, "cannot open a relay proxy socket");
                }
            }
            RelayOp::Check { nonce } => {
                let mut st = self.shared.lock();
                let State { conn, buf, .. } = &mut *st;
                if let Some(c) = conn {
                    if let Some(relayed) = c.alloc.relayed() {
                        if let Ok(n) = c.alloc.send(relayed, &probe::encode(nonce), now, buf) {
                            c.writer.write(&buf[..n]);
                        }
                        flush(c, now);
                    }
                }
                drop(st);
                self.shared.wake.notify_one();
            }
            RelayOp::Mirror {
                remote,
                to,
                duration,
            } => {
                let to: Vec<(SocketAddr, SocketAddr)> = to
                    .into_iter()
                    .filter_map(|d| Some((source_toward(d, self.shared.wg_port)?, d)))
                    .collect();
                let mut st = self.shared.lock();
                st.mirrors.insert(
                    remote,
                    Mirror {
                        to,
                        until: now + duration,
                    },
                );
            }
        }
    }

    /// Gives the allocation back (best effort: the Refresh goes out, the
    /// answer is not waited for long) and closes every socket.
    pub async fn shutdown(self) {
        let had = {
            let mut st = self.shared.lock();
            let now = Instant::now();
            match st.conn.as_mut() {
                Some(c) if c.alloc.relayed().is_some() => {
                    c.alloc.delete(now);
                    flush(c, now);
                    true
                }
                _ => false,
            }
        };
        if had {
            // Let the Refresh leave (and its answer come).
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut st = self.shared.lock();
        drop_conn(&mut st, Instant::now());
        for (_, p) in st.proxies.drain() {
            p.task.abort();
        }
        self.timer.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still
        // consistent enough to shut down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The source address the kernel uses toward `to`, with our WireGuard
/// port: a direct copy must look like WireGuard's own packet.
fn source_toward(to: SocketAddr, wg_port: u16) -> Option<SocketAddr> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(to).ok()?;
    Some(SocketAddr::new(s.local_addr().ok()?.ip(), wg_port))
}

fn big_buffers(s: &socket2::Socket) {
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
}

type Connected = (SocketAddr, Writer, Vec<AbortHandle>);

/// Opens the connection to the relay and starts reading from it.
async fn connect(
    shared: &Arc<Shared>,
    id: u64,
    server: SocketAddr,
    transport: Transport,
    tls_pin: Option<[u8; 32]>,
) -> Result<Connected, String> {
    match transport {
        Transport::Udp => {
            let any: SocketAddr = match server {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let s = socket2::Socket::new(
                socket2::Domain::for_address(server),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .map_err(|e| format!("UDP socket: {e}"))?;
            big_buffers(&s);
            s.bind(&any.into()).map_err(|e| format!("bind: {e}"))?;
            s.connect(&server.into())
                .map_err(|e| format!("no route to the relay {server}: {e}"))?;
            let (send, recv) = split_udp(s)?;
            let local = send.local_addr().map_err(|e| e.to_string())?;
            let reader = tokio::spawn(udp_reader(shared.clone(), id, recv)).abort_handle();
            Ok((local, Writer::Udp(send), vec![reader]))
        }
        Transport::Tcp | Transport::Tls => {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
                .await
                .map_err(|_| format!("TCP to the relay {server}: no answer"))?
                .map_err(|e| format!("TCP to the relay {server}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().map_err(|e| e.to_string())?;
            let (tx, rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
            let tasks = if transport == Transport::Tls {
                let pin = tls_pin.ok_or("TLS to the relay without a pin")?;
                let config = crate::tlspin::client_config(pin);
                let name =
                    rustls::pki_types::ServerName::try_from(TLS_NAME).map_err(|e| e.to_string())?;
                let tls = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio_rustls::TlsConnector::from(config).connect(name, tcp),
                )
                .await
                .map_err(|_| format!("TLS to the relay {server}: no handshake"))?
                .map_err(|e| format!("TLS to the relay {server}: {e}"))?;
                let (r, w) = tokio::io::split(tls);
                spawn_stream(shared, id, r, w, rx)
            } else {
                let (r, w) = tcp.into_split();
                spawn_stream(shared, id, r, w, rx)
            };
            Ok((local, Writer::Stream(tx), tasks))
        }
    }
}

fn spawn_stream<R, W>(
    shared: &Arc<Shared>,
    id: u64,
    r: R,
    w: W,
    rx: mpsc::Receiver<Vec<u8>>,
) -> Vec<AbortHandle>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    vec![
        tokio::spawn(stream_reader(shared.clone(), id, r)).abort_handle(),
        tokio::spawn(stream_writer(shared.clone(), id, w, rx)).abort_handle(),
    ]
}

/// Starts the allocation on a connection that just opened.
#[allow(clippy::too_many_arguments)]
fn install(
    shared: &Arc<Shared>,
    id: u64,
    local: SocketAddr,
    server: SocketAddr,
    transport: Transport,
    user: &(String, String),
    writer: Writer,
    tasks: Vec<AbortHandle>,
) {
    let now = Instant::now();
    let mut st = shared.lock();
    if st.connecting != Some(id) {
        // Released while connecting.
        tasks.iter().for_each(AbortHandle::abort);
        return;
    }
    st.connecting = None;
    let mut alloc = Allocation::new(transport, local, server, &user.0, &user.1, now);
    alloc.set_permissions(&st.permissions, now);
    let mut c = Conn {
        id,
        alloc,
        writer,
        tasks,
        reported_up: false,
    };
    c.alloc.poll(now);
    flush(&mut c, now);
    st.conn = Some(c);
    drop(st);
    debug!(%server, %transport, "connected to the relay; allocating");
    shared.wake.notify_one();
}

/// Ends the connection (if any) and its tasks.
fn drop_conn(st: &mut State, now: Instant) {
    if let Some(mut c) = st.conn.take() {
        c.alloc.delete(now);
        flush(&mut c, now);
        c.tasks.iter().for_each(AbortHandle::abort);
    }
}

/// Writes the allocation's pending requests.
fn flush(c: &mut Conn, now: Instant) {
    while let Some(m) = c.alloc.poll_transmit(now) {
        c.writer.write(&m);
    }
}

/// Reports what the allocation says; once up, sends what waited.
fn take_events(shared: &Shared, st: &mut State, now: Instant) {
    let State {
        conn, queued, buf, ..
    } = st;
    let Some(c) = conn.as_mut() else { return };
    let id = c.id;
    let mut lost = None;
    while let Some(ev) = c.alloc.poll_event() {
        match ev {
            Event::Allocated { relayed } => {
                c.reported_up = true;
                info!(%relayed, server = %c.alloc.server(), transport = %c.alloc.transport(), "relay allocation created");
                let _ = shared.events.send(RelayEvent::Allocated { id, relayed });
                for (remote, q) in queued.drain() {
                    for d in q {
                        if let Ok(n) = c.alloc.send(remote, &d, now, buf) {
                            c.writer.write(&buf[..n]);
                        }
                    }
                }
            }
            Event::Lost { reason } => lost = Some(reason),
        }
    }
    flush(c, now);
    if let Some(reason) = lost {
        lose(shared, st, id, reason);
    }
}

/// The connection or allocation `id` failed: closed, and reported.
fn lose(shared: &Shared, st: &mut State, id: u64, reason: String) {
    if st.conn.as_ref().is_some_and(|c| c.id == id) {
        if let Some(c) = st.conn.take() {
            c.tasks.iter().for_each(AbortHandle::abort);
        }
        let _ = shared.events.send(RelayEvent::Lost { id, reason });
    }
}

/// Bytes from the relay: datagrams for the proxies, self-checks, and the
/// allocation's own messages.
fn from_relay(shared: &Arc<Shared>, id: u64, bytes: &[u8]) {
    let now = Instant::now();
    let mut st = shared.lock();
    let mut unknown: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    {
        let State { conn, proxies, .. } = &mut *st;
        let Some(c) = conn.as_mut().filter(|c| c.id == id) else {
            return;
        };
        let relayed = c.alloc.relayed();
        let counters = &shared.counters;
        let events = &shared.events;
        let wg = shared.wg;
        c.alloc.recv(bytes, now, &mut |peer, data| {
            if Some(peer) == relayed {
                if let Some(nonce) = probe::decode(data) {
                    let _ = events.send(RelayEvent::CheckAnswered { nonce });
                    return;
                }
            }
            match proxies.get(&peer) {
                Some(p) => {
                    if p.send.send_to(data, wg).is_ok() {
                        add(&counters.in_datagrams, 1);
                        add(&counters.in_bytes, data.len() as u64);
                    } else {
                        add(&counters.dropped, 1);
                    }
                }
                None if unknown.len() < 16 => unknown.push((peer, data.to_vec())),
                None => add(&counters.dropped, 1),
            }
        });
    }
    // A peer we have no proxy for (it reached our relayed address first):
    // a proxy of its own, reported to the core.
    for (peer, data) in unknown {
        match ensure_proxy(shared, &mut st, peer) {
            Ok(sock) => {
                if sock.send_to(&data, shared.wg).is_ok() {
                    add(&shared.counters.in_datagrams, 1);
                    add(&shared.counters.in_bytes, data.len() as u64);
                }
            }
            Err(e) => {
                add(&shared.counters.dropped, 1);
                debug!(%peer, error = %e, "no proxy socket for a relayed peer");
            }
        }
    }
    take_events(shared, &mut st, now);
    drop(st);
    shared.wake.notify_one();
}

/// The proxy socket for `remote`, opened (and reported) if there is none.
fn ensure_proxy(
    shared: &Arc<Shared>,
    st: &mut State,
    remote: SocketAddr,
) -> Result<Arc<std::net::UdpSocket>, String> {
    if let Some(p) = st.proxies.get(&remote) {
        let _ = shared.events.send(RelayEvent::Proxy {
            remote,
            local: p.local,
        });
        return Ok(p.send.clone());
    }
    if st.proxies.len() >= MAX_PROXIES {
        return Err(format!("{MAX_PROXIES} proxy sockets open already"));
    }
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(|e| e.to_string())?;
    big_buffers(&s);
    let lo: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
    s.bind(&lo.into()).map_err(|e| e.to_string())?;
    let (send, recv) = split_udp(s)?;
    let send = Arc::new(send);
    let local = send.local_addr().map_err(|e| e.to_string())?;
    let task = tokio::spawn(proxy_reader(shared.clone(), remote, recv)).abort_handle();
    st.proxies.insert(
        remote,
        Proxy {
            send: send.clone(),
            local,
            task,
        },
    );
    debug!(%remote, %local, "relay proxy socket");
    let _ = shared.events.send(RelayEvent::Proxy { remote, local });
    Ok(send)
}

/// WireGuard's packets for `remote`: through the allocation (a probe's
/// direct copies first).
async fn proxy_reader(shared: Arc<Shared>, remote: SocketAddr, socket: UdpSocket) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!(%remote, error = %e, "relay proxy socket failed");
                return;
            }
        };
        // Only our WireGuard talks to the proxy.
        if from != shared.wg && !(from.ip().is_loopback() && from.port() == shared.wg_port) {
            add(&shared.counters.dropped, 1);
            continue;
        }
        let data = &buf[..n];
        let now = Instant::now();
        let copies: Vec<Vec<u8>> = {
            let mut st = shared.lock();
            match st.mirrors.get(&remote) {
                Some(m) if now < m.until => {
                    m.to.iter()
                        .filter_map(|(src, dst)| xtr_core::packet::udp(*src, *dst, data))
                        .collect()
                }
                Some(_) => {
                    st.mirrors.remove(&remote);
                    Vec::new()
                }
                None => Vec::new(),
            }
        };
        for c in &copies {
            if shared.reinjector.send(c).await.is_ok() {
                add(&shared.counters.mirrored, 1);
            }
        }
        let mut st = shared.lock();
        let State {
            conn,
            queued,
            buf: obuf,
            ..
        } = &mut *st;
        match conn.as_mut() {
            Some(c) if c.alloc.relayed().is_some() => match c.alloc.send(remote, data, now, obuf) {
                Ok(0) => {}
                Ok(m) => {
                    if c.writer.write(&obuf[..m]) {
                        add(&shared.counters.out_datagrams, 1);
                        add(&shared.counters.out_bytes, n as u64);
                    } else {
                        add(&shared.counters.dropped, 1);
                    }
                    // A first send binds a channel: its request goes too.
                    flush(c, now);
                }
                Err(_) => add(&shared.counters.dropped, 1),
            },
            // No allocation (being made again after a move): hold a few.
            _ => {
                let q = queued.entry(remote).or_default();
                if q.len() < MAX_QUEUED {
                    q.push_back(data.to_vec());
                } else {
                    add(&shared.counters.dropped, 1);
                }
            }
        }
    }
}

async fn udp_reader(shared: Arc<Shared>, id: u64, sock: UdpSocket) {
    let mut buf = vec![0u8; 65_535];
    loop {
        match sock.recv(&mut buf).await {
            Ok(n) => from_relay(&shared, id, &buf[..n]),
            Err(e) => {
                // A port unreachable from the relay: nothing listens there
                // any more (coturn stopped or restarted).
                let reason = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => {
                        "the relay's port is closed (ICMP port unreachable)".to_string()
                    }
                    _ => format!("receiving from the relay: {e}"),
                };
                let mut st = shared.lock();
                lose(&shared, &mut st, id, reason);
                return;
            }
        }
    }
}

async fn stream_reader<R: tokio::io::AsyncRead + Unpin>(shared: Arc<Shared>, id: u64, mut r: R) {
    let mut buf = vec![0u8; 65_535];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => {
                let mut st = shared.lock();
                lose(
                    &shared,
                    &mut st,
                    id,
                    "the relay closed the connection".into(),
                );
                return;
            }
            Ok(n) => from_relay(&shared, id, &buf[..n]),
            Err(e) => {
                let mut st = shared.lock();
                lose(&shared, &mut st, id, format!("reading from the relay: {e}"));
                return;
            }
        }
    }
}

async fn stream_writer<W: tokio::io::AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    id: u64,
    mut w: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    while let Some(m) = rx.recv().await {
        if let Err(e) = w.write_all(&m).await {
            let mut st = shared.lock();
            lose(&shared, &mut st, id, format!("writing to the relay: {e}"));
            return;
        }
    }
}

/// Drives the allocation's timers (refreshes, retransmissions).
async fn timer_task(shared: Arc<Shared>) {
    loop {
        let deadline = {
            let now = Instant::now();
            let mut st = shared.lock();
            let next = match st.conn.as_mut() {
                Some(c) => {
                    let d = c.alloc.poll(now);
                    flush(c, now);
                    d
                }
                None => None,
            };
            take_events(&shared, &mut st, now);
            next
        };
        let sleep = match deadline {
            Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = sleep => {}
            _ = shared.wake.notified() => {}
        }
    }
}
