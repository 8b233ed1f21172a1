//! One participant connection, both ways at once: it sends its share of the schedule as
//! an originator and answers what the switch forwards to it as a receiver.
//!
//! One task per connection, a loop over two events: frames arrived (replies to account,
//! forwarded requests to decide: answered in the same write when due at once, else kept
//! in a heap until due) and the next due time (requests of the schedule, delayed answers,
//! echoes, injected disconnects). Everything due goes out in one write.
//!
//! Invariants:
//! - A request is never sent before its intended time; one later than
//!   [`LATE_SEND_THRESHOLD`] is counted late, one later than the run's lag bound is not
//!   sent at all and counted dropped: the generator then keeps to its schedule instead of
//!   bursting a backlog into the switch.
//! - Latency runs from the intended send time carried in the transaction id.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use codec::field::FieldText;
use codec::{Echo, Message, MessageRef, ReplyCode, SignOff, TransactionId};

use crate::client::Client;
use crate::participants::Participant;
use crate::responder::{Answered, Behaviour, Decision};
use crate::rng::Rng;
use crate::schedule::ArrivalStream;
use crate::stats::ConnStats;
use crate::traffic::{Approved, Kind, Traffic, parse_id, remember};

/// A send this late against its schedule counts as late.
pub const LATE_SEND_THRESHOLD: Duration = Duration::from_millis(10);
/// The longest a connection waits without looking at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// A connection that has written nothing for this long sends an echo (the switch's
/// default echo interval is 30 s; its idle timeout 90 s).
const ECHO_AFTER: Duration = Duration::from_secs(10);
/// How long an injected disconnect keeps the connection down.
const FAULT_DOWN: Duration = Duration::from_secs(1);
/// The record buffer is written out past this size.
const RECORD_FLUSH: usize = 256 * 1024;

/// The run's stop signal.
#[derive(Debug, Default)]
pub struct Stop(AtomicBool);

impl Stop {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What every connection of a run shares.
#[derive(Debug)]
pub struct RunContext {
    pub target: SocketAddr,
    pub run_id: u32,
    pub seed: u64,
    pub start: Instant,
    pub stop: Stop,
    /// Sends later than this are dropped instead.
    pub max_lag: Duration,
    /// Originating connections whose schedule has not ended.
    pub originating: AtomicUsize,
    pub record: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl RunContext {
    fn elapsed_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// One connection's part of the run.
#[derive(Debug)]
pub struct Peer {
    pub participant: Participant,
    pub connection: u16,
    pub behaviour: Behaviour,
    /// Its schedule and requests, if it originates.
    pub origination: Option<(ArrivalStream, Traffic)>,
}

/// An answer waiting for its time.
#[derive(Debug)]
struct Pending {
    due_ns: u64,
    order: u64,
    message: Message,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ns, self.order) == (other.due_ns, other.order)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due_ns, self.order).cmp(&(other.due_ns, other.order))
    }
}

/// Why a connection's loop stopped.
enum Ended {
    Stopped,
    Disconnect,
    Failed(anyhow::Error),
}

/// State that outlives a reconnect.
struct Kept {
    pool: std::collections::VecDeque<Approved>,
    /// Outstanding status queries: the queried transaction id to the queries' due times.
    queries: HashMap<TransactionId, Vec<u64>>,
    /// Record lines not yet written to the record file.
    record: String,
    /// With a record: requests sent and not yet answered, by transaction id. Those left at
    /// the end (the switch went away, or the drain ran out) are written as in doubt.
    in_doubt: HashMap<TransactionId, InDoubt>,
    /// Payments answered as a receiver (numbers authorisation codes, `decline_every`).
    answered_as_receiver: u64,
    counted_done: bool,
}

