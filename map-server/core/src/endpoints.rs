//! Observed endpoints: where the map-server's own WireGuard sees each control
//! peer, after any NAT. Read right after every registration (a node that
//! moved to another NAT re-registers from its new endpoint) and every
//! `endpoint_poll` (a NAT that restarted and remapped the port shows at the
//! node's next keepalive). A change is pushed to the node's correspondents
//! like a move, and persisted, so a restarted map-server can wake the node
//! through its NAT.

use crate::io::{ActionFault, ActionId, ControlAction, Endpoints, StoreOp};
use crate::MapServer;
use lisp_wire::EidPrefix;
use std::net::SocketAddr;
use std::time::Instant;
use tracing::{debug, info, warn};

/// A node with many prefixes (an xTR) learns where it is seen from the
/// first few.
const MAX_SELF_NOTIFIES: usize = 4;

#[derive(Debug, Default)]
pub(crate) struct Polling {
    /// The read the shell is carrying out.
    pub(crate) in_flight: Option<ActionId>,
    /// A read is wanted at this instant.
    pub(crate) due: Option<Instant>,
    /// Reads started so far.
    pub(crate) started: u64,
    /// Pushes of moved mappings waiting for a read started after them:
    /// (prefix, owner, reads started when queued).
    pub(crate) pushes: Vec<(EidPrefix, u16, u64)>,
}

impl MapServer {
    /// The endpoint the map-server's WireGuard last saw control peer `peer`
    /// at.
    pub fn observed(&self, peer: u16) -> Option<SocketAddr> {
        self.observed.get(peer as usize).copied().flatten()
    }

    /// Pushes `prefix`'s new mapping once a read started from now on has
    /// told where its owner is.
    pub(crate) fn push_after_read(&mut self, now: Instant, prefix: EidPrefix, owner: u16) {
        let started = self.polling.started;
        if !self
            .polling
            .pushes
            .iter()
            .any(|&(p, o, s)| p == prefix && o == owner && s == started)
        {
            self.polling.pushes.push((prefix, owner, started));
        }
        self.observe_soon(now);
    }

    /// Asks for a read of the endpoints as soon as possible.
    pub(crate) fn observe_soon(&mut self, now: Instant) {
        self.polling.due = Some(self.polling.due.map_or(now, |d| d.min(now)));
    }

    pub(crate) fn endpoints_timeout(&self) -> Option<Instant> {
        if self.polling.in_flight.is_some() {
            return None;
        }
        self.polling.due
    }

    /// Starts a read when one is due.
    pub(crate) fn poll_endpoints(&mut self, now: Instant) {
        if self.polling.in_flight.is_some() || self.polling.due.is_none_or(|d| now < d) {
            return;
        }
        let id = self.next_action_id();
        self.polling.in_flight = Some(id);
        self.polling.started += 1;
        self.polling.due = Some(now + self.policy.endpoint_poll);
        self.actions.push_back((id, ControlAction::ReadEndpoints));
    }

    /// The answer to [`ControlAction::ReadEndpoints`].
    pub fn handle_endpoints(
        &mut self,
        now: Instant,
        id: ActionId,
        result: Result<Endpoints, ActionFault>,
    ) {
        if self.polling.in_flight != Some(id) {
            return;
        }
        self.polling.in_flight = None;
        // This read started as number `started`: it answers the pushes
        // queued before it.
        let read = self.polling.started;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.polling.pushes)
            .into_iter()
            .partition(|&(_, _, s)| s < read);
        self.polling.pushes = later;
        let mut pushed: Vec<(EidPrefix, u16)> = Vec::new();
        match result {
            Ok(endpoints) => self.note_endpoints(now, endpoints, &mut pushed),
            Err(ActionFault(e)) => {
                self.counters.action_failures += 1;
                warn!(error = %e, "cannot read the control peers' endpoints");
            }
        }
        for (prefix, owner, _) in due {
            if !pushed.contains(&(prefix, owner)) {
                self.push_to_subscribers(now, prefix, owner);
            }
        }
    }

    /// Records what a read saw; pushes what changed for nodes already known
    /// (adding to `pushed`).
    fn note_endpoints(
        &mut self,
        now: Instant,
        endpoints: Endpoints,
        pushed: &mut Vec<(EidPrefix, u16)>,
    ) {
        for (key, endpoint) in endpoints {
            let Some(&peer) = self.peers_by_key.get(&key) else {
                continue;
            };
            let Some(endpoint) = endpoint else { continue };
            let slot = &mut self.observed[peer as usize];
            if *slot == Some(endpoint) {
                continue;
            }
            let old = slot.replace(endpoint);
            let name = self.policy.peers[peer as usize].name.clone();
            match old {
                Some(old) => {
                    info!(peer = %name, %old, new = %endpoint, "control peer seen at a new endpoint");
                }
                None => debug!(peer = %name, %endpoint, "control peer seen"),
            }
            self.counters.endpoint_changes += 1;
            self.commits.push(StoreOp::Endpoint {
                peer: name,
                endpoint,
            });
            let theirs: Vec<EidPrefix> = self
                .registry
                .prefixes_of(peer)
                .filter(|p| self.registry.get(p).is_some_and(|m| m.is_live(now)))
                .collect();
            // The node itself learns where it is seen through its NAT (its
            // status shows it), or that this changed.
            let natted = theirs.iter().any(|p| {
                self.registry
                    .get(p)
                    .is_some_and(|m| crate::candidates::behind_nat(m, Some(endpoint)))
            });
            if old.is_some() || natted {
                for &prefix in theirs.iter().take(MAX_SELF_NOTIFIES) {
                    self.send_notify(now, peer, prefix, None);
                }
            }
            if old.is_some() && self.policy.push_moves {
                // What its correspondents were handed may no longer work.
                for prefix in theirs {
                    if self.subscriptions.contains_key(&prefix) {
                        self.push_to_subscribers(now, prefix, peer);
                        pushed.push((prefix, peer));
                    }
                }
            }
        }
    }

    /// Re-loads a persisted observed endpoint at start-up.
    pub fn restore_endpoint(&mut self, peer_name: &str, endpoint: SocketAddr) -> bool {
        match self.peers_by_name.get(peer_name) {
            Some(&peer) if self.policy.peers[peer as usize].wg_key.is_some() => {
                self.observed[peer as usize] = Some(endpoint);
                true
            }
            _ => false,
        }
    }
}
