//! relay: pairs that no direct path joins, through coturn on the
//! map-server's host.
//!
//! - first reply from fresh pairs behind two symmetric (endpoint-dependent)
//!   NATs, requests every 100 ms;
//! - throughput (iperf3 TCP and UDP) and round trip through the relay,
//!   beside the direct tunnel through two endpoint-independent NATs of the
//!   same lab shape (the same NAT processing, no relay);
//! - the agents' CPU (each runs its relay proxy) at 50 Mbit/s;
//! - the move from the relay to a direct path when both NATs become
//!   endpoint-independent, during a 20 ms ping: what is lost once the relay
//!   path is back after the NATs' flush (the flush itself cuts the pair
//!   until the agents notice).

use super::{ms, progress, Ctx, Outcome, Produced, Started};
use crate::icmp::{Pinger, Probe};
use crate::report::{Figure, Series};
use crate::stats::{median, spread, summarize};
use crate::svg::{self, RefLine};
use crate::sys;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed::nat::NatKind;
use testbed::topology::{Segment, ROBOT_B_EID};
use testbed::{Lab, LabSpec};

const NAME: &str = "relay";
const IPERF_PORT: &str = "5201";
/// The rate the proxies' CPU is measured at.
const CPU_RATE_MBPS: u64 = 50;

fn lab(ctx: &Ctx, dir: &Path, tag: &str, kind: NatKind) -> Result<Lab> {
    let spec = LabSpec::campus()
        .tag(tag)
        .without("edge")
        .coturn()
        .nat("n1", kind, Segment::SubnetA)
        .nat("n2", kind, Segment::SubnetB)
        .behind("robot-a", "n1")
        .behind("robot-b", "n2");
    let lab = Lab::up(spec, dir, &ctx.bins)?;
    relay_up(&lab)?;
    Ok(lab)
}

fn metric(lab: &Lab, node: &str, name: &str) -> f64 {
    lab.fetch(node, "/metrics")
        .ok()
        .and_then(|m| testbed::metric(&m, name))
        .unwrap_or(0.0)
}

/// Waits until both robots hold a relay allocation.
fn relay_up(lab: &Lab) -> Result<()> {
    for node in ["robot-a", "robot-b"] {
        if !testbed::wait_until(Duration::from_secs(20), || {
            metric(lab, node, "lispwg_xtr_relay_up") == 1.0
        }) {
            bail!("{node} has no relay allocation");
        }
    }
    Ok(())
}

/// First replies from `reps` fresh pairs: (delays ms, lost before, relayed).
fn first_replies(lab: &mut Lab, reps: usize) -> Result<(Vec<f64>, usize, usize)> {
    let (mut delays, mut lost, mut relayed) = (Vec::new(), 0, 0);
    for rep in 0..reps {
        testbed::interrupted()?;
        if rep > 0 {
            // robot-a starts afresh (a robot switched on): it allocates,
            // registers, and its first packet to robot-b starts the pair.
            // (Restarting both at once makes both responders of the
            // other's pushed restart; the tie-break then takes 2 s, not the
            // first-contact path measured here.)
            lab.stop("robot-a")?;
            lab.start("robot-a")?;
            relay_up(lab)?;
        }
        let probes = lab.ns("robot-a").run(|| -> Result<Vec<Probe>> {
            let pinger = Pinger::new(ROBOT_B_EID)?;
            pinger.run(
                Duration::from_millis(100),
                Duration::from_secs(5),
                Duration::from_millis(300),
                |probes| probes.iter().any(|p| p.replied.is_some()),
            )
        })??;
        let Some(r) = super::first_packet::analyse(&probes) else {
            bail!("fresh pair {}: robot-b never answered", rep + 1);
        };
        delays.push(r.delay_ms);
        lost += r.lost_before;
        if testbed::wait_until(Duration::from_secs(2), || {
            metric(lab, "robot-a", "lispwg_xtr_paths_relayed") == 1.0
        }) {
            relayed += 1;
        }
        if (rep + 1) % 10 == 0 || rep + 1 == reps {
            progress(
                NAME,
                format!("first reply {}/{reps}: {:.1} ms", rep + 1, r.delay_ms),
            );
        }
    }
    Ok((delays, lost, relayed))
}

