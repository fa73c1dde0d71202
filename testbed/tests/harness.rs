//! The harness itself: what it promises about namespaces, daemons, missing
//! tools and the configurations it writes.

use std::time::Duration;
use testbed::{binary, require_root_and_tools, Daemon, Lab, LabSpec, Netns};

#[test]
fn a_missing_tool_is_an_error_naming_it_and_its_package() {
    let err = require_root_and_tools(&["ip", "lispwg-no-such-tool", "nft"])
        .expect_err("a tool that does not exist");
    let text = format!("{err:#}");
    assert!(
        text.contains("missing tools: lispwg-no-such-tool (") && text.contains("apt-get install"),
        "only the missing tool, and how to install it: {text}"
    );
}

#[test]
fn a_namespace_and_what_runs_in_it_go_away_when_a_test_panics() {
    require_root_and_tools(&["ip", "sleep"]).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let ns = Netns::new("hp").unwrap();
        let log = testbed::daemon::temp_log("sleep");
        let d = ns.spawn("sleep", "sleep", &["30"], &log).unwrap();
        tx.send((ns.name().to_string(), d.pid())).unwrap();
        // A process the Daemon no longer tracks: the namespace kills it.
        d.detach();
        let _stray = ns.spawn("sleep", "sleep", &["30"], &log).unwrap();
        panic!("deliberate");
    });
    assert!(result.is_err());
    let (name, pid) = rx.recv().unwrap();
    assert!(!Netns::exists(&name), "{name} survived the panic");
    assert!(
        testbed::wait_until(Duration::from_secs(3), || {
            testbed::daemon::start_time(pid).is_none()
        }),
        "the process inside survived"
    );
}

#[test]
fn a_pid_file_of_another_process_is_never_adopted() {
    require_root_and_tools(&["ip", "sleep"]).unwrap();
    let dir = testbed::tempdir();
    let ns = Netns::new("hd").unwrap();
    let log = dir.path().join("sleep.log");
    let mut d = ns.spawn("sleep", "sleep", &["30"], &log).unwrap();
    let pid_file = dir.path().join("sleep.pid");
    d.record(&pid_file).unwrap();
    let adopted = Daemon::adopt("sleep", &pid_file, &log).unwrap();
    assert_eq!(adopted.as_ref().map(Daemon::pid), Some(d.pid()));
    adopted.unwrap().detach();
    // The same PID with another start time: a recycled PID.
    let (pid, start) = (d.pid(), testbed::daemon::start_time(d.pid()).unwrap());
    std::fs::write(&pid_file, format!("{pid} {}\n", start + 1)).unwrap();
    assert!(Daemon::adopt("sleep", &pid_file, &log).unwrap().is_none());
    assert!(!pid_file.exists(), "the stale PID file is removed");
    assert!(d.is_running(), "and the process was left alone");
    d.stop();
    assert!(!d.is_running());
}

#[test]
fn the_lab_writes_configurations_the_daemons_accept() {
    let lab = Lab::for_test(LabSpec::campus().tag("hc").map_servers(2).idle_all());
    for (daemon, node) in lab.spec().daemons() {
        let program = if daemon.starts_with("map-server") {
            binary("map-server")
        } else {
            binary("xtr")
        };
        let config = lab.config_path(&daemon);
        let out = lab.exec(
            &node,
            &[
                program.to_str().unwrap(),
                "check-config",
                "-c",
                config.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{daemon}: {}\n{}",
            testbed::output_text(&out),
            std::fs::read_to_string(&config).unwrap()
        );
    }
}
