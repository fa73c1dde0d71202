//! NAT routers: nftables in a namespace, with a `wan` interface on a campus
//! segment and a `lan` bridge for the hosts behind.
//!
//! What each rule does on this kernel (DESIGN.md, "NAT behaviour, measured
//! here", and the smoke tests in `testbed/tests/nat.rs`):
//!
//! | kind | IPv4 mapping | filtering |
//! |---|---|---|
//! | [`NatKind::Eim`] | `masquerade`: endpoint-independent, source port kept | only the exact remote address:port gets back in |
//! | [`NatKind::Edm`] | `masquerade fully-random`: a new port per destination ("symmetric") | same |
//! | [`NatKind::EimNoFilter`] | as Eim | anyone gets in ("full cone"): a dynamic map of the mappings in use DNATs any sender to the inside host |
//! | [`NatKind::EimNoFirewall`] | as Eim | no filter at all: an unsolicited packet is taken by the router itself; its conntrack entry then holds the tuple, and the inside host's own packet to that peer is remapped to another port |
//!
//! Every kind filters like a real router: `policy drop` on input and
//! forward except `ct state established,related`, what comes from the LAN,
//! ICMP, and IPv6 neighbour discovery ([`NatKind::EimNoFirewall`] excepted).
//! IPv6 is routed, never translated; its forward filter is the kind's.

use crate::netns::Netns;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a NAT router maps and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NatKind {
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    Eim,
    /// Endpoint-dependent mapping ("symmetric"), with the same filter.
    Edm,
    /// Endpoint-independent mapping and filtering ("full cone").
    EimNoFilter,
    /// Endpoint-independent mapping on a router with no firewall at all.
    EimNoFirewall,
}

/// A router's rule set: its kind and what a test changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatRules {
    pub kind: NatKind,
    /// Map to source ports in this range (`masquerade to :lo-hi`).
    pub ports: Option<(u16, u16)>,
    /// A "UDP-hostile network": only TCP to port 443 goes out.
    pub udp_blocked: bool,
}

impl NatRules {
    pub fn new(kind: NatKind) -> NatRules {
        NatRules {
            kind,
            ports: None,
            udp_blocked: false,
        }
    }

    /// The nft script that replaces the router's table in one transaction.
    pub fn script(&self) -> String {
        let flags = match self.kind {
            NatKind::Edm => " fully-random",
            _ => "",
        };
        let masquerade = match self.ports {
            Some((lo, hi)) => format!(
                "oifname \"wan\" meta nfproto ipv4 meta l4proto {{ tcp, udp }} masquerade to :{lo}-{hi}{flags}\n    \
                 oifname \"wan\" meta nfproto ipv4 masquerade{flags}"
            ),
            None => format!("oifname \"wan\" meta nfproto ipv4 masquerade{flags}"),
        };
        let out = if self.udp_blocked {
            "iifname \"lan\" oifname \"wan\" tcp dport 443 accept"
        } else {
            "iifname \"lan\" oifname \"wan\" accept"
        };
        let mut s = String::from(
            "table inet lwnat {}\ndelete table inet lwnat\ntable inet lwnat {\n  \
             chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    ",
        );
        s += &masquerade;
        s += "\n  }\n";
        if self.kind == NatKind::EimNoFirewall {
            return s + "}\n";
        }
        let mut forward_in = String::new();
        if self.kind == NatKind::EimNoFilter {
            // The mappings in use, keyed by the public port after the
            // masquerade (so also with a port range), to the inside address
            // and port: a DNAT for any sender.
            s += "  map fullcone {\n    type inet_service : ipv4_addr . inet_service; \
                  flags dynamic,timeout; timeout 120s;\n  }\n  \
                  chain mapped {\n    type filter hook postrouting priority srcnat + 10; policy accept;\n    \
                  oifname \"wan\" meta nfproto ipv4 meta l4proto udp ct direction original \
                  update @fullcone { udp sport timeout 120s : ct original ip saddr . ct original proto-src }\n  }\n  \
                  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    \
                  iifname \"wan\" meta nfproto ipv4 udp dport @fullcone dnat ip addr . port to udp dport map @fullcone\n  }\n";
            forward_in = "\n    iifname \"wan\" oifname \"lan\" ct status dnat accept\
                          \n    iifname \"wan\" oifname \"lan\" meta nfproto ipv6 accept"
                .into();
        }
        s += &format!(
            "  chain input {{\n    type filter hook input priority filter; policy drop;\n    \
             ct state established,related accept\n    iifname {{ \"lo\", \"lan\" }} accept\n    \
             meta l4proto {{ icmp, ipv6-icmp }} accept\n  }}\n  \
             chain forward {{\n    type filter hook forward priority filter; policy drop;\n    \
             ct state established,related accept\n    {out}{forward_in}\n  }}\n}}\n"
        );
        s
    }
}

