//! The benchmark lab: the topology of `scripts/lab.sh` (a campus router
//! joining three underlay subnets, the map-server in the public segment, two
//! robots in different subnets, robot-b with a spare interface on subnet A for
//! handover), built and torn down from Rust so each experiment can shape the
//! map-server's configuration (static mappings, `push_moves`) and restart the
//! daemons by PID.
//!
//! Addresses (documentation ranges, inside the lab's namespaces only):
//!
//! | segment | prefix | members |
//! |---|---|---|
//! | public | 192.0.2.0/24 | router .1, map-server .10 |
//! | subnet A | 198.51.100.0/24 | router .1, robot-a .10, robot-b's eth1 .30 (after a move) |
//! | subnet B | 203.0.113.0/24 | router .1, robot-b .10 |
//! | control tunnel | 100.64.0.0/16 | map-server .1, robot-a .2, robot-b .3 |
//! | overlay | 10.0.0.0/8 | robot-a 10.0.0.1, robot-b 10.0.0.2 |

use crate::sys::{self, secret_file, veth, Daemon, Netns};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the daemons' telemetry listens, inside each namespace.
pub const MS_METRICS: &str = "127.0.0.1:9342";
pub const XTR_METRICS: &str = "127.0.0.1:9343";
/// WireGuard listen port of the robots' agents.
pub const WG_PORT: u16 = 51820;

pub const ROBOT_A_EID: &str = "10.0.0.1";
pub const ROBOT_B_EID: &str = "10.0.0.2";
pub const ROBOT_A_RLOC: &str = "198.51.100.10";
pub const ROBOT_B_RLOC: &str = "203.0.113.10";
pub const ROBOT_B_RLOC_MOVED: &str = "198.51.100.30";

/// The lispwg binaries the bench runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub dir: PathBuf,
    pub xtr: PathBuf,
    pub map_server: PathBuf,
    /// The bench itself (for the reflector subcommand).
    pub bench: PathBuf,
}

impl Bins {
    pub fn in_dir(dir: &Path) -> Result<Bins> {
        let bins = Bins {
            dir: dir.to_path_buf(),
            xtr: dir.join("xtr"),
            map_server: dir.join("map-server"),
            bench: std::env::current_exe().context("the bench's own path")?,
        };
        for b in [&bins.xtr, &bins.map_server] {
            if !b.is_file() {
                bail!(
                    "{} not found; build the binaries first (cargo build --release --bins) \
                     or name their folder with --bin-dir",
                    b.display()
                );
            }
        }
        Ok(bins)
    }

    /// "release" or "debug" (from the folder name), else the folder.
    pub fn profile(&self) -> String {
        match self.dir.file_name().and_then(|n| n.to_str()) {
            Some(n @ ("release" | "debug")) => n.to_string(),
            _ => self.dir.display().to_string(),
        }
    }
}

/// Where mappings of nodes that need not exist point: nothing answers there,
/// which is fine for experiments that time only the control plane.
pub const NOWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 200));

/// The i-th EID of 10.`net`.0.0/16.
pub fn numbered_eid(net: u8, i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, net, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// `n` static mappings for the EIDs of 10.`net`.0.0/16, each with its own
/// fresh WireGuard key, all pointing nowhere.
pub fn unreachable_mappings(net: u8, n: u32) -> Vec<StaticMapping> {
    (0..n)
        .map(|i| StaticMapping {
            prefix: format!("{}/32", numbered_eid(net, i)),
            public_key: random_public_key(),
            rloc: NOWHERE,
            port: 51820,
        })
        .collect()
}

/// A mapping served from the map-server's configuration.
#[derive(Debug, Clone)]
pub struct StaticMapping {
    pub prefix: String,
    pub public_key: String,
    pub rloc: IpAddr,
    pub port: u16,
}

/// What an experiment needs from the lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub push_moves: bool,
    pub static_mappings: Vec<StaticMapping>,
    /// Start robot-b's agent too.
    pub robot_b: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            push_moves: true,
            static_mappings: Vec::new(),
            robot_b: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Robot {
    A,
    B,
}

impl Robot {
    pub fn name(self) -> &'static str {
        match self {
            Robot::A => "robot-a",
            Robot::B => "robot-b",
        }
    }
}

