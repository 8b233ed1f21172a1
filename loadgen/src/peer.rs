//! One participant connection, both ways at once: it sends its share of the schedule as
//! an originator and answers what the switch forwards to it as a receiver.
//!
//! Two tasks per connection: the writer (schedule, delayed answers, echoes, injected
//! disconnects) and the reader (replies to account, requests to decide). The reader hands
//! answers to the writer over a channel, with the time each is due.
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
use crossbeam_queue::ArrayQueue;
use tokio::sync::mpsc;

use crate::client::{Client, FrameReader, FrameWriter};
use crate::participants::Participant;
use crate::responder::{Answered, Behaviour, Decision};
use crate::rng::Rng;
use crate::schedule::ArrivalStream;
use crate::stats::ConnStats;
use crate::traffic::{APPROVED_POOL, Approved, Kind, Traffic, parse_id};

/// A send this late against its schedule counts as late.
pub const LATE_SEND_THRESHOLD: Duration = Duration::from_millis(10);
/// The longest the writer sleeps without looking at the stop flag and its reader.
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

/// Why a connection's writer stopped.
enum Ended {
    Stopped,
    Disconnect,
    Failed(anyhow::Error),
}

/// State that outlives a reconnect.
struct Kept {
    pool: Arc<ArrayQueue<Approved>>,
    /// Outstanding status queries: the queried transaction id to the queries' due times.
    queries: Arc<Mutex<HashMap<TransactionId, Vec<u64>>>>,
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
        pool: Arc::new(ArrayQueue::new(APPROVED_POOL)),
        queries: Arc::new(Mutex::new(HashMap::new())),
        counted_done: peer.origination.is_none(),
    };
    let mut fault_until_ns = 0u64;
    let result = loop {
        let name = peer.participant.id;
        let connected = match first.take() {
            Some(client) => Ok(client),
            None => Client::connect(ctx.target, name, peer.participant.key_id, &peer.participant.key).await,
        };
        let client = match connected {
            Ok(client) => client,
            Err(error) => break Err(error.context(format!("{name} (connection {})", peer.connection))),
        };
        let Client { reader, writer, .. } = client;
        let (answers, inbox) = mpsc::unbounded_channel();
        let mut reader = tokio::spawn(read_loop(
            Arc::clone(&ctx),
            reader,
            peer.participant.id,
            peer.behaviour,
            Rng::split(ctx.seed ^ 0x5EED, u64::from(peer.connection) + fault_until_ns),
            Arc::clone(&stats),
            Arc::clone(&kept.pool),
            Arc::clone(&kept.queries),
            answers,
        ));
        let ended = write_loop(&ctx, &mut peer, writer, inbox, &reader, &stats, &mut kept, fault_until_ns).await;
        // The reader stops by itself (stop flag, or the closed connection) and writes out
        // its part of the record; it is only aborted if it does not.
        let read_result = match tokio::time::timeout(Duration::from_secs(2), &mut reader).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(anyhow::anyhow!("reader task: {join}")),
            Err(_) => {
                reader.abort();
                Ok(())
            }
        };
        match ended {
            Ended::Stopped => break read_result,
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
            Ended::Failed(error) => {
                let error = read_result.err().unwrap_or(error);
                break Err(error.context(format!("{name} (connection {})", peer.connection)));
            }
        }
        if ctx.stop.is_set() {
            break Ok(());
        }
    };
    if !kept.counted_done {
        ctx.originating.fetch_sub(1, Ordering::AcqRel);
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    ctx: &RunContext,
    peer: &mut Peer,
    mut writer: FrameWriter,
    mut inbox: mpsc::UnboundedReceiver<Vec<(u64, Message)>>,
    reader: &tokio::task::JoinHandle<anyhow::Result<()>>,
    stats: &ConnStats,
    kept: &mut Kept,
    fault_until_ns: u64,
) -> Ended {
    let mut pending: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut last_write = Instant::now();
    let disconnect_at = peer.behaviour.disconnect_every.map(|every| Instant::now() + every);
    let max_lag_ns = ctx.max_lag.as_nanos() as u64;
    let late_ns = LATE_SEND_THRESHOLD.as_nanos() as u64;
    let mut echo_sequence = 0u64;
    loop {
        if ctx.stop.is_set() {
            let _ = writer.flush().await;
            let _ = writer.close().await;
            return Ended::Stopped;
        }
        if reader.is_finished() {
            return Ended::Failed(anyhow::anyhow!("the connection ended (see the reader's error)"));
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
                let made = match traffic.make(due_ns / 1000, now_ms, &kept.pool) {
                    Ok(made) => made,
                    Err(error) => return Ended::Failed(error),
                };
                if let Message::StatusQuery(query) = &made.message {
                    let mut queries = kept.queries.lock().unwrap_or_else(|e| e.into_inner());
                    queries.entry(query.original_originator_transaction_id).or_default().push(due_ns / 1000);
                }
                if let Err(error) = writer.queue(&made.message) {
                    return Ended::Failed(error);
                }
                stats.sent.fetch_add(1, Ordering::Relaxed);
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
        if !writer.is_empty() {
            if let Err(error) = writer.flush().await {
                return Ended::Failed(error);
            }
            last_write = Instant::now();
        }

        let mut wake_ns = ctx.elapsed_ns() + POLL.as_nanos() as u64;
        if let Some(next) = peer.origination.as_ref().and_then(|(a, _)| a.peek()) {
            wake_ns = wake_ns.min(next);
        }
        if let Some(next) = pending.peek() {
            wake_ns = wake_ns.min(next.0.due_ns);
        }
        let wake = ctx.start + Duration::from_nanos(wake_ns);
        tokio::select! {
            biased;
            batch = inbox.recv() => {
                let Some(batch) = batch else { continue };
                for (due_ns, message) in batch {
                    order += 1;
                    pending.push(Reverse(Pending { due_ns, order, message }));
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// Unix milliseconds now.
fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    ctx: Arc<RunContext>,
    mut reader: FrameReader,
    me: codec::InstitutionId,
    behaviour: Behaviour,
    mut rng: Rng,
    stats: Arc<ConnStats>,
    pool: Arc<ArrayQueue<Approved>>,
    queries: Arc<Mutex<HashMap<TransactionId, Vec<u64>>>>,
    answers: mpsc::UnboundedSender<Vec<(u64, Message)>>,
) -> anyhow::Result<()> {
    let mut record = String::new();
    let mut batch: Vec<(u64, Message)> = Vec::new();
    let mut answered_as_receiver = 0u64;
    let result = loop {
        let mut signing_off = false;
        let read = reader.read_batch(|message| {
            let now_ns = ctx.elapsed_ns();
            let now_us = now_ns / 1000;
            match message {
                MessageRef::PaymentReply(reply) | MessageRef::RefundReply(reply) => {
                    let kind =
                        if matches!(message, MessageRef::PaymentReply(_)) { Kind::Payment } else { Kind::Refund };
                    let code = reply.code.to_native();
                    let id = reply.originator_transaction_id.as_str();
                    let mut replies = stats.replies.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(parts) = parse_id(id).filter(|p| p.run == ctx.run_id) else {
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
                    let reference = reply.switch_reference.to_native();
                    if kind == Kind::Payment && code == ReplyCode::Approved.value() {
                        pool.force_push(Approved {
                            at_us: now_us,
                            reference,
                            id: reply.originator_transaction_id,
                            amount_minor: reply.amount_minor.to_native(),
                            currency: reply.currency.to_native(),
                        });
                    }
                    if ctx.record.is_some() {
                        let _ = writeln!(
                            record,
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
                    let due_us = {
                        let mut queries = queries.lock().unwrap_or_else(|e| e.into_inner());
                        let key = reply.original_originator_transaction_id;
                        let due = queries.get_mut(&key).and_then(Vec::pop);
                        if queries.get(&key).is_some_and(Vec::is_empty) {
                            queries.remove(&key);
                        }
                        due
                    };
                    let mut replies = stats.replies.lock().unwrap_or_else(|e| e.into_inner());
                    match due_us {
                        Some(due_us) => {
                            replies.record(Kind::Query, reply.code.to_native(), now_us.saturating_sub(due_us))
                        }
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
                    let mut responded = stats.responder.lock().unwrap_or_else(|e| e.into_inner());
                    responded.requests += 1;
                    match behaviour.payment(responded.requests, &mut rng) {
                        Decision::Ignore => responded.ignored += 1,
                        Decision::Answer { code, after } => {
                            if code.is_approved() {
                                responded.approved += 1;
                            } else {
                                responded.declined += 1;
                            }
                            answered_as_receiver += 1;
                            let reply = answered.reply(me, code, Some(answered_as_receiver), unix_ms());
                            batch.push((now_ns + after.as_nanos() as u64, Message::PaymentReply(reply)));
                        }
                    }
                }
                MessageRef::ReversalRequest(_) | MessageRef::RefundRequest(_) => {
                    let mut responded = stats.responder.lock().unwrap_or_else(|e| e.into_inner());
                    let (answered, reversal) = match message {
                        MessageRef::ReversalRequest(r) => (Answered::from(r), true),
                        MessageRef::RefundRequest(r) => (Answered::from(r), false),
                        _ => return,
                    };
                    if reversal {
                        responded.reversals += 1;
                    } else {
                        responded.refunds += 1;
                    }
                    if let Decision::Answer { after, .. } = behaviour.linked(&mut rng) {
                        let reply = answered.reply(me, ReplyCode::Approved, None, unix_ms());
                        let message =
                            if reversal { Message::ReversalReply(reply) } else { Message::RefundReply(reply) };
                        batch.push((now_ns + after.as_nanos() as u64, message));
                    }
                }
                MessageRef::EchoRequest(echo) => {
                    let echo =
                        Echo { sequence: echo.sequence.to_native(), sent_time_ms: echo.sent_time_ms.to_native() };
                    batch.push((now_ns, Message::EchoReply(echo)));
                }
                MessageRef::SignOffRequest(_) => {
                    signing_off = true;
                    batch.push((now_ns, Message::SignOffReply(SignOff { code: 0, reserved: [0; 6] })));
                }
                MessageRef::Reject(_) => {
                    let mut replies = stats.replies.lock().unwrap_or_else(|e| e.into_inner());
                    replies.rejects += 1;
                    replies.errors += 1;
                }
                _ => {}
            }
        });
        let outcome = tokio::select! {
            outcome = read => Some(outcome),
            () = tokio::time::sleep(POLL) => None,
        };
        if !batch.is_empty() && answers.send(std::mem::take(&mut batch)).is_err() {
            break Ok(());
        }
        if record.len() > RECORD_FLUSH {
            write_record(&ctx, &mut record)?;
        }
        if signing_off {
            // Give the writer a moment to send the sign-off reply.
            tokio::time::sleep(Duration::from_millis(50)).await;
            break Err(anyhow::anyhow!("the switch asked to sign off (it is shutting down)"));
        }
        match outcome {
            Some(Ok(_)) | None => {
                if ctx.stop.is_set() && outcome.is_none() {
                    break Ok(());
                }
            }
            Some(Err(error)) => {
                break if ctx.stop.is_set() { Ok(()) } else { Err(error) };
            }
        }
    };
    write_record(&ctx, &mut record)?;
    result
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
