//! Result files: `<experiment>.json` (raw samples, summaries, the figures
//! beside the thesis's and the targets, the machine), `<experiment>.svg`, and
//! `SUMMARY.md`, rebuilt from every result file in the folder.

use crate::stats::{summarize, Summary};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the numbers were measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_mib: u64,
    pub kernel: String,
    pub wireguard_backend: String,
    /// Profile of the lispwg binaries measured (release or debug).
    pub binaries: String,
    pub git_commit: String,
}

impl Machine {
    pub fn probe(binaries: &str) -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim())
            })
            .unwrap_or("unknown")
            .to_string();
        let memory_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix(" kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            / 1024;
        let wg_version = std::process::Command::new("wireguard-go")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "wireguard-go (version unknown)".into());
        let kernel_module = Path::new("/sys/module/wireguard").exists();
        let git_commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            memory_mib,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            wireguard_backend: format!(
                "userspace: {wg_version} (kernel WireGuard module {})",
                if kernel_module {
                    "present but not used"
                } else {
                    "absent"
                }
            ),
            binaries: binaries.to_string(),
            git_commit,
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "{} cores ({}), {} MiB, Linux {}, WireGuard {}, {} binaries, commit {}",
            self.cores,
            self.cpu,
            self.memory_mib,
            self.kernel,
            self.wireguard_backend,
            self.binaries,
            self.git_commit
        )
    }
}

/// Raw samples of one quantity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub unit: String,
    pub samples: Vec<f64>,
    pub summary: Summary,
    /// Per-sample context (e.g. the direction of each move), when useful.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl Series {
    /// Samples are rounded to 6 decimals (below any precision measured), so
    /// the files hold no floating-point noise.
    pub fn new(name: impl Into<String>, unit: impl Into<String>, samples: Vec<f64>) -> Series {
        let samples: Vec<f64> = samples.iter().map(|x| (x * 1e6).round() / 1e6).collect();
        let summary = summarize(&samples);
        Series {
            name: name.into(),
            unit: unit.into(),
            samples,
            summary,
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Series {
        self.details = Some(details);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Met,
    Missed,
    /// No target: context only.
    Info,
}

/// One line of the summary table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub measure: String,
    pub ours: String,
    pub baseline: String,
    pub thesis: String,
    pub target: String,
    pub status: Status,
    /// How the figure varies (e.g. "median (min–max) of 3 runs"); empty when
    /// it is a single measurement.
    #[serde(default)]
    pub noise: String,
}

impl Figure {
    pub fn info(measure: impl Into<String>, ours: impl Into<String>) -> Figure {
        Figure {
            measure: measure.into(),
            ours: ours.into(),
            baseline: "–".into(),
            thesis: "–".into(),
            target: "–".into(),
            status: Status::Info,
            noise: String::new(),
        }
    }

    pub fn target(mut self, target: impl Into<String>, met: bool) -> Figure {
        self.target = target.into();
        self.status = if met { Status::Met } else { Status::Missed };
        self
    }

    pub fn baseline(mut self, b: impl Into<String>) -> Figure {
        self.baseline = b.into();
        self
    }

    pub fn thesis(mut self, t: impl Into<String>) -> Figure {
        self.thesis = t.into();
        self
    }

    pub fn noise(mut self, n: impl Into<String>) -> Figure {
        self.noise = n.into();
        self
    }
}

/// Everything one experiment produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentResult {
    pub experiment: String,
    pub title: String,
    pub description: String,
    /// "full" or "quick".
    pub mode: String,
    pub started_utc: String,
    pub duration_s: f64,
    pub machine: Machine,
    pub parameters: serde_json::Value,
    pub series: Vec<Series>,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
    /// The charts, next to the JSON file.
    pub plots: Vec<String>,
}

/// `t` as "YYYY-MM-DD HH:MM:SS UTC".
pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Writes `<experiment>.json` and its charts (file name, SVG) into `out`.
pub fn write(out: &Path, result: &ExperimentResult, svgs: &[(String, String)]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let json = out.join(format!("{}.json", result.experiment));
    std::fs::write(&json, serde_json::to_string_pretty(result)? + "\n")
        .with_context(|| format!("write {}", json.display()))?;
    for (name, svg) in svgs {
        let plot = out.join(name);
        std::fs::write(&plot, svg).with_context(|| format!("write {}", plot.display()))?;
    }
    Ok(())
}

