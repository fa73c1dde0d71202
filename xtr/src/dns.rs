//! The agent's DNS listener: UDP on the control address, port 53.
//!
//! It only reads and writes DNS messages (hickory-proto); what a name means
//! is the core's decision ([`xtr_core::Xtr::handle_name_query`]): each
//! question goes to the core, and the core's [`NameAnswer`] comes back as
//! addresses (A/AAAA), NXDOMAIN, SERVFAIL, or "not ours", in which case the
//! question is forwarded as it came to the upstream servers, one after the
//! other, and their answer relayed back unchanged.
//!
//! Only the node itself is answered (sources: loopback, the control
//! address, our EIDs): anyone else able to reach the control address must
//! not get an open resolver. UDP and TCP (RFC 7766): a stub resolver
//! without EDNS gets an upstream answer over 512 bytes truncated, and asks
//! again over TCP; a question that came over TCP is forwarded over TCP.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use xtr_core::{NameAnswer, NameQuery};

/// How long one upstream server gets to answer a forwarded question.
const FORWARD_WAIT: Duration = Duration::from_millis(1500);
/// Forwarded questions in flight at most; beyond, SERVFAIL at once.
const MAX_FORWARDS: usize = 128;
/// Questions waiting for the core at most (the core bounds its lookups too).
const MAX_ASKED: usize = 4096;
/// At most one warning per this long for bad or refused datagrams.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the listener counted (shared with the forwarding tasks).
#[derive(Debug, Default)]
pub struct DnsCounters {
    pub received: AtomicU64,
    pub answered: AtomicU64,
    pub forwarded: AtomicU64,
    pub forward_failures: AtomicU64,
    pub refused: AtomicU64,
    pub malformed: AtomicU64,
    pub send_failures: AtomicU64,
}

/// Where an answer goes: back over UDP, or to the TCP connection it came
/// on (its task writes it).
enum ReplyTo {
    Udp(SocketAddr),
    Stream(oneshot::Sender<Vec<u8>>),
}

/// A question read from a TCP connection, for the event loop.
pub struct StreamQuestion {
    pub bytes: Vec<u8>,
    pub from: SocketAddr,
    reply: oneshot::Sender<Vec<u8>>,
}

/// Who may ask: the node itself (loopback, its control address, its EIDs)
/// and, for an xTR, the hosts of the EID prefixes behind it.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    pub addrs: Vec<IpAddr>,
    pub prefixes: Vec<lisp_wire::EidPrefix>,
}

impl Clients {
    pub fn admits(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
            || self.addrs.contains(&ip)
            || self.prefixes.iter().any(|p| p.contains_addr(p.iid, ip))
    }
}

/// A question handed to the core, waiting for its answer.
struct Asked {
    from: SocketAddr,
    reply: ReplyTo,
    request: Message,
    raw: Vec<u8>,
}

pub struct Dns {
    socket: Arc<UdpSocket>,
    /// The same socket, for sending without waiting for the reactor to
    /// report it writable (a UDP send never blocks long).
    sender: std::net::UdpSocket,
    pub listen: SocketAddr,
    pub upstream: Arc<Vec<SocketAddr>>,
    clients: Clients,
    asked: HashMap<u64, Asked>,
    next_query: u64,
    in_flight: Arc<AtomicUsize>,
    pub counters: Arc<DnsCounters>,
    last_warning: Option<Instant>,
}

/// The nameservers of a resolv.conf, port 53, leaving out `ours` (we would
/// forward to ourselves).
pub fn nameservers(resolv_conf: &str, ours: SocketAddr) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        // A link-local IPv6 server may carry a zone (`fe80::1%eth0`): not
        // representable here, and never ours.
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|s| *s != ours && !(s.ip().is_unspecified() && ours.port() == 53))
        .collect()
}

