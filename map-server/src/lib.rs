//! # map-server: the lispwg mapping database
//!
//! A sans-IO protocol core ([`server::MapServer`]) over a longest-prefix-match
//! [`registry::Registry`], and the tokio [`shell`] that runs it over the
//! WireGuard control tunnel, persisting registrations in a crash-safe
//! [`store`].

pub mod counters;
pub mod policy;
pub mod registry;
pub mod server;
pub mod shell;
pub mod store;

pub use policy::{AllowedEid, NotifyTiming, PeerPolicy, Policy};
pub use registry::{Mapping, Origin, Registry, Rloc};
pub use server::{mapping_record, MapServer, Refusal, StoreOp, Transmit, Via, MAX_PEERS};
