//! Names: `NAME.DOMAIN` resolves to the EIDs of the node called NAME.
//!
//! The shell reads DNS questions and hands the core each name
//! ([`Xtr::handle_name_query`]); the core decides. A name outside the domain
//! is not ours ([`NameAnswer::NotOurs`]: the shell forwards the question to
//! the host's resolvers). A name in it is looked up in LISP: a Map-Request
//! for the Distinguished-Name EID `NAME` (RFC 8060, see
//! `lisp_wire::mapping`, "Names") to every map-server, retransmitted like an
//! EID lookup until [`NamePolicy::wait`] has passed ([`NameAnswer::Unavailable`]:
//! SERVFAIL). The answer carries the node's EID-records; they are installed
//! at once like a Map-Reply for a packet, and the DNS answer waits until
//! their WireGuard peers are in place (at most [`NamePolicy::program_wait`]),
//! so the tunnel exists (and the node has been told about us) before the
//! application sends its first packet. Answers are cached for the mapping's TTL,
//! negative ones for at most [`NamePolicy::negative_ttl_max`]; concurrent
//! questions for one name share one lookup. When no map-server answers, a
//! name answered before gets its last answer ([`STALE_TTL`], RFC 8767), up
//! to [`NamePolicy::max_stale`] past its TTL.

use crate::io::{Output, Refusal};
use crate::peers::Learned;
use crate::Xtr;
use lisp_wire::{Address, EidPrefix, MapReply, MapRequest, RequestRecord, LISP_CONTROL_PORT};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// The DNS domain of node names unless configured otherwise.
pub const DEFAULT_DOMAIN: &str = "lispwg.internal";

/// The TTL of a stale answer (RFC 8767 recommends 30 s): the client asks
/// again soon, when the map-server may be back.
pub const STALE_TTL: Duration = Duration::from_secs(30);

/// How names are looked up and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePolicy {
    /// Lower case, no trailing dot.
    pub domain: String,
    /// How long a question waits for a map-server before it is answered
    /// [`NameAnswer::Unavailable`]: below a stub resolver's own timeout
    /// (glibc: 5 s), so the application sees SERVFAIL, not silence.
    pub wait: Duration,
    /// The longest a negative answer is cached (a robot that has just
    /// joined should be found soon), whatever the map-server's TTL.
    pub negative_ttl_max: Duration,
    /// Names cached at most; beyond that the entry closest to expiry goes.
    pub max_cached: usize,
    /// Names being looked up at most; questions beyond are Unavailable.
    pub max_pending: usize,
    /// Questions waiting on one name at most.
    pub max_waiters: usize,
    /// How long an answer waits for the WireGuard peers it set up to be in
    /// place (it goes out then, in place or not).
    pub program_wait: Duration,
    /// How long past its TTL an answer is still given when no map-server
    /// answers (then with [`STALE_TTL`]).
    pub max_stale: Duration,
}

impl Default for NamePolicy {
    fn default() -> Self {
        NamePolicy {
            domain: DEFAULT_DOMAIN.into(),
            wait: Duration::from_secs(2),
            negative_ttl_max: Duration::from_secs(10),
            max_cached: 4096,
            max_pending: 256,
            max_waiters: 64,
            program_wait: Duration::from_millis(500),
            max_stale: Duration::from_secs(24 * 3600),
        }
    }
}

/// Identifies a name question when it is answered: chosen by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameQuery(pub u64);

/// What a name question gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameAnswer {
    /// The node's EIDs (its host EIDs: the addresses of the node itself),
    /// valid for `ttl`.
    Addresses { addrs: Vec<IpAddr>, ttl: Duration },
    /// No node has that name, or it is not registered (NXDOMAIN).
    NoSuchName { ttl: Duration },
    /// No map-server answered within [`NamePolicy::wait`] (SERVFAIL).
    Unavailable,
    /// Not in our domain: for the host's resolvers.
    NotOurs,
}

#[derive(Debug)]
pub(crate) struct CachedName {
    addrs: Vec<IpAddr>,
    expires: Instant,
}

#[derive(Debug)]
pub(crate) struct PendingName {
    nonce: u64,
    waiters: Vec<NameQuery>,
    retransmits: u32,
    next: Instant,
    deadline: Instant,
}

/// The names state of the core.
#[derive(Debug, Default)]
pub(crate) struct Names {
    cache: HashMap<String, CachedName>,
    pending: HashMap<String, PendingName>,
    by_nonce: HashMap<u64, String>,
}

