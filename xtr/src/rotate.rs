//! `xtr rotate-key`: moves the running agent to a new WireGuard key.
//!
//! The command makes the key and leaves it beside the current one
//! (`<key file>.next`, 0600), then sends the agent a SIGHUP. The agent asks
//! its map-server over the control tunnel; the map-server pushes the new key
//! to every correspondent and answers once they have it; the agent then
//! switches its interface and replaces the key file. The command waits for
//! that and says how it went.

use anyhow::{bail, Context, Result};
use conf::xtr::XtrConfig;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(12);

pub fn rotate_key(config: &Path) -> Result<()> {
    let cfg = XtrConfig::load(config)?;
    let next = cfg.next_key_file();
    let mut failed = next.clone().into_os_string();
    failed.push(".failed");
    let failed = PathBuf::from(failed);
    if next.exists() {
        bail!(
            "{} exists: a rotation is under way (or an agent that is not running left it; remove it)",
            next.display()
        );
    }
    let _ = std::fs::remove_file(&failed);
    let pid = agent_pid(config)?;
    let key = wgctl::keys::PrivateKey::generate();
    let public = key.public_key().to_base64();
    write_new_private(&next, format!("{}\n", key.to_base64().as_str()).as_bytes())?;
    // SAFETY: kill(2) with a pid read from /proc and SIGHUP; no memory is
    // involved.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_file(&next);
        bail!("cannot signal the agent (pid {pid}): {e}");
    }
    let t0 = Instant::now();
    while t0.elapsed() < WAIT {
        if failed.exists() {
            let _ = std::fs::remove_file(&failed);
            bail!(
                "the rotation was refused or failed; the old key stays (the agent's log says why)"
            );
        }
        if !next.exists() {
            println!(
                "rotated to {public} in {} ms; the map-server and the correspondents have it",
                t0.elapsed().as_millis()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "no outcome after {} s; {} is still there: is the agent (pid {pid}) reaching its map-server?",
        WAIT.as_secs(),
        next.display()
    )
}

/// The pid of the agent running with this configuration (`xtr run -c
/// FILE`), from /proc.
fn agent_pid(config: &Path) -> Result<i32> {
    let want = std::fs::canonicalize(config)
        .with_context(|| format!("cannot resolve {}", config.display()))?;
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("cannot read /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        let is_xtr = args.first().is_some_and(|a| {
            Path::new(std::str::from_utf8(a).unwrap_or("")).file_name() == Some("xtr".as_ref())
        });
        let runs = args.iter().any(|a| *a == b"run");
        let same_config = args.windows(2).any(|w| {
            (w[0] == b"-c" || w[0] == b"--config")
                && std::str::from_utf8(w[1])
                    .ok()
                    .and_then(|p| {
                        // Relative to the agent's working folder.
                        let p = Path::new(p);
                        let base = std::fs::read_link(entry.path().join("cwd")).ok()?;
                        std::fs::canonicalize(base.join(p)).ok()
                    })
                    .is_some_and(|p| p == want)
        });
        if is_xtr && runs && same_config {
            found.push(pid);
        }
    }
    match found[..] {
        [pid] => Ok(pid),
        [] => bail!("no agent runs with {} (xtr run -c {0})", want.display()),
        _ => bail!("several agents run with {}: {found:?}", want.display()),
    }
}

fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