/// Generates a WireGuard key pair: the private key written to `path`
/// (0600), the public key returned in base64.
pub fn keypair(path: &Path) -> Result<String> {
    let key = wgctl::keys::PrivateKey::generate();
    secret_file(path, &format!("{}\n", key.to_base64().as_str()))?;
    Ok(key.public_key().to_string())
}

/// A fresh public key (for mappings of nodes that do not exist).
pub fn random_public_key() -> String {
    wgctl::keys::PrivateKey::generate().public_key().to_string()
}

/// A random site key (HMAC key), as text.
pub fn site_key() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..32)
        .map(|_| {
            let c = rng.gen_range(0..62u8);
            (match c {
                0..=9 => b'0' + c,
                10..=35 => b'a' + c - 10,
                _ => b'A' + c - 36,
            }) as char
        })
        .collect()
}

/// The running lab. Dropping it stops the daemons by PID and deletes the
/// namespaces (robots first, so their agents can still remove what they made).
pub struct Lab {
    pub dir: PathBuf,
    pub prefix: String,
    pub bins: Bins,
    pub opts: LabOptions,
    ms_daemon: Option<Daemon>,
    a_daemon: Option<Daemon>,
    b_daemon: Option<Daemon>,
    // Declared last: dropped after the daemons.
    pub a: Netns,
    pub b: Netns,
    pub ms: Netns,
    pub router: Netns,
    restarts: u32,
}

