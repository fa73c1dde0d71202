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
            rt.block_on(async {
                conf::service::ignore_sighup().context("installing the SIGHUP handler")?;
                Ok(xtr::shell::run(cfg).await?)
            })
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
