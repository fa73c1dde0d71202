//! What a map-server hands a node so it may use the campus relay: the relay
//! servers and time-limited TURN credentials.
//!
//! The credentials follow the TURN REST API scheme that coturn implements
//! with `use-auth-secret` (draft-uberti-behave-turn-rest): the username is
//! `"<unix expiry>:<node name>"` and the password
//! `base64(HMAC-SHA1(secret, username))`. Only the map-server and coturn know
//! the secret, so nobody keeps a coturn user database, and a node cannot
//! mint credentials for another name or a later expiry. coturn checks the
//! expiry when an allocation is created, not when it is refreshed.
//!
//! A grant travels as JSON: from the map-server's node API over the control
//! tunnel, and as a file for a node that must reach the relay before it can
//! reach the map-server (a network that lets only TCP out).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The grant format's version; a node refuses others.
pub const GRANT_VERSION: u32 = 1;
/// Longest node name put in a username.
const MAX_NAME: usize = 64;

/// How a node reaches a relay server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TURN over UDP (port 3478): the cheapest, where UDP gets out.
    Udp,
    /// TURN over TLS (port 443): what a UDP-hostile network lets through.
    Tls,
    /// TURN over plain TCP.
    Tcp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tls => "tls",
            Transport::Tcp => "tcp",
        }
    }

    /// Over a byte stream (TCP or TLS): messages are framed and padded.
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One relay server (a coturn), by transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayServer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<SocketAddr>,
    /// SHA-256 of the TLS server's SubjectPublicKeyInfo, base64: the node
    /// accepts exactly that key (it survives certificate renewals with the
    /// same key). Required with `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_spki_sha256: Option<String>,
}

impl RelayServer {
    /// The ways to reach it, in the order a node tries them: UDP, then TLS,
    /// then TCP.
    pub fn endpoints(&self) -> Vec<(Transport, SocketAddr)> {
        [
            (Transport::Udp, self.udp),
            (Transport::Tls, self.tls),
            (Transport::Tcp, self.tcp),
        ]
        .into_iter()
        .filter_map(|(t, a)| Some((t, a?)))
        .collect()
    }

    /// The TLS pin as bytes, if it is well-formed.
    pub fn tls_pin(&self) -> Option<[u8; 32]> {
        let b = base64::engine::general_purpose::STANDARD
            .decode(self.tls_spki_sha256.as_deref()?)
            .ok()?;
        b.try_into().ok()
    }
}

/// Relay servers and credentials for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub version: u32,
    pub username: String,
    pub password: String,
    /// Unix time after which coturn refuses new allocations with these
    /// credentials.
    pub expires_unix: u64,
    pub servers: Vec<RelayServer>,
}

/// Why a grant cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("grant version {0}, this agent reads version {GRANT_VERSION}")]
    Version(u32),
    #[error("the grant names no relay server")]
    NoServer,
    #[error("relay server {0} has no address")]
    NoAddress(usize),
    #[error("relay server {0} offers TLS without a valid tls_spki_sha256 (32 bytes, base64)")]
    NoPin(usize),
    #[error("the credentials are empty")]
    NoCredentials,
    #[error("node name {0:?}: 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadName(String),
}

/// TURN REST API credentials for `name`, valid until `expires_unix`:
/// (username, password).
pub fn credentials(secret: &[u8], name: &str, expires_unix: u64) -> (String, String) {
    let username = format!("{expires_unix}:{name}");
    // HMAC takes keys of any length.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC key of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// Whether `name` may be put in a username (coturn splits it at the first
/// colon, and logs it).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The SPKI pin of a DER SubjectPublicKeyInfo, as `tls_spki_sha256` holds it.
pub fn spki_pin(spki_der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki_der))
}

/// The SHA-256 of a DER certificate's SubjectPublicKeyInfo; `None` for
/// something that is not an X.509 certificate.
pub fn certificate_spki_sha256(der: &[u8]) -> Option<[u8; 32]> {
    let der = pki_types::CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(sha2::Sha256::digest(cert.subject_public_key_info().as_ref()).into())
}

/// The pin of the first certificate in PEM text (what `tls_cert_file`
/// holds), as `tls_spki_sha256` holds it.
pub fn pem_spki_pin(pem: &str) -> Option<String> {
    use pki_types::pem::PemObject as _;
    let der = pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let hash = certificate_spki_sha256(&der)?;
    Some(base64::engine::general_purpose::STANDARD.encode(hash))
}

impl Grant {
    /// A grant for node `name`, valid for `ttl` from `now_unix`.
    pub fn issue(
        secret: &[u8],
        name: &str,
        now_unix: u64,
        ttl: Duration,
        servers: Vec<RelayServer>,
    ) -> Result<Grant, GrantError> {
        if !valid_name(name) {
            return Err(GrantError::BadName(name.into()));
        }
        let expires_unix = now_unix.saturating_add(ttl.as_secs());
        let (username, password) = credentials(secret, name, expires_unix);
        let g = Grant {
            version: GRANT_VERSION,
            username,
            password,
            expires_unix,
            servers,
        };
        g.check()?;
        Ok(g)
    }

