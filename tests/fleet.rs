//! The fleet, live, in the namespace lab: peers in a peers directory,
//! SIGHUP reloads that drop nothing, `map-server revoke` taking effect
//! within a second both ways, and team rules refusing a cross-team lookup.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testbed::{binary, output_text as text, wait_until, Lab, LabSpec};

const MS: &str = "map-server";

/// Moves the lab's `[[peers]]` out of the map-server's file into one file
/// per peer in `peers.d` beside it, `edit`ing each on the way (as a
/// hand-edit or `map-server enroll` would write them).
///
/// The directory appears whole (the map-server watches it); the main file,
/// with `extra` appended, is written after it, and a SIGHUP takes both.
fn peers_to_dir(lab: &Lab, mut edit: impl FnMut(&str, &mut toml::Table), extra: &str) -> PathBuf {
    let file = lab.config_path(MS);
    let mut cfg: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    let peers = cfg.remove("peers").expect("the lab configures peers");
    let staged = lab.dir().join("peers.d.new");
    std::fs::create_dir_all(&staged).unwrap();
    for p in peers.as_array().unwrap() {
        let mut p = p.as_table().unwrap().clone();
        let name = p["name"].as_str().unwrap().to_string();
        // Relative paths are relative to the file that names them.
        if let Some(site) = p.get("site_key_file").and_then(|v| v.as_str()) {
            let abs = lab.dir().join(site).display().to_string();
            p.insert("site_key_file".into(), abs.into());
        }
        edit(&name, &mut p);
        write_private(
            &staged.join(format!("{name}.toml")),
            &toml::to_string(&p).unwrap(),
        );
    }
    let dir = lab.dir().join("peers.d");
    std::fs::rename(&staged, &dir).unwrap();
    write_private(&file, &(toml::to_string(&cfg).unwrap() + extra));
    sighup(lab);
    dir
}

/// Writes a file whole, 0600 from the start (the map-server watches the
/// peers directory and may read it at any moment).
fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    drop(f);
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits until counter `name` reaches `at_least`.
fn wait_metric(lab: &Lab, name: &str, at_least: u64) -> bool {
    wait_until(Duration::from_secs(3), || metric(lab, name) >= at_least)
}

