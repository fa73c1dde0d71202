//! wireguard-go, started and supervised by wgctl.
//!
//! wireguard-control would start wireguard-go itself when the control socket
//! is missing, but it leaves the process orphaned and can hang. So wgctl runs
//! `wireguard-go -f <ifname>` from a supervisor thread, waits (bounded) for the
//! socket, restarts the process if it dies, and stops it by PID.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    os::unix::{net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::{
        signal::{kill, Signal},
        wait::{waitid, Id, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};

use crate::error::{Error, Result};

/// Where wireguard-go puts its UAPI sockets. Shared by all namespaces.
pub(crate) const SOCKET_DIR: &str = "/var/run/wireguard";
/// The binary the Debian package installs; found on `PATH` otherwise.
pub(crate) const DEFAULT_BINARY: &str = "wireguard-go";

const SOCKET_POLL: Duration = Duration::from_millis(2);
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
const TERM_GRACE: Duration = Duration::from_secs(3);
const KILL_GRACE: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A process that ran this long is considered healthy: its next crash restarts
/// it after the shortest backoff again.
const STABLE_RUN: Duration = Duration::from_secs(10);

pub(crate) fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// Whether a live wireguard-go answers on this interface's socket.
pub(crate) fn socket_is_live(ifname: &str) -> bool {
    UnixStream::connect(socket_path(ifname)).is_ok()
}

