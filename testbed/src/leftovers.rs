//! What a test must not leave behind: namespaces, interfaces, wireguard-go
//! processes, control sockets.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// wireguard-go's control socket for `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{ifname}.sock"))
}

/// PIDs of the wireguard-go processes serving `ifname`.
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
                && crate::daemon::start_time(*pid).is_some()
        })
        .collect()
}

/// Whether `pid` is a live (not zombie) wireguard-go process.
pub fn is_live_wireguard_go(pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.trim() == "wireguard-go" && crate::daemon::start_time(pid).is_some()
}

/// What is left of `namespaces` and `ifnames`: namespaces that still exist,
/// and for each interface a wireguard-go process, a control socket, or the
/// interface in the root namespace. Waits up to 3 s for what is still
/// going away.
pub fn leftovers(namespaces: &[String], ifnames: &[String]) -> Vec<String> {
    let check = || {
        let mut left = Vec::new();
        for n in namespaces {
            if crate::Netns::exists(n) {
                left.push(format!("namespace {n}"));
            }
        }
        for i in ifnames {
            let pids = wireguard_go_pids(i);
            if !pids.is_empty() {
                left.push(format!("wireguard-go for {i} (PIDs {pids:?})"));
            }
            if socket_path(i).exists() {
                left.push(format!("control socket {}", socket_path(i).display()));
            }
            if Path::new("/sys/class/net").join(i).exists() {
                left.push(format!("interface {i} in the root namespace"));
            }
        }
        left
    };
    let mut left = Vec::new();
    crate::wait_until(Duration::from_secs(3), || {
        left = check();
        left.is_empty()
    });
    left
}

/// Panics, naming them, if [`leftovers`] finds anything.
#[track_caller]
pub fn assert_no_leftovers(namespaces: &[String], ifnames: &[String]) {
    let left = leftovers(namespaces, ifnames);
    assert!(left.is_empty(), "left behind: {}", left.join("; "));
}
