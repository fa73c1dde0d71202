//! The bench's own LISP load generators, and the do-nothing reflector they
//! are compared against.
//!
//! * [`RequestLoad`]: ECM-encapsulated Map-Requests for random registered
//!   EIDs, with a fixed number outstanding (1 = closed loop). Every reply is
//!   checked: a Map-Reply, the nonce of a request in flight, and (against the
//!   map-server) one record for exactly the EID asked with the expected
//!   WireGuard key and a usable locator. Requests unanswered after a timeout
//!   count as lost.
//! * [`RegisterLoad`]: Map-Registers (HMAC-SHA-256, M bit set) for distinct
//!   prefixes, with a fixed number outstanding; every Map-Notify is checked
//!   (nonce in flight, HMAC, the prefix registered).
//! * [`reflector`]: answers each Map-Request with a precomputed Map-Reply of
//!   the same size as the map-server's, patching in the request's nonce.

use anyhow::{bail, Context, Result};
use lisp_wire::{
    auth, Address, Authentication, Ecm, EidPrefix, EidRecord, InnerHeader, KeyId, MapRegister,
    MapReply, MapRequest, Message, RequestRecord, RlocRecord, LISP_CONTROL_PORT,
};
use map_server_core::{Mapping, Origin, Rloc};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The WireGuard key of every bulk mapping (they belong to one configured
/// peer, and the map-server checks a restored mapping's key against it).
pub const BULK_KEY: [u8; 32] = [7; 32];
/// EIDs of the bulk mappings: 10.0.0.0 + i, for i in 1..=N.
pub fn bulk_eid(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i)
}

/// The mapping stored for bulk EID `i`.
pub fn bulk_mapping(i: u32, expires: Instant) -> Mapping {
    Mapping {
        rlocs: vec![Rloc {
            addr: IpAddr::V4(Ipv4Addr::from(0xc633_6400 + (i % 250) + 1)),
            port: Some(51820),
            priority: 1,
            weight: 100,
            relayed: false,
        }]
        .into_boxed_slice(),
        wg_key: Some(BULK_KEY),
        origin: Origin::Static,
        ttl_minutes: 10,
        map_version: 0,
        expires: Some(expires),
    }
}

/// The reply the reflector sends: what the map-server answers for a bulk
/// EID (same size), nonce zero.
pub fn reflector_reply() -> Result<Vec<u8>> {
    let eid = EidPrefix::host(0, IpAddr::V4(bulk_eid(1)));
    let record = map_server_core::mapping_record(eid, &bulk_mapping(1, Instant::now()));
    Ok(Message::MapReply(MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce: 0,
        records: vec![record],
    })
    .encode()?)
}

/// Offset of the nonce in a (possibly ECM-encapsulated) Map-Request.
fn request_nonce_offset(buf: &[u8]) -> Option<usize> {
    let kind = buf.first()? >> 4;
    match kind {
        1 => Some(4),
        8 => {
            let version = buf.get(4)? >> 4;
            let ip = match version {
                4 => (buf[4] & 0x0f) as usize * 4,
                6 => 40,
                _ => return None,
            };
            Some(4 + ip + 8 + 4)
        }
        _ => None,
    }
}

/// The do-nothing reflector: answers every Map-Request with `reply`, its
/// nonce patched. Runs until the process is killed.
pub fn reflector(listen: SocketAddr) -> Result<()> {
    let sock = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
    let mut reply = reflector_reply()?;
    let mut buf = [0u8; 2048];
    eprintln!("reflector listening on {listen}");
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let Some(off) = request_nonce_offset(&buf[..n]) else {
            continue;
        };
        if n < off + 8 {
            continue;
        }
        reply[4..12].copy_from_slice(&buf[off..off + 8]);
        let _ = sock.send_to(&reply, from);
    }
}

