//! A connection's writes: at most one in flight while the connection loop goes on reading
//! (a peer that writes while we write never waits on us, nor we on it), the next one
//! gathering in the encoder meanwhile; each with a deadline, so a peer that stops reading
//! is closed, never waited on forever.
//!
//! Invariants: one write in flight per connection (the transport's rule); frames leave in
//! the order they were encoded; a write outstanding past its deadline ends the connection;
//! once the encoder holds [`BACKLOG_MAX`] bytes the loop stops reading ([`backlogged`]), so
//! a connection's own requests cannot grow it further; what its shards queue for it is
//! admitted work, bounded by its participant's in-flight allowance, and still taken.

use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use codec::FrameEncoder;

use crate::edge::transport::Transport;

/// Bytes waiting in a connection's encoder behind the write in flight before the loop
/// stops reading and taking from its queue: 512 KiB, about 3,600 replies.
pub const BACKLOG_MAX: usize = 512 * 1024;

/// While a write is in flight the loop looks at least this often, so a stall of the switch
/// itself (a gap of over `STALL` between two looks) is noticed and not held against the peer.
pub const LOOK: Duration = Duration::from_millis(100);
/// A gap this long between two looks is a stall of the switch (a SIGSTOP, a starved host).
pub const STALL: Duration = Duration::from_secs(1);

/// A write in flight: it owns its buffer until it completes.
type PendingWrite = Pin<Box<dyn Future<Output = (std::io::Result<()>, Vec<u8>)>>>;

/// Whether `encoder` holds as much as a connection may have waiting.
pub fn backlogged(encoder: &FrameEncoder) -> bool {
    encoder.len() >= BACKLOG_MAX
}

/// One connection's writes (see the module).
pub struct Writes {
    /// The buffer for the next write, when none is in flight.
    spare: Option<Vec<u8>>,
    pending: Option<PendingWrite>,
    /// When the write in flight must have completed.
    deadline: Option<Instant>,
    /// When the loop last looked at its writes ([`Writes::look`]).
    looked: Instant,
    timeout: Duration,
}

impl Writes {
    /// Writes that must each complete within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { spare: Some(Vec::new()), pending: None, deadline: None, looked: Instant::now(), timeout }
    }

    pub fn in_flight(&self) -> bool {
        self.pending.is_some()
    }

    /// When the loop must look again (the write's deadline, or the next look for a
    /// stall), if a write is in flight.
    pub fn wake(&self) -> Option<Instant> {
        self.deadline.map(|deadline| deadline.min(self.looked + LOOK))
    }

    /// Called at every turn of the connection loop: a gap of over `STALL` since the last
    /// look, with a write in flight, was a stall of the switch itself, and the write gets
    /// that time back (it is not the peer's).
    pub fn look(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.looked);
        self.looked = now;
        if gap > STALL
            && let Some(deadline) = &mut self.deadline
        {
            *deadline += gap - LOOK;
        }
    }

    /// Whether the write in flight is past its deadline at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| now >= deadline)
    }

    /// Starts a write of everything `encoder` holds, unless one is in flight (then it
    /// waits in the encoder for the next).
    pub fn start<T: Transport>(&mut self, stream: &Rc<T>, encoder: &mut FrameEncoder) {
        if self.pending.is_some() || encoder.is_empty() {
            return;
        }
        let mut buffer = self.spare.take().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(encoder.bytes());
        encoder.clear();
        self.pending = Some(Box::pin(stream.write_all(buffer)));
        let now = Instant::now();
        self.deadline = Some(now + self.timeout);
        self.looked = now;
    }

    /// Resolves when the write in flight has completed (never, if none is).
    pub async fn completed(&mut self) -> std::io::Result<()> {
        let Some(pending) = self.pending.as_mut() else { return std::future::pending().await };
        let (result, buffer) = pending.await;
        self.pending = None;
        self.deadline = None;
        self.spare = Some(buffer);
        result
    }

    /// Before a close: completes the write in flight and writes what the encoder still
    /// holds, within one write timeout. `false` when that did not finish in time.
    pub async fn finish<T: Transport>(&mut self, stream: &Rc<T>, encoder: &mut FrameEncoder) -> std::io::Result<bool> {
        let flushed = tokio::time::timeout(self.timeout, async {
            loop {
                self.start(stream, encoder);
                if !self.in_flight() {
                    return Ok(());
                }
                self.completed().await?;
            }
        });
        match flushed.await {
            Ok(result) => result.map(|()| true),
            Err(_) => Ok(false),
        }
    }
}
