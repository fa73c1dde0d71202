//! Batched UDP for the shell: up to [`BATCH`] datagrams per system call each
//! way (recvmmsg / sendmmsg, through nix), on the shell's tokio sockets.
//!
//! At a few requests outstanding the system calls, not the protocol work,
//! are most of what a map-server spends per request; one call per batch
//! instead of one per datagram is what lets it answer as fast as it reads.

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call, at most.
pub const BATCH: usize = 32;
/// Room for the largest UDP payload in each slot (the pages of a slot that
/// no datagram reaches are never touched, so never resident).
const SLOT: usize = 65_535;

/// Receive buffers and headers, allocated once.
pub struct RecvBatch {
    bufs: Vec<u8>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Per datagram received: its source, slot and length.
    got: Vec<(SocketAddr, usize, usize)>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0; BATCH * SLOT],
            headers: MultiHeaders::preallocate(BATCH, None),
            got: Vec::with_capacity(BATCH),
        }
    }
}

impl RecvBatch {
    /// Takes what is queued on `sock`, up to [`BATCH`] datagrams, without
    /// waiting; `WouldBlock` when nothing is (which also tells tokio to wait
    /// for the socket to be readable again). Truncated datagrams (larger
    /// than any UDP payload: impossible) and ones without a source are
    /// dropped.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let fd = sock.as_raw_fd();
        let (bufs, headers, got) = (&mut self.bufs, &mut self.headers, &mut self.got);
        got.clear();
        sock.try_io(Interest::READABLE, || {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .chunks_exact_mut(SLOT)
                .map(|c| [IoSliceMut::new(c)])
                .collect();
            let results = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
                .map_err(io::Error::from)?;
            for (slot, r) in results.enumerate() {
                if r.flags.contains(MsgFlags::MSG_TRUNC) {
                    continue;
                }
                if let Some(from) = r.address.as_ref().and_then(socket_addr) {
                    got.push((from, slot, r.bytes));
                }
            }
            Ok(())
        })?;
        Ok(self.got.len())
    }

    /// The `i`-th datagram of the last [`RecvBatch::recv`]: its source and
    /// bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let &(from, slot, len) = self.got.get(i)?;
        let start = slot * SLOT;
        Some((from, self.bufs.get(start..start + len)?))
    }
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Send headers, allocated once.
pub struct SendBatch {
    headers: MultiHeaders<SockaddrStorage>,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            headers: MultiHeaders::preallocate(BATCH, None),
        }
    }
}

impl SendBatch {
    /// Sends `items` (payload, destination) from `sock`, as many per system
    /// call as fit in a batch; waits while the socket's buffer is full.
    /// Returns the errors of the datagrams that could not be sent (each is
    /// skipped: UDP is fire-and-forget, the protocols retransmit).
    pub async fn send(
        &mut self,
        sock: &UdpSocket,
        items: &[(&[u8], SocketAddr)],
    ) -> Vec<(SocketAddr, io::Error)> {
        let fd = sock.as_raw_fd();
        let mut failed = Vec::new();
        let mut done = 0;
        while done < items.len() {
            let chunk = &items[done..items.len().min(done + BATCH)];
            let headers = &mut self.headers;
            let sent = sock.try_io(Interest::WRITABLE, || {
                let iovs: Vec<[IoSlice<'_>; 1]> =
                    chunk.iter().map(|(p, _)| [IoSlice::new(p)]).collect();
                let addrs: Vec<Option<SockaddrStorage>> = chunk
                    .iter()
                    .map(|(_, dst)| Some(SockaddrStorage::from(*dst)))
                    .collect();
                let r = sendmmsg(fd, headers, iovs.iter(), &addrs, [], MsgFlags::empty())
                    .map_err(io::Error::from)?;
                Ok(r.count())
            });
            match sent {
                Ok(0) => {
                    // Nothing went: take it as a failure of the first.
                    failed.push((chunk[0].1, io::Error::other("sendmmsg sent nothing")));
                    done += 1;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = sock.writable().await {
                        // The socket itself is broken: nothing more goes.
                        failed.extend(
                            items[done..]
                                .iter()
                                .map(|(_, d)| (*d, io::Error::new(e.kind(), e.to_string()))),
                        );
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The first datagram of the chunk failed (an unreachable
                // destination, a refused port): skip it, send the rest.
                Err(e) => {
                    failed.push((chunk[0].1, e));
                    done += 1;
                }
            }
        }
        failed
    }
}
