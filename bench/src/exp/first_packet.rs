//! first-packet: a fresh robot pair (both agents restarted, so neither knows
//! the other), robot-a pings robot-b every 2 ms; the time from the first
//! echo request to the first reply, and how many requests were lost.

use super::{ms, progress, Ctx, Outcome, Produced, Started};
use crate::icmp::{Pinger, Probe};
use crate::report::{Figure, Series};
use crate::stats::summarize;
use crate::svg::{self, RefLine};
use anyhow::{bail, Result};
use serde_json::json;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use testbed::topology::ROBOT_B_EID;
use testbed::Lab;

const NAME: &str = "first-packet";
const INTERVAL: Duration = Duration::from_millis(2);

/// One repetition.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rep {
    /// First request sent → first reply received, ms.
    pub(super) delay_ms: f64,
    /// Requests sent before the first reply that never got one.
    pub(super) lost_before: usize,
    /// Requests sent in the whole run that never got a reply.
    unanswered: usize,
    sent: usize,
    /// Sequence number of the first reply.
    first_seq: u16,
}

pub(super) fn analyse(probes: &[Probe]) -> Option<Rep> {
    let t0 = probes.first()?.sent;
    let first = probes
        .iter()
        .filter_map(|p| p.replied.map(|r| (r, p.seq)))
        .min_by_key(|(r, _)| *r)?;
    let lost_before = probes
        .iter()
        .filter(|p| p.sent <= first.0 && p.replied.is_none())
        .count();
    Some(Rep {
        delay_ms: (first.0 - t0).as_secs_f64() * 1e3,
        lost_before,
        unanswered: probes.iter().filter(|p| p.replied.is_none()).count(),
        sent: probes.len(),
        first_seq: first.1,
    })
}

/// Restarts both agents of `pair`, so that neither knows the other.
pub(super) fn fresh_pair(lab: &mut Lab, pair: [&str; 2]) -> Result<()> {
    for robot in pair {
        lab.stop(robot)?;
    }
    for robot in pair {
        lab.spawn(robot)?;
    }
    for robot in pair {
        lab.wait_ready(robot)?;
    }
    Ok(())
}

