//! Smoke test: `bench all --quick` runs every experiment against the
//! workspace's binaries and each result file holds samples. It checks that
//! the experiments work end to end, not their timings (this runs in debug
//! builds, on shared CI machines). Needs root, like the netns integration
//! tests: it fails, never skips, without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole quick run must end well within this.
const LIMIT: Duration = Duration::from_secs(170);

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bench"))
        .parent()
        .expect("the bench binary's folder")
        .to_path_buf()
}

/// The map-server and xtr next to the bench binary, built if missing (a
/// `cargo test -p bench` alone does not build other packages' binaries).
fn ensure_binaries() {
    let dir = bin_dir();
    if ["xtr", "map-server"].iter().all(|b| dir.join(b).is_file()) {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "-p", "xtr", "-p", "map-server", "--bins"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of xtr and map-server failed");
}

#[test]
fn quick_mode_produces_samples_for_every_experiment() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the bench smoke test must run as root (namespaces, TUN, WireGuard): use scripts/test.sh"
    );
    ensure_binaries();
    let out = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["all", "--quick", "--out"])
        .arg(out.path())
        .arg("--bin-dir")
        .arg(bin_dir())
        .stdin(Stdio::null())
        .spawn()
        .expect("start bench");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for bench") {
            break s;
        }
        if t0.elapsed() > LIMIT {
            // SIGINT: the bench stops its daemons and deletes its namespaces.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
            panic!("bench all --quick took longer than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "bench all --quick failed: {status}");
    // Nothing of the run is left: its namespaces and wireguard-go sockets
    // are named lw<tag><pid % 10000>….
    let pid = child.id() % 10_000;
    let ours = |name: &str| {
        ["lwb", "lwld", "lwrg", "lwmt", "lwct", "lwmi", "lwci"]
            .iter()
            .any(|tag| name.starts_with(&format!("{tag}{pid}")))
    };
    for dir in ["/var/run/netns", "/var/run/wireguard"] {
        let left: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| ours(n))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "the bench left in {dir}: {left:?}");
    }
    eprintln!("bench all --quick took {:.0} s", t0.elapsed().as_secs_f64());

    for name in bench::exp::EXPERIMENTS.iter().map(|e| e.name) {
        let path = out.path().join(format!("{name}.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v: serde_json::Value = serde_json::from_str(&text).expect("result is JSON");
        assert_eq!(v["experiment"], name);
        assert_eq!(v["mode"], "quick");
        let series = v["series"].as_array().expect("series");
        assert!(!series.is_empty(), "{name}: no series");
        for s in series {
            let samples = s["samples"].as_array().expect("samples");
            assert!(
                !samples.is_empty(),
                "{name}: series {} has no samples",
                s["name"]
            );
            assert!(
                samples.iter().all(|x| x.is_number()),
                "{name}: {}",
                s["name"]
            );
        }
        for plot in v["plots"].as_array().expect("plots") {
            let svg = out.path().join(plot.as_str().expect("plot name"));
            let text =
                std::fs::read_to_string(&svg).unwrap_or_else(|e| panic!("{}: {e}", svg.display()));
            assert!(text.starts_with("<svg"), "{}", svg.display());
        }
        assert!(
            v["machine"]["cores"].as_u64().unwrap_or(0) > 0,
            "{name}: no machine"
        );
    }
    let summary = std::fs::read_to_string(out.path().join("SUMMARY.md")).expect("SUMMARY.md");
    assert!(summary.contains("## ms-scale") && summary.contains("## handover"));
}
