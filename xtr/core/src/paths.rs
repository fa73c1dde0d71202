//! Paths: how each data peer is reached, and its first handshake.
//!
//! A mapping hands us the peer's candidates, best first (its endpoint as the
//! map-server sees it through its NAT, its private address when we sit
//! behind the same NAT, global IPv6 addresses; see the map-server's
//! candidates). Exactly one side of a new pair starts the WireGuard
//! handshake, because two crossed initiations consume each other and stall
//! the pair for 5 s:
//!
//! - **The initiator** is the side that asked (its Map-Reply came, and the
//!   map-server had not told it about the peer first). It programs the peer
//!   at its best candidate and re-injects the held packets, keeping copies.
//!   If no handshake shows within `T = clamp(2 srtt + 20 ms, 50, 300 ms)`,
//!   it removes and re-adds the peer (WireGuard would otherwise wait 5 s
//!   before initiating again) at the next candidate of the plan (the best
//!   one a second time, for a punch that came late, then the others), and
//!   re-injects the copies. After the last it gives up: the copies are
//!   answered with ICMP unreachable.
//! - **The responder** was told about the peer by a Map-Notify. It programs
//!   the peer with no endpoint (so its WireGuard cannot initiate) and no
//!   route (its own packets to the peer wait in the agent: the kernel drops
//!   a peer's packets when it has no endpoint), and punches its NAT open
//!   toward every candidate (a one-byte datagram from the WireGuard port) at
//!   0, 30, 100, 300 and 1000 ms. Once the handshake shows, the route goes
//!   in and the held packets are re-injected. If none comes within 2 s, the
//!   initiator has given up: the responder takes over as initiator.
//!
//! Statistics are read every 10 ms while a responder waits (every 50 ms
//! after the first 300 ms), at each initiator's deadline, and at once when a
//! packet for a waiting responder is held.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Which side starts the handshake of a new pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Initiator => "initiator",
            Role::Responder => "responder",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the first handshake of the current attempt, since `since`;
    /// judged at `deadline`.
    Probing {
        since: Instant,
        deadline: Instant,
    },
    Established {
        since: Instant,
    },
    /// No attempt worked.
    Failed {
        since: Instant,
    },
}

/// Shortest wait for a handshake: WireGuard refuses a second initiation
/// within 20 ms as a replay.
pub(crate) const MIN_ATTEMPT: Duration = Duration::from_millis(50);
pub(crate) const MAX_ATTEMPT: Duration = Duration::from_millis(300);
/// How long a responder waits for the initiator's handshake.
pub(crate) const RESPONDER_WAIT: Duration = Duration::from_secs(2);
/// Both sides can be responders (each was pushed the other's mapping after
/// both restarted): the side with the greater key waits this much longer,
/// so that only one takes over and their first initiations do not cross.
pub(crate) const RESPONDER_TIEBREAK: Duration = Duration::from_secs(1);

/// How long our responder waits for the peer `theirs`, given our key.
pub(crate) fn responder_wait(ours: &[u8; 32], theirs: &[u8; 32]) -> Duration {
    if ours > theirs {
        RESPONDER_WAIT + RESPONDER_TIEBREAK
    } else {
        RESPONDER_WAIT
    }
}
/// When a responder punches, after it learnt the peer.
const PUNCHES: [u64; 5] = [0, 30, 100, 300, 1000];
/// Copies of held packets kept for a failover, at most.
const MAX_COPIES: usize = 8;

#[derive(Debug)]
pub(crate) struct Path {
    pub(crate) role: Role,
    pub(crate) phase: Phase,
    /// The peer's candidates, best first.
    pub(crate) candidates: Vec<SocketAddr>,
    /// Index in the attempt plan.
    attempt: usize,
    /// Copies of the first packets, re-injected after a failover.
    pub(crate) copies: Vec<Vec<u8>>,
    /// When the responder punches next.
    punches: VecDeque<Instant>,
    /// Bumped for a fresh WireGuard peer.
    pub(crate) generation: u32,
    /// An established responder whose peer moved: it follows the pushed
    /// candidates instead of the endpoint WireGuard learnt.
    follow: bool,
    /// How long this responder waits for the initiator.
    wait: Duration,
    /// The candidates that go through a relay (see [`crate::relaying`]).
    pub(crate) relayed: BTreeSet<SocketAddr>,
    /// An endpoint chosen over the plan: a relayed candidate a stalled
    /// path fell back to, or the direct address WireGuard roamed to from
    /// the relay.
    pub(crate) pinned: Option<SocketAddr>,
}

