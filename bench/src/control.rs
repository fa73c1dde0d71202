//! A LISP control-plane client for the lab, speaking to the map-server
//! through a node's WireGuard control tunnel as its agent would: one
//! lookup at a time with an agent's retransmissions, or a flood. Shared by
//! the abuse tests and `bench flood`.

use anyhow::{Context, Result};
use lisp_wire::{Address, EidPrefix, MapRequest, LISP_CONTROL_PORT};
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use testbed::Lab;

/// Node `name`'s control address.
pub fn control(lab: &Lab, name: &str) -> Result<Ipv4Addr> {
    lab.spec()
        .node(name)
        .and_then(|n| n.control())
        .with_context(|| format!("{name} has no control address"))
}

/// An encapsulated Map-Request from `ctl` for `targets` (its reply comes
/// back to `port`), to the map-server at `ms`.
pub fn request(
    ctl: Ipv4Addr,
    port: u16,
    ms: Ipv4Addr,
    nonce: u64,
    targets: &[EidPrefix],
) -> Result<Vec<u8>> {
    let source = Address::from(IpAddr::V4(ctl));
    let for_eid = |t: EidPrefix| MapRequest::for_eid(nonce, source.clone(), IpAddr::V4(ctl), t);
    let first = targets.first().context("a request needs a target")?;
    let mut req = for_eid(*first);
    req.records = targets
        .iter()
        .map(|t| for_eid(*t).records[0].clone())
        .collect();
    Ok(req
        .encapsulated(IpAddr::V4(ctl), port, IpAddr::V4(ms))
        .encode()?)
}

/// In `name`'s namespace, from its control address to the map-server's
/// (node `ms`): sends `bytes(i, our port)` as fast as it can for `secs`.
/// Joins to how many went out. Bounded: `secs`, and 10 M datagrams.
pub fn flood(
    lab: &Lab,
    name: &str,
    secs: f64,
    bytes: impl Fn(u64, u16) -> Vec<u8> + Send + 'static,
) -> Result<JoinHandle<Result<u64>>> {
    let ctl = control(lab, name)?;
    let ms = control(lab, "ms")?;
    lab.ns(name).spawn_thread(move || {
        let sock = UdpSocket::bind((ctl, 0))?;
        let port = sock.local_addr()?.port();
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        while Instant::now() < until && sent < 10_000_000 {
            for _ in 0..64 {
                let _ = sock.send_to(&bytes(sent, port), (ms, LISP_CONTROL_PORT));
                sent += 1;
            }
        }
        Ok(sent)
    })
}

/// What [`lookups`] saw.
#[derive(Debug, Clone, Default)]
pub struct Lookups {
    pub asked: u64,
    pub answered: u64,
    /// Answered at the first attempt.
    pub first: u64,
    /// Per answered lookup, ms from its first attempt to the answer.
    pub latencies_ms: Vec<f64>,
}

impl Lookups {
    pub fn worst_ms(&self) -> f64 {
        self.latencies_ms.iter().copied().fold(0.0, f64::max)
    }
}

/// From `name`'s control address, `n` lookups of `target` one at a time,
/// `gap` apart, each sent up to 3 times 300 ms apart as an agent
/// retransmits.
pub fn lookups(lab: &Lab, name: &str, target: EidPrefix, n: u64, gap: Duration) -> Result<Lookups> {
    let ctl = control(lab, name)?;
    let ms = control(lab, "ms")?;
    lab.ns(name)
        .spawn_thread(move || {
            let sock = UdpSocket::bind((ctl, 0))?;
            sock.set_read_timeout(Some(Duration::from_millis(300)))?;
            let port = sock.local_addr()?.port();
            let mut out = Lookups {
                asked: n,
                ..Lookups::default()
            };
            let mut buf = [0u8; 2048];
            for i in 0..n {
                let t0 = Instant::now();
                let nonce = 0x5000_0000 + i;
                'attempts: for attempt in 0..3 {
                    sock.send_to(
                        &request(ctl, port, ms, nonce, &[target])?,
                        (ms, LISP_CONTROL_PORT),
                    )?;
                    // Skips late answers to earlier requests.
                    while let Ok((len, _)) = sock.recv_from(&mut buf) {
                        if let Ok(lisp_wire::Message::MapReply(r)) = lisp_wire::parse(&buf[..len]) {
                            if r.nonce == nonce {
                                out.answered += 1;
                                out.first += u64::from(attempt == 0);
                                out.latencies_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                                break 'attempts;
                            }
                        }
                    }
                }
                std::thread::sleep(gap);
            }
            Ok(out)
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the lookup thread panicked"))?
}
