//! The edge: sockets and event loops that drive the deterministic core.

pub mod admin;
pub mod closing;
pub mod commit;
pub mod control;
pub mod gate;
pub mod iso;
pub mod recovery;
pub mod shard;
pub mod tcp;
pub mod thread;
pub mod tls;
pub mod transport;
pub mod writes;

/// The clocks the core needs, read once per batch: monotonic since `started` for
/// deadlines, wall clock for message timestamps. The only place the switch reads clocks.
pub(crate) fn now(started: std::time::Instant) -> crate::core::session::Now {
    let unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    crate::core::session::Now { monotonic_ms: started.elapsed().as_millis() as u64, unix_ms }
}
