//! The daemons run under the settings of their systemd units, as far as they
//! can be reproduced without systemd as PID 1 (this machine is a container):
//!
//! | unit setting | reproduced here by |
//! |---|---|
//! | `User=lispwg`, `AmbientCapabilities=`, `CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW` (and `CAP_NET_BIND_SERVICE` for the agent's DNS listener) | `setpriv`: a uid and gid of no account, those capabilities inherited, ambient and bounding, nothing else |
//! | `NoNewPrivileges=yes`, `SecureBits=noroot-locked` | `setpriv --no-new-privs --securebits +noroot,+noroot_locked` |
//! | `ProtectSystem=strict` | read-only bind mounts of `/usr`, `/etc`, `/var`, `/opt`, `/srv`, `/boot` in a private mount namespace (`/` itself stays as it is) |
//! | `ProtectHome=yes` | empty read-only tmpfs on `/home` and `/root` |
//! | `PrivateTmp=yes` | a fresh tmpfs on `/tmp` |
//! | `RuntimeDirectory=wireguard` | a fresh tmpfs on `/run` holding `/run/wireguard`, owned by the daemon's uid |
//! | `StateDirectory=` | a writable folder outside the read-only trees (the map-server's `state_dir`) |
//! | `Type=notify` | `NOTIFY_SOCKET`: the test's own datagram socket, which must get `READY=1` once the daemon serves |
//! | `ExecReload=` | SIGHUP, which the daemon must survive |
//! | `KillSignal=SIGTERM` | SIGTERM: exit 0, nothing left |
//!
//! Not reproduced: `SystemCallFilter=`, `RestrictAddressFamilies=`,
//! `MemoryDenyWriteExecute=`, `RestrictNamespaces=` and the other seccomp
//! and namespace settings, `DevicePolicy=`, and `ProtectSystem`'s read-only
//! `/`. The device node `/dev/net/tun` is given mode 0666 inside the sandbox,
//! as Debian's udev rules give it; this container has it at 0600.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};
use testbed::{binary, require_root_and_tools, Daemon, Lab, LabSpec};

/// A uid and gid with no account, as the daemons' `lispwg` user would be.
const UID: u32 = 64_987;
/// The map-server's: CAP_NET_ADMIN (12) and CAP_NET_RAW (13).
const MS_CAPS: (&str, &str) = ("net_admin,+net_raw", "0000000000003000");
/// The agent's: those and CAP_NET_BIND_SERVICE (10), for DNS on port 53.
const XTR_CAPS: (&str, &str) = ("net_admin,+net_raw,+net_bind_service", "0000000000003400");

/// The shell script that sets up the sandbox and execs `bin` in it with
/// capabilities `caps` (setpriv's list, after `+`).
fn sandbox_script(lab_dir: &Path, config: &str, notify: &Path, bin: &Path, caps: &str) -> String {
    let lab = lab_dir.display();
    let notify = notify.display();
    let bin = bin.display();
    format!(
        r#"set -eu
# Staging, on a tmpfs of this mount namespace only.
mount -t tmpfs -o mode=0755 lispwg-sandbox /mnt
mkdir /mnt/etc /mnt/state
find {lab} -maxdepth 1 -type f \( -name '*.toml' -o -name '*.key' -o -name '*.site' \) -exec cp -p {{}} /mnt/etc/ \;
# StateDirectory=: the map-server keeps the store its predecessor wrote.
if [ -d {lab}/map-server-state ]; then mount --bind {lab}/map-server-state /mnt/state; fi
chown -R {UID}:{UID} /mnt/etc /mnt/state
touch /mnt/notify && mount --bind {notify} /mnt/notify
mknod -m 0666 /mnt/tun c 10 200
mount --bind /mnt/tun /dev/net/tun
# ProtectSystem=strict (the trees a daemon could write to).
for d in /usr /etc /var /opt /srv /boot; do
    if [ -d "$d" ] && [ ! -L "$d" ]; then
        mount --bind "$d" "$d" && mount -o remount,bind,ro "$d"
    fi
done
# ProtectHome=yes, PrivateTmp=yes, RuntimeDirectory=wireguard.
mount -t tmpfs -o ro,mode=0755 tmpfs /home
mount -t tmpfs -o ro,mode=0700 tmpfs /root
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -m 0750 /run/wireguard && chown {UID}:{UID} /run/wireguard
export NOTIFY_SOCKET=/mnt/notify LISPWG_MS__SERVER__STATE_DIR=/mnt/state
exec setpriv --reuid={UID} --regid={UID} --clear-groups \
    --inh-caps=-all,+{caps} --ambient-caps=-all,+{caps} \
    --bounding-set=-all,+{caps} --no-new-privs \
    --securebits=+noroot,+noroot_locked \
    {bin} run -c /mnt/etc/{config}
"#
    )
}

/// A daemon of the lab started in the sandbox, with its notify socket.
struct Sandboxed {
    daemon: Daemon,
    notify: UnixDatagram,
    /// Its capability set as /proc/PID/status shows it.
    caps: &'static str,
}

fn start_sandboxed(lab: &Lab, daemon: &str, node: &str, bin: &str) -> Sandboxed {
    let path = lab.dir().join(format!("{daemon}.notify"));
    let _ = std::fs::remove_file(&path);
    let notify = UnixDatagram::bind(&path).unwrap();
    // The daemon's uid must be able to send to it.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let config = lab.config_path(daemon);
    let config = config.file_name().unwrap().to_str().unwrap();
    let (caps, caps_hex) = if bin == "xtr" { XTR_CAPS } else { MS_CAPS };
    let script = sandbox_script(lab.dir(), config, &path, &binary(bin), caps);
    let log = lab.dir().join(format!("{daemon}-sandboxed.log"));
    let daemon = lab
        .ns(node)
        .spawn(
            &format!("{daemon} (sandboxed)"),
            "unshare",
            &[
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                &script,
            ],
            &log,
        )
        .unwrap();
    Sandboxed {
        daemon,
        notify,
        caps: caps_hex,
    }
}

