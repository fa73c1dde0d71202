//! `bench`: the lispwg benchmarks. See `bench --help`.

use anyhow::{bail, Context, Result};
use bench::exp::{self, Ctx};
use bench::report::{self, Machine};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use testbed::Bins;

/// The thesis's experiments, replayed against lispwg in network namespaces.
///
/// Each experiment runs the real map-server and xtr binaries (by default the
/// ones next to this binary: build them with `cargo build --release --bins`),
/// measures a baseline in the same run, and writes into --out:
/// <experiment>.json (raw samples, summaries, the machine), a chart
/// (<experiment>.svg) and SUMMARY.md (figures beside the thesis's and the
/// targets). Needs root, wireguard-go, wg, ip, ping and iperf3. Everything it
/// creates (namespaces lw…, interfaces, processes) is removed again, on
/// Ctrl-C too.
#[derive(Parser)]
#[command(name = "bench", version)]
struct Cli {
    /// Short runs (fewer repetitions and sizes, a few minutes in all): a
    /// smoke test that every experiment produces samples, not timings to
    /// quote.
    #[arg(long, global = true)]
    quick: bool,
    /// Where results go [default: bench/results under the current
    /// directory if it is the workspace, else next to the bench sources].
    #[arg(long, global = true, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Folder with the map-server and xtr binaries [default: this binary's
    /// folder].
    #[arg(long, global = true, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Keep the scratch folder (configurations, keys, daemon logs).
    #[arg(long, global = true)]
    keep: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// TCP and UDP (1380-byte payloads) through an on-demand tunnel with
    /// iperf3, beside a hand-configured wireguard-go tunnel between the same
    /// namespaces and the plain underlay. Target: ≥ 95 % of the
    /// hand-configured tunnel. Full: 3 runs × 10 s per path and protocol.
    Throughput,
    /// Time from a map-cache miss to the peer being programmed, for 100
    /// fresh EIDs (read from the agent's lispwg_xtr_cache_add_seconds
    /// histogram). Thesis: 16.6 ms (OOR+WG), 13.2 ms (OOR). Target: p50 ≤ 2 ms,
    /// p99 ≤ 5 ms.
    CacheAdd,
    /// A fresh robot pair (both agents restarted), fast ping (every 2 ms):
    /// time from the first request to the first reply and requests lost, 100
    /// repetitions. Thesis: 32.6 ms with the first packets dropped. Target:
    /// p50 ≤ 5 ms and nothing lost.
    FirstPacket,
    /// Map-Request → Map-Reply latency (1 outstanding) and throughput (8 and
    /// 64 outstanding) at 10, 1 000, 100 000 and 1 000 000 mappings, plus
    /// RSS and start-up time, beside a do-nothing UDP reflector on the same
    /// path. Targets: ≥ 75 % of the reflector, p50 flat within 10 %, RSS ≤
    /// 256 MiB and start-up ≤ 2 s at 1 000 000.
    MsScale,
    /// Map-Register → Map-Notify rate with HMAC-SHA-256, persisted (durable
    /// redb commit before the notify). Target: ≥ 20 000 registrations/s.
    Register,
    /// robot-b moves subnet 20 times while robot-a pings every 10 ms; outage
    /// per move, with the map-server's push on, then off (WireGuard roaming
    /// only), then off with robot-b sending too. Thesis: ≈1 s (OOR+WG), 8–10
    /// s (OOR). Target: p50 < 100 ms, max < 250 ms.
    Handover,
    /// The xtr's RSS and CPU when idle and with 1 000 cached peers. Target:
    /// idle CPU ≈ 0 (no busy polling), RSS ≤ 20 MiB.
    Agent,
    /// Every experiment above, in that order, then SUMMARY.md. About 15
    /// minutes on 2 cores; with --quick, under 3.
    All,
    /// Rebuild SUMMARY.md from the result files in --out.
    Summary,
    /// (Used by ms-scale.) The do-nothing reflector: answers each
    /// Map-Request with a precomputed Map-Reply, nonce patched.
    #[command(hide = true)]
    Reflector {
        #[arg(long)]
        listen: SocketAddr,
    },
}

type Runner = fn(&Ctx) -> Result<exp::Produced>;

fn experiments() -> Vec<(&'static str, Runner)> {
    vec![
        ("throughput", exp::throughput::run as Runner),
        ("cache-add", exp::cache_add::run),
        ("first-packet", exp::first_packet::run),
        ("ms-scale", exp::ms_scale::run),
        ("register", exp::register::run),
        ("handover", exp::handover::run),
        ("agent", exp::agent::run),
    ]
}

fn default_out() -> PathBuf {
    if Path::new("bench/Cargo.toml").is_file() {
        PathBuf::from("bench/results")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let out = cli.out.clone().unwrap_or_else(default_out);
    let selected: Vec<&str> = match &cli.command {
        Command::Reflector { listen } => return bench::lisp::reflector(*listen),
        Command::Summary => {
            report::write_summary(&out)?;
            println!("wrote {}", out.join("SUMMARY.md").display());
            return Ok(());
        }
        Command::All => report::EXPERIMENTS.to_vec(),
        Command::Throughput => vec!["throughput"],
        Command::CacheAdd => vec!["cache-add"],
        Command::FirstPacket => vec!["first-packet"],
        Command::MsScale => vec!["ms-scale"],
        Command::Register => vec!["register"],
        Command::Handover => vec!["handover"],
        Command::Agent => vec!["agent"],
    };
    testbed::require_root_and_tools(&[testbed::BASE_TOOLS, &["iperf3", "timeout"]].concat())?;
    testbed::install_signal_flag();
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary's folder")?
            .to_path_buf(),
    };
    let bins = Bins::in_dir(&bin_dir)?;
    let work = std::env::temp_dir().join(format!("lispwg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let machine = Machine::probe(&bins.profile());
    eprintln!(
        "bench: {} mode, binaries from {} ({}), results to {}",
        if cli.quick { "quick" } else { "full" },
        bins.dir.display(),
        bins.profile(),
        out.display()
    );
    eprintln!("bench: machine: {}", machine.one_line());
    let ctx = Ctx {
        bins,
        bench: std::env::current_exe().context("the bench's own path")?,
        quick: cli.quick,
        work: work.clone(),
        machine,
    };
    let t0 = Instant::now();
    let mut failed = Vec::new();
    for (name, runner) in experiments() {
        if !selected.contains(&name) {
            continue;
        }
        if testbed::interrupted().is_err() {
            failed.push(format!("{name}: not run (interrupted)"));
            continue;
        }
        let t = Instant::now();
        eprintln!("bench: == {name} ==");
        match runner(&ctx) {
            Ok((result, svgs)) => {
                report::write(&out, &result, &svgs)?;
                report::write_summary(&out)?;
                eprintln!(
                    "bench: {name} done in {:.0} s -> {}",
                    t.elapsed().as_secs_f64(),
                    out.join(format!("{name}.json")).display()
                );
            }
            Err(e) => {
                eprintln!(
                    "bench: {name} FAILED after {:.0} s: {e:#}",
                    t.elapsed().as_secs_f64()
                );
                failed.push(format!("{name}: {e:#}"));
            }
        }
    }
    eprintln!(
        "bench: finished in {:.0} s; summary in {}",
        t0.elapsed().as_secs_f64(),
        out.join("SUMMARY.md").display()
    );
    if cli.keep || !failed.is_empty() {
        eprintln!(
            "bench: scratch folder (logs, configurations) kept in {}",
            work.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    if !failed.is_empty() {
        bail!(
            "{} experiment(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}
