//! Durability: store operations wait here for the shell to commit them, and
//! transmits that promise durability (the Map-Notify confirming a
//! registration) wait until the operations before them are on disk.
//!
//! A failed commit keeps its operations (the last one per prefix) and is
//! retried with backoff; the confirmations it held back are dropped, so the
//! nodes re-register and are confirmed by a later commit. Nothing is ever
//! confirmed that is not on disk, and a failure never wedges the queue.

use crate::io::{Commit, CommitId, StoreFault, StoreOp, Transmit};
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// A store fault that is still going on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultStatus {
    pub since: Instant,
    pub error: String,
    /// Failed commits since it began.
    pub failures: u64,
}

#[derive(Debug)]
pub(crate) struct Commits {
    /// Sequence number the next operation gets.
    next_seq: u64,
    /// Operations not yet handed to the shell, with their sequence numbers.
    queued: Vec<(u64, StoreOp)>,
    /// The commit the shell is carrying out: its operations, kept until it
    /// reports back, and the sequence number just past its last one.
    in_flight: Option<(CommitId, Vec<(u64, StoreOp)>)>,
    /// Every operation numbered below this is on disk.
    durable: u64,
    /// Transmits waiting for the operations numbered below `.0`.
    withheld: VecDeque<(u64, Transmit)>,
    released: VecDeque<Transmit>,
    retry_at: Option<Instant>,
    backoff: Duration,
    fault: Option<FaultStatus>,
    pub(crate) commits: u64,
    pub(crate) failures: u64,
    pub(crate) withheld_dropped: u64,
}