impl Names {
    pub(crate) fn timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next.min(p.deadline)).min()
    }
}

/// The node name a question asks for: `Some(Some(name))` for `NAME.DOMAIN`,
/// `Some(None)` for a name in the domain that cannot be a node (the domain
/// itself, a deeper name, a bad label), `None` outside the domain.
fn node_name(domain: &str, question: &str) -> Option<Option<String>> {
    let q = question.strip_suffix('.').unwrap_or(question);
    if q.eq_ignore_ascii_case(domain) {
        return Some(None);
    }
    let at = q.len().checked_sub(domain.len() + 1)?;
    if !q.is_char_boundary(at)
        || q.as_bytes()[at] != b'.'
        || !q[at + 1..].eq_ignore_ascii_case(domain)
    {
        return None;
    }
    let label = &q[..at];
    let ok = (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    Some(ok.then(|| label.to_ascii_lowercase()))
}

impl Xtr {
    /// A DNS question for `name` (any type the shell answers with EIDs:
    /// A, AAAA). The answer comes as [`Output::NameAnswer`] under `query`,
    /// at once or when the map-servers answered or [`NamePolicy::wait`]
    /// passed.
    pub fn handle_name_query(&mut self, now: Instant, query: NameQuery, name: &str) {
        self.counters.name_queries += 1;
        let node = match node_name(&self.policy.names.domain, name) {
            None => {
                self.counters.names_not_ours += 1;
                return self.answer_name(query, NameAnswer::NotOurs);
            }
            Some(None) => {
                let ttl = self.policy.names.negative_ttl_max;
                return self.answer_name(query, NameAnswer::NoSuchName { ttl });
            }
            Some(Some(node)) => node,
        };
        if let Some(c) = self.names.cache.get(&node) {
            if c.expires > now {
                let ttl = c.expires - now;
                let answer = if c.addrs.is_empty() {
                    NameAnswer::NoSuchName { ttl }
                } else {
                    NameAnswer::Addresses {
                        addrs: c.addrs.clone(),
                        ttl,
                    }
                };
                self.counters.names_from_cache += 1;
                return self.answer_name(query, answer);
            }
            // Expired: asked again below. A positive answer is kept, for
            // the case no map-server answers (RFC 8767's serve-stale).
            let too_old = now.saturating_duration_since(c.expires) > self.policy.names.max_stale;
            if c.addrs.is_empty() || too_old {
                self.names.cache.remove(&node);
            }
        }
        let limits = &self.policy.names;
        if let Some(p) = self.names.pending.get_mut(&node) {
            if p.waiters.len() < limits.max_waiters {
                p.waiters.push(query);
            } else {
                self.answer_name(query, NameAnswer::Unavailable);
            }
            return;
        }
        if self.names.pending.len() >= limits.max_pending {
            return self.answer_name(query, NameAnswer::Unavailable);
        }
        let nonce = self.nonces.next_nonce();
        let next = now + self.policy.request_timeout;
        let deadline = now + limits.wait;
        debug!(name = %node, "looking a name up");
        self.send_name_request(now, &node, nonce);
        self.names.by_nonce.insert(nonce, node.clone());
        self.names.pending.insert(
            node,
            PendingName {
                nonce,
                waiters: vec![query],
                retransmits: 0,
                next,
                deadline,
            },
        );
    }

    fn answer_name(&mut self, query: NameQuery, answer: NameAnswer) {
        self.count_name_answer(&answer);
        self.outputs.push_back(Output::NameAnswer { query, answer });
    }

    fn count_name_answer(&mut self, answer: &NameAnswer) {
        match answer {
            NameAnswer::Addresses { .. } => self.counters.name_answers += 1,
            NameAnswer::NoSuchName { .. } => self.counters.names_unknown += 1,
            NameAnswer::Unavailable => self.counters.names_unavailable += 1,
            NameAnswer::NotOurs => {}
        }
    }

    /// An ECM Map-Request for the Distinguished-Name EID `node`, in our
    /// instance, to every map-server.
    fn send_name_request(&mut self, now: Instant, node: &str, nonce: u64) {
        let iid = self.policy.iid();
        let dn = Address::DistinguishedName(node.into());
        let eid = if iid == 0 {
            dn
        } else {
            Address::InstanceId {
                iid,
                iid_mask_len: 0,
                address: Box::new(dn),
            }
        };
        let ctl = self.policy.control_address;
        let source = self
            .policy
            .eids
            .first()
            .map_or(Address::None, |e| e.to_address());
        for (i, ms) in self.policy.map_servers.iter().enumerate() {
            let s = &mut self.servers[i];
            s.unanswered_since = s.unanswered_since.or(Some(now));
            let mut req =
                MapRequest::for_eid(nonce, source.clone(), ctl, EidPrefix::host(iid, ctl));
            req.records = vec![RequestRecord {
                eid_mask_len: (node.len() * 8).min(255) as u8,
                eid: eid.clone(),
            }];
            match req
                .encapsulated(ctl, LISP_CONTROL_PORT, ms.control_address)
                .encode()
            {
                Ok(payload) => {
                    self.counters.requests += 1;
                    self.counters.name_requests += 1;
                    self.outputs.push_back(Output::Transmit {
                        dst: SocketAddr::new(ms.control_address, LISP_CONTROL_PORT),
                        payload,
                    });
                }
                Err(e) => warn!(name = %node, error = %e, "cannot encode a name Map-Request"),
            }
        }
    }

    /// A Map-Reply whose nonce is a name lookup's, if it is one (`None`:
    /// not a name lookup's, for [`Xtr::handle_map_reply`]).
    pub(crate) fn handle_name_reply(
        &mut self,
        now: Instant,
        reply: &MapReply,
    ) -> Option<Result<(), Refusal>> {
        let node = self.names.by_nonce.remove(&reply.nonce)?;
        let pending = self.names.pending.remove(&node)?;
        self.counters.replies += 1;
        let iid = self.policy.iid();
        let mut addrs = Vec::new();
        let mut installed = Vec::new();
        let mut ttl: Option<Duration> = None;
        for record in &reply.records {
            let rec_ttl = Duration::from_secs(60 * u64::from(record.ttl.max(1)));
            let Ok(prefix) = EidPrefix::of_record(record) else {
                // The negative record for the name itself.
                ttl = Some(ttl.map_or(rec_ttl, |t| t.min(rec_ttl)));
                continue;
            };
            if prefix.iid != iid || record.rlocs.is_empty() {
                continue;
            }
            ttl = Some(ttl.map_or(rec_ttl, |t| t.min(rec_ttl)));
            if prefix.is_host() {
                addrs.push(prefix.addr());
            }
            if self.policy.eids.contains(&prefix) {
                // Our own name.
                continue;
            }
            // Program the peer now: the application's first packet will
            // find it (the map-server told the node about us already).
            match self.install(now, record, Learned::Reply) {
                Ok(Some((p, _))) => installed.push(p),
                Ok(None) => {}
                Err(why) => {
                    self.counters.unusable_mappings += 1;
                    warn!(name = %node, eid = %prefix, reason = %why, "named node's mapping cannot be used");
                }
            }
        }
        let answer = if addrs.is_empty() {
            let ttl = ttl
                .unwrap_or(self.policy.names.negative_ttl_max)
                .min(self.policy.names.negative_ttl_max);
            self.counters.negative_replies += 1;
            NameAnswer::NoSuchName { ttl }
        } else {
            NameAnswer::Addresses {
                addrs: addrs.clone(),
                ttl: ttl.unwrap_or(self.policy.names.negative_ttl_max),
            }
        };
        let expires = now
            + match &answer {
                NameAnswer::Addresses { ttl, .. } | NameAnswer::NoSuchName { ttl } => *ttl,
                _ => Duration::ZERO,
            };
        self.cache_name(now, node, CachedName { addrs, expires });
        // The answer waits (briefly) for the peers it set up: the
        // application's first packet then finds its tunnel.
        let deadline = now + self.policy.names.program_wait;
        for q in pending.waiters {
            self.count_name_answer(&answer);
            let out = Output::NameAnswer {
                query: q,
                answer: answer.clone(),
            };
            self.dataplane
                .answer_when_ready(installed.clone(), out, deadline);
        }
        Some(Ok(()))
    }

    fn cache_name(&mut self, now: Instant, node: String, entry: CachedName) {
        let cache = &mut self.names.cache;
        if cache.len() >= self.policy.names.max_cached && !cache.contains_key(&node) {
            // Live answers, and positive ones still worth serving stale.
            let stale = self.policy.names.max_stale;
            cache.retain(|_, c| {
                c.expires > now
                    || !c.addrs.is_empty() && now.saturating_duration_since(c.expires) <= stale
            });
            if cache.len() >= self.policy.names.max_cached {
                let soonest = cache
                    .iter()
                    .min_by_key(|(_, c)| c.expires)
                    .map(|(n, _)| n.clone());
                if let Some(n) = soonest {
                    cache.remove(&n);
                }
            }
        }
        cache.insert(node, entry);
    }

    /// Retransmits name lookups that are due, and answers those whose wait
    /// is over.
    pub(crate) fn names_timeout(&mut self, now: Instant) {
        let due: Vec<String> = self
            .names
            .pending
            .iter()
            .filter(|(_, p)| p.next <= now || p.deadline <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for node in due {
            let Some(p) = self.names.pending.get_mut(&node) else {
                continue;
            };
            if p.deadline <= now {
                let Some(p) = self.names.pending.remove(&node) else {
                    continue;
                };
                self.names.by_nonce.remove(&p.nonce);
                self.counters.name_timeouts += 1;
                // Counted; the silent map-server itself is logged by registration.
                debug!(name = %node, "no map-server answered a name lookup");
                // What we knew, if anything, rather than SERVFAIL: the
                // tunnels of a robot do not end with a map-server outage,
                // its name should not either.
                let stale = self
                    .names
                    .cache
                    .get(&node)
                    .filter(|c| !c.addrs.is_empty())
                    .map(|c| NameAnswer::Addresses {
                        addrs: c.addrs.clone(),
                        ttl: STALE_TTL,
                    });
                if stale.is_some() {
                    self.counters.names_stale += 1;
                }
                let answer = stale.unwrap_or(NameAnswer::Unavailable);
                for q in p.waiters {
                    self.answer_name(q, answer.clone());
                }
                continue;
            }
            p.retransmits += 1;
            p.next = (now + self.policy.request_timeout * 2u32.saturating_pow(p.retransmits))
                .min(p.deadline);
            let nonce = p.nonce;
            self.counters.request_retransmits += 1;
            for i in 0..self.servers.len() {
                self.renew_control_if_silent(now, i, false);
            }
            self.send_name_request(now, &node, nonce);
        }
    }

    /// Drops the cached names whose addresses lie in `prefix`.
    pub(crate) fn forget_names_in(&mut self, prefix: &EidPrefix) {
        self.names
            .cache
            .retain(|_, c| !c.addrs.iter().any(|a| prefix.contains_addr(prefix.iid, *a)));
    }

    /// Names cached now (answers and negative answers, live or not).
    pub fn names_cached(&self) -> usize {
        self.names.cache.len()
    }

    /// Names being looked up now.
    pub fn names_pending(&self) -> usize {
        self.names.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::XtrPolicy;

    #[test]
    fn a_prefix_nobody_has_any_more_takes_its_names_along() {
        let now = Instant::now();
        let eid = EidPrefix::host(0, "10.0.0.1".parse().unwrap());
        let policy = XtrPolicy::new(
            "100.64.0.2".parse().unwrap(),
            [1; 32],
            51820,
            vec![eid],
            Vec::new(),
            Vec::new(),
        );
        let mut x = Xtr::new(policy, now, 7);
        let later = now + Duration::from_secs(600);
        for (name, addr) in [("b", "10.0.0.2"), ("c", "10.0.0.3")] {
            let entry = CachedName {
                addrs: vec![addr.parse().unwrap()],
                expires: later,
            };
            x.cache_name(now, name.into(), entry);
        }
        x.remove_prefix(now, &EidPrefix::host(0, "10.0.0.2".parse().unwrap()));
        assert_eq!(x.names_cached(), 1);
        x.handle_name_query(now, NameQuery(1), "c.lispwg.internal");
        assert!(matches!(
            x.poll_output(),
            Some(Output::NameAnswer {
                answer: NameAnswer::Addresses { .. },
                ..
            })
        ));
    }

    #[test]
    fn node_names_in_and_out_of_the_domain() {
        let d = "lispwg.internal";
        let some = |s: &str| Some(Some(s.to_string()));
        assert_eq!(node_name(d, "robot-b.lispwg.internal"), some("robot-b"));
        assert_eq!(node_name(d, "Robot-B.LispWG.Internal."), some("robot-b"));
        assert_eq!(node_name(d, "lispwg.internal"), Some(None));
        assert_eq!(node_name(d, "a.b.lispwg.internal"), Some(None));
        assert_eq!(node_name(d, ".lispwg.internal"), Some(None));
        assert_eq!(node_name(d, "example.org"), None);
        assert_eq!(node_name(d, "xlispwg.internal"), None);
        assert_eq!(node_name(d, "é.lispwg.internal"), Some(None));
        assert_eq!(node_name(d, "ééé"), None);
    }
}
