//! `xtr`: the lispwg agent for robots (mobile-node mode) and edge routers
//! (xTR mode).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use conf::xtr::XtrConfig;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_CONFIG: &str = "/etc/lispwg/xtr.toml";

/// On-demand WireGuard tunnels from LISP mappings.
///
/// The agent registers this node's EIDs with the map-servers over a manually
/// keyed WireGuard control tunnel. A packet to an overlay address with no
/// tunnel yet is held, resolved with a Map-Request, and delivered through a
/// WireGuard peer programmed on the spot. Needs root (WireGuard, TUN, routes).
#[derive(Parser)]
#[command(name = "xtr", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGINT or SIGTERM; on exit it removes every
    /// interface, route and address it made.
    Run {
        /// Configuration file (TOML; see `conf` docs). Overrides from
        /// LISPWG_XTR__SECTION__FIELD environment variables.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the running agent's map-cache, peers, handshakes and traffic.
    Status {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print the status as JSON (the schema is in docs/status-json.md).
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration file without starting anything.
    CheckConfig {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print a new WireGuard private key (base64, as `wg genkey`), or write
    /// it to a file created with mode 0600.
    Genkey {
        /// Write the key here instead of standard output; refuses to
        /// overwrite.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Read a private key on standard input and print its public key (as
    /// `wg pubkey`).
    Pubkey,
    /// Move the running agent to a new WireGuard key, with no outage.
    ///
    /// Makes the key, leaves it beside the current one (<key>.next, 0600)
    /// and signals the agent running with --config. The agent asks its
    /// map-server over the control tunnel; the map-server pushes the new key
    /// to every correspondent and answers once they have it; then the agent
    /// switches and replaces the key file. Waits for the outcome. The peer
    /// must come from the map-server's peers directory (enrolled, or a file
    /// there).
    RotateKey {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Enrol this robot with a map-server and write its configuration.
    ///
    /// From a join bundle (`map-server enroll` writes one; single use) or a
    /// team key (`map-server join-key create`; --server HOST[:PORT] needed).
    /// Makes the robot's WireGuard key here (it never leaves the robot),
    /// redeems the bundle or key with the map-server whose key it pins, and
    /// writes --config, the key (<interface>.key) and the site key
    /// (<name>.site) beside it, 0600. Then `xtr run -c CONFIG` works. An
    /// expired, used-up or revoked bundle is refused with the reason; a
    /// wrong one gets no answer at all.
    Join {
        /// The join bundle file.
        #[arg(value_name = "BUNDLE", conflicts_with = "key")]
        bundle: Option<PathBuf>,
        /// A team key (lwk1.…) instead of a bundle.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// The map-server's join address, HOST[:PORT] (default port 4344);
        /// a bundle names it already.
        #[arg(long, value_name = "HOST[:PORT]")]
        server: Option<String>,
        /// The name to ask for (team keys; the default is the hostname).
        #[arg(long)]
        name: Option<String>,
        /// The configuration file to write.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The WireGuard interface the agent will make (at most 15 chars).
        #[arg(long, default_value = "lispwg0")]
        interface: String,
        /// Underlay interfaces, best first (repeat); default: those with a
        /// default route.
        #[arg(long = "rloc-interface", value_name = "IFNAME")]
        rloc_interfaces: Vec<String>,
        /// The WireGuard listen port.
        #[arg(long, default_value_t = 51820)]
        listen_port: u16,
        /// WireGuard backend: auto, kernel or userspace.
        #[arg(long, default_value = "auto")]
        backend: String,
        /// Replace an existing configuration.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        conf::service::restore_default_sigpipe();
    }
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtr: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { config } => {
            conf::telemetry::init_logging();
            let cfg = XtrConfig::load(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async { Ok(xtr::shell::run(cfg).await?) })
        }
        Command::Status { config, json } => {
            let cfg = XtrConfig::load(&config)?;
            let addr = cfg.metrics.context(
                "metrics are disabled in the configuration, so there is no status endpoint",
            )?;
            let path = if json {
                "/status?format=json"
            } else {
                "/status"
            };
            print!("{}", conf::telemetry::fetch(addr, path)?);
            Ok(())
        }
        Command::CheckConfig { config } => {
            let cfg = XtrConfig::load(&config)?;
            println!("{}: ok", cfg.file.display());
            println!(
                "  mode: {:?}, interface {} port {}, miss TUN {}",
                cfg.mode, cfg.wireguard.interface, cfg.wireguard.listen_port, cfg.miss_interface
            );
            println!("  public key: {}", cfg.wireguard.private_key.public_key());
            println!(
                "  eids: {}",
                cfg.eids
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for m in &cfg.map_servers {
                println!(
                    "  map-server {}: {} (control {})",
                    m.name, m.endpoint, m.control_address
                );
            }
            Ok(())
        }
        Command::Genkey { out } => {
            let key = wgctl::keys::PrivateKey::generate();
            match out {
                None => println!("{}", key.to_base64().as_str()),
                Some(path) => {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    writeln!(f, "{}", key.to_base64().as_str())?;
                }
            }
            Ok(())
        }
        Command::Join {
            bundle,
            key,
            server,
            name,
            config,
            interface,
            rloc_interfaces,
            listen_port,
            backend,
            force,
        } => xtr::join::join(xtr::join::JoinArgs {
            bundle,
            key,
            server,
            name,
            config,
            interface,
            rloc_interfaces,
            listen_port,
            backend,
            force,
        }),
        Command::RotateKey { config } => xtr::rotate::rotate_key(&config),
        Command::Pubkey => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            let key = wgctl::keys::PrivateKey::from_base64(text.trim())
                .context("standard input is not a WireGuard private key")?;
            println!("{}", key.public_key());
            Ok(())
        }
    }
}
