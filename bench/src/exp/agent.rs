//! agent: the xtr's memory and CPU when idle, and with 1 000 cached peers.

use super::{progress, Ctx, Outcome, Produced, Started};
use crate::report::{Figure, Series};
use crate::svg::{self, Bar, RefLine};
use crate::sys;
use anyhow::{Context, Result};
use serde_json::json;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};
use testbed::Lab;

const NAME: &str = "agent";
/// "≈ 0": at most this share of one core, in percent.
const IDLE_CPU_MAX: f64 = 0.5;
const RSS_MAX_MIB: f64 = 20.0;

/// EIDs of this experiment: 10.4.0.0/16.
const NET: u8 = 4;

fn eid(i: u32) -> Ipv4Addr {
    super::numbered_eid(NET, i)
}

/// One observation window of a process.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_percent: f64,
    wakeups_per_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn observe(pid: u32, window: Duration) -> Result<Usage> {
    let (c0, w0, t0) = (
        sys::cpu_seconds(pid)?,
        sys::context_switches(pid)?,
        Instant::now(),
    );
    testbed::sleep(window)?;
    let (c1, w1, dt) = (
        sys::cpu_seconds(pid)?,
        sys::context_switches(pid)?,
        t0.elapsed().as_secs_f64(),
    );
    let (rss_kib, hwm_kib) = sys::rss_kib(pid)?;
    Ok(Usage {
        cpu_percent: (c1 - c0) / dt * 100.0,
        wakeups_per_s: sys::wakeups_between(&w0, &w1) as f64 / dt,
        rss_kib,
        hwm_kib,
    })
}

fn peers(lab: &Lab) -> Result<f64> {
    let m = lab.fetch("robot-a", "/metrics")?;
    testbed::metric(&m, "lispwg_xtr_peers").context("the agent's /metrics has no lispwg_xtr_peers")
}

