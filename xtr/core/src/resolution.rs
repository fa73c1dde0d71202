//! Resolution: a packet to an EID with no peer is held, the EID is asked of
//! every map-server (retransmitted with backoff), and the first valid
//! Map-Reply installs the mapping. Held packets then wait for the data
//! plane (see [`crate::dataplane`]) and are re-injected, or answered with
//! ICMP unreachable when nobody has the EID.

use crate::counters::Counters;
use crate::io::{Output, Refusal};
use crate::packet;
use crate::peers::Learned;
use crate::policy::XtrPolicy;
use crate::Xtr;
use lisp_wire::{EidPrefix, MapReply, MapRequest, LISP_CONTROL_PORT};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use tracing::{debug, warn};

#[derive(Debug)]
pub(crate) struct Pending {
    nonce: u64,
    source: EidPrefix,
    held: Vec<Vec<u8>>,
    held_bytes: usize,
    retransmits: u32,
    /// When the first request went out: its round trip, if answered before
    /// a retransmission, samples srtt.
    sent_at: Instant,
    pub(crate) next: Instant,
    /// When the miss that started this resolution was read (`None` for a
    /// background refresh): for the cache-add metric.
    missed_at: Option<Instant>,
}

/// A pair no path joined is tried again on demand, at most this often.
const FAILED_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

fn hold(counters: &mut Counters, policy: &XtrPolicy, p: &mut Pending, packet: Vec<u8>) {
    if p.held.len() >= policy.held_packets_per_eid
        || p.held_bytes + packet.len() > policy.held_bytes_per_eid
    {
        counters.dropped_packets += 1;
        return;
    }
    counters.held_packets += 1;
    p.held_bytes += packet.len();
    p.held.push(packet);
}

impl Xtr {
    /// A packet captured by the miss TUN: a destination with no peer yet.
    pub fn handle_miss(&mut self, now: Instant, packet: Vec<u8>) {
        self.miss(now, packet);
        self.flush_dataplane(now);
    }

    fn miss(&mut self, now: Instant, packet: Vec<u8>) {
        let Some((src, dst)) = packet::addresses(&packet) else {
            self.counters.dropped_packets += 1;
            return;
        };
        let iid = self.policy.iid();
        if self.policy.eids.iter().any(|e| e.contains_addr(iid, dst)) {
            self.counters.dropped_packets += 1;
            return;
        }
        match self.cache_lookup(iid, dst) {
            Some((prefix, true, _)) => {
                if let Some(since) = self.failed_since(&prefix) {
                    // No path reached the peer. Try again (resolving
                    // afresh: it may have moved) at most every
                    // FAILED_RETRY; meanwhile answer at once.
                    if now.saturating_duration_since(since) >= FAILED_RETRY
                        && !self.pending.contains_key(&dst)
                    {
                        if let Some(source) = self.policy.eids.first().copied() {
                            self.start_request(now, dst, source, Some(packet));
                        }
                    } else if !self.pending.contains_key(&dst) {
                        self.icmp_unreachable(&packet);
                    } else if let Some(p) = self.pending.get_mut(&dst) {
                        hold(&mut self.counters, &self.policy, p, packet);
                    }
                } else if self.dataplane.ready(&prefix) {
                    // The peer exists; the packet raced its route. Send it again.
                    self.counters.reinjected_packets += 1;
                    self.outputs.push_back(Output::Reinject(packet));
                } else {
                    // Its peer or route is still being programmed, or the
                    // peer's first handshake is awaited: then look at once.
                    self.counters.held_packets += 1;
                    if self.awaiting_handshake(&prefix) {
                        self.stats_now = Some(now);
                    }
                    self.dataplane.hold_for(now, prefix, vec![packet], None);
                }
                return;
            }
            Some((_, false, expires)) if expires > now => {
                self.icmp_unreachable(&packet);
                return;
            }
            _ => {}
        }
        if let Some(p) = self.pending.get_mut(&dst) {
            hold(&mut self.counters, &self.policy, p, packet);
            return;
        }
        if self.pending.len() >= self.policy.max_pending {
            self.counters.dropped_packets += 1;
            return;
        }
        self.counters.misses += 1;
        let source = self
            .policy
            .eids
            .iter()
            .find(|e| e.contains_addr(iid, src))
            .or(self.policy.eids.first())
            .copied();
        let Some(source) = source else { return };
        debug!(eid = %dst, "map-cache miss; resolving");
        self.start_request(now, dst, source, Some(packet));
    }

    pub(crate) fn start_request(
        &mut self,
        now: Instant,
        dst: IpAddr,
        source: EidPrefix,
        packet: Option<Vec<u8>>,
    ) {
        let nonce = self.nonces.next_nonce();
        let mut p = Pending {
            nonce,
            source,
            held: Vec::new(),
            held_bytes: 0,
            retransmits: 0,
            sent_at: now,
            next: now + self.policy.request_timeout,
            missed_at: packet.is_some().then_some(now),
        };
        if let Some(packet) = packet {
            hold(&mut self.counters, &self.policy, &mut p, packet);
        }
        self.pending.insert(dst, p);
        self.by_nonce.insert(nonce, dst);
        self.send_request(now, dst, nonce, source);
    }

    /// Sends an ECM Map-Request to every map-server; the first valid reply
    /// wins.
    fn send_request(&mut self, now: Instant, dst: IpAddr, nonce: u64, source: EidPrefix) {
        self.send_request_to(now, dst, nonce, source, |_| true);
    }

