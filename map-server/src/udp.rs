//! Batched UDP for the shell: up to [`BATCH`] datagrams per system call each
//! way (recvmmsg / sendmmsg, through nix), on the shell's tokio sockets.
//!
//! At a few requests outstanding the system calls, not the protocol work,
//! are most of what a map-server spends per request; one call per batch
//! instead of one per datagram is what lets it answer as fast as it reads.

use map_server_core::{Transmit, Via};
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
    /// waiting: how many, and whether that emptied the socket (fewer than a
    /// batch came). `WouldBlock` when nothing was queued. Either way tokio is
    /// told to wait for the socket to turn readable again once it is empty,
    /// so that a short batch needs no second call just to hear `EAGAIN`:
    /// tokio's epoll is edge-triggered, and any datagram that arrives after
    /// this call makes it readable again. Truncated datagrams (larger than
    /// any UDP payload: impossible) and ones without a source are dropped.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<(usize, bool)> {
        let fd = sock.as_raw_fd();
        let (bufs, headers, got) = (&mut self.bufs, &mut self.headers, &mut self.got);
        got.clear();
        let mut emptied = false;
        let r = sock.try_io(Interest::READABLE, || {
            let mut slots = bufs.chunks_exact_mut(SLOT);
            let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
            let results = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
                .map_err(io::Error::from)?;
            let mut n = 0;
            for (slot, r) in results.enumerate() {
                n += 1;
                if r.flags.contains(MsgFlags::MSG_TRUNC) {
                    continue;
                }
                if let Some(from) = r.address.as_ref().and_then(socket_addr) {
                    got.push((from, slot, r.bytes));
                }
            }
            if n < BATCH {
                emptied = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match r {
            Ok(()) => Ok((self.got.len(), false)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && emptied => {
                Ok((self.got.len(), true))
            }
            Err(e) => Err(e),
        }
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
    /// Sends the transmits of `out` that leave by `via` from `sock`, as
    /// many per system call as fit in a batch; waits while the socket's
    /// buffer is full. Returns the errors of the datagrams that could not be
    /// sent (each is skipped: UDP is fire-and-forget, the protocols
    /// retransmit).
    pub async fn send(
        &mut self,
        sock: &UdpSocket,
        out: &[Transmit],
        via: Via,
    ) -> Vec<(SocketAddr, io::Error)> {
        let fd = sock.as_raw_fd();
        let mut failed = Vec::new();
        let mut items = out.iter().filter(|t| t.via == via).peekable();
        let mut iovs: [[IoSlice<'_>; 1]; BATCH] = [[IoSlice::new(&[])]; BATCH];
        let mut addrs: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
        let (mut k, mut done) = (0, 0);
        while items.peek().is_some() || done < k {
            // Refill the batch with what is left.
            if done == k {
                (k, done) = (0, 0);
                while k < BATCH {
                    let Some(t) = items.next() else { break };
                    iovs[k] = [IoSlice::new(&t.payload)];
                    addrs[k] = Some(SockaddrStorage::from(t.dst));
                    k += 1;
                }
            }
            let headers = &mut self.headers;
            let (iov, to) = (&iovs[done..k], &addrs[done..k]);
            let sent = sock.try_io(Interest::WRITABLE, || {
                sendmmsg(fd, headers, iov.iter(), to, [], MsgFlags::empty())
                    .map(|r| r.count())
                    .map_err(io::Error::from)
            });
            let dst = || {
                addrs[done]
                    .as_ref()
                    .and_then(socket_addr)
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
            };
            match sent {
                Ok(0) => {
                    // Nothing went: take it as a failure of the first.
                    failed.push((dst(), io::Error::other("sendmmsg sent nothing")));
                    done += 1;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = sock.writable().await {
                        // The socket itself is broken: nothing more goes.
                        let left = (done..k).map(|i| addrs[i]).collect::<Vec<_>>();
                        let rest = items.map(|t| Some(SockaddrStorage::from(t.dst)));
                        failed.extend(left.into_iter().chain(rest).map(|a| {
                            let d = a.as_ref().and_then(socket_addr);
                            (
                                d.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                                io::Error::new(e.kind(), e.to_string()),
                            )
                        }));
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The first datagram of the batch failed (an unreachable
                // destination, a refused port): skip it, send the rest.
                Err(e) => {
                    failed.push((dst(), e));
                    done += 1;
                }
            }
        }
        failed
    }
}
