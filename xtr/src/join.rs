//! `xtr join`: enrols this robot with a map-server, from a join bundle or a
//! team key, and writes its complete configuration.
//!
//! The robot's WireGuard key is made here and never leaves it: the Noise
//! handshake of the join (see `conf::join`) proves to the map-server that
//! the robot holds it, and the robot pins the map-server's key from the
//! bundle or key. The key file is written before the request, so a join
//! that is interrupted (or whose answer is lost) is simply run again: the
//! map-server gives the same robot the same answer.

use anyhow::{bail, Context, Result};
use conf::join::{Bundle, JoinAnswer, JoinRequest, Joined, Secret, TeamKey, TokenId};
use serde::Serialize;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Requests sent before giving up, one a second.
const ATTEMPTS: u32 = 5;
const WAIT: Duration = Duration::from_secs(1);

/// What `xtr join` was given.
pub struct JoinArgs {
    pub bundle: Option<PathBuf>,
    pub key: Option<String>,
    pub server: Option<String>,
    pub name: Option<String>,
    pub config: PathBuf,
    pub interface: String,
    pub rloc_interfaces: Vec<String>,
    pub listen_port: u16,
    pub backend: String,
    pub force: bool,
}

struct Target {
    server: SocketAddr,
    server_key: [u8; 32],
    id: TokenId,
    secret: Secret,
    name: Option<String>,
    expires: Option<String>,
}

pub fn join(a: JoinArgs) -> Result<()> {
    if a.config.exists() && !a.force {
        bail!(
            "{} exists: this robot has joined already (--force replaces it)",
            a.config.display()
        );
    }
    let t = target(&a)?;
    let dir = a
        .config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_file = dir.join(format!("{}.key", a.interface));
    let private = robot_key(&key_file)?;
    let raw = conf::join::decode32(&private.to_base64())?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let req = JoinRequest {
        name: a.name.clone().or(t.name.clone()),
        hostname,
    };
    let (mut hs, dgram) = conf::join::request(&raw, &t.server_key, &t.secret, t.id, &req)?;
    let bind: SocketAddr = if t.server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).context("cannot open a UDP socket")?;
    sock.set_read_timeout(Some(WAIT))?;
    let mut buf = vec![0u8; conf::join::MAX_DATAGRAM];
    let mut answer = None;
    for _ in 0..ATTEMPTS {
        sock.send_to(&dgram, t.server)
            .with_context(|| format!("cannot send to {}", t.server))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == t.server => {
                answer = Some(
                    conf::join::read_answer(&mut hs, &buf[..n]).with_context(|| {
                        format!(
                            "{} answered, but not as the map-server whose key the bundle pins",
                            t.server
                        )
                    })?,
                );
                break;
            }
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("receiving the join answer"),
        }
    }
    let Some(answer) = answer else {
        bail!(
            "no answer from {} after {ATTEMPTS} s. A map-server answers nobody without a valid \
             bundle or key: check that it is this map-server's (token {}){}, and that UDP to it \
             gets through",
            t.server,
            t.id,
            t.expires
                .as_deref()
                .map(|e| format!(", still valid (until {e})"))
                .unwrap_or_default()
        );
    };
    let joined = match answer {
        JoinAnswer::Joined(j) => *j,
        JoinAnswer::Refused { reason } => {
            bail!("the map-server refused to enrol this robot: {reason}")
        }
    };
    let rlocs = if a.rloc_interfaces.is_empty() {
        default_route_interfaces()
    } else {
        a.rloc_interfaces.clone()
    };
    if rlocs.is_empty() {
        bail!("no default route here to take the RLOC interface from: give --rloc-interface");
    }
    let site_file = dir.join(format!("{}.site", joined.name));
    write_private(&site_file, format!("{}\n", joined.site_key).as_bytes())?;
    let cfg = config_of(&joined, &a, &key_file, &site_file, &rlocs);
    write_private(&a.config, toml::to_string(&cfg)?.as_bytes())?;
    println!(
        "joined as {} (team {}, EIDs {}, control address {}); wrote {}, {}, {}",
        joined.name,
        joined.team,
        joined.eids.join(", "),
        joined.control_address,
        a.config.display(),
        key_file.display(),
        site_file.display()
    );
    println!("start it: xtr run -c {}", a.config.display());
    Ok(())
}

