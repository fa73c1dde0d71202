//! The join listener: redeems bundles and team keys (see `crate::join` and
//! `conf::join`). Silence for anyone without a valid secret; a reason,
//! inside the Noise answer, for a holder of one that is expired, used up or
//! revoked; a new peer file and a live reload for a new robot.

use super::Shell;
use crate::join::{self, Decision, Grant, JoinToken, Redemption, RefusalKind};
use conf::join::{JoinAnswer, JoinRequest, Joined, JoinedServer, Secret};
use std::net::SocketAddr;
use tracing::{debug, error, info, warn};

/// Join datagrams taken per turn of the event loop, at most.
const JOIN_BATCH: usize = 16;

impl Shell {
    pub(super) fn serve_join(&mut self) {
        let mut buf = vec![0u8; conf::join::MAX_DATAGRAM];
        for _ in 0..JOIN_BATCH {
            let Some(sock) = &self.join else { return };
            let (n, from) = match sock.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.stats.recv_errors += 1;
                    warn!(error = %e, "join socket receive failed");
                    return;
                }
            };
            if let Some(reply) = self.handle_join(from, &buf[..n]) {
                if let Some(sock) = &self.join {
                    if let Err(e) = sock.try_send_to(&reply, from) {
                        self.stats.send_errors += 1;
                        warn!(%from, error = %e, "cannot send the join answer");
                    }
                }
            }
        }
    }

    /// The answer datagram to a join request, or `None`: silence.
    fn handle_join(&mut self, from: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
        let Some((id, msg)) = conf::join::split_request(bytes) else {
            self.join_stats.unknown += 1;
            debug!(%from, "not a join request; dropped");
            return None;
        };
        let token = match join::read_token(&self.cfg.state_dir, &id) {
            Ok(Some(t)) => t,
            Ok(None) => {
                self.join_stats.unknown += 1;
                // Anyone can send these: a line only now and then.
                if self.join_stats.unknown.is_power_of_two() {
                    warn!(%from, token = %id, unknown = self.join_stats.unknown, "join request for an unknown token; dropped without an answer");
                }
                return None;
            }
            Err(e) => {
                error!(token = %id, error = %e, "cannot read the join token");
                return None;
            }
        };
        let secret = Secret::from_base64(&token.secret).ok()?;
        let private = self.ms_private()?;
        let (mut hs, req, robot_key) = match conf::join::read_request(&private, &secret, msg) {
            Ok(x) => x,
            Err(e) => {
                self.join_stats.bad_secret += 1;
                if self.join_stats.bad_secret.is_power_of_two() {
                    warn!(%from, token = %id, error = %e, bad = self.join_stats.bad_secret, "join request that does not decrypt (wrong secret or server key); dropped without an answer");
                }
                return None;
            }
        };
        let robot = wgctl::keys::PublicKey::from_bytes(robot_key).to_base64();
        let past = match self.redemptions(&token.id) {
            Ok(p) => p,
            Err(e) => {
                error!(token = %id, error = %e, "cannot read the token's redemptions");
                return None;
            }
        };
        let policy = self.core.policy();
        let still = |j: &Joined, key: &str| {
            policy.live_peers().any(|(_, p)| {
                p.name == j.name
                    && p.wg_key
                        .map(|k| wgctl::keys::PublicKey::from_bytes(k).to_base64())
                        == Some(key.to_string())
            })
        };
        let decision = join::decide(&token, &past, &robot, join::now_unix(), still);
        let answer = match decision {
            Decision::Again(j) => {
                debug!(%from, name = %j.name, "join answer repeated for the same robot");
                JoinAnswer::Joined(j)
            }
            Decision::Refuse { kind, reason } => {
                let n = match kind {
                    RefusalKind::Expired => &mut self.join_stats.expired,
                    RefusalKind::Reused => &mut self.join_stats.reused,
                    RefusalKind::Revoked => &mut self.join_stats.revoked,
                };
                *n += 1;
                if n.is_power_of_two() {
                    warn!(%from, token = %id, reason = %reason, "join refused");
                }
                JoinAnswer::Refused { reason }
            }
            Decision::Admit => match self.admit(&token, &req, &robot, from, past) {
                Ok(j) => JoinAnswer::Joined(Box::new(j)),
                Err(reason) => {
                    self.join_stats.failed += 1;
                    error!(%from, token = %id, reason = %reason, "join failed");
                    JoinAnswer::Refused { reason }
                }
            },
        };
        match conf::join::answer(&mut hs, &answer) {
            Ok(d) => Some(d),
            Err(e) => {
                error!(error = %e, "cannot encode the join answer");
                None
            }
        }
    }

    fn ms_private(&self) -> Option<[u8; 32]> {
        let key = self.cfg.control.as_ref()?.private_key.to_base64();
        conf::join::decode32(&key).ok()
    }

    fn redemptions(&self, id: &str) -> Result<Vec<Redemption>, String> {
        match self.store.redemptions(id).map_err(|e| e.to_string())? {
            None => Ok(Vec::new()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
        }
    }

    /// A new robot: its peer file, a live reload that takes it, and the
    /// redemption recorded durably; any step failing undoes the ones before.
    fn admit(
        &mut self,
        token: &JoinToken,
        req: &JoinRequest,
        robot: &str,
        from: SocketAddr,
        mut past: Vec<Redemption>,
    ) -> Result<Joined, String> {
        let (Some(ctl), Some(jc)) = (self.cfg.control.clone(), self.cfg.join.clone()) else {
            return Err("this map-server does not enrol".into());
        };
        let tokens = join::list_tokens(&self.cfg.state_dir);
        let (used_ctl, used_eids) = join::used_addresses(&self.cfg, &tokens);
        let (name, eids, iid, control_address) = match &token.grant {
            Grant::Robot {
                name,
                eids,
                iid,
                control_address,
            } => (name.clone(), eids.clone(), *iid, *control_address),
            Grant::Pool { pool, iid } => {
                let name = join::robot_name(req)?;
                let pool = join::parse_prefix(pool, *iid)?;
                let eid = join::next_free(&pool, &used_eids)
                    .ok_or_else(|| format!("the pool {pool} of join key {} is full", token.id))?;
                let tunnel = join::parse_prefix(&format!("{}/{}", ctl.address, ctl.prefix_len), 0)?;
                let control = join::next_free(&tunnel, &used_ctl)
                    .ok_or_else(|| "the control tunnel's prefix is full".to_string())?;
                let host = if eid.is_ipv4() { 32 } else { 128 };
                (name, vec![format!("{eid}/{host}")], *iid, control)
            }
        };
        if self.cfg.peers.iter().any(|p| p.name == name) {
            return Err(format!(
                "the name {name} is taken: join with another (--name)"
            ));
        }
        let file = self.cfg.peers_dir.join(format!("{name}.toml"));
        if file.exists() {
            return Err(format!(
                "the name {name} is taken: join with another (--name)"
            ));
        }
        let site_key = Secret::random().to_base64();
        let text = join::peer_file(
            &name,
            &token.team,
            robot,
            control_address,
            &site_key,
            &eids,
            iid,
        );
        join::write_private(&file, text.as_bytes()).map_err(|e| format!("{e:#}"))?;
        self.reload();
        let taken = self.core.policy().live_peers().any(|(_, p)| p.name == name);
        let undo = |shell: &mut Shell, why: String| {
            let _ = std::fs::remove_file(&file);
            shell.reload();
            Err(why)
        };
        if !taken {
            let why = self
                .reloads
                .last_error
                .clone()
                .unwrap_or_else(|| "the new peer was not taken".into());
            return undo(self, why);
        }
        let joined = Joined {
            name: name.clone(),
            team: token.team.clone(),
            control_address,
            control_prefix_len: ctl.prefix_len,
            eids: eids.clone(),
            iid,
            site_key,
            overlay: jc.overlay.clone(),
            map_server: JoinedServer {
                name: jc.name.clone(),
                endpoint: jc.endpoint.to_string(),
                public_key: ctl.private_key.public_key().to_base64(),
                control_address: ctl.address,
            },
            also: jc.also.clone(),
        };
        past.push(Redemption {
            at_unix: join::now_unix(),
            from: from.to_string(),
            robot_key: robot.to_string(),
            joined: joined.clone(),
        });
        let recorded = serde_json::to_vec(&past)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                self.store
                    .record_redemptions(&token.id, &v)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = recorded {
            return undo(self, format!("cannot record the redemption: {e}"));
        }
        self.join_stats.redeemed += 1;
        info!(%name, team = %token.team, eids = %eids.join(","), %control_address, %from, token = %token.id, "robot enrolled");
        Ok(joined)
    }
}
