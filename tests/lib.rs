//! Shared helpers for the lispwg integration tests: the real daemons, run as
//! root in network namespaces that the tests create and always delete.
//!
//! * [`Netns`]: a namespace with a unique name, deleted on drop (panics
//!   included), with [`Netns::exec`] for topology commands, [`Netns::spawn`]
//!   for daemons and [`Netns::run`] for code that must run inside it (sockets
//!   created there stay there, whichever thread then uses them).
//! * [`veth`]: a veth pair between two namespaces, addressed and up.
//! * [`NsRuntime`] and [`WgNode`]: a tokio runtime inside a namespace, and a
//!   WireGuard interface set up through wgctl on it.
//! * [`Daemon`]: a spawned process, killed by PID on drop, its output kept in
//!   a file and printed when a test fails.
//! * [`binary`]: the workspace's binaries, built once if missing.
//! * [`tshark_decode`]: Wireshark's view of a payload, and
//!   [`assert_tshark_clean`].
//! * [`assert_no_leftovers`]: no namespace, interface, wireguard-go process
//!   or control socket left behind.
//!
//! Address plan: underlays 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24;
//! control tunnel 100.64.0.0/16; overlays 10.x, only inside namespaces.
//! Names (namespaces, interfaces) are `lw<tag><pid % 10000><counter>`, at most
//! 15 characters, so parallel tests and test binaries never collide (the
//! wireguard-go sockets in /var/run/wireguard are shared by all namespaces).

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Tools the tests run; checked by [`require_root_and_tools`].
pub const TOOLS: &[&str] = &["wireguard-go", "ip", "ping", "tshark", "text2pcap", "od"];

/// Fails the test (never skips it) unless it runs as root with every tool in
/// [`TOOLS`] on `PATH`.
pub fn require_root_and_tools() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the lispwg integration tests must run as root: they create network namespaces, \
         veth pairs and WireGuard interfaces (run them through scripts/test.sh or sudo)"
    );
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "missing tools for the integration tests: {}. Install them with scripts/test.sh, or \
         `apt-get install wireguard-go iproute2 iputils-ping tshark`",
        missing.join(", ")
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: wireguard-go needs TUN support"
    );
}

/// The full path of `tool` on `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A name unique to this process and call: `lw` + tag + pid % 10000 + a
/// counter, at most 15 characters (an interface name's limit).
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("lw{tag}{}{n}", std::process::id() % 10_000);
    assert!(
        name.len() <= 15,
        "{name} is longer than 15 characters: use a shorter tag than {tag:?}"
    );
    name
}

