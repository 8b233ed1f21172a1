//! The clearing message switch.
//!
//! - [`core`]: the deterministic core (sessions now; routing, matching and timers next).
//! - [`edge`]: sockets and event loops that drive the core.
//! - [`participant`]: the participant directory.
//! - [`config`]: configuration and the embedded default.

pub mod config;
pub mod core;
pub mod edge;
pub mod participant;
