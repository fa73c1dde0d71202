//! `lispwg-lab`, the lab's command line: `down` removes everything `up`
//! made, even when `up` was killed half-way.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testbed::{binary, leftovers::leftovers, wait_until, Daemon};

fn lab_cli(dir: &Path, prefix: &str) -> Command {
    let mut cmd = Command::new(binary("lispwg-lab"));
    cmd.env("LAB_DIR", dir)
        .env("LAB_PREFIX", prefix)
        .env("LISPWG_BIN", binary("xtr").parent().unwrap());
    cmd
}

/// The namespaces and interfaces a campus lab with `prefix` makes.
fn made_by(prefix: &str) -> (Vec<String>, Vec<String>) {
    let nodes = ["router", "ms", "robot-a", "robot-b", "edge", "host"];
    let ifs = ["ms", "a", "am", "b", "bm", "e", "em"];
    (
        nodes.iter().map(|n| format!("{prefix}-{n}")).collect(),
        ifs.iter().map(|i| format!("{prefix}-{i}")).collect(),
    )
}

#[test]
fn down_cleans_up_after_an_up_that_was_killed_half_way() {
    testbed::require_root_and_tools(testbed::BASE_TOOLS).unwrap();
    binary("map-server");
    let dir = testbed::tempdir();
    let prefix = format!("lwk{}", std::process::id() % 10_000);
    let mut up_cmd = lab_cli(dir.path(), &prefix);
    up_cmd.arg("up");
    let mut up = Daemon::spawn("lispwg-lab up", up_cmd, &dir.path().join("up.log")).unwrap();
    // Killed once the map-server runs and before the agents have all
    // registered (or at worst just after): daemons and namespaces exist.
    let started = wait_until(Duration::from_secs(20), || {
        dir.path().join("map-server.pid").exists()
    });
    up.kill9();
    assert!(started, "lispwg-lab up never started the map-server");
    let ms_pid: u32 = std::fs::read_to_string(dir.path().join("map-server.pid"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        testbed::daemon::start_time(ms_pid).is_some(),
        "the map-server outlived the killed up"
    );
    let (namespaces, ifnames) = made_by(&prefix);
    assert!(
        !leftovers(&namespaces[..1], &[]).is_empty(),
        "the killed up had made the router's namespace"
    );

    let out = lab_cli(dir.path(), &prefix).arg("down").output().unwrap();
    assert!(
        out.status.success(),
        "lispwg-lab down: {}",
        testbed::output_text(&out)
    );
    assert!(
        testbed::daemon::start_time(ms_pid).is_none(),
        "down left the map-server (PID {ms_pid}) running"
    );
    let left = leftovers(&namespaces, &ifnames);
    assert!(left.is_empty(), "left behind: {}", left.join("; "));
    let pids: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .collect();
    assert!(pids.is_empty(), "PID files left: {pids:?}");
    // And a second down has nothing to do.
    let out = lab_cli(dir.path(), &prefix).arg("down").output().unwrap();
    assert!(out.status.success(), "{}", testbed::output_text(&out));
}