fn status_cell(s: Status) -> &'static str {
    match s {
        Status::Met => "met",
        Status::Missed => "**MISSED**",
        Status::Info => "",
    }
}

/// Rebuilds `SUMMARY.md` from the result files in `out`.
pub fn write_summary(out: &Path) -> Result<()> {
    let mut results = Vec::new();
    for e in crate::exp::EXPERIMENTS {
        let path = out.join(format!("{}.json", e.name));
        if !path.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let r: ExperimentResult = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a bench result", path.display()))?;
        results.push(r);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# lispwg benchmarks: the thesis's experiments, replayed\n"
    );
    let _ = writeln!(
        s,
        "Written by `bench` from the result files next to it; every number below was measured \
         in the run named with each experiment (raw samples in `<experiment>.json`). \
         Re-run with `sudo ./target/release/bench all` (see the README's Benchmarks section).\n"
    );
    let _ = writeln!(
        s,
        "The thesis's figures come from a 1 GbE testbed of three 24-core machines with kernel \
         WireGuard and OOR; ours come from network namespaces on the machine below, with \
         userspace WireGuard (wireguard-go) for both our tunnels and the hand-configured \
         baseline. Each table puts the baseline measured in the same run beside our figure. \
         Figures marked *noisy* give the median (min–max) over repetitions.\n"
    );
    if results.iter().any(|r| r.mode == "quick") {
        let _ = writeln!(
            s,
            "**Quick mode** (`--quick`): short runs that check every experiment works; the \
             numbers are not meant to be quoted.\n"
        );
    }
    let total: f64 = results.iter().map(|r| r.duration_s).sum();
    let _ = writeln!(
        s,
        "The experiments below took {:.0} s in all ({:.1} min).\n",
        total,
        total / 60.0
    );
    let mut machines: Vec<String> = results.iter().map(|r| r.machine.one_line()).collect();
    machines.dedup();
    for m in &machines {
        let _ = writeln!(s, "**Machine:** {m}\n");
    }
    let missed: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.figures
                .iter()
                .filter(|f| f.status == Status::Missed)
                .map(move |f| format!("{}: {}", r.experiment, f.measure))
        })
        .collect();
    if missed.is_empty() {
        let _ = writeln!(s, "**Targets:** every target below was met in this run.\n");
    } else {
        let _ = writeln!(
            s,
            "**Targets missed in this run:** {}. Why is said under each experiment.\n",
            missed.join("; ")
        );
    }
    let _ = writeln!(
        s,
        "| experiment | measure | ours | baseline (same run) | thesis | target | |\n|---|---|---|---|---|---|---|"
    );
    for r in &results {
        for f in r.figures.iter().filter(|f| f.status != Status::Info) {
            let _ = writeln!(
                s,
                "| [{}](#{}) | {} | {} | {} | {} | {} | {} |",
                r.experiment,
                r.experiment,
                f.measure,
                f.ours,
                f.baseline,
                f.thesis,
                f.target,
                status_cell(f.status)
            );
        }
    }
    s.push('\n');
    for r in &results {
        let _ = writeln!(s, "## {}\n", r.experiment);
        let _ = writeln!(s, "**{}.** {}\n", r.title, r.description);
        let _ = writeln!(
            s,
            "Run: {} ({} mode, {:.1} s). Raw data: [`{}.json`]({}.json).\n",
            r.started_utc, r.mode, r.duration_s, r.experiment, r.experiment
        );
        let _ = writeln!(
            s,
            "| measure | ours | baseline (same run) | thesis | target | | noise |\n|---|---|---|---|---|---|---|"
        );
        for f in &r.figures {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                f.measure,
                f.ours,
                f.baseline,
                f.thesis,
                f.target,
                status_cell(f.status),
                if f.noise.is_empty() {
                    String::new()
                } else {
                    format!("*noisy*: {}", f.noise)
                }
            );
        }
        s.push('\n');
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
        if !r.notes.is_empty() {
            s.push('\n');
        }
        for p in &r.plots {
            let _ = writeln!(s, "![{}]({p})\n", r.title);
        }
    }
    std::fs::write(out.join("SUMMARY.md"), s)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "2024-02-29 12:34:56 UTC"
        );
    }
}