/// One conntrack entry: `orig_src → orig_dst` as the inside host sent it,
/// and `public` (the reply's destination) where the router mapped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub orig_src: SocketAddr,
    pub orig_dst: SocketAddr,
    pub public: SocketAddr,
    /// `[UNREPLIED]`, `[ASSURED]` or empty.
    pub state: String,
}

/// Parses `conntrack -L -p udp` output (IPv4 and IPv6 lines).
pub fn parse_conntrack(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut kv: Vec<(&str, &str)> = Vec::new();
            let mut state = String::new();
            for w in line.split_whitespace() {
                if let Some((k, v)) = w.split_once('=') {
                    kv.push((k, v));
                } else if w.starts_with('[') {
                    state = w.trim_matches(|c| c == '[' || c == ']').to_string();
                }
            }
            let get = |key: &str, nth: usize| {
                kv.iter()
                    .filter(|(k, _)| *k == key)
                    .nth(nth)
                    .map(|(_, v)| *v)
            };
            let addr = |a: &str, p: &str, nth: usize| -> Option<SocketAddr> {
                Some(SocketAddr::new(
                    get(a, nth)?.parse().ok()?,
                    get(p, nth)?.parse().ok()?,
                ))
            };
            Some(Mapping {
                orig_src: addr("src", "sport", 0)?,
                orig_dst: addr("dst", "dport", 0)?,
                public: addr("dst", "dport", 1)?,
                state,
            })
        })
        .collect()
}

/// A NAT router's namespace, driven live by a test.
pub struct NatRouter<'a> {
    ns: &'a Netns,
    rules: NatRules,
}

