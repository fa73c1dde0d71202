//! Map-Requests: the proxy Map-Reply from the registry, and the Map-Notify
//! that tells the destination about the requester (whose mapping comes from
//! the requester's own registration, never from the request).
//!
//! The hot path allocates little: the request is read in place
//! ([`lisp_wire::parse_map_request`]), and each record is written straight
//! into the reply from the mapping and its candidates
//! ([`lisp_wire::EidRecord::encode_header_into`],
//! [`lisp_wire::WgLocator::encode_rloc_record_into`]): the bytes
//! [`MapServer::record_for`] would encode, without building the record
//! first. The only allocations are the reply itself and the candidate list.
//! A reply goes to the request's source address only: an ITR-RLOC naming
//! another address is not followed (that would make the map-server a
//! reflector).

use crate::candidates::{candidates, Candidate};
use crate::io::{Refusal, Transmit, Via};
use crate::registry::{Mapping, Origin, Registry};
use crate::MapServer;
use lisp_wire::{
    wireguard_locator, Action, Address, AddressRef, EidPrefix, EidRecord, MapRequestRef,
    ReplyFlags, RlocRecord, WgLocator, DEFAULT_WG_PORT,
};
use std::net::SocketAddr;
use std::time::Instant;
use tracing::debug;

impl MapServer {
    /// Answers a Map-Request (read without allocating), writing each record
    /// straight into the reply.
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
        let asked_count = req.records().len();
        if asked_count == 0 {
            return Err(Refusal::Malformed("Map-Request without records".into()));
        }
        if asked_count > self.policy.limits.max_records_per_request {
            return Err(Refusal::OverLimit(format!(
                "Map-Request asks about {asked_count} EIDs, more than {}",
                self.policy.limits.max_records_per_request
            )));
        }
        // The reply goes to the source, never elsewhere (to the inner
        // source port of an ECM, where an ITR listens for it).
        let reply_port = req.ecm().map_or(from.port(), |e| e.inner.src_port);
        let dst = SocketAddr::new(from.ip(), reply_port);

