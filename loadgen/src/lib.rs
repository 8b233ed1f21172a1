//! The load generator: plays participants against the switch over the wire, as a real
//! participant would. Depends on `codec` only, never on `switch`.
//!
//! - [`client`]: one participant session: connect, sign on (mutually authenticated),
//!   send frames, receive frames.
//! - [`issuer`]: plays receiving participants (issuers, QR acquirers) that answer what the
//!   switch forwards, so one command is a two-sided flow.
//! - [`run`]: an open-loop run at a fixed rate, with latency measured from each request's
//!   intended send time (no coordinated omission) into an HDR histogram.

pub mod client;
pub mod issuer;
pub mod run;
