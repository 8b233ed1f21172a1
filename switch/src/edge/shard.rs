//! Shards: one thread each, with its own event loop, its own connections and its own
//! [`Exchange`]. Shards talk only through the [`Mesh`]: one bounded inbox per shard
//! (a crossbeam `ArrayQueue`) and a wake-up, drained in batches.
//!
//! ```text
//!  connection on shard h ──Request/Answer──▶ inbox of the owner (core::shard::owner)
//!  owner's exchange ──Outbound──▶ its own connection's queue, or Deliver ──▶ inbox of the
//!                                 session's home shard ──▶ that connection's queue
//!  home shard cannot deliver ──Undeliverable──▶ inbox of the message's owner
//! ```
//!
//! Invariants:
//! - Every queue is bounded. A request that finds its owner's inbox full is answered
//!   `SystemBusy` at once by its connection (shed early, never queued); an answer that finds
//!   it full is dropped and counted, and its transaction times out and is reversed as the
//!   protocol already provides. Session events (sign-on and end) are never dropped: their
//!   sender waits for room, and there are at most two per connection per shard.
//! - Events from one producer reach a shard in the order they were pushed (the queue is
//!   FIFO), so a session's sign-on is always seen before its first request.
//! - A connection whose outbound queue is full is too slow to keep: its queue is dropped
//!   (its task then closes the connection), so one slow participant never stalls others.
//! - A shard loop wakes once per batch of pushes, not once per message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::{InstitutionId, Message};
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_queue::{ArrayQueue, SegQueue};
use tokio::sync::{Notify, mpsc, watch};

use crate::core::exchange::{Exchange, Outbound, SessionId};
use crate::core::session::Now;
use crate::core::shard::{SHARDS_MAX, owner};
use crate::edge::commit::{Commit, Durable};
use crate::ops::log_limit::LogLimit;
use crate::ops::metrics::Metrics;
use crate::ops::status::{PUBLISH_INTERVAL_MS, Status};
use crate::participant::Onboarding;

/// New requests waiting in one shard's inbox, from every connection; past it, new
/// requests are shed `SystemBusy`. About 10 ms of a shard's work at capacity: admitted
/// requests wait little, whatever is offered.
pub const SHARD_INBOX: usize = 2_048;
/// Admitted events waiting for one shard past which connections read nothing more until
/// it is worked off. Deliveries are bounded by what is in flight; answers by this and one
/// read per connection (2,730 frames at most).
pub const ADMITTED_HIGH_WATER: usize = 65_536;
/// Admitted events waiting for one shard beyond which a producer has run away: asserted.
/// (The construction bounds them far below: in flight and pending reversals, plus
/// `ADMITTED_HIGH_WATER`, plus one read of every connection.)
pub const ADMITTED_LANE_MAX: usize = 16 << 20;
/// Events handled per batch before timers and delivery.
const EVENT_BATCH_MAX: usize = 1_024;
/// A shard loop wakes at least this often, even with nothing to do (so a stall shows).
const HEARTBEAT_MS: u64 = 100;
/// A gap this long between two turns of a shard loop is a stall of the switch itself.
const STALL_MS: u64 = 1_000;

/// The exchange's clock: the monotonic clock less the shard's own stalls: the process
/// stopped or the host starved it (over a second between two turns), or the shard could
/// take no events because its journal was behind (`Commit::accepting`). A receiver is
/// judged by time the switch was running and reading its answers: a stall longer than a
/// reply deadline times nothing out and opens no breaker, and what was in flight keeps
/// the time it had left.
#[derive(Debug, Default)]
struct StallClock {
    /// The raw monotonic time of the last turn.
    last_ms: u64,
    /// Stalls so far, left out of the exchange's clock.
    stalled_ms: u64,
}

