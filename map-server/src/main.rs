//! `map-server`: the lispwg map-server daemon and its operator commands.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use conf::map_server::MapServerConfig;
use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_CONFIG: &str = "/etc/lispwg/map-server.toml";

/// The lispwg map-server: the database of EID-to-WireGuard mappings.
///
/// Nodes (robots, edge routers) register their EIDs, RLOCs, WireGuard keys
/// and ports over a manually keyed WireGuard control tunnel; the map-server
/// answers their Map-Requests and tells each side about the other, so that
/// WireGuard tunnels between nodes are set up on demand.
#[derive(Parser)]
#[command(name = "map-server", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the map-server until SIGINT or SIGTERM.
    ///
    /// Brings up the WireGuard control interface of [control] (with one peer
    /// per keyed control peer), listens for LISP control messages on the
    /// control address only (never on the underlay), restores the saved
    /// registrations from server.state_dir, and serves /metrics and /status
    /// on server.metrics. On SIGINT or SIGTERM it removes the interface it
    /// created. Logging goes to stderr; set RUST_LOG (e.g. `debug`,
    /// `map_server=debug`) for more or less.
    Run(ConfigArg),
    /// Check a configuration file and print what it sets up.
    ///
    /// Loads the file as `run` would (key files and their permissions
    /// included) and prints a summary: the control interface, the peers and
    /// the EIDs each may register, and the static mappings. Exits with 1 and
    /// an error naming the file, the field and the problem if anything is
    /// wrong.
    CheckConfig(ConfigArg),
    /// Show the registrations of the running map-server.
    ///
    /// Fetches /status from the telemetry address in server.metrics: each
    /// registered EID with its RLOC and port, the peer that registered it, the
    /// time since its last registration and the time until it expires.
    /// With --json, the same data as a JSON document (docs/status-json.md).
    Status(StatusArgs),
    /// Print a node's relay grant (JSON), for its relay.grant_file.
    ///
    /// Nodes fetch their relay credentials from the map-server over the
    /// control tunnel. A node that must reach the relay before it can reach
    /// the map-server (its network lets only TCP out, and it has never run
    /// there) needs them beforehand: install this output as its
    /// relay.grant_file, mode 0600. The credentials work for new allocations
    /// until they expire (--ttl-secs, default relay.credential_ttl_secs).
    RelayGrant(RelayGrantArgs),
    /// List the configured peers of the running map-server.
    ///
    /// For each peer: name, team, WireGuard key, the EIDs it may register,
    /// whether it has a live registration, since when (last seen), where the
    /// map-server's WireGuard sees it, and when its enrolment ends. Fetched
    /// from the telemetry address in server.metrics, as `status` is.
    Peers(StatusArgs),
    /// Revoke a peer at once: its file leaves the peers directory and the
    /// running map-server reloads.
    ///
    /// The peer's file is moved to <peers_dir>/revoked/ (kept for the
    /// record, no longer loaded) and the daemon (its pid is in
    /// server.state_dir) gets a SIGHUP: its control peer goes, its
    /// registrations are withdrawn and every node that had a tunnel to it is
    /// told to remove it, within a second. Peers written inline in the main
    /// file ([[peers]]) are removed there by hand, then `systemctl reload`.
    Revoke(RevokeArgs),
}

#[derive(Args)]
struct RevokeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The peer's name.
    name: String,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print the status as JSON (the schema is in docs/status-json.md).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RelayGrantArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The peer (its name in the configuration) the grant is for.
    #[arg(long, value_name = "NAME")]
    peer: String,
    /// How long the credentials work, in seconds.
    #[arg(long, value_name = "SECONDS")]
    ttl_secs: Option<u64>,
}

