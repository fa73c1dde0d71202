//! What the operator commands (`revoke`, `enroll`) do to a running
//! map-server: find it, change its peers directory, and make it reload.

use anyhow::{bail, Context};
use conf::map_server::MapServerConfig;
use std::path::{Path, PathBuf};

/// The running daemon's pid, from its pid file in `server.state_dir`.
pub fn daemon_pid(cfg: &MapServerConfig) -> anyhow::Result<i32> {
    let path = cfg.state_dir.join(crate::shell::PID_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (is the map-server running with this configuration?)",
            path.display()
        )
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", path.display()))?;
    // Signal 0 only checks that the process exists.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
        .with_context(|| format!("no map-server with pid {pid} (from {})", path.display()))?;
    Ok(pid)
}

/// Sends SIGHUP: the daemon reads its configuration and peers again.
pub fn reload(pid: i32) -> anyhow::Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| format!("cannot send SIGHUP to the map-server (pid {pid})"))
}

/// Moves a peer's file out of the peers directory into `revoked/` beside
/// it, with the time in its name: no longer loaded, kept for the record.
pub fn retire_peer_file(cfg: &MapServerConfig, file: &Path) -> anyhow::Result<PathBuf> {
    let dir = cfg.peers_dir.join("revoked");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let Some(name) = file.file_name() else {
        bail!("{} is no file", file.display());
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let to = dir.join(format!("{}.{secs}", name.to_string_lossy()));
    std::fs::rename(file, &to)
        .with_context(|| format!("cannot move {} to {}", file.display(), to.display()))?;
    Ok(to)
}
