//! # bench: the thesis's experiments, replayed against lispwg
//!
//! Each experiment builds what it needs in network namespaces it creates and
//! deletes, runs the real `map-server` and `xtr` binaries, measures a
//! baseline in the same run, and writes `<experiment>.json` (raw samples,
//! summaries, the machine), a chart as SVG, and `SUMMARY.md` (our figures
//! beside the thesis's and the targets). The `bench` binary is a thin CLI
//! over [`exp`].

pub mod control;
pub mod exp;
pub mod icmp;
pub mod lisp;
pub mod report;
pub mod stats;
pub mod svg;
pub mod sys;
