//! The exchange task: owns one [`Exchange`] and talks to connection tasks only through
//! bounded queues.
//!
//! ```text
//! connection tasks ──Event (bounded, EVENT_QUEUE)──▶ exchange task ──Message (bounded,
//!                                                                     OUTBOUND_QUEUE per session)──▶ connection
//! ```
//!
//! Invariants:
//! - Every queue is bounded. A connection whose outbound queue is full is too slow to
//!   keep: its queue is dropped (its task then closes the connection) and it counts as
//!   signed off, so one slow participant never stalls the others. Replies lost with it are
//!   covered by the protocol: the originator times out and queries or reverses.
//! - Events are drained in batches, and the exchange's timers run between batches.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use codec::{InstitutionId, Message};
use tokio::sync::mpsc;

use crate::core::exchange::{Exchange, Outbound, SessionId};

/// Events waiting for the exchange, from all connections.
pub const EVENT_QUEUE: usize = 16_384;
/// Messages waiting to be written to one connection.
pub const OUTBOUND_QUEUE: usize = 4_096;
/// Events handled per batch before timers and delivery.
const EVENT_BATCH_MAX: usize = 1_024;

#[derive(Debug)]
pub enum Event {
    SessionUp { participant: InstitutionId, session: SessionId, outbound: mpsc::Sender<Message> },
    SessionDown { participant: InstitutionId, session: SessionId },
    Request { session: SessionId, message: Message },
    Answer { participant: InstitutionId, message: Message },
}

/// Starts the exchange task; it ends when every event sender is dropped.
pub fn spawn_exchange(exchange: Exchange, started: Instant) -> (mpsc::Sender<Event>, tokio::task::JoinHandle<()>) {
    let (events, receiver) = mpsc::channel(EVENT_QUEUE);
    (events, tokio::spawn(run(exchange, receiver, started)))
}

async fn run(mut exchange: Exchange, mut events: mpsc::Receiver<Event>, started: Instant) {
    let mut sessions: HashMap<SessionId, (InstitutionId, mpsc::Sender<Message>)> = HashMap::new();
    let mut out: Vec<Outbound> = Vec::with_capacity(EVENT_BATCH_MAX);
    let mut batch: Vec<Event> = Vec::with_capacity(EVENT_BATCH_MAX);
    let mut undelivered: Vec<Outbound> = Vec::new();
    loop {
        let deadline = exchange.next_deadline_ms().map(|ms| started + Duration::from_millis(ms));
        tokio::select! {
            received = events.recv_many(&mut batch, EVENT_BATCH_MAX) => {
                if received == 0 {
                    return;
                }
            }
            () = sleep_until(deadline) => {}
        }
        let now = super::now(started);
        for event in batch.drain(..) {
            match event {
                Event::SessionUp { participant, session, outbound } => {
                    sessions.insert(session, (participant, outbound));
                    exchange.session_up(participant, session, &mut out);
                }
                Event::SessionDown { participant, session } => {
                    sessions.remove(&session);
                    exchange.session_down(participant, session);
                }
                Event::Request { session, message } => exchange.handle_request(now, session, message, &mut out),
                Event::Answer { participant, message } => {
                    let outcome = exchange.handle_answer(now, participant, message, &mut out);
                    tracing::debug!(%participant, ?outcome, "answer");
                }
            }
        }
        exchange.handle_timers(now, &mut out);
        for Outbound { session, message } in out.drain(..) {
            let Some((participant, queue)) = sessions.get(&session) else {
                // The session ended between the event and this delivery.
                exchange.handle_undeliverable(now, message, &mut undelivered);
                continue;
            };
            if let Err(error) = queue.try_send(message) {
                let participant = *participant;
                tracing::warn!(%participant, session, "outbound queue full or closed: dropping the session");
                sessions.remove(&session);
                exchange.session_down(participant, session);
                exchange.handle_undeliverable(now, error.into_inner(), &mut undelivered);
            }
        }
        // What undeliverable messages caused (reversals) goes out with the next batch.
        out.append(&mut undelivered);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