impl StallClock {
    /// The exchange's `Now` for a turn at `raw`, and the stall just noticed, if any (a
    /// long one: a short hold for the journal is counted, not reported). `held`: the
    /// shard could take no events since its last turn.
    fn turn(&mut self, raw: Now, held: bool) -> (Now, Option<u64>) {
        let gap = raw.monotonic_ms.saturating_sub(self.last_ms);
        if self.last_ms != 0 && held && gap <= STALL_MS {
            self.stalled_ms += gap;
        }
        let stall = (self.last_ms != 0 && gap > STALL_MS).then(|| if held { gap } else { gap - HEARTBEAT_MS });
        self.last_ms = raw.monotonic_ms;
        self.stalled_ms += stall.unwrap_or(0);
        (Now { monotonic_ms: raw.monotonic_ms - self.stalled_ms, unix_ms: raw.unix_ms }, stall)
    }

    /// A time on the exchange's clock as raw monotonic time (for sleeping until it).
    fn raw_ms(&self, exchange_ms: u64) -> u64 {
        exchange_ms + self.stalled_ms
    }
}

#[derive(Debug)]
pub enum Event {
    /// A session signed on. Sent to every shard; only its home shard gets its queue.
    SessionUp {
        participant: InstitutionId,
        session: SessionId,
        home: usize,
        outbound: Option<mpsc::UnboundedSender<Message>>,
    },
    /// A session ended. Sent to every shard.
    SessionDown { participant: InstitutionId, session: SessionId },
    /// A request from an originator's session, to the shard that owns it.
    Request { session: SessionId, message: Message },
    /// An answer from a receiver, to the shard named in its switch reference.
    Answer { participant: InstitutionId, message: Message },
    /// A message another shard's exchange sends to a session this shard is home to.
    Deliver { session: SessionId, message: Message },
    /// A message this shard could not deliver, back to the shard whose exchange sent it.
    Undeliverable { message: Message },
    /// Close clearing window `window` in this shard's journal; `done` is told once the cut
    /// is durable.
    Cut { window: u64, done: Durable },
    /// An operator moved `participant` from `previous` to `state`; `done` is told once the
    /// change is durable in this shard's journal.
    Onboarding { participant: InstitutionId, state: Onboarding, previous: Onboarding, done: Durable },
    /// Convert with `rates` from now on; `done` is told once taken.
    Rates { rates: Arc<crate::fx::RateTable>, done: Durable },
    /// The switch is shutting down: refuse new requests, and tell `done` once nothing is in
    /// flight (at the drain deadline, what is left is timed out and reversed) and every
    /// answer has been handed on.
    Drain { done: Durable },
    /// Tell `done` once every event queued before this one is handled (after a drain: the
    /// answers other shards handed this one are in their connections' queues).
    Flush { done: Durable },
}

/// One shard's inbox: two lanes and a wake-up.
#[derive(Debug)]
struct Inbox {
    /// New requests only, bounded: one that finds it full is answered `SystemBusy` by its
    /// connection at once (shed at admission, before any work is spent on it).
    requests: ArrayQueue<Event>,
    /// Everything already admitted, never refused: answers, deliveries, undeliverables,
    /// session and control events. Bounded by construction, not by refusal (see
    /// `ADMITTED_HIGH_WATER`).
    admitted: SegQueue<Event>,
    admitted_len: AtomicUsize,
    wake: Notify,
}

/// Every shard's inbox; shared by all shards and their connections.
#[derive(Debug)]
pub struct Mesh {
    inboxes: Vec<Inbox>,
}

/// Which shards were pushed to since the last [`Mesh::wake`]: one wake-up per batch.
#[derive(Debug, Default)]
pub struct Touched([u64; SHARDS_MAX / 64]);

impl Mesh {
    pub fn new(shards: usize) -> Self {
        Self::with_request_lane(shards, SHARD_INBOX)
    }

