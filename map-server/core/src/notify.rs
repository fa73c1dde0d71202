//! Map-Notifies the map-server starts: to a destination about the node that
//! resolved it (holding the requester's reply until the destination has
//! acknowledged, so its peer is in place before the first handshake), and
//! pushes of a moved mapping to the nodes that resolved it. Retransmitted
//! with backoff until acknowledged.

use crate::io::{Refusal, Transmit, Via};
use crate::MapServer;
use lisp_wire::{auth, Authentication, EidPrefix, MapNotify, LISP_CONTROL_PORT};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// A node that resolved a prefix, and until when it caches it.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) peer: u16,
    pub(crate) expires: Instant,
}

/// A map-server-initiated Map-Notify awaiting its Ack.
#[derive(Debug)]
pub(crate) struct PendingNotify {
    pub(crate) peer: u16,
    transmit: Transmit,
    retransmits: u32,
    /// When it was first sent: an Ack to a notify never retransmitted
    /// samples the peer's round trip.
    sent_at: Instant,
    pub(crate) next: Instant,
    /// The prefix whose mapping it carries.
    pub(crate) about: EidPrefix,
    /// Proxy replies released by the Ack or at `hold_until`.
    pub(crate) held: Vec<Transmit>,
    pub(crate) hold_until: Instant,
}

impl MapServer {
    pub(crate) fn handle_map_notify_ack(
        &mut self,
        now: Instant,
        peer_idx: u16,
        bytes: &[u8],
        ack: MapNotify,
    ) -> Result<(), Refusal> {
        let peer = &self.policy.peers[peer_idx as usize];
        auth::verify(bytes, &peer.site_key).map_err(Refusal::Auth)?;
        match self.pending.get(&ack.nonce) {
            Some(p) if p.peer == peer_idx => {}
            _ => {
                // A late duplicate Ack after a retransmission is normal;
                // counted, as is a forged one (which the HMAC lets through
                // only from the peer itself).
                self.counters.unmatched_acks += 1;
                debug!(nonce = ack.nonce, peer = %peer.name, "Map-Notify-Ack for no pending notify");
                return Ok(());
            }
        }
        let Some(p) = self.pending.remove(&ack.nonce) else {
            return Ok(());
        };
        self.counters.notify_acks += 1;
        let rtt = now.saturating_duration_since(p.sent_at);
        if p.retransmits == 0 {
            let s = self.notify_srtt.entry(peer_idx).or_insert(rtt);
            *s = (*s * 7 + rtt) / 8;
        }
        debug!(peer = %peer.name, eid = %p.about, rtt_ms = rtt.as_millis() as u64, "Map-Notify acknowledged");
        self.release(p.held);
        Ok(())
    }

    pub(crate) fn release(&mut self, held: Vec<Transmit>) {
        for t in held {
            self.counters.replies += 1;
            self.transmits.push_back(t);
        }
    }
    pub(crate) fn subscribe(
        &mut self,
        prefix: EidPrefix,
        peer: u16,
        now: Instant,
        ttl_minutes: u32,
    ) {
        let expires = now + Duration::from_secs(60 * ttl_minutes.max(1) as u64);
        let subs = self.subscriptions.entry(prefix).or_default();
        match subs.iter_mut().find(|s| s.peer == peer) {
            Some(s) => s.expires = s.expires.max(expires),
            None => subs.push(Subscriber { peer, expires }),
        }
    }