/// The batched reflector: the same precomputed reply, nonce patched, but up
/// to [`BATCH`] datagrams per system call each way (recvmmsg, waiting for
/// the first only; sendmmsg), as a map-server serving in batches can do at
/// best. Runs until the process is killed.
pub fn reflector_batched(listen: SocketAddr) -> Result<()> {
    use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;
    let sock = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
    let fd = sock.as_raw_fd();
    let reply = reflector_reply()?;
    let mut bufs = vec![[0u8; BUF]; BATCH];
    let mut replies: Vec<Vec<u8>> = (0..BATCH).map(|_| reply.clone()).collect();
    let mut rx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut tx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    eprintln!("batched reflector listening on {listen}");
    loop {
        to.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            let got = match recvmmsg(fd, &mut rx, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(got) => got,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            for m in got {
                let (Some(from), Some(payload)) =
                    (m.address, m.iovs().next().map(|b| &b[..m.bytes]))
                else {
                    continue;
                };
                let Some(off) = request_nonce_offset(payload).filter(|o| payload.len() >= o + 8)
                else {
                    continue;
                };
                let slot = to.len();
                replies[slot][4..12].copy_from_slice(&payload[off..off + 8]);
                to.push(Some(from));
            }
        }
        let mut done = 0;
        while done < to.len() {
            let iovs: Vec<[IoSlice<'_>; 1]> = replies[done..to.len()]
                .iter()
                .map(|r| [IoSlice::new(r)])
                .collect();
            match sendmmsg(fd, &mut tx, iovs.iter(), &to[done..], [], MsgFlags::empty()) {
                Ok(r) => done += r.count().max(1),
                // A datagram that cannot go is dropped, as the naive one does.
                Err(_) => done += 1,
            }
        }
    }
}

/// How replies are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The map-server: the reply must be, byte for byte, the Map-Reply for
    /// the EID asked (its prefix, the WireGuard key, locator and port) with
    /// the request's nonce.
    Mapping([u8; 32]),
    /// The reflector: a Map-Reply with a nonce in flight.
    NonceOnly,
}

/// What one load run saw.
#[derive(Debug, Clone, Default)]
pub struct LoadRun {
    pub sent: u64,
    pub replies: u64,
    pub lost: u64,
    /// Replies that failed the check (wrong prefix, key, kind).
    pub bad: u64,
    pub elapsed: Duration,
    /// Round-trip times in microseconds (only when asked for).
    pub rtt_us: Vec<f64>,
}

