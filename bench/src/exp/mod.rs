//! The experiments. Each builds what it needs in namespaces it creates and
//! deletes, runs the real binaries, and returns its result and chart.

pub mod agent;
pub mod cache_add;
pub mod first_packet;
pub mod flood;
pub mod handover;
pub mod ms_scale;
pub mod nat;
pub mod register;
pub mod relay;
pub mod restart;
pub mod scale;
pub mod throughput;

use crate::report::{utc, ExperimentResult, Figure, Machine, Series};
use anyhow::Result;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};
use testbed::config::{
    write_toml, AllowedEid, MapServerConfig, MsLimits, MsPeer, MsServer, StaticMapping, StaticRloc,
};
use testbed::topology::NOWHERE;
use testbed::{Bins, Lab, LabSpec};

/// What an experiment produces: its result and its charts (file name, SVG).
pub type Produced = (ExperimentResult, Vec<(String, String)>);

/// One experiment: its name (the subcommand and the result files), what it
/// measures (the subcommand's help) and how it runs.
pub struct Experiment {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Ctx) -> Result<Produced>,
}

/// Every experiment, in the order `bench all` runs them and SUMMARY.md
/// lists them: the one list the command line, `bench all`, the summary and
/// the quick test go by.
pub const EXPERIMENTS: &[Experiment] = &[
    Experiment {
        name: "throughput",
        about: "TCP and UDP (1380-byte payloads) through an on-demand tunnel with iperf3, beside \
                a hand-configured wireguard-go tunnel between the same namespaces and the plain \
                underlay. Target: ≥ 95 % of the hand-configured tunnel. Full: 4 runs × 10 s per \
                path and protocol.",
        run: throughput::run,
    },
    Experiment {
        name: "cache-add",
        about: "Time from a map-cache miss to the peer being programmed, for 100 fresh EIDs \
                (read from the agent's lispwg_xtr_cache_add_seconds histogram). Thesis: 16.6 ms \
                (OOR+WG), 13.2 ms (OOR). Target: p50 ≤ 2 ms, p99 ≤ 5 ms.",
        run: cache_add::run,
    },
    Experiment {
        name: "first-packet",
        about: "A fresh robot pair (both agents restarted), fast ping (every 2 ms): time from the \
                first request to the first reply and requests lost, 100 repetitions. Thesis: \
                32.6 ms with the first packets dropped. Target: p50 ≤ 5 ms and nothing lost.",
        run: first_packet::run,
    },
    Experiment {
        name: "ms-scale",
        about: "Map-Request → Map-Reply latency (1 outstanding) and throughput (1 to 64 \
                outstanding) at 10, 1 000, 100 000 and 1 000 000 mappings, plus RSS and start-up \
                time, beside two do-nothing UDP reflectors on the same path (one datagram per \
                system call, and batched with recvmmsg/sendmmsg: the floor is the faster); then \
                the same requests through the WireGuard control tunnel. Targets: ≥ 75 % of the \
                floor at 1, 8 and 64 outstanding, 8 outstanding ≥ 0.9 × 64, p50 within 3 µs of \
                the floor's and flat within 10 %, RSS ≤ 256 MiB and start-up ≤ 2 s at 1 000 000.",
        run: ms_scale::run,
    },
    Experiment {
        name: "register",
        about: "Map-Register → Map-Notify rate with HMAC-SHA-256, persisted (durable redb commit \
                before the notify). Target: ≥ 20 000 registrations/s.",
        run: register::run,
    },
    Experiment {
        name: "handover",
        about: "robot-b moves subnet 20 times while robot-a pings every 10 ms; outage per move, \
                with the map-server's push on, then off (WireGuard roaming only), then off with \
                robot-b sending too. Thesis: ≈1 s (OOR+WG), 8–10 s (OOR). Target: p50 < 100 ms, \
                max < 250 ms.",
        run: handover::run,
    },
    Experiment {
        name: "nat",
        about: "Robots behind nftables NAT routers (endpoint-independent mapping with the \
                address-and-port filter of real routers): first reply through two NATs from \
                100 fresh pairs and whether it is direct, handover from one NAT to another (20 \
                moves), recovery after the NAT restarts and remaps (while the robot sends, and \
                idle), and the first reply over IPv6. Targets: p50 ≤ 10 ms, 0 lost, 100 % \
                direct; handover p50 ≤ 100 ms, max ≤ 250 ms; rebinding ≤ 1 s while sending, \
                ≤ 30 s idle.",
        run: nat::run,
    },
    Experiment {
        name: "relay",
        about: "Pairs no direct path joins, through coturn on the map-server's host: first reply \
                from 30 fresh pairs behind two symmetric NATs, iperf3 TCP and UDP and the round \
                trip through the relay beside the direct tunnel through two endpoint-independent \
                NATs, the agents' CPU at 50 Mbit/s, and the move back to direct when the NATs \
                change. Targets: first reply p50 ≤ 1.5 s, 0 lost; relay ≥ 70 % of direct; added \
                round trip ≤ 1 ms; 0 lost moving to direct.",
        run: relay::run,
    },
    Experiment {
        name: "flood",
        about: "One robot floods the map-server through its control tunnel with Map-Requests, \
                then with junk: the other robot's lookups (first-attempt p99 and share \
                answered) beside the same without the flood, the map-server's log growth and its \
                RSS. Targets: p99 ≤ 2 × without, ≥ 99 % answered, log ≤ 1 MB per minute, RSS back \
                within 10 %.",
        run: flood::run,
    },
    Experiment {
        name: "restart",
        about:
            "Served again after a restart: robot-b's agent killed and restarted under robot-a's \
                pings (time from ready to the next reply), and the map-server killed and \
                restarted from its store and from nothing (time from ready to robot-a's next \
                fresh lookup). Targets: node p50 ≤ 1 s, max ≤ 2 s; map-server ≤ 1 s.",
        run: restart::run,
    },
    Experiment {
        name: "scale",
        about: "Fleets of 10, 50 and 100 robots (one wireguard-go each): time until all are \
                registered, a burst in which each robot reaches 5 others at once, and 100 pairs \
                that reach each other at the same moment. Targets: ≥ 99.5 % of burst pairs \
                answered within 2 s at N=50 with 0 control renewals; simultaneous pairs p99 ≤ \
                50 ms, never a 5 s stall.",
        run: scale::run,
    },
    Experiment {
        name: "agent",
        about: "The xtr's RSS and CPU when idle and with 1 000 cached peers. Target: idle CPU ≈ 0 \
                (no busy polling), RSS ≤ 20 MiB.",
        run: agent::run,
    },
];

