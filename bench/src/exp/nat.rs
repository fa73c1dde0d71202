//! nat: robots behind nftables NAT routers (endpoint-independent mapping,
//! address-and-port-dependent filtering, as campus routers do).
//!
//! - first reply through two NATs from a fresh pair (both agents
//!   restarted), and whether the tunnel is direct;
//! - handover from one NAT to another while robot-a pings every 10 ms;
//! - recovery after robot-b's NAT restarts and remaps it, while robot-b
//!   sends, and with no traffic at all;
//! - the first reply over an IPv6 underlay (no NAT), for comparison.

use super::{ms, progress, Ctx, Outcome, Produced, Started};
use crate::icmp::{Pinger, Probe};
use crate::report::{Figure, Series};
use crate::stats::summarize;
use crate::svg::{self, RefLine};
use anyhow::{bail, Result};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed::nat::NatKind;
use testbed::topology::{Attach, Family, Segment, ROBOT_A_EID, ROBOT_B_EID};
use testbed::{Lab, LabSpec};

const NAME: &str = "nat";
const INTERVAL: Duration = Duration::from_millis(10);

/// The NAT lab: robot-a behind n1 on subnet A; robot-b behind n2 on subnet
/// B, with a second uplink behind n3 on subnet A to move to.
fn nat_lab(ctx: &Ctx, dir: &Path) -> Result<Lab> {
    let spec = LabSpec::campus()
        .tag("bn")
        .without("edge")
        .nat("n1", NatKind::Eim, Segment::SubnetA)
        .nat("n2", NatKind::Eim, Segment::SubnetB)
        .nat("n3", NatKind::Eim, Segment::SubnetA)
        .behind("robot-a", "n1")
        .uplinks(
            "robot-b",
            &[Attach::Nat("n2".into()), Attach::Nat("n3".into())],
        );
    Lab::up(spec, dir, &ctx.bins)
}

fn v6_lab(ctx: &Ctx, dir: &Path) -> Result<Lab> {
    let spec = LabSpec::campus()
        .tag("b6")
        .without("edge")
        .family("robot-a", Family::V6)
        .family("robot-b", Family::V6);
    Lab::up(spec, dir, &ctx.bins)
}

/// First replies from `reps` fresh pairs; with `direct_to`, also whether
/// robot-a's peer for robot-b is at that address (direct through its NAT).
fn first_replies(
    lab: &mut Lab,
    reps: usize,
    direct_to: Option<std::net::IpAddr>,
    what: &str,
) -> Result<(Vec<f64>, usize, usize)> {
    let b_key = lab.public_key("robot-b")?;
    let (mut delays, mut lost, mut direct) = (Vec::new(), 0, 0);
    for rep in 0..reps {
        testbed::interrupted()?;
        if rep > 0 {
            super::first_packet::fresh_pair(lab, ["robot-a", "robot-b"])?;
        }
        let probes = lab.ns("robot-a").run(|| -> Result<Vec<Probe>> {
            let pinger = Pinger::new(ROBOT_B_EID)?;
            let mut first: Option<Instant> = None;
            pinger.run(
                Duration::from_millis(2),
                Duration::from_secs(3),
                Duration::from_millis(300),
                |probes| {
                    if first.is_none() {
                        first = probes.iter().filter_map(|p| p.replied).min();
                    }
                    first.is_some_and(|t| t.elapsed() >= Duration::from_millis(20))
                },
            )
        })??;
        let Some(r) = super::first_packet::analyse(&probes) else {
            bail!("{what} {}: robot-b never answered", rep + 1);
        };
        delays.push(r.delay_ms);
        lost += r.lost_before;
        if let Some(ip) = direct_to {
            let at = lab
                .wg_show("robot-a", "endpoints")
                .into_iter()
                .find(|(k, _)| *k == b_key)
                .map(|(_, e)| e)
                .unwrap_or_default();
            if at.starts_with(&format!("{ip}:")) {
                direct += 1;
            }
        }
        if (rep + 1) % 20 == 0 || rep + 1 == reps {
            progress(
                NAME,
                format!("{what}: {}/{reps}, last {:.3} ms", rep + 1, r.delay_ms),
            );
        }
    }
    Ok((delays, lost, direct))
}