impl Sandboxed {
    /// Waits for `READY=1`; panics with the log if it does not come.
    fn wait_ready(&mut self, limit: Duration) -> String {
        self.notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        let mut got = String::new();
        while Instant::now() < deadline {
            if !self.daemon.is_running() {
                panic!("{} exited:\n{}", self.daemon.label(), self.daemon.log());
            }
            if let Ok(n) = self.notify.recv(&mut buf) {
                got += &String::from_utf8_lossy(&buf[..n]);
                got.push('\n');
                if got.lines().any(|l| l == "READY=1") {
                    return got;
                }
            }
        }
        panic!(
            "{}: no READY=1 in {limit:?} (got {got:?}):\n{}",
            self.daemon.label(),
            self.daemon.log()
        );
    }

    /// `field:` of /proc/PID/status.
    fn status(&self, pid: u32, field: &str) -> String {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in {text}"))
            .trim()
            .to_string()
    }

    /// Checks the process runs with exactly the unit's identity and rights.
    fn check_identity(&self, pid: u32, what: &str) {
        let uid = self.status(pid, "Uid");
        assert!(
            uid.split_whitespace().all(|u| u == UID.to_string()),
            "{what}: Uid {uid}"
        );
        for f in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
            assert_eq!(self.status(pid, f), self.caps, "{what}: {f}");
        }
        assert_eq!(self.status(pid, "NoNewPrivs"), "1", "{what}: NoNewPrivs");
    }
}

/// The processes whose parent is `pid` (any of its threads).
fn children(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        kids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    kids
}

#[test]
fn both_daemons_serve_under_their_units_sandbox() {
    require_root_and_tools(&["unshare", "setpriv", "mount", "mknod"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut lab = Lab::for_test(LabSpec::campus().tag("sb").idle("robot-a").idle("edge"));
    // The lab's map-server and robot-b came up as usual; the map-server is
    // replaced by a sandboxed one, robot-a starts sandboxed.
    lab.stop("map-server").unwrap();
    let mut ms = start_sandboxed(&lab, "map-server", "ms", "map-server");
    let note = ms.wait_ready(Duration::from_secs(20));
    assert!(note.contains("STATUS=serving"), "{note}");
    // Ready means serving: the telemetry answers at once.
    assert_eq!(lab.fetch("map-server", "/healthz").unwrap(), "ok\n");
    let mut a = start_sandboxed(&lab, "robot-a", "robot-a", "xtr");
    a.wait_ready(Duration::from_secs(20));
    assert_eq!(lab.fetch("robot-a", "/healthz").unwrap(), "ok\n");

    // The daemons and their wireguard-go run as the unit says.
    for (s, what) in [(&ms, "map-server"), (&a, "robot-a")] {
        let pid = s.daemon.pid();
        s.check_identity(pid, what);
        let kids = children(pid);
        assert!(!kids.is_empty(), "{what} has no wireguard-go");
        for k in kids {
            s.check_identity(k, &format!("{what}'s wireguard-go"));
        }
    }

    // And they work: robot-a registers, resolves robot-b and reaches it.
    let registered = Instant::now() + Duration::from_secs(15);
    while !lab
        .fetch("robot-a", "/status")
        .unwrap()
        .contains("up, registered")
    {
        assert!(
            Instant::now() < registered,
            "robot-a did not register:\n{}",
            a.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.ping_ok("robot-a", "10.0.0.2", 3);
    lab.ping_ok("robot-b", "10.0.0.1", 2);
    // CAP_NET_BIND_SERVICE let the agent bind its DNS listener on port 53.
    let status = lab.fetch("robot-a", "/status").unwrap();
    assert!(
        status.contains("dns: 100.64.0.2:53 for *.lispwg.internal"),
        "{status}\n{}",
        a.daemon.log()
    );

    // ExecReload's SIGHUP is survived; SIGTERM stops cleanly.
    for s in [&ms, &a] {
        // SAFETY: kill(2) on a process this test started.
        assert_eq!(
            unsafe { libc::kill(s.daemon.pid() as i32, libc::SIGHUP) },
            0
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    for d in ["map-server", "robot-a"] {
        assert_eq!(
            lab.fetch(d, "/healthz").unwrap(),
            "ok\n",
            "{d} after SIGHUP"
        );
    }
    for (s, node, ifname) in [
        (&mut a, "robot-a", lab.wg_if("robot-a")),
        (&mut ms, "ms", lab.wg_if("ms")),
    ] {
        let status = s.daemon.stop().expect("stops on SIGTERM");
        let log = s.daemon.log();
        assert!(status.success(), "{}: {status}\n{log}", s.daemon.label());
        assert!(!lab.ns(node).has_link(&ifname), "{ifname} left behind");
        for bad in [
            "Permission denied",
            "Operation not permitted",
            "Read-only file system",
            "restarting",
        ] {
            assert!(!log.contains(bad), "{}: {bad}:\n{log}", s.daemon.label());
        }
        // The map-server reloads on SIGHUP; the agent logs and ignores it.
        let reload = if node == "ms" {
            "configuration reloaded"
        } else {
            "reload not supported yet; ignored"
        };
        assert!(log.contains(reload), "{log}");
    }
}
