//! The clearing message switch.
//!
//! - [`core`]: the deterministic core: sessions, routes, the exchange (matching, timers,
//!   reversals, refunds), shard ownership, journal records.
//! - [`edge`]: sockets and event loops that drive the core.
//! - [`participant`]: the participant directory.
//! - [`clearing`]: clearing windows, positions and reconciliation files from the journal.
//! - [`config`]: configuration and the embedded default.
//! - [`fx`]: the FX rate table (per pair, validity periods, a version).
//! - [`metrics`]: counters and histograms for `/metrics`.
//! - [`status`]: participant and link state for the admin port.
//! - [`journal`]: the per-shard journal: segments, group commit, recovery.
//! - [`retention`]: which journal segments may go once a window has closed.
//! - [`inspect`]: `switch inspect`, the integrator's decoder for QR, ISO 8583 and frames.
//! - [`access`]: admin API tokens and roles; [`audit`]: the audit log (rotated, refusals aggregated).

pub mod access;
pub mod audit;
pub mod clearing;
pub mod config;
pub mod core;
pub mod edge;
pub mod fleet;
pub mod fx;
pub mod inspect;
pub mod journal;
pub mod log_limit;
pub mod metrics;
pub mod notify;
pub mod participant;
pub mod retention;
pub mod status;