/// Outage of each move of robot-b between n2 and n3 while robot-a pings.
fn nat_moves(lab: &mut Lab, moves: usize, window: Duration) -> Result<Vec<(f64, bool)>> {
    let stop = Arc::new(AtomicBool::new(false));
    let limit = window * (moves as u32 + 4) + Duration::from_secs(10);
    let flag = stop.clone();
    let pinger = lab.ns("robot-a").spawn_thread(move || {
        Pinger::new(ROBOT_B_EID)?.run_until(INTERVAL, limit, Duration::from_millis(200), flag)
    })?;
    let mut marks = Vec::new();
    let mut away = false;
    let result = (|| -> Result<()> {
        testbed::sleep(Duration::from_millis(600))?;
        for _ in 0..moves {
            lab.check_daemons()?;
            let t = Instant::now();
            lab.move_to("robot-b", usize::from(!away))?;
            away = !away;
            marks.push(t);
            testbed::sleep(window + Duration::from_millis(300))?;
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let probes = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("the pinger thread panicked"))??;
    if away {
        lab.move_to("robot-b", 0)?;
    }
    result?;
    Ok(marks
        .iter()
        .map(|&t| {
            let (gap, recovered, _, _) = super::handover::analyse(&probes, t, window);
            (gap, recovered)
        })
        .collect())
}

/// n2 forgets its mappings and maps robot-b to another port range.
fn rebind(lab: &Lab, k: usize) -> Result<()> {
    let mut n2 = lab.nat("n2")?;
    let base = 40000 + (k as u16 % 10) * 200;
    n2.set_ports(Some((base, base + 100)))?;
    n2.flush_conntrack()
}

/// Outage after a rebinding while robot-b pings robot-a every 10 ms.
fn rebind_while_sending(lab: &Lab, k: usize, window: Duration) -> Result<(f64, bool)> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let limit = window + Duration::from_secs(10);
    let pinger = lab.ns("robot-b").spawn_thread(move || {
        Pinger::new(ROBOT_A_EID)?.run_until(INTERVAL, limit, Duration::from_millis(200), flag)
    })?;
    testbed::sleep(Duration::from_millis(1500))?;
    let t = Instant::now();
    let result = rebind(lab, k);
    testbed::sleep(window + Duration::from_millis(300))?;
    stop.store(true, Ordering::Relaxed);
    let probes = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("the pinger thread panicked"))??;
    result?;
    let (gap, recovered, _, _) = super::handover::analyse(&probes, t, window);
    Ok((gap, recovered))
}

/// Time from a rebinding to robot-a's first reply, with no traffic before:
/// robot-b is only found again at its next keepalive to the map-server.
fn rebind_idle(lab: &Lab, k: usize, limit: Duration) -> Result<Option<f64>> {
    testbed::sleep(Duration::from_secs(2))?;
    rebind(lab, k)?;
    let t = Instant::now();
    let probes = lab.ns("robot-a").run(|| -> Result<Vec<Probe>> {
        let pinger = Pinger::new(ROBOT_B_EID)?;
        pinger.run(
            Duration::from_millis(100),
            limit,
            Duration::from_millis(200),
            |probes| probes.iter().any(|p| p.replied.is_some()),
        )
    })??;
    Ok(probes
        .iter()
        .filter_map(|p| p.replied)
        .min()
        .map(|r| (r - t).as_secs_f64()))
}