/// Round trips of `count` pings 10 ms apart, ms.
fn rtts(lab: &Lab, count: usize) -> Result<Vec<f64>> {
    let probes = lab.ns("robot-a").run(|| -> Result<Vec<Probe>> {
        let pinger = Pinger::new(ROBOT_B_EID)?;
        pinger.run(
            Duration::from_millis(10),
            Duration::from_secs(30),
            Duration::from_millis(300),
            |p| p.len() >= count,
        )
    })??;
    Ok(probes
        .iter()
        .filter_map(|p| Some((p.replied? - p.sent).as_secs_f64() * 1e3))
        .collect())
}

struct PathRun {
    tcp: Vec<f64>,
    udp: Vec<f64>,
    udp_loss: Vec<f64>,
    rtt: Vec<f64>,
}

/// TCP then UDP (at `udp_rate`, or 1.25 × this path's TCP) `reps` times,
/// and the round trip.
fn measure(
    lab: &Lab,
    dir: &Path,
    reps: usize,
    secs: u64,
    udp_rate: Option<u64>,
) -> Result<PathRun> {
    let iperf_bin = testbed::which("iperf3").context("iperf3 not on PATH")?;
    let _server = lab.ns("robot-b").spawn(
        "iperf3 server",
        &iperf_bin,
        &["-s", "-p", IPERF_PORT],
        &dir.join("iperf3-server.log"),
    )?;
    super::handover::ping_until_reply(lab, "robot-a", ROBOT_B_EID, Duration::from_secs(10))?;
    let dst = ROBOT_B_EID.to_string();
    let a = lab.ns("robot-a");
    let mut run = PathRun {
        tcp: Vec::new(),
        udp: Vec::new(),
        udp_loss: Vec::new(),
        rtt: rtts(lab, 300)?,
    };
    for _ in 0..reps {
        testbed::interrupted()?;
        let (m, _, _) = super::throughput::iperf(a, &dst, None, secs, 1)?;
        run.tcp.push(m);
        let rate = udp_rate.unwrap_or(((m * 1.25 / 10.0).ceil() * 10.0).max(10.0) as u64);
        let (u, l, _) = super::throughput::iperf(a, &dst, Some(rate), secs, 1)?;
        run.udp.push(u);
        run.udp_loss.push(l);
    }
    Ok(run)
}

/// CPU of each robot's agent (its relay proxy and everything else) while
/// robot-a sends UDP at `rate` Mbit/s through the relay: (sender %,
/// receiver %, delivered Mbit/s).
fn proxy_cpu(lab: &Lab, dir: &Path, rate: u64, secs: u64) -> Result<(f64, f64, f64)> {
    let iperf_bin = testbed::which("iperf3").context("iperf3 not on PATH")?;
    let _server = lab.ns("robot-b").spawn(
        "iperf3 server (cpu)",
        &iperf_bin,
        &["-s", "-p", IPERF_PORT],
        &dir.join("iperf3-cpu.log"),
    )?;
    let pa = lab.pid("robot-a").context("robot-a is not running")?;
    let pb = lab.pid("robot-b").context("robot-b is not running")?;
    let dst = ROBOT_B_EID.to_string();
    let (ca, cb, t0) = (sys::cpu_seconds(pa)?, sys::cpu_seconds(pb)?, Instant::now());
    let (m, _, _) = super::throughput::iperf(lab.ns("robot-a"), &dst, Some(rate), secs, 0)?;
    let dt = t0.elapsed().as_secs_f64();
    let (ca1, cb1) = (sys::cpu_seconds(pa)?, sys::cpu_seconds(pb)?);
    Ok(((ca1 - ca) / dt * 100.0, (cb1 - cb) / dt * 100.0, m))
}

