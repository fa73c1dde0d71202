//! Abuse and faults, in the namespace lab (issue 11): one robot floods the
//! map-server with Map-Requests or junk, replays an old register, registers
//! unusable locators or asks about one EID 255 times. Each test reproduces
//! the attack through the real control tunnel and asserts the property:
//! everyone else is still served, the log stays small, nothing is restored
//! or amplified.

use lisp_wire::{Authentication, EidPrefix, EidRecord, KeyId, MapRegister, RlocRecord};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use testbed::{metric, Lab, LabSpec};

const LISP_PORT: u16 = lisp_wire::LISP_CONTROL_PORT;

fn control(lab: &Lab, name: &str) -> Ipv4Addr {
    bench::control::control(lab, name).unwrap()
}

fn eid(s: &str) -> EidPrefix {
    EidPrefix::host(0, s.parse().unwrap())
}

fn request(ctl: Ipv4Addr, port: u16, ms: Ipv4Addr, nonce: u64, targets: &[EidPrefix]) -> Vec<u8> {
    bench::control::request(ctl, port, ms, nonce, targets).unwrap()
}

fn ms_metric(lab: &Lab, name: &str) -> f64 {
    let page = lab.fetch("map-server", "/metrics").unwrap();
    metric(&page, &format!("lispwg_map_server_{name}"))
        .unwrap_or_else(|| panic!("{name} on the page:\n{page}"))
}

fn flood(
    lab: &Lab,
    name: &str,
    secs: f64,
    bytes: impl Fn(u64, u16) -> Vec<u8> + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    bench::control::flood(lab, name, secs, bytes).unwrap()
}

/// (answered, answered at the first attempt, worst) of `n` lookups 20 ms apart.
fn lookups(lab: &Lab, name: &str, target: EidPrefix, n: u64) -> (u64, u64, Duration) {
    let l = bench::control::lookups(lab, name, target, n, Duration::from_millis(20)).unwrap();
    (
        l.answered,
        l.first,
        Duration::from_secs_f64(l.worst_ms() / 1e3),
    )
}

