//! [`Daemon`]: a process the testbed started, stopped by its PID (SIGTERM,
//! then SIGKILL), its output kept in a log file that is printed when a test
//! fails while it is alive.
//!
//! A daemon can outlive the program that started it (`lispwg-lab up`): its
//! PID and start time go into a PID file, and another process adopts it from
//! there to stop it. The start time guards against a recycled PID: a PID file
//! whose process is gone, or is another process now, is never signalled.

use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a daemon gets to exit on SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

enum Handle {
    /// Started by this process.
    Child(Child),
    /// Adopted from a PID file.
    Pid { pid: u32, start: u64 },
    /// Stopped, exited or detached.
    Gone,
}

pub struct Daemon {
    label: String,
    log: PathBuf,
    handle: Handle,
    pid_file: Option<PathBuf>,
    remove_log: bool,
    detached: bool,
}

/// The start time of process `pid` (clock ticks after boot), if it exists
/// and is not a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after it.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, starttime field 22 (1-based).
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; callers only pass
    // PIDs of processes they started and have checked are still theirs.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

impl Daemon {
    /// Starts `command` with stdin closed and stdout and stderr appended to
    /// `log`. After [`crate::install_signal_flag`] it gets its own process
    /// group, so that a Ctrl-C reaches only the program that handles it.
    pub fn spawn(label: &str, mut command: Command, log: &Path) -> Result<Daemon> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("create {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if crate::cmd::handles_signals() {
            command.process_group(0);
        }
        let child = command.spawn().with_context(|| {
            format!(
                "cannot start {label} ({})",
                command.get_program().to_string_lossy()
            )
        })?;
        Ok(Daemon {
            label: label.into(),
            log: log.to_path_buf(),
            handle: Handle::Child(child),
            pid_file: None,
            remove_log: false,
            detached: false,
        })
    }

    /// Adopts the daemon recorded in `pid_file`; `None` (and the file
    /// removed) when that process is gone.
    pub fn adopt(label: &str, pid_file: &Path, log: &Path) -> Result<Option<Daemon>> {
        let Ok(text) = std::fs::read_to_string(pid_file) else {
            return Ok(None);
        };
        let mut parts = text.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(start))) = (parts.next(), parts.next()) else {
            bail!(
                "{}: expected \"PID STARTTIME\", got {text:?}",
                pid_file.display()
            );
        };
        let pid = u32::try_from(pid).context("PID out of range")?;
        if start_time(pid) != Some(start) {
            let _ = std::fs::remove_file(pid_file);
            return Ok(None);
        }
        Ok(Some(Daemon {
            label: label.into(),
            log: log.to_path_buf(),
            handle: Handle::Pid { pid, start },
            pid_file: Some(pid_file.to_path_buf()),
            remove_log: false,
            detached: false,
        }))
    }

    /// Writes its PID and start time to `pid_file`, removed again when it is
    /// stopped.
    pub fn record(&mut self, pid_file: &Path) -> Result<()> {
        let pid = self.pid();
        let start = start_time(pid).with_context(|| format!("{} exited at once", self.label))?;
        std::fs::write(pid_file, format!("{pid} {start}\n"))
            .with_context(|| format!("write {}", pid_file.display()))?;
        self.pid_file = Some(pid_file.to_path_buf());
        Ok(())
    }

    /// Removes its log when it is dropped while no test is failing.
    pub fn remove_log_when_done(mut self) -> Daemon {
        self.remove_log = true;
        self
    }

    pub fn pid(&self) -> u32 {
        match &self.handle {
            Handle::Child(c) => c.id(),
            Handle::Pid { pid, .. } => *pid,
            Handle::Gone => 0,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.handle {
            Handle::Child(c) => matches!(c.try_wait(), Ok(None)),
            Handle::Pid { pid, start } => start_time(*pid) == Some(*start),
            Handle::Gone => false,
        }
    }

    /// Ok while it runs; an error with the end of its log once it exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Handle::Child(c) = &mut self.handle {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "{} exited ({status}); last lines of its log ({}):\n{}",
                    self.label,
                    self.log.display(),
                    self.log_tail(30)
                );
            }
        }
        if !self.is_running() {
            bail!("{} is not running", self.label);
        }
        Ok(())
    }

    /// Waits until its log contains `needle`; false if it does not within
    /// `limit` or the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> bool {
        crate::wait_until(limit, || self.log().contains(needle) || !self.is_running())
            && self.log().contains(needle)
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            match &mut self.handle {
                Handle::Child(c) => {
                    if let Ok(Some(status)) = c.try_wait() {
                        return Some(Some(status));
                    }
                }
                Handle::Pid { pid, start } => {
                    if start_time(*pid) != Some(*start) {
                        return Some(None);
                    }
                }
                Handle::Gone => return Some(None),
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn send(&mut self, sig: libc::c_int) {
        if self.is_running() {
            signal(self.pid(), sig);
        }
    }

    fn gone(&mut self) {
        self.handle = Handle::Gone;
        if let Some(f) = self.pid_file.take() {
            let _ = std::fs::remove_file(f);
        }
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]. Returns how it exited
    /// when it did so on SIGTERM and this process started it.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if matches!(self.handle, Handle::Gone) {
            return None;
        }
        self.send(libc::SIGTERM);
        let status = match self.wait_exit(STOP_GRACE) {
            Some(status) => status,
            None => {
                eprintln!(
                    "{} ignored SIGTERM for {STOP_GRACE:?}; killing it",
                    self.label
                );
                self.send(libc::SIGKILL);
                self.wait_exit(STOP_GRACE);
                None
            }
        };
        self.gone();
        status
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill9(&mut self) {
        self.send(libc::SIGKILL);
        self.wait_exit(STOP_GRACE);
        self.gone();
    }

    /// Leaves it running (its PID file stays): for daemons that outlive
    /// this process.
    pub fn detach(mut self) {
        self.handle = Handle::Gone;
        self.pid_file = None;
        self.detached = true;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.stop();
        if thread::panicking() {
            eprintln!(
                "---- log of {} ({}) ----\n{}\n---- end of log ----",
                self.label,
                self.log.display(),
                self.log_tail(300)
            );
        } else if self.remove_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A log file for a daemon without a folder of its own, in the temporary
/// folder (removed with [`Daemon::remove_log_when_done`]).
pub fn temp_log(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{label}.log", crate::unique("d")))
}
