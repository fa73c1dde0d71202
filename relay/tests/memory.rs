//! Two allocations on an in-memory TURN server (turn-server-proto, the same
//! family as the client): allocate, permit, relay both ways between the
//! relayed addresses, the self-check, over UDP and over a TCP stream cut
//! at random places. No sockets, fake time.

use relay::{probe, Allocation, Event, SendError, Transport};
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use turn_server_proto::api::{TurnServerApi, TurnServerPollRet};
use turn_server_proto::server::TurnServer;
use turn_server_proto::types::prelude::DelayedTransmitBuild;
use turn_server_proto::types::transmit::TransmitBuild;
use turn_server_proto::types::Instant as TurnInstant;
use turn_server_proto::types::TransportType;

const SERVER: &str = "192.0.2.10:3478";

struct Node {
    local: SocketAddr,
    alloc: Allocation,
    got: Vec<(SocketAddr, Vec<u8>)>,
}

struct Lab {
    server: TurnServer,
    transport: Transport,
    nodes: Vec<Node>,
    start: Instant,
    now: Instant,
    next_port: u16,
    /// Datagrams relayed to relayed addresses: fed back into the server.
    loopback: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Cut stream chunks at this many bytes (TCP).
    chunk: usize,
}

fn t(lab: &Lab) -> TurnInstant {
    TurnInstant::from_nanos(lab.now.duration_since(lab.start).as_nanos() as i64)
}

impl Lab {
    fn new(transport: Transport, chunk: usize) -> Lab {
        let wire = if transport == Transport::Udp {
            TransportType::Udp
        } else {
            TransportType::Tcp
        };
        let mut server = TurnServer::new(wire, SERVER.parse().unwrap(), "lispwg.lab".into());
        server.add_user("1:robot".into(), "pw".into());
        let now = Instant::now();
        Lab {
            server,
            transport,
            nodes: Vec::new(),
            start: now,
            now,
            next_port: 40000,
            loopback: VecDeque::new(),
            chunk,
        }
    }

    fn add(&mut self, ip: &str) -> usize {
        self.next_port += 1;
        let local = SocketAddr::new(ip.parse().unwrap(), self.next_port);
        let alloc = Allocation::new(
            self.transport,
            local,
            SERVER.parse().unwrap(),
            "1:robot",
            "pw",
            self.now,
        );
        self.nodes.push(Node {
            local,
            alloc,
            got: Vec::new(),
        });
        self.nodes.len() - 1
    }

    fn wire(&self) -> TransportType {
        self.server.transport()
    }

    /// Client bytes to the server; what the server answers goes on.
    fn send_to_server(&mut self, from: SocketAddr, bytes: Vec<u8>) {
        let chunks: Vec<Vec<u8>> = if self.transport.is_stream() {
            bytes.chunks(self.chunk).map(<[u8]>::to_vec).collect()
        } else {
            vec![bytes]
        };
        for c in chunks {
            let tx = turn_server_proto::stun::agent::Transmit::new(
                c,
                self.wire(),
                from,
                SERVER.parse().unwrap(),
            );
            let now = t(self);
            if let Some(out) = self.server.recv(tx, now) {
                self.route(out);
            }
        }
    }

    fn route<T: DelayedTransmitBuild + std::fmt::Debug>(&mut self, out: TransmitBuild<T>) {
        let (to, from) = (out.to, out.from);
        let data = out.data.build();
        self.deliver(from, to, data);
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        if let Some(i) = self.nodes.iter().position(|n| n.local == to) {
            let now = self.now;
            let n = &mut self.nodes[i];
            let mut got = Vec::new();
            n.alloc
                .recv(&data, now, &mut |p, d| got.push((p, d.to_vec())));
            n.got.extend(got);
        } else {
            // To a relayed address (ours): it arrives at the server's relay
            // socket, from `from`.
            self.loopback.push_back((from, to, data));
        }
    }

    /// Runs everything until quiet.
    fn settle(&mut self) {
        for _ in 0..200 {
            let mut busy = false;
            let now = t(self);
            while let TurnServerPollRet::AllocateSocket {
                transport,
                listen_addr,
                client_addr,
                allocation_transport,
                family,
            } = self.server.poll(now)
            {
                self.next_port += 1;
                let relayed =
                    SocketAddr::new(SERVER.parse::<SocketAddr>().unwrap().ip(), self.next_port);
                self.server.allocated_socket(
                    transport,
                    listen_addr,
                    client_addr,
                    allocation_transport,
                    family,
                    Ok(relayed),
                    now,
                );
                busy = true;
            }
            while let Some(tx) = self.server.poll_transmit(now) {
                busy = true;
                self.deliver(tx.from, tx.to, tx.data);
            }
            while let Some((from, to, data)) = self.loopback.pop_front() {
                busy = true;
                let tx = turn_server_proto::stun::agent::Transmit::new(
                    data,
                    TransportType::Udp,
                    from,
                    to,
                );
                if let Some(out) = self.server.recv(tx, now) {
                    self.route(out);
                }
            }
            for i in 0..self.nodes.len() {
                let now = self.now;
                self.nodes[i].alloc.poll(now);
                while let Some(b) = self.nodes[i].alloc.poll_transmit(now) {
                    busy = true;
                    let from = self.nodes[i].local;
                    self.send_to_server(from, b);
                }
            }
            if !busy {
                return;
            }
        }
        panic!("the lab never settled");
    }

