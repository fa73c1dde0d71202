//! flood: one robot floods the map-server through its control tunnel, at
//! full speed, with Map-Requests and then with junk. Measured: the other
//! robot's lookups (answered, first-attempt p99) beside the same lookups
//! without the flood; the map-server's log growth per minute of junk; and
//! its RSS before and after.

use super::{ms, progress, Ctx, Outcome, Produced, Started};
use crate::control::{flood, lookups, request, Lookups};
use crate::report::{Figure, Series};
use crate::stats::summarize;
use crate::svg::{self, RefLine};
use anyhow::{Context, Result};
use lisp_wire::EidPrefix;
use serde_json::json;
use std::time::Duration;

const NAME: &str = "flood";
const GAP: Duration = Duration::from_millis(10);

fn unknown(s: &str) -> EidPrefix {
    EidPrefix::host(0, s.parse().expect("an address"))
}

fn log_len(lab: &testbed::Lab) -> Result<u64> {
    Ok(std::fs::metadata(lab.log_path("map-server"))?.len())
}

fn rss_mib(lab: &testbed::Lab) -> Result<f64> {
    let pid = lab.pid("map-server").context("the map-server runs")?;
    Ok(crate::sys::rss_kib(pid)?.0 as f64 / 1024.0)
}

/// robot-b's lookups while robot-a floods with what `junk` makes.
fn under_flood(
    lab: &testbed::Lab,
    n: u64,
    junk: impl Fn(u64, u16) -> Vec<u8> + Send + 'static,
) -> Result<(Lookups, u64)> {
    let secs = (n as f64) * (GAP.as_secs_f64() + 0.003) + 1.5;
    let flooder = flood(lab, "robot-a", secs, junk)?;
    testbed::sleep(Duration::from_millis(500))?;
    let seen = lookups(lab, "robot-b", unknown("10.0.0.99"), n, GAP)?;
    let sent = flooder
        .join()
        .map_err(|_| anyhow::anyhow!("the flooder panicked"))??;
    Ok((seen, sent))
}

fn first_attempt_p99(l: &Lookups) -> f64 {
    // Answers after a retransmission took ≥ 300 ms: they count as lost
    // first attempts, at their real latency.
    summarize(&l.latencies_ms).p99
}