impl Commits {
    pub(crate) fn new() -> Self {
        Commits {
            next_seq: 0,
            queued: Vec::new(),
            in_flight: None,
            durable: 0,
            withheld: VecDeque::new(),
            released: VecDeque::new(),
            retry_at: None,
            backoff: FIRST_RETRY,
            fault: None,
            commits: 0,
            failures: 0,
            withheld_dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, op: StoreOp) {
        self.queued.push((self.next_seq, op));
        self.next_seq += 1;
    }

    /// A transmit that may only leave once every operation queued so far is
    /// durable.
    pub(crate) fn push_durable(&mut self, t: Transmit) {
        if self.next_seq <= self.durable {
            self.released.push_back(t);
        } else {
            self.withheld.push_back((self.next_seq, t));
        }
    }

    pub(crate) fn poll_released(&mut self) -> Option<Transmit> {
        self.released.pop_front()
    }

    /// The next commit to carry out: everything queued, the last operation
    /// per prefix only. One at a time, and not before a retry is due.
    pub(crate) fn poll_commit(&mut self, now: Instant) -> Option<Commit> {
        if self.in_flight.is_some() || self.queued.is_empty() {
            return None;
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        // Every operation numbered below next_seq is in this commit, or
        // superseded by a later one in it.
        let ops = coalesce(std::mem::take(&mut self.queued));
        let id = CommitId(self.next_seq);
        let commit = Commit {
            id,
            ops: ops.iter().map(|(_, op)| op.clone()).collect(),
        };
        self.in_flight = Some((id, ops));
        Some(commit)
    }

    /// The outcome of a commit. Returns the fault that just ended, if any,
    /// so the caller can log the recovery once.
    pub(crate) fn handle_result(
        &mut self,
        now: Instant,
        id: CommitId,
        result: Result<(), StoreFault>,
    ) -> CommitOutcome {
        let Some((in_flight, ops)) = self.in_flight.take() else {
            return CommitOutcome::Unknown;
        };
        if in_flight != id {
            self.in_flight = Some((in_flight, ops));
            return CommitOutcome::Unknown;
        }
        match result {
            Ok(()) => {
                self.commits += 1;
                self.durable = id.0;
                while let Some((needs, _)) = self.withheld.front() {
                    if *needs > self.durable {
                        break;
                    }
                    let (_, t) = self.withheld.pop_front().expect("front exists");
                    self.released.push_back(t);
                }
                self.retry_at = None;
                self.backoff = FIRST_RETRY;
                match self.fault.take() {
                    Some(f) => CommitOutcome::Recovered(f),
                    None => CommitOutcome::Committed,
                }
            }
            Err(StoreFault(error)) => {
                self.failures += 1;
                // Put the operations back before anything queued since, so
                // the last operation per prefix still wins.
                let mut ops = ops;
                ops.append(&mut self.queued);
                self.queued = ops;
                // What these confirmations promised is not on disk: drop them.
                let before = self.withheld.len();
                self.withheld.retain(|(needs, _)| *needs <= self.durable);
                self.withheld_dropped += (before - self.withheld.len()) as u64;
                self.retry_at = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_RETRY);
                let first = self.fault.is_none();
                let fault = self.fault.get_or_insert(FaultStatus {
                    since: now,
                    error: error.clone(),
                    failures: 0,
                });
                fault.failures += 1;
                fault.error = error;
                if first {
                    CommitOutcome::FaultBegan
                } else {
                    CommitOutcome::StillFailing
                }
            }
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.queued.is_empty() || self.in_flight.is_some() {
            None
        } else {
            self.retry_at
        }
    }

    pub(crate) fn fault(&self) -> Option<&FaultStatus> {
        self.fault.as_ref()
    }

    /// Operations not yet known to be on disk.
    pub(crate) fn unsaved(&self) -> usize {
        self.queued.len() + self.in_flight.as_ref().map_or(0, |(_, ops)| ops.len())
    }
}

/// What a commit result meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CommitOutcome {
    Committed,
    Recovered(FaultStatus),
    FaultBegan,
    StillFailing,
    /// Not the commit in flight (a stale or duplicate report): ignored.
    Unknown,
}

/// Keeps only the last operation per key, in order: all a commit needs,
/// and it bounds what is kept while the disk is failing.
fn coalesce(ops: Vec<(u64, StoreOp)>) -> Vec<(u64, StoreOp)> {
    let mut seen = HashSet::new();
    let mut kept: Vec<(u64, StoreOp)> = ops
        .into_iter()
        .rev()
        .filter(|(_, op)| seen.insert(op.key()))
        .collect();
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Via;
    use lisp_wire::EidPrefix;

    fn del(last: u8) -> StoreOp {
        StoreOp::Delete(EidPrefix::host(0, [10, 0, 0, last].into()))
    }

    fn t(n: u8) -> Transmit {
        Transmit {
            via: Via::Tunnel,
            dst: "100.64.0.2:4342".parse().unwrap(),
            payload: vec![n],
        }
    }

    #[test]
    fn confirmations_wait_for_their_commit() {
        let now = Instant::now();
        let mut c = Commits::new();
        c.push(del(1));
        c.push_durable(t(1));
        assert_eq!(c.poll_released(), None);
        let commit = c.poll_commit(now).unwrap();
        assert_eq!(commit.ops.len(), 1);
        assert_eq!(c.poll_commit(now), None, "one commit at a time");
        // Queued while the first is in flight: waits for the second commit.
        c.push(del(2));
        c.push_durable(t(2));
        assert_eq!(
            c.handle_result(now, commit.id, Ok(())),
            CommitOutcome::Committed
        );
        assert_eq!(c.poll_released(), Some(t(1)));
        assert_eq!(c.poll_released(), None);
        let second = c.poll_commit(now).unwrap();
        c.handle_result(now, second.id, Ok(()));
        assert_eq!(c.poll_released(), Some(t(2)));
        // Nothing pending: a durable transmit goes at once.
        c.push_durable(t(3));
        assert_eq!(c.poll_released(), Some(t(3)));
    }

    #[test]
    fn a_failed_commit_drops_its_confirmations_and_is_retried_with_backoff() {
        let now = Instant::now();
        let mut c = Commits::new();
        c.push(del(1));
        c.push_durable(t(1));
        let commit = c.poll_commit(now).unwrap();
        c.push(del(1));
        c.push(del(2));
        let fault = StoreFault("No space left on device".into());
        assert_eq!(
            c.handle_result(now, commit.id, Err(fault.clone())),
            CommitOutcome::FaultBegan
        );
        assert_eq!(c.poll_released(), None, "never confirmed");
        assert_eq!(c.withheld_dropped, 1);
        assert_eq!(c.fault().unwrap().error, fault.0);
        assert_eq!(c.poll_commit(now), None, "backing off");
        let due = c.poll_timeout().unwrap();
        assert!(due > now);
        let retry = c.poll_commit(due).unwrap();
        assert_eq!(retry.ops, vec![del(1), del(2)], "coalesced, in order");
        assert_eq!(
            c.handle_result(due, retry.id, Err(fault.clone())),
            CommitOutcome::StillFailing
        );
        let later = c.poll_timeout().unwrap();
        assert!(later - due > due - now, "backs off");
        let retry = c.poll_commit(later).unwrap();
        c.push_durable(t(9));
        assert!(matches!(
            c.handle_result(later, retry.id, Ok(())),
            CommitOutcome::Recovered(_)
        ));
        assert!(c.fault().is_none());
        assert_eq!(c.poll_released(), Some(t(9)));
        assert_eq!(c.unsaved(), 0);
    }

    #[test]
    fn a_stale_result_is_ignored() {
        let now = Instant::now();
        let mut c = Commits::new();
        c.push(del(1));
        let commit = c.poll_commit(now).unwrap();
        assert_eq!(
            c.handle_result(now, CommitId(999), Ok(())),
            CommitOutcome::Unknown
        );
        assert_eq!(c.unsaved(), 1);
        c.handle_result(now, commit.id, Ok(()));
        assert_eq!(c.unsaved(), 0);
    }
}
