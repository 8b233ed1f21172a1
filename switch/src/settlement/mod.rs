//! Settlement: clearing windows closed into each participant's positions and files, from
//! one node's journal or from the fleet's stream, and the fleet's publication of every
//! node's journal to that stream.

pub mod clearing;
pub mod fleet;