    /// Lets `d` pass in 10 ms steps (the client paces its requests).
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(10);
            self.settle();
        }
    }

    fn events(&mut self, i: usize) -> Vec<Event> {
        std::iter::from_fn(|| self.nodes[i].alloc.poll_event()).collect()
    }

    fn send(&mut self, i: usize, to: SocketAddr, payload: &[u8]) -> Result<usize, SendError> {
        let mut out = vec![0u8; payload.len() + relay::allocation::MAX_OVERHEAD];
        let now = self.now;
        let n = self.nodes[i].alloc.send(to, payload, now, &mut out)?;
        let from = self.nodes[i].local;
        self.send_to_server(from, out[..n].to_vec());
        self.settle();
        Ok(n)
    }
}

fn pair(transport: Transport, chunk: usize) {
    let mut lab = Lab::new(transport, chunk);
    let a = lab.add("198.51.100.7");
    let b = lab.add("203.0.113.9");
    lab.advance(Duration::from_millis(500));
    let ra = match lab.events(a).as_slice() {
        [Event::Allocated { relayed }] => *relayed,
        other => panic!("A: {other:?}"),
    };
    let rb = lab.nodes[b].alloc.relayed().expect("B allocated");
    assert_ne!(ra, rb);
    // The relay's own address is permitted by itself (relayed peers all
    // come from it); anything else only once asked for.
    let direct: SocketAddr = "203.0.113.50:51820".parse().unwrap();
    assert_eq!(
        lab.send(a, direct, b"early"),
        Err(SendError::NoPermission),
        "nothing goes out before its permission"
    );
    let now = lab.now;
    lab.nodes[a]
        .alloc
        .set_permissions(&BTreeSet::from([direct.ip()]), now);
    lab.advance(Duration::from_millis(500));
    assert!(lab.send(a, direct, b"now").is_ok());
    // Sizes not a multiple of 4 cross a stream padded (RFC 8656 §12.5), as
    // coturn does. turn-server-proto 0.7.3 neither pads nor skips padding
    // over TCP (the client crate's bug, see framing.rs), so against it a
    // stream only carries multiples of 4; framing.rs tests the padding.
    let sizes: &[usize] = if transport.is_stream() {
        &[148, 92, 32, 1420]
    } else {
        &[148, 5, 92, 1, 1420]
    };
    for (k, &len) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..len).map(|x| (x + k) as u8).collect();
        lab.send(a, rb, &payload).unwrap();
        assert_eq!(
            lab.nodes[b].got.pop(),
            Some((ra, payload.clone())),
            "A to B, {len} bytes"
        );
        lab.send(b, ra, &payload).unwrap();
        assert_eq!(
            lab.nodes[a].got.pop(),
            Some((rb, payload)),
            "B to A, {len} bytes"
        );
    }
    // The self-check comes back from our own relayed address.
    lab.send(a, ra, &probe::encode(7)).unwrap();
    let (from, data) = lab.nodes[a].got.pop().expect("self-check answered");
    assert_eq!((from, probe::decode(&data)), (ra, Some(7)));
    // Time passes: refreshes keep everything alive.
    for _ in 0..12 {
        lab.advance(Duration::from_secs(60));
    }
    lab.send(a, rb, b"later!!!").unwrap();
    assert_eq!(lab.nodes[b].got.pop(), Some((ra, b"later!!!".to_vec())));
    assert!(lab
        .events(a)
        .iter()
        .all(|e| !matches!(e, Event::Lost { .. })));
}

#[test]
fn two_allocations_relay_to_each_other_over_udp() {
    pair(Transport::Udp, usize::MAX);
}

#[test]
fn two_allocations_relay_to_each_other_over_a_tcp_stream_cut_anywhere() {
    for chunk in [1, 3, 7, 64, 4096] {
        pair(Transport::Tcp, chunk);
    }
}

#[test]
fn wrong_credentials_lose_the_allocation() {
    let mut lab = Lab::new(Transport::Udp, usize::MAX);
    let i = lab.add("198.51.100.7");
    lab.nodes[i].alloc = Allocation::new(
        Transport::Udp,
        lab.nodes[i].local,
        SERVER.parse().unwrap(),
        "1:robot",
        "wrong",
        lab.now,
    );
    lab.advance(Duration::from_secs(40));
    assert!(lab.nodes[i].alloc.is_lost());
    assert!(matches!(lab.events(i).as_slice(), [Event::Lost { .. }]));
}
