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
    if !matches!(cli.command, Command::Run(_)) {
        conf::service::restore_default_sigpipe();
    }
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::CheckConfig(a) => check_config(a),
        Command::Status(a) => status(a),
        Command::RelayGrant(a) => relay_grant(a),
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
    runtime.block_on(async {
        conf::service::ignore_sighup().context("cannot install the SIGHUP handler")?;
        anyhow::Ok(map_server::shell::run(cfg).await?)
    })?;
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
