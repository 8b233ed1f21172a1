//! The load generator: plays participants against the switch over the wire, as real
//! participants do. Depends on `codec` only, never on `switch`.
//!
//! - [`profile`], [`schedule`]: holiday profiles (data files) and the rate and arrivals
//!   they give; [`traffic`]: the mix turned into requests; [`participants`]: who plays.
//! - [`client`]: one participant session (connect, mutually authenticated sign-on,
//!   frames both ways); [`peer`]: a connection that originates its share of the schedule
//!   and answers what the switch forwards ([`responder`]: latency, declines, faults).
//! - [`engine`]: an open-loop run from sign-on to [`engine::Outcome`], with latency from
//!   each request's intended send time (no coordinated omission) and the live view;
//!   [`stats`]: the counters and histograms it gathers.
//! - [`report`]: table, summary JSON, `.hgrm`, `.hlog`, HTML; [`threshold`]: gates.
//! - [`capacity`]: the capacity search and the fleet plan; [`reconcile`]: the record
//!   against the switch's clearing files.
//! - [`run`], [`issuer`]: the closed loop (throughput at a fixed number in flight).
//! - [`sink`]: a trivial switch, to measure the generator itself.
//! - [`cpu`]: the generator's and the switch's CPU time.
//! - [`cli`]: the command line (also run by `switch demo`).

pub mod capacity;
pub mod cli;
pub mod client;
pub mod cpu;
pub mod engine;
pub mod issuer;
pub mod participants;
pub mod peer;
pub mod profile;
pub mod reconcile;
pub mod report;
pub mod responder;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod sink;
pub mod stats;
pub mod threshold;
pub mod tls;
pub mod traffic;