    /// Shards whose inboxes take `requests` new requests at most (tests make it tiny).
    pub fn with_request_lane(shards: usize, requests: usize) -> Self {
        assert!((1..=SHARDS_MAX).contains(&shards), "1 to {SHARDS_MAX} shards");
        let inboxes = (0..shards)
            .map(|_| Inbox {
                requests: ArrayQueue::new(requests),
                admitted: SegQueue::new(),
                admitted_len: AtomicUsize::new(0),
                wake: Notify::new(),
            })
            .collect();
        Self { inboxes }
    }

    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Queues `event` for `shard` (woken at the next [`Mesh::wake`]). A request is given
    /// back when the shard's request lane is full (the caller sheds it); anything else is
    /// admitted work and is always queued.
    // Giving the event back by value is the point (the caller answers it); boxing it
    // would allocate per message.
    #[allow(clippy::result_large_err)]
    pub fn try_push(&self, shard: usize, event: Event, touched: &mut Touched) -> Result<(), Event> {
        if let Event::Request { .. } = event {
            self.inboxes[shard].requests.push(event)?;
        } else {
            self.push_admitted(shard, event);
        }
        touched.0[shard / 64] |= 1 << (shard % 64);
        Ok(())
    }

    fn push_admitted(&self, shard: usize, event: Event) {
        let inbox = &self.inboxes[shard];
        // Relaxed: a count for the bound and for `crowded`, ordered by nothing else.
        let queued = inbox.admitted_len.fetch_add(1, Ordering::Relaxed) + 1;
        assert!(queued <= ADMITTED_LANE_MAX, "shard {shard}: {queued} admitted events waiting: a producer runs away");
        inbox.admitted.push(event);
    }

    /// The next new request for `shard` (taken by that shard's loop only).
    pub fn pop_request(&self, shard: usize) -> Option<Event> {
        self.inboxes[shard].requests.pop()
    }

    /// The next admitted event for `shard` (taken by that shard's loop only).
    pub fn pop_admitted(&self, shard: usize) -> Option<Event> {
        let inbox = &self.inboxes[shard];
        let event = inbox.admitted.pop()?;
        inbox.admitted_len.fetch_sub(1, Ordering::Relaxed);
        Some(event)
    }

    /// The next event for `shard`, admitted work first.
    pub fn try_pop(&self, shard: usize) -> Option<Event> {
        self.pop_admitted(shard).or_else(|| self.pop_request(shard))
    }

    /// Whether some shard has more admitted work waiting than `ADMITTED_HIGH_WATER`:
    /// connections then read nothing more until it is worked off (their answers would
    /// only wait longer), which bounds what answers can queue.
    pub fn crowded(&self) -> bool {
        self.inboxes.iter().any(|inbox| inbox.admitted_len.load(Ordering::Relaxed) > ADMITTED_HIGH_WATER)
    }

    /// Admitted events waiting, over every shard (for the metrics).
    pub fn admitted_backlog(&self) -> usize {
        self.inboxes.iter().map(|inbox| inbox.admitted_len.load(Ordering::Relaxed)).sum()
    }

    /// Wakes shard `shard`'s loop.
    pub fn wake_shard(&self, shard: usize) {
        self.inboxes[shard].wake.notify_one();
    }

    /// Wakes every shard pushed to since the last call.
    pub fn wake(&self, touched: &mut Touched) {
        for (word_index, word) in touched.0.iter_mut().enumerate() {
            while *word != 0 {
                let bit = word.trailing_zeros() as usize;
                *word &= *word - 1;
                self.inboxes[word_index * 64 + bit].wake.notify_one();
            }
        }
    }

    /// Sends an admitted event (a session's, or a control event) to every shard.
    pub async fn broadcast(&self, mut event: impl FnMut(usize) -> Event) {
        let mut touched = Touched::default();
        for shard in 0..self.shards() {
            let event = event(shard);
            assert!(!matches!(event, Event::Request { .. }), "requests are never broadcast");
            let _ = self.try_push(shard, event, &mut touched);
        }
        self.wake(&mut touched);
    }
}

/// Where this shard sends a session's messages.
#[derive(Debug)]
enum Route {
    Home { participant: InstitutionId, outbound: mpsc::UnboundedSender<Message> },
    Remote { home: usize },
}