/// One upgrade: both NATs become endpoint-independent (flushed) during a
/// 20 ms ping. (seconds to direct, pings the flush cut, pings lost after
/// the relay path was back).
fn upgrade(lab: &Lab) -> Result<(f64, usize, usize)> {
    super::handover::ping_until_reply(lab, "robot-a", ROBOT_B_EID, Duration::from_secs(15))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let pinger = lab.ns("robot-a").spawn_thread(move || {
        Pinger::new(ROBOT_B_EID)?.run_until(
            Duration::from_millis(20),
            Duration::from_secs(60),
            Duration::from_millis(500),
            flag,
        )
    })?;
    let result = (|| -> Result<f64> {
        testbed::sleep(Duration::from_millis(500))?;
        for n in ["n1", "n2"] {
            let mut nat = lab.nat(n)?;
            nat.set_kind(NatKind::Eim)?;
            nat.flush_conntrack()?;
        }
        let t0 = Instant::now();
        if !testbed::wait_until(Duration::from_secs(30), || {
            metric(lab, "robot-a", "lispwg_xtr_paths_direct") == 1.0
                && metric(lab, "robot-b", "lispwg_xtr_paths_direct") == 1.0
        }) {
            bail!("the pair stayed on the relay");
        }
        let took = t0.elapsed().as_secs_f64();
        testbed::sleep(Duration::from_secs(2))?;
        Ok(took)
    })();
    stop.store(true, Ordering::Relaxed);
    let probes = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("the pinger thread panicked"))??;
    let took = result?;
    // The flush's outage: the longest run of unanswered requests; after
    // it, everything must be answered.
    let answered: Vec<bool> = probes.iter().map(|p| p.replied.is_some()).collect();
    let (mut best, mut best_end, mut run) = (0, 0, 0);
    for (i, a) in answered.iter().enumerate() {
        if *a {
            run = 0;
        } else {
            run += 1;
            if run > best {
                best = run;
                best_end = i + 1;
            }
        }
    }
    // The last probes may still be in flight at the end: not counted.
    let tail = answered.len().saturating_sub(25);
    let lost_after = answered[best_end.min(tail)..tail]
        .iter()
        .filter(|a| !**a)
        .count();
    Ok((took, best, lost_after))
}

/// Back to symmetric NATs (flushed): the pair falls back to the relay.
fn back_to_relay(lab: &Lab) -> Result<()> {
    for n in ["n1", "n2"] {
        let mut nat = lab.nat(n)?;
        nat.set_kind(NatKind::Edm)?;
        nat.flush_conntrack()?;
    }
    let ok = testbed::wait_until(Duration::from_secs(30), || {
        super::handover::ping_until_reply(lab, "robot-a", ROBOT_B_EID, Duration::from_secs(1))
            .is_ok()
            && metric(lab, "robot-a", "lispwg_xtr_paths_relayed") == 1.0
    });
    if !ok {
        bail!("the pair did not fall back to the relay");
    }
    Ok(())
}

