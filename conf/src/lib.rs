//! # conf: lispwg configuration
//!
//! Both daemons read a TOML file, optionally overridden by environment
//! variables (`LISPWG_MS__SECTION__FIELD` for the map-server,
//! `LISPWG_XTR__SECTION__FIELD` for the xtr). Loading is two steps: serde reads
//! the file into raw structs of plain strings and numbers, then `validate`
//! turns them into typed configuration, so that every error can name the
//! file, the field path and what is wrong with its value.
//!
//! Secrets (private keys, site keys) live in files that only their owner may
//! read; the loader refuses files that group or others can read, and refuses a
//! configuration file holding an inline site key under the same rule.

pub mod join;
pub mod json;
pub mod logging;
pub mod map_server;
pub mod metrics;
pub mod service;
pub mod telemetry;
pub mod xtr;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub use wgctl::keys::{PrivateKey, PublicKey};
pub use wgctl::BackendKind;

/// A configuration problem, located as precisely as it can be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {field}: {problem}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the field, e.g. `peers[1].eids[0].prefix`; `-` for the
    /// file as a whole.
    pub field: String,
    pub problem: String,
}

/// A shared HMAC key for Map-Register / Map-Notify authentication. Zeroed on
/// drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SiteKey(Zeroizing<Vec<u8>>);

impl SiteKey {
    pub fn new(bytes: Vec<u8>) -> Self {
        SiteKey(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SiteKey(<redacted>)")
    }
}

/// Collects field errors against one file.
pub(crate) struct Checker {
    file: PathBuf,
}

impl Checker {
    pub(crate) fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn ip(&self, field: &str, value: &str) -> Result<IpAddr, ConfigError> {
        value
            .trim()
            .parse()
            .map_err(|_| self.err(field, format!("`{value}` is not an IP address")))
    }

    pub(crate) fn socket(&self, field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.trim().parse().map_err(|_| {
            self.err(
                field,
                format!("`{value}` is not an address:port (IPv6 as [addr]:port)"),
            )
        })
    }

