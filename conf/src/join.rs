//! The join protocol: how a robot redeems a join bundle (one robot) or a
//! team key (many) with the map-server, and the files both sides keep.
//!
//! One UDP round trip to the map-server's join port. The robot sends
//! `MAGIC | token id (8 bytes, clear) | Noise IKpsk1 message 1`; the
//! map-server answers with Noise message 2. Noise
//! (`Noise_IKpsk1_25519_ChaChaPoly_BLAKE2s`, through snow):
//!
//! - the responder's static key is the map-server's WireGuard key, pinned by
//!   the robot from the bundle or team key: nobody else can answer;
//! - the initiator's static key is the robot's new WireGuard key, generated
//!   on the robot: the handshake proves it holds the private key of the
//!   public key it enrols, which never leaves it;
//! - the pre-shared key is the bundle's or team key's secret, mixed in at the
//!   end of the first message (psk1; WireGuard's psk2 would let anyone's
//!   first message decrypt, and be answered): without it the first message
//!   does not decrypt, and the map-server stays silent, as WireGuard does.
//!   The token id in clear only selects which secret to try.
//!
//! Refusals (expired, used up, revoked) go inside message 2, so only a
//! holder of the secret learns why.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

pub const NOISE_PATTERN: &str = "Noise_IKpsk1_25519_ChaChaPoly_BLAKE2s";
/// The first bytes of every join request: tells them from anything else.
pub const MAGIC: &[u8; 4] = b"LWJ1";
pub const TOKEN_ID_LEN: usize = 8;
/// The map-server's join port unless configured otherwise.
pub const DEFAULT_JOIN_PORT: u16 = 4344;
/// Largest join datagram either way.
pub const MAX_DATAGRAM: usize = 4096;

/// Why a join message could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("not a join request")]
    NotARequest,
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("bad message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Format(String),
}

/// A token id: 8 random bytes, written as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(pub [u8; TOKEN_ID_LEN]);

impl TokenId {
    pub fn random() -> TokenId {
        TokenId(rand::random())
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl FromStr for TokenId {
    type Err = JoinError;
    fn from_str(s: &str) -> Result<TokenId, JoinError> {
        let bad = || JoinError::Format(format!("`{s}` is not a token id (16 hex digits)"));
        if s.len() != 2 * TOKEN_ID_LEN || !s.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; TOKEN_ID_LEN];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(TokenId(id))
    }
}

/// A 32-byte secret (the Noise pre-shared key), base64 in files.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub zeroize::Zeroizing<[u8; 32]>);

impl Secret {
    pub fn random() -> Secret {
        Secret(zeroize::Zeroizing::new(rand::random()))
    }
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(*self.0)
    }
    pub fn from_base64(s: &str) -> Result<Secret, JoinError> {
        decode32(s).map(|b| Secret(zeroize::Zeroizing::new(b)))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// 32 bytes from URL-safe or standard base64 (WireGuard keys are standard).
pub fn decode32(s: &str) -> Result<[u8; 32], JoinError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(s.trim())
        .or_else(|_| STANDARD.decode(s.trim()))
        .map_err(|_| JoinError::Format("not base64".into()))?;
    bytes
        .try_into()
        .map_err(|_| JoinError::Format("not 32 bytes".into()))
}

/// A join bundle, for one robot (`map-server enroll`): JSON, mode 0600.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bundle {
    /// `lispwg-join-bundle`
    pub kind: String,
    /// The map-server's join endpoint, `HOST:PORT`.
    pub server: String,
    /// The map-server's WireGuard public key (base64): pinned.
    pub server_key: String,
    pub token: String,
    pub secret: String,
    /// The name it enrols.
    pub name: String,
    /// When it stops working (RFC 3339), for the robot's error message.
    pub expires: Option<String>,
}

pub const BUNDLE_KIND: &str = "lispwg-join-bundle";

/// A team key (`map-server join-key create`): `lwk1.<id>.<secret>.<server key>`,
/// one line, safe in a shell and a provisioning script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamKey {
    pub id: TokenId,
    pub secret: Secret,
    pub server_key: [u8; 32],
}

