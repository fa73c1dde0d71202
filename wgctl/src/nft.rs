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
}
