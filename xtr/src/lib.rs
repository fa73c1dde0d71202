//! # xtr: the lispwg agent
//!
//! Turns "send a packet to an EID I have never talked to" into a direct
//! WireGuard tunnel: the miss TUN captures the packet, the core resolves the
//! EID with the map-servers and programs a WireGuard peer, and the held packet
//! is re-injected. The protocol logic is the sans-IO [`xtr_core::Xtr`]; this
//! crate is its tokio [`shell`] and the [`status`] page.

pub mod dns;
pub mod join;
pub mod relay;
pub mod resolved;
pub mod rotate;
pub mod shell;
pub mod status;
pub mod status_json;
pub mod tlspin;

pub use xtr_core as core;