/// The attempt plan over the candidates: the best one twice, then the
/// others.
fn plan(candidates: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut p = Vec::with_capacity(candidates.len() + 1);
    if let Some(&best) = candidates.first() {
        p.push(best);
        p.push(best);
    }
    p.extend(candidates.iter().skip(1));
    p
}

/// How long an attempt waits for its handshake, given the round trip to
/// the map-server and back through the peer (the Map-Request's).
pub(crate) fn attempt_wait(srtt: Duration) -> Duration {
    (srtt * 2 + Duration::from_millis(20)).clamp(MIN_ATTEMPT, MAX_ATTEMPT)
}

impl Path {
    pub(crate) fn initiator(now: Instant, candidates: Vec<SocketAddr>, wait: Duration) -> Path {
        Path {
            role: Role::Initiator,
            phase: Phase::Probing {
                since: now,
                deadline: now + wait,
            },
            candidates,
            attempt: 0,
            copies: Vec::new(),
            punches: VecDeque::new(),
            generation: 0,
            follow: false,
            wait: RESPONDER_WAIT,
            relayed: BTreeSet::new(),
            pinned: None,
        }
    }

    pub(crate) fn responder(now: Instant, candidates: Vec<SocketAddr>, wait: Duration) -> Path {
        Path {
            role: Role::Responder,
            phase: Phase::Probing {
                since: now,
                deadline: now + wait,
            },
            candidates,
            attempt: 0,
            copies: Vec::new(),
            punches: PUNCHES
                .iter()
                .map(|ms| now + Duration::from_millis(*ms))
                .collect(),
            generation: 0,
            follow: false,
            wait,
            relayed: BTreeSet::new(),
            pinned: None,
        }
    }

    /// The endpoint to program. None for a responder: while it waits its
    /// WireGuard must not initiate, and once the handshake came WireGuard
    /// knows the initiator's real source (through a symmetric NAT, not the
    /// endpoint the map-server sees it at).
    pub(crate) fn endpoint(&self) -> Option<SocketAddr> {
        if self.pinned.is_some() {
            return self.pinned;
        }
        match self.role {
            Role::Responder if !self.follow => None,
            _ => plan(&self.candidates)
                .get(self.attempt)
                .copied()
                .or(self.candidates.first().copied()),
        }
    }

    /// Whether the route (and so the peer's traffic) may go in: not while
    /// a responder waits for the handshake, nor while an initiator retries
    /// after its first attempt failed (WireGuard drops what it queued for
    /// a peer that is re-created: the agent holds the packets instead, and
    /// re-injects them once a handshake came).
    /// A path that failed is unrouted too: its packets come to the agent,
    /// which answers them or tries again.
    pub(crate) fn routed(&self) -> bool {
        match self.phase {
            Phase::Established { .. } => true,
            Phase::Probing { .. } => self.role == Role::Initiator && self.attempt == 0,
            Phase::Failed { .. } => false,
        }
    }

    /// When every attempt failed, if they did.
    pub(crate) fn failed_since(&self) -> Option<Instant> {
        match self.phase {
            Phase::Failed { since } => Some(since),
            _ => None,
        }
    }

    pub(crate) fn probing(&self) -> bool {
        matches!(self.phase, Phase::Probing { .. })
    }

    pub(crate) fn established(&self) -> bool {
        matches!(self.phase, Phase::Established { .. })
    }

    pub(crate) fn keep_copies(&mut self, packets: &[Vec<u8>]) {
        for p in packets {
            if self.copies.len() < MAX_COPIES {
                self.copies.push(p.clone());
            }
        }
    }