    /// Whether the grant can be used at all.
    pub fn check(&self) -> Result<(), GrantError> {
        if self.version != GRANT_VERSION {
            return Err(GrantError::Version(self.version));
        }
        if self.username.is_empty() || self.password.is_empty() {
            return Err(GrantError::NoCredentials);
        }
        if self.servers.is_empty() {
            return Err(GrantError::NoServer);
        }
        for (i, s) in self.servers.iter().enumerate() {
            if s.endpoints().is_empty() {
                return Err(GrantError::NoAddress(i));
            }
            if s.tls.is_some() && s.tls_pin().is_none() {
                return Err(GrantError::NoPin(i));
            }
        }
        Ok(())
    }

    /// How long new allocations may still be made with it.
    pub fn valid_for(&self, now_unix: u64) -> Duration {
        Duration::from_secs(self.expires_unix.saturating_sub(now_unix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> RelayServer {
        RelayServer {
            udp: Some("192.0.2.10:3478".parse().unwrap()),
            tls: Some("192.0.2.10:443".parse().unwrap()),
            tcp: None,
            tls_spki_sha256: Some(spki_pin(b"key")),
        }
    }

    #[test]
    fn rest_api_credentials_match_openssl() {
        // printf '1700000000:robot-a' | openssl dgst -sha1 -hmac s3cret -binary | base64
        let (user, pass) = credentials(b"s3cret", "robot-a", 1_700_000_000);
        assert_eq!(user, "1700000000:robot-a");
        assert_eq!(pass, "d5H8TqDQXHsgGB3x5vXOrRc3udI=");
    }

    #[test]
    fn a_grant_expires_and_round_trips_as_json() {
        let g = Grant::issue(
            b"s",
            "robot-a",
            1000,
            Duration::from_secs(60),
            vec![server()],
        )
        .unwrap();
        assert_eq!(g.expires_unix, 1060);
        assert_eq!(g.valid_for(1000), Duration::from_secs(60));
        assert_eq!(g.valid_for(2000), Duration::ZERO);
        let json = serde_json::to_string(&g).unwrap();
        assert!(!json.contains("\"tcp\""), "absent transports are left out");
        assert_eq!(serde_json::from_str::<Grant>(&json).unwrap(), g);
        assert!(serde_json::from_str::<Grant>(&json.replace("\"version\"", "\"vers\"")).is_err());
    }

    #[test]
    fn unusable_grants_are_refused_with_the_reason() {
        let bad_name = Grant::issue(b"s", "a:b", 0, Duration::ZERO, vec![server()]);
        assert_eq!(bad_name, Err(GrantError::BadName("a:b".into())));
        assert_eq!(
            Grant::issue(b"s", "n", 0, Duration::ZERO, vec![]),
            Err(GrantError::NoServer)
        );
        let mut s = server();
        s.tls_spki_sha256 = Some("short".into());
        assert_eq!(
            Grant::issue(b"s", "n", 0, Duration::ZERO, vec![s]),
            Err(GrantError::NoPin(0))
        );
        let empty = RelayServer {
            udp: None,
            tls: None,
            tcp: None,
            tls_spki_sha256: None,
        };
        assert_eq!(
            Grant::issue(b"s", "n", 0, Duration::ZERO, vec![empty]),
            Err(GrantError::NoAddress(0))
        );
        let mut g = Grant::issue(b"s", "n", 0, Duration::ZERO, vec![server()]).unwrap();
        g.version = 2;
        assert_eq!(g.check(), Err(GrantError::Version(2)));
    }

    #[test]
    fn a_certificate_pin_matches_openssl() {
        // openssl x509 -pubkey -noout | openssl pkey -pubin -outform der
        //   | openssl dgst -sha256 -binary | base64
        const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBfjCCASOgAwIBAgIUWb9DBmLXH7m8bw771rpA7o1tLhgwCgYIKoZIzj0EAwIw\nFDESMBAGA1UEAwwJdHVybi50ZXN0MB4XDTI2MTIwMTEwNTEyN1oXDTM2MTEyODEw\nNTEyN1owFDESMBAGA1UEAwwJdHVybi50ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0D\nAQcDQgAERqv3dooP3vW3I5rZ3RFtrlojNMjHoKKVmwNgl7itOgtRcl+2bDK4U5iu\nQM6DOWT2tjlbZrAKqx4IPN2fS/mw86NTMFEwHQYDVR0OBBYEFD1oz7w6+YBeUyPN\nvMVYtvArRgqgMB8GA1UdIwQYMBaAFD1oz7w6+YBeUyPNvMVYtvArRgqgMA8GA1Ud\nEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSQAwRgIhAP3loIndTi6/vUrKmj0Km3Fc\nRHU923V0FtzZAOcG4C66AiEAgFNZUXZkgdh8MTAJOVdm8GegCkxRz/L3oI1gcftZ\n8+4=\n-----END CERTIFICATE-----\n";
        assert_eq!(
            pem_spki_pin(CERT).as_deref(),
            Some("A3P2DXVRHJ1hjW7VxH7j/Z/BSCgs+3MWZknKCqlqbuQ=")
        );
        assert_eq!(
            pem_spki_pin("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            None
        );
        assert_eq!(pem_spki_pin(""), None);
    }

    #[test]
    fn servers_are_tried_udp_then_tls_then_tcp() {
        let mut s = server();
        s.tcp = Some("192.0.2.10:3478".parse().unwrap());
        let order: Vec<Transport> = s.endpoints().into_iter().map(|e| e.0).collect();
        assert_eq!(order, [Transport::Udp, Transport::Tls, Transport::Tcp]);
    }
}
