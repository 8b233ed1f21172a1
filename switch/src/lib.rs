//! The clearing message switch, in wings that name its architecture:
//!
//! - [`core`]: the deterministic core: sessions, routes, the exchange (matching, timers,
//!   reversals, refunds), shard ownership, journal records. No I/O, no clock.
//! - [`edge`]: sockets, threads and event loops that drive the core, the admin port, and
//!   the control plane (window closes, onboarding changes, rate reloads).
//! - [`durability`]: the per-shard journal (segments, head, group commit's writes,
//!   recovery) and retention.
//! - [`settlement`]: clearing windows, positions and reconciliation files, and the fleet's
//!   publication to one stream.
//! - [`ops`]: metrics, status, admin access and audit, systemd notification, log limits.
//! - [`config`]: configuration files and the embedded default.
//! - [`participant`]: the participant directory; [`fx`]: the FX rate table (per pair,
//!   validity periods, a version).
//! - [`inspect`]: `switch inspect`, the integrator's decoder for QR, ISO 8583 and frames.

pub mod config;
pub mod core;
pub mod durability;
pub mod edge;
pub mod fx;
pub mod inspect;
pub mod ops;
pub mod participant;
pub mod settlement;