    /// `addr/len`, or a bare address meaning a host prefix.
    pub(crate) fn prefix(&self, field: &str, value: &str) -> Result<(IpAddr, u8), ConfigError> {
        let (addr, len) = match value.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (value.trim(), None),
        };
        let addr = self.ip(field, addr)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|&l| l <= max).ok_or_else(|| {
                self.err(
                    field,
                    format!("`{value}`: prefix length must be 0 to {max}"),
                )
            })?,
        };
        Ok((addr, len))
    }

    pub(crate) fn eid(
        &self,
        field: &str,
        iid: u32,
        value: &str,
    ) -> Result<lisp_wire::EidPrefix, ConfigError> {
        let (addr, len) = self.prefix(field, value)?;
        let prefix = lisp_wire::EidPrefix::new(iid, addr, len)
            .map_err(|e| self.err(field, e.to_string()))?;
        if prefix.addr() != addr {
            return Err(self.err(
                field,
                format!(
                    "`{value}` has host bits set; did you mean {}/{len}?",
                    prefix.addr()
                ),
            ));
        }
        Ok(prefix)
    }

    pub(crate) fn public_key(&self, field: &str, value: &str) -> Result<PublicKey, ConfigError> {
        PublicKey::from_base64(value.trim()).map_err(|_| {
            self.err(
                field,
                "not a WireGuard public key (44 characters of base64, as `wg pubkey` prints)",
            )
        })
    }

    /// Resolves a path relative to the configuration file's folder.
    pub(crate) fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// Reads a secret file, refusing one that group or others can read.
    pub(crate) fn secret_file(
        &self,
        field: &str,
        value: &str,
    ) -> Result<Zeroizing<String>, ConfigError> {
        let path = self.path(value);
        let meta = std::fs::metadata(&path)
            .map_err(|e| self.err(field, format!("{}: {e}", path.display())))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(self.err(
                field,
                format!(
                    "{} is readable by group or others (mode {:o}); run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                ),
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| self.err(field, format!("{}: {e}", path.display())))?;
        Ok(Zeroizing::new(text))
    }

    pub(crate) fn private_key_file(
        &self,
        field: &str,
        value: &str,
    ) -> Result<PrivateKey, ConfigError> {
        let text = self.secret_file(field, value)?;
        PrivateKey::from_base64(text.trim())
            .map_err(|_| self.err(field, format!("{} does not hold a WireGuard private key (as `wg genkey` or `xtr genkey` writes)", self.path(value).display())))
    }

    /// A site key given inline or in a file (exactly one of the two).
    pub(crate) fn site_key(
        &self,
        field: &str,
        inline: &Option<String>,
        file: &Option<String>,
    ) -> Result<SiteKey, ConfigError> {
        let key = match (inline, file) {
            (Some(k), None) => {
                self.require_private_file(&format!("{field}.site_key"))?;
                k.as_bytes().to_vec()
            }
            (None, Some(f)) => self
                .secret_file(&format!("{field}.site_key_file"), f)?
                .trim_end_matches(['\n', '\r'])
                .as_bytes()
                .to_vec(),
            (Some(_), Some(_)) => {
                return Err(self.err(field, "give site_key or site_key_file, not both"))
            }
            (None, None) => return Err(self.err(field, "site_key or site_key_file is required")),
        };
        if key.is_empty() {
            return Err(self.err(field, "the site key is empty"));
        }
        Ok(SiteKey::new(key))
    }

    /// A file holding inline secrets must itself be private.
    fn require_private_file(&self, field: &str) -> Result<(), ConfigError> {
        let mode = std::fs::metadata(&self.file)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(self.err(
                field,
                format!(
                    "an inline site key needs the configuration file to be private, but it has mode {:o}; run `chmod 600 {}` or use site_key_file",
                    mode & 0o777,
                    self.file.display()
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn ifname(&self, field: &str, value: &str) -> Result<String, ConfigError> {
        let ok = !value.is_empty()
            && value.len() <= 15
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(self.err(
                field,
                format!("`{value}` is not a valid interface name (1 to 15 of a-z, 0-9, -, _, .)"),
            ));
        }
        Ok(value.to_string())
    }
}

/// Reads `file` and the environment overrides under `env_prefix` into `T`.
///
/// Only variables whose first segment names a top-level key of `T`
/// (`known`) are applied: a stray `PREFIX__SOMETHING` from the environment is
/// ignored and reported in the returned list, instead of aborting start-up.
pub(crate) fn load_raw<T: serde::de::DeserializeOwned>(
    file: &Path,
    env_prefix: &str,
    known: &[&str],
) -> Result<(T, Vec<String>), ConfigError> {
    let c = Checker {
        file: file.to_path_buf(),
    };
    if !file.exists() {
        return Err(c.err("-", "file not found"));
    }
    let mut env = config::Map::new();
    let mut ignored = Vec::new();
    let head = format!("{env_prefix}__");
    for (k, v) in std::env::vars() {
        let Some(rest) = k.strip_prefix(&head) else {
            continue;
        };
        let first = rest.split("__").next().unwrap_or("").to_ascii_lowercase();
        if known.contains(&first.as_str()) {
            env.insert(k, v);
        } else {
            ignored.push(k);
        }
    }
    let built = config::Config::builder()
        .add_source(config::File::from(file).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(env_prefix)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        )
        .build()
        .map_err(|e| c.err("-", e.to_string()))?;
    let raw = built.try_deserialize::<T>().map_err(|e| {
        let text = e.to_string();
        // config reports "… for key `a.b`"; lift the key into the field slot.
        match text.split_once(" for key `") {
            Some((problem, rest)) => c.err(dotted(rest.split('`').next().unwrap_or("-")), problem),
            None => c.err("-", text),
        }
    })?;
    strict_types::<T>(&c, file)?;
    Ok((raw, ignored))
}

/// The config crate turns `"51820"` into a number and `"yes"` into a bool
/// when it builds the settings. The file itself is first held to TOML's own
/// types: a string where a number or a boolean belongs is refused, with its
/// line. (Environment overrides are strings by nature and stay lenient.)
fn strict_types<T: serde::de::DeserializeOwned>(
    c: &Checker,
    file: &Path,
) -> Result<(), ConfigError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| c.err("-", format!("cannot read: {e}")))?;
    let Err(e) = toml::from_str::<T>(&text) else {
        return Ok(());
    };
    // Missing fields may come from the environment: the full load below
    // reports those.
    if !e.message().starts_with("invalid type") {
        return Ok(());
    }
    let line = e
        .span()
        .map(|s| 1 + text[..s.start.min(text.len())].matches('\n').count());
    let field = line.map_or("-".to_string(), |l| format!("line {l}"));
    Err(c.err(field, e.message().trim().to_string()))
}

/// `peers[0]eids[0]iid` (as config prints it) → `peers[0].eids[0].iid`.
fn dotted(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    let mut prev = ' ';
    for ch in path.chars() {
        if prev == ']' && ch != '[' && ch != '.' {
            out.push('.');
        }
        out.push(ch);
        prev = ch;
    }
    out
}

pub(crate) fn checker(file: &Path) -> Checker {
    Checker {
        file: file.to_path_buf(),
    }
}

fn default_backend() -> String {
    "auto".into()
}

pub(crate) fn backend(c: &Checker, field: &str, value: &str) -> Result<BackendKind, ConfigError> {
    value.parse().map_err(|e: String| c.err(field, e))
}

/// The map-server's node API (relay grants), on its control address inside
/// the control tunnel: reachable only by nodes with a configured key.
pub const NODE_API_PORT: u16 = 4343;

/// The DNS domain of node names unless configured otherwise (`.internal` is
/// reserved for private use, so it never clashes with a public name).
pub const DEFAULT_DOMAIN: &str = "lispwg.internal";

/// Checks a DNS domain for node names: dot-separated labels of letters,
/// digits and hyphens (not at either end), 1 to 63 bytes each, at most 200
/// bytes in all (room for a node name in front). Returns it in lower case,
/// without a trailing dot.
pub fn dns_domain(s: &str) -> Result<String, String> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.len() > 200 {
        return Err(format!("`{s}`: a domain is 1 to 200 bytes"));
    }
    for label in d.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "`{s}`: label `{label}` is not 1 to 63 letters, digits or inner hyphens"
            ));
        }
    }
    Ok(d)
}

#[cfg(test)]
mod domain_tests {
    use super::dns_domain;

    #[test]
    fn domains() {
        assert_eq!(dns_domain("Lispwg.Internal.").unwrap(), "lispwg.internal");
        assert_eq!(dns_domain("fleet-1.example").unwrap(), "fleet-1.example");
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "é.x",
            &"a".repeat(64),
        ] {
            assert!(dns_domain(bad).is_err(), "{bad:?}");
        }
    }
}
