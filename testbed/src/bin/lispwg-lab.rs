//! `lispwg-lab`: the namespace lab from the command line (what
//! `scripts/lab.sh` and the demo run). See `lispwg-lab --help`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use testbed::{Bins, Lab, LabSpec};

/// The lispwg namespace lab: a campus router joining three underlay subnets,
/// the map-server in the public segment, two robots (mobile nodes) in
/// different subnets, and an edge xTR with one host behind it.
///
/// Addresses (documentation ranges, inside the lab only): public segment
/// 192.0.2.0/24 (router .1, map-server .10, map-server2 .11); subnet A
/// 198.51.100.0/24 (router .1, robot-a .10, edge .20, robot-b's second
/// interface .30 after a move); subnet B 203.0.113.0/24 (router .1, robot-b
/// .10); control tunnel 100.64.0.0/16 (map-server .1, robot-a .2, robot-b
/// .3, edge .4, map-server2 .254); overlay robot-a 10.0.0.1, robot-b
/// 10.0.0.2, edge LAN 10.1.0.0/24 (edge .1, host .10).
///
/// Environment: LAB_DIR (state: configurations, keys, logs, PIDs; default
/// /tmp/lispwg-lab), LAB_PREFIX (namespace and interface prefix, default
/// "lwl"), LISPWG_BIN (folder of the xtr and map-server binaries, default
/// this binary's folder), LAB_MAP_SERVERS (1 or 2), LAB_PUSH_MOVES
/// (true/false). Needs root.
#[derive(Parser)]
#[command(name = "lispwg-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the lab from the binaries (nothing is built) and start every
    /// daemon; returns once every agent has registered.
    Up {
        /// One or two map-servers [default: LAB_MAP_SERVERS or 1].
        #[arg(long)]
        map_servers: Option<u8>,
        /// Start the map-servers with push_moves = false [default: from
        /// LAB_PUSH_MOVES].
        #[arg(long)]
        no_push_moves: bool,
        /// Also run coturn (TURN relay) on the map-server's host.
        #[arg(long)]
        coturn: bool,
        /// Put robot-a behind NAT router n1 and robot-b behind n2, of this
        /// kind: eim (endpoint-independent: direct tunnels) or edm
        /// (symmetric: only the relay joins them; implies --coturn).
        #[arg(long, value_name = "KIND", value_parser = ["eim", "edm"])]
        nat: Option<String>,
    },
    /// Stop every daemon the lab started (by PID) and delete its namespaces,
    /// also after a crashed `up`.
    Down,
    /// Run CMD in a node's namespace (router ms ms2 robot-a robot-b edge
    /// host); exits with CMD's status.
    Exec {
        node: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Start a daemon (map-server map-server2 robot-a robot-b edge coturn)
    /// and wait until it is ready.
    Start { daemon: String },
    /// Stop a daemon: SIGTERM, then SIGKILL after 5 s.
    Stop { daemon: String },
    /// kill -9 a daemon.
    Kill9 { daemon: String },
    /// Move a robot to its other uplink in one ip -batch (old address off,
    /// new address on, default route) [default: robot-b].
    Move { node: Option<String> },
    /// Nodes, namespaces and daemons with their PIDs.
    Status,
}

fn dir() -> PathBuf {
    std::env::var_os("LAB_DIR").map_or_else(|| PathBuf::from("/tmp/lispwg-lab"), PathBuf::from)
}

fn bins() -> Result<Bins> {
    let dir = match std::env::var_os("LISPWG_BIN") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()?
            .parent()
            .context("this binary's folder")?
            .to_path_buf(),
    };
    Bins::in_dir(&dir)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// robot-a behind n1 (subnet A), robot-b behind n2 (subnet B).
fn behind_nats(spec: &mut LabSpec, kind: &str) {
    use testbed::{NatKind, Segment};
    let kind = if kind == "edm" {
        NatKind::Edm
    } else {
        NatKind::Eim
    };
    *spec = spec
        .clone()
        .nat("n1", kind, Segment::SubnetA)
        .nat("n2", kind, Segment::SubnetB)
        .behind("robot-a", "n1")
        .behind("robot-b", "n2");
}

