//! Map-Requests: the proxy Map-Reply from the registry, and the Map-Notify
//! that tells the destination about the requester (whose mapping comes from
//! the requester's own registration, never from the request).
//!
//! The hot path allocates only the reply: the request is read in place
//! ([`lisp_wire::parse_map_request`]), and each mapping's record is copied
//! from the encoding the registry keeps of it ([`lisp_wire::encode_map_reply`]).
//! A reply goes to the request's source address only: an ITR-RLOC naming
//! another address is not followed (that would make the map-server a
//! reflector).

use crate::candidates::candidates;
use crate::io::{Refusal, Transmit, Via};
use crate::registry::{Mapping, Origin, Registry};
use crate::MapServer;
use lisp_wire::{
    wireguard_locator, Action, Address, AddressRef, EidPrefix, EidRecord, MapRequestRef,
    ReplyFlags, RlocRecord, WgLocator, DEFAULT_WG_PORT,
};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use tracing::debug;

impl MapServer {
    /// Answers a Map-Request (read without allocating). The reply is built by
    /// copying each mapping's EID-record as the registry keeps it encoded,
    /// for every requester that sees the owner's common view: all but one
    /// seen behind the owner's own NAT, whose record is built for it.
    pub(crate) fn handle_map_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        via: Via,
        req: MapRequestRef<'_>,
    ) -> Result<(), Refusal> {
        let requester = match via {
            Via::Tunnel => Some(self.identify(from, via)?),
            Via::Plain => self.plain_peers.get(&from.ip()).copied(),
        };
        if req.records().len() == 0 {
            return Err(Refusal::Malformed("Map-Request without records".into()));
        }
        // The reply goes to the source, never elsewhere (to the inner
        // source port of an ECM, where an ITR listens for it).
        let reply_port = req.ecm().map_or(from.port(), |e| e.inner.src_port);
        let dst = SocketAddr::new(from.ip(), reply_port);
        let requester_public = requester.and_then(|r| self.observed(r)).map(|e| e.ip());

        let mut records = std::mem::take(&mut self.reply_records);
        let mut bounds = std::mem::take(&mut self.reply_bounds);
        records.clear();
        bounds.clear();
        let mut notify_targets = Vec::new();
        let mut result = Ok(());
        for r in req.records() {
            let asked = match r.prefix() {
                Ok(p) => p,
                Err(e) => {
                    result = Err(Refusal::Malformed(e.to_string()));
                    break;
                }
            };
            let start = records.len();
            if let Err(e) = self.answer_record(
                now,
                asked,
                requester,
                requester_public,
                &mut records,
                &mut notify_targets,
            ) {
                result = Err(e);
                break;
            }
            bounds.push((start, records.len()));
        }
        let reply = result.and_then(|()| {
            let mut payload = Vec::with_capacity(12 + records.len());
            lisp_wire::encode_map_reply(
                req.nonce(),
                ReplyFlags::default(),
                bounds.iter().map(|&(a, b)| &records[a..b]),
                &mut payload,
            )
            .map_err(|e| Refusal::Malformed(format!("cannot encode reply: {e}")))?;
            Ok(Transmit { via, dst, payload })
        });
        self.reply_records = records;
        self.reply_bounds = bounds;
        let reply = reply?;

        let mut held = Some(reply);
        if let Some(req_peer) = requester {
            let ttl_of = |p: &EidPrefix, reg: &Registry| reg.get(p).map_or(1, |m| m.ttl_minutes);
            for (dest_prefix, owner) in notify_targets {
                // The requester now resolves dest_prefix: remember it, so a
                // move of the destination is pushed to it.
                let ttl = ttl_of(&dest_prefix, &self.registry);
                self.subscribe(dest_prefix, req_peer, now, ttl);
                if let Some(src_prefix) = self.requester_prefix(req_peer, req.source_eid(), now) {
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

    /// Appends the EID-record answering `asked` to `out`, and notes the owner
    /// to tell about the requester, if any.
    fn answer_record(
        &mut self,
        now: Instant,
        asked: EidPrefix,
        requester: Option<u16>,
        requester_public: Option<IpAddr>,
        out: &mut Vec<u8>,
        notify_targets: &mut Vec<(EidPrefix, u16)>,
    ) -> Result<(), Refusal> {
        let views = &self.views;
        let view_of = |m: &Mapping| match m.origin {
            Origin::Peer(p) => views.get(p as usize).copied().unwrap_or(0),
            Origin::Static => 0,
        };
        let Some((prefix, m, kept)) =
            self.registry
                .lookup_record(asked.iid, asked.addr(), now, view_of)
        else {
            let hole = self.registry.uncovered_prefix(asked.iid, asked.addr());
            self.counters.negative_replies += 1;
            debug!(eid = %asked, covering = %hole, "negative Map-Reply");
            return EidRecord::negative(
                hole,
                self.policy.negative_ttl_minutes,
                Action::NativelyForward,
            )
            .encode_into(out)
            .map_err(|e| Refusal::Malformed(format!("cannot encode reply: {e}")));
        };
        if let (Some(req_peer), Origin::Peer(owner)) = (requester, m.origin) {
            // A Map-Notify tells the owner about the requester so that it
            // programs the requester's WireGuard peer first: only between
            // WireGuard peers. A keyless LISP peer (OOR) has none to program
            // and drops an unsolicited notify.
            if owner != req_peer && self.is_keyed(owner) && self.is_keyed(req_peer) {
                notify_targets.push((prefix, owner));
            }
        }
        let encode = |r: EidRecord, out: &mut Vec<u8>| {
            r.encode_into(out)
                .map_err(|e| Refusal::Malformed(format!("cannot encode reply: {e}")))
        };
        if !self.sees_common_view(m, requester_public) {
            // Behind the owner's own NAT: its private address too, first.
            return encode(self.record_for(prefix, m, requester), out);
        }
        if let Some(bytes) = kept {
            out.extend_from_slice(bytes);
            return Ok(());
        }
        let start = out.len();
        encode(self.record_for(prefix, m, None), out)?;
        let view = view_of(m);
        self.registry.keep_record(&prefix, view, &out[start..]);
        Ok(())
    }

    fn is_keyed(&self, peer: u16) -> bool {
        self.policy
            .peers
            .get(peer as usize)
            .is_some_and(|p| p.wg_key.is_some())
    }

    /// Whether a requester seen at `requester_public` gets `m`'s common
    /// view (the record [`MapServer::record_for`] builds for no requester in
    /// particular, which the registry keeps encoded): everyone but a
    /// requester behind the same public address as the owner.
    fn sees_common_view(&self, m: &Mapping, requester_public: Option<IpAddr>) -> bool {
        let Origin::Peer(owner) = m.origin else {
            return true;
        };
        match (self.observed(owner), requester_public) {
            (Some(o), Some(r)) => o.ip() != r,
            _ => true,
        }
    }

    /// The unacknowledged notify telling `peer` about `prefix`, if any.
    fn notify_about(&self, peer: u16, prefix: EidPrefix) -> Option<u64> {
        self.pending
            .iter()
            .find(|(_, p)| p.peer == peer && p.about == prefix && !p.held.is_empty())
            .map(|(&nonce, _)| nonce)
    }

    /// The requester's own registered prefix holding the request's source
    /// EID. The mapping sent to the destination always comes from here,
    /// never from what the request claims.
    fn requester_prefix(
        &self,
        peer: u16,
        source_eid: AddressRef<'_>,
        now: Instant,
    ) -> Option<EidPrefix> {
        let probe = source_eid.eid_host().ok()?;
        let (prefix, m) = self.registry.lookup(probe.iid, probe.addr(), now)?;
        (m.origin == Origin::Peer(peer)).then_some(prefix)
    }
}

impl MapServer {
    /// The EID-record `requester` gets for a mapping: for a keyed mapping,
    /// the owner's candidates as this requester should see them (see
    /// [`crate::candidates`]).
    ///
    /// Its result for no requester in particular (`None`) is what the
    /// registry keeps encoded per mapping and answers most requests with. It
    /// depends on the mapping (replacing a mapping drops its encoding) and
    /// on the owner's observed endpoint (a change bumps the owner's view,
    /// see [`MapServer::views`]); anything else it comes to depend on must
    /// bump the view too.
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
            let locator = match m.wg_key {
                Some(key) => wireguard_locator(
                    SocketAddr::new(r.addr, r.port.unwrap_or(DEFAULT_WG_PORT)),
                    key,
                ),
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
