//! Network namespaces, veth pairs, and code run inside a namespace (a plain
//! thread, or a tokio runtime for async code such as wgctl's).

use crate::cmd::{run, run_command};
use crate::daemon::Daemon;
use anyhow::{anyhow, Context, Result};
use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

/// A network namespace, deleted on drop (panics included) with any process
/// still inside it, unless it was [`Netns::existing`] or [`Netns::keep`]-ed.
pub struct Netns {
    name: String,
    delete_on_drop: bool,
}

impl Netns {
    /// A namespace named [`crate::unique`]`(tag)`, loopback up.
    pub fn new(tag: &str) -> Result<Netns> {
        Netns::create(&crate::unique(tag))
    }

    /// A namespace named `name`, loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.into(),
            delete_on_drop: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace that exists already (made by an earlier `lispwg-lab up`);
    /// dropping this does not delete it.
    pub fn existing(name: &str) -> Netns {
        Netns {
            name: name.into(),
            delete_on_drop: false,
        }
    }

    /// Whether namespace `name` exists.
    pub fn exists(name: &str) -> bool {
        Path::new("/var/run/netns").join(name).exists()
    }

    /// Leaves the namespace in place when this is dropped.
    pub fn keep(&mut self) {
        self.delete_on_drop = false;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// `ip -n <ns> args…`; it must succeed. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip -n <ns> -batch -` with `commands` (one per line): several changes
    /// with one process start, so that a move is short.
    pub fn ip_batch(&self, commands: &str) -> Result<()> {
        run_command(
            Command::new("ip").args(["-n", &self.name, "-batch", "-"]),
            Some(commands.as_bytes()),
        )?;
        Ok(())
    }

    /// `program` run inside the namespace (`ip netns exec`, which execs it:
    /// the child's PID is the program's), stdin closed.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `args` inside the namespace; it must succeed. Returns stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().context("exec: no command")?;
        let out = run_command(self.command(program).args(rest), None)
            .with_context(|| format!("in namespace {}", self.name))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs `args` inside the namespace and returns whatever it did.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        let (program, rest) = args.split_first().context("exec: no command")?;
        self.command(program)
            .args(rest)
            .output()
            .with_context(|| format!("run {program} in namespace {}", self.name))
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Starts `program args…` inside the namespace as a [`Daemon`] logging
    /// to `log`.
    pub fn spawn(
        &self,
        label: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        log: &Path,
    ) -> Result<Daemon> {
        let mut cmd = self.command(program);
        cmd.args(args);
        Daemon::spawn(label, cmd, log)
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    /// Sockets it creates belong to the namespace for good, whichever thread
    /// uses them afterwards. A panic in `f` is resumed here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = self.file()?;
        thread::scope(|s| {
            s.spawn(move || {
                enter(&file)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Runs `f` on a background thread inside the namespace; join the handle
    /// for its result.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<thread::JoinHandle<Result<T>>> {
        let file = self.file()?;
        Ok(thread::spawn(move || {
            enter(&file)?;
            f()
        }))
    }

    fn file(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("open {}", self.path().display()))
    }

    /// An HTTP GET of a daemon's telemetry page inside the namespace.
    pub fn fetch(&self, addr: SocketAddr, path: &str) -> Result<String> {
        self.run(|| crate::http::get(addr, path))?
    }

    /// PIDs of the processes inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        run("ip", &["netns", "pids", &self.name])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    pub fn has_link(&self, ifname: &str) -> bool {
        self.ip(&["link", "show", "dev", ifname]).is_ok()
    }

    /// Pings `dst` (`count` requests 0.2 s apart, `wait_secs` for each
    /// reply); true if every request was answered.
    pub fn ping(&self, dst: &str, count: u32, wait_secs: u32) -> bool {
        let (c, w) = (count.to_string(), wait_secs.to_string());
        self.exec(&["ping", "-n", "-q", "-c", &c, "-i", "0.2", "-W", &w, dst])
            .is_ok_and(|out| out.contains(&format!(" {count} received")))
    }

    /// Pings until one request is answered, at most `attempts` times.
    pub fn ping_until_ok(&self, dst: &str, attempts: u32) -> bool {
        (0..attempts).any(|_| self.ping(dst, 1, 1))
    }

    /// Deletes it now (its processes killed), reporting a failure.
    pub fn delete(mut self) -> Result<()> {
        self.delete_on_drop = false;
        delete_namespace(&self.name)
    }
}

/// Stops what still runs in namespace `name` (started there by the
/// testbed: SIGTERM, so that a wireguard-go removes its control socket, then
/// SIGKILL after a second) and deletes it.
pub fn delete_namespace(name: &str) -> Result<()> {
    let ns = Netns::existing(name);
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        for pid in ns.pids() {
            // SAFETY: kill has no memory-safety preconditions; every process
            // in a namespace the testbed made was started by it.
            unsafe { libc::kill(pid as libc::pid_t, sig) };
        }
        if crate::wait_until(Duration::from_secs(1), || ns.pids().is_empty()) {
            break;
        }
    }
    run("ip", &["netns", "del", name]).map(|_| ())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.delete_on_drop {
            if let Err(e) = delete_namespace(&self.name) {
                eprintln!("could not delete namespace {}: {e:#}", self.name);
            }
        }
    }
}

/// Moves the calling thread into the namespace of `file`.
fn enter(file: &File) -> Result<()> {
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| anyhow!("setns into a test namespace: {e}"))
}

