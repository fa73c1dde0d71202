//! Test harness: creates (and always deletes) network namespaces and veth
//! pairs with `ip`, and runs wgctl code inside a namespace on a dedicated
//! thread. The code under test touches the host only through wgctl; `ip` is
//! used here for topology and for independent checks of what is left behind.
#![allow(dead_code)]

use std::{
    fs::File,
    future::Future,
    path::Path,
    pin::Pin,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

pub const WIREGUARD_GO: &str = "/usr/bin/wireguard-go";

/// Integration tests need root and wireguard-go: without them, fail loudly.
pub fn require_root_and_wireguard_go() {
    init_tracing();
    assert!(
        unsafe { libc::geteuid() } == 0,
        "wgctl integration tests must run as root (they create network namespaces)"
    );
    assert!(
        Path::new(WIREGUARD_GO).is_file(),
        "{WIREGUARD_GO} is missing: install the `wireguard-go` package to run wgctl's tests"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: TUN support is needed by wireguard-go and the miss TUN"
    );
    assert!(
        Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "iproute2 (`ip`) is needed by the test harness to build namespaces"
    );
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "wgctl=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A name unique to this process and call, at most 15 chars:
/// `lw` + tag (<= 4) + pid (hex) + counter (hex).
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    assert!(tag.len() <= 4, "tag {tag:?} too long");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("lw{tag}{:x}{n:x}", std::process::id());
    assert!(name.len() <= 15, "{name} too long");
    name
}

fn run_ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip")
}

