//! systemd-resolved: where it runs, the agent becomes the DNS server of its
//! WireGuard interface for DOMAIN (names under it, and only those, are
//! sent to us: the link is never resolved's default route), and reverts
//! that on a clean shutdown. Done with `resolvectl` (its `dns`, `domain`,
//! `default-route`, `revert` verbs are D-Bus SetLinkDNS, SetLinkDomains,
//! SetLinkDefaultRoute, RevertLink underneath), behind [`Resolvectl`] so
//! that the calls can be checked without resolved.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `resolvectl ARGS…`; `Err` with what went wrong (it is absent, it
/// failed, or it hung).
pub trait Resolvectl {
    fn run(&mut self, args: &[String]) -> Result<(), String>;
}

/// The real `resolvectl`, each call bounded to [`SystemResolvectl::WAIT`].
pub struct SystemResolvectl;

impl SystemResolvectl {
    /// resolvectl waits up to 25 s on D-Bus by default: far too long for
    /// a start-up step.
    const WAIT: Duration = Duration::from_secs(5);
}

impl Resolvectl for SystemResolvectl {
    fn run(&mut self, args: &[String]) -> Result<(), String> {
        let mut child = Command::new("resolvectl")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("resolvectl: {e}"))?;
        let deadline = Instant::now() + Self::WAIT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("resolvectl {}: {status}", args.join(" "))),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("resolvectl {}: no answer in 5 s", args.join(" ")));
                }
                Err(e) => return Err(format!("resolvectl: {e}")),
            }
        }
    }
}

/// Our registration with resolved, to revert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub interface: String,
}

/// Registers `listen` as the DNS server of `interface` for `~domain` (a
/// routing-only domain), or with `search` for `domain` (routing and
/// search: a bare `robot-b` is tried as `robot-b.domain`).
/// `Ok(None)`: resolved does not run here (`resolvectl status` fails).
pub fn register(
    r: &mut impl Resolvectl,
    interface: &str,
    listen: SocketAddr,
    domain: &str,
    search: bool,
) -> Result<Option<Registration>, String> {
    if r.run(&["status".into()]).is_err() {
        return Ok(None);
    }
    // resolvectl takes ADDR, or ADDR:PORT / [ADDR]:PORT (systemd 246 on).
    let server = if listen.port() == 53 {
        listen.ip().to_string()
    } else {
        listen.to_string()
    };
    r.run(&["dns".into(), interface.into(), server])?;
    let registration = Registration {
        interface: interface.into(),
    };
    let routing = if search {
        domain.to_string()
    } else {
        format!("~{domain}")
    };
    // Never the default route: without a routing-only (~) domain resolved
    // would send every name our way, and we forward what is not ours to
    // the host's resolver, resolved itself: a loop.
    let steps = [
        vec!["domain".into(), interface.into(), routing],
        vec!["default-route".into(), interface.into(), "false".into()],
    ];
    for step in steps {
        if let Err(e) = r.run(&step) {
            // Half a registration is worse than none: undo it.
            let _ = revert(r, &registration);
            return Err(e);
        }
    }
    Ok(Some(registration))
}

/// Drops what [`register`] set on the interface.
pub fn revert(r: &mut impl Resolvectl, reg: &Registration) -> Result<(), String> {
    r.run(&["revert".into(), reg.interface.clone()])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the calls; fails those whose verb is in `failing`.
    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
        failing: Vec<&'static str>,
    }

    impl Resolvectl for Fake {
        fn run(&mut self, args: &[String]) -> Result<(), String> {
            self.calls.push(args.join(" "));
            match self.failing.contains(&args[0].as_str()) {
                true => Err(format!("{} failed", args[0])),
                false => Ok(()),
            }
        }
    }

    #[test]
    fn registers_the_interface_for_the_routing_domain_and_reverts() {
        let mut r = Fake::default();
        let listen = "100.64.0.2:53".parse().unwrap();
        let reg = register(&mut r, "lwrobota", listen, "lispwg.internal", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            r.calls,
            [
                "status",
                "dns lwrobota 100.64.0.2",
                "domain lwrobota ~lispwg.internal",
                "default-route lwrobota false"
            ]
        );
        revert(&mut r, &reg).unwrap();
        assert_eq!(r.calls.last().unwrap(), "revert lwrobota");
        // As a search domain too: no tilde.
        let mut r = Fake::default();
        register(&mut r, "lwrobota", listen, "lispwg.internal", true).unwrap();
        assert_eq!(r.calls[2], "domain lwrobota lispwg.internal");
        assert_eq!(r.calls[3], "default-route lwrobota false");
    }

    #[test]
    fn a_port_other_than_53_is_given_and_a_half_registration_undone() {
        let mut r = Fake {
            failing: vec!["domain"],
            ..Fake::default()
        };
        let listen = "[fd00::2]:5353".parse().unwrap();
        assert!(register(&mut r, "wg0", listen, "fleet.example", false).is_err());
        assert_eq!(
            r.calls,
            [
                "status",
                "dns wg0 [fd00::2]:5353",
                "domain wg0 ~fleet.example",
                "revert wg0"
            ]
        );
        // A resolved too old for default-route: undone as well, rather
        // than risk becoming its default route.
        let mut r = Fake {
            failing: vec!["default-route"],
            ..Fake::default()
        };
        assert!(register(&mut r, "wg0", listen, "fleet.example", true).is_err());
        assert_eq!(r.calls.last().unwrap(), "revert wg0");
    }

    #[test]
    fn without_resolved_nothing_is_changed() {
        let mut r = Fake {
            failing: vec!["status"],
            ..Fake::default()
        };
        let listen = "100.64.0.2:53".parse().unwrap();
        assert_eq!(
            register(&mut r, "wg0", listen, "lispwg.internal", true),
            Ok(None)
        );
        assert_eq!(r.calls, ["status"]);
    }
}