#[derive(Args)]
struct ConfigArg {
    /// The configuration file (TOML). Variables named
    /// LISPWG_MS__<SECTION>__<FIELD> override its settings.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::CheckConfig(a) => check_config(a),
        Command::Status(a) => status(a),
        Command::RelayGrant(a) => relay_grant(a),
        Command::Peers(a) => peers(a),
        Command::Revoke(a) => revoke(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: ConfigArg) -> anyhow::Result<()> {
    conf::telemetry::init_logging();
    let cfg = MapServerConfig::load(&a.config)?;
    // One event loop: a single-threaded runtime is all it needs (blocking
    // WireGuard calls go to tokio's blocking pool).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    // The shell takes SIGHUP itself: it reloads the configuration.
    runtime.block_on(async { anyhow::Ok(map_server::shell::run(cfg).await?) })?;
    Ok(())
}

fn relay_grant(a: RelayGrantArgs) -> anyhow::Result<()> {
    let cfg = MapServerConfig::load(&a.config.config)?;
    let Some(relay) = &cfg.relay else {
        bail!(
            "{}: no [relay] section: this map-server hands out no relay",
            cfg.file.display()
        );
    };
    let Some(peer) = cfg.peers.iter().find(|p| p.name == a.peer) else {
        let names: Vec<&str> = cfg.peers.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "no peer {:?} in {} (peers: {})",
            a.peer,
            cfg.file.display(),
            names.join(", ")
        );
    };
    let ttl = a
        .ttl_secs
        .map_or(relay.credential_ttl, std::time::Duration::from_secs);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let grant = relay::Grant::issue(
        relay.secret.as_bytes(),
        &peer.name,
        now,
        ttl,
        relay.servers.clone(),
    )?;
    println!("{}", serde_json::to_string_pretty(&grant)?);
    Ok(())
}

