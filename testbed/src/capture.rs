//! [`Capture`]: tcpdump inside a namespace, writing a pcap file that tshark
//! then decodes (through [`crate::tshark::decode_pcap`]).

use crate::daemon::Daemon;
use crate::netns::Netns;
use crate::tshark::{decode_pcap, Frame};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Capture {
    daemon: Daemon,
    pcap: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -U -n -i <iface> -w <pcap> <filter…>` in `ns` and
    /// waits until it listens. `iface` may be `any`.
    pub fn start(ns: &Netns, iface: &str, filter: &[&str], pcap: &Path) -> Result<Capture> {
        let pcap_s = pcap.to_string_lossy();
        // Immediate mode: packets reach the file as they come, not when a
        // kernel buffer block fills (stopping would drop a partial one).
        let mut args = vec!["-U", "--immediate-mode", "-n", "-i", iface, "-w", &pcap_s];
        args.extend_from_slice(filter);
        let log = pcap.with_extension("log");
        let mut daemon = ns.spawn("tcpdump", "tcpdump", &args, &log)?;
        if !daemon.wait_for_log("listening on", Duration::from_secs(5)) {
            bail!("tcpdump did not start in {}: {}", ns.name(), daemon.log());
        }
        Ok(Capture {
            daemon,
            pcap: pcap.to_path_buf(),
        })
    }

    /// Stops tcpdump (it flushes the file on SIGTERM).
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    pub fn path(&self) -> &Path {
        &self.pcap
    }

    /// The raw capture file, stopping tcpdump first.
    pub fn bytes(&mut self) -> Vec<u8> {
        self.stop();
        std::fs::read(&self.pcap).unwrap_or_default()
    }

    /// Every captured packet's `fields`, stopping tcpdump first.
    pub fn frames(&mut self, fields: &[&str]) -> Vec<Frame> {
        self.stop();
        decode_pcap(&self.pcap, fields, &[])
    }
}