/// What one shard's loop owns and shares.
#[derive(Debug)]
pub struct ShardLoop {
    pub index: usize,
    pub exchange: Exchange,
    /// Group commit to the shard's journal (none: nothing is kept, as in most tests).
    pub commit: Option<Commit>,
    pub mesh: std::sync::Arc<Mesh>,
    pub metrics: std::sync::Arc<Metrics>,
    pub status: std::sync::Arc<Status>,
    pub started: Instant,
    pub stop: watch::Receiver<bool>,
    /// Told each cut's checkpoint (journal retention; none: every segment is kept).
    pub retention: Option<std::sync::Arc<crate::durability::retention::Retention>>,
    /// Records between restart points (`Record::Restart`), with a journal.
    pub restart_every: u64,
}

/// What a shard loop keeps between turns, and how it handles one event.
struct Shard {
    index: usize,
    exchange: Exchange,
    mesh: std::sync::Arc<Mesh>,
    retention: Option<std::sync::Arc<crate::durability::retention::Retention>>,
    routes: HashMap<SessionId, Route>,
    /// What this turn's decisions send, held behind their records by group commit.
    out: Vec<Outbound>,
    /// What undeliverable messages caused (reversals): out with the next turn.
    undelivered: Vec<Outbound>,
    /// Closers of windows and other control events, told when this turn is durable.
    waiters: Vec<Durable>,
    /// A drain under way: who to tell, and by when (on the exchange's clock).
    drain: Option<(Durable, u64)>,
    touched: Touched,
}

impl Shard {
    fn handle(&mut self, now: Now, event: Event) {
        let exchange = &mut self.exchange;
        match event {
            Event::SessionUp { participant, session, home, outbound } => {
                let route = match outbound {
                    Some(outbound) => Route::Home { participant, outbound },
                    None => Route::Remote { home },
                };
                self.routes.insert(session, route);
                exchange.session_up(participant, session, &mut self.out);
            }
            Event::SessionDown { participant, session } => {
                self.routes.remove(&session);
                exchange.session_down(participant, session);
            }
            Event::Request { session, message } => exchange.handle_request(now, session, message, &mut self.out),
            Event::Answer { participant, message } => {
                let outcome = exchange.handle_answer(now, participant, message, &mut self.out);
                tracing::debug!(%participant, ?outcome, "answer");
            }
            Event::Deliver { session, message } => {
                if let Err(message) = deliver_home(&mut self.routes, exchange, session, message) {
                    let owner = owner(&message, self.mesh.shards());
                    if owner == self.index {
                        exchange.handle_undeliverable(now, message, &mut self.undelivered);
                    } else {
                        self.mesh.push_admitted(owner, Event::Undeliverable { message });
                        self.touched.0[owner / 64] |= 1 << (owner % 64);
                    }
                }
            }
            Event::Undeliverable { message } => exchange.handle_undeliverable(now, message, &mut self.undelivered),
            Event::Cut { window, done } => {
                let low_water = exchange.cut(window, now);
                if let Some(retention) = &self.retention {
                    // Used only after every shard's cut is durable (`Shared::close_window`).
                    retention.checkpoint(self.index, window, low_water);
                }
                self.waiters.push(done);
            }
            Event::Onboarding { participant, state, previous, done } => {
                exchange.set_onboarding(participant, state, previous, now);
                self.waiters.push(done);
            }
            Event::Rates { rates, done } => {
                exchange.set_rates(rates);
                self.waiters.push(done);
            }
            Event::Drain { done } => {
                exchange.start_draining();
                self.drain = Some((done, now.monotonic_ms + exchange.drain_deadline_ms()));
            }
            Event::Flush { done } => {
                let _ = done.send(());
            }
        }
    }