impl Dns {
    /// Binds the listener, answering `clients` only.
    pub fn bind(
        listen: SocketAddr,
        upstream: Vec<SocketAddr>,
        clients: Clients,
    ) -> std::io::Result<Dns> {
        let std = std::net::UdpSocket::bind(listen)?;
        std.set_nonblocking(true)?;
        let sender = std.try_clone()?;
        Ok(Dns {
            sender,
            socket: Arc::new(UdpSocket::from_std(std)?),
            listen,
            upstream: Arc::new(upstream),
            clients,
            asked: HashMap::new(),
            next_query: 0,
            in_flight: Arc::new(AtomicUsize::new(0)),
            counters: Arc::new(DnsCounters::default()),
            last_warning: None,
        })
    }

    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }

    fn warn_limited(&mut self, what: &str, from: SocketAddr, why: &str) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            self.last_warning = Some(now);
            warn!(%from, reason = %why, "{what} (further ones for 10 s not logged; see the metrics)");
        }
    }

    /// A datagram on the listener: the name question for the core, if it
    /// is one; anything else is answered (or dropped) here.
    pub fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr) -> Option<(NameQuery, String)> {
        self.on_message(bytes, from, ReplyTo::Udp(from))
    }

    /// A message read from a TCP connection, likewise.
    pub fn on_stream(&mut self, q: StreamQuestion) -> Option<(NameQuery, String)> {
        self.on_message(&q.bytes, q.from, ReplyTo::Stream(q.reply))
    }

    fn on_message(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        reply_to: ReplyTo,
    ) -> Option<(NameQuery, String)> {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let ip = from.ip();
        if !self.clients.admits(ip) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            self.warn_limited(
                "DNS question from outside this node refused",
                from,
                "source",
            );
            return None;
        }
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                self.warn_limited("malformed DNS message dropped", from, &e.to_string());
                return None;
            }
        };
        if request.metadata.message_type != MessageType::Query {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let refuse = |code| Some(response(&request, code, Vec::new()));
        let question = match request.queries.as_slice() {
            [q] => Some(q),
            _ => None,
        };
        let reply = match question {
            _ if request.metadata.op_code != OpCode::Query => refuse(ResponseCode::NotImp),
            None => refuse(ResponseCode::FormErr),
            Some(q) if q.query_class() != DNSClass::IN => refuse(ResponseCode::Refused),
            Some(_) => None,
        };
        if let Some(reply) = reply {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            self.send(&reply, reply_to, from);
            return None;
        }
        if self.asked.len() >= MAX_ASKED {
            let reply = response(&request, ResponseCode::ServFail, Vec::new());
            self.send(&reply, reply_to, from);
            return None;
        }
        let name = question?.name().to_ascii();
        let query = NameQuery(self.next_query);
        self.next_query += 1;
        self.asked.insert(
            query.0,
            Asked {
                from,
                reply: reply_to,
                request,
                raw: bytes.to_vec(),
            },
        );
        Some((query, name))
    }

    /// The core's answer to a question.
    pub fn answer(&mut self, query: NameQuery, answer: NameAnswer) {
        let Some(asked) = self.asked.remove(&query.0) else {
            return;
        };
        // One question, checked when it was read.
        let Some(q) = asked.request.queries.first() else {
            return;
        };
        let reply = match answer {
            NameAnswer::Addresses { addrs, ttl } => {
                let ttl = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX).max(1);
                let want = q.query_type();
                let records = addrs
                    .iter()
                    .filter_map(|a| match (a, want) {
                        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
                        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                            Some(RData::AAAA(AAAA(*v6)))
                        }
                        _ => None,
                    })
                    .map(|rdata| Record::from_rdata(q.name().clone(), ttl, rdata))
                    .collect();
                // No record of the type asked: NOERROR with no answer
                // (NODATA), the name exists.
                response(&asked.request, ResponseCode::NoError, records)
            }
            NameAnswer::NoSuchName { .. } => {
                response(&asked.request, ResponseCode::NXDomain, Vec::new())
            }
            NameAnswer::Unavailable => response(&asked.request, ResponseCode::ServFail, Vec::new()),
            NameAnswer::NotOurs => return self.forward(asked),
        };
        self.counters.answered.fetch_add(1, Ordering::Relaxed);
        self.send(&reply, asked.reply, asked.from);
    }

    fn send(&mut self, message: &Message, reply_to: ReplyTo, to: SocketAddr) {
        let sent = message.to_vec().map_err(|e| e.to_string()).and_then(|b| {
            match reply_to {
                ReplyTo::Udp(to) => self.sender.send_to(&b, to).map(drop),
                // The connection's task writes it; gone means it closed.
                ReplyTo::Stream(tx) => tx
                    .send(b)
                    .map_err(|_| std::io::ErrorKind::BrokenPipe.into()),
            }
            .map_err(|e| e.to_string())
        });
        if let Err(e) = sent {
            self.counters.send_failures.fetch_add(1, Ordering::Relaxed);
            self.warn_limited("DNS answer could not be sent", to, &e);
        }
    }

    /// Hands the question, as it came, to the upstream servers in turn; the
    /// first answer with its id goes back to the asker. None answering in
    /// time, or no upstream at all: SERVFAIL.
    fn forward(&mut self, asked: Asked) {
        if self.upstream.is_empty() || self.in_flight.load(Ordering::Relaxed) >= MAX_FORWARDS {
            self.counters
                .forward_failures
                .fetch_add(1, Ordering::Relaxed);
            let reply = response(&asked.request, ResponseCode::ServFail, Vec::new());
            self.send(&reply, asked.reply, asked.from);
            return;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let socket = self.socket.clone();
        let upstream = self.upstream.clone();
        let counters = self.counters.clone();
        let in_flight = self.in_flight.clone();
        tokio::spawn(async move {
            let id = asked.request.metadata.id;
            let answer = match asked.reply {
                ReplyTo::Udp(_) => ask_upstream(&upstream, &asked.raw, id).await,
                ReplyTo::Stream(_) => ask_upstream_tcp(&upstream, &asked.raw, id).await,
            };
            let bytes = match answer {
                Some(bytes) => {
                    counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    Some(bytes)
                }
                None => {
                    counters.forward_failures.fetch_add(1, Ordering::Relaxed);
                    response(&asked.request, ResponseCode::ServFail, Vec::new())
                        .to_vec()
                        .ok()
                }
            };
            if let Some(b) = bytes {
                let sent = match asked.reply {
                    ReplyTo::Udp(to) => socket.send_to(&b, to).await.is_ok(),
                    ReplyTo::Stream(tx) => tx.send(b).is_ok(),
                };
                if !sent {
                    counters.send_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Forwarded questions in flight now.
    pub fn forwards_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Each upstream in turn, [`FORWARD_WAIT`] each: the first datagram from
/// it carrying our id.
async fn ask_upstream(upstream: &[SocketAddr], raw: &[u8], id: u16) -> Option<Vec<u8>> {
    for &server in upstream {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(sock) = UdpSocket::bind(local).await else {
            continue;
        };
        if sock.send_to(raw, server).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65_535];
        let deadline = tokio::time::Instant::now() + FORWARD_WAIT;
        // Bounded by the deadline and by a count of stray datagrams.
        for _ in 0..64 {
            match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) if from == server && n >= 2 && buf[..2] == id.to_be_bytes() => {
                    return Some(buf[..n].to_vec());
                }
                Ok(Ok(_)) => continue,
                Ok(Err(_)) | Err(_) => break,
            }
        }
    }
    None
}

/// Each upstream in turn over TCP, [`FORWARD_WAIT`] each: the answer
/// carrying our id.
async fn ask_upstream_tcp(upstream: &[SocketAddr], raw: &[u8], id: u16) -> Option<Vec<u8>> {
    let len = u16::try_from(raw.len()).ok()?;
    for &server in upstream {
        let exchange = async {
            let mut conn = TcpStream::connect(server).await?;
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(raw);
            conn.write_all(&framed).await?;
            read_framed(&mut conn).await
        };
        if let Ok(Ok(answer)) = tokio::time::timeout(FORWARD_WAIT, exchange).await {
            if answer.len() >= 2 && answer[..2] == id.to_be_bytes() {
                return Some(answer);
            }
        }
    }
    None
}

/// One DNS message of a TCP stream: a 2-byte length, then the message.
async fn read_framed(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = conn.read_u16().await? as usize;
    let mut msg = vec![0u8; len];
    conn.read_exact(&mut msg).await?;
    Ok(msg)
}

/// TCP connections served at once at most; more are closed at once.
const MAX_STREAMS: usize = 32;
/// Questions on one connection at most, and how long it may sit idle.
const STREAM_QUESTIONS: usize = 16;
const STREAM_IDLE: Duration = Duration::from_secs(10);

/// The TCP listener beside the UDP one: each connection's questions go to
/// the event loop (`questions`), one at a time, and their answers back.
pub fn serve_tcp(
    std: std::net::TcpListener,
    clients: Clients,
    counters: Arc<DnsCounters>,
    questions: mpsc::Sender<StreamQuestion>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    std.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std)?;
    let open = Arc::new(AtomicUsize::new(0));
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut conn, from)) = listener.accept().await else {
                // Out of descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let ip = from.ip();
            if !clients.admits(ip) {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if open.load(Ordering::Relaxed) >= MAX_STREAMS {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            open.fetch_add(1, Ordering::Relaxed);
            let (questions, open) = (questions.clone(), open.clone());
            tokio::spawn(async move {
                for _ in 0..STREAM_QUESTIONS {
                    let Ok(Ok(bytes)) =
                        tokio::time::timeout(STREAM_IDLE, read_framed(&mut conn)).await
                    else {
                        break;
                    };
                    let (reply, answer) = oneshot::channel();
                    let q = StreamQuestion { bytes, from, reply };
                    if questions.send(q).await.is_err() {
                        break;
                    }
                    // Unanswered (dropped as malformed): close.
                    let Ok(Ok(answer)) = tokio::time::timeout(STREAM_IDLE, answer).await else {
                        break;
                    };
                    let Ok(len) = u16::try_from(answer.len()) else {
                        break;
                    };
                    let mut framed = len.to_be_bytes().to_vec();
                    framed.extend_from_slice(&answer);
                    if conn.write_all(&framed).await.is_err() {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }))
}

/// A response to `request` with `code` and `answers`, the question echoed.
fn response(request: &Message, code: ResponseCode, answers: Vec<Record>) -> Message {
    let mut m = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    m.metadata.recursion_desired = request.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = code != ResponseCode::ServFail;
    m.add_queries(request.queries.iter().cloned());
    m.add_answers(answers);
    if request.edns.is_some() {
        m.set_edns(Edns::new());
    }
    m
}

/// How to point a host without systemd-resolved at the agent, logged once.
pub fn log_resolv_conf_hint(listen: SocketAddr, domain: &str, search: bool) {
    let search = if search {
        format!(" and `search {domain}` (for bare names)")
    } else {
        String::new()
    };
    info!(
        listen = %listen,
        "systemd-resolved is not running: to resolve NAME.{domain}, put `nameserver {}` first in /etc/resolv.conf{search} (other names are forwarded to the upstream servers)",
        listen.ip()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn question(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    #[test]
    fn the_node_and_the_hosts_behind_an_xtr_may_ask_nobody_else() {
        let c = Clients {
            addrs: vec!["100.64.0.4".parse().unwrap()],
            prefixes: vec![lisp_wire::EidPrefix::new(0, "10.1.0.0".parse().unwrap(), 24).unwrap()],
        };
        for ok in ["127.0.0.1", "::1", "100.64.0.4", "10.1.0.10"] {
            assert!(c.admits(ok.parse().unwrap()), "{ok}");
        }
        for no in ["100.64.0.2", "10.1.1.10", "192.0.2.9", "198.51.100.10"] {
            assert!(!c.admits(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn resolv_conf_nameservers_leave_us_out() {
        let conf = "# generated\nsearch example\nnameserver 100.64.0.2\nnameserver 192.0.2.53\n nameserver  2001:db8::53 \nnameserver fe80::1%eth0\noptions edns0\n";
        let ours: SocketAddr = "100.64.0.2:53".parse().unwrap();
        assert_eq!(
            nameservers(conf, ours),
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn questions_go_to_the_core_and_answers_are_dns() {
        let mut dns = Dns::bind(
            "127.0.0.1:0".parse().unwrap(),
            Vec::new(),
            Clients::default(),
        )
        .unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let from = client.local_addr().unwrap();

        // An outsider is refused; garbage is counted.
        assert!(dns
            .on_datagram(
                &question("a.lispwg.internal.", RecordType::A),
                "192.0.2.9:5".parse().unwrap()
            )
            .is_none());
        assert!(dns.on_datagram(&[1, 2, 3], from).is_none());
        assert_eq!(dns.counters.refused.load(Ordering::Relaxed), 1);
        assert_eq!(dns.counters.malformed.load(Ordering::Relaxed), 1);

        let (q, name) = dns
            .on_datagram(&question("robot-b.lispwg.internal.", RecordType::A), from)
            .unwrap();
        assert_eq!(name, "robot-b.lispwg.internal.");
        dns.answer(
            q,
            NameAnswer::Addresses {
                addrs: vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
                ttl: Duration::from_secs(540),
            },
        );
        let mut buf = [0u8; 512];
        let n = client.recv(&mut buf).unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.metadata.id, 0x4242);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1, "only the A record");
        assert_eq!(reply.answers[0].ttl, 540);
        assert_eq!(
            reply.answers[0].data,
            RData::A(A("10.0.0.2".parse().unwrap()))
        );

        let (q, _) = dns
            .on_datagram(&question("nobody.lispwg.internal.", RecordType::AAAA), from)
            .unwrap();
        dns.answer(
            q,
            NameAnswer::NoSuchName {
                ttl: Duration::from_secs(10),
            },
        );
        let n = client.recv(&mut buf).unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

        // Not ours and no upstream: SERVFAIL, counted as a failed forward.
        let (q, _) = dns
            .on_datagram(&question("example.org.", RecordType::A), from)
            .unwrap();
        dns.answer(q, NameAnswer::NotOurs);
        let n = client.recv(&mut buf).unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(dns.counters.forward_failures.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn over_tcp_questions_are_answered_and_forwarded_over_tcp() {
        // An upstream that speaks TCP only, with an answer too big for UDP.
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        let up = tokio::spawn(async move {
            let (mut conn, _) = upstream.accept().await.unwrap();
            let raw = read_framed(&mut conn).await.unwrap();
            let request = Message::from_vec(&raw).unwrap();
            let mut answer = response(&request, ResponseCode::NoError, Vec::new());
            for i in 0..60u8 {
                answer.add_answer(Record::from_rdata(
                    request.queries[0].name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
                ));
            }
            let bytes = answer.to_vec().unwrap();
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            conn.write_all(&framed).await.unwrap();
        });
        let mut dns = Dns::bind(
            "127.0.0.1:0".parse().unwrap(),
            vec![up_addr],
            Clients::default(),
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let server = serve_tcp(listener, Clients::default(), dns.counters.clone(), tx).unwrap();

        let mut client = TcpStream::connect(at).await.unwrap();
        for (id, name) in [(1u16, "robot-b.lispwg.internal."), (2, "big.example.org.")] {
            let mut m = Message::query();
            m.metadata.id = id;
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            let bytes = m.to_vec().unwrap();
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            client.write_all(&framed).await.unwrap();
            // The event loop's part: the question to the core, its answer.
            let q = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .unwrap()
                .unwrap();
            let (query, asked) = dns.on_stream(q).unwrap();
            assert_eq!(asked, name);
            let answer = if id == 1 {
                NameAnswer::Addresses {
                    addrs: vec!["10.0.0.2".parse().unwrap()],
                    ttl: Duration::from_secs(60),
                }
            } else {
                NameAnswer::NotOurs
            };
            dns.answer(query, answer);
            let reply = tokio::time::timeout(Duration::from_secs(3), read_framed(&mut client))
                .await
                .unwrap()
                .unwrap();
            let reply = Message::from_vec(&reply).unwrap();
            assert_eq!(reply.metadata.id, id);
            let want = if id == 1 { 1 } else { 60 };
            assert_eq!(reply.answers.len(), want, "over TCP, whole");
        }
        up.await.unwrap();
        assert_eq!(dns.counters.forwarded.load(Ordering::Relaxed), 1);
        server.abort();
    }

    #[tokio::test]
    async fn names_that_are_not_ours_are_forwarded_and_the_answer_relayed() {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        let mut dns = Dns::bind(
            "127.0.0.1:0".parse().unwrap(),
            vec![up_addr],
            Clients::default(),
        )
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let from = client.local_addr().unwrap();
        let raw = question("example.org.", RecordType::A);
        let (q, _) = dns.on_datagram(&raw, from).unwrap();
        dns.answer(q, NameAnswer::NotOurs);

        // The upstream gets the question byte for byte, and answers it.
        let mut buf = [0u8; 512];
        let (n, asker) = tokio::time::timeout(Duration::from_secs(2), upstream.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &raw[..]);
        let request = Message::from_vec(&buf[..n]).unwrap();
        let mut answer = response(&request, ResponseCode::NoError, Vec::new());
        answer.add_answer(Record::from_rdata(
            request.queries[0].name().clone(),
            60,
            RData::A(A("192.0.2.80".parse().unwrap())),
        ));
        upstream
            .send_to(&answer.to_vec().unwrap(), asker)
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let got = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(
            got.answers[0].data,
            RData::A(A("192.0.2.80".parse().unwrap()))
        );
        assert_eq!(dns.counters.forwarded.load(Ordering::Relaxed), 1);
    }
}
