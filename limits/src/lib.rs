//! Budgets that keep one party from starving the others: a token bucket for
//! messages ([`TokenBucket`]) and a per-key budget of log lines with a count
//! of what it held back ([`LogBudget`]). Time is an input (`now`), so the
//! protocol cores use them in their fake-time tests as in production.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A rate and a burst: `rate` events per second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub const fn new(per_second: f64, burst: f64) -> Self {
        Rate { per_second, burst }
    }

    /// No limit at all (an infinite rate).
    pub const UNLIMITED: Rate = Rate {
        per_second: f64::INFINITY,
        burst: f64::INFINITY,
    };
}

/// A token bucket: starts full, refills at `rate.per_second`, holds at most
/// `rate.burst`. Each event that finds a token takes it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: rate.burst,
            last: now,
        }
    }

    /// Takes a token if there is one; false when the budget is spent.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate.per_second.is_infinite() {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Log lines per key (a peer, a source address) per interval. Past the
/// budget, lines are counted instead of written, and [`LogBudget::drain`]
/// hands back each key's count once its interval is over, for one
/// "suppressed N" summary line.
#[derive(Debug)]
pub struct LogBudget<K> {
    lines: u32,
    interval: Duration,
    /// Per key: start of its current interval, lines written, lines held back.
    keys: HashMap<K, (Instant, u32, u64)>,
    /// Keys tracked at most: beyond, new keys share one budget, so that a
    /// spoofed-source flood cannot grow this map.
    max_keys: usize,
    overflow: (Instant, u32, u64),
}

/// Whether to write a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Log,
    Suppress,
}

impl<K: Hash + Eq + Clone> LogBudget<K> {
    pub fn new(lines: u32, interval: Duration, max_keys: usize, now: Instant) -> Self {
        LogBudget {
            lines,
            interval,
            keys: HashMap::new(),
            max_keys,
            overflow: (now, 0, 0),
        }
    }

    /// Whether the next line about `key` may be written at `now`.
    pub fn check(&mut self, key: &K, now: Instant) -> Verdict {
        let slot = if let Some(s) = self.keys.get_mut(key) {
            s
        } else if self.keys.len() < self.max_keys {
            self.keys.entry(key.clone()).or_insert((now, 0, 0))
        } else {
            &mut self.overflow
        };
        if now.saturating_duration_since(slot.0) >= self.interval && slot.2 == 0 {
            *slot = (now, 0, 0);
        }
        if slot.1 < self.lines {
            slot.1 += 1;
            Verdict::Log
        } else {
            slot.2 += 1;
            Verdict::Suppress
        }
    }

    /// The keys whose interval is over and that had lines held back, with
    /// how many (`None` stands for the shared overflow budget). Their
    /// budgets start again; idle keys are forgotten.
    pub fn drain(&mut self, now: Instant) -> Vec<(Option<K>, u64)> {
        let interval = self.interval;
        let mut out = Vec::new();
        self.keys.retain(|k, slot| {
            if now.saturating_duration_since(slot.0) < interval {
                return true;
            }
            if slot.2 > 0 {
                out.push((Some(k.clone()), slot.2));
            }
            false
        });
        if now.saturating_duration_since(self.overflow.0) >= interval {
            if self.overflow.2 > 0 {
                out.push((None, self.overflow.2));
            }
            self.overflow = (now, 0, 0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::new(10.0, 5.0), t0);
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 5);
        // 1 s later: 10 more tokens, capped at the burst of 5.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| b.take(t1)).count(), 5);
        // 100 ms later: one.
        let t2 = t1 + Duration::from_millis(100);
        assert!(b.take(t2));
        assert!(!b.take(t2));
    }

    #[test]
    fn an_unlimited_bucket_never_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::UNLIMITED, t0);
        assert!((0..10_000).all(|_| b.take(t0)));
    }

    #[test]
    fn log_lines_past_the_budget_are_counted_and_summarised_once() {
        let t0 = Instant::now();
        let mut l = LogBudget::new(3, Duration::from_secs(10), 16, t0);
        let verdicts: Vec<_> = (0..100).map(|_| l.check(&"a", t0)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Log).count(), 3);
        // Another key has its own budget.
        assert_eq!(l.check(&"b", t0), Verdict::Log);
        assert!(l.drain(t0 + Duration::from_secs(5)).is_empty());
        let summary = l.drain(t0 + Duration::from_secs(10));
        assert_eq!(summary, vec![(Some("a"), 97)]);
        // After the summary the budget starts again.
        assert_eq!(l.check(&"a", t0 + Duration::from_secs(11)), Verdict::Log);
    }

    #[test]
    fn keys_beyond_the_cap_share_one_budget() {
        let t0 = Instant::now();
        let mut l = LogBudget::new(1, Duration::from_secs(10), 2, t0);
        let logged = (0..1000u32)
            .filter(|k| l.check(k, t0) == Verdict::Log)
            .count();
        // Two tracked keys, one line each, plus one for all the others.
        assert_eq!(logged, 3);
        let summary = l.drain(t0 + Duration::from_secs(10));
        assert_eq!(summary, vec![(None, 997)]);
    }

    proptest! {
        /// Over any run of events, a bucket lets through at most its burst
        /// plus its rate times the elapsed time.
        #[test]
        fn a_bucket_never_exceeds_burst_plus_rate(steps in proptest::collection::vec((0u64..50, 1usize..20), 1..100)) {
            let t0 = Instant::now();
            let rate = Rate::new(100.0, 10.0);
            let mut b = TokenBucket::new(rate, t0);
            let mut now = t0;
            let mut taken = 0usize;
            for (ms, n) in steps {
                now += Duration::from_millis(ms);
                taken += (0..n).filter(|_| b.take(now)).count();
            }
            let bound = rate.burst + rate.per_second * now.duration_since(t0).as_secs_f64();
            prop_assert!(taken as f64 <= bound + 1e-9);
        }
    }
}
