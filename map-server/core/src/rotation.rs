//! Key rotation: a node moves to a new WireGuard key without an outage.
//!
//! The node asks over its control tunnel (so the old key vouches for the
//! new one). The core switches the peer's key at once, re-keys its
//! registrations and pushes them to every correspondent (which program the
//! new key as responders, holding their packets for the node until its
//! first handshake), and stages a control peer for the new key. Once every
//! correspondent has acknowledged (or after a second), the rotation is
//! ready: the shell answers the node, which switches its own key; a moment
//! later the control tunnel's address moves to the new key and the old
//! control peer goes.

use crate::io::{ControlAction, StoreOp};
use crate::registry::Origin;
use crate::MapServer;
use lisp_wire::EidPrefix;
use std::time::{Duration, Instant};
use tracing::info;

/// How long correspondents get to acknowledge the new key.
const ROTATION_WAIT: Duration = Duration::from_secs(1);
/// How long after the answer the control address moves to the new key: the
/// answer leaves through the old key's session first.
const SWAP_DELAY: Duration = Duration::from_millis(50);

/// Identifies a rotation to the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RotationId(pub u64);

/// Why a rotation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationRefused {
    #[error("no such keyed control peer")]
    UnknownPeer,
    #[error("the new key is the current one")]
    SameKey,
    #[error("the new key belongs to another peer")]
    KeyInUse,
    #[error("a rotation of this peer is under way")]
    Busy,
}

#[derive(Debug)]
pub(crate) struct Rotation {
    id: u64,
    peer: u16,
    old_key: [u8; 32],
    new_key: [u8; 32],
    prefixes: Vec<EidPrefix>,
    deadline: Instant,
    /// Set once the node was answered: when the control address moves.
    swap_at: Option<Instant>,
    ready: bool,
}

impl MapServer {
    /// The keyed control peer at `control_address`, if any.
    pub fn tunnel_peer_at(&self, control_address: std::net::IpAddr) -> Option<u16> {
        self.tunnel_peers.get(&control_address).copied()
    }

    /// Starts moving control peer `peer` to `new_key` (see the module).
    pub fn handle_rotation(
        &mut self,
        now: Instant,
        peer: u16,
        new_key: [u8; 32],
    ) -> Result<RotationId, RotationRefused> {
        let Some(p) = self.policy.peers.get(peer as usize).filter(|p| !p.revoked) else {
            return Err(RotationRefused::UnknownPeer);
        };
        let Some(old_key) = p.wg_key else {
            return Err(RotationRefused::UnknownPeer);
        };
        if old_key == new_key {
            return Err(RotationRefused::SameKey);
        }
        if self.peers_by_key.contains_key(&new_key) {
            return Err(RotationRefused::KeyInUse);
        }
        if self.rotations.iter().any(|r| r.peer == peer) {
            return Err(RotationRefused::Busy);
        }
        let name = p.name.clone();
        self.policy.peers[peer as usize].wg_key = Some(new_key);
        self.index_peers(now);
        let prefixes: Vec<EidPrefix> = self.registry.prefixes_of(peer).collect();
        for &prefix in &prefixes {
            let Some(m) = self.registry.get(&prefix) else {
                continue;
            };
            if m.origin != Origin::Peer(peer) {
                continue;
            }
            let mut m = m.clone();
            m.wg_key = Some(new_key);
            self.registry.insert(prefix, m.clone());
            self.commits.push(StoreOp::Put {
                prefix,
                mapping: m,
                peer: name.clone(),
            });
            self.push_to_subscribers(now, prefix, peer);
        }
        self.push_action(ControlAction::StageControlPeer { key: new_key });
        let id = self.next_rotation;
        self.next_rotation += 1;
        self.rotations.push(Rotation {
            id,
            peer,
            old_key,
            new_key,
            prefixes,
            deadline: now + ROTATION_WAIT,
            swap_at: None,
            ready: false,
        });
        self.counters.rotations += 1;
        info!(peer = %name, old = %crate::fleet::key_hint(&old_key), new = %crate::fleet::key_hint(&new_key), "key rotation started; correspondents told");
        Ok(RotationId(id))
    }

