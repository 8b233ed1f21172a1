//! The deterministic core: protocol and transaction logic that takes `now` and inputs and
//! returns actions. No sockets, no clocks, no threads; the edge drives it.

pub mod exchange;
pub mod record;
pub mod routes;
pub mod session;
pub mod shard;
pub mod timers;