pub fn run(ctx: &Ctx) -> Result<Produced> {
    let started = Started::now();
    let n: u64 = if ctx.quick { 100 } else { 1000 };
    let junk_secs: f64 = if ctx.quick { 5.0 } else { 30.0 };
    let dir = ctx.dir(NAME)?;
    progress(NAME, "bringing up the lab");
    let lab = super::lab(ctx, &dir.join("lab"), Vec::new(), true)?;
    let ctl_a = crate::control::control(&lab, "robot-a")?;
    let ms_ctl = crate::control::control(&lab, "ms")?;

    progress(NAME, format!("robot-b: {n} lookups, no flood"));
    let quiet = lookups(&lab, "robot-b", unknown("10.0.0.99"), n, GAP)?;
    let rss_before = rss_mib(&lab)?;

    progress(
        NAME,
        format!("robot-b: {n} lookups while robot-a floods Map-Requests"),
    );
    let (flooded, sent) = under_flood(&lab, n, move |i, port| {
        request(ctl_a, port, ms_ctl, i, &[unknown("10.0.0.77")]).unwrap_or_default()
    })?;
    let page = lab.fetch("map-server", "/metrics")?;
    let limited = testbed::metric(&page, "lispwg_map_server_rate_limited_total").unwrap_or(0.0);

    progress(NAME, format!("robot-a floods junk for {junk_secs} s"));
    let log0 = log_len(&lab)?;
    let junk = flood(&lab, "robot-a", junk_secs, |i, _| {
        let mut b = vec![0x30u8; 40];
        b[8..16].copy_from_slice(&i.to_be_bytes());
        b
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("the flooder panicked"))??;
    // The summary lines come once the sources' log intervals are over.
    testbed::sleep(Duration::from_secs(12))?;
    let grown = log_len(&lab)?.saturating_sub(log0);
    let per_minute_kib = grown as f64 / 1024.0 * 60.0 / junk_secs;
    let rss_after = rss_mib(&lab)?;
    drop(lab);

    let q = summarize(&quiet.latencies_ms);
    let f99 = first_attempt_p99(&flooded);
    let answered_pct = 100.0 * flooded.first as f64 / flooded.asked as f64;
    let rss_growth = 100.0 * (rss_after - rss_before) / rss_before;
    let figures = vec![
        Figure::info(
            "robot-b p99 without / with the flood",
            format!("{} / {}", ms(q.p99), ms(f99)),
        )
        .target("with ≤ 2 × without", f99 <= 2.0 * q.p99.max(0.5)),
        Figure::info(
            "robot-b answered at the first attempt during the flood",
            format!(
                "{answered_pct:.1} % ({} of {})",
                flooded.first, flooded.asked
            ),
        )
        .target("≥ 99 %", answered_pct >= 99.0),
        Figure::info(
            "map-server log growth, junk flood",
            format!("{per_minute_kib:.1} KiB per minute ({junk} datagrams in {junk_secs} s)"),
        )
        .target("≤ 1 MB per minute", per_minute_kib <= 1024.0),
        Figure::info(
            "map-server RSS before / after",
            format!("{rss_before:.1} / {rss_after:.1} MiB ({rss_growth:+.1} %)"),
        )
        .target("within 10 %", rss_growth.abs() <= 10.0),
        Figure::info(
            "flood sent / refused by the core's budget",
            format!("{sent} Map-Requests / {limited:.0}"),
        ),
    ];
    let svg = svg::cdf(
        "robot-b's lookups, with and without robot-a flooding",
        "milliseconds (log scale)",
        &[
            ("no flood".into(), quiet.latencies_ms.clone()),
            (
                "robot-a floods Map-Requests".into(),
                flooded.latencies_ms.clone(),
            ),
        ],
        &[RefLine::new("2 × quiet p99", 2.0 * q.p99)],
        true,
    );
    let outcome = Outcome {
        title: "One robot floods the map-server",
        description: format!(
            "In the bench's lab robot-b looks up an unregistered EID {n} times, one at a time \
             {} ms apart, through its WireGuard control tunnel, from a socket of its own \
             (retransmitting after 300 ms as an agent does); first alone, then while robot-a \
             sends Map-Requests from its control address as fast as it can. Then robot-a sends \
             junk (a Map-Register type and nothing valid) for {junk_secs} s and the map-server's \
             log growth is measured, with its RSS before the floods and after.",
            GAP.as_millis()
        ),
        parameters: json!({"lookups": n, "gap_ms": GAP.as_millis() as u64, "junk_secs": junk_secs}),
        series: vec![
            Series::new("lookups without the flood", "ms", quiet.latencies_ms),
            Series::new("lookups during the flood", "ms", flooded.latencies_ms),
        ],
        notes: [super::if_missed(
            &figures,
            "Why a target is missed: the flooder, its wireguard-go and the map-server's \
             wireguard-go share this machine's 2 cores with robot-b; the kernel drops what \
             robot-a sends beyond twice its budget before the map-server's WireGuard socket, \
             but robot-a's encryption still takes a core."
                .into(),
        )]
        .into_iter()
        .flatten()
        .chain([
            "The map-server drops what one source sends beyond twice its control budget in the \
             kernel (nftables, per underlay address and port on its WireGuard port, per control \
             address inside the tunnel), then budgets the rest exactly per control peer."
                .into(),
        ])
        .collect(),
        figures,
        svg,
        more_svgs: Vec::new(),
    };
    Ok(ctx.result(NAME, started, outcome))
}