    /// A rotation made at another map-server, found in the peers directory
    /// by a reload: the registrations take the new key, correspondents are
    /// pushed it, and the control peer moves to it at once (the node has
    /// switched already).
    pub(crate) fn follow_rotation(&mut self, now: Instant, peer: u16, new: crate::PeerPolicy) {
        let (Some(old_key), Some(new_key)) = (self.policy.peers[peer as usize].wg_key, new.wg_key)
        else {
            return;
        };
        let name = new.name.clone();
        let control_address = new.control_address;
        self.policy.peers[peer as usize] = new;
        self.index_peers(now);
        let prefixes: Vec<EidPrefix> = self.registry.prefixes_of(peer).collect();
        for prefix in prefixes {
            let Some(m) = self
                .registry
                .get(&prefix)
                .filter(|m| m.origin == Origin::Peer(peer))
            else {
                continue;
            };
            let mut m = m.clone();
            m.wg_key = Some(new_key);
            self.registry.insert(prefix, m.clone());
            self.commits.push(StoreOp::Put {
                prefix,
                mapping: m,
                peer: name.clone(),
            });
            self.push_to_subscribers(now, prefix, peer);
        }
        self.push_action(ControlAction::AddControlPeer {
            key: new_key,
            control_address,
        });
        self.push_action(ControlAction::RemoveControlPeer { key: old_key });
        self.counters.rotations += 1;
        info!(peer = %name, new = %crate::fleet::key_hint(&new_key), "key rotated at another map-server; followed");
    }

    /// A rotation whose correspondents have all acknowledged the new key
    /// (or whose wait is over): answer its node now, then report it with
    /// [`MapServer::rotation_answered`].
    pub fn poll_rotation_ready(&mut self, now: Instant) -> Option<RotationId> {
        let pending = &self.pending;
        let r = self.rotations.iter_mut().find(|r| {
            !r.ready
                && (now >= r.deadline
                    || !pending
                        .values()
                        .any(|n| r.prefixes.contains(&n.about) && n.peer != r.peer))
        })?;
        r.ready = true;
        Some(RotationId(r.id))
    }

    /// The node was answered: its control address moves to the new key in
    /// a moment.
    pub fn rotation_answered(&mut self, now: Instant, id: RotationId) {
        if let Some(r) = self.rotations.iter_mut().find(|r| r.id == id.0) {
            r.swap_at = Some(now + SWAP_DELAY);
        }
    }

    /// Moves the control addresses of answered rotations.
    pub(crate) fn finish_rotations(&mut self, now: Instant) {
        let done: Vec<usize> = (0..self.rotations.len())
            .filter(|&i| self.rotations[i].swap_at.is_some_and(|t| now >= t))
            .collect();
        for i in done.into_iter().rev() {
            let r = self.rotations.remove(i);
            let Some(p) = self.policy.peers.get(r.peer as usize).cloned() else {
                continue;
            };
            if p.wg_key == Some(r.new_key) {
                self.push_action(ControlAction::AddControlPeer {
                    key: r.new_key,
                    control_address: p.control_address,
                });
            }
            self.push_action(ControlAction::RemoveControlPeer { key: r.old_key });
            info!(peer = %p.name, "key rotation done; the old key's control peer is gone");
        }
    }

    /// When the next rotation needs the core: ready by deadline, or swap.
    pub(crate) fn rotation_timeout(&self) -> Option<Instant> {
        self.rotations
            .iter()
            .map(|r| match (r.ready, r.swap_at) {
                (_, Some(t)) => t,
                (false, None) => r.deadline,
                (true, None) => r.deadline + Duration::from_secs(3600),
            })
            .min()
    }
}
