//! lispwg's side of the campus relay (coturn, TURN RFC 8656).
//!
//! - [`grant`]: the relay servers and time-limited credentials a map-server
//!   hands each node over the control tunnel.
//! - [`allocation`]: one TURN allocation, sans-IO, on turn-client-proto;
//!   the agent's shell owns the sockets.
//! - [`framing`]: TURN over TCP and TLS.
//! - [`probe`]: the self-check datagram an allocation sends to its own
//!   relayed address, to notice a relay that lost it (a restarted coturn
//!   drops our packets without a word).
//!
//! Nothing here does I/O or reads a clock: time comes in as arguments.

pub mod allocation;
pub mod framing;
pub mod grant;
pub mod probe;

pub use allocation::{Allocation, Event, SendError};
pub use grant::{credentials, spki_pin, Grant, GrantError, RelayServer, Transport};
