//! coturn (Debian `coturn`, TURN RFC 8656) as a testbed daemon: its
//! configuration, a self-signed certificate for TLS on 443, TURN REST API
//! credentials, and a hand-made STUN binding request to check it answers.
//!
//! The daemon is ours alone: it runs in the foreground in a namespace, with
//! its PID file, database and log in the state folder (never coturn's
//! defaults on the shared filesystem), and is stopped by its PID. Debian's
//! own coturn service is never used (scripts/common.sh stops and disables
//! it).

use anyhow::{bail, Result};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// TURN/STUN over UDP and TCP.
pub const TURN_PORT: u16 = 3478;
/// TURN over TLS (and DTLS): what gets through a UDP-hostile network.
pub const TURN_TLS_PORT: u16 = 443;
/// The relay ports coturn allocates from.
pub const RELAY_PORTS: (u16, u16) = (49152, 49200);
pub const REALM: &str = "lispwg.lab";

/// Ranges peers may be relayed to: the lab's underlay.
pub const ALLOWED_PEERS: &[&str] = &[
    "192.0.2.0-192.0.2.255",
    "198.51.100.0-198.51.100.255",
    "203.0.113.0-203.0.113.255",
    "2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
];

/// Ranges peers may never be: "this network", loopback, link-local,
/// multicast (coturn also refuses these with `no-multicast-peers` and
/// without `allow-loopback-peers`, said here so it does not depend on
/// defaults), and the overlay and control spaces.
pub const DENIED_PEERS: &[&str] = &[
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "224.0.0.0-255.255.255.255",
    "::1",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "ff00::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
];

/// Writes `coturn.conf` into `dir` for listeners on `listen` (UDP and TCP
/// 3478, TLS 443), with `secret` for time-limited credentials and the
/// certificate made by [`self_signed_cert`]. Returns its path.
pub fn write_config(dir: &Path, listen: &[IpAddr], secret: &str) -> Result<PathBuf> {
    let (cert, key) = self_signed_cert(dir)?;
    let d = dir.display();
    let mut c = format!(
        "# coturn for the lispwg lab: written by the testbed\n\
         listening-port={TURN_PORT}\ntls-listening-port={TURN_TLS_PORT}\n\
         min-port={}\nmax-port={}\n\
         use-auth-secret\nstatic-auth-secret={secret}\nrealm={REALM}\nfingerprint\n\
         cert={}\npkey={}\n\
         no-cli\nno-multicast-peers\nno-software-attribute\n\
         log-file=stdout\nsimple-log\npidfile={d}/turnserver.pid\nuserdb={d}/coturn.db\n",
        RELAY_PORTS.0,
        RELAY_PORTS.1,
        cert.display(),
        key.display()
    );
    for ip in listen {
        let _ = writeln!(c, "listening-ip={ip}\nrelay-ip={ip}");
    }
    for r in DENIED_PEERS {
        let _ = writeln!(c, "denied-peer-ip={r}");
    }
    for r in ALLOWED_PEERS {
        let _ = writeln!(c, "allowed-peer-ip={r}");
    }
    let path = dir.join("coturn.conf");
    crate::secret_file(&path, &c)?;
    Ok(path)
}

/// A self-signed certificate and its key (EC P-256, 30 days) in `dir`, made
/// with openssl: `turn.crt`, `turn.key` (0600).
pub fn self_signed_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("turn.crt"), dir.join("turn.key"));
    crate::cmd::run_command(
        std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
            .args(["-subj", "/CN=turn.lispwg.lab", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        None,
    )?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok((cert, key))
}

/// TURN REST API credentials ([`relay::credentials`]) valid for `ttl` from
/// now.
pub fn credentials_for(secret: &str, name: &str, ttl: Duration) -> (String, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    relay::credentials(secret.as_bytes(), name, (now + ttl).as_secs())
}

const MAGIC_COOKIE: u32 = 0x2112_a442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// A 20-byte STUN binding request (RFC 8489) with transaction ID `txid`.
pub fn binding_request(txid: [u8; 12]) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    // Length 0: no attributes.
    m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m[8..20].copy_from_slice(&txid);
    m
}

/// The XOR-MAPPED-ADDRESS of a binding success response to `txid`: the
/// address the server saw the request come from.
pub fn mapped_address(response: &[u8], txid: [u8; 12]) -> Option<SocketAddr> {
    let be16 = |b: &[u8], i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
    if be16(response, 0)? != BINDING_SUCCESS
        || response.get(4..8)? != MAGIC_COOKIE.to_be_bytes()
        || response.get(8..20)? != txid
    {
        return None;
    }
    let len = usize::from(be16(response, 2)?);
    let body = response.get(20..20 + len)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let (kind, alen) = (be16(body, i)?, usize::from(be16(body, i + 2)?));
        let value = body.get(i + 4..i + 4 + alen)?;
        if kind == XOR_MAPPED_ADDRESS {
            let port = be16(value, 2)? ^ (MAGIC_COOKIE >> 16) as u16;
            let mut key = MAGIC_COOKIE.to_be_bytes().to_vec();
            key.extend_from_slice(&txid);
            let xored = |n: usize| -> Option<Vec<u8>> {
                Some(
                    value
                        .get(4..4 + n)?
                        .iter()
                        .zip(&key)
                        .map(|(a, b)| a ^ b)
                        .collect(),
                )
            };
            let ip = match value.get(1)? {
                1 => IpAddr::from(<[u8; 4]>::try_from(xored(4)?).ok()?),
                2 => IpAddr::from(<[u8; 16]>::try_from(xored(16)?).ok()?),
                _ => return None,
            };
            return Some(SocketAddr::new(ip, port));
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    None
}

/// Sends binding requests from `sock` to `server` (every 100 ms, up to
/// `limit`) and returns the mapped address of the first answer.
pub fn stun_binding(sock: &UdpSocket, server: SocketAddr, limit: Duration) -> Result<SocketAddr> {
    let txid: [u8; 12] = rand::random();
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = std::time::Instant::now() + limit;
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        sock.send_to(&binding_request(txid), server)?;
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == server {
                if let Some(addr) = mapped_address(&buf[..n], txid) {
                    return Ok(addr);
                }
            }
        }
    }
    bail!("no STUN binding response from {server} within {limit:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_request_and_mapped_address() {
        let txid = [7u8; 12];
        let req = binding_request(txid);
        assert_eq!(&req[..8], &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]);
        // A success response with XOR-MAPPED-ADDRESS 198.51.100.10:51820.
        let mut resp = vec![0x01, 0x01, 0, 12, 0x21, 0x12, 0xa4, 0x42];
        resp.extend_from_slice(&txid);
        let port = 51820u16 ^ 0x2112;
        let ip = u32::from(std::net::Ipv4Addr::new(198, 51, 100, 10)) ^ MAGIC_COOKIE;
        resp.extend_from_slice(&[0, 0x20, 0, 8, 0, 1]);
        resp.extend_from_slice(&port.to_be_bytes());
        resp.extend_from_slice(&ip.to_be_bytes());
        assert_eq!(
            mapped_address(&resp, txid),
            Some("198.51.100.10:51820".parse().unwrap())
        );
        assert_eq!(mapped_address(&resp, [8u8; 12]), None);
    }
}