    /// The candidates to punch toward now: a waiting responder's schedule,
    /// or one asked for by a push.
    pub(crate) fn due_punches(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut due = false;
        while self.punches.front().is_some_and(|t| *t <= now) {
            self.punches.pop_front();
            due = true;
        }
        if due {
            self.targets_for_punch()
        } else {
            Vec::new()
        }
    }

    fn targets_for_punch(&self) -> Vec<SocketAddr> {
        if self.established() {
            self.targets()
        } else {
            self.candidates.clone()
        }
    }

    /// The next instant a statistics read is wanted for this path.
    pub(crate) fn next_check(&self, last_read: Option<Instant>) -> Option<Instant> {
        let Phase::Probing { since, deadline } = self.phase else {
            return None;
        };
        match self.role {
            Role::Initiator if self.routed() => Some(deadline),
            _ => {
                let base = last_read.unwrap_or(since).max(since);
                let step = if base.saturating_duration_since(since) < Duration::from_millis(300) {
                    Duration::from_millis(10)
                } else {
                    Duration::from_millis(50)
                };
                Some((base + step).min(deadline))
            }
        }
    }

    /// The next punch, for the timer.
    pub(crate) fn next_punch(&self) -> Option<Instant> {
        self.punches.front().copied()
    }

    /// The peer of the current attempt is in place (each attempt is a
    /// fresh WireGuard peer): its time starts now.
    pub(crate) fn programmed(&mut self, now: Instant, wait: Duration) {
        if let Phase::Probing { deadline, .. } = &mut self.phase {
            let wait = match self.role {
                Role::Initiator => wait,
                Role::Responder => self.wait,
            };
            *deadline = (*deadline).max(now + wait);
        }
    }

    /// WireGuard reports a handshake for the peer (each attempt is a fresh
    /// WireGuard peer, so any handshake belongs to it: wireguard-go reports
    /// the time only to the second, too coarse to compare).
    pub(crate) fn saw_handshake(&mut self, now: Instant, handshake: bool) -> bool {
        if !self.probing() || !handshake {
            return false;
        }
        self.phase = Phase::Established { since: now };
        self.copies.clear();
        self.punches.retain(|t| *t <= now);
        true
    }

    /// The current attempt's time is up without a handshake. The next step:
    /// `Some(wait)` for a new attempt (a fresh peer at the next endpoint),
    /// `None` when there is nothing left to try.
    pub(crate) fn give_up_attempt(&mut self, now: Instant, wait: Duration) -> Option<Duration> {
        let Phase::Probing { deadline, .. } = self.phase else {
            return None;
        };
        if now < deadline {
            return None;
        }
        match self.role {
            Role::Initiator => {
                if self.attempt + 1 < plan(&self.candidates).len() {
                    self.attempt += 1;
                    self.generation += 1;
                    self.phase = Phase::Probing {
                        since: now,
                        deadline: now + wait,
                    };
                    Some(wait)
                } else {
                    self.phase = Phase::Failed { since: now };
                    None
                }
            }
            Role::Responder => {
                // The initiator gave up on reaching us: we try reaching it.
                self.role = Role::Initiator;
                self.attempt = 0;
                self.generation += 1;
                self.punches.clear();
                self.phase = Phase::Probing {
                    since: now,
                    deadline: now + wait,
                };
                Some(wait)
            }
        }
    }

    /// New candidates for an existing path (a move, a rebinding, a
    /// refresh). An established path keeps going (WireGuard's own roaming
    /// and the new endpoint take over); a responder punches the new ones.
    pub(crate) fn update_candidates(&mut self, now: Instant, candidates: Vec<SocketAddr>) {
        if candidates == self.candidates {
            return;
        }
        self.candidates = candidates;
        self.attempt = 0;
        if self.role == Role::Responder && self.established() {
            self.follow = true;
        }
        if self.role == Role::Responder || self.established() {
            self.punches = std::iter::once(now).collect();
        }
    }

    /// Punch again toward the candidates now (a push told us they moved).
    pub(crate) fn punch_now(&mut self, now: Instant) {
        self.punches.push_front(now);
    }