fn target(a: &JoinArgs) -> Result<Target> {
    // HOST:PORT, or HOST alone (the default join port).
    let resolve = |s: &str| -> Result<SocketAddr> {
        s.to_socket_addrs()
            .or_else(|_| (s, conf::join::DEFAULT_JOIN_PORT).to_socket_addrs())
            .with_context(|| format!("cannot resolve {s}"))?
            .next()
            .with_context(|| format!("{s} has no address"))
    };
    match (&a.bundle, &a.key) {
        (Some(file), None) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the bundle {}", file.display()))?;
            let b: Bundle = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a join bundle", file.display()))?;
            if b.kind != conf::join::BUNDLE_KIND {
                bail!(
                    "{} is not a join bundle (kind {:?})",
                    file.display(),
                    b.kind
                );
            }
            Ok(Target {
                server: resolve(a.server.as_deref().unwrap_or(&b.server))?,
                server_key: conf::join::decode32(&b.server_key)
                    .context("the bundle's server key")?,
                id: b.token.parse()?,
                secret: Secret::from_base64(&b.secret).context("the bundle's secret")?,
                name: Some(b.name),
                expires: b.expires,
            })
        }
        (None, Some(key)) => {
            let k: TeamKey = key.parse()?;
            let Some(server) = &a.server else {
                bail!("a team key needs --server HOST[:PORT] (the map-server's join address)");
            };
            Ok(Target {
                server: resolve(server)?,
                server_key: k.server_key,
                id: k.id,
                secret: k.secret,
                name: None,
                expires: None,
            })
        }
        _ => bail!("give a bundle file or --key KEY (one of them)"),
    }
}

/// The robot's key: made now (0600), or the one an earlier, interrupted
/// join made.
fn robot_key(path: &Path) -> Result<wgctl::keys::PrivateKey> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return wgctl::keys::PrivateKey::from_base64(text.trim())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let key = wgctl::keys::PrivateKey::generate();
    write_private(path, format!("{}\n", key.to_base64().as_str()).as_bytes())?;
    Ok(key)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Interfaces that hold a default route (IPv4 first), from /proc.
fn default_route_interfaces() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    for l in v4.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 2 && f[1] == "00000000" && !out.iter().any(|o| o == f[0]) {
            out.push(f[0].to_string());
        }
    }
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    for l in v6.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 10
            && f[0] == "00000000000000000000000000000000"
            && f[1] == "00"
            && f[9] != "lo"
            && !out.iter().any(|o| o == f[9])
        {
            out.push(f[9].to_string());
        }
    }
    out
}

#[derive(Serialize)]
struct Config {
    mode: &'static str,
    wireguard: Wireguard,
    control: Control,
    map_servers: Vec<MapServer>,
    eids: Vec<Eid>,
    rlocs: Vec<Rloc>,
    overlay: Overlay,
}
#[derive(Serialize)]
struct Wireguard {
    interface: String,
    private_key_file: String,
    listen_port: u16,
    backend: String,
}
#[derive(Serialize)]
struct Control {
    address: String,
}
#[derive(Serialize)]
struct MapServer {
    name: String,
    endpoint: String,
    public_key: String,
    control_address: String,
    site_key_file: String,
}
#[derive(Serialize)]
struct Eid {
    prefix: String,
    iid: u32,
}
#[derive(Serialize)]
struct Rloc {
    interface: String,
    priority: u8,
}
#[derive(Serialize)]
struct Overlay {
    capture: Vec<String>,
}

fn config_of(j: &Joined, a: &JoinArgs, key: &Path, site: &Path, rlocs: &[String]) -> Config {
    Config {
        mode: "mobile-node",
        wireguard: Wireguard {
            interface: a.interface.clone(),
            private_key_file: key.display().to_string(),
            listen_port: a.listen_port,
            backend: a.backend.clone(),
        },
        control: Control {
            address: format!("{}/{}", j.control_address, j.control_prefix_len),
        },
        // Every map-server of the fleet: the robot registers with all and
        // asks all (they share one site key for it).
        map_servers: std::iter::once(&j.map_server)
            .chain(&j.also)
            .map(|m| MapServer {
                name: m.name.clone(),
                endpoint: m.endpoint.clone(),
                public_key: m.public_key.clone(),
                control_address: m.control_address.to_string(),
                site_key_file: site.display().to_string(),
            })
            .collect(),
        eids: j
            .eids
            .iter()
            .map(|e| Eid {
                prefix: e.clone(),
                iid: j.iid,
            })
            .collect(),
        rlocs: rlocs
            .iter()
            .enumerate()
            .map(|(i, r)| Rloc {
                interface: r.clone(),
                priority: (i + 1).min(255) as u8,
            })
            .collect(),
        overlay: Overlay {
            capture: j.overlay.clone(),
        },
    }
}
