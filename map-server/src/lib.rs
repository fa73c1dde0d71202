//! # map-server: the lispwg mapping database daemon
//!
//! The protocol logic is the sans-IO [`map_server_core::MapServer`]. This
//! crate is its tokio [`shell`] (the WireGuard control tunnel, the sockets,
//! the clock), the crash-safe [`store`] that carries out its commits, the
//! batched UDP I/O it serves the sockets with ([`udp`]), and the [`status`]
//! page.

pub mod admin;
pub mod join;
pub mod node_api;
pub mod shell;
pub mod status;
pub mod status_json;
pub mod store;
pub mod udp;

pub use map_server_core as core;