impl<'a> NatRouter<'a> {
    /// Installs `rules` in `ns` (which has `wan` and `lan`).
    pub fn install(ns: &'a Netns, rules: NatRules) -> Result<NatRouter<'a>> {
        let mut r = NatRouter { ns, rules };
        r.apply(rules)?;
        Ok(r)
    }

    /// The router of `ns` whose rules are `rules` already.
    pub fn of(ns: &'a Netns, rules: NatRules) -> NatRouter<'a> {
        NatRouter { ns, rules }
    }

    pub fn rules(&self) -> NatRules {
        self.rules
    }

    /// Replaces the whole rule set in one nft transaction: packets see
    /// either the old rules or the new ones. Existing conntrack entries keep
    /// their mappings (see [`NatRouter::flush_conntrack`]).
    pub fn apply(&mut self, rules: NatRules) -> Result<()> {
        crate::cmd::run_command(
            self.ns.command("nft").args(["-f", "-"]),
            Some(rules.script().as_bytes()),
        )
        .with_context(|| format!("nft in {}", self.ns.name()))?;
        self.rules = rules;
        Ok(())
    }

    /// Swaps the kind live (e.g. Edm → Eim), keeping the other settings.
    pub fn set_kind(&mut self, kind: NatKind) -> Result<()> {
        self.apply(NatRules { kind, ..self.rules })
    }

    /// Maps to source ports `lo..=hi` from now on (`None`: any port).
    pub fn set_ports(&mut self, ports: Option<(u16, u16)>) -> Result<()> {
        if ports.is_some_and(|(lo, hi)| lo == 0 || lo > hi) {
            bail!("bad port range {ports:?}");
        }
        self.apply(NatRules {
            ports,
            ..self.rules
        })
    }

    /// A UDP-hostile network (only TCP 443 out), or back to normal.
    pub fn block_udp(&mut self, blocked: bool) -> Result<()> {
        self.apply(NatRules {
            udp_blocked: blocked,
            ..self.rules
        })
    }

    /// `conntrack -F`: every mapping forgotten (the next packet of a flow
    /// gets a new one).
    pub fn flush_conntrack(&self) -> Result<()> {
        self.ns.exec(&["conntrack", "-F"])?;
        Ok(())
    }

    /// `conntrack -L -p udp`: the UDP mappings, parsed.
    pub fn mappings(&self) -> Result<Vec<Mapping>> {
        Ok(parse_conntrack(&self.ns.exec(&[
            "conntrack",
            "-L",
            "-p",
            "udp",
        ])?))
    }

    /// The router's nft rule set as nft lists it.
    pub fn listing(&self) -> Result<String> {
        self.ns.exec(&["nft", "list", "ruleset"])
    }
}

/// A UDP server that answers each datagram with the address it came from,
/// as text (`ip:port`): how a host behind a NAT learns its mapping, as it
/// would from a STUN server or from the map-server's view of its endpoint.
pub struct AddressEcho {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AddressEcho {
    /// Listens on `addr` inside `ns` (bound before this returns).
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<AddressEcho> {
        let sock = ns.run(|| UdpSocket::bind(addr))??;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(from.to_string().as_bytes(), from);
                }
            }
        });
        Ok(AddressEcho {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Asks `server` (an [`AddressEcho`]) from `sock` where it sees `sock`
    /// (up to 5 tries, 200 ms each).
    pub fn observe(sock: &UdpSocket, server: SocketAddr) -> Result<SocketAddr> {
        for _ in 0..5 {
            sock.send_to(b"where am I?", server)?;
            let deadline = Instant::now() + Duration::from_millis(200);
            while let Some((text, from)) = recv_within(sock, deadline - Instant::now()) {
                if from == server {
                    return text
                        .parse()
                        .map_err(|e| anyhow!("{server} answered {text:?}: {e}"));
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
        bail!("no answer from the address echo at {server}")
    }
}

impl Drop for AddressEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The next datagram on `sock` within `limit`, as text, and its sender.
pub fn recv_within(sock: &UdpSocket, limit: Duration) -> Option<(String, SocketAddr)> {
    let limit = limit.max(Duration::from_millis(1));
    sock.set_read_timeout(Some(limit)).ok()?;
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).ok()?;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_lines_parse_into_mappings() {
        let text = "udp      17 29 src=10.10.1.10 dst=192.0.2.10 sport=40000 dport=7000 \
                    [UNREPLIED] src=192.0.2.10 dst=198.51.100.101 sport=7000 dport=40001 mark=0 use=1\n\
                    conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n";
        let m = parse_conntrack(text);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].orig_src, "10.10.1.10:40000".parse().unwrap());
        assert_eq!(m[0].orig_dst, "192.0.2.10:7000".parse().unwrap());
        assert_eq!(m[0].public, "198.51.100.101:40001".parse().unwrap());
        assert_eq!(m[0].state, "UNREPLIED");
    }

    #[test]
    fn scripts_say_what_the_kind_is() {
        let eim = NatRules::new(NatKind::Eim).script();
        assert!(eim.contains("masquerade\n") && eim.contains("policy drop"));
        assert!(!eim.contains("random") && !eim.contains("fullcone"));
        let edm = NatRules::new(NatKind::Edm).script();
        assert!(edm.contains("masquerade fully-random"));
        let cone = NatRules::new(NatKind::EimNoFilter).script();
        assert!(cone.contains("dnat ip addr . port to udp dport map @fullcone"));
        let open = NatRules::new(NatKind::EimNoFirewall).script();
        assert!(!open.contains("policy drop"));
        let hostile = NatRules {
            udp_blocked: true,
            ports: Some((20000, 20999)),
            ..NatRules::new(NatKind::Eim)
        }
        .script();
        assert!(hostile.contains("tcp dport 443 accept") && hostile.contains(":20000-20999"));
    }
}
