//! restart: how soon everyone is served again after someone restarts.
//! (1) robot-b's agent is killed (`kill -9`) and started again while
//! robot-a, which still caches it, pings it every 20 ms: the time from
//! robot-b ready to robot-a's first reply. (2) The map-server is killed and
//! started again, from its store, then (3) from nothing (its state
//! directory removed): the time from the map-server ready until robot-a has
//! a peer for an EID it never resolved (a static mapping: served without
//! any registration).

use super::{ms, progress, Ctx, Outcome, Produced, Started};
use crate::icmp::{Pinger, Probe};
use crate::report::{Figure, Series};
use crate::stats::summarize;
use crate::svg::{self, RefLine};
use anyhow::{Context, Result};
use serde_json::json;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed::topology::ROBOT_B_EID;
use testbed::Lab;

const NAME: &str = "restart";
/// EIDs of the static mappings robot-a resolves after a map-server restart.
const NET: u8 = 5;
const PING_EVERY: Duration = Duration::from_millis(20);

/// robot-b restarts under robot-a's pings: ms from robot-b ready to the
/// first reply after it.
fn node_restart(lab: &mut Lab) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let pinger = lab.ns("robot-a").spawn_thread(move || {
        Pinger::new(ROBOT_B_EID)?.run_until(
            PING_EVERY,
            Duration::from_secs(60),
            Duration::from_millis(100),
            flag,
        )
    })?;
    let result = (|| -> Result<Instant> {
        testbed::sleep(Duration::from_millis(300))?;
        lab.kill9("robot-b")?;
        testbed::sleep(Duration::from_millis(200))?;
        lab.start("robot-b")?;
        let ready = Instant::now();
        // Until replies come again, at most 10 s.
        testbed::sleep(Duration::from_secs(3))?;
        Ok(ready)
    })();
    stop.store(true, Ordering::Relaxed);
    let probes: Vec<Probe> = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("pinger panicked"))??;
    let ready = result?;
    let first = probes
        .iter()
        .filter(|p| p.sent >= ready)
        .find_map(|p| p.replied)
        .context("no reply from robot-b within 3 s of its restart")?;
    Ok(first.duration_since(ready).as_secs_f64() * 1e3)
}

/// Sends one datagram from robot-a to `eid` and waits for its peer: ms
/// from `since`.
fn resolve_after(lab: &Lab, eid: Ipv4Addr, since: Instant) -> Result<f64> {
    let peers = |lab: &Lab| -> Result<f64> {
        let m = lab.fetch("robot-a", "/metrics")?;
        testbed::metric(&m, "lispwg_xtr_peers").context("lispwg_xtr_peers")
    };
    let before = peers(lab)?;
    let sock = lab.ns("robot-a").run(|| UdpSocket::bind("0.0.0.0:0"))??;
    sock.send_to(b"lispwg bench: restart", (eid, 9))?;
    testbed::wait_for(
        Duration::from_secs(30),
        Duration::from_millis(5),
        &format!("robot-a to program a peer for {eid}"),
        || Ok((peers(lab)? > before).then_some(())),
    )?;
    Ok(since.elapsed().as_secs_f64() * 1e3)
}

/// The map-server is killed and started again (`wiped`: without its
/// state directory); then robot-a resolves a fresh EID.
fn ms_restart(lab: &mut Lab, eid: Ipv4Addr, wiped: bool) -> Result<f64> {
    lab.kill9("map-server")?;
    if wiped {
        let state = lab.dir().join("map-server-state");
        if state.exists() {
            std::fs::remove_dir_all(&state)?;
        }
    }
    lab.start("map-server")?;
    let ready = Instant::now();
    resolve_after(lab, eid, ready)
}

pub fn run(ctx: &Ctx) -> Result<Produced> {
    let started = Started::now();
    let trials: u32 = if ctx.quick { 3 } else { 10 };
    let dir = ctx.dir(NAME)?;
    let statics = super::unreachable_mappings(NET, 2 * trials);
    progress(NAME, "bringing up the lab");
    let mut lab = super::lab(ctx, &dir.join("lab"), statics, true)?;
    lab.ping_ok("robot-a", &ROBOT_B_EID.to_string(), 2);

    let mut node = Vec::new();
    for k in 0..trials {
        lab.check_daemons()?;
        let t = node_restart(&mut lab)?;
        progress(NAME, format!("node restart {}/{trials}: {t:.0} ms", k + 1));
        node.push(t);
    }
    let (mut kept, mut wiped) = (Vec::new(), Vec::new());
    for k in 0..trials {
        let eid = super::numbered_eid(NET, 2 * k);
        let t = ms_restart(&mut lab, eid, false)?;
        progress(
            NAME,
            format!(
                "map-server restart from its store {}/{trials}: {t:.0} ms",
                k + 1
            ),
        );
        kept.push(t);
        let eid = super::numbered_eid(NET, 2 * k + 1);
        let t = ms_restart(&mut lab, eid, true)?;
        progress(
            NAME,
            format!(
                "map-server restart from nothing {}/{trials}: {t:.0} ms",
                k + 1
            ),
        );
        wiped.push(t);
    }
    drop(lab);

    let (n, k, w) = (summarize(&node), summarize(&kept), summarize(&wiped));
    let figures = vec![
        Figure::info("node restart: p50", ms(n.p50)).target("≤ 1 s", n.p50 <= 1000.0),
        Figure::info("node restart: max", ms(n.max)).target("≤ 2 s", n.max <= 2000.0),
        Figure::info("map-server restart from its store: max", ms(k.max))
            .target("≤ 1 s", k.max <= 1000.0),
        Figure::info("map-server restart from nothing: max", ms(w.max))
            .target("≤ 1 s", w.max <= 1000.0),
        Figure::info(
            "medians (node / store / nothing)",
            format!("{} / {} / {}", ms(n.p50), ms(k.p50), ms(w.p50)),
        ),
    ];
    let svg = svg::cdf(
        "Served again after a restart",
        "milliseconds (log scale)",
        &[
            (
                "robot-b restarted: robot-a's next reply".into(),
                node.clone(),
            ),
            (
                "map-server restarted from its store: a fresh lookup".into(),
                kept.clone(),
            ),
            (
                "map-server restarted from nothing: a fresh lookup".into(),
                wiped.clone(),
            ),
        ],
        &[
            RefLine::new("target 1 s", 1000.0),
            RefLine::new("node max 2 s", 2000.0),
        ],
        true,
    );
    let outcome = Outcome {
        title: "Restarts of anyone",
        description: format!(
            "{trials} times each, in the bench's lab: robot-b's agent is killed with SIGKILL (its \
             wireguard-go follows it) and started again while robot-a, which still has robot-b's \
             peer cached, pings it every 20 ms; measured from robot-b ready to robot-a's first \
             reply. Then the map-server is killed and started again from its store, and again \
             with its state directory removed; measured from the map-server ready until robot-a \
             has programmed a peer for an EID it never resolved (a static mapping of the \
             map-server's configuration, so no registration is needed)."
        ),
        parameters: json!({"trials": trials, "ping_interval_ms": 20}),
        series: vec![
            Series::new("node restart to first reply", "ms", node),
            Series::new("map-server restart from its store to a lookup", "ms", kept),
            Series::new("map-server restart from nothing to a lookup", "ms", wiped),
        ],
        notes: [super::if_missed(
            &figures,
            "Why a target is missed: a map-server restarted from nothing does not know where \
             its nodes are, so it cannot wake their WireGuard sessions as it does from its store; \
             a node learns of the restart when a lookup goes unanswered for its renewal wait \
             (1 s), renews its control session and registers again on it."
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
