//! One TURN allocation on a relay server, sans-IO: bytes and time in,
//! bytes and events out. The agent's shell owns the socket (and TLS) and
//! calls these in its loop.
//!
//! The TURN protocol itself (allocation, 401/438 challenges, refreshes of
//! the allocation, permissions and channels) is turn-client-proto's. This
//! adds what the agent needs around it:
//!
//! - stream framing for TCP and TLS (see [`crate::framing`]);
//! - a channel bound on first use for every peer we send to (ChannelData
//!   costs 4 bytes a packet, a Send indication 36 and fragments a full
//!   WireGuard packet on IPv4);
//! - the whole wanted permission set, applied to every new allocation;
//! - one verdict, [`Event::Lost`], for every way an allocation ends: a
//!   refused or timed-out Allocate (wrong credentials show up only as a
//!   timeout, ~31 s, in this crate), the client closing, or a refused
//!   permission for the relay's own address (which carries every relayed
//!   peer).

use crate::framing::{pad_for_stream, Deframer, OutOfStep};
use crate::grant::Transport;
use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, warn};
use turn_client_proto::api::{
    Transmit, TurnClientApi, TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet,
};
use turn_client_proto::prelude::DelayedTransmitBuild;
use turn_client_proto::stun::Instant as TurnInstant;
use turn_client_proto::tcp::TurnClientTcp;
use turn_client_proto::types::{TransportType, TurnCredentials};
use turn_client_proto::udp::TurnClientUdp;

turn_client_proto::impl_client!(Client, (Udp, TurnClientUdp), (Tcp, TurnClientTcp));

/// Channels per allocation (RFC 8656: 0x4000 to 0x4FFF); peers beyond get
/// Send indications.
const MAX_CHANNELS: usize = 4095;
/// Permissions kept per allocation: each is refreshed every 4 minutes.
pub const MAX_PERMISSIONS: usize = 1024;
/// Extra room a stream needs in an output buffer: ChannelData padding.
pub const STREAM_PAD: usize = 3;
/// Bytes a Send indication adds to a payload, at most (IPv6 peer).
pub const MAX_OVERHEAD: usize = 48 + STREAM_PAD;

/// What happened to the allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The relay gave us this relayed address: peers send to it.
    Allocated { relayed: SocketAddr },
    /// The allocation is gone, or never came: make a new one.
    Lost { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Allocating,
    Allocated(SocketAddr),
    Lost,
}

/// Why a datagram could not be wrapped for the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no allocation yet")]
    NotAllocated,
    #[error("no permission for the peer's address")]
    NoPermission,
    #[error("the output buffer is too small")]
    BufferTooSmall,
}

/// A TURN allocation (relayed over UDP) reached over `transport`.
#[derive(Debug)]
pub struct Allocation {
    client: Client,
    transport: Transport,
    server: SocketAddr,
    local: SocketAddr,
    /// Our clock's origin for the client's.
    base: Instant,
    deframer: Deframer,
    state: State,
    events: VecDeque<Event>,
    /// Permissions wanted, applied as soon as there is an allocation.
    wanted: BTreeSet<IpAddr>,
    /// Permissions asked for on this allocation.
    asked: BTreeSet<IpAddr>,
    /// Peers with a channel bound or being bound.
    channels: BTreeSet<SocketAddr>,
    /// The relay's own address, whose permission must hold.
    relay_ip: Option<IpAddr>,
    /// We gave the allocation back: its end is no loss.
    deleted: bool,
}