fn sighup(lab: &Lab) {
    let pid = lab.pid(MS).expect("the map-server runs");
    let out = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// A counter of the map-server's `/metrics`.
fn metric(lab: &Lab, name: &str) -> u64 {
    let page = lab.fetch(MS, "/metrics").unwrap();
    page.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("lispwg_map_server_{name} "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or_else(|| panic!("no metric {name} in\n{page}")) as u64
}

fn status(lab: &Lab) -> serde_json::Value {
    serde_json::from_str(&lab.fetch(MS, "/status?format=json").unwrap()).unwrap()
}

fn registered_eids(lab: &Lab) -> Vec<String> {
    let mut v: Vec<String> = status(lab)["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["eid"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// `wg show latest-handshakes` of `name` for the peer with key `key`.
fn handshake(lab: &Lab, name: &str, key: &str) -> Option<String> {
    lab.wg_show(name, "latest-handshakes")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn has_peer(lab: &Lab, name: &str, key: &str) -> bool {
    lab.wg_show(name, "endpoints").iter().any(|(k, _)| k == key)
}

/// `ping -D` reply times, in seconds.
fn reply_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

#[test]
fn sighup_with_an_edited_peer_loses_no_registration_and_no_tunnel() {
    let mut lab = Lab::for_test(LabSpec::campus().tag("fh"));
    lab.ping_ok("robot-a", "10.0.0.2", 2);
    let a_key = lab.public_key("robot-a").unwrap();
    let before = registered_eids(&lab);
    let hs_before = handshake(&lab, "robot-b", &a_key).expect("robot-b has robot-a");

    // A 10 ms ping runs across both reloads.
    let log = lab.dir().join("reload-ping.log");
    let mut ping = lab
        .ns("robot-a")
        .spawn(
            "ping",
            "ping",
            &["-D", "-i", "0.01", "-W", "1", "-c", "300", "10.0.0.2"],
            &log,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // First reload: every peer now comes from the peers directory, and
    // robot-b's file is edited (a team of its own, opened to the default
    // team, so nothing it talks to is cut off).
    let dir = peers_to_dir(
        &lab,
        |name, p| {
            if name == "robot-b" {
                p.insert("team".into(), "lab".into());
            }
        },
        "\n[[teams]]\nname = \"default\"\nmay_resolve = [\"lab\"]\n\n[[teams]]\nname = \"lab\"\nmay_resolve = [\"default\"]\n",
    );
    assert!(
        wait_metric(&lab, "config_reloads_applied_total", 1),
        "the reload was not applied\n{}",
        lab.logs()
    );
    let applied = metric(&lab, "config_reloads_applied_total");
    // A broken edit is refused whole and the running configuration stays.
    let good = std::fs::read_to_string(dir.join("robot-b.toml")).unwrap();
    let failed = metric(&lab, "config_reloads_failed_total");
    write_private(&dir.join("robot-b.toml"), "name = \"robot-b\"\neids = [\n");
    sighup(&lab);
    assert!(
        wait_metric(&lab, "config_reloads_failed_total", failed + 1),
        "the broken edit was not refused\n{}",
        lab.logs()
    );
    // Fixed, it is taken again.
    write_private(&dir.join("robot-b.toml"), &good);
    sighup(&lab);
    assert!(
        wait_metric(&lab, "config_reloads_applied_total", applied + 1),
        "the fixed file was not taken\n{}",
        lab.logs()
    );
    assert!(
        wait_until(Duration::from_secs(10), || !ping.is_running()),
        "ping did not finish"
    );
    let times = reply_times(&ping.log());
    assert_eq!(
        times.len(),
        300,
        "replies lost across the reloads:\n{}",
        ping.log()
    );

    assert_eq!(registered_eids(&lab), before, "a registration was lost");
    let peers = status(&lab)["peers"].clone();
    let b = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "robot-b")
        .unwrap_or_else(|| panic!("robot-b is not listed: {peers:#}"));
    assert_eq!(b["team"], "lab", "{b:#}");
    assert_eq!(b["state"], "registered", "{b:#}");
    // The tunnel is the same WireGuard session (no re-handshake needed, so
    // none forced) and robot-b still has its peer.
    assert!(has_peer(&lab, "robot-b", &a_key));
    let hs_after = handshake(&lab, "robot-b", &a_key).unwrap();
    assert!(hs_after >= hs_before);
    let log = std::fs::read_to_string(lab.log_path(MS)).unwrap();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("configuration reload refused"), "{log}");
    assert!(
        log.contains("robot-b.toml"),
        "the refusal names the file: {log}"
    );
    // `map-server peers` lists them, from the running daemon.
    let config = lab.config_path(MS).display().to_string();
    let out = lab.exec(
        "ms",
        &[
            binary("map-server").to_str().unwrap(),
            "peers",
            "-c",
            &config,
        ],
    );
    let listing = text(&out);
    assert!(out.status.success(), "{listing}");
    for name in ["robot-a", "robot-b", "edge"] {
        assert!(listing.contains(name), "{listing}");
    }
    assert!(listing.contains("registered"), "{listing}");
    lab.check_daemons().unwrap();
}

#[test]
fn revoke_stops_the_robots_traffic_within_a_second_both_ways() {
    let lab = Lab::for_test(LabSpec::campus().tag("fr"));
    peers_to_dir(&lab, |_, _| {}, "");
    assert!(wait_metric(&lab, "config_reloads_applied_total", 1));
    lab.ping_ok("robot-a", "10.0.0.2", 2);
    lab.ping_ok("host", "10.0.0.1", 1);
    let a_key = lab.public_key("robot-a").unwrap();
    assert!(has_peer(&lab, "robot-b", &a_key));
    assert!(has_peer(&lab, "edge", &a_key));

    let config = lab.config_path(MS).display().to_string();
    let t0 = Instant::now();
    let out = lab.exec(
        "ms",
        &[
            binary("map-server").to_str().unwrap(),
            "revoke",
            "robot-a",
            "-c",
            &config,
        ],
    );
    assert!(out.status.success(), "{}\n{}", text(&out), lab.logs());
    // Every correspondent drops its data peer, pushed, not at a TTL.
    let gone = wait_until(Duration::from_secs(1), || {
        !has_peer(&lab, "robot-b", &a_key) && !has_peer(&lab, "edge", &a_key)
    });
    let latency = t0.elapsed();
    eprintln!(
        "revoke: correspondents dropped robot-a after {} ms",
        latency.as_millis()
    );
    assert!(gone, "robot-a is still a peer after 1 s\n{}", lab.logs());
    // The map-server's own control peer for it is gone too.
    assert!(!has_peer(&lab, "ms", &a_key));
    // Traffic stops both ways.
    let from_a = lab.exec(
        "robot-a",
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.0.0.2"],
    );
    assert!(
        !from_a.status.success(),
        "robot-a still reaches robot-b:\n{}",
        text(&from_a)
    );
    let to_a = lab.exec(
        "robot-b",
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.0.0.1"],
    );
    assert!(
        !to_a.status.success(),
        "robot-b still reaches robot-a:\n{}",
        text(&to_a)
    );
    // The others carry on.
    lab.ping_ok("host", "10.0.0.2", 1);
    assert_eq!(metric(&lab, "peers_revoked_total"), 1);
    assert!(metric(&lab, "withdrawals_total") >= 2);
    let kept = std::fs::read_dir(lab.dir().join("peers.d/revoked"))
        .unwrap()
        .count();
    assert_eq!(kept, 1, "the revoked peer's file is kept for the record");
}

#[test]
fn a_cross_team_lookup_is_refused_with_a_negative_reply() {
    let lab = Lab::for_test(LabSpec::campus().tag("ft"));
    peers_to_dir(
        &lab,
        |name, p| {
            let team = if name == "robot-b" { "blue" } else { "red" };
            p.insert("team".into(), team.into());
        },
        "",
    );
    assert!(wait_metric(&lab, "config_reloads_applied_total", 1));
    // Same team: fine.
    lab.ping_ok("robot-a", "10.1.0.10", 2);
    // robot-a (red) may not resolve robot-b (blue): a negative reply, so the
    // ping is answered with ICMP unreachable at once, never by robot-b.
    let out = lab.exec(
        "robot-a",
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.0.0.2"],
    );
    let t = text(&out);
    assert!(!out.status.success(), "red reached blue:\n{t}");
    assert!(!t.contains("bytes from 10.0.0.2"), "{t}");
    assert!(metric(&lab, "team_refusals_total") >= 1, "{}", lab.logs());
    let b_key = lab.public_key("robot-b").unwrap();
    assert!(!has_peer(&lab, "robot-a", &b_key));
}

// ---- enrolment ------------------------------------------------------------

/// Turns on enrolment (`[join]` on the map-server's address, port 4344),
/// drops `remove` from the lab's peers, and restarts the map-server.
fn enable_join(lab: &mut Lab, remove: &[&str]) -> String {
    let file = lab.config_path(MS);
    let mut cfg: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    if let Some(toml::Value::Array(peers)) = cfg.get_mut("peers") {
        peers.retain(|p| !remove.contains(&p["name"].as_str().unwrap()));
    }
    let listen = format!("{}:4344", lab.address("ms"));
    let mut join = toml::Table::new();
    join.insert("listen".into(), listen.clone().into());
    cfg.insert("join".into(), join.into());
    write_private(&file, &toml::to_string(&cfg).unwrap());
    lab.stop(MS).unwrap();
    lab.start(MS).unwrap();
    listen
}

fn ms_cli(lab: &Lab, args: &[&str]) -> std::process::Output {
    let config = lab.config_path(MS).display().to_string();
    let bin = binary("map-server");
    let mut all = vec![bin.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-c", &config]);
    lab.exec("ms", &all)
}

/// `xtr join ARGS` in `node`'s namespace, writing `<lab>/<node>-etc/xtr.toml`
/// with WireGuard interface `<prefix>-<short>`.
fn xtr_join(lab: &Lab, node: &str, short: &str, args: &[&str]) -> (std::process::Output, PathBuf) {
    let cfg = lab.dir().join(format!("{node}-etc")).join("xtr.toml");
    let ifname = format!("{}-{short}", lab.prefix());
    let bin = binary("xtr");
    let cfg_s = cfg.display().to_string();
    let mut all = vec![bin.to_str().unwrap(), "join"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--config",
        &cfg_s,
        "--interface",
        &ifname,
        "--backend",
        "userspace",
    ]);
    (lab.exec(node, &all), cfg)
}

/// The control address a join wrote into `cfg`.
fn joined_control_address(cfg: &Path) -> String {
    let t: toml::Table = std::fs::read_to_string(cfg).unwrap().parse().unwrap();
    let a = t["control"]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

/// Starts the agent a join configured, and waits until the map-server has
/// its registration.
fn run_joined(lab: &Lab, node: &str, name: &str, cfg: &Path) -> testbed::Daemon {
    let log = lab.dir().join(format!("{node}-joined.log"));
    let d = lab
        .ns(node)
        .spawn(
            &format!("xtr on {node}"),
            binary("xtr"),
            &["run", "-c", cfg.to_str().unwrap()],
            &log,
        )
        .unwrap();
    let registered = wait_until(Duration::from_secs(15), || {
        status(lab)["peers"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["name"] == name && p["state"] == "registered")
        })
    });
    assert!(
        registered,
        "{name} never registered\n{}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        lab.logs()
    );
    d
}

#[test]
fn a_fresh_robot_goes_from_nothing_to_talking_with_enroll_join_and_run() {
    let mut lab = Lab::for_test(LabSpec::campus().tag("fe").idle("robot-a"));
    enable_join(&mut lab, &["robot-a"]);
    let bundle = lab.dir().join("robot-a.bundle");
    let out = ms_cli(
        &lab,
        &[
            "enroll",
            "robot-a",
            "--eid",
            "10.0.0.1/32",
            "--team",
            "default",
            "--out",
            bundle.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let mode = std::fs::metadata(&bundle).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let t0 = Instant::now();
    let (out, cfg) = xtr_join(&lab, "robot-a", "a", &[bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}\n{}", text(&out), lab.logs());
    eprintln!("join took {} ms", t0.elapsed().as_millis());
    // The robot's key and site key, 0600; its key is what the map-server has.
    let dir = cfg.parent().unwrap();
    let key_file = dir.join(format!("{}-a.key", lab.prefix()));
    for f in [&cfg, &key_file, &dir.join("robot-a.site")] {
        let m = std::fs::metadata(f).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&m) & 0o777,
            0o600,
            "{}",
            f.display()
        );
    }
    let peer_file = lab.dir().join("peers.d/robot-a.toml");
    assert!(peer_file.exists(), "the map-server wrote the peer");
    let _agent = run_joined(&lab, "robot-a", "robot-a", &cfg);
    lab.ping_ok("robot-a", "10.0.0.2", 3);
    lab.ping_ok("robot-b", "10.0.0.1", 3);

    // The same bundle again, by anyone: refused loudly, naming the first.
    let (out, _) = xtr_join(&lab, "robot-b", "h2", &[bundle.to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("already redeemed at"), "{t}");
    assert!(
        t.contains(&format!("from {}", lab.address("robot-a"))),
        "{t}"
    );
    assert_eq!(metric(&lab, "join_reused_total"), 1);
    // An expired bundle: refused with when.
    let late = lab.dir().join("late.bundle");
    let out = ms_cli(
        &lab,
        &[
            "enroll",
            "late",
            "--eid",
            "10.0.0.9/32",
            "--expires",
            "1s",
            "--out",
            late.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(2100));
    let (out, _) = xtr_join(&lab, "robot-b", "h3", &[late.to_str().unwrap(), "--force"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("expired at"), "{t}");
    assert_eq!(metric(&lab, "join_expired_total"), 1);
    let log = std::fs::read_to_string(lab.log_path(MS)).unwrap();
    assert!(log.contains("join refused"), "{log}");
    assert!(log.contains("already redeemed"), "{log}");
    // A wrong secret gets no answer at all.
    let mut forged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&late).unwrap()).unwrap();
    forged["secret"] = conf_secret().into();
    let forged_file = lab.dir().join("forged.bundle");
    write_private(&forged_file, &forged.to_string());
    let (out, _) = xtr_join(
        &lab,
        "robot-b",
        "h4",
        &[forged_file.to_str().unwrap(), "--force"],
    );
    let t = text(&out);
    assert!(!out.status.success() && t.contains("no answer"), "{t}");
    assert_eq!(
        metric(&lab, "join_bad_secret_total"),
        5,
        "each of its 5 tries was dropped"
    );
    assert_eq!(metric(&lab, "join_redeemed_total"), 1);
    // Revoked, robot-a cannot come back with its old bundle and key.
    let out = ms_cli(&lab, &["revoke", "robot-a"]);
    assert!(out.status.success(), "{}", text(&out));
    let (out, _) = xtr_join(&lab, "robot-a", "a", &[bundle.to_str().unwrap(), "--force"]);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("has been revoked since"),
        "{t}"
    );
}

/// A random 32-byte secret, base64url.
fn conf_secret() -> String {
    let bytes: Vec<u8> = (0..32).map(|i| (i * 37 + 11) as u8).collect();
    let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, &b| (a << 8) | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(table[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn three_robots_join_with_one_team_key_and_talk_by_eid_and_by_name() {
    use testbed::{Attach, Segment};
    let spec = LabSpec::campus()
        .tag("fk")
        .host("r1", Attach::Segment(Segment::SubnetA))
        .host("r2", Attach::Segment(Segment::SubnetB))
        .host("r3", Attach::Segment(Segment::Public));
    let mut lab = Lab::for_test(spec);
    let server = enable_join(&mut lab, &[]);
    let out = ms_cli(
        &lab,
        &[
            "join-key",
            "create",
            "--team",
            "field",
            "--pool",
            "10.0.7.0/24",
            "--uses",
            "3",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("lwk1."), "{key}");
    let mut agents = Vec::new();
    for (i, node) in ["r1", "r2", "r3"].into_iter().enumerate() {
        let name = format!("robot-{node}");
        let (out, cfg) = xtr_join(
            &lab,
            node,
            node,
            &["--key", &key, "--server", &server, "--name", &name],
        );
        assert!(out.status.success(), "{}\n{}", text(&out), lab.logs());
        assert!(
            text(&out).contains(&format!("10.0.7.{}/32", i + 1)),
            "{}",
            text(&out)
        );
        agents.push(run_joined(&lab, node, &name, &cfg));
    }
    for (from, to) in [("r1", "10.0.7.2"), ("r2", "10.0.7.3"), ("r3", "10.0.7.1")] {
        lab.ping_ok(from, to, 3);
    }
    // And by name, through each robot's own agent (its DNS on its control
    // address), as ROS_HOSTNAME would use them.
    let _confs: Vec<testbed::NetnsResolvConf> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| {
            let cfg = lab.dir().join(format!("{n}-etc")).join("xtr.toml");
            testbed::NetnsResolvConf::point_at(lab.ns(n).name(), &joined_control_address(&cfg))
                .unwrap()
        })
        .collect();
    let out = lab.exec("r1", &["getent", "hosts", "robot-r2.lispwg.internal"]);
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("10.0.7.2"),
        "{t}\n{}",
        lab.logs()
    );
    for (from, to) in [
        ("r1", "robot-r3"),
        ("r3", "robot-r2"),
        ("r2", "robot-r1.lispwg.internal"),
    ] {
        let out = lab.exec(from, &["ping", "-c", "3", "-i", "0.2", "-W", "2", to]);
        let t = text(&out);
        assert!(
            t.contains("3 packets transmitted, 3 received"),
            "{from} -> {to}:\n{t}\n{}",
            lab.logs()
        );
    }
    // A fourth robot: the key is used up.
    let (out, _) = xtr_join(
        &lab,
        "robot-b",
        "h5",
        &["--key", &key, "--server", &server, "--name", "robot-r4"],
    );
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("used up (3 of 3"),
        "{t}"
    );
    // Revoked: refused too, from now on.
    let id = key.split('.').nth(1).unwrap();
    let out = ms_cli(&lab, &["join-key", "revoke", id]);
    assert!(out.status.success(), "{}", text(&out));
    let (out, _) = xtr_join(
        &lab,
        "robot-b",
        "h6",
        &[
            "--key", &key, "--server", &server, "--name", "robot-r5", "--force",
        ],
    );
    let t = text(&out);
    assert!(!out.status.success() && t.contains("was revoked"), "{t}");
    assert_eq!(metric(&lab, "join_revoked_total"), 1);
    assert_eq!(metric(&lab, "join_redeemed_total"), 3);
    let listing = text(&ms_cli(&lab, &["peers"]));
    for n in ["robot-r1", "robot-r2", "robot-r3"] {
        assert!(
            listing.contains(n) && listing.contains("field"),
            "{listing}"
        );
    }
}

#[test]
fn a_robot_enrolled_at_one_map_server_is_known_to_the_other() {
    let spec = LabSpec::campus().tag("f2").map_servers(2).idle("robot-a");
    let mut lab = Lab::for_test(spec);
    // Both map-servers read peers.d beside their files (the lab keeps them
    // in one folder: as a synced directory would). Enrolment is at ms;
    // robots are told about ms2 too.
    for ms in [MS, "map-server2"] {
        let file = lab.config_path(ms);
        let mut cfg: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
        if let Some(toml::Value::Array(peers)) = cfg.get_mut("peers") {
            peers.retain(|p| p["name"].as_str() != Some("robot-a"));
        }
        write_private(&file, &toml::to_string(&cfg).unwrap());
    }
    let ms2_key = lab.public_key("ms2").unwrap();
    let file = lab.config_path(MS);
    let mut cfg = std::fs::read_to_string(&file).unwrap();
    cfg += &format!(
        "\n[join]\nlisten = \"{}:4344\"\n\n[[join.also]]\nname = \"ms2\"\nendpoint = \"{}:4340\"\npublic_key = \"{ms2_key}\"\ncontrol_address = \"100.64.0.254\"\n",
        lab.address("ms"),
        lab.address("ms2"),
    );
    write_private(&file, &cfg);
    for ms in [MS, "map-server2"] {
        lab.stop(ms).unwrap();
        lab.start(ms).unwrap();
    }
    let bundle = lab.dir().join("robot-a.bundle");
    let out = ms_cli(
        &lab,
        &[
            "enroll",
            "robot-a",
            "--eid",
            "10.0.0.1/32",
            "--out",
            bundle.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let (out, cfg) = xtr_join(&lab, "robot-a", "a", &[bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}\n{}", text(&out), lab.logs());
    let t0 = Instant::now();
    let _agent = run_joined(&lab, "robot-a", "robot-a", &cfg);
    // ms2 took the new peer file by itself, and has the robot's registration.
    let at_ms2 = |lab: &Lab| -> bool {
        let doc: serde_json::Value =
            serde_json::from_str(&lab.fetch("map-server2", "/status?format=json").unwrap())
                .unwrap();
        doc["peers"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["name"] == "robot-a" && p["state"] == "registered")
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || at_ms2(&lab)),
        "ms2 does not know robot-a\n{}",
        lab.logs()
    );
    eprintln!(
        "robot-a registered at ms2 {} ms after its agent started",
        t0.elapsed().as_millis()
    );
    // A key rotation at ms reaches ms2 through the shared directory: it
    // follows (no revocation), and has the new key's registration.
    lab.ping_ok("robot-b", "10.0.0.1", 2);
    let out = lab.exec(
        "robot-a",
        &[
            binary("xtr").to_str().unwrap(),
            "rotate-key",
            "-c",
            cfg.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}\n{}", text(&out), lab.logs());
    let key_file = cfg
        .parent()
        .unwrap()
        .join(format!("{}-a.key", lab.prefix()));
    let new = testbed::files::public_key_of(&key_file).unwrap();
    let ms2_has_new = |lab: &Lab| -> bool {
        let doc: serde_json::Value =
            serde_json::from_str(&lab.fetch("map-server2", "/status?format=json").unwrap())
                .unwrap();
        doc["peers"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| {
                p["name"] == "robot-a" && p["key"] == new.as_str() && p["state"] == "registered"
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || ms2_has_new(&lab)),
        "ms2 did not follow the rotation\n{}",
        lab.logs()
    );
    let ms2_metrics = lab.fetch("map-server2", "/metrics").unwrap();
    assert!(
        ms2_metrics.contains("lispwg_map_server_peers_revoked_total 0"),
        "{ms2_metrics}"
    );
    lab.ping_ok("robot-b", "10.0.0.1", 2);
    // With ms gone, robot-a still resolves (through ms2) and talks.
    lab.stop(MS).unwrap();
    lab.ping_ok("robot-a", "10.1.0.10", 3);
    lab.ping_ok("robot-b", "10.0.0.1", 3);
}

#[test]
fn key_rotation_under_a_10_ms_ping_loses_nothing() {
    let lab = Lab::for_test(LabSpec::campus().tag("fo"));
    peers_to_dir(&lab, |_, _| {}, "");
    assert!(wait_metric(&lab, "config_reloads_applied_total", 1));
    lab.ping_ok("robot-b", "10.0.0.1", 2);
    let old = lab.public_key("robot-a").unwrap();
    let log = lab.dir().join("rotate-ping.log");
    let mut ping = lab
        .ns("robot-b")
        .spawn(
            "ping",
            "ping",
            &["-D", "-i", "0.01", "-W", "1", "-c", "300", "10.0.0.1"],
            &log,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let config = lab.config_path("robot-a").display().to_string();
    let t0 = Instant::now();
    let out = lab.exec(
        "robot-a",
        &[binary("xtr").to_str().unwrap(), "rotate-key", "-c", &config],
    );
    let took = t0.elapsed();
    assert!(out.status.success(), "{}\n{}", text(&out), lab.logs());
    eprintln!(
        "rotate-key: {} ({} ms)",
        text(&out).trim(),
        took.as_millis()
    );
    assert!(
        wait_until(Duration::from_secs(10), || !ping.is_running()),
        "ping did not finish"
    );
    let times = reply_times(&ping.log());
    let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(|a, b| b.total_cmp(a));
    eprintln!(
        "rotation: {} of 300 replies; largest gap {:.0} ms",
        times.len(),
        gaps.first().copied().unwrap_or(0.0) * 1000.0
    );
    assert_eq!(
        times.len(),
        300,
        "replies lost:\n{}\n{}",
        ping.log(),
        lab.logs()
    );
    // No outage either: the held packets come within a few tens of ms.
    assert!(
        gaps[0] < 0.3,
        "a {:.0} ms gap at the rotation\n{}",
        gaps[0] * 1000.0,
        lab.logs()
    );
    // The new key everywhere: the robot's file, robot-b's peer, the
    // map-server's peer list, and its file in peers.d.
    let new = lab.public_key("robot-a").unwrap();
    assert_ne!(new, old);
    assert!(
        has_peer(&lab, "robot-b", &new),
        "robot-b follows the new key"
    );
    assert!(!has_peer(&lab, "robot-b", &old), "and forgets the old one");
    let listed = wait_until(Duration::from_secs(3), || {
        status(&lab)["peers"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| {
                p["name"] == "robot-a" && p["key"] == new.as_str() && p["state"] == "registered"
            })
        })
    });
    assert!(listed, "{:#}\n{}", status(&lab)["peers"], lab.logs());
    let file = std::fs::read_to_string(lab.dir().join("peers.d/robot-a.toml")).unwrap();
    assert!(file.contains(&new), "{file}");
    assert!(wait_until(Duration::from_secs(3), || has_peer(
        &lab, "ms", &new
    ) && !has_peer(
        &lab, "ms", &old
    )));
    assert_eq!(metric(&lab, "key_rotations_total"), 1);
    assert_eq!(
        metric(&lab, "peers_revoked_total"),
        0,
        "a rotation is no revocation"
    );
    lab.ping_ok("robot-a", "10.1.0.10", 2);
}