    /// Sends the request to the map-servers `to` picks (by index).
    fn send_request_to(
        &mut self,
        now: Instant,
        dst: IpAddr,
        nonce: u64,
        source: EidPrefix,
        to: impl Fn(usize) -> bool,
    ) {
        let target = EidPrefix::host(self.policy.iid(), dst);
        let ctl = self.policy.control_address;
        for (i, ms) in self.policy.map_servers.iter().enumerate() {
            if !to(i) {
                continue;
            }
            let s = &mut self.servers[i];
            s.unanswered_since = s.unanswered_since.or(Some(now));
            let ecm = MapRequest::for_eid(nonce, source.to_address(), ctl, target).encapsulated(
                ctl,
                LISP_CONTROL_PORT,
                ms.control_address,
            );
            match ecm.encode() {
                Ok(payload) => {
                    self.counters.requests += 1;
                    self.outputs.push_back(Output::Transmit {
                        dst: SocketAddr::new(ms.control_address, LISP_CONTROL_PORT),
                        payload,
                    });
                }
                Err(e) => warn!(error = %e, "cannot encode Map-Request"),
            }
        }
    }

    pub(crate) fn icmp_unreachable(&mut self, packet: &[u8]) {
        if let Some(icmp) = packet::unreachable(packet) {
            self.counters.icmp_unreachable += 1;
            self.outputs.push_back(Output::Deliver(icmp));
        }
    }

    pub(crate) fn handle_map_reply(
        &mut self,
        now: Instant,
        reply: MapReply,
    ) -> Result<(), Refusal> {
        if let Some(done) = self.handle_name_reply(now, &reply) {
            return done;
        }
        let Some(dst) = self.by_nonce.remove(&reply.nonce) else {
            // The second map-server's answer, or a late one.
            return Err(Refusal::UnknownNonce(reply.nonce));
        };
        let Some(pending) = self.pending.remove(&dst) else {
            return Err(Refusal::UnknownNonce(reply.nonce));
        };
        self.counters.replies += 1;
        if pending.retransmits == 0 {
            let sample = now.saturating_duration_since(pending.sent_at);
            self.srtt = if self.srtt_known {
                (self.srtt * 7 + sample) / 8
            } else {
                sample
            };
            self.srtt_known = true;
        }
        let iid = self.policy.iid();
        let record = reply
            .records
            .iter()
            .find(|r| EidPrefix::of_record(r).is_ok_and(|p| p.contains_addr(iid, dst)));
        let Some(record) = record else {
            self.fail_pending(pending, false);
            return Err(Refusal::Uncovered(dst));
        };
        match self.install(now, record, Learned::Reply) {
            Ok(Some((prefix, _))) => {
                self.dataplane
                    .hold_for(now, prefix, pending.held, pending.missed_at);
            }
            Ok(None) => {
                self.counters.negative_replies += 1;
                self.fail_pending(pending, true);
            }
            Err(why) => {
                self.counters.unusable_mappings += 1;
                warn!(eid = %dst, reason = %why, "mapping cannot be used for a WireGuard tunnel");
                self.fail_pending(pending, true);
            }
        }
        Ok(())
    }

    /// Answers held packets with ICMP unreachable (or drops them).
    fn fail_pending(&mut self, pending: Pending, icmp: bool) {
        for packet in pending.held {
            if icmp {
                self.icmp_unreachable(&packet);
            } else {
                self.counters.dropped_packets += 1;
            }
        }
    }

    /// Map-server `i`'s control peer was just programmed again (renewed
    /// after a silence): the requests and the register sent on the dead
    /// session are lost, so they go again now on the fresh one instead of
    /// at their next retransmit, seconds away.
    pub(crate) fn on_control_session_renewed(&mut self, now: Instant, i: usize) {
        let pending: Vec<_> = self
            .pending
            .iter()
            .map(|(d, p)| (*d, p.nonce, p.source))
            .collect();
        for (dst, nonce, source) in pending {
            self.send_request_to(now, dst, nonce, source, |j| j == i);
        }
        self.reregister_on_fresh_session(now, i);
    }

    pub(crate) fn retransmit_requests(&mut self, now: Instant) {
        let due: Vec<IpAddr> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next <= now)
            .map(|(d, _)| *d)
            .collect();
        for dst in due {
            let Some(p) = self.pending.get_mut(&dst) else {
                continue;
            };
            if p.retransmits >= self.policy.request_retries {
                let Some(p) = self.pending.remove(&dst) else {
                    continue;
                };
                self.by_nonce.remove(&p.nonce);
                self.counters.request_timeouts += 1;
                warn!(eid = %dst, "no map-server answered; giving up on held packets");
                self.fail_pending(p, true);
                // A background refresh that failed is tried again later.
                self.refresh_failed(dst);
                continue;
            }
            p.retransmits += 1;
            p.next = now + self.policy.request_timeout * 2u32.pow(p.retransmits);
            let (nonce, source) = (p.nonce, p.source);
            self.counters.request_retransmits += 1;
            // A map-server that has answered nothing for a while may sit
            // behind a dead WireGuard session (it restarted): retransmit on
            // a fresh one, but not on every retransmit (see
            // renew_control_if_silent).
            // A renewed one gets this retransmission once its fresh
            // session is in place (on_control_session_renewed).
            let renewed: Vec<bool> = (0..self.servers.len())
                .map(|i| self.renew_control_if_silent(now, i, false))
                .collect();
            self.send_request_to(now, dst, nonce, source, |i| !renewed[i]);
        }
    }
}
