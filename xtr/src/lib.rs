//! # xtr: the lispwg agent
//!
//! Turns "send a packet to an EID I have never talked to" into a direct
//! WireGuard tunnel: the miss TUN captures the packet, the core resolves the
//! EID with the map-servers and programs a WireGuard peer, and the held packet
//! is re-injected. [`core::Xtr`] is the sans-IO protocol core.

pub mod core;
pub mod packet;
pub mod policy;
pub mod shell;

pub use crate::core::{CacheStatus, Counters, MapServerStatus, Output, PeerStats, Xtr};
pub use policy::{LocalRloc, MapServerPeer, XtrPolicy};
