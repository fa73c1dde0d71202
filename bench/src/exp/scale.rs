//! scale: fleets of N robots (one namespace, one wireguard-go and one agent
//! each), routed on the campus: the time until all are registered; a burst
//! in which every robot reaches 5 others at once (pairs answered within 2 s,
//! control-session renewals); and, in the largest fleet, pairs of robots
//! that never met reaching each other at the same moment.

use super::{ms, progress, Ctx, Outcome, Produced, Started};
use crate::icmp::{Pinger, Probe};
use crate::report::{Figure, Series};
use crate::stats::summarize;
use crate::svg::{self, RefLine};
use anyhow::{Context, Result};
use serde_json::json;
use std::net::Ipv4Addr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use testbed::{Lab, LabSpec};

const NAME: &str = "scale";
const PEERS_EACH: u8 = 5;
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

fn robot(i: u8) -> String {
    format!("r{i}")
}

fn eid(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 2, 0, i)
}

fn metric_sum(lab: &Lab, n: u8, name: &str) -> Result<f64> {
    let mut sum = 0.0;
    for i in 1..=n {
        let page = lab.fetch(&robot(i), "/metrics")?;
        sum += testbed::metric(&page, name).unwrap_or(0.0);
    }
    Ok(sum)
}

/// One echo request from `from` to `to`, at the barrier: ms to its reply.
fn probe_at(
    lab: &Lab,
    from: u8,
    to: u8,
    start: Arc<Barrier>,
) -> Result<std::thread::JoinHandle<Result<Option<f64>>>> {
    lab.ns(&robot(from)).spawn_thread(move || {
        let pinger = Pinger::new(eid(to))?;
        start.wait();
        // One request (the next would be 10 s later), waiting up to 5 s:
        // a reply after 2 s counts as missed, but its time is kept.
        let probes: Vec<Probe> = pinger.run(
            Duration::from_secs(10),
            Duration::from_secs(5),
            Duration::ZERO,
            |p| p.iter().any(|p| p.replied.is_some()),
        )?;
        Ok(probes
            .first()
            .and_then(|p| p.replied.map(|r| (r - p.sent).as_secs_f64() * 1e3)))
    })
}

struct Fleet {
    n: u8,
    registered_s: f64,
    burst_ms: Vec<f64>,
    pairs: usize,
    renewals: f64,
}

fn fleet(ctx: &Ctx, n: u8) -> Result<(Fleet, Lab)> {
    let dir = ctx.dir(&format!("{NAME}-{n}"))?;
    progress(NAME, format!("N={n}: bringing up {n} robots"));
    let t0 = Instant::now();
    let lab = Lab::up(LabSpec::fleet(n).tag("s"), &dir, &ctx.bins)?;
    testbed::wait_for(
        Duration::from_secs(120),
        Duration::from_millis(50),
        "all robots registered",
        || {
            let page = lab.fetch("map-server", "/metrics")?;
            let entries = testbed::metric(&page, "lispwg_map_server_entries").unwrap_or(0.0);
            Ok((entries >= f64::from(n)).then_some(()))
        },
    )?;
    let registered_s = t0.elapsed().as_secs_f64();
    progress(
        NAME,
        format!("N={n}: all registered {registered_s:.1} s after the start"),
    );

    let renewals0 = metric_sum(&lab, n, "lispwg_xtr_control_renewals_total")?;
    let each = PEERS_EACH.min(n - 1);
    let start = Arc::new(Barrier::new(usize::from(n) * usize::from(each)));
    let mut probes = Vec::new();
    for i in 1..=n {
        for k in 1..=each {
            let to = (i - 1 + k) % n + 1;
            probes.push(probe_at(&lab, i, to, start.clone())?);
        }
    }
    let mut burst_ms = Vec::new();
    let pairs = probes.len();
    for p in probes {
        if let Some(ms) = p
            .join()
            .map_err(|_| anyhow::anyhow!("a prober panicked"))??
        {
            burst_ms.push(ms);
        }
    }
    testbed::sleep(Duration::from_secs(1))?;
    let renewals = metric_sum(&lab, n, "lispwg_xtr_control_renewals_total")? - renewals0;
    let answered = burst_ms
        .iter()
        .filter(|&&m| m <= ANSWER_WITHIN.as_secs_f64() * 1e3)
        .count();
    progress(NAME, format!("N={n}: burst: {answered}/{pairs} pairs answered within 2 s, {renewals} control renewals"));
    Ok((
        Fleet {
            n,
            registered_s,
            burst_ms,
            pairs,
            renewals,
        },
        lab,
    ))
}

/// Robots `a` and `b`, which never reached each other, ping each other at
/// the same moment: the slower of the two first replies, ms (5 000 when
/// none came within 5 s).
fn simultaneous(lab: &Lab, a: u8, b: u8) -> Result<f64> {
    let start = Arc::new(Barrier::new(2));
    let ab = probe_at(lab, a, b, start.clone())?;
    let ba = probe_at(lab, b, a, start)?;
    let mut worst: f64 = 0.0;
    for p in [ab, ba] {
        let t = p
            .join()
            .map_err(|_| anyhow::anyhow!("a prober panicked"))??
            .unwrap_or(5000.0);
        worst = worst.max(t);
    }
    Ok(worst)
}

