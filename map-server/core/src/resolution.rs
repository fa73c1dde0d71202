//! Map-Requests: the proxy Map-Reply from the registry, and the Map-Notify
//! that tells the destination about the requester (whose mapping comes from
//! the requester's own registration, never from the request).

use crate::candidates::candidates;
use crate::io::{Refusal, Transmit, Via};
use crate::registry::{Mapping, Origin, Registry};
use crate::MapServer;
use lisp_wire::{
    wireguard_locator, Action, Address, EidPrefix, EidRecord, MapReply, MapRequest, Message,
    RlocRecord, WgLocator, DEFAULT_WG_PORT,
};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use tracing::debug;

impl MapServer {
    pub(crate) fn handle_map_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        via: Via,
        reply_port: u16,
        req: MapRequest,
    ) -> Result<(), Refusal> {
        let requester = match via {
            Via::Tunnel => Some(self.identify(from, via)?),
            Via::Plain => self.plain_peers.get(&from.ip()).copied(),
        };
        if req.records.is_empty() {
            return Err(Refusal::Malformed("Map-Request without records".into()));
        }
        let dst = SocketAddr::new(self.reply_address(from, via, &req), reply_port);

        let mut records = Vec::with_capacity(req.records.len());
        let mut notify_targets = Vec::new();
        for r in &req.records {
            let asked = EidPrefix::from_wire(&r.eid, r.eid_mask_len)
                .map_err(|e| Refusal::Malformed(e.to_string()))?;
            match self.registry.lookup(asked.iid, asked.addr(), now) {
                Some((prefix, m)) => {
                    records.push(self.record_for(prefix, m, requester));
                    if let (Some(req_peer), Origin::Peer(owner)) = (requester, m.origin) {
                        if owner != req_peer {
                            notify_targets.push((prefix, owner));
                        }
                    }
                }
                None => {
                    let hole = self.registry.uncovered_prefix(asked.iid, asked.addr());
                    self.counters.negative_replies += 1;
                    debug!(eid = %asked, covering = %hole, "negative Map-Reply");
                    records.push(EidRecord::negative(
                        hole,
                        self.policy.negative_ttl_minutes,
                        Action::NativelyForward,
                    ));
                }
            }
        }
        let reply = Message::MapReply(MapReply {
            probe: false,
            echo_nonce: false,
            security: false,
            nonce: req.nonce,
            records,
        });
        let payload = reply
            .encode()
            .map_err(|e| Refusal::Malformed(format!("cannot encode reply: {e}")))?;
        let reply = Transmit { via, dst, payload };

        let mut held = Some(reply);
        if let Some(req_peer) = requester {
            let ttl_of = |p: &EidPrefix, reg: &Registry| reg.get(p).map_or(1, |m| m.ttl_minutes);
            for (dest_prefix, owner) in notify_targets {
                // The requester now resolves dest_prefix: remember it, so a
                // move of the destination is pushed to it.
                let ttl = ttl_of(&dest_prefix, &self.registry);
                self.subscribe(dest_prefix, req_peer, now, ttl);
                if let Some(src_prefix) = self.requester_prefix(req_peer, &req.source_eid, now) {
                    // The destination learns the requester: it resolves it too.
                    let ttl = ttl_of(&src_prefix, &self.registry);
                    self.subscribe(src_prefix, owner, now, ttl);
                    if let Some(crossing) = self.notify_about(req_peer, dest_prefix) {
                        // The destination is resolving the requester at this
                        // very moment, and the requester is being told about
                        // it: so it knows the destination already, and the
                        // destination will learn it from its own reply. No
                        // second notify, and this reply waits for the first
                        // one's ack, so the requester sees the notify first
                        // and both agree it is the responder: exactly one of
                        // them starts the WireGuard handshake.
                        self.counters.crossed_requests += 1;
                        if let (Some(h), Some(p)) = (held.take(), self.pending.get_mut(&crossing)) {
                            p.held.push(h);
                        }
                        continue;
                    }
                    let hold = held.take();
                    self.send_notify(now, owner, src_prefix, hold);
                }
            }
        }
        if let Some(reply) = held {
            self.counters.replies += 1;
            self.transmits.push_back(reply);
        }
        Ok(())
    }

    /// The unacknowledged notify telling `peer` about `prefix`, if any.
    fn notify_about(&self, peer: u16, prefix: EidPrefix) -> Option<u64> {
        self.pending
            .iter()
            .find(|(_, p)| p.peer == peer && p.about == prefix && !p.held.is_empty())
            .map(|(&nonce, _)| nonce)
    }

    /// Where the reply goes. Inside the tunnel, always back to the source
    /// (cryptokey routing proved it; anything else would be a reflector).
    /// On the plain listener, to the first ITR-RLOC of the source's family.
    fn reply_address(&self, from: SocketAddr, via: Via, req: &MapRequest) -> IpAddr {
        match via {
            Via::Tunnel => from.ip(),
            Via::Plain => req
                .itr_rlocs
                .iter()
                .filter_map(Address::ip)
                .find(|a| a.is_ipv4() == from.ip().is_ipv4())
                .unwrap_or(from.ip()),
        }
    }

    /// The requester's own registered prefix holding the request's source
    /// EID. The mapping sent to the destination always comes from here,
    /// never from what the request claims.
    fn requester_prefix(&self, peer: u16, source_eid: &Address, now: Instant) -> Option<EidPrefix> {
        let probe = EidPrefix::from_wire(
            source_eid,
            if source_eid.innermost_ip()?.is_ipv4() {
                32
            } else {
                128
            },
        )
        .ok()?;
        let (prefix, m) = self.registry.lookup(probe.iid, probe.addr(), now)?;
        (m.origin == Origin::Peer(peer)).then_some(prefix)
    }
}