/// What every experiment gets.
pub struct Ctx {
    pub bins: Bins,
    /// The bench itself (for its reflector subcommand).
    pub bench: PathBuf,
    pub quick: bool,
    /// Scratch space for this run: lab folders, configurations, logs.
    pub work: PathBuf,
    pub machine: Machine,
}

impl Ctx {
    pub fn mode(&self) -> &'static str {
        if self.quick {
            "quick"
        } else {
            "full"
        }
    }

    /// A fresh folder under the scratch space.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.work.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }
}

/// The bench's lab: the campus lab of the tests and the demo without the
/// edge xTR and its host (map-server, robot-a, robot-b with its spare
/// interface on subnet A), its state in `dir`.
pub fn lab(
    ctx: &Ctx,
    dir: &Path,
    static_mappings: Vec<StaticMapping>,
    robot_b: bool,
) -> Result<Lab> {
    let mut spec = LabSpec::campus()
        .tag("b")
        .without("edge")
        .static_mappings(static_mappings);
    if !robot_b {
        spec = spec.idle("robot-b");
    }
    Lab::up(spec, dir, &ctx.bins)
}

/// The i-th EID of 10.`net`.0.0/16.
pub fn numbered_eid(net: u8, i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, net, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// `n` static mappings for the EIDs of 10.`net`.0.0/16, each with its own
/// fresh WireGuard key, all pointing nowhere: for experiments that time
/// only the control plane.
pub fn unreachable_mappings(net: u8, n: u32) -> Vec<StaticMapping> {
    (0..n)
        .map(|i| StaticMapping {
            prefix: format!("{}/32", numbered_eid(net, i)),
            public_key: Some(testbed::random_public_key()),
            port: Some(testbed::topology::WG_PORT),
            rlocs: vec![StaticRloc {
                address: NOWHERE.to_string(),
            }],
        })
        .collect()
}

/// Writes, into `dir`, a map-server configuration without a control tunnel:
/// LISP in the clear on `listen` (as keyless peers and the load generators
/// use it; it answers loopback sources, where the load generators are),
/// telemetry on `metrics`, and one peer `name` at `control` that may
/// register anything in 10.0.0.0/8 with site key `site` (and, if given, WireGuard
/// key `public_key`). Returns its path.
pub fn plain_ms_config(
    dir: &Path,
    listen: &str,
    metrics: &str,
    name: &str,
    control: &str,
    site: &str,
    public_key: Option<String>,
) -> Result<PathBuf> {
    let site_file = format!("{name}.site");
    testbed::secret_file(&dir.join(&site_file), &format!("{site}\n"))?;
    let config = MapServerConfig {
        control: None,
        server: MsServer {
            state_dir: "state".into(),
            metrics: metrics.into(),
            plain_listen: Some(listen.into()),
            plain_allowed: vec!["127.0.0.0/8".into()],
            ..MsServer::default()
        },
        peers: vec![MsPeer {
            name: name.into(),
            public_key,
            control_address: control.into(),
            site_key_file: site_file,
            eids: vec![AllowedEid::within("10.0.0.0/8")],
        }],
        static_mappings: Vec::new(),
        relay: None,
        // One peer generating the whole load, on purpose.
        limits: Some(MsLimits::unlimited()),
    };
    let path = dir.join("map-server.toml");
    write_toml(&path, &config)?;
    Ok(path)
}

/// Prints a progress line.
pub fn progress(exp: &str, msg: impl AsRef<str>) {
    eprintln!("[{exp}] {}", msg.as_ref());
}

/// Start of an experiment, for its result's timing.
pub struct Started {
    wall: SystemTime,
    at: Instant,
}

impl Started {
    pub fn now() -> Started {
        Started {
            wall: SystemTime::now(),
            at: Instant::now(),
        }
    }
}

/// The parts of a result an experiment fills in.
pub struct Outcome {
    pub title: &'static str,
    pub description: String,
    pub parameters: serde_json::Value,
    pub series: Vec<Series>,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
    /// Charts: the first is `<experiment>.svg`, the others
    /// `<experiment>-<suffix>.svg`.
    pub svg: String,
    pub more_svgs: Vec<(&'static str, String)>,
}

impl Ctx {
    pub fn result(&self, experiment: &str, started: Started, o: Outcome) -> Produced {
        let mut svgs = vec![(format!("{experiment}.svg"), o.svg)];
        for (suffix, svg) in o.more_svgs {
            svgs.push((format!("{experiment}-{suffix}.svg"), svg));
        }
        (
            ExperimentResult {
                experiment: experiment.to_string(),
                title: o.title.to_string(),
                description: o.description,
                mode: self.mode().to_string(),
                started_utc: utc(started.wall),
                duration_s: started.at.elapsed().as_secs_f64(),
                machine: self.machine.clone(),
                parameters: o.parameters,
                series: o.series,
                figures: o.figures,
                notes: o.notes,
                plots: svgs.iter().map(|(n, _)| n.clone()).collect(),
            },
            svgs,
        )
    }
}

/// Milliseconds with three decimals.
pub fn ms(v: f64) -> String {
    format!("{v:.3} ms")
}

/// `note` when any of `figures` missed its target.
pub fn if_missed(figures: &[Figure], note: String) -> Option<String> {
    figures
        .iter()
        .any(|f| f.status == crate::report::Status::Missed)
        .then_some(note)
}