impl Allocation {
    /// Starts allocating at `server`, from our socket's `local` address.
    pub fn new(
        transport: Transport,
        local: SocketAddr,
        server: SocketAddr,
        username: &str,
        password: &str,
        now: Instant,
    ) -> Allocation {
        let mut config = TurnConfig::new(TurnCredentials::new(username, password));
        // What is relayed is always UDP (WireGuard's datagrams).
        config.set_allocation_transport(TransportType::Udp);
        let client = match transport {
            Transport::Udp => Client::Udp(TurnClientUdp::allocate(local, server, config)),
            Transport::Tcp | Transport::Tls => {
                Client::Tcp(TurnClientTcp::allocate(local, server, config))
            }
        };
        Allocation {
            client,
            transport,
            server,
            local,
            base: now,
            deframer: Deframer::default(),
            state: State::Allocating,
            events: VecDeque::new(),
            wanted: BTreeSet::new(),
            asked: BTreeSet::new(),
            channels: BTreeSet::new(),
            relay_ip: None,
            deleted: false,
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            State::Allocated(a) => Some(a),
            _ => None,
        }
    }

    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    fn turn_now(&self, now: Instant) -> TurnInstant {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        TurnInstant::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    fn std_time(&self, t: TurnInstant) -> Instant {
        self.base + Duration::from_nanos(u64::try_from(t.as_nanos()).unwrap_or(0))
    }

    fn wire_transport(&self) -> TransportType {
        match self.transport {
            Transport::Udp => TransportType::Udp,
            _ => TransportType::Tcp,
        }
    }

    fn lose(&mut self, reason: String) {
        if self.deleted {
            self.state = State::Lost;
            return;
        }
        if self.state != State::Lost {
            warn!(server = %self.server, transport = %self.transport, %reason, "relay allocation lost");
            self.state = State::Lost;
            self.events.push_back(Event::Lost { reason });
        }
    }

    /// The next message for the server (requests, refreshes), ready to
    /// write: padded for a stream.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.state == State::Lost {
            return None;
        }
        let t = self.turn_now(now);
        let tx = self.client.poll_transmit(t)?;
        let mut data = tx.data.to_vec();
        if self.transport.is_stream() {
            let len = data.len();
            data.resize(len + STREAM_PAD, 0);
            let n = pad_for_stream(&mut data, len);
            data.truncate(n);
        }
        Some(data)
    }

    /// Runs the client's timers; the instant it wants to be called again.
    /// Call [`Allocation::poll_transmit`] and [`Allocation::poll_event`]
    /// after it.
    pub fn poll(&mut self, now: Instant) -> Option<Instant> {
        if self.state == State::Lost {
            return None;
        }
        let t = self.turn_now(now);
        let ret = self.client.poll(t);
        self.take_events(now);
        match ret {
            TurnPollRet::WaitUntil(w) => Some(self.std_time(w).max(now)),
            TurnPollRet::Closed => {
                self.lose(match self.state {
                    State::Allocating => {
                        "no allocation: the relay refused or did not answer (wrong credentials, or unreachable)".into()
                    }
                    _ => "the TURN client closed".into(),
                });
                None
            }
            // TCP allocations toward peers: we never ask for them.
            _ => Some(now + Duration::from_millis(50)),
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn take_events(&mut self, now: Instant) {
        while let Some(ev) = self.client.poll_event() {
            match ev {
                TurnEvent::AllocationCreated(_, relayed) if self.state == State::Allocating => {
                    debug!(%relayed, server = %self.server, "relay allocation created");
                    self.state = State::Allocated(relayed);
                    self.relay_ip = Some(relayed.ip());
                    self.events.push_back(Event::Allocated { relayed });
                    self.apply_permissions(now);
                }
                TurnEvent::AllocationCreateFailed(family) => {
                    self.lose(format!("the relay refused an allocation ({family:?})"));
                }
                TurnEvent::PermissionCreateFailed(_, ip) => {
                    self.asked.remove(&ip);
                    if Some(ip) == self.relay_ip {
                        // Lost allocations show up here first (437).
                        self.lose(format!(
                            "permission for the relay's own address {ip} refused"
                        ));
                    } else {
                        debug!(%ip, "relay refused a permission");
                    }
                }
                TurnEvent::ChannelCreateFailed(_, peer) => {
                    self.channels.remove(&peer);
                    debug!(%peer, "relay refused a channel; using Send indications");
                }
                _ => {}
            }
        }
    }

    /// Bytes from the server: one datagram over UDP, any chunk of the
    /// stream over TCP or TLS. Every datagram a peer sent us is handed to
    /// `deliver(peer, data)`. An out-of-step stream loses the allocation.
    pub fn recv(&mut self, bytes: &[u8], now: Instant, deliver: &mut dyn FnMut(SocketAddr, &[u8])) {
        if self.state == State::Lost {
            return;
        }
        if !self.transport.is_stream() {
            self.recv_message(bytes, now, deliver);
        } else {
            self.deframer.push(bytes);
            loop {
                // The deframer lends the message: copy it out of the
                // borrow only for the call (messages are small).
                let m = match self.deframer.next_message() {
                    Ok(Some(m)) => m.to_vec(),
                    Ok(None) => break,
                    Err(OutOfStep(b)) => {
                        self.lose(format!("the TURN stream is out of step (byte {b:#04x})"));
                        return;
                    }
                };
                self.recv_message(&m, now, deliver);
            }
        }
        self.take_events(now);
    }

    fn recv_message(&mut self, m: &[u8], now: Instant, deliver: &mut dyn FnMut(SocketAddr, &[u8])) {
        let t = self.turn_now(now);
        let tx = Transmit::new(m, self.wire_transport(), self.server, self.local);
        match self.client.recv(tx, t) {
            TurnRecvRet::PeerData(d) => deliver(d.peer, d.data()),
            TurnRecvRet::PeerIcmp {
                peer, icmp_type, ..
            } => {
                debug!(%peer, icmp_type, "ICMP from a relayed peer");
            }
            TurnRecvRet::Handled | TurnRecvRet::Ignored(_) => {}
        }
        while let Some(d) = self.client.poll_recv(t) {
            deliver(d.peer, d.data());
        }
    }

    /// Wraps `payload` for `peer` into `out`: ChannelData once its channel
    /// is bound (asked for on first use), a Send indication until then.
    /// Returns the bytes to write.
    pub fn send(
        &mut self,
        peer: SocketAddr,
        payload: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, SendError> {
        if self.relayed().is_none() {
            return Err(SendError::NotAllocated);
        }
        let t = self.turn_now(now);
        if !self.channels.contains(&peer)
            && self.channels.len() < MAX_CHANNELS
            && self.client.have_permission(TransportType::Udp, peer.ip())
        {
            match self.client.bind_channel(TransportType::Udp, peer, t) {
                Ok(()) => {
                    self.channels.insert(peer);
                }
                Err(e) => debug!(%peer, error = %e, "cannot bind a channel"),
            }
        }
        let built = match self.client.send_to(TransportType::Udp, peer, payload, t) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(0),
            Err(turn_client_proto::api::SendError::NoPermission) => {
                return Err(SendError::NoPermission)
            }
            Err(_) => return Err(SendError::NotAllocated),
        };
        let len = built.data.len();
        let stream = self.transport.is_stream();
        if out.len() < len + if stream { STREAM_PAD } else { 0 } {
            return Err(SendError::BufferTooSmall);
        }
        let n = built.write_into(&mut out[..len]).data.len();
        Ok(if stream { pad_for_stream(out, n) } else { n })
    }

    /// The addresses peers may send to us from (TURN permissions are per
    /// IP address): the whole set wanted now. Kept across a re-allocation
    /// by the caller passing it again.
    pub fn set_permissions(&mut self, ips: &BTreeSet<IpAddr>, now: Instant) {
        self.wanted = ips.iter().copied().take(MAX_PERMISSIONS).collect();
        self.apply_permissions(now);
    }

    fn apply_permissions(&mut self, now: Instant) {
        if self.relayed().is_none() {
            return;
        }
        let t = self.turn_now(now);
        let mut want: Vec<IpAddr> = self.wanted.iter().copied().collect();
        // Our relay's own address first: every relayed peer comes from it.
        if let Some(r) = self.relay_ip {
            want.insert(0, r);
        }
        for ip in want {
            if self.asked.contains(&ip) || self.asked.len() >= MAX_PERMISSIONS {
                continue;
            }
            match self.client.create_permission(TransportType::Udp, ip, t) {
                Ok(()) | Err(turn_client_proto::api::CreatePermissionError::AlreadyExists) => {
                    self.asked.insert(ip);
                }
                Err(e) => debug!(%ip, error = %e, "cannot ask for a permission"),
            }
        }
    }

    /// Gives the allocation back (a Refresh with lifetime 0); keep driving
    /// the allocation briefly so the request goes out.
    pub fn delete(&mut self, now: Instant) {
        if self.relayed().is_some() {
            let t = self.turn_now(now);
            let _ = self.client.delete(t);
        }
        self.deleted = true;
    }
}