impl Lab {
    /// Builds the topology, writes keys and configurations into `dir`,
    /// starts the map-server and the robots' agents, and waits until they
    /// have registered.
    pub fn up(bins: &Bins, dir: &Path, opts: LabOptions) -> Result<Lab> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let prefix = sys::unique_prefix();
        let router = Netns::create(&format!("{prefix}-r"))?;
        let ms = Netns::create(&format!("{prefix}-ms"))?;
        let a = Netns::create(&format!("{prefix}-a"))?;
        let b = Netns::create(&format!("{prefix}-b"))?;
        let mut lab = Lab {
            dir: dir.to_path_buf(),
            prefix,
            bins: bins.clone(),
            opts,
            ms_daemon: None,
            a_daemon: None,
            b_daemon: None,
            a,
            b,
            ms,
            router,
            restarts: 0,
        };
        lab.topology()?;
        lab.configs()?;
        lab.start_ms()?;
        lab.start_robot(Robot::A)?;
        if lab.opts.robot_b {
            lab.start_robot(Robot::B)?;
        }
        lab.wait_registered(Robot::A)?;
        if lab.opts.robot_b {
            lab.wait_registered(Robot::B)?;
        }
        Ok(lab)
    }

    fn topology(&self) -> Result<()> {
        let r = &self.router;
        r.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for (br, addr) in [
            ("br-pub", "192.0.2.1/24"),
            ("br-suba", "198.51.100.1/24"),
            ("br-subb", "203.0.113.1/24"),
        ] {
            r.ip(&["link", "add", br, "type", "bridge"])?;
            r.ip(&["link", "set", br, "up"])?;
            r.ip(&["addr", "add", addr, "dev", br])?;
        }
        let attach = |node: &Netns, ifname: &str, br: &str, peer: &str, addr: Option<&str>| {
            veth(node, ifname, r, peer)?;
            r.ip(&["link", "set", peer, "master", br])?;
            if let Some(addr) = addr {
                node.ip(&["addr", "add", addr, "dev", ifname])?;
            }
            anyhow::Ok(())
        };
        attach(&self.ms, "eth0", "br-pub", "rms", Some("192.0.2.10/24"))?;
        attach(&self.a, "eth0", "br-suba", "ra0", Some("198.51.100.10/24"))?;
        attach(&self.b, "eth0", "br-subb", "rb0", Some("203.0.113.10/24"))?;
        // For handover: no address until robot-b moves there.
        attach(&self.b, "eth1", "br-suba", "rb1", None)?;
        self.ms
            .ip(&["route", "add", "default", "via", "192.0.2.1"])?;
        self.a
            .ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        self.b
            .ip(&["route", "add", "default", "via", "203.0.113.1"])?;
        Ok(())
    }

    pub fn wg_if(&self, robot: Robot) -> String {
        match robot {
            Robot::A => format!("{}a", self.prefix),
            Robot::B => format!("{}b", self.prefix),
        }
    }

    pub fn ns(&self, robot: Robot) -> &Netns {
        match robot {
            Robot::A => &self.a,
            Robot::B => &self.b,
        }
    }

    fn configs(&self) -> Result<()> {
        let d = &self.dir;
        let ms_pub = keypair(&d.join("ms.key"))?;
        let a_pub = keypair(&d.join("robot-a.key"))?;
        let b_pub = keypair(&d.join("robot-b.key"))?;
        secret_file(&d.join("robot-a.site"), &format!("{}\n", site_key()))?;
        secret_file(&d.join("robot-b.site"), &format!("{}\n", site_key()))?;
        std::fs::write(d.join("ms.pub"), &ms_pub)?;
        std::fs::write(d.join("robot-a.pub"), &a_pub)?;
        std::fs::write(d.join("robot-b.pub"), &b_pub)?;
        self.write_ms_config()?;
        for (robot, ctl, eid, rlocs) in [
            (Robot::A, "100.64.0.2", ROBOT_A_EID, &["eth0"][..]),
            (Robot::B, "100.64.0.3", ROBOT_B_EID, &["eth0", "eth1"][..]),
        ] {
            let name = robot.name();
            let wg = self.wg_if(robot);
            let mut t = String::new();
            let _ = writeln!(t, "mode = \"mobile-node\"\nmetrics = \"{XTR_METRICS}\"");
            let _ = writeln!(
                t,
                "[wireguard]\ninterface = \"{wg}\"\nprivate_key_file = \"{name}.key\"\n\
                 listen_port = {WG_PORT}\nbackend = \"userspace\""
            );
            let _ = writeln!(t, "[control]\naddress = \"{ctl}/16\"");
            let _ = writeln!(
                t,
                "[[map_servers]]\nname = \"ms\"\nendpoint = \"192.0.2.10:4340\"\n\
                 public_key = \"{ms_pub}\"\ncontrol_address = \"100.64.0.1\"\n\
                 site_key_file = \"{name}.site\""
            );
            let _ = writeln!(t, "[[eids]]\nprefix = \"{eid}/32\"");
            for (i, r) in rlocs.iter().enumerate() {
                let _ = writeln!(t, "[[rlocs]]\ninterface = \"{r}\"\npriority = {}", i + 1);
            }
            let _ = writeln!(
                t,
                "[overlay]\ncapture = [\"10.0.0.0/8\"]\nmiss_interface = \"{wg}m\""
            );
            secret_file(&d.join(format!("{name}.toml")), &t)?;
        }
        Ok(())
    }

    /// (Re)writes the map-server's configuration from the options.
    fn write_ms_config(&self) -> Result<()> {
        let d = &self.dir;
        let read = |f: &str| std::fs::read_to_string(d.join(f));
        let (a_pub, b_pub) = (read("robot-a.pub")?, read("robot-b.pub")?);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "[control]\ninterface = \"{}ms\"\nprivate_key_file = \"ms.key\"\nlisten_port = 4340\n\
             address = \"100.64.0.1/16\"\nbackend = \"userspace\"",
            self.prefix
        );
        let _ = writeln!(
            t,
            "[server]\nstate_dir = \"ms-state\"\nmetrics = \"{MS_METRICS}\"\npush_moves = {}",
            self.opts.push_moves
        );
        for (name, key, ctl, eid) in [
            ("robot-a", &a_pub, "100.64.0.2", ROBOT_A_EID),
            ("robot-b", &b_pub, "100.64.0.3", ROBOT_B_EID),
        ] {
            let _ = writeln!(
                t,
                "[[peers]]\nname = \"{name}\"\npublic_key = \"{key}\"\ncontrol_address = \"{ctl}\"\n\
                 site_key_file = \"{name}.site\"\neids = [{{ prefix = \"{eid}/32\" }}]"
            );
        }
        for m in &self.opts.static_mappings {
            let _ = writeln!(
                t,
                "[[static_mappings]]\nprefix = \"{}\"\npublic_key = \"{}\"\nport = {}\n\
                 rlocs = [{{ address = \"{}\" }}]",
                m.prefix, m.public_key, m.port, m.rloc
            );
        }
        secret_file(&d.join("map-server.toml"), &t)
    }

    fn log_path(&mut self, name: &str) -> PathBuf {
        self.restarts += 1;
        self.dir.join(format!("{name}.{}.log", self.restarts))
    }

    pub fn start_ms(&mut self) -> Result<()> {
        let log = self.log_path("map-server");
        let cfg = self.dir.join("map-server.toml");
        let cfg = cfg.to_str().context("config path")?;
        let mut d = self.ms.spawn(
            "map-server",
            &self.bins.map_server,
            &["run", "-c", cfg],
            &log,
        )?;
        let addr: SocketAddr = MS_METRICS.parse()?;
        let ms = &self.ms;
        sys::wait_for(
            Duration::from_secs(20),
            Duration::from_millis(10),
            "the map-server to start",
            || {
                d.check_running()?;
                Ok(ms.fetch(addr, "/metrics").ok())
            },
        )?;
        self.ms_daemon = Some(d);
        Ok(())
    }

    pub fn stop_ms(&mut self) {
        if let Some(mut d) = self.ms_daemon.take() {
            d.stop();
        }
    }

    /// Restarts the map-server with `push_moves` (its registrations are
    /// restored from its store).
    pub fn restart_ms(&mut self, push_moves: bool) -> Result<()> {
        self.stop_ms();
        self.opts.push_moves = push_moves;
        self.write_ms_config()?;
        self.start_ms()
    }

    pub fn start_robot(&mut self, robot: Robot) -> Result<()> {
        let log = self.log_path(robot.name());
        let cfg = self.dir.join(format!("{}.toml", robot.name()));
        let cfg = cfg.to_str().context("config path")?.to_string();
        let d = self
            .ns(robot)
            .spawn(robot.name(), &self.bins.xtr, &["run", "-c", &cfg], &log)?;
        match robot {
            Robot::A => self.a_daemon = Some(d),
            Robot::B => self.b_daemon = Some(d),
        }
        Ok(())
    }

    /// Stops a robot's agent (SIGTERM: it removes what it made); returns how
    /// long that took.
    pub fn stop_robot(&mut self, robot: Robot) -> Duration {
        let d = match robot {
            Robot::A => self.a_daemon.take(),
            Robot::B => self.b_daemon.take(),
        };
        d.map_or(Duration::ZERO, |mut d| d.stop())
    }

    fn daemon_mut(&mut self, robot: Robot) -> Option<&mut Daemon> {
        match robot {
            Robot::A => self.a_daemon.as_mut(),
            Robot::B => self.b_daemon.as_mut(),
        }
    }

    pub fn robot_pid(&self, robot: Robot) -> Option<u32> {
        match robot {
            Robot::A => self.a_daemon.as_ref().map(Daemon::pid),
            Robot::B => self.b_daemon.as_ref().map(Daemon::pid),
        }
    }

    pub fn ms_pid(&self) -> Option<u32> {
        self.ms_daemon.as_ref().map(Daemon::pid)
    }

    /// Waits until the robot's agent reports its registration confirmed;
    /// returns how long that took.
    pub fn wait_registered(&mut self, robot: Robot) -> Result<Duration> {
        let t0 = Instant::now();
        let addr: SocketAddr = XTR_METRICS.parse()?;
        let ns_name = self.ns(robot).name().to_string();
        let path = format!("/var/run/netns/{ns_name}");
        loop {
            sys::interrupted()?;
            if let Some(d) = self.daemon_mut(robot) {
                d.check_running()?;
            } else {
                bail!("{} is not running", robot.name());
            }
            let status = self.ns(robot).fetch(addr, "/status").unwrap_or_default();
            if status.contains("up, registered") {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let log = self.daemon_mut(robot).map(|d| d.log_tail(20));
                bail!(
                    "{} ({path}) did not register within 20 s; last lines of its log:\n{}",
                    robot.name(),
                    log.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A robot agent's Prometheus page.
    pub fn xtr_metrics(&self, robot: Robot) -> Result<String> {
        self.ns(robot).fetch(XTR_METRICS.parse()?, "/metrics")
    }

    /// Whether a daemon died; an error with its log if so.
    pub fn check_daemons(&mut self) -> Result<()> {
        for d in [
            self.ms_daemon.as_mut(),
            self.a_daemon.as_mut(),
            self.b_daemon.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            d.check_running()?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_robot(Robot::A);
        self.stop_robot(Robot::B);
        self.stop_ms();
    }
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}