/// A veth pair: `a_if` in `a`, `b_if` in `b`, both down and unaddressed.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    crate::check_ifname(a_if)?;
    crate::check_ifname(b_if)?;
    run(
        "ip",
        &[
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
            &b.name,
        ],
    )?;
    Ok(())
}

/// A veth pair with unique names between `a` and `b`, each end up with its
/// address (`addr/len`, if any). Returns the two interface names.
pub fn link(
    a: &Netns,
    a_addr: Option<&str>,
    b: &Netns,
    b_addr: Option<&str>,
) -> Result<(String, String)> {
    let (a_if, b_if) = (crate::unique("v"), crate::unique("v"));
    veth(a, &a_if, b, &b_if)?;
    for (ns, end, addr) in [(a, &a_if, a_addr), (b, &b_if, b_addr)] {
        if let Some(addr) = addr {
            ns.ip(&["addr", "add", addr, "dev", end])?;
        }
        ns.ip(&["link", "set", end, "up"])?;
    }
    Ok((a_if, b_if))
}

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A thread inside a namespace running a current-thread tokio runtime: async
/// code (wgctl) run there creates its sockets, processes and interfaces in
/// that namespace. Jobs run concurrently.
pub struct NsRuntime {
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// How long [`NsRuntime::block_on`] waits for a job.
const JOB_LIMIT: Duration = Duration::from_secs(60);

impl NsRuntime {
    pub fn new(ns: &Netns) -> Result<NsRuntime> {
        let file = ns.file()?;
        let (jobs_tx, mut jobs_rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("ns-{}", ns.name()))
            .spawn(move || {
                let runtime = enter(&file).and_then(|()| {
                    Ok(tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?)
                });
                let runtime = match runtime {
                    Ok(r) => {
                        let _ = ready_tx.send(Ok(()));
                        r
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some(job) = jobs_rx.recv().await {
                        tokio::task::spawn_local(job());
                    }
                });
            })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the namespace runtime did not start")??;
        Ok(NsRuntime {
            jobs: Some(jobs_tx),
            thread: Some(thread),
        })
    }

    /// Sends `f` to the namespace thread; `done` gets its output.
    fn submit<F, Fut, T>(&self, f: F, done: impl FnOnce(T) + Send + 'static)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let job: Job = Box::new(move || Box::pin(async move { done(f().await) }));
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .expect("the namespace runtime has stopped");
    }

    /// Runs `f` inside the namespace and awaits its output (from async code:
    /// a tokio test).
    pub async fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(f, move |v| {
            let _ = tx.send(v);
        });
        rx.await.expect("a job inside the namespace panicked")
    }

    /// Runs `f` inside the namespace and waits for its output (from
    /// synchronous code), at most a minute.
    pub fn block_on<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(f, move |v| {
            let _ = tx.send(v);
        });
        rx.recv_timeout(JOB_LIMIT).unwrap_or_else(|e| {
            panic!("a job inside the namespace panicked or took over {JOB_LIMIT:?}: {e}")
        })
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

/// `/etc/netns/NS/resolv.conf` pointing at `nameserver` (an agent's DNS),
/// for a namespace the caller created: `ip netns exec` bind-mounts it over
/// /etc/resolv.conf. Removed with its folder (and /etc/netns, if this made
/// it and it is empty again) when dropped.
pub struct NetnsResolvConf(PathBuf, bool);

impl NetnsResolvConf {
    pub fn point_at(ns: &str, nameserver: &str) -> Result<NetnsResolvConf> {
        let made_parent = !Path::new("/etc/netns").exists();
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // Made before the write: a failed write still removes the folder.
        let conf = NetnsResolvConf(dir, made_parent);
        std::fs::write(
            conf.0.join("resolv.conf"),
            format!(
                "nameserver {nameserver}\nsearch lispwg.internal\noptions timeout:3 attempts:1\n"
            ),
        )
        .with_context(|| format!("write {}/resolv.conf", conf.0.display()))?;
        Ok(conf)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if self.1 {
            // Fails, and so keeps it, if anything else is in there now.
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }
}
