//! The portable TCP edge (tokio): accepts connections and drives one [`Session`] per
//! connection, reading many frames per read and writing every reply of a read in one write.
//!
//! Invariants:
//! - A connection is owned by exactly one task; its decoder, encoder and session are never
//!   shared, so nothing on the per-message path takes a lock.
//! - Per connection, memory is bounded by the decoder's and encoder's fixed buffers.
//! - Every frame's reply is written before the connection is closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use codec::{FrameDecoder, FrameEncoder, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use codec::InstitutionId;
use tokio::sync::mpsc;

use crate::core::exchange::{Exchange, ExchangeConfig, Routes};
use crate::core::session::{CloseReason, Control, Now, Session, SessionConfig};
use crate::edge::exchange::{Event, OUTBOUND_QUEUE, spawn_exchange};
use crate::metrics::Metrics;
use crate::participant::Directory;

/// What every connection task shares: immutable after start.
#[derive(Debug)]
pub struct Shared {
    pub session: SessionConfig,
    pub directory: Directory,
    pub exchange: ExchangeConfig,
    pub routes: Routes,
    /// Start of the monotonic clock the sessions use.
    pub started: Instant,
    pub metrics: Arc<Metrics>,
    /// Session ids, unique for this process. Relaxed: only uniqueness matters.
    next_session_id: AtomicU64,
}

impl Shared {
    pub fn new(session: SessionConfig, directory: Directory) -> Self {
        let exchange = ExchangeConfig { switch_id: session.switch_id, ..ExchangeConfig::default() };
        Self {
            session,
            directory,
            exchange,
            routes: Routes::embedded_default(),
            started: Instant::now(),
            metrics: Arc::new(Metrics::default()),
            next_session_id: AtomicU64::new(1),
        }
    }

    /// The exchange's settings and routes (the embedded default's unless given).
    pub fn with_exchange(mut self, exchange: ExchangeConfig, routes: Routes) -> Self {
        self.exchange = exchange;
        self.routes = routes;
        self
    }

    fn now(&self) -> Now {
        super::now(self.started)
    }
}