fn run(cli: Cli) -> Result<ExitCode> {
    let dir = dir();
    match cli.command {
        Command::Up {
            map_servers,
            no_push_moves,
            coturn,
            nat,
        } => {
            let coturn = coturn || nat.as_deref() == Some("edm");
            let mut tools = testbed::BASE_TOOLS.to_vec();
            if coturn {
                tools.extend_from_slice(testbed::RELAY_TOOLS);
            }
            if nat.is_some() {
                tools.extend_from_slice(testbed::NAT_TOOLS);
            }
            testbed::require_root_and_tools(&tools)?;
            let env = |k: &str| std::env::var(k).ok();
            let map_servers = match map_servers {
                Some(n) => n,
                None => env("LAB_MAP_SERVERS").map_or(Ok(1), |v| v.parse())?,
            };
            let push = !no_push_moves && env("LAB_PUSH_MOVES").is_none_or(|v| v != "false");
            let prefix = env("LAB_PREFIX").unwrap_or_else(|| "lwl".into());
            let mut spec = LabSpec::campus()
                .prefix(&prefix)
                .map_servers(map_servers)
                .push_moves(push);
            if coturn {
                spec = spec.coturn();
            }
            if let Some(kind) = &nat {
                behind_nats(&mut spec, kind);
            }
            let bins = bins()?;
            // Ctrl-C during `up` leaves the state for `down`, and the
            // daemons in their own process groups.
            testbed::install_signal_flag();
            Lab::up(spec, &dir, &bins)?.detach();
            println!("lab: up (state in {})", dir.display());
        }
        Command::Down => {
            Lab::down_dir(&dir)?;
            println!("lab: down");
        }
        Command::Exec { node, cmd } => {
            let lab = Lab::open(&dir, None)?;
            if node != "router" && lab.spec().node(&node).is_none() {
                bail!("the lab has no node {node:?}");
            }
            let status = lab
                .ns(&node)
                .command(&cmd[0])
                .args(&cmd[1..])
                .stdin(std::process::Stdio::inherit())
                .status()
                .with_context(|| format!("cannot run {}", cmd[0]))?;
            return Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ));
        }
        Command::Start { daemon } => {
            let mut lab = Lab::open(&dir, Some(&bins()?))?;
            testbed::install_signal_flag();
            let took = lab.start(&daemon)?;
            lab.detach();
            println!("lab: {daemon} ready after {} ms", took.as_millis());
        }
        Command::Stop { daemon } => {
            let mut lab = Lab::open(&dir, None)?;
            lab.stop(&daemon)?;
        }
        Command::Kill9 { daemon } => {
            let mut lab = Lab::open(&dir, None)?;
            lab.kill9(&daemon)?;
        }
        Command::Move { node } => {
            let mut lab = Lab::open(&dir, None)?;
            let node = node.unwrap_or_else(|| "robot-b".into());
            let took = lab.move_node(&node)?;
            println!(
                "lab: {node} now at {} ({} µs)",
                lab.address(&node),
                took.as_micros()
            );
        }
        Command::Status => {
            let lab = Lab::open(&dir, None)?;
            println!("lab: prefix {}, state in {}", lab.prefix(), dir.display());
            for n in &lab.spec().nodes {
                println!(
                    "  {:<8} namespace {}-{:<8} {}",
                    n.name,
                    lab.prefix(),
                    n.name,
                    lab.spec()
                        .address(&n.name)
                        .map_or(String::new(), |a| a.to_string())
                );
            }
            for (daemon, node) in lab.spec().daemons() {
                match lab.pid(&daemon) {
                    Some(pid) => println!("  {daemon:<12} on {node:<8} PID {pid}"),
                    None => println!("  {daemon:<12} on {node:<8} not running"),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