pub fn run(ctx: &Ctx) -> Result<Produced> {
    let started = Started::now();
    let (n, window, settle) = if ctx.quick {
        (50u32, Duration::from_secs(2), Duration::from_secs(1))
    } else {
        (1000, Duration::from_secs(10), Duration::from_secs(3))
    };
    let dir = ctx.dir(NAME)?;
    let static_mappings = super::unreachable_mappings(NET, n);
    progress(
        NAME,
        format!("bringing up the lab; {n} static mappings with distinct keys"),
    );
    let mut lab = super::lab(ctx, &dir.join("lab"), static_mappings, false)?;
    let pid = lab.pid("robot-a").context("robot-a's agent")?;
    let wg_pid = sys::children_named(pid, "wireguard-go").first().copied();
    testbed::sleep(settle)?;
    progress(
        NAME,
        format!("idle: observing the agent for {} s", window.as_secs()),
    );
    let idle = observe(pid, window)?;
    let wg_idle = wg_pid
        .map(|p| observe(p, Duration::from_secs(1)))
        .transpose()?;

    progress(NAME, format!("resolving {n} EIDs (one datagram each)"));
    let sock = lab.ns("robot-a").run(|| UdpSocket::bind("0.0.0.0:0"))??;
    let t0 = Instant::now();
    for chunk_start in (0..n).step_by(100) {
        let end = (chunk_start + 100).min(n);
        for i in chunk_start..end {
            sock.send_to(b"lispwg bench: agent", (eid(i), 9))?;
        }
        testbed::wait_for(
            Duration::from_secs(60),
            Duration::from_millis(20),
            &format!("{end} data peers"),
            || {
                lab.check_daemons()?;
                Ok((peers(&lab)? >= end as f64).then_some(()))
            },
        )?;
    }
    let resolve_s = t0.elapsed().as_secs_f64();
    progress(NAME, format!("{n} peers programmed in {resolve_s:.1} s"));
    testbed::sleep(settle)?;
    progress(
        NAME,
        format!("{n} peers: observing the agent for {} s", window.as_secs()),
    );
    let loaded = observe(pid, window)?;
    let wg_loaded = wg_pid
        .map(|p| observe(p, Duration::from_secs(1)))
        .transpose()?;
    let peers_now = peers(&lab)?;
    drop(lab);

    let mib = |k: u64| k as f64 / 1024.0;
    let fig = |label: &str, u: &Usage| {
        vec![
            Figure::info(
                format!("CPU, {label}"),
                format!("{:.3} % of one core", u.cpu_percent),
            )
            .target(
                format!("≈ 0 (≤ {IDLE_CPU_MAX} %, no busy polling)"),
                u.cpu_percent <= IDLE_CPU_MAX,
            ),
            Figure::info(
                format!("RSS, {label}"),
                format!("{:.1} MiB (peak {:.1} MiB)", mib(u.rss_kib), mib(u.hwm_kib)),
            )
            .target(
                format!("≤ {RSS_MAX_MIB} MiB"),
                mib(u.hwm_kib) <= RSS_MAX_MIB,
            ),
            Figure::info(
                format!("wake-ups, {label}"),
                format!("{:.1}/s", u.wakeups_per_s),
            ),
        ]
    };
    let mut figures = fig("idle", &idle);
    figures.extend(fig(&format!("{n} cached peers"), &loaded));
    figures.push(Figure::info(
        format!("time to resolve and program {n} peers"),
        format!("{resolve_s:.1} s"),
    ));
    if let (Some(a), Some(b)) = (wg_idle, wg_loaded) {
        figures.push(Figure::info(
            "its wireguard-go (not the agent): RSS idle / with peers",
            format!(
                "{:.1} / {:.1} MiB; CPU {:.2} / {:.2} %",
                mib(a.rss_kib),
                mib(b.rss_kib),
                a.cpu_percent,
                b.cpu_percent
            ),
        ));
    }
    let usage_json = |u: &Usage| {
        json!({"cpu_percent": u.cpu_percent, "wakeups_per_s": u.wakeups_per_s,
               "rss_kib": u.rss_kib, "vm_hwm_kib": u.hwm_kib})
    };
    let series = vec![
        Series::new(
            "agent CPU (idle, with peers)",
            "% of one core",
            vec![idle.cpu_percent, loaded.cpu_percent],
        )
        .with_details(
            json!({"idle": usage_json(&idle), "with_peers": usage_json(&loaded),
            "peers": peers_now,
            "wireguard_go": {"idle": wg_idle.as_ref().map(usage_json),
                             "with_peers": wg_loaded.as_ref().map(usage_json)}}),
        ),
        Series::new(
            "agent RSS (idle, with peers)",
            "KiB",
            vec![idle.rss_kib as f64, loaded.rss_kib as f64],
        ),
    ];
    let bar = |series: &str, v: f64| Bar {
        series: series.into(),
        value: v,
        range: None,
    };
    let svg = svg::bars(
        "xtr agent: resident memory (MiB) and CPU (% of a core ×10)",
        "MiB  /  % of one core × 10",
        &[
            (
                "idle".into(),
                vec![
                    bar("RSS MiB", mib(idle.rss_kib)),
                    bar("peak RSS MiB", mib(idle.hwm_kib)),
                    bar("CPU % × 10", idle.cpu_percent * 10.0),
                ],
            ),
            (
                format!("{n} peers"),
                vec![
                    bar("RSS MiB", mib(loaded.rss_kib)),
                    bar("peak RSS MiB", mib(loaded.hwm_kib)),
                    bar("CPU % × 10", loaded.cpu_percent * 10.0),
                ],
            ),
        ],
        &[RefLine::new("RSS target 20 MiB", RSS_MAX_MIB)],
    );
    let why = super::if_missed(
        &figures,
        "Why a target is missed: see the wake-ups per second; an agent that polls wakes \
         often, and its resident memory grows with the map-cache and peers it holds."
            .into(),
    );
    let outcome = Outcome {
        title: "Agent footprint idle and with 1 000 cached peers",
        description: format!(
            "robot-a's agent (xtr, mobile-node mode) after registering, left alone for {} s: \
             CPU from /proc/<pid>/stat (utime + stime), wake-ups from the context switches of \
             all its threads, resident memory from /proc/<pid>/status (VmRSS, peak VmHWM). Then \
             it resolves {n} EIDs (one UDP datagram to each; the map-server serves them as \
             static mappings with distinct WireGuard keys), so it holds {n} map-cache entries, \
             data peers and routes, and is observed again for {} s.",
            window.as_secs(),
            window.as_secs()
        ),
        parameters: json!({"peers": n, "window_s": window.as_secs(), "settle_s": settle.as_secs()}),
        series,
        figures,
        notes: why.into_iter().chain([
            "wireguard-go runs as a separate process (the userspace backend); its memory and CPU \
             are shown for context and are not the agent's. On robots with kernel WireGuard it \
             does not exist."
                .into(),
        ]).collect(),
        svg,
        more_svgs: Vec::new(),
    };
    Ok(ctx.result(NAME, started, outcome))
}
