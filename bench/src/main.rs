//! `bench`: the lispwg benchmarks. See `bench --help`.

use anyhow::{bail, Context, Result};
use bench::exp::{self, Ctx};
use bench::report::{self, Machine};
use clap::{Arg, ArgMatches, Args, FromArgMatches};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use testbed::Bins;

// The options every subcommand takes (a doc comment here would become the
// command's about).
#[derive(Args)]
struct Global {
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
}

/// The command line: one subcommand per experiment of [`exp::EXPERIMENTS`],
/// then `all`, `summary` and the hidden `reflector`.
fn cli() -> clap::Command {
    let mut cmd = Global::augment_args(
        clap::Command::new("bench")
            .version(env!("CARGO_PKG_VERSION"))
            .about("The thesis's experiments, replayed against lispwg in network namespaces.")
            .long_about(include_str!("long_about.txt"))
            .subcommand_required(true),
    );
    for e in exp::EXPERIMENTS {
        cmd = cmd.subcommand(clap::Command::new(e.name).about(e.about));
    }
    cmd.subcommand(clap::Command::new("all").about(
        "Every experiment above, in that order, then SUMMARY.md. About 15 minutes on 2 cores; \
         with --quick, under 3.",
    ))
    .subcommand(
        clap::Command::new("summary").about("Rebuild SUMMARY.md from the result files in --out."),
    )
    .subcommand(
        clap::Command::new("reflector")
            .about(
                "(Used by ms-scale.) The do-nothing reflector: answers each Map-Request with a \
                 precomputed Map-Reply, nonce patched; one datagram per system call, or batched.",
            )
            .hide(true)
            .arg(
                Arg::new("listen")
                    .long("listen")
                    .required(true)
                    .value_parser(clap::value_parser!(SocketAddr)),
            )
            .arg(
                Arg::new("batched")
                    .long("batched")
                    .action(clap::ArgAction::SetTrue)
                    .help("up to 32 datagrams per system call (recvmmsg/sendmmsg)"),
            ),
    )
}

fn default_out() -> PathBuf {
    if Path::new("bench/Cargo.toml").is_file() {
        PathBuf::from("bench/results")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
    }
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    let global = match Global::from_arg_matches(&matches) {
        Ok(g) => g,
        Err(e) => e.exit(),
    };
    match run(global, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Global, matches: &ArgMatches) -> Result<()> {
    let out = cli.out.clone().unwrap_or_else(default_out);
    let selected: Vec<&str> = match matches.subcommand() {
        Some(("reflector", m)) => {
            let listen = *m.get_one::<SocketAddr>("listen").context("--listen")?;
            return if m.get_flag("batched") {
                bench::lisp::reflector_batched(listen)
            } else {
                bench::lisp::reflector(listen)
            };
        }
        Some(("summary", _)) => {
            report::write_summary(&out)?;
            println!("wrote {}", out.join("SUMMARY.md").display());
            return Ok(());
        }
        Some(("all", _)) => exp::EXPERIMENTS.iter().map(|e| e.name).collect(),
        Some((name, _)) => vec![name],
        None => bail!("no subcommand"),
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
    for e in exp::EXPERIMENTS {
        let name = e.name;
        if !selected.contains(&name) {
            continue;
        }
        if testbed::interrupted().is_err() {
            failed.push(format!("{name}: not run (interrupted)"));
            continue;
        }
        let t = Instant::now();
        eprintln!("bench: == {name} ==");
        match (e.run)(&ctx) {
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