        let mut records = std::mem::take(&mut self.reply_records);
        let mut bounds = std::mem::take(&mut self.reply_bounds);
        records.clear();
        bounds.clear();
        let mut notify_targets = Vec::new();
        let mut asked_before: Vec<EidPrefix> = Vec::with_capacity(asked_count);
        let mut names_before: Vec<(u32, &str)> = Vec::new();
        let mut result = Ok(());
        for r in req.records() {
            if let Some((iid, name)) = r.eid.distinguished_name() {
                // The same name asked twice is answered once.
                if names_before
                    .iter()
                    .any(|&(i, n)| i == iid && n.eq_ignore_ascii_case(name))
                {
                    continue;
                }
                names_before.push((iid, name));
                let answered = self.answer_name(
                    now,
                    (iid, name, r.eid_mask_len),
                    requester,
                    (&mut records, &mut bounds),
                    &mut asked_before,
                    &mut notify_targets,
                );
                if let Err(e) = answered {
                    result = Err(e);
                    break;
                }
                continue;
            }
            let asked = match r.prefix() {
                Ok(p) => p,
                Err(e) => {
                    result = Err(Refusal::Malformed(e.to_string()));
                    break;
                }
            };
            // The same EID asked twice is answered once.
            if asked_before.contains(&asked) {
                continue;
            }
            asked_before.push(asked);
            let start = records.len();
            if let Err(e) =
                self.answer_record(now, asked, requester, &mut records, &mut notify_targets)
            {
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
            // One notify per owner: a name's answer (or a request for
            // several of its prefixes) names the same owner more than once.
            let mut told = Vec::new();
            for (dest_prefix, owner) in notify_targets {
                // The requester now resolves dest_prefix: remember it, so a
                // move of the destination is pushed to it.
                let ttl = ttl_of(&dest_prefix, &self.registry);
                self.subscribe(dest_prefix, req_peer, now, ttl);
                if let Some(src_prefix) = self.requester_prefix(req_peer, req.source_eid(), now) {
                    // The destination learns the requester: it resolves it too.
                    let ttl = ttl_of(&src_prefix, &self.registry);
                    self.subscribe(src_prefix, owner, now, ttl);
                    if told.contains(&owner) {
                        continue;
                    }
                    told.push(owner);
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
        out: &mut Vec<u8>,
        notify_targets: &mut Vec<(EidPrefix, u16)>,
    ) -> Result<(), Refusal> {
        let encoding =
            |e: lisp_wire::EncodeError| Refusal::Malformed(format!("cannot encode reply: {e}"));
        let Some((prefix, m)) = self.registry.lookup(asked.iid, asked.addr(), now) else {
            let hole = self.registry.uncovered_prefix(asked.iid, asked.addr());
            self.counters.negative_replies += 1;
            debug!(eid = %asked, covering = %hole, "negative Map-Reply");
            return EidRecord::negative(
                hole,
                self.policy.negative_ttl_minutes,
                Action::NativelyForward,
            )
            .encode_into(out)
            .map_err(encoding);
        };
        if let (Some(req_peer), Origin::Peer(owner)) = (requester, m.origin) {
            let allowed = owner == req_peer
                || crate::fleet::team_allows(&self.policy, &mut self.counters, req_peer, owner);
            if !allowed {
                // Another team's EID, not opened to the requester's team: as
                // if it were not registered (the owner is not told).
                self.counters.negative_replies += 1;
                return EidRecord::negative(
                    asked,
                    self.policy.negative_ttl_minutes,
                    Action::NativelyForward,
                )
                .encode_into(out)
                .map_err(encoding);
            }
        }
        if let (Some(req_peer), Origin::Peer(owner)) = (requester, m.origin) {
            // A Map-Notify tells the owner about the requester so that it
            // programs the requester's WireGuard peer first: only between
            // WireGuard peers. A keyless LISP peer (OOR) has none to program
            // and drops an unsolicited notify.
            // One notify per destination, however many of its prefixes
            // the request names.
            if owner != req_peer
                && self.is_keyed(owner)
                && self.is_keyed(req_peer)
                && !notify_targets.iter().any(|&(_, o)| o == owner)
            {
                notify_targets.push((prefix, owner));
            }
        }
        match self.keyed_candidates(m, requester) {
            // Written straight into the reply: the very bytes `record_for`
            // would encode, without building them first.
            Some((key, cands)) => {
                let count = u8::try_from(cands.len()).map_err(|_| {
                    Refusal::Malformed(format!("{prefix} has {} candidates", cands.len()))
                })?;
                EidRecord::encode_header_into(prefix, m.ttl_minutes, m.map_version, count, out)
                    .map_err(encoding)?;
                for c in cands {
                    wg_locator(&c, key)
                        .encode_rloc_record_into(c.priority, c.weight, out)
                        .map_err(encoding)?;
                }
                Ok(())
            }
            None => mapping_record(prefix, m).encode_into(out).map_err(encoding),
        }
    }

    /// Appends the records answering a name lookup: one per live EID prefix
    /// the named node registered in that instance, exactly as a lookup of
    /// the EID itself gets it ([`Self::answer_record`]: its owner is told
    /// about the requester the same way, and whatever that path refuses is
    /// refused here too); or one negative record for the name.
    /// `asked_before`: the prefixes this reply holds already (asked by EID,
    /// or another name of the request): not written twice.
    fn answer_name(
        &mut self,
        now: Instant,
        (iid, name, mask_len): (u32, &str, u8),
        requester: Option<u16>,
        (out, bounds): (&mut Vec<u8>, &mut Vec<(usize, usize)>),
        asked_before: &mut Vec<EidPrefix>,
        notify_targets: &mut Vec<(EidPrefix, u16)>,
    ) -> Result<(), Refusal> {
        self.counters.name_lookups += 1;
        let mut prefixes: Vec<EidPrefix> = match self.policy.peer_named(name) {
            Some(peer) => self
                .registry
                .prefixes_of(peer)
                .filter(|p| p.iid == iid)
                .filter(|p| self.registry.get(p).is_some_and(|m| m.is_live(now)))
                .collect(),
            None => Vec::new(),
        };
        prefixes.sort();
        if prefixes.is_empty() {
            self.counters.unknown_names += 1;
            self.counters.negative_replies += 1;
            debug!(%name, iid, "negative Map-Reply for a name");
            let dn = Address::DistinguishedName(name.into());
            let eid = if iid == 0 {
                dn
            } else {
                Address::InstanceId {
                    iid,
                    iid_mask_len: 0,
                    address: Box::new(dn),
                }
            };
            let start = out.len();
            EidRecord {
                eid,
                eid_mask_len: mask_len,
                ..EidRecord::negative(
                    EidPrefix::host(iid, std::net::Ipv4Addr::UNSPECIFIED.into()),
                    self.policy.negative_ttl_minutes,
                    Action::NativelyForward,
                )
            }
            .encode_into(out)
            .map_err(|e| Refusal::Malformed(format!("cannot encode reply: {e}")))?;
            bounds.push((start, out.len()));
            return Ok(());
        }
        for prefix in prefixes {
            if asked_before.contains(&prefix) {
                continue;
            }
            asked_before.push(prefix);
            // Through the path of an EID lookup, with all it checks; the
            // base address of a prefix a more specific one shadows would
            // be answered with the other, so it is left out.
            let exact = self.registry.lookup(prefix.iid, prefix.addr(), now);
            if exact.is_none_or(|(p, _)| p != prefix) {
                continue;
            }
            let start = out.len();
            self.answer_record(now, prefix, requester, out, notify_targets)?;
            bounds.push((start, out.len()));
        }
        Ok(())
    }

    fn is_keyed(&self, peer: u16) -> bool {
        self.policy
            .peers
            .get(peer as usize)
            .is_some_and(|p| p.wg_key.is_some())
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
    /// [`crate::candidates`]). Map-Replies write the same bytes directly
    /// (see `answer_record`).
    pub(crate) fn record_for(
        &self,
        prefix: EidPrefix,
        m: &Mapping,
        requester: Option<u16>,
    ) -> EidRecord {
        let Some((key, cands)) = self.keyed_candidates(m, requester) else {
            return mapping_record(prefix, m);
        };
        let rlocs = cands
            .iter()
            .map(|c| RlocRecord::new(c.priority, c.weight, wg_locator(c, key).to_address()))
            .collect();
        EidRecord {
            map_version: m.map_version,
            ..EidRecord::new(prefix, m.ttl_minutes, rlocs)
        }
    }

    /// For a keyed mapping, its key and the candidates `requester` gets:
    /// those of [`crate::candidates`] for a registered node (where the
    /// map-server sees the owner, and the requester), the locators as
    /// configured for a static one. `None` for a keyless mapping.
    fn keyed_candidates(
        &self,
        m: &Mapping,
        requester: Option<u16>,
    ) -> Option<([u8; 32], Vec<Candidate>)> {
        let key = m.wg_key?;
        let observed = match m.origin {
            Origin::Peer(owner) => self.observed(owner),
            Origin::Static => None,
        };
        let requester_public = requester.and_then(|r| self.observed(r)).map(|e| e.ip());
        Some((key, candidates(m, observed, requester_public)))
    }
}

/// The WireGuard locator of one candidate.
fn wg_locator(c: &Candidate, key: [u8; 32]) -> WgLocator {
    let mut locator = WgLocator::new(c.endpoint, key);
    if let Some(private) = c.private {
        locator = locator.with_private(private);
    }
    if c.relayed {
        locator = locator.with_rtrs([c.endpoint.ip()]);
    }
    locator
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
