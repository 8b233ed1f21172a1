//! Durability: the journal, each shard's append-only log of its decisions and the ground
//! truth every other state is rebuilt from, and retention, which removes what no kept
//! window, remembered transaction or unpublished fleet record needs any more.

pub mod journal;
pub mod retention;
