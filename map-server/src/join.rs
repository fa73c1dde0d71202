//! Enrolment on the map-server: join tokens (a bundle for one robot, or a
//! team key for many), what a redemption decides, and where robots are put.
//!
//! Token definitions are files in `<state_dir>/join/<id>.json` (0600,
//! written whole with a rename), because the operator commands that create
//! and revoke them run beside the daemon, which holds the redb store
//! exclusively. The daemon reads a token's file on each attempt, so a
//! revocation needs no reload. Redemptions, the state that changes while
//! the daemon runs, are kept in the redb store, committed durably before
//! the robot is answered.

use conf::join::{JoinRequest, Joined, Secret, TokenId};
use lisp_wire::EidPrefix;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The folder of token files, in `server.state_dir`.
pub const TOKENS_DIR: &str = "join";

/// One join token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    /// The Noise pre-shared key (base64).
    pub secret: String,
    pub team: String,
    pub created_unix: u64,
    pub expires_unix: Option<u64>,
    /// Redemptions it allows (1 for a bundle).
    pub max_uses: u32,
    pub revoked: bool,
    pub grant: Grant,
}

/// What a redemption gets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Grant {
    /// A bundle: this robot, these EIDs, this control address.
    Robot {
        name: String,
        eids: Vec<String>,
        iid: u32,
        control_address: IpAddr,
    },
    /// A team key: the next free host address of the pool, each.
    Pool { pool: String, iid: u32 },
}

/// One redemption, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Redemption {
    pub at_unix: u64,
    /// Where the request came from.
    pub from: String,
    /// The robot's WireGuard key (base64), proven by the handshake.
    pub robot_key: String,
    pub joined: Joined,
}

/// Why a redemption by a holder of the secret is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    Expired,
    Reused,
    Revoked,
}

/// What to do with a request whose secret was right, with the text the
/// robot is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new redemption.
    Admit,
    /// The same robot asking again (its answer was lost): the same answer.
    Again(Box<Joined>),
    Refuse {
        kind: RefusalKind,
        reason: String,
    },
}

/// Decides a redemption of `token` by the robot with key `robot_key`
/// (the core decides: [`map_server_core::enrolment::decide`]; this says it).
pub fn decide(
    token: &JoinToken,
    past: &[Redemption],
    robot_key: &str,
    now_unix: u64,
    still_enrolled: impl Fn(&Joined, &str) -> bool,
) -> Decision {
    use map_server_core::enrolment::{self, Past, Redeem, Token};
    let facts = Token {
        revoked: token.revoked,
        expires_unix: token.expires_unix,
        max_uses: token.max_uses,
    };
    let seen: Vec<Past<'_>> = past
        .iter()
        .map(|r| Past {
            at_unix: r.at_unix,
            robot_key: &r.robot_key,
        })
        .collect();
    let refuse = |kind, reason| Decision::Refuse { kind, reason };
    match enrolment::decide(&facts, &seen, robot_key, now_unix, |i| {
        still_enrolled(&past[i].joined, &past[i].robot_key)
    }) {
        Redeem::Admit => Decision::Admit,
        Redeem::Again { index } => Decision::Again(Box::new(past[index].joined.clone())),
        Redeem::RevokedSinceJoined { index } => refuse(
            RefusalKind::Revoked,
            format!(
                "{} joined with this token and has been revoked since; enrol it again",
                past[index].joined.name
            ),
        ),
        Redeem::Revoked => refuse(
            RefusalKind::Revoked,
            format!("join token {} was revoked", token.id),
        ),
        Redeem::Expired { at_unix } => refuse(
            RefusalKind::Expired,
            format!("join token {} expired at {}", token.id, rfc3339(at_unix)),
        ),
        Redeem::Redeemed { first } => {
            let r = &past[first];
            refuse(
                RefusalKind::Reused,
                format!(
                    "join bundle {} was already redeemed at {} from {} (by {})",
                    token.id,
                    rfc3339(r.at_unix),
                    r.from,
                    r.joined.name
                ),
            )
        }
        Redeem::UsedUp { uses, last } => refuse(
            RefusalKind::Reused,
            format!(
                "join key {} is used up ({uses} of {} uses; the last at {})",
                token.id,
                token.max_uses,
                rfc3339(past[last].at_unix)
            ),
        ),
    }
}