impl LoadRun {
    pub fn rate(&self) -> f64 {
        self.replies as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// When a run ends.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    Replies(u64),
    Elapsed(Duration),
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Every offset where `needle` occurs in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// An encoded ECM Map-Request whose nonce and EID are patched in place (and
/// the inner UDP checksum recomputed), so that the load generator does not
/// encode each request.
struct RequestTemplate {
    bytes: Vec<u8>,
    nonce_at: usize,
    eid_at: usize,
    /// Where the inner UDP header starts.
    udp_at: usize,
    src: IpAddr,
    dst: IpAddr,
}

/// The map-server's Map-Reply for bulk EID `i`, built the way it builds
/// one, with the EID and locator addresses patched per request.
struct ReplyTemplate {
    bytes: Vec<u8>,
    eid_at: Vec<usize>,
    rloc_at: Vec<usize>,
    scratch: Vec<u8>,
}

fn bulk_reply(i: u32, nonce: u64) -> Result<Vec<u8>> {
    let eid = EidPrefix::host(0, IpAddr::V4(bulk_eid(i)));
    let record = map_server_core::mapping_record(eid, &bulk_mapping(i, Instant::now()));
    Ok(Message::MapReply(MapReply {
        probe: false,
        echo_nonce: false,
        security: false,
        nonce,
        records: vec![record],
    })
    .encode()?)
}

fn bulk_rloc(i: u32) -> [u8; 4] {
    match bulk_mapping(i, Instant::now()).rlocs[0].addr {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => unreachable!("bulk locators are IPv4"),
    }
}

impl ReplyTemplate {
    /// Built from EID 1 and checked against the real encoder for others;
    /// `None` if patching cannot reproduce it (then replies are parsed).
    fn new() -> Result<Option<ReplyTemplate>> {
        let bytes = bulk_reply(1, 0)?;
        let eid_at = find_all(&bytes, &bulk_eid(1).octets());
        let rloc_at = find_all(&bytes, &bulk_rloc(1));
        let mut t = ReplyTemplate {
            scratch: bytes.clone(),
            bytes,
            eid_at,
            rloc_at,
        };
        for i in [2, 251, 4_242, 999_999] {
            if t.expected(i, 0x0102_0304_0506_0708) != bulk_reply(i, 0x0102_0304_0506_0708)? {
                return Ok(None);
            }
        }
        Ok(Some(t))
    }

    fn expected(&mut self, i: u32, nonce: u64) -> &[u8] {
        self.scratch.copy_from_slice(&self.bytes);
        self.scratch[4..12].copy_from_slice(&nonce.to_be_bytes());
        for &at in &self.eid_at {
            self.scratch[at..at + 4].copy_from_slice(&bulk_eid(i).octets());
        }
        let rloc = bulk_rloc(i);
        for &at in &self.rloc_at {
            self.scratch[at..at + 4].copy_from_slice(&rloc);
        }
        &self.scratch
    }
}

/// Map-Request load against one server: `window` requests outstanding,
/// sent and received in batches (sendmmsg/recvmmsg) on a connected socket,
/// so that the load generator costs less per request than the servers it
/// measures. With `spin`, it polls its socket instead of sleeping (give it
/// a core of its own).
pub struct RequestLoad {
    sock: UdpSocket,
    local: SocketAddr,
    rng: Rng,
    nonce: u64,
    entries: u32,
    timeout: Duration,
    spin: bool,
    request: Option<RequestTemplate>,
    reply: Option<ReplyTemplate>,
}

const BATCH: usize = 64;
const BUF: usize = 2048;

impl RequestLoad {
    /// `sock` must be bound to a concrete address (it is the ITR-RLOC the
    /// replies go to); requests ask for bulk EIDs 1..=`entries`.
    pub fn new(
        sock: UdpSocket,
        entries: u32,
        timeout: Duration,
        spin: bool,
    ) -> Result<RequestLoad> {
        let local = sock.local_addr()?;
        if local.ip().is_unspecified() {
            bail!("the load generator's socket must be bound to a concrete address");
        }
        sock.set_nonblocking(true)?;
        Ok(RequestLoad {
            sock,
            local,
            rng: Rng(rand::random::<u64>() | 1),
            nonce: rand::random::<u64>(),
            entries: entries.max(1),
            timeout,
            spin,
            request: None,
            reply: ReplyTemplate::new()?,
        })
    }

    pub fn set_entries(&mut self, entries: u32) {
        self.entries = entries.max(1);
    }

    fn encode_request(&self, dst: IpAddr, nonce: u64, eid: Ipv4Addr) -> Result<Vec<u8>> {
        let target = EidPrefix::host(0, IpAddr::V4(eid));
        let req = MapRequest {
            authoritative: false,
            probe: false,
            smr: false,
            pitr: false,
            smr_invoked: false,
            local_xtr: false,
            dont_map_reply: false,
            nonce,
            source_eid: Address::None,
            itr_rlocs: vec![Address::from(self.local.ip())],
            records: vec![RequestRecord {
                eid_mask_len: 32,
                eid: target.to_address(),
            }],
            map_reply_record: None,
        };
        Ok(Message::Ecm(Ecm {
            security: false,
            ddt: false,
            to_etr: false,
            to_ms: false,
            inner: InnerHeader {
                src: self.local.ip(),
                dst,
                ttl: 64,
                src_port: self.local.port(),
                dst_port: LISP_CONTROL_PORT,
            },
            message: Box::new(Message::MapRequest(req)),
        })
        .encode()?)
    }

    /// The request template for `dst`, built once and checked against the
    /// encoder.
    fn template(&mut self, dst: IpAddr) -> Result<()> {
        if self.request.as_ref().is_some_and(|t| t.dst == dst) {
            return Ok(());
        }
        let (marker_nonce, marker_eid) =
            (0x5a5a_0102_0304_a5a5u64, Ipv4Addr::new(10, 254, 253, 252));
        let bytes = self.encode_request(dst, marker_nonce, marker_eid)?;
        let nonce_at = find_all(&bytes, &marker_nonce.to_be_bytes());
        let eid_at = find_all(&bytes, &marker_eid.octets());
        let ([nonce_at], [eid_at]) = (nonce_at.as_slice(), eid_at.as_slice()) else {
            bail!("cannot locate the nonce and EID in an encoded Map-Request");
        };
        let ip_len = if dst.is_ipv4() { 20 } else { 40 };
        let t = RequestTemplate {
            bytes,
            nonce_at: *nonce_at,
            eid_at: *eid_at,
            udp_at: 4 + ip_len,
            src: self.local.ip(),
            dst,
        };
        let mut buf = Vec::new();
        t.fill(&mut buf, 77, bulk_eid(1234));
        if buf != self.encode_request(dst, 77, bulk_eid(1234))? {
            bail!("a patched Map-Request differs from an encoded one");
        }
        self.request = Some(t);
        Ok(())
    }

    /// The next request: a fresh nonce and a random registered EID.
    fn next_request(&mut self, buf: &mut Vec<u8>) -> (u64, u32) {
        self.nonce = self.nonce.wrapping_add(1);
        let i = 1 + (self.rng.next() % self.entries as u64) as u32;
        if let Some(t) = &self.request {
            t.fill(buf, self.nonce, bulk_eid(i));
        }
        (self.nonce, i)
    }

    /// Whether a reply to EID `i` passes the check.
    fn check(&mut self, bytes: &[u8], nonce: u64, i: u32, check: Check) -> bool {
        match (check, &mut self.reply) {
            (Check::NonceOnly, _) => bytes.first().is_some_and(|b| b >> 4 == 2),
            (Check::Mapping(key), Some(t)) if key == BULK_KEY => t.expected(i, nonce) == bytes,
            (Check::Mapping(_), _) => match lisp_wire::parse(bytes) {
                Ok(Message::MapReply(r)) => reply_ok(&r, i, check),
                _ => false,
            },
        }
    }

    /// Keeps `window` requests outstanding until `until`.
    pub fn run(
        &mut self,
        dst: SocketAddr,
        check: Check,
        window: usize,
        until: Until,
        record_rtt: bool,
    ) -> Result<LoadRun> {
        self.template(dst.ip())?;
        self.sock.connect(dst)?;
        let mut io = Mmsg::new();
        // Whatever is still queued belongs to an earlier run.
        while io.recv(&self.sock)? > 0 {}
        let mut inflight: HashMap<u64, (Instant, u32)> = HashMap::with_capacity(window * 2);
        let mut run = LoadRun::default();
        let start = Instant::now();
        let done = |run: &LoadRun| match until {
            Until::Replies(n) => run.replies + run.bad + run.lost >= n,
            Until::Elapsed(d) => start.elapsed() >= d,
        };
        // Bounds any run, whatever the server does.
        let hard_limit = match until {
            Until::Elapsed(d) => d + Duration::from_secs(10),
            Until::Replies(n) => Duration::from_secs(60) + self.timeout * n.min(1000) as u32,
        };
        let mut to_send = window;
        let mut last_scan = Instant::now();
        loop {
            if to_send > 0 && !done(&run) {
                let now = Instant::now();
                let k = to_send.min(BATCH);
                for b in 0..k {
                    let (nonce, i) = self.next_request(&mut io.out[b]);
                    inflight.insert(nonce, (now, i));
                }
                io.send(&self.sock, k)?;
                run.sent += k as u64;
                to_send -= k;
            }
            if done(&run) {
                break;
            }
            if start.elapsed() > hard_limit {
                bail!("load run against {dst} did not finish within {hard_limit:?}");
            }
            let n = io.recv(&self.sock)?;
            if n == 0 {
                if self.spin {
                    std::hint::spin_loop();
                } else {
                    io.wait(&self.sock, Duration::from_millis(1));
                }
            }
            let now = Instant::now();
            for m in 0..n {
                let bytes = &io.bufs[m][..io.lens[m]];
                let Some(nonce) = bytes
                    .get(4..12)
                    .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
                else {
                    run.bad += 1;
                    continue;
                };
                let Some((sent, i)) = inflight.remove(&nonce) else {
                    // Late: its request already counted as lost.
                    continue;
                };
                to_send += 1;
                if self.check(bytes, nonce, i, check) {
                    run.replies += 1;
                    if record_rtt {
                        run.rtt_us.push((now - sent).as_secs_f64() * 1e6);
                    }
                } else {
                    run.bad += 1;
                }
            }
            // Expire requests older than the timeout (at most every 10 ms).
            if now - last_scan > Duration::from_millis(10) {
                last_scan = now;
                let timeout = self.timeout;
                let before = inflight.len();
                inflight.retain(|_, (sent, _)| now - *sent < timeout);
                let expired = before - inflight.len();
                run.lost += expired as u64;
                to_send += expired;
            }
        }
        run.elapsed = start.elapsed();
        // Let the stragglers in, so they do not count in the next run.
        let end = Instant::now() + self.timeout;
        while !inflight.is_empty() && Instant::now() < end {
            let n = io.recv(&self.sock)?;
            for m in 0..n {
                if let Some(b) = io.bufs[m][..io.lens[m]].get(4..12) {
                    inflight.remove(&u64::from_be_bytes(b.try_into().unwrap_or_default()));
                }
            }
            if n == 0 {
                io.wait(&self.sock, Duration::from_millis(1));
            }
        }
        Ok(run)
    }

    /// Asks for bulk EID `i` until a positive, checked answer comes, or
    /// `limit` passes. Returns when it came.
    pub fn probe(
        &mut self,
        dst: SocketAddr,
        i: u32,
        key: [u8; 32],
        limit: Duration,
    ) -> Result<Option<Instant>> {
        self.template(dst.ip())?;
        self.sock.connect(dst)?;
        let start = Instant::now();
        let mut io = Mmsg::new();
        let mut buf = Vec::new();
        loop {
            testbed::interrupted()?;
            if start.elapsed() > limit {
                return Ok(None);
            }
            self.nonce = self.nonce.wrapping_add(1);
            let nonce = self.nonce;
            if let Some(t) = &self.request {
                t.fill(&mut buf, nonce, bulk_eid(i));
            }
            // Nothing may listen yet: a refused send is expected.
            let _ = self.sock.send(&buf);
            let wait_until = Instant::now() + Duration::from_millis(5);
            while Instant::now() < wait_until {
                let n = io.recv(&self.sock).unwrap_or(0);
                for m in 0..n {
                    if let Ok(Message::MapReply(r)) = lisp_wire::parse(&io.bufs[m][..io.lens[m]]) {
                        if r.nonce == nonce && reply_ok(&r, i, Check::Mapping(key)) {
                            return Ok(Some(Instant::now()));
                        }
                    }
                }
                if n == 0 {
                    io.wait(&self.sock, Duration::from_millis(1));
                }
            }
        }
    }
}

impl RequestTemplate {
    fn fill(&self, buf: &mut Vec<u8>, nonce: u64, eid: Ipv4Addr) {
        buf.clear();
        buf.extend_from_slice(&self.bytes);
        buf[self.nonce_at..self.nonce_at + 8].copy_from_slice(&nonce.to_be_bytes());
        buf[self.eid_at..self.eid_at + 4].copy_from_slice(&eid.octets());
        let u = self.udp_at;
        let sport = u16::from_be_bytes([buf[u], buf[u + 1]]);
        let dport = u16::from_be_bytes([buf[u + 2], buf[u + 3]]);
        let sum = lisp_wire::ecm::udp_checksum(self.src, self.dst, sport, dport, &buf[u + 8..]);
        buf[u + 6..u + 8].copy_from_slice(&sum.to_be_bytes());
    }
}

/// Buffers for sendmmsg/recvmmsg on a connected UDP socket.
struct Mmsg {
    out: Vec<Vec<u8>>,
    bufs: Vec<[u8; BUF]>,
    lens: Vec<usize>,
}

impl Mmsg {
    fn new() -> Mmsg {
        Mmsg {
            out: (0..BATCH).map(|_| Vec::with_capacity(256)).collect(),
            bufs: vec![[0u8; BUF]; BATCH],
            lens: vec![0; BATCH],
        }
    }

    /// Sends `out[..k]`; all of them (retrying a partial send).
    fn send(&mut self, sock: &UdpSocket, k: usize) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mut done = 0;
        while done < k {
            let mut iov: Vec<libc::iovec> = self.out[done..k]
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let mut hdrs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    // SAFETY: an all-zero mmsghdr is valid (no name, no
                    // control data); the iovec is filled in below.
                    let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    h.msg_hdr.msg_iov = v;
                    h.msg_hdr.msg_iovlen = 1;
                    h
                })
                .collect();
            // SAFETY: hdrs and the buffers they point to outlive the call.
            let n = unsafe {
                libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), hdrs.len() as u32, 0)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                // ECONNREFUSED from an earlier ICMP error: the datagram
                // still counts as sent (and lost).
                if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    done += 1;
                    continue;
                }
                return Err(e.into());
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Receives what is queued (up to BATCH), without waiting.
    fn recv(&mut self, sock: &UdpSocket) -> Result<usize> {
        use std::os::fd::AsRawFd;
        let mut iov: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: BUF,
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: as in send.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: hdrs and the buffers they point to outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
                _ if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(0),
                _ => Err(e.into()),
            };
        }
        for (m, h) in hdrs.iter().take(n as usize).enumerate() {
            self.lens[m] = h.msg_len as usize;
        }
        Ok(n as usize)
    }

    /// Sleeps until the socket is readable or `d` passes.
    fn wait(&self, sock: &UdpSocket, d: Duration) {
        use std::os::fd::AsRawFd;
        let mut fds = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut fds, 1, d.as_millis().max(1) as i32) };
    }
}