/// Runs one connection until the run stops; an error if the switch refused or dropped it.
/// `first` is the connection made before the run started; reconnects make their own.
pub async fn run_peer(
    ctx: Arc<RunContext>,
    mut peer: Peer,
    stats: Arc<ConnStats>,
    first: Client,
) -> anyhow::Result<()> {
    let mut first = Some(first);
    let mut kept = Kept {
        pool: std::collections::VecDeque::new(),
        queries: HashMap::new(),
        record: String::new(),
        in_doubt: HashMap::new(),
        answered_as_receiver: 0,
        counted_done: peer.origination.is_none(),
    };
    let mut rng = Rng::split(ctx.seed ^ 0x5EED, u64::from(peer.connection));
    let mut fault_until_ns = 0u64;
    let result = loop {
        let name = peer.participant.id;
        let connected = match first.take() {
            Some(client) => Ok(client),
            None => Client::connect_as(ctx.target, &peer.participant).await,
        };
        let client = match connected {
            Ok(client) => client,
            Err(error) => break Err(error.context(format!("{name} (connection {})", peer.connection))),
        };
        let ended = drive(&ctx, &mut peer, client, &stats, &mut kept, &mut rng, fault_until_ns).await;
        match ended {
            Ended::Stopped => break Ok(()),
            Ended::Disconnect => {
                stats.responder.lock().unwrap_or_else(|e| e.into_inner()).disconnects += 1;
                // What this connection still waited for is lost with it.
                let answered = stats.replies.lock().unwrap_or_else(|e| e.into_inner()).answered;
                let lost = stats.fault_lost.load(Ordering::Relaxed);
                let waiting = stats.sent.load(Ordering::Relaxed).saturating_sub(answered + lost);
                stats.fault_lost.fetch_add(waiting, Ordering::Relaxed);
                tokio::time::sleep(FAULT_DOWN).await;
                fault_until_ns = ctx.elapsed_ns();
            }
            Ended::Failed(error) => break Err(error.context(format!("{name} (connection {})", peer.connection))),
        }
        if ctx.stop.is_set() {
            break Ok(());
        }
    };
    if !kept.counted_done {
        ctx.originating.fetch_sub(1, Ordering::AcqRel);
    }
    for (id, request) in kept.in_doubt.drain() {
        // No switch reference and no code: the originator does not know the outcome.
        let _ = writeln!(
            kept.record,
            "-,{},{},{},-,{},{},-",
            request.originator.as_str(),
            id.as_str(),
            request.kind.name(),
            request.amount_minor,
            request.currency
        );
    }
    let written = write_record(&ctx, &mut kept.record);
    result.and(written)
}

/// A request sent whose answer has not come (yet).
struct InDoubt {
    kind: Kind,
    originator: codec::InstitutionId,
    amount_minor: u64,
    currency: u16,
}

impl InDoubt {
    /// A payment or refund request's id and what the record says of it.
    fn of(message: &Message, kind: Kind) -> Option<(TransactionId, Self)> {
        let (originator, id, amount_minor, currency) = match message {
            Message::PaymentCodeRequest(request) => {
                let d = &request.details;
                (d.originator, d.originator_transaction_id, d.amount_minor, d.currency)
            }
            Message::QrPaymentRequest(request) => {
                let d = &request.details;
                (d.originator, d.originator_transaction_id, d.amount_minor, d.currency)
            }
            Message::RefundRequest(r) => (r.originator, r.originator_transaction_id, r.amount_minor, r.currency),
            _ => return None,
        };
        Some((id, Self { kind, originator, amount_minor, currency }))
    }
}