    /// Sends `about`'s current mapping to `peer` in a Map-Notify, retransmitted
    /// until acknowledged; `held` is released on the Ack or at the hold time.
    pub(crate) fn send_notify(
        &mut self,
        now: Instant,
        peer_idx: u16,
        about: EidPrefix,
        held: Option<Transmit>,
    ) {
        let Some(mapping) = self.registry.get(&about) else {
            return;
        };
        let record = self.record_for(about, mapping, Some(peer_idx));
        let nonce = self.nonce_gen.next_nonce();
        let peer = &self.policy.peers[peer_idx as usize];
        let notify = MapNotify {
            nonce,
            // As the peer signs its registers (HMAC-SHA-1 or -SHA-256).
            auth: Authentication::unsigned(self.key_ids[peer_idx as usize]),
            records: vec![record],
            xtr_site: None,
        };
        let payload = match notify.encode_signed_notify(&peer.site_key) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot encode Map-Notify");
                if let Some(h) = held {
                    self.release(vec![h]);
                }
                return;
            }
        };
        let via = if peer.wg_key.is_some() {
            Via::Tunnel
        } else {
            Via::Plain
        };
        let transmit = Transmit {
            via,
            dst: SocketAddr::new(peer.control_address, LISP_CONTROL_PORT),
            payload,
        };
        debug!(peer = %peer.name, eid = %about, nonce, "Map-Notify to correspondent");
        self.counters.notifies += 1;
        self.transmits.push_back(transmit.clone());
        self.pending.insert(
            nonce,
            PendingNotify {
                peer: peer_idx,
                transmit,
                retransmits: 0,
                sent_at: now,
                next: now + self.notify_timeout(peer_idx),
                about,
                held: held.into_iter().collect(),
                hold_until: now + self.policy.notify.reply_hold,
            },
        );
    }

    /// Asks every live subscriber of `prefix` but its owner to resolve it
    /// again, with a Solicit-Map-Request (RFC 9301 6.6.2): the owner
    /// restarted, and their tunnels to it are dead. Their Map-Requests then
    /// run the usual flow: the owner is told about each of them first (it
    /// becomes the responder) and each gets its reply after that (it
    /// initiates a fresh handshake).
    pub(crate) fn solicit_subscribers(&mut self, now: Instant, prefix: EidPrefix, owner: u16) {
        let targets: Vec<u16> = self
            .subscriptions
            .get(&prefix)
            .map(|subs| {
                subs.iter()
                    .filter(|s| s.expires > now && s.peer != owner)
                    .map(|s| s.peer)
                    .collect()
            })
            .unwrap_or_default();
        let Some(ms_address) = self.policy.control_address else {
            return;
        };
        for peer in targets {
            let p = &self.policy.peers[peer as usize];
            if p.wg_key.is_none() {
                continue; // a keyless peer has no tunnel to renew
            }
            let nonce = self.nonce_gen.next_nonce();
            let mut smr =
                lisp_wire::MapRequest::for_eid(nonce, prefix.to_address(), ms_address, prefix);
            smr.smr = true;
            match lisp_wire::Message::MapRequest(smr).encode() {
                Ok(payload) => {
                    self.counters.smrs += 1;
                    debug!(peer = %p.name, eid = %prefix, "Solicit-Map-Request");
                    self.transmits.push_back(Transmit {
                        via: Via::Tunnel,
                        dst: SocketAddr::new(p.control_address, LISP_CONTROL_PORT),
                        payload,
                    });
                }
                Err(e) => warn!(error = %e, "cannot encode a Solicit-Map-Request"),
            }
        }
    }

    /// Pushes `prefix`'s new mapping to every live subscriber but its owner.
    pub(crate) fn push_to_subscribers(&mut self, now: Instant, prefix: EidPrefix, owner: u16) {
        let targets: Vec<u16> = self
            .subscriptions
            .get(&prefix)
            .map(|subs| {
                subs.iter()
                    .filter(|s| s.expires > now && s.peer != owner)
                    .map(|s| s.peer)
                    .collect()
            })
            .unwrap_or_default();
        for peer in targets {
            self.counters.pushes += 1;
            // A newer push supersedes an older one about the same prefix.
            self.pending
                .retain(|_, p| !(p.peer == peer && p.about == prefix && p.held.is_empty()));
            self.send_notify(now, peer, prefix, None);
        }
    }

    /// The first retransmission timeout of a notify to `peer`.
    fn notify_timeout(&self, peer: u16) -> Duration {
        notify_timeout(&self.policy.notify, self.notify_srtt.get(&peer).copied())
    }

    /// Retransmits unacknowledged notifies and releases held replies whose
    /// hold time is over.
    pub(crate) fn retransmit_notifies(&mut self, now: Instant) {
        let timing = self.policy.notify;
        let mut released = Vec::new();
        let mut given_up = Vec::new();
        for (&nonce, p) in self.pending.iter_mut() {
            if !p.held.is_empty() && now >= p.hold_until {
                released.append(&mut p.held);
            }
            if now >= p.next {
                if p.retransmits >= timing.max_retransmits {
                    given_up.push(nonce);
                    continue;
                }
                p.retransmits += 1;
                let rto = notify_timeout(&timing, self.notify_srtt.get(&p.peer).copied());
                p.next = now + rto * 2u32.pow(p.retransmits.min(8));
                self.counters.notify_retransmits += 1;
                self.transmits.push_back(p.transmit.clone());
            }
        }
        for nonce in given_up {
            if let Some(p) = self.pending.remove(&nonce) {
                self.counters.notify_giveups += 1;
                warn!(peer = %self.policy.peers[p.peer as usize].name, eid = %p.about, "Map-Notify never acknowledged; giving up");
                released.extend(p.held);
            }
        }
        self.release(released);
    }
}

/// A notify's first retransmission timeout: twice the peer's smoothed
/// round trip and 50 ms (at least the configured first retransmission, at
/// most 2 s); the configured one until the peer was measured. Under load,
/// when round trips grow past 100 ms, fixed timers retransmitted 40 to 190 %
/// of the notifies at 100 robots.
fn notify_timeout(timing: &crate::policy::NotifyTiming, srtt: Option<Duration>) -> Duration {
    match srtt {
        Some(s) => {
            (s * 2 + Duration::from_millis(50)).clamp(timing.first_retransmit, MAX_FIRST_RETRANSMIT)
        }
        None => timing.first_retransmit,
    }
}

/// The longest first retransmission timeout of a notify.
const MAX_FIRST_RETRANSMIT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NotifyTiming;

    #[test]
    fn the_notify_timeout_follows_the_peers_round_trip_within_bounds() {
        let t = NotifyTiming::default();
        assert_eq!(notify_timeout(&t, None), t.first_retransmit);
        let ms = Duration::from_millis;
        // A fast peer keeps the configured floor.
        assert_eq!(notify_timeout(&t, Some(ms(2))), t.first_retransmit);
        // A peer answering in 300 ms under load waits 650 ms, not 100.
        assert_eq!(notify_timeout(&t, Some(ms(300))), ms(650));
        assert_eq!(notify_timeout(&t, Some(ms(5000))), MAX_FIRST_RETRANSMIT);
    }
}