/// `unix` seconds as RFC 3339 (UTC).
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

/// The name a team-key robot gets (see
/// [`map_server_core::enrolment::robot_name`]).
pub fn robot_name(req: &JoinRequest) -> Result<String, String> {
    map_server_core::enrolment::robot_name(req.name.as_deref(), &req.hostname)
}

pub use map_server_core::enrolment::next_free;

pub fn tokens_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKENS_DIR)
}

fn token_path(state_dir: &Path, id: &TokenId) -> PathBuf {
    tokens_dir(state_dir).join(format!("{id}.json"))
}

/// The token with this id, if there is one (and it reads).
pub fn read_token(state_dir: &Path, id: &TokenId) -> Result<Option<JoinToken>, String> {
    let path = token_path(state_dir, id);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Every token, for `join-key list` and allocation.
pub fn list_tokens(state_dir: &Path) -> Vec<JoinToken> {
    let Ok(entries) = std::fs::read_dir(tokens_dir(state_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<JoinToken> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Writes `token`'s file whole (a temporary file, then a rename), 0600.
pub fn write_token(state_dir: &Path, token: &JoinToken) -> anyhow::Result<()> {
    let id: TokenId = token.id.parse()?;
    let text = serde_json::to_string_pretty(token)?;
    write_private(&token_path(state_dir, &id), text.as_bytes())
}

/// Writes a file whole and durably, readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("a file in a folder")?;
    let mut builder = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .recursive(true)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// A fresh secret for a token.
pub fn new_secret() -> Secret {
    Secret::random()
}

/// `a.b.c.d/len` (or IPv6) as an EID prefix of instance `iid`.
pub fn parse_prefix(s: &str, iid: u32) -> Result<EidPrefix, String> {
    let (a, l) = s.split_once('/').unwrap_or((s, ""));
    let addr: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an IP prefix"))?;
    let len = if l.is_empty() {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    } else {
        l.trim()
            .parse::<u8>()
            .map_err(|_| format!("`{s}`: bad prefix length"))?
    };
    EidPrefix::new(iid, addr, len).map_err(|e| format!("`{s}`: {e}"))
}

/// The text of a peer file (what `map-server enroll` would have an
/// operator write by hand). Every value was checked to be plain.
pub fn peer_file(
    name: &str,
    team: &str,
    key: &str,
    control_address: IpAddr,
    site_key: &str,
    eids: &[String],
    iid: u32,
) -> String {
    let eids: Vec<String> = eids
        .iter()
        .map(|e| format!("{{ prefix = \"{e}\", iid = {iid} }}"))
        .collect();
    format!(
        "# Enrolled by `xtr join` at {}.\nname = \"{name}\"\nteam = \"{team}\"\npublic_key = \"{key}\"\ncontrol_address = \"{control_address}\"\nsite_key = \"{site_key}\"\neids = [{}]\n",
        rfc3339(now_unix()),
        eids.join(", ")
    )
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether a team name or peer name is plain (letters, digits, `-`, `_`).
pub fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Control addresses and EIDs already given out: by configured peers and
/// by bundles not yet redeemed.
pub fn used_addresses(
    cfg: &conf::map_server::MapServerConfig,
    tokens: &[JoinToken],
) -> (HashSet<IpAddr>, HashSet<IpAddr>) {
    let mut control: HashSet<IpAddr> = cfg.peers.iter().map(|p| p.control_address).collect();
    if let Some(c) = &cfg.control {
        control.insert(c.address);
    }
    if let Some(j) = &cfg.join {
        control.extend(j.also.iter().map(|a| a.control_address));
    }
    let mut eids: HashSet<IpAddr> = cfg
        .peers
        .iter()
        .flat_map(|p| p.eids.iter().map(|e| e.prefix.addr()))
        .collect();
    for t in tokens {
        if let Grant::Robot {
            control_address,
            eids: e,
            iid,
            ..
        } = &t.grant
        {
            control.insert(*control_address);
            eids.extend(
                e.iter()
                    .filter_map(|p| parse_prefix(p, *iid).ok())
                    .map(|p| p.addr()),
            );
        }
    }
    (control, eids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use conf::join::JoinedServer;

    fn token(max_uses: u32, expires: Option<u64>) -> JoinToken {
        JoinToken {
            id: "00112233445566aa".into(),
            secret: Secret::random().to_base64(),
            team: "red".into(),
            created_unix: 1000,
            expires_unix: expires,
            max_uses,
            revoked: false,
            grant: Grant::Pool {
                pool: "10.0.0.0/24".into(),
                iid: 0,
            },
        }
    }

    fn redeemed(key: &str, at: u64) -> Redemption {
        Redemption {
            at_unix: at,
            from: "192.0.2.10:40000".into(),
            robot_key: key.into(),
            joined: Joined {
                name: "r1".into(),
                team: "red".into(),
                control_address: "100.64.0.9".parse().unwrap(),
                control_prefix_len: 16,
                eids: vec!["10.0.0.1/32".into()],
                iid: 0,
                site_key: "s".into(),
                overlay: vec!["10.0.0.0/8".into()],
                map_server: JoinedServer {
                    name: "ms".into(),
                    endpoint: "192.0.2.1:4340".into(),
                    public_key: "k".into(),
                    control_address: "100.64.0.1".parse().unwrap(),
                },
                also: Vec::new(),
            },
        }
    }

    #[test]
    fn a_bundle_is_single_use_and_the_second_redemption_names_the_first() {
        let t = token(1, None);
        assert_eq!(decide(&t, &[], "k1", 2000, |_, _| true), Decision::Admit);
        let past = [redeemed("k1", 2000)];
        // The same robot again (its answer was lost): the same answer.
        assert!(
            matches!(decide(&t, &past, "k1", 2001, |_, _| true), Decision::Again(j) if j.name == "r1")
        );
        match decide(&t, &past, "k2", 2002, |_, _| true) {
            Decision::Refuse {
                kind: RefusalKind::Reused,
                reason,
            } => {
                assert!(
                    reason.contains("already redeemed at 1970-01-01T00:33:20Z"),
                    "{reason}"
                );
                assert!(reason.contains("from 192.0.2.10:40000"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expired_revoked_and_used_up_tokens_are_refused() {
        let t = token(3, Some(5000));
        assert!(matches!(
            decide(&t, &[], "k", 5000, |_, _| true),
            Decision::Refuse { kind: RefusalKind::Expired, reason } if reason.contains("expired at")
        ));
        let mut r = token(3, None);
        r.revoked = true;
        assert!(matches!(
            decide(&r, &[], "k", 1, |_, _| true),
            Decision::Refuse {
                kind: RefusalKind::Revoked,
                ..
            }
        ));
        let past: Vec<_> = (0..3).map(|i| redeemed(&format!("k{i}"), 10 + i)).collect();
        assert_eq!(
            decide(&t, &past[..2], "new", 20, |_, _| true),
            Decision::Admit
        );
        assert!(matches!(
            decide(&t, &past, "new", 20, |_, _| true),
            Decision::Refuse { kind: RefusalKind::Reused, reason } if reason.contains("3 of 3")
        ));
    }

    #[test]
    fn names_come_from_the_request_or_the_hostname() {
        let req = |name: Option<&str>, host: &str| JoinRequest {
            name: name.map(str::to_string),
            hostname: host.into(),
        };
        assert_eq!(robot_name(&req(None, "Robot-7")).unwrap(), "robot-7");
        assert_eq!(robot_name(&req(Some("r2"), "x")).unwrap(), "r2");
        assert!(robot_name(&req(None, "bad name")).is_err());
        assert!(robot_name(&req(Some(""), "x")).is_err());
    }
}