#[test]
fn a_robot_flooding_map_requests_is_slowed_and_others_stay_answered() {
    let lab = Lab::for_test(LabSpec::campus().tag("af").without("edge"));
    let ms = control(&lab, "ms");
    let ctl_a = control(&lab, "robot-a");
    let (before, _, _) = lookups(&lab, "robot-b", eid("10.0.0.99"), 5);
    assert_eq!(before, 5, "lookups answered before the flood");
    let log_before = std::fs::metadata(lab.log_path("map-server")).unwrap().len();

    let flooder = flood(&lab, "robot-a", 5.0, move |i, port| {
        request(
            ctl_a,
            port,
            ms,
            i,
            &[EidPrefix::host(0, "10.0.0.77".parse().unwrap())],
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let (answered, first, worst) = lookups(&lab, "robot-b", eid("10.0.0.99"), 50);
    let sent = flooder.join().unwrap().unwrap();

    // The kernel drops the flooder's datagrams beyond twice its budget
    // before wireguard-go's socket, whose queue robot-b's go through too.
    let shown = format!(
        "robot-b: {answered}/50 answered during the flood, {first} at the first attempt, worst {worst:?}; robot-a sent {sent}"
    );
    assert_eq!(answered, 50, "{shown}");
    assert!(
        first >= 49,
        "the kernel drops the flood per source, not robot-b: {shown}"
    );
    assert!(worst < Duration::from_secs(1), "{shown}");
    eprintln!("{shown}");
    let limited = ms_metric(&lab, "rate_limited_total");
    assert!(
        limited > 1000.0,
        "the flood is counted: {limited} of {sent}"
    );
    let grown = std::fs::metadata(lab.log_path("map-server")).unwrap().len() - log_before;
    assert!(
        grown < 64 * 1024,
        "the map-server's log grew {grown} bytes for {sent} refused requests"
    );
    // One summary line per source says how many were held back, once the
    // source's log interval (10 s) is over.
    let summarised = testbed::wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(lab.log_path("map-server"))
            .is_ok_and(|l| l.contains("their lines were suppressed"))
    });
    assert!(summarised, "no summary line:\n{}", lab.logs());
}

#[test]
fn a_flood_of_junk_costs_a_few_log_lines_and_a_counter() {
    let lab = Lab::for_test(LabSpec::campus().tag("aj").without("edge"));
    let log_before = std::fs::metadata(lab.log_path("map-server")).unwrap().len();
    // Datagrams that parse as nothing (a Map-Register type nibble, then junk).
    let sent = flood(&lab, "robot-a", 3.0, |i, _| {
        let mut b = vec![0x30u8; 40];
        b[8..16].copy_from_slice(&i.to_be_bytes());
        b
    })
    .join()
    .unwrap()
    .unwrap();
    // Let the map-server drain its queue.
    std::thread::sleep(Duration::from_millis(500));
    let refused = ms_metric(&lab, "malformed_total") + ms_metric(&lab, "rate_limited_total");
    assert!(refused > 1000.0, "{refused} of {sent} counted");
    let grown = std::fs::metadata(lab.log_path("map-server")).unwrap().len() - log_before;
    assert!(
        grown < 64 * 1024,
        "log grew {grown} bytes for {sent} junk datagrams"
    );
    // Robot-b is unaffected.
    let (answered, _, _) = lookups(&lab, "robot-b", eid("10.0.0.99"), 5);
    assert_eq!(answered, 5);
}

fn site_key(lab: &Lab, name: &str) -> Vec<u8> {
    std::fs::read_to_string(lab.dir().join(format!("{name}.site")))
        .unwrap()
        .trim()
        .as_bytes()
        .to_vec()
}

/// Sends one datagram from `name`'s control address to the map-server.
fn send_one(lab: &Lab, name: &str, bytes: Vec<u8>) {
    let ctl = control(lab, name);
    let ms = control(lab, "ms");
    lab.ns(name)
        .run(move || -> anyhow::Result<()> {
            let sock = UdpSocket::bind((ctl, 0))?;
            sock.send_to(&bytes, (ms, LISP_PORT))?;
            Ok(())
        })
        .unwrap()
        .unwrap();
}

fn register(lab: &Lab, name: &str, eid_s: &str, nonce: u64, rloc: SocketAddr) -> Vec<u8> {
    let key = wgctl::keys::PublicKey::from_base64(&lab.public_key(name).unwrap()).unwrap();
    let rec = EidRecord::new(
        eid(eid_s),
        10,
        vec![RlocRecord::new(
            1,
            100,
            lisp_wire::wireguard_locator(rloc, *key.as_bytes()),
        )],
    );
    MapRegister {
        auth: Authentication::unsigned(KeyId::HmacSha256),
        ..MapRegister::proxied(nonce, vec![rec])
    }
    .encode_signed(&site_key(lab, name))
    .unwrap()
}

#[test]
fn an_old_register_replayed_is_refused_even_after_a_map_server_restart() {
    let mut lab = Lab::for_test(LabSpec::campus().tag("ar").without("edge"));
    lab.ping_ok("robot-b", "10.0.0.1", 2);
    // Properly signed, but with a nonce from long ago, and a locator that
    // would move robot-a away.
    let replay = register(
        &lab,
        "robot-a",
        "10.0.0.1",
        1000,
        "203.0.113.66:51820".parse().unwrap(),
    );
    send_one(&lab, "robot-a", replay.clone());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ms_metric(&lab, "replays_total"), 1.0);
    lab.stop("map-server").unwrap();
    lab.start("map-server").unwrap();
    send_one(&lab, "robot-a", replay);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        ms_metric(&lab, "replays_total"),
        1.0,
        "refused by the restarted map-server too"
    );
    // robot-a was never moved: robot-b still reaches it.
    lab.ping_ok("robot-b", "10.0.0.1", 2);
}

