//! A small ICMP echo sender on a raw socket, with send and receive instants
//! on the bench's own monotonic clock (so they line up with the instants of
//! the moves it makes). Used by first-packet (fast pings to a fresh peer) and
//! handover (pings every 10 ms across moves).

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 56;

/// One echo request and, if it came, its reply.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub seq: u16,
    pub sent: Instant,
    pub replied: Option<Instant>,
}

/// A raw ICMP socket, created inside the namespace it must send from.
pub struct Pinger {
    sock: Socket,
    id: u16,
    dst: Ipv4Addr,
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Pinger {
    /// Must be called on a thread inside the sending namespace.
    pub fn new(dst: Ipv4Addr) -> Result<Pinger> {
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .context("raw ICMP socket (needs root)")?;
        let id = rand::random::<u16>();
        Ok(Pinger { sock, id, dst })
    }

    fn send(&self, seq: u16) -> Result<()> {
        let mut pkt = [0u8; 8 + PAYLOAD];
        pkt[0] = 8; // echo request
        pkt[4..6].copy_from_slice(&self.id.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in pkt[8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let sum = checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        let to = SockAddr::from(SocketAddrV4::new(self.dst, 0));
        self.sock
            .send_to(&pkt, &to)
            .with_context(|| format!("send ICMP echo to {}", self.dst))?;
        Ok(())
    }

    /// Waits up to `timeout` for one of our echo replies; returns its seq.
    fn recv(&self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_micros(100))))
                .ok()?;
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(_) => return None,
            };
            // SAFETY: recv initialised the first n bytes.
            let data: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
            if data.len() < 20 {
                continue;
            }
            let ihl = (data[0] & 0x0f) as usize * 4;
            let src = Ipv4Addr::new(data[12], data[13], data[14], data[15]);
            let Some(icmp) = data.get(ihl..) else {
                continue;
            };
            if icmp.len() < 8 || src != self.dst || icmp[0] != 0 {
                continue;
            }
            if u16::from_be_bytes([icmp[4], icmp[5]]) != self.id {
                continue;
            }
            return Some(u16::from_be_bytes([icmp[6], icmp[7]]));
        }
    }

    /// Sends an echo request every `interval` until `stop(probes)` says so
    /// (checked after each event) or `limit` passes, then waits `grace` for
    /// late replies. Bounded: at most 65 536 probes.
    pub fn run(
        &self,
        interval: Duration,
        limit: Duration,
        grace: Duration,
        mut stop: impl FnMut(&[Probe]) -> bool,
    ) -> Result<Vec<Probe>> {
        let start = Instant::now();
        let mut probes: Vec<Probe> = Vec::new();
        let mut next = start;
        loop {
            let now = Instant::now();
            if now >= next {
                if probes.len() > u16::MAX as usize {
                    break;
                }
                let seq = probes.len() as u16;
                let sent = Instant::now();
                self.send(seq)?;
                probes.push(Probe {
                    seq,
                    sent,
                    replied: None,
                });
                next += interval;
                if next < now {
                    next = now + interval;
                }
            }
            let wait = next.saturating_duration_since(Instant::now());
            if let Some(seq) = self.recv(wait) {
                let at = Instant::now();
                if let Some(p) = probes.get_mut(seq as usize) {
                    p.replied.get_or_insert(at);
                }
            }
            if stop(&probes) || start.elapsed() >= limit {
                break;
            }
        }
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Some(seq) = self.recv(end.saturating_duration_since(Instant::now())) {
                let at = Instant::now();
                if let Some(p) = probes.get_mut(seq as usize) {
                    p.replied.get_or_insert(at);
                }
            }
        }
        Ok(probes)
    }

    /// Like [`Pinger::run`], until `stop_flag` is set (bounded by `limit`).
    pub fn run_until(
        &self,
        interval: Duration,
        limit: Duration,
        grace: Duration,
        stop_flag: Arc<AtomicBool>,
    ) -> Result<Vec<Probe>> {
        self.run(interval, limit, grace, |_| {
            stop_flag.load(Ordering::Relaxed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::checksum;

    #[test]
    fn checksum_of_a_known_echo_request() {
        // type 8, code 0, checksum 0, id 0x1234, seq 1, no payload.
        let pkt = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
        let sum = checksum(&pkt);
        let mut with = pkt;
        with[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&with), 0);
        assert_eq!(sum, !(0x0800u16 + 0x1234 + 1));
    }
}
