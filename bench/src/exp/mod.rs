//! The experiments. Each builds what it needs in namespaces it creates and
//! deletes, runs the real binaries, and returns its result and chart.

pub mod agent;
pub mod cache_add;
pub mod first_packet;
pub mod handover;
pub mod ms_scale;
pub mod register;
pub mod throughput;

use crate::lab::Bins;
use crate::report::{utc, ExperimentResult, Figure, Machine, Series};
use anyhow::Result;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

/// What an experiment produces: its result and its charts (file name, SVG).
pub type Produced = (ExperimentResult, Vec<(String, String)>);

/// What every experiment gets.
pub struct Ctx {
    pub bins: Bins,
    pub quick: bool,
    /// Scratch space for this run: lab folders, configurations, logs.
    pub work: PathBuf,
    pub machine: Machine,
}

impl Ctx {
    pub fn mode(&self) -> &'static str {
        if self.quick {
            "quick"
        } else {
            "full"
        }
    }

    /// A fresh folder under the scratch space.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.work.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }
}

/// Prints a progress line.
pub fn progress(exp: &str, msg: impl AsRef<str>) {
    eprintln!("[{exp}] {}", msg.as_ref());
}

/// Start of an experiment, for its result's timing.
pub struct Started {
    wall: SystemTime,
    at: Instant,
}

impl Started {
    pub fn now() -> Started {
        Started {
            wall: SystemTime::now(),
            at: Instant::now(),
        }
    }
}

/// The parts of a result an experiment fills in.
pub struct Outcome {
    pub title: &'static str,
    pub description: String,
    pub parameters: serde_json::Value,
    pub series: Vec<Series>,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
    /// Charts: the first is `<experiment>.svg`, the others
    /// `<experiment>-<suffix>.svg`.
    pub svg: String,
    pub more_svgs: Vec<(&'static str, String)>,
}

impl Ctx {
    pub fn result(&self, experiment: &str, started: Started, o: Outcome) -> Produced {
        let mut svgs = vec![(format!("{experiment}.svg"), o.svg)];
        for (suffix, svg) in o.more_svgs {
            svgs.push((format!("{experiment}-{suffix}.svg"), svg));
        }
        (
            ExperimentResult {
                experiment: experiment.to_string(),
                title: o.title.to_string(),
                description: o.description,
                mode: self.mode().to_string(),
                started_utc: utc(started.wall),
                duration_s: started.at.elapsed().as_secs_f64(),
                machine: self.machine.clone(),
                parameters: o.parameters,
                series: o.series,
                figures: o.figures,
                notes: o.notes,
                plots: svgs.iter().map(|(n, _)| n.clone()).collect(),
            },
            svgs,
        )
    }
}

/// Milliseconds with three decimals.
pub fn ms(v: f64) -> String {
    format!("{v:.3} ms")
}

/// `note` when any of `figures` missed its target.
pub fn if_missed(figures: &[Figure], note: String) -> Option<String> {
    figures
        .iter()
        .any(|f| f.status == crate::report::Status::Missed)
        .then_some(note)
}