impl MapServer {
    /// The EID-record `requester` gets for a mapping: for a keyed mapping,
    /// the owner's candidates as this requester should see them (see
    /// [`crate::candidates`]).
    pub(crate) fn record_for(
        &self,
        prefix: EidPrefix,
        m: &Mapping,
        requester: Option<u16>,
    ) -> EidRecord {
        let Origin::Peer(owner) = m.origin else {
            return mapping_record(prefix, m);
        };
        let Some(key) = m.wg_key else {
            return mapping_record(prefix, m);
        };
        let observed = self.observed(owner);
        let requester_public = requester.and_then(|r| self.observed(r)).map(|e| e.ip());
        let rlocs = candidates(m, observed, requester_public)
            .into_iter()
            .map(|c| {
                let mut locator = WgLocator::new(c.endpoint, key);
                if let Some(private) = c.private {
                    locator = locator.with_private(private);
                }
                if c.relayed {
                    locator = locator.with_rtrs([c.endpoint.ip()]);
                }
                RlocRecord::new(c.priority, c.weight, locator.to_address())
            })
            .collect();
        EidRecord {
            map_version: m.map_version,
            ..EidRecord::new(prefix, m.ttl_minutes, rlocs)
        }
    }
}

/// The EID-record for a mapping as registered: WireGuard locators (key and
/// port) for keyed mappings, plain locators for keyless ones.
pub fn mapping_record(prefix: EidPrefix, m: &Mapping) -> EidRecord {
    let rlocs = m
        .rlocs
        .iter()
        .map(|r| {
            let endpoint = SocketAddr::new(r.addr, r.port.unwrap_or(DEFAULT_WG_PORT));
            let locator = match m.wg_key {
                Some(key) if r.relayed => WgLocator::new(endpoint, key)
                    .with_rtrs([r.addr])
                    .to_address(),
                Some(key) => wireguard_locator(endpoint, key),
                None => Address::from(r.addr),
            };
            RlocRecord::new(r.priority, r.weight, locator)
        })
        .collect();
    EidRecord {
        map_version: m.map_version,
        ..EidRecord::new(prefix, m.ttl_minutes, rlocs)
    }
}