/// Unix milliseconds now.
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// One connection's loop, until the run stops, an injected disconnect, or a failure.
async fn drive(
    ctx: &RunContext,
    peer: &mut Peer,
    client: Client,
    stats: &ConnStats,
    kept: &mut Kept,
    rng: &mut Rng,
    fault_until_ns: u64,
) -> Ended {
    let Client { mut reader, mut writer, .. } = client;
    let mut pending: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut last_write = Instant::now();
    let disconnect_at = peer.behaviour.disconnect_every.map(|every| Instant::now() + every);
    let max_lag_ns = ctx.max_lag.as_nanos() as u64;
    let late_ns = LATE_SEND_THRESHOLD.as_nanos() as u64;
    let mut echo_sequence = 0u64;
    let me = peer.participant.id;
    let behaviour = peer.behaviour;
    loop {
        if ctx.stop.is_set() {
            let _ = writer.flush().await;
            let _ = writer.close().await;
            return Ended::Stopped;
        }
        if disconnect_at.is_some_and(|at| Instant::now() >= at) {
            let _ = writer.close().await;
            return Ended::Disconnect;
        }
        let now_ns = ctx.elapsed_ns();
        while pending.peek().is_some_and(|p| p.0.due_ns <= now_ns) {
            let Some(Reverse(answer)) = pending.pop() else { break };
            if let Err(error) = writer.queue(&answer.message) {
                return Ended::Failed(error);
            }
        }
        if let Some((arrivals, traffic)) = peer.origination.as_mut() {
            let now_ms = unix_ms();
            while let Some(due_ns) = arrivals.peek().filter(|&due| due <= now_ns) {
                if !arrivals.advance() {
                    continue;
                }
                stats.scheduled.fetch_add(1, Ordering::Relaxed);
                if due_ns < fault_until_ns {
                    stats.fault_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let lag = now_ns - due_ns;
                if lag > max_lag_ns {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if lag > late_ns {
                    stats.late.fetch_add(1, Ordering::Relaxed);
                }
                let made = match traffic.make(due_ns / 1000, now_ms, &mut kept.pool) {
                    Ok(made) => made,
                    Err(error) => return Ended::Failed(error),
                };
                if let Message::StatusQuery(query) = &made.message {
                    kept.queries.entry(query.original_originator_transaction_id).or_default().push(due_ns / 1000);
                }
                if let Err(error) = writer.queue(&made.message) {
                    return Ended::Failed(error);
                }
                stats.sent.fetch_add(1, Ordering::Relaxed);
                if ctx.record.is_some()
                    && let Some((id, request)) = InDoubt::of(&made.message, made.kind)
                {
                    kept.in_doubt.insert(id, request);
                }
            }
            if arrivals.peek().is_none() && !kept.counted_done {
                kept.counted_done = true;
                ctx.originating.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if last_write.elapsed() >= ECHO_AFTER && writer.is_empty() {
            echo_sequence += 1;
            let echo = Echo { sequence: echo_sequence, sent_time_ms: unix_ms() };
            if let Err(error) = writer.queue(&Message::EchoRequest(echo)) {
                return Ended::Failed(error);
            }
        }
        if kept.record.len() > RECORD_FLUSH
            && let Err(error) = write_record(ctx, &mut kept.record)
        {
            return Ended::Failed(error);
        }

        let mut wake_ns = ctx.elapsed_ns() + POLL.as_nanos() as u64;
        if let Some(next) = peer.origination.as_ref().and_then(|(a, _)| a.peek()) {
            wake_ns = wake_ns.min(next);
        }
        if let Some(next) = pending.peek() {
            wake_ns = wake_ns.min(next.0.due_ns);
        }
        let wake = ctx.start + Duration::from_nanos(wake_ns);
        let mut signing_off = false;
        let mut immediate: Vec<Message> = Vec::new();
        let mut handler = Handler {
            ctx,
            me,
            behaviour,
            stats,
            kept: &mut *kept,
            rng: &mut *rng,
            immediate: &mut immediate,
            pending: &mut pending,
            order: &mut order,
            signing_off: &mut signing_off,
        };
        // What is queued leaves while the connection goes on reading: a switch that writes
        // to us while we write to it never waits on us (nor we on it).
        let flushing = !writer.is_empty();
        let read = tokio::select! {
            biased;
            flushed = writer.flush(), if flushing => {
                if let Err(error) = flushed {
                    return Ended::Failed(error);
                }
                last_write = Instant::now();
                None
            }
            read = reader.read_batch(|message| handler.handle(message)) => Some(read),
            () = tokio::time::sleep_until(wake.into()), if !flushing => None,
        };
        // Answers due at once go out with the next write.
        for message in immediate.drain(..) {
            if let Err(error) = writer.queue(&message) {
                return Ended::Failed(error);
            }
        }
        if signing_off {
            let _ = writer.flush().await;
            return Ended::Failed(anyhow::anyhow!("the switch asked to sign off (it is shutting down)"));
        }
        if let Some(Err(error)) = read {
            return if ctx.stop.is_set() { Ended::Stopped } else { Ended::Failed(error) };
        }
    }
}

/// What a connection does with each frame it reads.
struct Handler<'a> {
    ctx: &'a RunContext,
    me: codec::InstitutionId,
    behaviour: Behaviour,
    stats: &'a ConnStats,
    kept: &'a mut Kept,
    rng: &'a mut Rng,
    /// Answers due at once, for the next write.
    immediate: &'a mut Vec<Message>,
    pending: &'a mut BinaryHeap<Reverse<Pending>>,
    order: &'a mut u64,
    signing_off: &'a mut bool,
}

impl Handler<'_> {
    /// Sends `message` with the next write if it is due now, else keeps it until `due_ns`.
    fn answer(&mut self, due_ns: u64, message: Message) {
        if due_ns <= self.ctx.elapsed_ns() {
            self.immediate.push(message);
        } else {
            *self.order += 1;
            self.pending.push(Reverse(Pending { due_ns, order: *self.order, message }));
        }
    }

    fn handle(&mut self, message: MessageRef<'_>) {
        let now_ns = self.ctx.elapsed_ns();
        let now_us = now_ns / 1000;
        match message {
            MessageRef::PaymentReply(reply) | MessageRef::RefundReply(reply) => {
                let kind = if matches!(message, MessageRef::PaymentReply(_)) { Kind::Payment } else { Kind::Refund };
                let code = reply.code.to_native();
                let id = reply.originator_transaction_id.as_str();
                let mut replies = self.stats.replies.lock().unwrap_or_else(|e| e.into_inner());
                let Some(parts) = parse_id(id).filter(|p| p.run == self.ctx.run_id) else {
                    replies.unexpected += 1;
                    replies.errors += 1;
                    return;
                };
                if !replies.first_answer(parts.sequence) {
                    replies.unexpected += 1;
                    replies.errors += 1;
                    return;
                }
                replies.record(kind, code, now_us.saturating_sub(parts.due_us));
                drop(replies);
                self.kept.in_doubt.remove(&reply.originator_transaction_id);
                let reference = reply.switch_reference.to_native();
                if kind == Kind::Payment && code == ReplyCode::Approved.value() {
                    remember(
                        &mut self.kept.pool,
                        Approved {
                            at_us: now_us,
                            reference,
                            id: reply.originator_transaction_id,
                            amount_minor: reply.amount_minor.to_native(),
                            currency: reply.currency.to_native(),
                        },
                    );
                }
                if self.ctx.record.is_some() {
                    let _ = writeln!(
                        self.kept.record,
                        "{},{},{},{},{},{},{},{}",
                        codec::SwitchReference(reference),
                        reply.originator.as_str(),
                        id,
                        kind.name(),
                        code,
                        reply.amount_minor.to_native(),
                        reply.currency.to_native(),
                        reply.responder.as_str(),
                    );
                }
            }
            MessageRef::StatusReply(reply) => {
                let key = reply.original_originator_transaction_id;
                let due_us = self.kept.queries.get_mut(&key).and_then(Vec::pop);
                if self.kept.queries.get(&key).is_some_and(Vec::is_empty) {
                    self.kept.queries.remove(&key);
                }
                let mut replies = self.stats.replies.lock().unwrap_or_else(|e| e.into_inner());
                match due_us {
                    Some(due_us) => replies.record(Kind::Query, reply.code.to_native(), now_us.saturating_sub(due_us)),
                    None => {
                        replies.unexpected += 1;
                        replies.errors += 1;
                    }
                }
            }
            MessageRef::PaymentCodeRequest(_) | MessageRef::QrPaymentRequest(_) => {
                // Read in place: a reply needs only what identifies the request.
                let answered = match message {
                    MessageRef::PaymentCodeRequest(r) => Answered::from(&r.details),
                    MessageRef::QrPaymentRequest(r) => Answered::from(&r.details),
                    _ => return,
                };
                let mut responded = self.stats.responder.lock().unwrap_or_else(|e| e.into_inner());
                responded.requests += 1;
                let decision = self.behaviour.payment(responded.requests, self.rng);
                match decision {
                    Decision::Ignore => responded.ignored += 1,
                    Decision::Answer { code, .. } if code.is_approved() => responded.approved += 1,
                    Decision::Answer { .. } => responded.declined += 1,
                }
                drop(responded);
                if let Decision::Answer { code, after } = decision {
                    self.kept.answered_as_receiver += 1;
                    let reply = answered.reply(self.me, code, Some(self.kept.answered_as_receiver), unix_ms());
                    self.answer(now_ns + after.as_nanos() as u64, Message::PaymentReply(reply));
                }
            }
            MessageRef::ReversalRequest(_) | MessageRef::RefundRequest(_) => {
                let (answered, reversal) = match message {
                    MessageRef::ReversalRequest(r) => (Answered::from(r), true),
                    MessageRef::RefundRequest(r) => (Answered::from(r), false),
                    _ => return,
                };
                {
                    let mut responded = self.stats.responder.lock().unwrap_or_else(|e| e.into_inner());
                    if reversal {
                        responded.reversals += 1;
                    } else {
                        responded.refunds += 1;
                    }
                }
                if let Decision::Answer { after, .. } = self.behaviour.linked(self.rng) {
                    let reply = answered.reply(self.me, ReplyCode::Approved, None, unix_ms());
                    let message = if reversal { Message::ReversalReply(reply) } else { Message::RefundReply(reply) };
                    self.answer(now_ns + after.as_nanos() as u64, message);
                }
            }
            MessageRef::EchoRequest(echo) => {
                let echo = Echo { sequence: echo.sequence.to_native(), sent_time_ms: echo.sent_time_ms.to_native() };
                self.answer(now_ns, Message::EchoReply(echo));
            }
            MessageRef::SignOffRequest(_) => {
                *self.signing_off = true;
                self.answer(now_ns, Message::SignOffReply(SignOff { code: 0, reserved: [0; 6] }));
            }
            MessageRef::Reject(_) => {
                let mut replies = self.stats.replies.lock().unwrap_or_else(|e| e.into_inner());
                replies.rejects += 1;
                replies.errors += 1;
            }
            _ => {}
        }
    }
}

fn write_record(ctx: &RunContext, buffer: &mut String) -> anyhow::Result<()> {
    if let Some(record) = &ctx.record
        && !buffer.is_empty()
    {
        let mut file = record.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(buffer.as_bytes()).context("writing the reply record")?;
        buffer.clear();
    }
    Ok(())
}