fn check_config(a: ConfigArg) -> anyhow::Result<()> {
    let cfg = MapServerConfig::load(&a.config)?;
    map_server::shell::policy_from_config(&cfg)?;
    println!("{}: OK", cfg.file.display());
    match &cfg.control {
        Some(c) => println!(
            "control tunnel: interface {}, address {}/{}, WireGuard port {}, backend {}, public key {}",
            c.interface,
            c.address,
            c.prefix_len,
            c.listen_port,
            c.backend,
            c.private_key.public_key()
        ),
        None => println!("control tunnel: none (plain listener only)"),
    }
    let or_off = |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
    println!("plain listener: {}", or_off(cfg.plain_listen));
    if cfg.plain_listen.is_some() {
        let allowed: Vec<String> = cfg.plain_allowed.iter().map(|p| p.to_string()).collect();
        println!(
            "plain listener answers: the keyless peers{}",
            if allowed.is_empty() {
                " only".to_string()
            } else {
                format!(" and {}", allowed.join(", "))
            }
        );
    }
    println!("metrics and status: {}", or_off(cfg.metrics));
    println!("state: {}", cfg.state_dir.display());
    println!(
        "registration lifetime: {} s; negative TTL: {} min",
        cfg.registration_lifetime.as_secs(),
        cfg.negative_ttl_minutes
    );
    match &cfg.relay {
        None => println!("relay: none"),
        Some(r) => {
            for s in &r.servers {
                let ways: Vec<String> = s
                    .endpoints()
                    .iter()
                    .map(|(t, a)| format!("{t} {a}"))
                    .collect();
                println!(
                    "relay: {}; credentials for {} s",
                    ways.join(", "),
                    r.credential_ttl.as_secs()
                );
            }
        }
    }
    println!("peers ({}):", cfg.peers.len());
    for p in &cfg.peers {
        let eids: Vec<String> = p
            .eids
            .iter()
            .map(|e| {
                format!(
                    "{}{}",
                    e.prefix,
                    if e.more_specifics {
                        " (and more-specifics)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        let key = p
            .public_key
            .map_or("keyless, plain listener".to_string(), |k| {
                format!("key {k}")
            });
        println!(
            "  {} at {} ({}): {}",
            p.name,
            p.control_address,
            key,
            eids.join(", ")
        );
    }
    println!("static mappings ({}):", cfg.static_mappings.len());
    for s in &cfg.static_mappings {
        let rlocs: Vec<String> = s
            .rlocs
            .iter()
            .map(|r| {
                format!(
                    "{} (priority {}, weight {})",
                    r.address, r.priority, r.weight
                )
            })
            .collect();
        println!(
            "  {} -> {}{}{}, TTL {} min",
            s.prefix,
            rlocs.join(", "),
            s.port.map_or(String::new(), |p| format!(" port {p}")),
            s.public_key.map_or(String::new(), |k| format!(" key {k}")),
            s.ttl_minutes
        );
    }
    for var in &cfg.ignored_env {
        println!("note: environment variable {var} matches no setting and is ignored");
    }
    Ok(())
}

fn status(a: StatusArgs) -> anyhow::Result<()> {
    let cfg = MapServerConfig::load(&a.config.config)?;
    let Some(addr) = cfg.metrics else {
        bail!(
            "{}: server.metrics is \"\" (disabled), so the map-server serves no status; \
             set it (e.g. metrics = \"127.0.0.1:9342\", the default) and restart the map-server",
            cfg.file.display()
        );
    };
    let path = if a.json {
        "/status?format=json"
    } else {
        "/status"
    };
    let body = conf::telemetry::fetch(addr, path)
        .with_context(|| format!("cannot get the status of the map-server at {addr}"))?;
    print!("{body}");
    Ok(())
}

/// The running map-server's status document.
fn fetch_status(cfg: &MapServerConfig) -> anyhow::Result<serde_json::Value> {
    let Some(addr) = cfg.metrics else {
        bail!(
            "{}: server.metrics is \"\" (disabled), so the map-server serves no status; \
             set it (e.g. metrics = \"127.0.0.1:9342\", the default) and restart the map-server",
            cfg.file.display()
        );
    };
    let body = conf::telemetry::fetch(addr, "/status?format=json")
        .with_context(|| format!("cannot get the status of the map-server at {addr}"))?;
    serde_json::from_str(&body).context("the map-server's status is not JSON")
}

fn peers(a: StatusArgs) -> anyhow::Result<()> {
    let cfg = MapServerConfig::load(&a.config.config)?;
    let doc = fetch_status(&cfg)?;
    let peers = doc.get("peers").cloned().unwrap_or_default();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    let rows: Vec<map_server::status::PeerRow> = peers
        .as_array()
        .into_iter()
        .flatten()
        .map(peer_row)
        .collect();
    print!("{}", map_server::status::Snapshot::render_peers(&rows));
    Ok(())
}

/// A row of the JSON peer list, back into the text view's type.
fn peer_row(v: &serde_json::Value) -> map_server::status::PeerRow {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let secs = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .map(std::time::Duration::from_secs_f64)
    };
    map_server::status::PeerRow {
        name: s("name"),
        team: s("team"),
        key: v.get("key").and_then(|x| x.as_str()).map(str::to_string),
        control_address: s("control_address"),
        eids: v
            .get("eids")
            .and_then(|x| x.as_array())
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect(),
        state: if s("state") == "registered" {
            "registered"
        } else {
            "silent"
        },
        last_seen: secs("last_seen_secs"),
        observed_endpoint: v
            .get("observed_endpoint")
            .and_then(|x| x.as_str())
            .and_then(|x| x.parse().ok()),
        expires_in: secs("expires_in_secs"),
    }
}

fn revoke(a: RevokeArgs) -> anyhow::Result<()> {
    let cfg = MapServerConfig::load(&a.config.config)?;
    let Some(peer) = cfg.peers.iter().find(|p| p.name == a.name) else {
        bail!(
            "no peer {:?} in {} or {}",
            a.name,
            cfg.file.display(),
            cfg.peers_dir.display()
        );
    };
    let Some(source) = &peer.source else {
        bail!(
            "peer {:?} is a [[peers]] entry of {}: remove it there, then reload (systemctl reload lispwg-map-server)",
            a.name,
            cfg.file.display()
        );
    };
    let pid = map_server::admin::daemon_pid(&cfg)?;
    map_server::admin::retire_peer_file(&cfg, source)?;
    map_server::admin::reload(pid)?;
    let started = std::time::Instant::now();
    // The daemon reloads within milliseconds; its status says when.
    let deadline = started + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(doc) = fetch_status(&cfg) {
            let listed = doc
                .get("peers")
                .and_then(|p| p.as_array())
                .is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p.get("name").and_then(|n| n.as_str()) == Some(&a.name))
                });
            if !listed {
                println!(
                    "revoked {}: its control peer and registrations are gone, correspondents told ({} ms)",
                    a.name,
                    started.elapsed().as_millis()
                );
                return Ok(());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!(
        "moved {} away and sent SIGHUP to pid {pid}, but the map-server still lists {:?} after 5 s; see its log",
        source.display(),
        a.name
    )
}
