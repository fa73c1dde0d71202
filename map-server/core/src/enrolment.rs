//! Enrolment decisions: whether a redemption of a join token is admitted,
//! answered again or refused, which name a robot gets, and which address of
//! a pool comes next. The shell reads the token and its redemptions, runs
//! the Noise handshake, and carries out what is decided here (the peer
//! file, the reload, the record).

use lisp_wire::EidPrefix;
use std::collections::HashSet;
use std::net::IpAddr;

/// What decides a redemption, from the token's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub revoked: bool,
    pub expires_unix: Option<u64>,
    /// Redemptions it allows (1 for a bundle).
    pub max_uses: u32,
}

/// One earlier redemption of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Past<'a> {
    pub at_unix: u64,
    /// The WireGuard key (base64) the robot proved then.
    pub robot_key: &'a str,
}

/// What to do with a request whose secret was right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeem {
    /// A new redemption.
    Admit,
    /// The same robot asking again (its answer was lost): the answer of
    /// redemption `index`, unchanged.
    Again {
        index: usize,
    },
    /// The same robot, which has been revoked since it joined.
    RevokedSinceJoined {
        index: usize,
    },
    Revoked,
    Expired {
        at_unix: u64,
    },
    /// A single-use bundle, redeemed already by redemption `first`.
    Redeemed {
        first: usize,
    },
    /// A key whose uses are all taken; the last was redemption `last`.
    UsedUp {
        uses: usize,
        last: usize,
    },
}

impl Redeem {
    /// Whether the robot gets a configuration.
    pub fn admits(self) -> bool {
        matches!(self, Redeem::Admit | Redeem::Again { .. })
    }
}

/// Decides a redemption of `token` by the robot with `robot_key`, after
/// `past`; `still_enrolled(i)` says whether the robot of redemption `i` is
/// still a peer.
pub fn decide(
    token: &Token,
    past: &[Past<'_>],
    robot_key: &str,
    now_unix: u64,
    still_enrolled: impl Fn(usize) -> bool,
) -> Redeem {
    if let Some(index) = past.iter().position(|p| p.robot_key == robot_key) {
        return if still_enrolled(index) {
            Redeem::Again { index }
        } else {
            Redeem::RevokedSinceJoined { index }
        };
    }
    if token.revoked {
        return Redeem::Revoked;
    }
    if let Some(at_unix) = token.expires_unix.filter(|&e| now_unix >= e) {
        return Redeem::Expired { at_unix };
    }
    if past.len() as u64 >= u64::from(token.max_uses) {
        return if token.max_uses == 1 {
            Redeem::Redeemed { first: 0 }
        } else {
            Redeem::UsedUp {
                uses: past.len(),
                last: past.len().saturating_sub(1),
            }
        };
    }
    Redeem::Admit
}

/// The name a team-key robot gets: the one it asked for, else its
/// hostname's first label (`robot1` of `robot1.lab.example`), lower case;
/// letters, digits and `-` only, at most 63: one DNS label.
pub fn robot_name(asked: Option<&str>, hostname: &str) -> Result<String, String> {
    let short = hostname.trim().split('.').next().unwrap_or("");
    let name = asked.unwrap_or(short).trim().to_ascii_lowercase();
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        || name.starts_with('-')
    {
        return Err(format!(
            "`{name}` is not a usable name (letters, digits and -, at most 63): give one with --name"
        ));
    }
    Ok(name)
}

/// The first host address of `pool` that is not `used`, skipping the
/// network and (IPv4) broadcast addresses; at most 65 536 are looked at.
pub fn next_free(pool: &EidPrefix, used: &HashSet<IpAddr>) -> Option<IpAddr> {
    let len = pool.prefix_len();
    match pool.addr() {
        IpAddr::V4(a) => {
            let base = u32::from(a);
            let size = 1u64 << (32 - u32::from(len));
            let (first, last) = if size <= 2 { (0, size) } else { (1, size - 1) };
            (first..last.min(first + 65_536))
                .map(|i| IpAddr::V4((base + i as u32).into()))
                .find(|ip| !used.contains(ip))
        }
        IpAddr::V6(a) => {
            let base = u128::from(a);
            let bits = 128 - u32::from(len);
            let size: u128 = if bits >= 64 { 1 << 64 } else { 1 << bits };
            (1..size.min(65_536))
                .map(|i| IpAddr::V6((base + i).into()))
                .find(|ip| !used.contains(ip))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: Token = Token {
        revoked: false,
        expires_unix: None,
        max_uses: 1,
    };

    #[test]
    fn a_bundle_is_single_use_and_its_robot_may_ask_again() {
        let yes = |_| true;
        assert_eq!(decide(&BUNDLE, &[], "k1", 10, yes), Redeem::Admit);
        let past = [Past {
            at_unix: 10,
            robot_key: "k1",
        }];
        assert_eq!(
            decide(&BUNDLE, &past, "k1", 11, yes),
            Redeem::Again { index: 0 }
        );
        assert_eq!(
            decide(&BUNDLE, &past, "k1", 11, |_| false),
            Redeem::RevokedSinceJoined { index: 0 }
        );
        assert_eq!(
            decide(&BUNDLE, &past, "k2", 12, yes),
            Redeem::Redeemed { first: 0 }
        );
        assert!(!Redeem::Redeemed { first: 0 }.admits());
    }

    #[test]
    fn expired_revoked_and_used_up_keys_are_refused() {
        let yes = |_| true;
        let key = Token {
            revoked: false,
            expires_unix: Some(100),
            max_uses: 2,
        };
        assert_eq!(
            decide(&key, &[], "k", 100, yes),
            Redeem::Expired { at_unix: 100 }
        );
        let revoked = Token {
            revoked: true,
            ..key
        };
        assert_eq!(decide(&revoked, &[], "k", 1, yes), Redeem::Revoked);
        let past = [
            Past {
                at_unix: 1,
                robot_key: "a",
            },
            Past {
                at_unix: 2,
                robot_key: "b",
            },
        ];
        assert_eq!(decide(&key, &past[..1], "c", 3, yes), Redeem::Admit);
        assert_eq!(
            decide(&key, &past, "c", 3, yes),
            Redeem::UsedUp { uses: 2, last: 1 }
        );
    }

    #[test]
    fn pools_hand_out_the_next_free_host() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let pool = EidPrefix::new(0, ip("10.0.0.0"), 30).unwrap();
        let mut used = HashSet::new();
        assert_eq!(next_free(&pool, &used), Some(ip("10.0.0.1")));
        used.insert(ip("10.0.0.1"));
        assert_eq!(next_free(&pool, &used), Some(ip("10.0.0.2")));
        used.insert(ip("10.0.0.2"));
        assert_eq!(
            next_free(&pool, &used),
            None,
            "network and broadcast are skipped"
        );
        let host = EidPrefix::new(0, ip("10.0.0.7"), 32).unwrap();
        assert_eq!(next_free(&host, &HashSet::new()), Some(ip("10.0.0.7")));
    }

    #[test]
    fn names_come_from_the_request_or_the_hostname() {
        assert_eq!(robot_name(None, "Robot-7").unwrap(), "robot-7");
        assert_eq!(robot_name(Some("r2"), "x").unwrap(), "r2");
        assert_eq!(robot_name(None, "robot1.lab.example").unwrap(), "robot1");
        assert!(robot_name(None, "bad name").is_err());
        assert!(robot_name(Some(""), "x").is_err());
        assert!(robot_name(Some("-x"), "x").is_err());
    }
}
