//! The edge: sockets and event loops that drive the deterministic core.

pub mod admin;
pub mod exchange;
pub mod tcp;