#[test]
fn unusable_locators_and_amplifying_requests_are_refused_and_counted() {
    let lab = Lab::for_test(LabSpec::campus().tag("al").without("edge"));
    lab.ping_ok("robot-a", "10.0.0.2", 1);
    // Loopback, and the map-server's own address, as robot-a's locator: refused
    // whole (no usable locator left), so its real mapping stays.
    let ms_addr = lab.address("ms");
    for rloc in [
        "127.0.0.1:51820".parse().unwrap(),
        SocketAddr::new(ms_addr, 51820),
    ] {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        send_one(
            &lab,
            "robot-a",
            register(&lab, "robot-a", "10.0.0.1", nonce, rloc),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ms_metric(&lab, "bad_locators_total"), 2.0);

    // One request naming robot-b's EID 255 times: refused, no notify storm.
    let notifies = ms_metric(&lab, "map_notifies_total");
    let ctl_a = control(&lab, "robot-a");
    let ms = control(&lab, "ms");
    send_one(
        &lab,
        "robot-a",
        request(ctl_a, 40000, ms, 9, &[eid("10.0.0.2"); 255]),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ms_metric(&lab, "over_limit_total"), 1.0);
    assert_eq!(ms_metric(&lab, "map_notifies_total"), notifies);
    lab.ping_ok("robot-b", "10.0.0.1", 2);
}

/// A tmpfs over the map-server's state directory, so that its disk can be
/// filled without touching the host's; unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        let keep = dir.with_extension("before");
        let sh = |cmd: String| {
            let out = std::process::Command::new("sh")
                .args(["-c", &cmd])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                testbed::output_text(&out)
            );
        };
        sh(format!("cp -a {0} {1}", dir.display(), keep.display()));
        sh(format!(
            "mount -t tmpfs -o size={size},mode=0700 lispwg-test {}",
            dir.display()
        ));
        let disk = SmallDisk(dir.to_path_buf());
        sh(format!("cp -a {}/. {}/", keep.display(), dir.display()));
        disk
    }

    /// Fills the disk; returns the filler's path.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.0.join("filler");
        let _ = std::process::Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={}", filler.display()),
                "bs=64k",
            ])
            .output();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_withholds_confirmations_and_once_space_returns_they_come_without_a_restart() {
    let mut lab = Lab::for_test(LabSpec::campus().tag("ad").without("edge"));
    lab.ping_ok("robot-a", "10.0.0.2", 1);
    lab.stop("map-server").unwrap();
    let disk = SmallDisk::mount(&lab.dir().join("map-server-state"), "4m");
    lab.start("map-server").unwrap();
    lab.ping_ok("robot-a", "10.0.0.2", 1);

    let filler = disk.fill();
    // robot-b moves back and forth: each move is a commit, and once redb
    // must grow its file the commit fails (at most 10 moves).
    let mut faulted = false;
    for _ in 0..10 {
        lab.move_node("robot-b").unwrap();
        faulted = testbed::wait_until(Duration::from_secs(2), || {
            ms_metric(&lab, "store_failures_total") >= 1.0
        });
        if faulted {
            break;
        }
    }
    assert!(
        faulted,
        "the commit failed:\n{}\n{}",
        std::fs::read_to_string(lab.log_path("map-server")).unwrap(),
        testbed::output_text(
            &std::process::Command::new("df")
                .arg(lab.dir().join("map-server-state"))
                .output()
                .unwrap()
        )
    );
    assert!(
        lab.fetch("map-server", "/healthz")
            .map_or(true, |h| h != "ok\n"),
        "health shows the fault"
    );

    std::fs::remove_file(&filler).unwrap();
    let t0 = Instant::now();
    let healthy = testbed::wait_until(Duration::from_secs(15), || {
        lab.fetch("map-server", "/healthz")
            .is_ok_and(|h| h == "ok\n")
    });
    assert!(
        healthy,
        "the store recovers without a restart:\n{}",
        lab.logs()
    );
    eprintln!(
        "store writable again {:?} after space came back",
        t0.elapsed()
    );
    // robot-b's move was persisted: the restarted map-server hands out
    // robot-b where it is now.
    lab.stop("map-server").unwrap();
    lab.start("map-server").unwrap();
    let moved_to = lab.address("robot-b");
    assert_eq!(locator_of(&lab, "robot-a", eid("10.0.0.2")), Some(moved_to));
    drop(disk);
}

/// The best locator the map-server hands `name` for `target` (asked from
/// `name`'s control address, up to 3 times).
fn locator_of(lab: &Lab, name: &str, target: EidPrefix) -> Option<std::net::IpAddr> {
    let ctl = control(lab, name);
    let ms = control(lab, "ms");
    lab.ns(name)
        .run(move || -> anyhow::Result<Option<std::net::IpAddr>> {
            let sock = UdpSocket::bind((ctl, 0))?;
            sock.set_read_timeout(Some(Duration::from_millis(500)))?;
            let port = sock.local_addr()?.port();
            let mut buf = [0u8; 2048];
            for attempt in 0..3u64 {
                sock.send_to(
                    &request(ctl, port, ms, 0x77_0000 + attempt, &[target]),
                    (ms, LISP_PORT),
                )?;
                while let Ok((len, _)) = sock.recv_from(&mut buf) {
                    if let Ok(lisp_wire::Message::MapReply(r)) = lisp_wire::parse(&buf[..len]) {
                        return Ok(r
                            .records
                            .first()
                            .and_then(|rec| rec.best_locator())
                            .map(|(_, info)| info.rloc));
                    }
                }
            }
            Ok(None)
        })
        .unwrap()
        .unwrap()
}