/// Runs a harness command, which must succeed.
#[track_caller]
pub fn must(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A network namespace, deleted (with any process still in it) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `lw<tag>…` with loopback up. `tag`: at most 4 characters.
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        must("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args…`, which must succeed.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&must("ip", &full).stdout).into_owned()
    }

    /// Runs a command inside the namespace; it must succeed. Returns stdout.
    #[track_caller]
    pub fn exec(&self, args: &[&str]) -> String {
        let out = self.exec_output(args);
        assert!(
            out.status.success(),
            "in {}: {} failed ({}): {}{}",
            self.name,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command inside the namespace and returns whatever it did.
    pub fn exec_output(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec: {e}"))
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Starts `binary args…` inside the namespace, its stdout and stderr going
    /// to a log file.
    pub fn spawn(&self, binary: &Path, args: &[&str]) -> Daemon {
        let label = binary
            .file_name()
            .map_or("daemon".into(), |n| n.to_string_lossy().into_owned());
        let log = std::env::temp_dir().join(format!("{}-{label}-{}.log", self.name, unique("d")));
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(binary)
            .args(args);
        // `ip netns exec` execs the binary: the PID is the daemon's.
        let mut daemon = Daemon::from_command(command, log);
        daemon.label = label;
        daemon
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    /// Sockets it creates belong to the namespace for good.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = self.file();
        thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into the test namespace");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn file(&self) -> File {
        File::open(format!("/var/run/netns/{}", self.name)).expect("open the namespace file")
    }

    /// PIDs of the processes inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Anything still running in here was started by this test.
        for pid in self.pids() {
            kill(pid, libc::SIGKILL);
        }
        wait_until(Duration::from_secs(2), || self.pids().is_empty());
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("could not delete namespace {}: {out:?}", self.name);
        }
    }
}

/// Sends `sig` to `pid` (a process this test started).
fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A veth pair from `a` to `b`, with `a_addr` and `b_addr` (`addr/len`) and
/// both ends up. Returns the two interface names.
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> (String, String) {
    let (a_end, b_end) = (unique("v"), unique("v"));
    must(
        "ip",
        &[
            "link",
            "add",
            &a_end,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &b_end,
            "netns",
            b.name(),
        ],
    );
    for (ns, end, addr) in [(a, &a_end, a_addr), (b, &b_end, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", end]);
        ns.ip(&["link", "set", end, "up"]);
    }
    (a_end, b_end)
}

/// A spawned daemon. Dropping it stops it by PID: SIGTERM, then SIGKILL.
/// When the test is failing, its log is printed.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    label: String,
}

impl Daemon {
    /// Starts `command` with stdin closed and its output in `log`; it is
    /// stopped by PID on drop.
    pub fn from_command(mut command: Command, log: PathBuf) -> Daemon {
        let file = File::create(&log).expect("create daemon log");
        let label = command.get_program().to_string_lossy().into_owned();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        Daemon {
            child: Some(child),
            log,
            label,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until its log contains `needle`; false if it does not within
    /// `limit` or the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.log().contains(needle) || !self.is_running())
            && self.log().contains(needle)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            kill(c.id(), sig);
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9`, and reaps it.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(5));
        self.child = None;
    }

    /// SIGTERM, then SIGKILL after 5 s; returns how it exited (None if it had
    /// to be killed).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.as_ref()?;
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(5));
        if status.is_none() {
            eprintln!("{} ignored SIGTERM; killing it", self.label);
            self.kill9();
        }
        self.child = None;
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "---- log of {} ({}) ----\n{}---- end of log ----",
                self.label,
                self.log.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A thread inside a namespace running a current-thread tokio runtime, so
/// that async code (wgctl) creates its sockets, processes and interfaces
/// there.
pub struct NsRuntime {
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NsRuntime {
    pub fn new(ns: &Netns) -> NsRuntime {
        let file = ns.file();
        let (jobs_tx, mut jobs_rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("ns-{}", ns.name()))
            .spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into the test namespace");
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build a tokio runtime");
                let _ = ready_tx.send(());
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some(job) = jobs_rx.recv().await {
                        tokio::task::spawn_local(job());
                    }
                });
            })
            .expect("spawn the namespace thread");
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the namespace thread did not start");
        NsRuntime {
            jobs: Some(jobs_tx),
            thread: Some(thread),
        }
    }

    /// Runs `f` inside the namespace and waits (at most 60 s) for its output.
    pub fn block_on<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _ = tx.send(f().await);
            })
        });
        self.jobs
            .as_ref()
            .expect("runtime alive")
            .send(job)
            .unwrap_or_else(|_| panic!("the namespace runtime has stopped"));
        rx.recv_timeout(Duration::from_secs(60))
            .expect("a job inside the namespace panicked or took over 60 s")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A WireGuard interface in a namespace, set up through wgctl (userspace
/// backend): the way a test plays a node without running the agent. Its
/// wgctl host is shut down on drop (interface, wireguard-go and addresses
/// removed).
pub struct WgNode {
    host: Option<wgctl::Host>,
    pub wg: wgctl::WgInterface,
    pub key: wgctl::keys::PrivateKey,
    pub port: u16,
    rt: NsRuntime,
}

impl WgNode {
    /// Creates interface `ifname` with a fresh key, `port` and `address`
    /// (`addr/len`), and sets it up.
    pub fn new(ns: &Netns, ifname: &str, port: u16, address: &str) -> WgNode {
        let rt = NsRuntime::new(ns);
        let key = wgctl::keys::PrivateKey::generate();
        let (ifname, k, address) = (
            ifname.to_owned(),
            key.clone(),
            address.parse::<wgctl::IpPrefix>().expect("address/len"),
        );
        let (host, wg) = rt
            .block_on(move || async move {
                let host = wgctl::Host::open().await?;
                let wg = host
                    .create_wireguard(&ifname, wgctl::BackendKind::Userspace, &k, Some(port))
                    .await?;
                let net = host.netlink();
                net.add_address(&ifname, address).await?;
                net.link_up(&ifname).await?;
                Ok::<_, wgctl::Error>((host, wg))
            })
            .expect("set up a WireGuard node through wgctl");
        WgNode {
            host: Some(host),
            wg,
            key,
            port,
            rt,
        }
    }

    pub fn public_key(&self) -> wgctl::keys::PublicKey {
        self.key.public_key()
    }

    pub fn upsert_peer(&self, peer: wgctl::PeerConfig) {
        let wg = self.wg.clone();
        self.rt
            .block_on(move || async move { wg.upsert_peer(peer).await })
            .expect("upsert peer");
    }

    pub fn remove_peer(&self, key: wgctl::keys::PublicKey) {
        let wg = self.wg.clone();
        self.rt
            .block_on(move || async move { wg.remove_peer(&key).await })
            .expect("remove peer");
    }

    pub fn read(&self) -> wgctl::DeviceInfo {
        let wg = self.wg.clone();
        self.rt
            .block_on(move || async move { wg.read().await })
            .expect("read the WireGuard device")
    }

    /// Removes what wgctl created here.
    pub fn shutdown(&mut self) {
        if let Some(host) = self.host.take() {
            if let Err(e) = self.rt.block_on(move || host.shutdown()) {
                eprintln!("wgctl shutdown of {}: {e}", self.wg.name());
            }
        }
    }
}

impl Drop for WgNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Writes `contents` to `dir/name` with mode 0600 (keys, site keys, configs).
pub fn secret_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = File::create(&path).expect("create file");
    f.write_all(contents.as_bytes()).expect("write file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    path
}

/// The workspace's target directory (CARGO_TARGET_DIR respected).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// `target/debug/<name>`, built (once per test process) with
/// `cargo build -p <name> --bin <name>` if it is missing.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let path = target_dir().join("debug").join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !path.is_file() && !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "-p", name, "--bin", name])
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {name}: {e}"));
        assert!(status.success(), "cargo build -p {name} failed");
        built.push(name.to_owned());
    }
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

/// PIDs of wireguard-go processes serving `ifname`.
pub fn wireguard_go_pids(ifname: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"wireguard-go"))
                && args.contains(&ifname.as_bytes())
        })
        .collect()
}

/// Asserts that nothing of a test is left: none of `namespaces`, and for each
/// of `ifnames` no wireguard-go process, no control socket in
/// /var/run/wireguard and no interface in the root namespace. Waits up to
/// 3 s for processes that are still exiting.
#[track_caller]
pub fn assert_no_leftovers(namespaces: &[String], ifnames: &[String]) {
    let listed = || {
        let out = must("ip", &["netns", "list"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        namespaces
            .iter()
            .filter(|n| text.split_whitespace().any(|w| w == n.as_str()))
            .cloned()
            .collect::<Vec<_>>()
    };
    let gone = wait_until(Duration::from_secs(3), || {
        listed().is_empty()
            && ifnames.iter().all(|i| {
                wireguard_go_pids(i).is_empty()
                    && !Path::new(&format!("/var/run/wireguard/{i}.sock")).exists()
            })
    });
    if gone {
        for i in ifnames {
            let out = Command::new("ip").args(["link", "show", "dev", i]).output();
            assert!(
                !out.is_ok_and(|o| o.status.success()),
                "interface {i} is left in the root namespace"
            );
        }
        return;
    }
    let details: Vec<String> = ifnames
        .iter()
        .map(|i| {
            format!(
                "{i}: wireguard-go {:?}, socket {}",
                wireguard_go_pids(i),
                Path::new(&format!("/var/run/wireguard/{i}.sock")).exists()
            )
        })
        .collect();
    panic!(
        "left behind: namespaces {:?}; {}",
        listed(),
        details.join("; ")
    );
}

/// The value of metric `name` in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

// ---------------------------------------------------------------------------
// tshark
// ---------------------------------------------------------------------------

/// Fields asked from tshark (an unknown name makes tshark fail, so a renamed
/// field is an error, not a silently empty list). Mirrors
/// lisp-wire/tests/tshark.rs.
pub const TSHARK_FIELDS: &[&str] = &[
    "frame.protocols",
    "_ws.malformed",
    "_ws.expert.severity",
    "_ws.expert.message",
    "ip.checksum.status",
    "udp.checksum.status",
    "lisp.type",
    "lisp.nonce",
    "lisp.records",
    "lisp.keyid",
    "lisp.authlen",
    "lisp.mapping.ttl",
    "lisp.mapping.loccnt",
    "lisp.mapping.act",
    "lisp.mapping.eid.masklen",
    "lisp.mapping.eid.ipv4",
    "lisp.lcaf.type",
    "lisp.lcaf.iid",
    "lisp.loc.priority",
    "lisp.loc.weight",
    "data.data",
];

/// `_ws.expert.severity` of PI_ERROR (PI_WARN, e.g. the undissected Security
/// Key LCAF body, is allowed).
const SEVERITY_ERROR: u64 = 0x0080_0000;

fn run_piped(cmd: &mut Command, input: Option<&[u8]>) -> Vec<u8> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e} (apt-get install tshark)"));
    if let Some(input) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write to child");
    }
    let out = child.wait_with_output().expect("wait for child");
    assert!(
        out.status.success(),
        "{name} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Decodes each payload as a UDP datagram 61000 → 4342 with tshark (IP and
/// UDP checksum validation on) and returns each packet's
/// `_source.layers`, with the [`TSHARK_FIELDS`]. One tshark run for all.
pub fn tshark_decode_all(payloads: &[Vec<u8>]) -> Vec<Value> {
    let mut dump = Vec::new();
    for p in payloads {
        dump.extend(run_piped(
            Command::new("od").args(["-Ax", "-tx1", "-v"]),
            Some(p),
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("msgs.pcap");
    let pcap_s = pcap.to_str().expect("utf-8 path");
    run_piped(
        Command::new("text2pcap").args(["-q", "-u", "61000,4342", "-", pcap_s]),
        Some(&dump),
    );
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r", pcap_s])
        .args(["-o", "ip.check_checksum:TRUE"])
        .args(["-o", "udp.check_checksum:TRUE"])
        .args(["-T", "json"]);
    for f in TSHARK_FIELDS {
        cmd.args(["-e", f]);
    }
    let json: Value = serde_json::from_slice(&run_piped(&mut cmd, None)).expect("tshark JSON");
    let frames: Vec<Value> = json
        .as_array()
        .expect("tshark JSON is an array of packets")
        .iter()
        .map(|p| p["_source"]["layers"].clone())
        .collect();
    assert_eq!(
        frames.len(),
        payloads.len(),
        "tshark saw another number of packets"
    );
    frames
}

/// [`tshark_decode_all`] for one payload.
pub fn tshark_decode(bytes: &[u8]) -> Value {
    tshark_decode_all(&[bytes.to_vec()])
        .pop()
        .expect("one frame")
}

/// Every occurrence of `field` in a decoded frame.
pub fn tshark_field<'a>(frame: &'a Value, field: &str) -> Vec<&'a str> {
    assert!(
        TSHARK_FIELDS.contains(&field),
        "{field} is not in TSHARK_FIELDS"
    );
    match frame.get(field) {
        Some(Value::Array(v)) => v.iter().map(|x| x.as_str().unwrap_or("?")).collect(),
        _ => Vec::new(),
    }
}

/// Wireshark found nothing wrong with `frame`: no malformed packet, no expert
/// info of error severity, good checksums, and LISP dissected every byte
/// (no trailing `data`).
#[track_caller]
pub fn assert_tshark_clean(frame: &Value, what: &str) {
    let show = || serde_json::to_string_pretty(frame).unwrap_or_default();
    assert!(
        tshark_field(frame, "_ws.malformed").is_empty(),
        "{what}: malformed packet\n{}",
        show()
    );
    let messages = tshark_field(frame, "_ws.expert.message");
    for (i, s) in tshark_field(frame, "_ws.expert.severity")
        .iter()
        .enumerate()
    {
        let sev: u64 = s.parse().unwrap_or(u64::MAX);
        assert!(
            sev < SEVERITY_ERROR,
            "{what}: expert info of error severity: {:?}\n{}",
            messages.get(i),
            show()
        );
    }
    for field in ["ip.checksum.status", "udp.checksum.status"] {
        for s in tshark_field(frame, field) {
            assert_eq!(s, "1", "{what}: {field} is not good\n{}", show());
        }
    }
    let protocols = tshark_field(frame, "frame.protocols").join("");
    assert!(
        protocols.ends_with(":lisp") && !protocols.split(':').any(|p| p == "data"),
        "{what}: bytes left undissected after LISP ({protocols})\n{}",
        show()
    );
}

/// A place for a test's files, removed at the end.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lispwg-test-")
        .tempdir()
        .expect("tempdir")
}

#[path = "lab.rs"]
pub mod lab;