fn reply_ok(reply: &MapReply, i: u32, check: Check) -> bool {
    match check {
        Check::NonceOnly => true,
        Check::Mapping(key) => {
            let [record] = reply.records.as_slice() else {
                return false;
            };
            let want = EidPrefix::host(0, IpAddr::V4(bulk_eid(i)));
            EidPrefix::of_record(record).is_ok_and(|p| p == want)
                && record.wg_key() == Some(key)
                && record.best_locator().is_some()
        }
    }
}

/// What one registration run saw.
#[derive(Debug, Clone, Default)]
pub struct RegisterRun {
    pub sent: u64,
    pub notified: u64,
    pub lost: u64,
    pub bad: u64,
    pub elapsed: Duration,
    /// Map-Notifies received in each 100 ms of the run.
    pub per_100ms: Vec<u64>,
}

impl RegisterRun {
    pub fn rate(&self) -> f64 {
        self.notified as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Map-Register load from one keyless peer.
pub struct RegisterLoad {
    sock: UdpSocket,
    site_key: Vec<u8>,
    rloc: IpAddr,
    nonce: u64,
    timeout: Duration,
}

impl RegisterLoad {
    pub fn new(sock: UdpSocket, site_key: &[u8], timeout: Duration) -> Result<RegisterLoad> {
        // The socket may be on loopback, which the map-server refuses as a
        // locator: register a documentation address (nobody sends to it).
        let rloc = match sock.local_addr()?.ip() {
            ip if ip.is_loopback() => IpAddr::from([192, 0, 2, 77]),
            ip => ip,
        };
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(RegisterLoad {
            sock,
            site_key: site_key.to_vec(),
            rloc,
            nonce: rand::random::<u64>(),
            timeout,
        })
    }

    fn register(&mut self, prefix: EidPrefix) -> Result<(u64, Vec<u8>)> {
        self.nonce = self.nonce.wrapping_add(1);
        let reg = MapRegister {
            proxy_reply: true,
            security: false,
            rtr: false,
            want_map_notify: true,
            nonce: self.nonce,
            auth: Authentication::unsigned(KeyId::HmacSha256),
            records: vec![EidRecord::new(
                prefix,
                10,
                vec![RlocRecord::new(1, 100, Address::from(self.rloc))],
            )],
            xtr_site: None,
        };
        Ok((self.nonce, reg.encode_signed(&self.site_key)?))
    }

    /// Registers every prefix of `prefixes` once, `window` outstanding.
    pub fn run(
        &mut self,
        dst: SocketAddr,
        prefixes: &[EidPrefix],
        window: usize,
    ) -> Result<RegisterRun> {
        let mut inflight: HashMap<u64, (Instant, EidPrefix)> = HashMap::with_capacity(window * 2);
        let mut run = RegisterRun::default();
        let mut next = 0usize;
        let mut buf = [0u8; 2048];
        let start = Instant::now();
        let hard_limit = Duration::from_secs(60) + Duration::from_millis(prefixes.len() as u64);
        let send = |this: &mut Self,
                    inflight: &mut HashMap<u64, (Instant, EidPrefix)>,
                    run: &mut RegisterRun,
                    next: &mut usize|
         -> Result<()> {
            if let Some(&p) = prefixes.get(*next) {
                *next += 1;
                let (nonce, payload) = this.register(p)?;
                inflight.insert(nonce, (Instant::now(), p));
                this.sock.send_to(&payload, dst)?;
                run.sent += 1;
            }
            Ok(())
        };
        for _ in 0..window {
            send(self, &mut inflight, &mut run, &mut next)?;
        }
        let mut last_scan = Instant::now();
        while !inflight.is_empty() {
            if start.elapsed() > hard_limit {
                bail!("registration run did not finish within {hard_limit:?}");
            }
            let mut freed = 0;
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let at = start.elapsed();
                    let bytes = &buf[..n];
                    match lisp_wire::parse(bytes) {
                        Ok(Message::MapNotify(notify)) => {
                            if let Some((_, p)) = inflight.remove(&notify.nonce) {
                                freed += 1;
                                let ok = auth::verify(bytes, &self.site_key).is_ok()
                                    && notify.records.len() == 1
                                    && EidPrefix::of_record(&notify.records[0])
                                        .is_ok_and(|r| r == p);
                                if ok {
                                    run.notified += 1;
                                    let bin = (at.as_millis() / 100) as usize;
                                    if run.per_100ms.len() <= bin {
                                        run.per_100ms.resize(bin + 1, 0);
                                    }
                                    run.per_100ms[bin] += 1;
                                } else {
                                    run.bad += 1;
                                }
                            }
                        }
                        _ => run.bad += 1,
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            if last_scan.elapsed() > Duration::from_millis(10) {
                last_scan = Instant::now();
                let timeout = self.timeout;
                let before = inflight.len();
                inflight.retain(|_, (sent, _)| sent.elapsed() < timeout);
                let expired = before - inflight.len();
                run.lost += expired as u64;
                freed += expired;
            }
            for _ in 0..freed {
                send(self, &mut inflight, &mut run, &mut next)?;
            }
        }
        run.elapsed = start.elapsed();
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reflector_finds_the_nonce_of_an_ecm_request() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut load = RequestLoad::new(sock, 10, Duration::from_millis(100), false).unwrap();
        let dst: SocketAddr = "127.0.0.1:4342".parse().unwrap();
        let req = load
            .encode_request(dst.ip(), 0x1122_3344_5566_7788, bulk_eid(3))
            .unwrap();
        let off = request_nonce_offset(&req).unwrap();
        assert_eq!(&req[off..off + 8], &0x1122_3344_5566_7788u64.to_be_bytes());
        let reply = reflector_reply().unwrap();
        let Ok(Message::MapReply(r)) = lisp_wire::parse(&reply) else {
            panic!("the reflector's reply does not parse");
        };
        assert!(reply_ok(&r, 1, Check::Mapping(BULK_KEY)));
        assert!(!reply_ok(&r, 2, Check::Mapping(BULK_KEY)));
        // Templates: patched bytes equal encoded ones (checked at build).
        load.template(dst.ip()).unwrap();
        assert!(
            load.reply.is_some(),
            "the reply template reproduces the encoder"
        );
        let ok = bulk_reply(42, 9).unwrap();
        assert!(load.check(&ok, 9, 42, Check::Mapping(BULK_KEY)));
        assert!(!load.check(&ok, 9, 43, Check::Mapping(BULK_KEY)));
        assert!(!load.check(&ok, 8, 42, Check::Mapping(BULK_KEY)));
    }
}
