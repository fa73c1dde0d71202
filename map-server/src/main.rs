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
    /// Enrol one robot: write its join bundle.
    ///
    /// Reserves NAME, its EIDs and a control address, and writes a join
    /// bundle (JSON, 0600) to --out: the map-server's join address, its
    /// WireGuard key (the robot pins it) and a single-use secret. Copy it to
    /// the robot and run `xtr join FILE --config /etc/lispwg/xtr.toml` there:
    /// the robot makes its own key, redeems the bundle over the join port
    /// ([join] listen), and the map-server writes the peer into its peers
    /// directory and takes it live. A second redemption fails, naming when
    /// and from where the first happened. Needs [join] in the configuration.
    Enroll(EnrollArgs),
    /// Team keys: reusable join keys for provisioning scripts.
    #[command(subcommand)]
    JoinKey(JoinKeyCommand),
}

#[derive(Args)]
struct EnrollArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The robot's name (letters, digits, -).
    name: String,
    /// An EID prefix it may register (repeat for more), e.g. 10.0.0.7/32.
    #[arg(long = "eid", value_name = "PREFIX", required = true)]
    eids: Vec<String>,
    /// The instance ID of its EIDs.
    #[arg(long, default_value_t = 0)]
    iid: u32,
    /// Its team.
    #[arg(long, default_value = map_server_core::DEFAULT_TEAM)]
    team: String,
    /// How long the bundle can be redeemed (e.g. 30m, 24h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    expires: humantime::Duration,
    /// Where to write the bundle.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum JoinKeyCommand {
    /// Create a team key and print it.
    ///
    /// Each robot that runs `xtr join --key KEY --server HOST[:PORT]` gets
    /// the next free address of --pool as its EID, a control address and a
    /// name (its hostname unless it gives --name), in team --team.
    Create(JoinKeyCreate),
    /// Revoke a team key (or a bundle) by its id: refused from now on.
    Revoke(JoinKeyRevoke),
    /// List the join keys and bundles.
    List(ConfigArg),
}

#[derive(Args)]
struct JoinKeyCreate {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long)]
    team: String,
    /// The EID pool, e.g. 10.0.1.0/24.
    #[arg(long, value_name = "PREFIX")]
    pool: String,
    #[arg(long, default_value_t = 0)]
    iid: u32,
    /// How many robots may join with it.
    #[arg(long, value_name = "N", default_value_t = 100)]
    uses: u32,
    /// How long it works (e.g. 24h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    expires: humantime::Duration,
}

