//! Processes, network namespaces and /proc readings for the benchmarks.
//!
//! Everything the bench creates is named `lwb<pid % 10000><letter>…` (at most
//! 15 characters, as interface names must be: wireguard-go's control sockets in
//! /var/run/wireguard are shared by all namespaces), deleted on drop, and
//! every process it starts is stopped by its PID. SIGINT and SIGTERM only set
//! a flag ([`interrupted`]); the loops check it, so the drops still run.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag, so that an interrupted run still
/// stops its processes and deletes its namespaces.
pub fn install_signal_flag() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// An error once SIGINT or SIGTERM arrived.
pub fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) when interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Polls `check` every `every` until it returns `Some` or `limit` passes.
pub fn wait_for<T>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last_err = None;
    loop {
        interrupted()?;
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {limit:?} waiting for {what}")),
                None => anyhow!("timed out after {limit:?} waiting for {what}"),
            });
        }
        thread::sleep(every);
    }
}

/// A prefix unique to this process and call: `lwb` + pid % 10000 + a letter.
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let letter = (b'a' + (n % 26) as u8) as char;
    format!("lwb{}{letter}", std::process::id() % 10_000)
}

/// Runs a command; it must succeed. Returns stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with `input` on stdin; it must succeed.
pub fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes `contents` to `path` with mode 0600 (keys, site keys, configs).
pub fn secret_file(path: &Path, contents: &str) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// A network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates it, with loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        if name.len() > 15 {
            bail!("namespace name {name} is longer than 15 characters");
        }
        run("ip", &["netns", "add", name])?;
        let ns = Netns { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args…`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip -n <ns> -batch -` with `commands` (one per line): several changes
    /// with one process start, so that a move is short.
    pub fn ip_batch(&self, commands: &str) -> Result<()> {
        run_with_input("ip", &["-n", &self.name, "-batch", "-"], commands)?;
        Ok(())
    }

    /// Runs a command inside the namespace; it must succeed.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Starts `program args…` inside the namespace, in its own process group
    /// (a Ctrl-C reaches only the bench, which then stops it in order), its
    /// output going to `log`.
    pub fn spawn(&self, label: &str, program: &Path, args: &[&str], log: &Path) -> Result<Daemon> {
        let file = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        // `ip netns exec` execs the program: the PID is the daemon's.
        Ok(Daemon {
            child: Some(child),
            label: label.into(),
            log: log.to_path_buf(),
        })
    }

    /// Runs `f` on a thread inside the namespace: sockets it creates stay
    /// there, whichever thread uses them afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a valid namespace fd only affects this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(anyhow!(
                        "setns into {}: {}",
                        self.name,
                        std::io::Error::last_os_error()
                    ));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("a thread inside namespace {} panicked", self.name))?
        })
    }

    /// Runs `f` on a background thread inside the namespace; join the handle
    /// for its result.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<thread::JoinHandle<Result<T>>> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        let name = self.name.clone();
        Ok(thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns into {name}: {}", std::io::Error::last_os_error());
            }
            f()
        }))
    }

    /// Fetches a telemetry page from a daemon listening inside the namespace.
    pub fn fetch(&self, addr: std::net::SocketAddr, path: &str) -> Result<String> {
        Ok(self.enter(|| conf::telemetry::fetch(addr, path))??)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: {e}");
        }
    }
}

/// A veth pair from `a` (named `a_if`) to `b` (named `b_if`), both ends up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    run(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// A process the bench started, stopped by PID on drop: SIGTERM, then
/// SIGKILL after 5 s.
pub struct Daemon {
    child: Option<Child>,
    label: String,
    log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Ok while it runs; an error with its log once it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.label);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); last lines of its log:\n{}",
                self.label,
                self.log_tail(20)
            );
        }
        Ok(())
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill has no memory-safety preconditions; the child is
            // not reaped yet, so its PID is still ours.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then SIGKILL after 5 s. Returns how long it took to exit.
    pub fn stop(&mut self) -> Duration {
        let t0 = Instant::now();
        if self.child.is_none() {
            return Duration::ZERO;
        }
        self.signal(libc::SIGTERM);
        if !self.wait_exit(Duration::from_secs(5)) {
            eprintln!("warning: {} ignored SIGTERM; killing it", self.label);
            self.signal(libc::SIGKILL);
            self.wait_exit(Duration::from_secs(5));
        }
        self.child = None;
        t0.elapsed()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resident memory of a process: (VmRSS, VmHWM) in KiB.
pub fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .strip_suffix(" kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .ok_or_else(|| anyhow!("/proc/{pid}/status has no {name}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time used by a process so far (user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based).
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((utime + stime) as f64 / hz)
}

/// Context switches of all threads of a process so far (voluntary and not):
/// how often it woke up.
pub fn context_switches(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status")).unwrap_or_default();
        for l in status.lines() {
            if let Some(v) = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(total)
}

/// PIDs of the children of `pid` whose command name is `comm`.
pub fn children_named(pid: u32, comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let name = head.split_once('(').map_or("", |(_, n)| n);
            let ppid = rest
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok());
            name == comm && ppid == Some(pid)
        })
        .collect()
}

/// `program` found on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Fails unless the bench runs as root with the tools it drives.
pub fn require_root_and_tools(tools: &[&str]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the benchmarks must run as root: they create network namespaces, veth pairs, \
             TUN and WireGuard interfaces (try: sudo {})",
            std::env::args().collect::<Vec<_>>().join(" ")
        );
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (Debian: apt-get install wireguard-go wireguard-tools iproute2 iperf3)",
            missing.join(", ")
        );
    }
    if !Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: wireguard-go and the xtr need TUN support");
    }
    Ok(())
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pin to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