    /// Punch from a new address of ours (we moved), a few times: the new
    /// NAT then lets the peer's packets in as soon as it is told where we
    /// are, and the first punch may leave before our new route is in place.
    pub(crate) fn punch_series(&mut self, now: Instant) {
        self.punches = PUNCHES
            .iter()
            .take(4)
            .map(|ms| now + Duration::from_millis(*ms))
            .collect();
    }

    /// Where the peer is reached now: the endpoint programmed, or for a
    /// responder the candidates it was handed.
    pub(crate) fn targets(&self) -> Vec<SocketAddr> {
        self.endpoint()
            .map(|e| vec![e])
            .unwrap_or_else(|| self.candidates.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &[&str]) -> Vec<SocketAddr> {
        s.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn an_initiator_tries_the_best_candidate_twice_then_the_others_then_gives_up() {
        let now = Instant::now();
        let w = Duration::from_millis(50);
        let mut p = Path::initiator(now, c(&["192.0.2.1:1", "192.0.2.2:2"]), w);
        assert_eq!(p.endpoint(), Some("192.0.2.1:1".parse().unwrap()));
        assert!(p.routed());
        assert_eq!(p.give_up_attempt(now, w), None, "not before the deadline");
        let t1 = now + w;
        assert_eq!(p.give_up_attempt(t1, w), Some(w));
        assert_eq!(p.endpoint(), Some("192.0.2.1:1".parse().unwrap()));
        assert_eq!(p.generation, 1);
        let t2 = t1 + w;
        assert_eq!(p.give_up_attempt(t2, w), Some(w));
        assert_eq!(p.endpoint(), Some("192.0.2.2:2".parse().unwrap()));
        assert_eq!(p.give_up_attempt(t2 + w, w), None);
        assert!(matches!(p.phase, Phase::Failed { .. }));
    }

    #[test]
    fn a_responder_waits_unrouted_with_no_endpoint_punches_and_then_takes_over() {
        let now = Instant::now();
        let mut p = Path::responder(now, c(&["192.0.2.1:1"]), RESPONDER_WAIT);
        assert_eq!(p.endpoint(), None);
        assert!(!p.routed());
        assert_eq!(p.due_punches(now), c(&["192.0.2.1:1"]));
        assert_eq!(p.due_punches(now), vec![], "once per scheduled time");
        assert_eq!(p.next_punch(), Some(now + Duration::from_millis(30)));
        assert_eq!(
            p.next_check(None),
            Some(now + Duration::from_millis(10)),
            "polls fast at first"
        );
        let late = now + Duration::from_millis(500);
        assert_eq!(
            p.next_check(Some(late)),
            Some(late + Duration::from_millis(50))
        );
        let w = Duration::from_millis(60);
        assert_eq!(p.give_up_attempt(now + RESPONDER_WAIT, w), Some(w));
        assert_eq!(p.role, Role::Initiator);
        assert_eq!(p.endpoint(), Some("192.0.2.1:1".parse().unwrap()));
        assert!(p.routed());
    }

    #[test]
    fn an_attempt_is_timed_from_when_its_peer_is_in_place() {
        let now = Instant::now();
        let mut p = Path::initiator(now, c(&["192.0.2.1:1"]), MIN_ATTEMPT);
        let later = now + Duration::from_millis(400);
        p.programmed(later, MIN_ATTEMPT);
        assert_eq!(p.next_check(None), Some(later + MIN_ATTEMPT));
        assert_eq!(p.give_up_attempt(now + MIN_ATTEMPT, MIN_ATTEMPT), None);
        assert!(!p.saw_handshake(later, false));
        assert!(p.saw_handshake(later, true));
        assert!(p.established());
    }

    #[test]
    fn attempt_wait_is_bounded() {
        assert_eq!(attempt_wait(Duration::ZERO), MIN_ATTEMPT);
        assert_eq!(
            attempt_wait(Duration::from_millis(40)),
            Duration::from_millis(100)
        );
        assert_eq!(attempt_wait(Duration::from_secs(2)), MAX_ATTEMPT);
    }
}
