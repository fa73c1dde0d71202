//! Miss capture: a TUN routed for the whole overlay EID space (at lower
//! priority than per-peer routes) catches the first packet to an EID with no
//! peer yet; once the peer and its route exist, the held packet is re-injected.
//!
//! Writing a packet back into the TUN drops it (the kernel treats it as
//! received from outside, with a local source). Sending it through a raw
//! socket with the header included makes the kernel route it again as locally
//! originated, which is what we want.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{unix::AsyncFd, Interest};

use crate::error::{Error, Result};

/// Largest packet a TUN read can return.
const MAX_PACKET: usize = 65_535;

/// The miss TUN. Packets routed to it arrive, one IP packet per
/// [`MissTun::recv`]. Created by [`crate::Host::create_miss_tun`], which also
/// removes it.
pub struct MissTun {
    pub(crate) device: tun_rs::AsyncDevice,
    pub(crate) name: String,
}

impl MissTun {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next packet routed to the TUN (a raw IPv4 or IPv6 packet).
    pub async fn recv(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; MAX_PACKET];
        let len = self
            .device
            .recv(&mut buf)
            .await
            .map_err(|e| Error::io(format!("read miss TUN {}", self.name), e))?;
        buf.truncate(len);
        Ok(buf)
    }

    /// Hands a packet to the host as if it arrived on the TUN: how an ICMP
    /// error about an unreachable EID reaches the local sender (or, on a
    /// router, is forwarded to the host that sent the original packet).
    pub async fn deliver(&self, packet: &[u8]) -> Result<()> {
        packet_destination(packet)?;
        self.device
            .send(packet)
            .await
            .map_err(|e| Error::io(format!("write miss TUN {}", self.name), e))?;
        Ok(())
    }
}

/// The destination address of an IP packet, or why it has none.
pub fn packet_destination(packet: &[u8]) -> Result<IpAddr> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if packet.len() < 20 || ihl < 20 || ihl > packet.len() {
                return Err(Error::InvalidPacket("truncated IPv4 header"));
            }
            let dst: [u8; 4] = packet[16..20].try_into().expect("4 bytes");
            Ok(IpAddr::V4(Ipv4Addr::from(dst)))
        }
        Some(6) => {
            if packet.len() < 40 {
                return Err(Error::InvalidPacket("truncated IPv6 header"));
            }
            let dst: [u8; 16] = packet[24..40].try_into().expect("16 bytes");
            Ok(IpAddr::V6(Ipv6Addr::from(dst)))
        }
        Some(_) => Err(Error::InvalidPacket("not an IPv4 or IPv6 packet")),
        None => Err(Error::InvalidPacket("empty packet")),
    }
}

/// Sends held packets back into the host's routing, as if just sent locally.
/// Uses raw sockets, so it acts in the namespace where it was created.
pub struct Reinjector {
    v4: AsyncFd<Socket>,
    /// `None` when the host has IPv6 disabled.
    v6: Option<AsyncFd<Socket>>,
}

impl Reinjector {
    /// Opens the raw sockets. Needs CAP_NET_RAW and a tokio runtime.
    pub fn new() -> Result<Self> {
        let v4 = raw_socket(Domain::IPV4).map_err(|e| Error::io("open raw IPv4 socket", e))?;
        let v6 = match raw_socket(Domain::IPV6) {
            Ok(socket) => {
                // IPPROTO_RAW implies IPV6_HDRINCL on Linux; setting it states
                // the intent and covers kernels where it is not implied.
                set_ipv6_hdrincl(&socket);
                Some(socket)
            }
            Err(e) => {
                tracing::warn!(%e, "no raw IPv6 socket: IPv6 packets cannot be re-injected");
                None
            }
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::io(
                "register raw socket",
                io::Error::other("Reinjector::new needs a tokio runtime"),
            ));
        }
        let register = |s: Socket| {
            // SAFETY: the Socket owns its fd, keeps it open until dropped (which
            // happens only with the AsyncFd) and always returns the same fd.
            unsafe { AsyncFd::register_with_interest(s, Interest::WRITABLE) }
                .map_err(|e| Error::io("register raw socket with tokio", e.into()))
        };
        Ok(Reinjector {
            v4: register(v4)?,
            v6: v6.map(register).transpose()?,
        })
    }

    /// Re-injects one held packet (complete IP header included).
    pub async fn send(&self, packet: &[u8]) -> Result<()> {
        let dst = packet_destination(packet)?;
        let (socket, addr) = match dst {
            IpAddr::V4(a) => (&self.v4, SocketAddr::V4(SocketAddrV4::new(a, 0))),
            IpAddr::V6(a) => (
                self.v6
                    .as_ref()
                    .ok_or(Error::InvalidPacket("IPv6 is not available on this host"))?,
                SocketAddr::V6(SocketAddrV6::new(a, 0, 0, 0)),
            ),
        };
        let addr = socket2::SockAddr::from(addr);
        let sent = socket
            .async_io(Interest::WRITABLE, |s| s.send_to(packet, &addr))
            .await
            .map_err(|e| Error::io(format!("re-inject packet to {dst}"), e))?;
        tracing::debug!(%dst, bytes = sent, "held packet re-injected");
        Ok(())
    }
}

fn raw_socket(domain: Domain) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    // IPPROTO_RAW sockets are send-only, so nothing queues up unread.
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn set_ipv6_hdrincl(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid fd, and a pointer/length pair to a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_HDRINCL,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(err = %io::Error::last_os_error(), "IPV6_HDRINCL not settable (implied by IPPROTO_RAW)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_of_packets() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[10, 0, 2, 1]);
        assert_eq!(
            packet_destination(&v4).unwrap(),
            "10.0.2.1".parse::<IpAddr>().unwrap()
        );
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[39] = 1;
        assert_eq!(
            packet_destination(&v6).unwrap(),
            "::1".parse::<IpAddr>().unwrap()
        );
        for bad in [
            &[][..],
            &[0x45; 10][..],
            &[0x4f; 20][..],
            &[0x60; 39][..],
            &[0x10; 40][..],
        ] {
            assert!(matches!(
                packet_destination(bad),
                Err(Error::InvalidPacket(_))
            ));
        }
    }
}