fn must_ip(args: &[&str]) {
    let out = run_ip(args);
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace that is deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        must_ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ...`, which must succeed (topology set-up only).
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        must_ip(&full);
    }

    /// `ip -n <ns> ...` output, for checks.
    pub fn ip_output(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        let out = run_ip(&full);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn has_link(&self, ifname: &str) -> bool {
        run_ip(&["-n", &self.name, "link", "show", "dev", ifname])
            .status
            .success()
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Pings `dst` (harness traffic); true if any reply came back.
    pub fn ping(&self, dst: &str, count: u32, wait_secs: u32) -> bool {
        self.command("ping")
            .args([
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                &wait_secs.to_string(),
                dst,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Pings until one succeeds, bounded in attempts.
    pub fn ping_until_ok(&self, dst: &str, attempts: u32) -> bool {
        (0..attempts).any(|_| self.ping(dst, 1, 1))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = run_ip(&["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "could not delete netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A veth pair between two namespaces; the ends go with their namespaces.
pub fn veth(a: &Netns, a_end: &str, b: &Netns, b_end: &str) {
    must_ip(&[
        "link", "add", a_end, "netns", &a.name, "type", "veth", "peer", "name", b_end, "netns",
        &b.name,
    ]);
}

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A thread inside a namespace, running a current-thread tokio runtime. Jobs
/// sent with [`NsRuntime::run`] run there concurrently, so every socket,
/// process and TUN they create lands in that namespace.
pub struct NsRuntime {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NsRuntime {
    pub fn new(ns: &Netns) -> NsRuntime {
        let path = format!("/var/run/netns/{}", ns.name);
        let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("ns-{}", ns.name))
            .spawn(move || {
                let file = File::open(&path).expect("open netns file");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into test namespace");
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build runtime");
                ready_tx.send(()).expect("report ready");
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some(job) = jobs_rx.recv().await {
                        tokio::task::spawn_local(job());
                    }
                });
            })
            .expect("spawn namespace thread");
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("namespace thread did not start");
        NsRuntime {
            jobs: Some(jobs_tx),
            thread: Some(thread),
        }
    }

    /// Runs `f` inside the namespace and returns its output.
    pub async fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _ = tx.send(f().await);
            })
        });
        self.jobs
            .as_ref()
            .expect("runtime alive")
            .send(job)
            .unwrap_or_else(|_| panic!("namespace runtime has stopped"));
        rx.await.expect("job inside the namespace panicked")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// True if `pid` is a live (not zombie) wireguard-go process.
pub fn is_live_wireguard_go(pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("");
    comm.trim() == "wireguard-go" && state != "Z"
}

pub fn socket_path(ifname: &str) -> String {
    format!("/var/run/wireguard/{ifname}.sock")
}

/// Polls `check` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

use std::{net::SocketAddr, sync::Arc};
use wgctl::{keys::PrivateKey, BackendKind, Host, IpPrefix, PeerConfig, WgInterface};

/// One test host: a namespace with a wgctl [`Host`], a veth end and a
/// userspace WireGuard interface. Fields drop in order: the host (which cleans
/// up), then the runtime, then the namespace.
pub struct Node {
    pub host: Option<Arc<Host>>,
    pub wg: WgInterface,
    pub key: PrivateKey,
    pub port: u16,
    pub veth: String,
    /// Underlay address on the veth (192.0.2.0/24).
    pub underlay: String,
    /// Overlay address on the WireGuard interface (10.0.0.0/24).
    pub overlay: String,
    pub rt: NsRuntime,
    pub ns: Netns,
}

impl Node {
    pub fn host(&self) -> Arc<Host> {
        self.host.clone().expect("host still open")
    }

    pub fn endpoint(&self) -> SocketAddr {
        format!("{}:{}", self.underlay, self.port).parse().unwrap()
    }

    /// This node as a peer: its overlay address only.
    pub fn as_peer(&self) -> PeerConfig {
        PeerConfig {
            public_key: self.key.public_key(),
            endpoint: Some(self.endpoint()),
            allowed_ips: vec![format!("{}/32", self.overlay).parse().unwrap()],
            persistent_keepalive: None,
        }
    }

    pub async fn upsert_peer(&self, peer: PeerConfig) {
        let wg = self.wg.clone();
        self.rt
            .run(move || async move { wg.upsert_peer(peer).await })
            .await
            .expect("upsert peer");
    }
}

/// Two namespaces joined by a veth (192.0.2.1 and .2), each with a userspace
/// WireGuard interface (10.0.0.1 and .2, ports 51820 and 51821), set up only
/// through wgctl. Peers are left to the test.
pub async fn two_nodes(tag: &str) -> (Node, Node) {
    require_root_and_wireguard_go();
    let ns_a = Netns::new(&format!("{tag}a"));
    let ns_b = Netns::new(&format!("{tag}b"));
    let veth_a = unique(&format!("{tag}v"));
    let veth_b = unique(&format!("{tag}v"));
    veth(&ns_a, &veth_a, &ns_b, &veth_b);
    let a = node(ns_a, veth_a, "192.0.2.1", "10.0.0.1", 51820, tag).await;
    let b = node(ns_b, veth_b, "192.0.2.2", "10.0.0.2", 51821, tag).await;
    (a, b)
}

async fn node(
    ns: Netns,
    veth: String,
    underlay: &str,
    overlay: &str,
    port: u16,
    tag: &str,
) -> Node {
    let rt = NsRuntime::new(&ns);
    let host = Arc::new(
        rt.run(|| async { Host::open().await.expect("open wgctl host") })
            .await,
    );
    let key = PrivateKey::generate();
    let wg_name = unique(&format!("{tag}w"));
    let wg = rt
        .run({
            let host = host.clone();
            let veth = veth.clone();
            let key = key.clone();
            let underlay: IpPrefix = format!("{underlay}/24").parse().unwrap();
            let overlay: IpPrefix = format!("{overlay}/24").parse().unwrap();
            move || async move {
                let net = host.netlink();
                net.link_up(&veth).await?;
                net.add_address(&veth, underlay).await?;
                let wg = host
                    .create_wireguard(&wg_name, BackendKind::Userspace, &key, Some(port))
                    .await?;
                net.add_address(&wg_name, overlay).await?;
                net.link_up(&wg_name).await?;
                Ok::<_, wgctl::Error>(wg)
            }
        })
        .await
        .expect("set up node through wgctl");
    Node {
        host: Some(host),
        wg,
        key,
        port,
        veth,
        underlay: underlay.to_owned(),
        overlay: overlay.to_owned(),
        rt,
        ns,
    }
}