pub fn run(ctx: &Ctx) -> Result<Produced> {
    let started = Started::now();
    let q = ctx.quick;
    let (reps, moves, rebinds, idle_rebinds) = if q { (3, 2, 1, 1) } else { (100, 20, 10, 3) };
    let window = Duration::from_millis(1200);
    let dir = ctx.dir(NAME)?;

    progress(
        NAME,
        "bringing up the NAT lab (robot-a behind n1, robot-b behind n2)",
    );
    let mut lab = nat_lab(ctx, &dir.join("lab"))?;
    let n2 = lab.address("n2");
    let (nat_delays, nat_lost, direct) = first_replies(&mut lab, reps, Some(n2), "via two NATs")?;
    progress(NAME, "robot-b moves between n2 and n3");
    super::handover::ping_until_reply(&lab, "robot-a", ROBOT_B_EID, Duration::from_secs(10))?;
    let moved = nat_moves(&mut lab, moves, window)?;
    progress(NAME, "robot-b's NAT restarts while robot-b sends");
    let mut sending = Vec::new();
    for k in 0..rebinds {
        super::handover::ping_until_reply(&lab, "robot-b", ROBOT_A_EID, Duration::from_secs(30))?;
        sending.push(rebind_while_sending(&lab, k, Duration::from_secs(3))?);
    }
    progress(NAME, "robot-b's NAT restarts with no traffic");
    let idle_limit = Duration::from_secs(40);
    let mut idle = Vec::new();
    for k in 0..idle_rebinds {
        super::handover::ping_until_reply(&lab, "robot-a", ROBOT_B_EID, Duration::from_secs(30))?;
        idle.push(rebind_idle(&lab, rebinds + k, idle_limit)?);
    }
    drop(lab);

    progress(NAME, "IPv6-only robots, no NAT");
    let mut lab = v6_lab(ctx, &dir.join("lab6"))?;
    let (v6_delays, v6_lost, _) = first_replies(&mut lab, reps, None, "over IPv6")?;
    drop(lab);

    let s = summarize(&nat_delays);
    let s6 = summarize(&v6_delays);
    let move_gaps: Vec<f64> = moved.iter().map(|m| m.0).collect();
    let sm = summarize(&move_gaps);
    let moves_ok = moved.iter().all(|m| m.1);
    let send_gaps: Vec<f64> = sending.iter().map(|m| m.0).collect();
    let ss = summarize(&send_gaps);
    let sending_ok = sending.iter().all(|m| m.1);
    let idle_s: Vec<f64> = idle.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
    let idle_max = idle_s.iter().copied().fold(0.0f64, f64::max);
    let figures = vec![
        Figure::info("first reply through two NATs, p50", ms(s.p50))
            .baseline(format!("p90 {} / p99 {} / max {}", ms(s.p90), ms(s.p99), ms(s.max)))
            .target("≤ 10 ms", s.p50 <= 10.0),
        Figure::info(
            "requests lost before the first reply (two NATs)",
            format!("{nat_lost} in {reps} fresh pairs"),
        )
        .target("0", nat_lost == 0),
        Figure::info(
            "direct through both NATs",
            format!("{direct} of {reps} pairs ({:.0} %)", 100.0 * direct as f64 / reps as f64),
        )
        .target("100 %", direct == reps),
        Figure::info("handover from one NAT to another, p50", ms(sm.p50))
            .thesis("≈1 s (OOR+WG) without NAT")
            .target("≤ 100 ms", sm.p50 <= 100.0 && moves_ok),
        Figure::info("handover from one NAT to another, max", ms(sm.max))
            .target("≤ 250 ms", sm.max <= 250.0 && moves_ok),
        Figure::info(
            "recovery after a NAT rebinding while the robot sends, max",
            ms(ss.max),
        )
        .baseline(format!("p50 {} over {rebinds} rebindings", ms(ss.p50)))
        .target("≤ 1 s", ss.max <= 1000.0 && sending_ok),
        Figure::info(
            "recovery after a NAT rebinding with no traffic, max",
            format!("{idle_max:.1} s"),
        )
        .baseline(format!(
            "{} over {idle_rebinds} rebindings (robot-b's keepalive to the map-server is every 25 s)",
            idle_s
                .iter()
                .map(|x| format!("{x:.1} s"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .target("≤ 30 s", idle_max <= 30.0),
        Figure::info("first reply over IPv6 (no NAT), p50", ms(s6.p50))
            .baseline(format!(
                "p99 {} / max {}; {v6_lost} requests lost",
                ms(s6.p99),
                ms(s6.max)
            ))
            .target("≤ 10 ms", s6.p50 <= 10.0 && v6_lost == 0),
    ];
    let svg = svg::cdf(
        &format!("First reply from a fresh pair ({reps} pairs each)"),
        "milliseconds from the first echo request (log scale)",
        &[
            ("through two EIM NATs".into(), nat_delays.clone()),
            ("IPv6 underlay, no NAT".into(), v6_delays.clone()),
        ],
        &[RefLine::new("target p50 10 ms", 10.0)],
        true,
    );
    let moves_svg = svg::cdf(
        &format!("Outage per move between two NATs ({moves} moves)"),
        "milliseconds without replies (log scale)",
        &[
            ("NAT to NAT".into(), move_gaps.clone()),
            ("NAT rebinding, robot sending".into(), send_gaps.clone()),
        ],
        &[
            RefLine::new("target p50 100 ms", 100.0),
            RefLine::new("target max 250 ms", 250.0),
            RefLine::new("rebinding target 1 s", 1000.0),
        ],
        true,
    );
    let why = super::if_missed(
        &figures,
        "Why a target is missed: see the per-sample values in the JSON. The first reply \
         through NATs adds the responder's punch and its detection of the handshake (a \
         WireGuard statistics read) to the steps of a first reply without NAT; a rebinding is \
         noticed 400 ms after replies stop, then the robot re-registers and its correspondent \
         is pushed its new endpoint."
            .into(),
    );
    let outcome = Outcome {
        title: "NAT traversal: direct tunnels through campus NATs",
        description: format!(
            "robot-a sits behind NAT router n1, robot-b behind n2 (nftables masquerade: \
             endpoint-independent mapping, and the address-and-port-dependent filter of real \
             routers: policy drop on forward and input but for established flows). First \
             reply: {reps} fresh pairs (both agents restarted before each), robot-a pings \
             robot-b every 2 ms; 'direct' means robot-a's WireGuard peer for robot-b is at \
             n2's public address. Handover: robot-b moves {moves} times between n2 and a \
             third NAT n3 (its uplink behind n3 comes up, the one behind n2 goes down) while \
             robot-a pings every 10 ms; outage = largest gap between replies around the \
             move. Rebinding: n2 flushes its conntrack table and maps to another port range; \
             {rebinds} times while robot-b pings robot-a every 10 ms, {idle_rebinds} times \
             with no traffic (then robot-a pings every 100 ms until a reply). IPv6: the same \
             first-reply run between IPv6-only robots."
        ),
        parameters: json!({
            "fresh_pairs": reps, "moves": moves, "rebindings_sending": rebinds,
            "rebindings_idle": idle_rebinds, "interval_ms": INTERVAL.as_millis() as u64,
        }),
        series: vec![
            Series::new("first reply through two NATs", "ms", nat_delays),
            Series::new("NAT to NAT handover outage", "ms", move_gaps),
            Series::new("rebinding outage while sending", "ms", send_gaps),
            Series::new("rebinding recovery with no traffic", "s", idle_s),
            Series::new("first reply over IPv6", "ms", v6_delays),
        ],
        notes: why.into_iter().collect(),
        figures,
        svg,
        more_svgs: vec![("moves", moves_svg)],
    };
    Ok(ctx.result(NAME, started, outcome))
}