/// Accepts connections until `shutdown` resolves, then drains: stops accepting, asks every
/// signed-on session to sign off, and returns once each has answered or reached its drain
/// deadline (`SessionConfig::drain_timeout_ms`).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let exchange = Exchange::new(shared.exchange.clone(), shared.routes.clone());
    let (events, exchange_task) = spawn_exchange(exchange, shared.started);
    let (draining_tx, draining) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set stays as small as the live sessions.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = Arc::clone(&shared);
                    let draining = draining.clone();
                    let events = events.clone();
                    connections.spawn(async move {
                        if let Err(error) = serve_connection(stream, &shared, draining, events).await {
                            tracing::debug!(%peer, %error, "connection ended with an I/O error");
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    shared.metrics.set_draining();
    tracing::info!(sessions = connections.len(), "draining: signing off every session");
    // Receivers only stop listening when their task has ended, so a send error means none
    // is left to tell.
    let _ = draining_tx.send(true);
    // Each session closes by its own drain deadline; this bound only guards against a task
    // stuck in a write to a peer that stopped reading.
    let bound = Duration::from_millis(shared.session.drain_timeout_ms) + Duration::from_secs(1);
    if tokio::time::timeout(bound, async { while connections.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(sessions = connections.len(), "drain bound passed; closing the remaining connections");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    // The last sender: the exchange task ends once every connection has gone.
    drop(events);
    let _ = exchange_task.await;
}

/// Counts a connection open for as long as it lives, and its close reason, whichever way
/// its task ends.
struct ConnectionGuard<'a> {
    metrics: &'a Metrics,
    /// Whether this connection was counted in `switch_sessions_signed_on`.
    signed_on: bool,
    reason: Option<CloseReason>,
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.metrics.connection_closed(self.signed_on, self.reason);
    }
}

async fn serve_connection(
    stream: TcpStream,
    shared: &Shared,
    draining: tokio::sync::watch::Receiver<bool>,
    events: mpsc::Sender<Event>,
) -> std::io::Result<()> {
    shared.metrics.connection_opened();
    let mut guard = ConnectionGuard { metrics: &shared.metrics, signed_on: false, reason: None };
    let session_id = shared.next_session_id.fetch_add(1, Ordering::Relaxed);
    let mut registered = None;
    let result = connection_loop(stream, shared, draining, &events, session_id, &mut registered, &mut guard).await;
    // Whichever way the connection ended, the exchange stops sending to it.
    if let Some(participant) = registered {
        let _ = events.send(Event::SessionDown { participant, session: session_id }).await;
    }
    result
}

/// The next message the exchange sends this connection; pending until it has signed on.
async fn next_outbound(outbound: &mut Option<mpsc::Receiver<Message>>) -> Option<Message> {
    match outbound {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection_loop(
    mut stream: TcpStream,
    shared: &Shared,
    mut draining: tokio::sync::watch::Receiver<bool>,
    events: &mpsc::Sender<Event>,
    session_id: u64,
    registered: &mut Option<InstitutionId>,
    guard: &mut ConnectionGuard<'_>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(std::io::Error::other)?;
    let mut session = Session::new(shared.session.clone(), shared.now(), session_id, nonce);
    let mut decoder = FrameDecoder::default();
    let mut encoder = FrameEncoder::default();
    let mut outgoing: Vec<Message> = Vec::with_capacity(64);
    let mut to_exchange: Vec<Message> = Vec::with_capacity(64);
    let mut outbound: Option<mpsc::Receiver<Message>> = None;

    encoder.encode(&session.challenge()).expect("the challenge is valid");
    stream.write_all(encoder.bytes()).await?;
    encoder.clear();

    let mut drain_seen = false;
    loop {
        let deadline = shared.started + Duration::from_millis(session.deadline_ms());
        let mut control = Control::Continue;
        let mut frames = 0u64;
        let read = tokio::select! {
            // Once seen, the drain signal is not waited for again.
            changed = draining.wait_for(|draining| *draining), if !drain_seen => {
                drain_seen = true;
                if changed.is_ok() {
                    control = session.handle_shutdown(shared.now(), &mut outgoing);
                }
                None
            }
            message = next_outbound(&mut outbound) => {
                match message {
                    Some(message) => outgoing.push(message),
                    // The exchange dropped this session's queue: it could not keep up.
                    None => control = Control::Close(CloseReason::Backlogged),
                }
                None
            }
            read = tokio::time::timeout_at(deadline.into(), stream.read(decoder.spare())) => Some(read),
        };
        match read {
            None => {}
            Some(Err(_elapsed)) => control = session.handle_timeout(shared.now(), &mut outgoing),
            Some(Ok(Ok(0))) => return Ok(()),
            Some(Ok(Ok(count))) => {
                decoder.commit(count);
                let now = shared.now();
                while control == Control::Continue {
                    match decoder.decode() {
                        Ok(Some(frame)) => {
                            frames += 1;
                            control = session.handle_message(
                                now,
                                frame.message,
                                &shared.directory,
                                &mut outgoing,
                                &mut to_exchange,
                            );
                        }
                        Ok(None) => break,
                        Err(error) => {
                            frames += 1;
                            tracing::info!(%peer, %error, "frame refused");
                            control = session.handle_decode_error(
                                now,
                                &error,
                                decoder.last_kind(),
                                decoder.last_frame(),
                                &mut outgoing,
                            );
                        }
                    }
                }
            }
            Some(Ok(Err(error))) => return Err(error),
        }
        // Signed on: register with the exchange before handing it anything.
        if let (None, Some(participant)) = (&*registered, session.participant()) {
            let (sender, receiver) = mpsc::channel(OUTBOUND_QUEUE);
            outbound = Some(receiver);
            *registered = Some(participant);
            let _ = events.send(Event::SessionUp { participant, session: session_id, outbound: sender }).await;
        }
        for message in to_exchange.drain(..) {
            let event = match (&message, *registered) {
                (Message::PaymentReply(_) | Message::ReversalReply(_) | Message::RefundReply(_), Some(participant)) => {
                    Event::Answer { participant, message }
                }
                _ => Event::Request { session: session_id, message },
            };
            // Bounded: a busy exchange slows this connection's reading, nobody else's.
            let _ = events.send(event).await;
        }
        let batch_started = Instant::now();
        for message in outgoing.drain(..) {
            shared.metrics.sent(&message);
            // Counted as signed on from the approving result until the connection ends.
            guard.signed_on |= matches!(&message, Message::SignOnResult(result) if result.code == 0);
            // Messages the session and exchange build are valid by construction.
            encoder.encode(&message).expect("the switch built an invalid message");
        }
        if frames > 0 {
            shared.metrics.frames_received(frames);
            shared.metrics.batch_processed(batch_started.elapsed());
        }
        if !encoder.is_empty() {
            stream.write_all(encoder.bytes()).await?;
            encoder.clear();
        }
        if let Control::Close(reason) = control {
            guard.reason = Some(reason);
            tracing::info!(%peer, participant = ?session.participant(), ?reason, "closing session");
            stream.shutdown().await?;
            return Ok(());
        }
    }
}
