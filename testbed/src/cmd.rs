//! Commands, waits, names and the root/tools check.
//!
//! Every loop here is bounded in time, and checks the interrupt flag that
//! [`install_signal_flag`] sets on SIGINT/SIGTERM, so that a program using
//! the testbed (the bench, `lispwg-lab`) still stops its processes and
//! deletes its namespaces when interrupted.

use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static FLAG_INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that [`interrupted`] reports. From
/// then on, daemons are started in their own process group: a Ctrl-C reaches
/// only this process, which stops them in order.
pub fn install_signal_flag() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    FLAG_INSTALLED.store(true, Ordering::SeqCst);
}

/// Whether [`install_signal_flag`] was called.
pub(crate) fn handles_signals() -> bool {
    FLAG_INSTALLED.load(Ordering::SeqCst)
}

/// An error once SIGINT or SIGTERM arrived (after [`install_signal_flag`]).
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
/// The error names `what` and the last error `check` returned.
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

/// Polls `check` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    wait_for(limit, Duration::from_millis(10), "", || {
        Ok(check().then_some(()))
    })
    .is_ok()
}

/// A command's stdout and stderr, as text.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd` with `input` (if any) on its stdin; it must succeed. Returns
/// stdout. Stdin is fed from another thread, so a child that fills its
/// stdout pipe cannot deadlock us.
pub fn run_command(cmd: &mut Command, input: Option<&[u8]>) -> Result<Vec<u8>> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {name}{}", install_hint(&name)))?;
    let out = thread::scope(|s| {
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            s.spawn(move || stdin.write_all(input));
        }
        child.wait_with_output()
    })
    .with_context(|| format!("wait for {name}"))?;
    if !out.status.success() {
        bail!(
            "{name} {} failed ({}): {}",
            args.join(" "),
            out.status,
            output_text(&out).trim()
        );
    }
    Ok(out.stdout)
}

/// Runs `program args…`; it must succeed. Returns stdout as text.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = run_command(Command::new(program).args(args), None)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `program` found on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The Debian package that provides `tool`, for error messages.
pub fn package_of(tool: &str) -> &str {
    match tool {
        "ip" => "iproute2",
        "ping" => "iputils-ping",
        "wg" => "wireguard-tools",
        "text2pcap" => "tshark",
        "nft" => "nftables",
        "turnserver" | "turnutils_uclient" => "coturn",
        "od" | "timeout" => "coreutils",
        "taskset" => "util-linux",
        other => other,
    }
}

fn install_hint(program: &str) -> String {
    if program.contains('/') {
        return String::new();
    }
    format!(
        " (is it installed? apt-get install {}, or run scripts/test.sh)",
        package_of(program)
    )
}

/// Tools every namespace test drives.
pub const BASE_TOOLS: &[&str] = &["ip", "ping", "wireguard-go", "wg"];
/// Tools of captures and of the tshark decode pipeline.
pub const CAPTURE_TOOLS: &[&str] = &["tcpdump", "tshark", "text2pcap", "od"];
/// Tools of the NAT routers.
pub const NAT_TOOLS: &[&str] = &["nft", "conntrack"];
/// Tools of the TURN relay.
pub const RELAY_TOOLS: &[&str] = &["turnserver", "turnutils_uclient", "openssl"];

/// Fails (never skips) unless this runs as root, with /dev/net/tun and every
/// tool of `tools` on PATH; the error names the missing ones and their
/// Debian packages.
pub fn require_root_and_tools(tools: &[&str]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "this must run as root: it creates network namespaces, veth pairs, TUN and \
             WireGuard interfaces (use scripts/test.sh, or sudo)"
        );
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if !missing.is_empty() {
        let mut packages: Vec<&str> = missing.iter().map(|t| package_of(t)).collect();
        packages.dedup();
        bail!(
            "missing tools: {} (install them with scripts/test.sh, or apt-get install {})",
            missing.join(", "),
            packages.join(" ")
        );
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: wireguard-go and the miss TUN need TUN support");
    }
    Ok(())
}

/// An interface name the kernel accepts, by wgctl's rules (which the agents
/// apply to their own names).
pub fn check_ifname(name: &str) -> Result<()> {
    wgctl::validate_ifname(name).map_err(|e| anyhow!("{e}"))
}

/// A name unique to this process and call: `lw` + tag + pid % 10000 + a
/// counter. It is a valid interface name (at most 15 characters), so
/// parallel tests and test binaries never collide: wireguard-go's sockets in
/// /var/run/wireguard are shared by all namespaces. Panics on a tag so long
/// that the name would not be one.
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("lw{tag}{}{n}", std::process::id() % 10_000);
    if let Err(e) = check_ifname(&name) {
        panic!("unique({tag:?}): {e}; use a shorter tag");
    }
    name
}
