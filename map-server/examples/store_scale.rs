//! Start-up time and memory of the map-server with N persisted registrations
//! (default 1 000 000), clean start and after `kill -9`.
//!
//! ```text
//! cargo build --release -p map-server --bin map-server --example store_scale
//! target/release/examples/store_scale [N] [path/to/map-server]
//! ```
//!
//! Fills a store in a temporary state directory through the library (batches
//! of 10 000 per durable transaction), then runs the real binary on it with
//! the plain listener on loopback and reports, for each start: the time to
//! "map-server ready", the time until it answers a Map-Request for the last
//! EID, and its resident memory (VmRSS, and the peak VmHWM).

use lisp_wire::{Address, EidPrefix, MapRequest, Message, RequestRecord};
use map_server::store::{Clock, Store, DEFAULT_CACHE_BYTES};
use map_server_core::{Mapping, Origin, Rloc, StoreOp};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: [u8; 32] = [7; 32];
const BATCH: usize = 10_000;

fn eid(i: u32) -> EidPrefix {
    EidPrefix::host(0, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
}

fn ops_for(i: u32, clock: &Clock) -> StoreOp {
    StoreOp::Put {
        prefix: eid(i),
        mapping: Mapping {
            rlocs: vec![Rloc {
                addr: IpAddr::V4(Ipv4Addr::from(0xc633_6400 + (i % 250))),
                port: Some(51820),
                priority: 1,
                weight: 100,
                relayed: false,
            }]
            .into_boxed_slice(),
            wg_key: Some(KEY),
            origin: Origin::Static,
            ttl_minutes: 10,
            map_version: 0,
            expires: Some(clock.now + Duration::from_secs(3600)),
        },
        peer: "bulk".into(),
    }
}

fn fill(state: &Path, n: u32) {
    let mut store = Store::open(state, DEFAULT_CACHE_BYTES).expect("open store");
    let t0 = Instant::now();
    let clock = Clock::now();
    let mut ops = Vec::with_capacity(BATCH);
    for i in 0..n {
        ops.push(ops_for(i, &clock));
        if ops.len() == BATCH || i + 1 == n {
            store.apply(&ops, clock).expect("apply batch");
            ops.clear();
        }
    }
    // What one event-loop iteration with one registration costs.
    let t1 = Instant::now();
    let rounds = 200u32;
    for i in 0..rounds {
        let op = ops_for(n + i, &clock);
        store.apply(&[op], clock).expect("apply one");
    }
    let one = t1.elapsed() / rounds;
    let remove: Vec<StoreOp> = (0..rounds).map(|i| StoreOp::Delete(eid(n + i))).collect();
    store.apply(&remove, clock).expect("remove extra");
    println!(
        "one-registration durable commit at {n} entries: {:.2} ms on average",
        one.as_secs_f64() * 1e3
    );
    let size = std::fs::metadata(store.path()).map_or(0, |m| m.len());
    println!(
        "filled {n} registrations in {:.1} s ({} batches of {BATCH}); file {:.0} MiB",
        t0.elapsed().as_secs_f64(),
        n.div_ceil(BATCH as u32),
        size as f64 / (1 << 20) as f64
    );
}

fn config(dir: &Path, port: u16) -> PathBuf {
    let key = wgctl::keys::PublicKey::from_bytes(KEY);
    let site = dir.join("bulk.site");
    std::fs::write(&site, "bulk").unwrap();
    std::fs::set_permissions(&site, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let text = format!(
        r#"
[server]
state_dir = "state"
plain_listen = "127.0.0.1:{port}"
plain_allowed = ["127.0.0.1"]

[[peers]]
name = "bulk"
public_key = "{key}"
control_address = "127.0.0.2"
site_key_file = "bulk.site"
eids = [{{ prefix = "10.0.0.0/8", more_specifics = true }}]
"#
    );
    let path = dir.join("ms.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn vm(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn request(target: EidPrefix, reply_to: &UdpSocket, nonce: u64) -> Vec<u8> {
    let Ok(local) = reply_to.local_addr() else {
        return Vec::new();
    };
    Message::MapRequest(MapRequest {
        authoritative: false,
        probe: false,
        smr: false,
        pitr: false,
        smr_invoked: false,
        local_xtr: false,
        dont_map_reply: false,
        nonce,
        source_eid: Address::None,
        itr_rlocs: vec![Address::from(local.ip())],
        records: vec![RequestRecord {
            eid_mask_len: 32,
            eid: target.to_address(),
        }],
        map_reply_record: None,
    })
    .encode()
    .unwrap()
}

/// Starts the binary and measures; returns the child, still running.
fn start(binary: &Path, cfg: &Path, port: u16, last: EidPrefix, label: &str) -> Child {
    let t0 = Instant::now();
    let mut child = Command::new(binary)
        .args(["run", "-c", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start map-server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("restored from the store") || line.contains("map-server ready") {
                let _ = tx.send((t0.elapsed(), line));
            }
        }
    });
    let mut ready = None;
    while ready.is_none() {
        let (at, line) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("map-server did not start");
        println!(
            "  [{label}] +{:>6.0} ms {}",
            at.as_secs_f64() * 1e3,
            line.split("INFO ").nth(1).unwrap_or(&line)
        );
        if line.contains("map-server ready") {
            ready = Some(at);
        }
    }
    // First answer to a Map-Request for the last EID loaded.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let answered = (0..400).find_map(|i| {
        sock.send_to(&request(last, &sock, i), ("127.0.0.1", port))
            .ok()?;
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        match lisp_wire::parse(&buf[..n]) {
            Ok(Message::MapReply(r)) if !r.records[0].rlocs.is_empty() => Some(t0.elapsed()),
            _ => None,
        }
    });
    let pid = child.id();
    println!(
        "[{label}] ready after {:.0} ms; positive Map-Reply for {last} after {:.0} ms; VmRSS {} MiB, VmHWM {} MiB",
        ready.unwrap_or_default().as_secs_f64() * 1e3,
        answered.map_or(f64::NAN, |a| a.as_secs_f64() * 1e3),
        vm(pid, "VmRSS:") / 1024,
        vm(pid, "VmHWM:") / 1024
    );
    child
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().map_or(1_000_000, |a| a.parse().expect("N"));
    let binary = args.next().map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("map-server")
    });
    let dir = tempfile::tempdir().unwrap();
    fill(&dir.path().join("state"), n);
    let port = 24342;
    let cfg = config(dir.path(), port);
    let last = eid(n - 1);

    let mut ms = start(&binary, &cfg, port, last, "clean start");
    // SIGTERM: a clean stop.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(ms.id() as libc::pid_t, libc::SIGTERM) };
    let _ = ms.wait();
    let mut ms = start(&binary, &cfg, port, last, "after SIGTERM");
    ms.kill().unwrap();
    let _ = ms.wait();
    let mut ms = start(&binary, &cfg, port, last, "after kill -9");
    ms.kill().unwrap();
    let _ = ms.wait();
}