impl fmt::Display for TeamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lwk1.{}.{}.{}",
            self.id,
            self.secret.to_base64(),
            URL_SAFE_NO_PAD.encode(self.server_key)
        )
    }
}

impl FromStr for TeamKey {
    type Err = JoinError;
    fn from_str(s: &str) -> Result<TeamKey, JoinError> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [tag, id, secret, server] = parts[..] else {
            return Err(JoinError::Format(
                "a team key looks like lwk1.<id>.<secret>.<server key>".into(),
            ));
        };
        if tag != "lwk1" {
            return Err(JoinError::Format(format!("unknown key version `{tag}`")));
        }
        Ok(TeamKey {
            id: id.parse()?,
            secret: Secret::from_base64(secret)
                .map_err(|e| JoinError::Format(format!("the secret: {e}")))?,
            server_key: decode32(server)
                .map_err(|e| JoinError::Format(format!("the server key: {e}")))?,
        })
    }
}

/// What the robot asks for (inside Noise message 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinRequest {
    /// The name it asks for (team keys; a bundle names its robot).
    pub name: Option<String>,
    pub hostname: String,
}

/// The map-server's answer (inside Noise message 2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum JoinAnswer {
    Joined(Box<Joined>),
    Refused { reason: String },
}

/// Everything the robot's configuration needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Joined {
    pub name: String,
    pub team: String,
    pub control_address: IpAddr,
    pub control_prefix_len: u8,
    /// `prefix` strings, e.g. `10.0.0.1/32`.
    pub eids: Vec<String>,
    pub iid: u32,
    pub site_key: String,
    /// EID space routed to the miss TUN.
    pub overlay: Vec<String>,
    pub map_server: JoinedServer,
    /// The fleet's other map-servers, registered with too.
    #[serde(default)]
    pub also: Vec<JoinedServer>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinedServer {
    pub name: String,
    /// WireGuard endpoint, `HOST:PORT`.
    pub endpoint: String,
    pub public_key: String,
    pub control_address: IpAddr,
}

fn builder() -> snow::Builder<'static> {
    snow::Builder::new(NOISE_PATTERN.parse().expect("a valid Noise pattern"))
}

/// The robot's side: a handshake with its key, the pinned server key and
/// the secret, and the request datagram.
pub fn request(
    robot_private: &[u8; 32],
    server_public: &[u8; 32],
    secret: &Secret,
    id: TokenId,
    req: &JoinRequest,
) -> Result<(snow::HandshakeState, Vec<u8>), JoinError> {
    let mut hs = builder()
        .local_private_key(robot_private)?
        .remote_public_key(server_public)?
        .psk(1, &secret.0)?
        .build_initiator()?;
    let payload = serde_json::to_vec(req)?;
    let mut out = vec![0u8; MAX_DATAGRAM];
    let n = hs.write_message(&payload, &mut out)?;
    let mut dgram = Vec::with_capacity(MAGIC.len() + TOKEN_ID_LEN + n);
    dgram.extend_from_slice(MAGIC);
    dgram.extend_from_slice(&id.0);
    dgram.extend_from_slice(&out[..n]);
    Ok((hs, dgram))
}

/// The robot reads the answer.
pub fn read_answer(hs: &mut snow::HandshakeState, bytes: &[u8]) -> Result<JoinAnswer, JoinError> {
    let mut out = vec![0u8; MAX_DATAGRAM];
    let n = hs.read_message(bytes, &mut out)?;
    Ok(serde_json::from_slice(&out[..n])?)
}

/// The map-server's first look at a datagram: the token id and the Noise
/// message, or `None` for anything that is not a join request.
pub fn split_request(bytes: &[u8]) -> Option<(TokenId, &[u8])> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    if rest.len() <= TOKEN_ID_LEN {
        return None;
    }
    let (id, msg) = rest.split_at(TOKEN_ID_LEN);
    Some((TokenId(id.try_into().ok()?), msg))
}