/// Pairs of the fleet of `n` that the burst (each robot to the next
/// [`PEERS_EACH`]) did not join, each robot in at most two: (i, i + n/5)
/// for the first half, (i, i + 2n/5) for the second.
fn fresh_pairs(n: u8, want: usize) -> Vec<(u8, u8)> {
    let at = |i: u8, d: u8| (i, (i - 1 + d) % n + 1);
    let (d1, d2) = (n / 5, 2 * n / 5);
    let mut pairs: Vec<(u8, u8)> = (1..=n / 2).map(|i| at(i, d1)).collect();
    pairs.extend((n / 2 + 1..=n).map(|i| at(i, d2)));
    pairs.truncate(want);
    pairs
}

pub fn run(ctx: &Ctx) -> Result<Produced> {
    let started = Started::now();
    let sizes: &[u8] = if ctx.quick { &[4, 8] } else { &[10, 50, 100] };
    let trials = if ctx.quick { 5 } else { 100 };
    let mut fleets = Vec::new();
    let mut pair_ms = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let (f, lab) = fleet(ctx, n)?;
        if k + 1 == sizes.len() {
            // In the largest fleet, pairs that never reached each other.
            let pairs = fresh_pairs(n, trials);
            for (t, &(a, b)) in pairs.iter().enumerate() {
                testbed::interrupted()?;
                let ms = simultaneous(&lab, a, b)
                    .with_context(|| format!("simultaneous pair r{a} r{b}"))?;
                pair_ms.push(ms);
                if (t + 1) % 10 == 0 || t + 1 == pairs.len() {
                    progress(
                        NAME,
                        format!(
                            "simultaneous pairs {}/{}: last {ms:.1} ms",
                            t + 1,
                            pairs.len()
                        ),
                    );
                }
            }
        }
        drop(lab);
        fleets.push(f);
    }

    let mut figures = Vec::new();
    for f in &fleets {
        let answered = f.burst_ms.iter().filter(|&&m| m <= 2000.0).count();
        let pct = 100.0 * answered as f64 / f.pairs as f64;
        let s = summarize(&f.burst_ms);
        let fig = Figure::info(
            format!("N={}: burst pairs answered within 2 s", f.n),
            format!("{pct:.1} % ({answered}/{}), p50 {}, max {}; {} renewals; all registered {:.1} s after the start", f.pairs, ms(s.p50), ms(s.max), f.renewals, f.registered_s),
        );
        figures.push(
            if f.n == 50 || (ctx.quick && f.n == *sizes.last().unwrap_or(&0)) {
                fig.target("≥ 99.5 %, 0 renewals", pct >= 99.5 && f.renewals == 0.0)
            } else {
                fig
            },
        );
    }
    let p = summarize(&pair_ms);
    figures.push(
        Figure::info(
            "simultaneous pair: first reply p99 (slower side)",
            ms(p.p99),
        )
        .target("≤ 50 ms", p.p99 <= 50.0),
    );
    let stalls = pair_ms.iter().filter(|&&m| m >= 4000.0).count();
    figures.push(
        Figure::info(
            "simultaneous pair: 5 s stalls",
            format!("{stalls} of {}", pair_ms.len()),
        )
        .target("none", stalls == 0),
    );

    let mut series: Vec<(String, Vec<f64>)> = fleets
        .iter()
        .map(|f| (format!("burst, N={}", f.n), f.burst_ms.clone()))
        .collect();
    series.push(("simultaneous pair (slower side)".into(), pair_ms.clone()));
    let svg = svg::cdf(
        "First reply: fleet bursts and simultaneous pairs",
        "milliseconds (log scale)",
        &series,
        &[RefLine::new("2 s", 2000.0), RefLine::new("50 ms", 50.0)],
        true,
    );
    let outcome = Outcome {
        title: "Fleets of robots",
        description: format!(
            "Fleets of {sizes:?} robots, each in its own namespace with its own wireguard-go and \
             agent, on the campus's two routed subnets, one map-server. Measured: the time from \
             the start of the lab until the map-server holds every robot's registration; then a \
             burst in which every robot pings {PEERS_EACH} others at the same moment (one echo \
             request each; answered means a reply within 2 s), with the control-session \
             renewals the agents made meanwhile; then, in the largest fleet, up to {trials} \
             pairs of robots that never reached each other ping each other at the same moment \
             (one echo request each way; the slower side's first reply counts)."
        ),
        parameters: json!({"sizes": sizes, "peers_each": PEERS_EACH, "simultaneous_trials": trials}),
        series: fleets
            .iter()
            .map(|f| Series::new(format!("burst N={}", f.n), "ms", f.burst_ms.clone()))
            .chain([Series::new("simultaneous pair", "ms", pair_ms)])
            .collect(),
        notes: [super::if_missed(
            &figures,
            "Why a target is missed: every robot's wireguard-go and agent, and the map-server's, \
             share this machine's 2 cores; at the larger sizes the burst is CPU-bound (see \
             the p50 against the smallest fleet)."
                .into(),
        )]
        .into_iter()
        .flatten()
        .collect(),
        figures,
        svg,
        more_svgs: Vec::new(),
    };
    Ok(ctx.result(NAME, started, outcome))
}
