//! MSS clamping on an xTR, with nftables: hosts behind an edge xTR
//! advertise the MSS of their 1500-byte LAN, while the tunnel carries 1420.
//! Without clamping their TCP depends on path-MTU discovery, which stalls
//! silently on LANs that filter ICMP. One table per WireGuard interface,
//! created at start and deleted at shutdown like every other thing wgctl
//! makes.

use crate::error::{Error, Result};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// The table for `wg_if` (nft names take no dashes).
pub(crate) fn table_name(wg_if: &str) -> String {
    format!("lispwg_{}", wg_if.replace(['-', '.'], "_"))
}

/// SYNs leaving through the tunnel, forwarded (hosts behind the xTR) or
/// sent from here (packets held at the miss TUN and re-injected), get an MSS
/// that fits the tunnel's route MTU.
pub(crate) fn clamp_script(table: &str, wg_if: &str) -> String {
    format!(
        "table inet {table} {{\n\
         \tchain forward {{ type filter hook forward priority mangle; policy accept;\n\
         \t\toifname \"{wg_if}\" tcp flags syn tcp option maxseg size set rt mtu\n\
         \t}}\n\
         \tchain output {{ type filter hook output priority mangle; policy accept;\n\
         \t\toifname \"{wg_if}\" tcp flags syn tcp option maxseg size set rt mtu\n\
         \t}}\n\
         }}\n"
    )
}

/// One per-source limit: UDP to `port` (arriving on `ifname`, or on any
/// interface), per source address (or per address and port: robots behind
/// one NAT share its address, not its ports), beyond `per_second` (burst
/// `burst`) is dropped in the kernel, before it reaches any socket.
#[derive(Debug, Clone, Copy)]
pub struct SourceLimit<'a> {
    pub ifname: Option<&'a str>,
    pub port: u16,
    pub per_source_port: bool,
    pub per_second: u32,
    pub burst: u32,
}

/// A flooding source then cannot fill a socket's queue, so the others'
/// datagrams still get in; what gets through is budgeted exactly by the
/// protocol core.
pub(crate) fn source_limit_script(table: &str, limits: &[SourceLimit<'_>]) -> String {
    let mut sets = String::new();
    let mut rules = String::new();
    for (i, l) in limits.iter().enumerate() {
        for (family, addr, ty) in [("4", "ip", "ipv4_addr"), ("6", "ip6", "ipv6_addr")] {
            let (ty, key) = if l.per_source_port {
                (
                    format!("{ty} . inet_service"),
                    format!("{addr} saddr . udp sport"),
                )
            } else {
                (ty.to_string(), format!("{addr} saddr"))
            };
            sets.push_str(&format!(
                "\tset flood{i}_{family} {{ type {ty}; flags dynamic; timeout 10s; size 65536; }}\n"
            ));
            let iif = l
                .ifname
                .map_or(String::new(), |i| format!("iifname \"{i}\" "));
            rules.push_str(&format!(
                "\t\t{iif}meta nfproto ipv{family} udp dport {} update @flood{i}_{family} {{ {key} limit rate over {}/second burst {} packets }} counter drop\n",
                l.port, l.per_second, l.burst
            ));
        }
    }
    format!(
        "table inet {table} {{\n{sets}\tchain input {{ type filter hook input priority filter; policy accept;\n{rules}\t}}\n}}\n"
    )
}

/// Runs `nft -f -` with `script`.
pub(crate) fn run(script: &str) -> Result<()> {
    let io = |e| Error::io("run nft (Debian package nftables)".to_string(), e);
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(io)?;
    let out = child.wait_with_output().map_err(io)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::io(
            "nft".to_string(),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ))
    }
}

pub(crate) fn delete_table(table: &str) -> Result<()> {
    run(&format!("delete table inet {table}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_named_for_its_interface_and_clamps_only_the_tunnel() {
        let t = table_name("lw-e0");
        assert_eq!(t, "lispwg_lw_e0");
        let s = clamp_script(&t, "lw-e0");
        assert!(s.starts_with("table inet lispwg_lw_e0 {"));
        assert_eq!(s.matches("oifname \"lw-e0\" tcp flags syn").count(), 2);
        assert!(s.contains("hook forward") && s.contains("hook output"));
    }

    #[test]
    fn source_limits_drop_beyond_the_rate_per_source_on_their_port() {
        let s = source_limit_script(
            "lispwg_ms_in",
            &[
                SourceLimit {
                    ifname: Some("ms"),
                    port: 4342,
                    per_source_port: false,
                    per_second: 2000,
                    burst: 4000,
                },
                SourceLimit {
                    ifname: None,
                    port: 4340,
                    per_source_port: true,
                    per_second: 2100,
                    burst: 4100,
                },
            ],
        );
        assert_eq!(s.matches("iifname \"ms\" meta nfproto").count(), 2, "{s}");
        assert!(s.contains("udp dport 4342 update @flood0_4 { ip saddr limit rate over 2000/second burst 4000 packets }"), "{s}");
        assert!(s.contains("type ipv4_addr . inet_service"), "{s}");
        assert!(s.contains("udp dport 4340 update @flood1_6 { ip6 saddr . udp sport limit rate over 2100/second"), "{s}");
    }
}