#[derive(Args)]
struct JoinKeyRevoke {
    #[command(flatten)]
    config: ConfigArg,
    /// The key's id (its second field, or `join-key list`).
    id: String,
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
    if !matches!(cli.command, Command::Run(_)) {
        conf::service::restore_default_sigpipe();
    }
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::CheckConfig(a) => check_config(a),
        Command::Status(a) => status(a),
        Command::RelayGrant(a) => relay_grant(a),
        Command::Peers(a) => peers(a),
        Command::Revoke(a) => revoke(a),
        Command::Enroll(a) => enroll(a),
        Command::JoinKey(JoinKeyCommand::Create(a)) => join_key_create(a),
        Command::JoinKey(JoinKeyCommand::Revoke(a)) => join_key_revoke(a),
        Command::JoinKey(JoinKeyCommand::List(a)) => join_key_list(a),
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
            "  {} (team {}) at {} ({}): {}{}{}",
            p.name,
            p.team,
            p.control_address,
            key,
            eids.join(", "),
            p.expires.map_or(String::new(), |e| format!(
                "; until {}",
                humantime::format_rfc3339_seconds(e)
            )),
            p.source
                .as_ref()
                .map_or(String::new(), |f| format!(" [{}]", f.display()))
        );
    }
    for t in &cfg.teams {
        println!(
            "team {} may also resolve: {}",
            t.name,
            t.may_resolve.join(", ")
        );
    }
    match &cfg.join {
        None => println!("enrolment: off (no [join])"),
        Some(j) => println!(
            "enrolment: join requests on UDP {}; robots are given WireGuard endpoint {}{}",
            j.listen,
            j.endpoint,
            if j.also.is_empty() {
                String::new()
            } else {
                format!(
                    " and also {}",
                    j.also
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
    }
    println!("peers directory: {}", cfg.peers_dir.display());
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

/// The configuration of a map-server that enrols: its join section and
/// control tunnel.
fn enrolling(
    path: &std::path::Path,
) -> anyhow::Result<(
    MapServerConfig,
    conf::map_server::JoinConfig,
    conf::map_server::ControlInterface,
)> {
    let cfg = MapServerConfig::load(path)?;
    let (Some(j), Some(c)) = (cfg.join.clone(), cfg.control.clone()) else {
        bail!(
            "{}: no [join] section (or no [control]): this map-server does not enrol robots; \
             add [join] listen = \"<public address>:{}\"",
            cfg.file.display(),
            conf::join::DEFAULT_JOIN_PORT
        );
    };
    Ok((cfg, j, c))
}

fn expiry(d: &humantime::Duration) -> u64 {
    map_server::join::now_unix() + d.as_secs()
}

fn enroll(a: EnrollArgs) -> anyhow::Result<()> {
    use map_server::join::{self, Grant, JoinToken};
    let (cfg, jc, ctl) = enrolling(&a.config.config)?;
    if !join::plain(&a.name) || !join::plain(&a.team) {
        bail!(
            "names and teams are letters, digits, - and _ (at most 63): {:?}, {:?}",
            a.name,
            a.team
        );
    }
    let tokens = join::list_tokens(&cfg.state_dir);
    let taken = cfg.peers.iter().any(|p| p.name == a.name)
        || tokens.iter().any(|t| {
            !t.revoked && matches!(&t.grant, Grant::Robot { name, .. } if *name == a.name)
        });
    if taken {
        bail!(
            "the name {:?} is taken (a peer, or a bundle not yet revoked: `join-key list`)",
            a.name
        );
    }
    let (used_ctl, used_eids) = join::used_addresses(&cfg, &tokens);
    let mut eids = Vec::new();
    for e in &a.eids {
        let p = join::parse_prefix(e, a.iid).map_err(anyhow::Error::msg)?;
        if used_eids.contains(&p.addr()) {
            bail!("the EID {e} is given to another peer or bundle already");
        }
        eids.push(format!("{}/{}", p.addr(), p.prefix_len()));
    }
    let tunnel = join::parse_prefix(&format!("{}/{}", ctl.address, ctl.prefix_len), 0)
        .map_err(anyhow::Error::msg)?;
    let Some(control_address) = join::next_free(&tunnel, &used_ctl) else {
        bail!(
            "no free control address left in {}/{}",
            ctl.address,
            ctl.prefix_len
        );
    };
    let id = conf::join::TokenId::random();
    let secret = join::new_secret();
    let expires = expiry(&a.expires);
    let token = JoinToken {
        id: id.to_string(),
        secret: secret.to_base64(),
        team: a.team.clone(),
        created_unix: join::now_unix(),
        expires_unix: Some(expires),
        max_uses: 1,
        revoked: false,
        grant: Grant::Robot {
            name: a.name.clone(),
            eids: eids.clone(),
            iid: a.iid,
            control_address,
        },
    };
    let bundle = conf::join::Bundle {
        kind: conf::join::BUNDLE_KIND.into(),
        server: jc.listen.to_string(),
        server_key: ctl.private_key.public_key().to_base64(),
        token: id.to_string(),
        secret: secret.to_base64(),
        name: a.name.clone(),
        expires: Some(join::rfc3339(expires)),
    };
    join::write_private(&a.out, serde_json::to_string_pretty(&bundle)?.as_bytes())?;
    join::write_token(&cfg.state_dir, &token)?;
    println!(
        "join bundle for {} ({}, team {}, control address {}) written to {}; single use, until {}",
        a.name,
        eids.join(", "),
        a.team,
        control_address,
        a.out.display(),
        join::rfc3339(expires)
    );
    println!(
        "on the robot: xtr join {} --config /etc/lispwg/xtr.toml",
        a.out.display()
    );
    Ok(())
}

fn join_key_create(a: JoinKeyCreate) -> anyhow::Result<()> {
    use map_server::join::{self, Grant, JoinToken};
    let (cfg, jc, ctl) = enrolling(&a.config.config)?;
    if !join::plain(&a.team) {
        bail!(
            "team names are letters, digits, - and _ (at most 63): {:?}",
            a.team
        );
    }
    let pool = join::parse_prefix(&a.pool, a.iid).map_err(anyhow::Error::msg)?;
    if a.uses == 0 {
        bail!("--uses must be at least 1");
    }
    let id = conf::join::TokenId::random();
    let secret = join::new_secret();
    let expires = expiry(&a.expires);
    let token = JoinToken {
        id: id.to_string(),
        secret: secret.to_base64(),
        team: a.team.clone(),
        created_unix: join::now_unix(),
        expires_unix: Some(expires),
        max_uses: a.uses,
        revoked: false,
        grant: Grant::Pool {
            pool: format!("{}/{}", pool.addr(), pool.prefix_len()),
            iid: a.iid,
        },
    };
    join::write_token(&cfg.state_dir, &token)?;
    let key = conf::join::TeamKey {
        id,
        secret,
        server_key: *ctl.private_key.public_key().as_bytes(),
    };
    eprintln!(
        "team key {id} for team {}: EIDs from {}, {} uses, until {}; robots run:\n  xtr join --key KEY --server {} [--name NAME] --config /etc/lispwg/xtr.toml",
        a.team,
        a.pool,
        a.uses,
        join::rfc3339(expires),
        jc.listen
    );
    println!("{key}");
    Ok(())
}

fn join_key_revoke(a: JoinKeyRevoke) -> anyhow::Result<()> {
    use map_server::join;
    let cfg = MapServerConfig::load(&a.config.config)?;
    let id: conf::join::TokenId = a.id.parse()?;
    let Some(mut token) = join::read_token(&cfg.state_dir, &id).map_err(anyhow::Error::msg)? else {
        bail!("no join key or bundle {id} (see `map-server join-key list`)");
    };
    token.revoked = true;
    join::write_token(&cfg.state_dir, &token)?;
    println!("revoked join token {id}: refused from now on (robots that joined with it stay; `map-server revoke NAME` removes one)");
    Ok(())
}

fn join_key_list(a: ConfigArg) -> anyhow::Result<()> {
    use map_server::join::{self, Grant};
    let cfg = MapServerConfig::load(&a.config)?;
    println!(
        "{:<17} {:<7} {:<12} {:<28} {:>5} {:<21} STATE",
        "ID", "KIND", "TEAM", "GRANTS", "USES", "EXPIRES"
    );
    for t in join::list_tokens(&cfg.state_dir) {
        let (kind, grants) = match &t.grant {
            Grant::Robot { name, eids, .. } => ("bundle", format!("{name} {}", eids.join(","))),
            Grant::Pool { pool, .. } => ("key", format!("pool {pool}")),
        };
        let now = join::now_unix();
        let state = if t.revoked {
            "revoked"
        } else if t.expires_unix.is_some_and(|e| now >= e) {
            "expired"
        } else {
            "valid"
        };
        println!(
            "{:<17} {:<7} {:<12} {:<28} {:>5} {:<21} {state}",
            t.id,
            kind,
            t.team,
            grants,
            t.max_uses,
            t.expires_unix.map_or("never".into(), join::rfc3339)
        );
    }
    Ok(())
}
