//! [`Lab`]: the namespace lab of `scripts/lab.sh` (campus router, map-server,
//! robots, edge xTR, host), brought up under a unique prefix and always torn
//! down, for tests of the real daemons end to end.

use crate::{assert_no_leftovers, binary, require_root_and_tools, target_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A running lab. Dropping it stops every daemon by PID, deletes the
/// namespaces, and (unless the test is already failing) checks that nothing
/// is left behind.
pub struct Lab {
    dir: tempfile::TempDir,
    prefix: String,
    map_servers: u8,
}

/// A command's stdout and stderr, as text.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab.sh")
}

impl Lab {
    /// Brings up a lab with one or two map-servers. Panics (after tearing
    /// down) with the daemons' logs if it does not come up.
    pub fn up(tag: &str, map_servers: u8) -> Lab {
        require_root_and_tools();
        binary("xtr");
        binary("map-server");
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let prefix = format!(
            "lw{}{}{}",
            &tag[..tag.len().min(2)],
            std::process::id() % 1000,
            n
        );
        assert!(
            prefix.len() <= 10,
            "lab prefix {prefix} too long for interface names"
        );
        let lab = Lab {
            dir: crate::tempdir(),
            prefix,
            map_servers,
        };
        let out = lab.sh(&["up"]);
        if !out.status.success() {
            panic!(
                "lab did not come up: {}\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout),
                lab.logs()
            );
        }
        lab
    }

    /// Runs `scripts/lab.sh ARGS` for this lab.
    pub fn sh(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .env("LAB_DIR", self.dir.path())
            .env("LAB_PREFIX", &self.prefix)
            .env("LAB_MAP_SERVERS", self.map_servers.to_string())
            .env("LISPWG_BIN", target_dir().join("debug"))
            .output()
            .expect("run scripts/lab.sh")
    }

    /// Runs `scripts/lab.sh ARGS` and panics with the logs if it fails.
    #[track_caller]
    pub fn must(&self, args: &[&str]) -> String {
        let out = self.sh(args);
        assert!(
            out.status.success(),
            "lab.sh {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command in a node's namespace (router ms ms2 robot-a robot-b
    /// edge host).
    pub fn exec(&self, node: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", node];
        all.extend_from_slice(args);
        self.sh(&all)
    }

    /// Pings `to` from `from` `count` times (0.2 s apart) and panics, with
    /// the daemons' logs, unless every request is answered. Returns ping's
    /// output.
    #[track_caller]
    pub fn ping_ok(&self, from: &str, to: &str, count: u32) -> String {
        let n = count.to_string();
        let t = output_text(&self.exec(from, &["ping", "-c", &n, "-i", "0.2", "-W", "2", to]));
        assert!(
            t.contains(&format!("{count} packets transmitted, {count} received")),
            "{from} -> {to} lost packets:\n{t}\n{}",
            self.logs()
        );
        t
    }

    /// The namespace of a node.
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// The WireGuard interface of a node (`a`, `b`, `e`, `ms`, `ms2`).
    pub fn wg(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A node's WireGuard public key (robot-a, robot-b, edge, ms, ms2).
    pub fn public_key(&self, node: &str) -> String {
        let key =
            std::fs::read_to_string(self.dir.path().join(format!("{node}.key"))).expect("key file");
        let k = wgctl::keys::PrivateKey::from_base64(key.trim()).expect("valid key");
        k.public_key().to_base64()
    }

    /// `wg show IFACE FIELD` in a node's namespace, as (key, value) lines.
    pub fn wg_show(&self, node: &str, iface: &str, field: &str) -> Vec<(String, String)> {
        let out = self.exec(node, &["wg", "show", iface, field]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split_once('\t')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect()
    }

    /// The PID the lab recorded for a daemon.
    pub fn pid(&self, daemon: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join(format!("{daemon}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["map-server", "map-server2", "robot-a", "robot-b", "edge"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))) {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                s += &format!("--- {name}.log (last lines)\n");
                for l in tail.into_iter().rev() {
                    s += l;
                    s.push('\n');
                }
            }
        }
        s
    }

    fn interfaces(&self) -> Vec<String> {
        ["ms", "ms2", "a", "am", "b", "bm", "e", "em"]
            .iter()
            .map(|s| self.wg(s))
            .collect()
    }

    fn namespaces(&self) -> Vec<String> {
        ["router", "ms", "ms2", "robot-a", "robot-b", "edge", "host"]
            .iter()
            .map(|n| self.ns(n))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.sh(&["down"]);
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            return;
        }
        assert!(
            out.status.success(),
            "lab.sh down failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_no_leftovers(&self.namespaces(), &self.interfaces());
    }
}
