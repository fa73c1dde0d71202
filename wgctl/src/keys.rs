//! WireGuard keys. This is the only key type wgctl exposes: wireguard-control's
//! `Key` prints private keys in `Debug` and never zeroizes, so it appears only
//! at the backend boundary.

use std::{fmt, str::FromStr};

use base64::{engine::general_purpose::STANDARD, Engine};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length of a Curve25519 key, private or public.
pub const KEY_LEN: usize = 32;
/// Length of a key in standard base64 with padding, as `wg` prints it.
const BASE64_LEN: usize = 44;

/// A WireGuard private key. Zeroized on drop; `Debug` and `Display` are redacted
/// so it cannot leak into logs.
#[derive(Clone)]
pub struct PrivateKey(Zeroizing<[u8; KEY_LEN]>);

impl PrivateKey {
    /// A fresh key from the OS RNG, clamped the way `wg genkey` clamps it so the
    /// base64 form matches what wg tools would print for the same scalar.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(bytes)
    }

    /// Wraps raw key bytes. Unclamped bytes are accepted, as `wg` accepts them
    /// (clamping happens in the scalar multiplication).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PrivateKey(Zeroizing::new(bytes))
    }

    /// Parses the base64 form written by `wg genkey` (surrounding whitespace,
    /// such as a file's trailing newline, is ignored).
    pub fn from_base64(text: &str) -> Result<Self> {
        decode_key(text).map(PrivateKey)
    }

    /// The base64 form, in a buffer that is zeroized when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_ref()))
    }

    /// The matching public key (what `wg pubkey` prints).
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(*self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// Raw bytes for the backend boundary only.
    pub(crate) fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl fmt::Display for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for PrivateKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_base64(s)
    }
}

/// A WireGuard public key: 32 bytes, shown and serialised as standard base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn from_base64(text: &str) -> Result<Self> {
        decode_key(text).map(|bytes| PublicKey(*bytes))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_base64(s)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Base64Visitor;
        impl serde::de::Visitor<'_> for Base64Visitor {
            type Value = PublicKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a WireGuard public key in base64")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PublicKey, E> {
                PublicKey::from_base64(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Base64Visitor)
    }
}

/// Decodes exactly 32 bytes from padded standard base64, keeping the
/// intermediate buffer zeroized since it may hold a private key.
fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let text = text.trim();
    if text.len() != BASE64_LEN {
        return Err(Error::InvalidKey("expected 44 characters of base64"));
    }
    let decoded = Zeroizing::new(
        STANDARD
            .decode(text)
            .map_err(|_| Error::InvalidKey("not valid base64"))?,
    );
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if decoded.len() != KEY_LEN {
        return Err(Error::InvalidKey("does not decode to 32 bytes"));
    }
    key.copy_from_slice(&decoded);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    const WG: &str = "/usr/bin/wg";

    fn wg(args: &[&str], stdin: Option<&str>) -> String {
        assert!(
            std::path::Path::new(WG).exists(),
            "{WG} is missing: install the `wireguard-tools` package to run the key tests"
        );
        let mut child = Command::new(WG)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn wg");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write wg stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("wait wg");
        assert!(out.status.success(), "wg {args:?} failed");
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    }

    #[test]
    fn wg_genkey_then_our_public_key_matches_wg_pubkey() {
        for _ in 0..4 {
            let private_b64 = wg(&["genkey"], None);
            let expected_pub = wg(&["pubkey"], Some(&private_b64));
            let key = PrivateKey::from_base64(&private_b64).expect("parse wg genkey output");
            assert_eq!(key.public_key().to_base64(), expected_pub);
            assert_eq!(&*key.to_base64(), &private_b64);
        }
    }

    #[test]
    fn our_generated_key_is_accepted_by_wg_pubkey() {
        for _ in 0..4 {
            let key = PrivateKey::generate();
            let b64 = key.to_base64();
            let wg_pub = wg(&["pubkey"], Some(&b64));
            assert_eq!(wg_pub, key.public_key().to_string());
            let parsed: PublicKey = wg_pub.parse().expect("parse wg pubkey output");
            assert_eq!(parsed, key.public_key());
        }
    }

    #[test]
    fn generated_keys_are_clamped_like_wg_genkey() {
        let key = PrivateKey::generate();
        let bytes = key.expose_bytes();
        assert_eq!(bytes[0] & 7, 0);
        assert_eq!(bytes[31] & 128, 0);
        assert_eq!(bytes[31] & 64, 64);
    }

    #[test]
    fn private_key_never_printed() {
        let key = PrivateKey::generate();
        let b64 = key.to_base64();
        for shown in [format!("{key:?}"), format!("{key}")] {
            assert!(!shown.contains(b64.as_str()));
            assert!(shown.contains("redacted"));
        }
    }

    #[test]
    fn public_key_round_trips_bytes_text_and_serde() {
        let public = PrivateKey::generate().public_key();
        assert_eq!(PublicKey::from_bytes(*public.as_bytes()), public);
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        assert!(format!("{public:?}").contains(&public.to_string()));

        use serde::de::{value::StrDeserializer, IntoDeserializer};
        let text = public.to_string();
        let de: StrDeserializer<'_, serde::de::value::Error> = text.as_str().into_deserializer();
        let back = <PublicKey as serde::Deserialize>::deserialize(de).unwrap();
        assert_eq!(back, public);
        let bad: StrDeserializer<'_, serde::de::value::Error> = "nope".into_deserializer();
        assert!(<PublicKey as serde::Deserialize>::deserialize(bad).is_err());
    }

    #[test]
    fn invalid_keys_are_typed_errors() {
        let too_short = "AAAA";
        let not_base64 = "!".repeat(44);
        // 44 chars of valid base64 that decode to 31 and 33 bytes.
        let short_key = format!("{}==", "A".repeat(42));
        let long_key = "A".repeat(44);
        for bad in [too_short, &not_base64, &short_key, &long_key, ""] {
            assert!(matches!(
                PrivateKey::from_base64(bad),
                Err(Error::InvalidKey(_))
            ));
            assert!(matches!(
                bad.parse::<PublicKey>(),
                Err(Error::InvalidKey(_))
            ));
        }
    }

    #[test]
    fn trailing_newline_from_key_files_is_ignored() {
        let key = PrivateKey::generate();
        let with_newline = format!("{}\n", key.to_base64().as_str());
        let parsed = PrivateKey::from_base64(&with_newline).unwrap();
        assert_eq!(parsed.public_key(), key.public_key());
    }
}