pub fn run(ctx: &Ctx) -> Result<Produced> {
    let started = Started::now();
    let reps: usize = if ctx.quick { 5 } else { 100 };
    let dir = ctx.dir(NAME)?;
    progress(NAME, "bringing up the lab (map-server, robot-a, robot-b)");
    let mut lab = super::lab(ctx, &dir.join("lab"), Vec::new(), true)?;
    let dst: Ipv4Addr = ROBOT_B_EID;
    let mut results = Vec::new();
    let mut restart_s = Vec::new();
    for rep in 0..reps {
        testbed::interrupted()?;
        if rep > 0 {
            let t = Instant::now();
            fresh_pair(&mut lab, ["robot-a", "robot-b"])?;
            restart_s.push(t.elapsed().as_secs_f64());
        }
        let probes = lab.ns("robot-a").run(|| -> Result<Vec<Probe>> {
            let pinger = Pinger::new(dst)?;
            let mut first_reply: Option<Instant> = None;
            pinger.run(
                INTERVAL,
                Duration::from_secs(3),
                Duration::from_millis(300),
                |probes| {
                    if first_reply.is_none() {
                        first_reply = probes.iter().filter_map(|p| p.replied).min();
                    }
                    first_reply.is_some_and(|t| t.elapsed() >= Duration::from_millis(20))
                },
            )
        })??;
        let Some(r) = analyse(&probes) else {
            bail!(
                "repetition {}: robot-b never answered {} pings from robot-a",
                rep + 1,
                probes.len()
            );
        };
        if (rep + 1) % 10 == 0 || rep + 1 == reps || ctx.quick {
            progress(
                NAME,
                format!(
                    "{}/{reps}: first reply after {:.3} ms (seq {}), {} lost before it",
                    rep + 1,
                    r.delay_ms,
                    r.first_seq,
                    r.lost_before
                ),
            );
        }
        results.push(r);
    }
    drop(lab);

    let delays: Vec<f64> = results.iter().map(|r| r.delay_ms).collect();
    let lost: Vec<f64> = results.iter().map(|r| r.lost_before as f64).collect();
    let lost_total: usize = results.iter().map(|r| r.lost_before).sum();
    let reps_with_loss = results.iter().filter(|r| r.lost_before > 0).count();
    let s = summarize(&delays);
    let details = json!(results
        .iter()
        .map(|r| json!({
            "delay_ms": r.delay_ms, "lost_before_first_reply": r.lost_before,
            "unanswered_in_run": r.unanswered, "sent": r.sent, "first_reply_seq": r.first_seq,
        }))
        .collect::<Vec<_>>());
    let figures = vec![
        Figure::info("first reply, p50", ms(s.p50))
            .thesis("32.6 ms (OOR+WG), 31.2 ms (OOR)")
            .target("≤ 5 ms", s.p50 <= 5.0),
        Figure::info(
            "requests lost before the first reply",
            format!("{lost_total} in {reps} repetitions ({reps_with_loss} with any loss)"),
        )
        .thesis("the first packets are dropped")
        .target("0", lost_total == 0),
        Figure::info("first reply, p90 / p99 / max", {
            format!("{} / {} / {}", ms(s.p90), ms(s.p99), ms(s.max))
        }),
        Figure::info(
            "agent pair restart + registration (bench overhead)",
            format!("{:.0} ms median", crate::stats::median(&restart_s) * 1e3),
        ),
    ];
    let svg = svg::cdf(
        &format!("First ping reply from a fresh pair ({reps} repetitions)"),
        "milliseconds from the first echo request (log scale)",
        &[("lispwg".into(), delays.clone())],
        &[
            RefLine::new("target p50 5 ms", 5.0),
            RefLine::new("thesis OOR+WG 32.6 ms", 32.6),
        ],
        true,
    );
    let outcome = Outcome {
        title: "First packet delay from a fresh robot pair",
        description: format!(
            "Before each of {reps} repetitions both agents are stopped (SIGTERM: they remove \
             their interfaces, peers and routes) and started again, and the bench waits until \
             both have registered; so neither robot knows the other. Then robot-a sends ICMP \
             echo requests to robot-b's EID every {} ms from a raw socket, and the bench takes \
             the time from the first request to the first reply, and counts the requests sent \
             before that reply which never got one.",
            INTERVAL.as_millis()
        ),
        parameters: json!({
            "repetitions": reps, "interval_ms": INTERVAL.as_millis() as u64,
            "destination": ROBOT_B_EID.to_string(),
        }),
        series: vec![
            Series::new("first reply delay", "ms", delays).with_details(details),
            Series::new("requests lost before the first reply", "requests", lost),
        ],
        notes: [super::if_missed(
            &figures,
            "Why a target is missed: the first reply needs the request held and resolved, \
                 the map-server's Map-Notify to robot-b and its Ack, two peer programmings, a \
                 WireGuard handshake and the echo itself: about eight crossings of userspace \
                 wireguard-go, each a few hundred microseconds of scheduling on this shared \
                 2-core machine. See the per-repetition details in the JSON for lost requests."
                .into(),
        )]
        .into_iter()
        .flatten()
        .chain([
            "The first request is held by robot-a's agent while it resolves robot-b; the \
             map-server tells robot-b about robot-a (Map-Notify) and releases its reply once \
             robot-b has programmed its peer, so the held request and the WireGuard handshake \
             reach a peer that already knows robot-a. The requests sent meanwhile are held too \
             and re-injected, not dropped."
                .into(),
        ])
        .collect(),
        figures,
        svg,
        more_svgs: Vec::new(),
    };
    Ok(ctx.result(NAME, started, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_counts_only_unanswered_requests_before_the_first_reply() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let probes = vec![
            Probe {
                seq: 0,
                sent: at(0),
                replied: None,
            },
            Probe {
                seq: 1,
                sent: at(2),
                replied: Some(at(9)),
            },
            Probe {
                seq: 2,
                sent: at(4),
                replied: Some(at(8)),
            },
            Probe {
                seq: 3,
                sent: at(10),
                replied: None,
            },
        ];
        let r = analyse(&probes).unwrap();
        assert_eq!(r.first_seq, 2);
        assert_eq!(r.lost_before, 1);
        assert_eq!(r.unanswered, 2);
        assert!((r.delay_ms - 8.0).abs() < 1e-6);
    }
}