pub fn run(ctx: &Ctx) -> Result<Produced> {
    let started = Started::now();
    let q = ctx.quick;
    let (pairs, reps, secs, upgrades) = if q { (3, 1, 2, 1) } else { (30, 4, 10, 3) };
    let dir = ctx.dir(NAME)?;

    progress(
        NAME,
        "direct: robot-a and robot-b behind two endpoint-independent NATs",
    );
    let direct_lab = lab(ctx, &dir.join("direct"), "bd", NatKind::Eim)?;
    if metric(&direct_lab, "robot-a", "lispwg_xtr_paths_relayed") != 0.0 {
        bail!("the direct lab went through the relay");
    }
    let direct = measure(&direct_lab, &dir, reps, secs, None)?;
    progress(
        NAME,
        format!(
            "direct: TCP {} Mbit/s, UDP {} Mbit/s, RTT p50 {}",
            spread(&direct.tcp, 0),
            spread(&direct.udp, 0),
            ms(median(&direct.rtt))
        ),
    );
    drop(direct_lab);

    progress(NAME, "relayed: behind two symmetric NATs");
    let mut relay_lab = lab(ctx, &dir.join("relayed"), "br", NatKind::Edm)?;
    let (first, lost, relayed) = first_replies(&mut relay_lab, pairs)?;
    let udp_rate = ((median(&direct.tcp) * 1.25 / 10.0).ceil() * 10.0).max(10.0) as u64;
    let relay = measure(&relay_lab, &dir, reps, secs, Some(udp_rate))?;
    progress(
        NAME,
        format!(
            "relayed: TCP {} Mbit/s, UDP {} Mbit/s, RTT p50 {}",
            spread(&relay.tcp, 0),
            spread(&relay.udp, 0),
            ms(median(&relay.rtt))
        ),
    );
    let (cpu_a, cpu_b, cpu_mbps) = proxy_cpu(&relay_lab, &dir, CPU_RATE_MBPS, secs.max(5))?;
    progress(
        NAME,
        format!("agents at {cpu_mbps:.0} Mbit/s through the relay: sender {cpu_a:.1} %, receiver {cpu_b:.1} % of a core"),
    );
    let mut ups = Vec::new();
    for k in 0..upgrades {
        if k > 0 {
            back_to_relay(&relay_lab)?;
        }
        let u = upgrade(&relay_lab)?;
        progress(
            NAME,
            format!(
                "upgrade {}/{upgrades}: direct after {:.1} s; the flush cut {} pings; {} lost after",
                k + 1,
                u.0,
                u.1,
                u.2
            ),
        );
        ups.push(u);
    }
    drop(relay_lab);

    let s = summarize(&first);
    let ratio = |r: &[f64], d: &[f64]| median(r) / median(d).max(1e-9) * 100.0;
    let tcp_ratio = ratio(&relay.tcp, &direct.tcp);
    let udp_ratio = ratio(&relay.udp, &direct.udp);
    let added_rtt = median(&relay.rtt) - median(&direct.rtt);
    let lost_up: usize = ups.iter().map(|u| u.2).sum();
    let up_s: Vec<f64> = ups.iter().map(|u| u.0).collect();
    let noise = format!("median (min–max) of {reps} runs of {secs} s");
    let figures = vec![
        Figure::info("first reply through two symmetric NATs (relay), p50", ms(s.p50))
            .baseline(format!("p90 {} / max {}; {relayed} of {pairs} pairs relayed", ms(s.p90), ms(s.max)))
            .target("≤ 1.5 s", s.p50 <= 1500.0 && relayed == pairs),
        Figure::info(
            "requests lost before the first reply (relay, every 100 ms)",
            format!("{lost} in {pairs} fresh pairs"),
        )
        .target("0", lost == 0),
        Figure::info("TCP through the relay, Mbit/s", spread(&relay.tcp, 0))
            .baseline(format!("direct {}", spread(&direct.tcp, 0)))
            .noise(noise.clone()),
        Figure::info("TCP: relay ÷ direct", format!("{tcp_ratio:.0} %"))
            .target("≥ 70 %", tcp_ratio >= 70.0),
        Figure::info(
            format!("UDP through the relay at {udp_rate} Mbit/s offered, Mbit/s"),
            spread(&relay.udp, 0),
        )
        .baseline(format!(
            "direct {} ({} % lost); relay {} % lost",
            spread(&direct.udp, 0),
            spread(&direct.udp_loss, 1),
            spread(&relay.udp_loss, 1)
        ))
        .noise(noise),
        Figure::info("UDP: relay ÷ direct", format!("{udp_ratio:.0} %"))
            .target("≥ 70 %", udp_ratio >= 70.0),
        Figure::info("round trip added by the relay, p50", ms(added_rtt))
            .baseline(format!(
                "relay {} / direct {} (300 pings each)",
                ms(median(&relay.rtt)),
                ms(median(&direct.rtt))
            ))
            .target("≤ 1 ms", added_rtt <= 1.0),
        Figure::info(
            format!("agent CPU at {CPU_RATE_MBPS} Mbit/s through the relay"),
            format!("sender {cpu_a:.1} %, receiver {cpu_b:.1} % of a core"),
        )
        .baseline(format!("{cpu_mbps:.0} Mbit/s delivered; each agent runs its relay proxy")),
        Figure::info(
            "lost moving from the relay to direct",
            format!("{lost_up} in {upgrades} upgrades"),
        )
        .baseline(format!(
            "direct after {} s; the NATs' flush itself cut {} pings (20 ms apart) until the agents noticed",
            up_s.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", "),
            ups.iter().map(|u| u.1.to_string()).collect::<Vec<_>>().join(", ")
        ))
        .target("0", lost_up == 0),
    ];
    let svg = svg::cdf(
        "Round trip robot-a → robot-b, direct and through the relay (300 pings each)",
        "milliseconds (log scale)",
        &[
            ("direct through two EIM NATs".into(), direct.rtt.clone()),
            ("through the relay (two EDM NATs)".into(), relay.rtt.clone()),
        ],
        &[RefLine::new("direct p50 + 1 ms", median(&direct.rtt) + 1.0)],
        true,
    );
    let why = super::if_missed(
        &figures,
        "Why a target is missed: on this machine the relay's path has three more user-space \
         hops than the direct one (the sender's proxy, coturn twice, the receiver's proxy), each \
         a wake-up and a copy on the same two cores that also run both wireguard-go and iperf3; \
         the direct tunnel is itself bound by wireguard-go. In a deployment coturn runs on the \
         map-server's host and each robot runs one proxy."
            .into(),
    );
    let outcome = Outcome {
        title: "Relay: coturn for the pairs no direct path joins",
        description: format!(
            "coturn (Debian 4.6) on the map-server's host; robot-a behind NAT n1, robot-b behind \
             n2. Relayed: both NATs symmetric (nftables masquerade fully-random), so every pair \
             goes through the relay (each agent holds an allocation and sends through a local \
             proxy socket). Direct: the same lab with endpoint-independent NATs. First reply: \
             {pairs} fresh pairs (robot-a restarted and allocated before each), robot-a \
             pings robot-b every 100 ms. Throughput: iperf3 robot-a → robot-b, TCP and UDP \
             (1380-byte payloads, offered at 1.25 × the direct TCP rate), {reps} runs of {secs} \
             s each; round trip: 300 pings 10 ms apart. CPU: utime + stime of each agent over \
             a {CPU_RATE_MBPS} Mbit/s UDP run. Upgrade: both NATs become endpoint-independent \
             (a new rule set and a conntrack flush) during a 20 ms ping, {upgrades} times."
        ),
        parameters: json!({
            "fresh_pairs": pairs, "reps": reps, "secs": secs, "udp_offered_mbps": udp_rate,
            "cpu_rate_mbps": CPU_RATE_MBPS, "upgrades": upgrades,
        }),
        series: vec![
            Series::new("first reply through the relay", "ms", first),
            Series::new("TCP direct", "Mbit/s", direct.tcp),
            Series::new("TCP relayed", "Mbit/s", relay.tcp),
            Series::new("UDP direct", "Mbit/s", direct.udp),
            Series::new("UDP relayed", "Mbit/s", relay.udp),
            Series::new("RTT direct", "ms", direct.rtt),
            Series::new("RTT relayed", "ms", relay.rtt),
            Series::new("upgrade: seconds to direct", "s", up_s),
        ],
        notes: why.into_iter().collect(),
        figures,
        svg,
        more_svgs: Vec::new(),
    };
    Ok(ctx.result(NAME, started, outcome))
}