/// Finds the binary: a path is used as is, a bare name is looked up on `PATH`.
pub(crate) fn find_binary(name: &Path) -> Result<PathBuf> {
    let missing = || Error::WireguardGoMissing {
        path: name.display().to_string(),
    };
    if name.components().count() > 1 {
        return if name.is_file() {
            Ok(name.to_owned())
        } else {
            Err(missing())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(missing)
}

/// Called on the supervisor thread after a restarted wireguard-go is ready, to
/// put its configuration back.
pub(crate) type RestartHook = Box<dyn Fn() + Send + 'static>;

struct Shared {
    ifname: String,
    binary: PathBuf,
    /// The running child's PID; cleared (under this lock) before the child is
    /// reaped, so a signal is never sent to a recycled PID.
    pid: Mutex<Option<u32>>,
    stopping: AtomicBool,
    /// Dropping the sender wakes the supervisor out of a restart backoff.
    wake: Mutex<Option<mpsc::Sender<()>>>,
    restarts: AtomicU32,
}

impl Shared {
    fn signal(&self, signal: Signal) {
        let pid = self.pid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pid) = *pid {
            if let Err(err) = kill(Pid::from_raw(pid as i32), signal) {
                tracing::debug!(ifname = %self.ifname, pid, %err, signal = signal.as_str(), "signal wireguard-go");
            }
        }
    }
}

/// A supervised wireguard-go process for one interface.
pub(crate) struct WireguardGo {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<thread::JoinHandle<()>>>,
}

impl WireguardGo {
    /// Starts wireguard-go and waits until its control socket answers.
    /// Blocks: call it from `spawn_blocking`.
    /// wireguard-go creates its TUN in its own namespace, so the supervisor
    /// thread that forks it first enters `netns` (the host's namespace).
    pub(crate) fn start(
        ifname: &str,
        binary: &Path,
        netns: Option<Arc<File>>,
        on_restart: RestartHook,
    ) -> Result<Self> {
        let binary = find_binary(binary)?;
        let (wake_tx, wake_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            ifname: ifname.to_owned(),
            binary,
            pid: Mutex::new(None),
            stopping: AtomicBool::new(false),
            wake: Mutex::new(Some(wake_tx)),
            restarts: AtomicU32::new(0),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_shared = shared.clone();
        // The supervisor thread forks every wireguard-go itself: the child's
        // parent-death signal is tied to the forking thread, which must outlive
        // the child.
        let supervisor = thread::Builder::new()
            .name(format!("wg-go-{ifname}"))
            .spawn(move || {
                if let Err(e) = crate::netns::enter_netns(netns.as_deref()) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                supervise(thread_shared, on_restart, ready_tx, wake_rx)
            })
            .map_err(|e| Error::io("spawn wireguard-go supervisor thread", e))?;
        let this = WireguardGo {
            shared,
            supervisor: Mutex::new(Some(supervisor)),
        };
        match ready_rx.recv_timeout(SOCKET_TIMEOUT + TERM_GRACE) {
            Ok(Ok(())) => Ok(this),
            Ok(Err(e)) => {
                this.stop();
                Err(e)
            }
            Err(_) => {
                this.stop();
                Err(Error::WireguardGoStart {
                    ifname: ifname.to_owned(),
                    reason: "supervisor did not report readiness".into(),
                })
            }
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        *self.shared.pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn restarts(&self) -> u32 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// Stops supervision and the process (SIGTERM, then SIGKILL after a grace
    /// period), bounded in time. Idempotent. Blocks: use `spawn_blocking` from
    /// async code.
    pub(crate) fn stop(&self) {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        drop(shared.wake.lock().unwrap_or_else(|e| e.into_inner()).take());
        let Some(handle) = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        shared.signal(Signal::SIGTERM);
        if !wait_finished(&handle, TERM_GRACE) {
            tracing::warn!(ifname = %shared.ifname, "wireguard-go ignored SIGTERM; sending SIGKILL");
            shared.signal(Signal::SIGKILL);
        }
        if wait_finished(&handle, KILL_GRACE) {
            let _ = handle.join();
            tracing::info!(ifname = %shared.ifname, "wireguard-go stopped");
        } else {
            tracing::error!(ifname = %shared.ifname, pid = %crate::fields::Opt(&self.pid()), "wireguard-go did not exit after SIGKILL");
        }
        // A killed process leaves its socket behind; it is ours, by name.
        let path = socket_path(&shared.ifname);
        if path.exists() && !socket_is_live(&shared.ifname) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_finished(handle: &thread::JoinHandle<()>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

fn supervise(
    shared: Arc<Shared>,
    on_restart: RestartHook,
    ready: mpsc::Sender<Result<()>>,
    wake: mpsc::Receiver<()>,
) {
    let ifname = shared.ifname.clone();
    let mut child = match launch(&shared) {
        Ok(child) => {
            let _ = ready.send(Ok(()));
            child
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(ready);
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        let status = wait_and_reap(&shared, &mut child);
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if started.elapsed() >= STABLE_RUN {
            backoff = MIN_BACKOFF;
        }
        let mut announced = false;
        loop {
            // Wait first, then say so: a signal meant for the whole service
            // (a terminal's Ctrl-C, systemd stopping every process of the
            // unit) can reach wireguard-go a moment before this process
            // starts its clean shutdown, which then wakes us here. That is
            // no crash, and nothing is logged for it.
            match wake.recv_timeout(backoff) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            if !announced {
                announced = true;
                tracing::warn!(%ifname, status = %crate::fields::Opt(&status), "wireguard-go exited; restarting it");
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match launch(&shared) {
                Ok(new_child) => {
                    child = new_child;
                    shared.restarts.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(%ifname, pid = child.id(), "wireguard-go restarted");
                    on_restart();
                    break;
                }
                Err(e) if shared.stopping.load(Ordering::SeqCst) => {
                    tracing::debug!(%ifname, %e, "restart abandoned: stopping");
                    return;
                }
                Err(e) => {
                    tracing::error!(%ifname, %e, backoff_ms = backoff.as_millis() as u64, "wireguard-go restart failed")
                }
            }
        }
    }
}

/// Spawns `wireguard-go -f <ifname>` and waits for its socket.
fn launch(shared: &Shared) -> Result<Child> {
    let ifname = &shared.ifname;
    let start_error = |reason: String| Error::WireguardGoStart {
        ifname: ifname.clone(),
        reason,
    };
    let mut command = Command::new(&shared.binary);
    command
        .arg("-f")
        .arg(ifname)
        // With LOG_LEVEL set, wireguard-go's logging has been seen to wedge
        // start-up here; its error-level default is what we forward.
        .env_remove("LOG_LEVEL")
        .env_remove("WG_TUN_FD")
        .env_remove("WG_UAPI_FD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C reaches the daemon,
        // which stops wireguard-go itself after removing what it set up.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            // Take wireguard-go down with us if this process dies without
            // running its cleanup (crash, SIGKILL).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| start_error(format!("spawn {}: {e}", shared.binary.display())))?;
    let pid = child.id();
    {
        let mut slot = shared.pid.lock().unwrap_or_else(|e| e.into_inner());
        if shared.stopping.load(Ordering::SeqCst) {
            drop(slot);
            let _ = child.kill();
            let _ = child.wait();
            return Err(start_error("stop requested".into()));
        }
        *slot = Some(pid);
    }
    forward_output(ifname, pid, child.stdout.take(), false);
    forward_output(ifname, pid, child.stderr.take(), true);

    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        if socket_is_live(ifname) {
            tracing::debug!(%ifname, pid, "wireguard-go socket ready");
            return Ok(child);
        }
        if has_exited(pid, false) {
            let status = wait_and_reap(shared, &mut child);
            return Err(start_error(format!("exited during start-up ({status:?})")));
        }
        if Instant::now() >= deadline {
            shared.signal(Signal::SIGKILL);
            let _ = wait_and_reap(shared, &mut child);
            return Err(start_error(format!(
                "no control socket at {} after {SOCKET_TIMEOUT:?}",
                socket_path(ifname).display()
            )));
        }
        thread::sleep(SOCKET_POLL);
    }
}

/// Waits for the child to exit without reaping it, clears the PID so nobody
/// signals it any more, then reaps it.
fn wait_and_reap(shared: &Shared, child: &mut Child) -> Option<ExitStatus> {
    let pid = child.id();
    has_exited(pid, true);
    *shared.pid.lock().unwrap_or_else(|e| e.into_inner()) = None;
    child.wait().ok()
}

/// Whether `pid` (our child) has exited, leaving it unreaped. With `block`,
/// waits until it has.
fn has_exited(pid: u32, block: bool) -> bool {
    let mut flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
    if !block {
        flags |= WaitPidFlag::WNOHANG;
    }
    loop {
        match waitid(Id::Pid(Pid::from_raw(pid as i32)), flags) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            // ECHILD: already reaped, so certainly gone.
            Err(_) => return true,
        }
    }
}

/// Sends wireguard-go's output to tracing, one event per line.
fn forward_output(
    ifname: &str,
    pid: u32,
    stream: Option<impl Read + Send + 'static>,
    stderr: bool,
) {
    let Some(stream) = stream else { return };
    let ifname = ifname.to_owned();
    let spawned = thread::Builder::new()
        .name(format!("wg-go-log-{pid}"))
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                // stdout carries wireguard-go's log ("ERROR: ..."); stderr its
                // start-up banner (box-drawn) and, if it crashes, Go's panic.
                let banner = line.starts_with(['┌', '│', '└']);
                if line.starts_with("ERROR") || (stderr && !banner) {
                    tracing::warn!(ifname = %ifname, pid, "wireguard-go: {line}");
                } else {
                    tracing::debug!(ifname = %ifname, pid, "wireguard-go: {line}");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(pid, %e, "cannot forward wireguard-go output");
    }
}