    /// Hands what this turn released to its sessions: here, or pushed to their home shard.
    fn deliver(&mut self, now: Now, released: &mut Vec<Outbound>) {
        for Outbound { session, message } in released.drain(..) {
            let undeliverable = match self.routes.get(&session) {
                Some(Route::Home { .. }) => deliver_home(&mut self.routes, &mut self.exchange, session, message).err(),
                Some(&Route::Remote { home }) => {
                    self.mesh.push_admitted(home, Event::Deliver { session, message });
                    self.touched.0[home / 64] |= 1 << (home % 64);
                    None
                }
                // The session ended between the event and this delivery.
                None => Some(message),
            };
            if let Some(message) = undeliverable {
                self.exchange.handle_undeliverable(now, message, &mut self.undelivered);
            }
        }
        self.mesh.wake(&mut self.touched);
    }
}

/// Runs a shard's loop until `stop` turns true.
///
/// A turn: take up to a batch of new requests, then every admitted event waiting
/// (answers first free in-flight room; and any session event a request depends on was
/// queued before it, so it is handled first), then the requests; then timers, group
/// commit and delivery.
pub async fn run_shard(parts: ShardLoop) {
    let ShardLoop { index, exchange, mut commit, mesh, metrics, status, started, mut stop, retention, restart_every } =
        parts;
    let mut shard = Shard {
        index,
        exchange,
        mesh: std::sync::Arc::clone(&mesh),
        retention,
        routes: HashMap::new(),
        out: Vec::with_capacity(EVENT_BATCH_MAX),
        undelivered: Vec::new(),
        waiters: Vec::new(),
        drain: None,
        touched: Touched::default(),
    };
    let inbox = &mesh.inboxes[index];
    let mut requests: Vec<Event> = Vec::with_capacity(EVENT_BATCH_MAX);
    let mut released: Vec<Outbound> = Vec::with_capacity(EVENT_BATCH_MAX);
    // The admin summary: republished after a change, at most every PUBLISH_INTERVAL_MS.
    let (mut changed, mut next_publish_ms) = (false, 0u64);
    let mut clock = StallClock::default();
    let mut next_restart_point = shard.exchange.journal_next().saturating_add(restart_every);
    loop {
        let accepting = commit.as_ref().is_none_or(Commit::accepting);
        let waiting = !inbox.requests.is_empty() || !inbox.admitted.is_empty();
        if (accepting && waiting) || !shard.out.is_empty() {
            // More is waiting, but this shard's connections must get to write what the last
            // batch gave them (and to read): other shards can keep this inbox full forever.
            tokio::task::yield_now().await;
            if *stop.borrow() {
                return;
            }
        } else {
            // Woken by events, by timers, and by the journal thread when a batch is durable.
            let publish = changed.then_some(next_publish_ms);
            let heartbeat = clock.last_ms + HEARTBEAT_MS;
            let deadline = [shard.exchange.next_deadline_ms(), publish]
                .into_iter()
                .flatten()
                .map(|ms| clock.raw_ms(ms))
                .chain([heartbeat])
                .min()
                .map(|ms| started + Duration::from_millis(ms));
            tokio::select! {
                () = inbox.wake.notified() => {}
                () = sleep_until(deadline) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
        let (now, stall) = clock.turn(super::now(started), !accepting);
        if let Some(stall_ms) = stall {
            metrics.shard_stalled(stall_ms);
            static STALLED: LogLimit = LogLimit::per_second();
            if let Some(suppressed) = STALLED.allow(now.monotonic_ms) {
                tracing::warn!(
                    suppressed,
                    shard = index,
                    stall_ms,
                    "the shard was stalled: reply deadlines are extended by the stall"
                );
            }
        }
        if accepting {
            // Requests are taken before the admitted lane is read, so every session event
            // pushed before them is seen first.
            while requests.len() < EVENT_BATCH_MAX
                && let Some(request) = mesh.pop_request(index)
            {
                requests.push(request);
            }
            while let Some(event) = mesh.pop_admitted(index) {
                shard.handle(now, event);
            }
            for request in requests.drain(..) {
                shard.handle(now, request);
            }
        }
        shard.exchange.handle_timers(now, &mut shard.out);
        if let Some((_, deadline_ms)) = &shard.drain
            && now.monotonic_ms >= *deadline_ms
        {
            shard.exchange.abandon_in_flight(now, &mut shard.out);
        }
        // Nothing leaves before the records of what produced it are durable (group commit).
        match commit.as_mut() {
            Some(commit) => {
                if shard.exchange.journal_next() >= next_restart_point {
                    // A restart replays from here on (`journal::head`), not from the start.
                    shard.exchange.restart_point();
                    next_restart_point = shard.exchange.journal_next().saturating_add(restart_every);
                }
                released.append(&mut shard.out);
                commit.pass(&mut shard.exchange, &mut released, &mut shard.waiters);
            }
            None => {
                // Nothing is kept: the decisions' records are dropped.
                shard.exchange.take_records(&mut Vec::new());
                released.append(&mut shard.out);
                for waiter in shard.waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
        shard.deliver(now, &mut released);
        // Drained once nothing is in flight and everything it led to has been handed on
        // (its records durable, its messages queued here or pushed to their home shards).
        let settled = commit.as_ref().is_none_or(Commit::is_idle) && shard.undelivered.is_empty();
        if shard.exchange.in_flight() == 0
            && settled
            && let Some((done, _)) = shard.drain.take()
        {
            let _ = done.send(());
        }
        metrics.set_admitted_backlog(index, inbox.admitted_len.load(Ordering::Relaxed));
        changed = true;
        if now.monotonic_ms >= next_publish_ms {
            status.publish(index, shard.exchange.participant_flights(now));
            (changed, next_publish_ms) = (false, now.monotonic_ms + PUBLISH_INTERVAL_MS);
        }
        // What undeliverable messages caused (reversals) goes out with the next batch.
        shard.out.append(&mut shard.undelivered);
    }
}

/// Queues `message` for a session whose home is this shard. The queue refuses nothing
/// (what it holds is admitted work, bounded by its participant's in-flight allowance and
/// pending reversals; a peer that does not read is closed by its write timeout): only a
/// session whose connection has ended gives the message back, to be handled as
/// undeliverable.
#[allow(clippy::result_large_err)] // the caller's own message, given back by value
fn deliver_home(
    routes: &mut HashMap<SessionId, Route>,
    exchange: &mut Exchange,
    session: SessionId,
    message: Message,
) -> Result<(), Message> {
    let Some(Route::Home { participant, outbound }) = routes.get(&session) else {
        return Err(message);
    };
    match outbound.send(message) {
        Ok(()) => Ok(()),
        Err(error) => {
            let participant = *participant;
            routes.remove(&session);
            // This shard stops sending at once; the others hear when the connection ends.
            exchange.session_down(participant, session);
            Err(error.0)
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Now {
        Now { monotonic_ms: ms, unix_ms: 1_771_286_370_000 + ms as i64 }
    }

    #[test]
    fn the_exchange_clock_leaves_out_stalls_and_holds() {
        let mut clock = StallClock::default();
        assert_eq!(clock.turn(at(1_000), false), (at(1_000), None));
        assert_eq!(clock.turn(at(1_100), false).0.monotonic_ms, 1_100, "a heartbeat's gap is time");
        // Stopped for 12 s: all of it but a heartbeat is left out, and reported.
        let (now, stall) = clock.turn(at(13_100), false);
        assert_eq!((now.monotonic_ms, stall), (1_200, Some(11_900)));
        assert_eq!(now.unix_ms, at(13_100).unix_ms, "wall time is the wall's");
        // Held by the journal for 300 ms: left out, not reported.
        assert_eq!(clock.turn(at(13_400), true), (Now { monotonic_ms: 1_200, ..at(13_400) }, None));
        assert_eq!(clock.turn(at(13_450), false).0.monotonic_ms, 1_250);
        assert_eq!(clock.raw_ms(1_250), 13_450);
    }
}
