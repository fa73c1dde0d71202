//! What operators' tools see of the daemons, in the namespace lab: `/metrics`
//! passes `promtool check metrics` with the per-peer series, `status --json`
//! parses and says what the text says, `/healthz` answers, and a lab run's
//! logs carry values (no Rust debug text), one line per event, and no
//! spurious restart on a clean shutdown.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use testbed::{binary, output_text, require_root_and_tools, Lab, LabSpec};

/// Runs `promtool check metrics` on `text`; panics with its complaints.
fn promtool_check(what: &str, text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics fails on the {what}'s /metrics:\n{}\n--- page:\n{text}",
        output_text(&out)
    );
}

/// The value of `name{labels}` exactly as written on the page.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_pass_promtool_and_carry_per_peer_series() {
    require_root_and_tools(&["promtool"]).unwrap_or_else(|e| panic!("{e:#}"));
    let lab = Lab::for_test(LabSpec::campus().tag("om").idle("edge"));
    lab.ping_ok("robot-a", "10.0.0.2", 2);

    let ms = lab.fetch("map-server", "/metrics").unwrap();
    promtool_check("map-server", &ms);
    for peer in ["robot-a", "robot-b"] {
        let registered = format!("lispwg_map_server_peer_registered{{peer=\"{peer}\"}}");
        assert_eq!(series(&ms, &registered), Some(1.0), "{registered}:\n{ms}");
        let age =
            format!("lispwg_map_server_peer_last_registration_age_seconds{{peer=\"{peer}\"}}");
        assert!(
            series(&ms, &age).is_some_and(|a| (0.0..120.0).contains(&a)),
            "{age}:\n{ms}"
        );
        let refusals = format!("lispwg_map_server_peer_refusals_total{{peer=\"{peer}\"}}");
        assert_eq!(series(&ms, &refusals), Some(0.0), "{refusals}:\n{ms}");
    }
    let requests = "lispwg_map_server_peer_map_requests_total{peer=\"robot-a\"}";
    assert!(
        series(&ms, requests).is_some_and(|n| n >= 1.0),
        "{requests}:\n{ms}"
    );
    // The edge is configured in the campus lab but not running.
    let edge = "lispwg_map_server_peer_registered{peer=\"edge\"}";
    assert_eq!(series(&ms, edge), Some(0.0), "{edge}:\n{ms}");
    assert!(series(&ms, "lispwg_map_server_map_registers_total").is_some_and(|n| n >= 2.0));

    let xtr = lab.fetch("robot-a", "/metrics").unwrap();
    promtool_check("agent", &xtr);
    assert!(
        series(&xtr, "lispwg_xtr_cache_add_seconds_count").is_some_and(|n| n >= 1.0),
        "{xtr}"
    );
    assert!(
        series(&xtr, "lispwg_xtr_peers").is_some_and(|n| n >= 1.0),
        "{xtr}"
    );

    for daemon in ["map-server", "robot-a"] {
        assert_eq!(lab.fetch(daemon, "/healthz").unwrap(), "ok\n");
    }
}

