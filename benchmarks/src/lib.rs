//! Shared pieces of the benchmarks: the baseline encodings we compare the codec against.
//!
//! The baseline is what a team would write without our frame format: the same payment
//! request as an idiomatic serde struct (owned `String`s), encoded with bincode 1.3.

pub mod baseline;