/// The map-server reads a request with the secret its token id selected:
/// the request and the robot's (proven) public key. An error means a wrong
/// secret, a wrong server key, or garbage: drop it silently.
pub fn read_request(
    server_private: &[u8; 32],
    secret: &Secret,
    msg: &[u8],
) -> Result<(snow::HandshakeState, JoinRequest, [u8; 32]), JoinError> {
    let mut hs = builder()
        .local_private_key(server_private)?
        .psk(1, &secret.0)?
        .build_responder()?;
    let mut out = vec![0u8; MAX_DATAGRAM];
    let n = hs.read_message(msg, &mut out)?;
    let req: JoinRequest = serde_json::from_slice(&out[..n])?;
    let robot: [u8; 32] = hs
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| JoinError::Format("no initiator key".into()))?;
    Ok((hs, req, robot))
}

/// The map-server's answer datagram.
pub fn answer(hs: &mut snow::HandshakeState, answer: &JoinAnswer) -> Result<Vec<u8>, JoinError> {
    let payload = serde_json::to_vec(answer)?;
    let mut out = vec![0u8; MAX_DATAGRAM];
    let n = hs.write_message(&payload, &mut out)?;
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> ([u8; 32], [u8; 32]) {
        let k = wgctl::keys::PrivateKey::generate();
        let private = decode32(&k.to_base64()).unwrap();
        let public = decode32(&k.public_key().to_base64()).unwrap();
        (private, public)
    }

    #[test]
    fn a_robot_with_the_secret_and_the_pinned_key_joins_and_proves_its_wireguard_key() {
        let (ms_priv, ms_pub) = keypair();
        let (robot_priv, robot_pub) = keypair();
        let secret = Secret::random();
        let id = TokenId::random();
        let req = JoinRequest {
            name: Some("r1".into()),
            hostname: "h".into(),
        };
        let (mut hs, dgram) = request(&robot_priv, &ms_pub, &secret, id, &req).unwrap();
        let (got_id, msg) = split_request(&dgram).unwrap();
        assert_eq!(got_id, id);
        let (mut ms_hs, got, key) = read_request(&ms_priv, &secret, msg).unwrap();
        assert_eq!(got, req);
        // The key the handshake proves is the robot's WireGuard public key.
        assert_eq!(key, robot_pub);
        let refused = JoinAnswer::Refused {
            reason: "expired".into(),
        };
        let reply = answer(&mut ms_hs, &refused).unwrap();
        assert_eq!(read_answer(&mut hs, &reply).unwrap(), refused);
    }

    #[test]
    fn a_wrong_secret_or_server_key_does_not_decrypt() {
        let (ms_priv, ms_pub) = keypair();
        let (robot_priv, _) = keypair();
        let (_, other_pub) = keypair();
        let req = JoinRequest {
            name: None,
            hostname: "h".into(),
        };
        let id = TokenId::random();
        let (_, d) = request(&robot_priv, &ms_pub, &Secret::random(), id, &req).unwrap();
        assert!(read_request(&ms_priv, &Secret::random(), split_request(&d).unwrap().1).is_err());
        let secret = Secret::random();
        let (_, d) = request(&robot_priv, &other_pub, &secret, id, &req).unwrap();
        assert!(read_request(&ms_priv, &secret, split_request(&d).unwrap().1).is_err());
        assert!(split_request(b"LWJ1short").is_none());
        assert!(split_request(b"hello world, not a join").is_none());
    }

    #[test]
    fn team_keys_and_token_ids_round_trip() {
        let k = TeamKey {
            id: TokenId::random(),
            secret: Secret::random(),
            server_key: [7; 32],
        };
        let text = k.to_string();
        assert!(text.starts_with("lwk1."));
        assert!(!text.contains(['/', '+', '=', ' ']), "{text}");
        assert_eq!(text.parse::<TeamKey>().unwrap(), k);
        assert!("lwk2.00.aa.bb".parse::<TeamKey>().is_err());
        assert!("nonsense".parse::<TeamKey>().is_err());
        assert!("0011".parse::<TokenId>().is_err());
    }
}