#[test]
fn status_json_parses_and_says_what_the_text_says() {
    let lab = Lab::for_test(LabSpec::campus().tag("oj").idle("edge"));
    lab.ping_ok("robot-a", "10.0.0.2", 2);
    let run = |node: &str, bin: &str, config: &str, json: bool| {
        let bin = binary(bin);
        let mut args = vec![bin.to_str().unwrap(), "status", "-c", config];
        if json {
            args.push("--json");
        }
        let out = lab.exec(node, &args);
        assert!(
            out.status.success(),
            "{bin:?} status: {}",
            output_text(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let ms_config = lab.config_path("map-server");
    let ms_config = ms_config.to_str().unwrap();
    let text = run("ms", "map-server", ms_config, false);
    let doc: serde_json::Value =
        serde_json::from_str(&run("ms", "map-server", ms_config, true)).unwrap();
    assert_eq!(doc["schema"], 1, "{doc:#}");
    assert!(doc["uptime_secs"].as_f64().is_some(), "{doc:#}");
    assert!(doc["control_tunnel"]["interface"].is_string(), "{doc:#}");
    assert!(
        doc["counters"]["map_registers_total"].as_u64().unwrap() >= 2,
        "{doc:#}"
    );
    let mappings = doc["mappings"].as_array().unwrap();
    assert_eq!(
        doc["live_mappings"].as_u64().unwrap() as usize,
        mappings.len()
    );
    let by_peer: HashMap<&str, &serde_json::Value> = mappings
        .iter()
        .filter_map(|m| Some((m["peer"].as_str()?, m)))
        .collect();
    for peer in ["robot-a", "robot-b"] {
        let m = by_peer
            .get(peer)
            .unwrap_or_else(|| panic!("no mapping of {peer}: {doc:#}"));
        let eid = m["eid"].as_str().unwrap();
        let rloc = m["rloc"].as_str().unwrap();
        assert!(
            text.contains(eid) && text.contains(rloc),
            "{eid} {rloc} not in\n{text}"
        );
        assert!(m["age_secs"].as_f64().is_some() && m["expires_in_secs"].as_f64().is_some());
    }
    assert_eq!(doc["silent_peers"], serde_json::json!(["edge"]), "{doc:#}");

    let xtr_config = lab.config_path("robot-a");
    let xtr_config = xtr_config.to_str().unwrap();
    let text = run("robot-a", "xtr", xtr_config, false);
    let doc: serde_json::Value =
        serde_json::from_str(&run("robot-a", "xtr", xtr_config, true)).unwrap();
    assert_eq!(doc["schema"], 1, "{doc:#}");
    assert_eq!(doc["mode"], "mobile-node", "{doc:#}");
    assert_eq!(
        doc["eids"],
        serde_json::json!(["[0]10.0.0.1/32"]),
        "{doc:#}"
    );
    let key = doc["public_key"].as_str().unwrap();
    assert_eq!(key, lab.public_key("robot-a").unwrap());
    assert!(text.contains(key), "{text}");
    assert_eq!(doc["map_servers"][0]["registered"], true, "{doc:#}");
    let cache = doc["map_cache"].as_array().unwrap();
    let b = cache
        .iter()
        .find(|e| e["eid"] == "[0]10.0.0.2/32")
        .unwrap_or_else(|| panic!("robot-b not in the map-cache: {doc:#}"));
    assert_eq!(b["negative"], false);
    assert_eq!(b["public_key"], lab.public_key("robot-b").unwrap().as_str());
    assert!(text.contains("[0]10.0.0.2/32"), "{text}");
    let peers = doc["peers"].as_array().unwrap();
    assert!(
        peers
            .iter()
            .any(|p| p["role"] == "map-server ms" && p["since_handshake_secs"].as_f64().is_some()),
        "{doc:#}"
    );
    assert!(peers.iter().all(|p| p["rx_bytes"].is_u64()), "{doc:#}");
}

/// Lines of a log that look like Rust debug text leaking into a field.
fn debug_leaks(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            ["Some(", "Ok(", "Err(", "None,", "=None"]
                .iter()
                .any(|d| l.contains(d))
        })
        .collect()
}

/// A line without its timestamp (the first word).
fn event(line: &str) -> &str {
    line.split_once(' ')
        .map_or(line, |(_, rest)| rest.trim_start())
}

#[test]
fn a_lab_run_logs_values_once_and_shuts_down_quietly() {
    let mut lab = Lab::for_test(LabSpec::campus().tag("ol"));
    lab.ping_ok("robot-a", "10.0.0.2", 2);
    lab.ping_ok("robot-a", "10.1.0.10", 2);
    let daemons = ["robot-a", "robot-b", "edge", "map-server"];
    // The units' ExecReload sends SIGHUP: logged, and survived.
    for d in ["robot-a", "map-server"] {
        let pid = lab.pid(d).expect("running") as i32;
        // SAFETY: kill(2) on a process this lab started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    for d in ["robot-a", "map-server"] {
        assert_eq!(
            lab.fetch(d, "/healthz").unwrap(),
            "ok\n",
            "{d} after SIGHUP"
        );
    }
    for d in daemons {
        let status = lab.stop(d).unwrap().expect("stops on SIGTERM");
        assert!(status.success(), "{d} exit status {status}");
    }
    for d in daemons {
        let log = std::fs::read_to_string(lab.log_path(d)).unwrap();
        assert!(log.lines().count() > 3, "{d} logged almost nothing:\n{log}");
        let leaks = debug_leaks(&log);
        assert!(
            leaks.is_empty(),
            "{d} logs Rust debug text:\n{}",
            leaks.join("\n")
        );
        assert!(
            !log.contains("restarting"),
            "{d}: a clean shutdown restarted something:\n{log}"
        );
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for line in log.lines() {
            *seen.entry(event(line)).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
        assert!(
            twice.is_empty(),
            "{d} logs one event more than once: {twice:#?}\n{log}"
        );
        assert!(
            log.contains("stopped") || log.contains("shutting down"),
            "{log}"
        );
        // One event, one line, also across layers: wgctl says the interface
        // was created, the daemon does not say it again.
        let created = log
            .lines()
            .filter(|l| l.contains("WireGuard interface"))
            .count();
        assert_eq!(
            created, 1,
            "{d}: the WireGuard interface is announced {created} times:\n{log}"
        );
        let hups = log.matches("reload not supported yet; ignored").count();
        let want = usize::from(["robot-a", "map-server"].contains(&d));
        assert_eq!(hups, want, "{d}: SIGHUP lines:\n{log}");
    }
}

/// `xtr genkey | true`, `map-server status | head`: a reader that goes away
/// ends the tool quietly (by SIGPIPE, or status 0), never with a panic.
#[test]
fn a_closed_stdout_ends_the_command_line_tools_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (bin, args) = ("xtr", ["genkey"]);
    let mut child = Command::new(binary(bin))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the tool writes.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{bin} {args:?}: {stderr}");
    let quiet = out.status.signal() == Some(libc::SIGPIPE) || out.status.code().is_some();
    assert!(quiet, "{bin} {args:?}: {:?} {stderr}", out.status);
}
