//! # testbed: lispwg's namespace harness and lab
//!
//! One harness for the integration tests (`tests/`), the bench, wgctl's and
//! lisp-wire's tests, and the demo:
//!
//! * [`Netns`] (unique names, deleted on drop), [`veth`] and [`link`],
//!   [`Netns::run`] and [`NsRuntime`] for code that must run inside one.
//! * [`Daemon`]: a process stopped by its PID, its log kept and printed when
//!   a test fails.
//! * [`Lab`] and [`LabSpec`]: the one lab topology (campus router, map-servers,
//!   robots, edge xTR and host), NAT routers ([`nat`]) and coturn ([`turn`])
//!   in the same builder; `lispwg-lab` is its command line.
//! * [`config`]: the daemons' TOML files; [`files`]: keys (0600), binaries.
//! * [`tshark`] (the one decode pipeline) and [`Capture`] (tcpdump).
//! * [`leftovers`]: no namespace, interface, wireguard-go or socket left.
//! * [`http`]: `/metrics` and `/status`, and metric parsing.
//!
//! A test declares its lab, builds it (failing, never skipping, without root
//! or the tools) and gets it torn down, with the daemons' logs printed if it
//! fails:
//!
//! ```no_run
//! use testbed::{Lab, LabSpec, NatKind, Segment};
//!
//! // robot-a behind an EIM NAT, robot-b behind an EDM NAT, coturn on the
//! // map-server's host; the rest of the campus lab as the demo has it.
//! let lab = Lab::for_test(
//!     LabSpec::campus()
//!         .nat("n1", NatKind::Eim, Segment::SubnetA)
//!         .behind("robot-a", "n1")
//!         .nat("n2", NatKind::Edm, Segment::SubnetB)
//!         .behind("robot-b", "n2")
//!         .coturn(),
//! );
//! lab.ping_ok("robot-a", "10.1.0.10", 3);
//! let mappings = lab.nat("n1").unwrap().mappings().unwrap();
//! let (user, password) = lab.turn_credentials("robot-a", std::time::Duration::from_secs(600)).unwrap();
//! ```
//!
//! It depends on wgctl (interface-name rules, keys) but not on lisp-wire or
//! conf, so that lisp-wire's and wgctl's tests can use it. Errors are
//! `anyhow`; helpers meant only for test assertions panic with the reason.
//! Tools it needs and does not find make it fail, naming the Debian package
//! ([`require_root_and_tools`]): it never skips.
//!
//! Address plan: underlays 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24
//! and 2001:db8::/32; control tunnel 100.64.0.0/16; overlays and NAT LANs
//! 10.x; all only inside the namespaces it creates (see [`topology`]).

pub mod capture;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod files;
pub mod http;
pub mod lab;
pub mod leftovers;
pub mod nat;
pub mod netns;
pub mod topology;
pub mod tshark;
pub mod turn;
pub mod wg;

pub use capture::Capture;
pub use cmd::{
    check_ifname, install_signal_flag, interrupted, output_text, require_root_and_tools, run,
    sleep, unique, wait_for, wait_until, which, BASE_TOOLS, CAPTURE_TOOLS, NAT_TOOLS, RELAY_TOOLS,
};
pub use daemon::Daemon;
pub use files::{binary, keypair, random_public_key, secret_file, tempdir, Bins};
pub use http::metric;
pub use lab::Lab;
pub use leftovers::{assert_no_leftovers, wireguard_go_pids};
pub use nat::{NatKind, NatRouter, NatRules};
pub use netns::{link, veth, Netns, NetnsResolvConf, NsRuntime};
pub use topology::{Attach, Family, LabSpec, Segment};
pub use wg::WgNode;
