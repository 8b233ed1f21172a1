//! An open-loop run: requests leave on a fixed schedule whatever the replies do, and each
//! reply's latency is measured from its request's *intended* send time, so a stalled switch
//! shows up as latency instead of silently slowing the load (no coordinated omission).
//!
//! Invariants:
//! - Memory is bounded: one intended-send slot per scheduled request, capped by
//!   [`REQUESTS_MAX`], allocated before the run starts.
//! - A send that leaves later than [`LATE_SEND_THRESHOLD`] after its intended time is
//!   counted; a run with late sends is reported as not meeting its schedule.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use codec::field::FieldText;
use codec::{InstitutionId, Message, MessageRef, PaymentCode, ReplyCode, TransactionId};
use hdrhistogram::Histogram;

use crate::client::Client;

/// Most requests one run schedules (bounds the intended-send table: 8 bytes each).
pub const REQUESTS_MAX: u64 = 50_000_000;
/// A send this late against its schedule counts as late: past it, the generator rather
/// than the switch is what limits the run. (Smaller lags are measured, not hidden: latency
/// runs from the intended send time.)
pub const LATE_SEND_THRESHOLD: Duration = Duration::from_millis(10);
/// Not yet sent / already answered markers in the intended-send table.
const SLOT_EMPTY: u64 = u64::MAX;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub rate_per_second: u64,
    pub duration: Duration,
    /// How long to wait for outstanding replies after the last send.
    pub drain_timeout: Duration,
}

#[derive(Debug)]
pub struct RunReport {
    pub scheduled: u64,
    pub sent: u64,
    pub late_sends: u64,
    pub send_elapsed: Duration,
    pub replies_by_code: BTreeMap<u16, u64>,
    pub missing: u64,
    /// Latency from intended send to reply, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl RunReport {
    /// The schedule was kept: every request left on time and every one was answered.
    pub fn is_valid(&self) -> bool {
        self.late_sends == 0 && self.missing == 0 && self.sent == self.scheduled
    }

    pub fn render(&self) -> String {
        let seconds = self.send_elapsed.as_secs_f64().max(f64::EPSILON);
        let mut text = format!(
            "sent {} of {} in {:.2} s ({:.0}/s achieved), late sends {}\n",
            self.sent,
            self.scheduled,
            seconds,
            self.sent as f64 / seconds,
            self.late_sends
        );
        let replies: u64 = self.replies_by_code.values().sum();
        text.push_str(&format!("replies {replies}, missing {}:", self.missing));
        for (&code, &count) in &self.replies_by_code {
            match ReplyCode::try_from(code) {
                Ok(code) => text.push_str(&format!(" {code:?} ({}) {count};", code.value())),
                Err(code) => text.push_str(&format!(" unknown ({code}) {count};")),
            }
        }
        text.push('\n');
        let h = &self.latency_us;
        text.push_str(&format!(
            "latency from intended send, us: p50 {} p90 {} p99 {} p99.9 {} max {}\n",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        ));
        text.push_str(if self.is_valid() {
            "run valid: schedule kept, every request answered\n"
        } else {
            "RUN INVALID: the schedule was not kept or replies are missing; latency figures understate\n"
        });
        text
    }
}

/// Makes a run's consumer-presented requests. Codes rotate over WeChat Pay (13, 18
/// digits), Alipay (28, 18 digits) and UnionPay (62, 19 digits), and are unique per session
/// (codes are single use). One template and one text buffer, reused: no allocation per
/// request.
struct Requests {
    template: codec::PaymentCodeRequest,
    session_id: u64,
    text: String,
}

impl Requests {
    fn new(participant: InstitutionId, session_id: u64) -> Self {
        let mut template = codec::sample::payment_code_request();
        template.details.originator = participant;
        Self { template, session_id, text: String::with_capacity(40) }
    }

    /// Request number `sequence` of this run.
    fn make(&mut self, sequence: u64) -> anyhow::Result<Message> {
        use std::fmt::Write;
        let mut request = self.template.clone();
        self.text.clear();
        let _ = write!(self.text, "LG{}-{sequence}", self.session_id);
        request.details.originator_transaction_id =
            TransactionId::new(&self.text).map_err(|e| anyhow::anyhow!("transaction id {e}"))?;
        self.text.clear();
        let prefix = ["13", "28", "62"][(sequence % 3) as usize];
        let _ = write!(self.text, "{prefix}{:04}{:012}", self.session_id % 10_000, sequence % 1_000_000_000_000);
        if prefix == "62" {
            self.text.push('0');
        }
        request.payment_code = PaymentCode::new(&self.text).map_err(|e| anyhow::anyhow!("payment code {e}"))?;
        Ok(Message::PaymentCodeRequest(request))
    }
}

/// The error for a run the switch ended by asking this session to sign off.
fn signed_off(answered: u64, of: u64) -> anyhow::Error {
    anyhow::anyhow!("the switch asked to sign off (it is shutting down): run ended after {answered} of {of} answered")
}

/// The run's sequence number in a reply's transaction id, and the reply's code.
fn reply_of(message: MessageRef<'_>) -> Option<(Option<u64>, u16)> {
    match message {
        MessageRef::PaymentReply(reply) => {
            Some((sequence_of(reply.originator_transaction_id.as_str()), reply.code.to_native()))
        }
        _ => None,
    }
}

fn sequence_of(id: &str) -> Option<u64> {
    id.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// Runs `config` on one signed-on session.
pub async fn run_open_loop(client: Client, config: &RunConfig) -> anyhow::Result<RunReport> {
    ensure!(config.rate_per_second > 0, "the rate must be at least 1 request per second");
    let scheduled = (config.rate_per_second as u128 * config.duration.as_nanos() / 1_000_000_000) as u64;
    ensure!(scheduled <= REQUESTS_MAX, "{scheduled} requests exceed the per-run limit of {REQUESTS_MAX}");
    let period_ns = 1_000_000_000 / config.rate_per_second;
    let intended: Arc<Vec<AtomicU64>> = Arc::new((0..scheduled).map(|_| AtomicU64::new(SLOT_EMPTY)).collect());

    let Client { participant, session_id, mut reader, mut writer } = client;
    let start = Instant::now();

    let sender_intended = Arc::clone(&intended);
    let mut requests = Requests::new(participant, session_id);
    let sender = tokio::spawn(async move {
        let mut late_sends = 0u64;
        let mut sequence = 0u64;
        while sequence < scheduled {
            let elapsed_ns = start.elapsed().as_nanos() as u64;
            // Everything due by now leaves in one write; never early, since a reply before
            // the intended send time would flatter.
            while sequence < scheduled && sequence * period_ns <= elapsed_ns {
                let due_ns = sequence * period_ns;
                if elapsed_ns - due_ns > LATE_SEND_THRESHOLD.as_nanos() as u64 {
                    late_sends += 1;
                }
                // Release: the reader must see the slot before it can see the reply.
                sender_intended[sequence as usize].store(due_ns, Ordering::Release);
                writer.queue(&requests.make(sequence)?)?;
                sequence += 1;
            }
            writer.flush().await?;
            if sequence < scheduled {
                // tokio's timer ticks in milliseconds, so at high rates this sends about a
                // millisecond's requests per write (and that wait counts in their latency).
                tokio::time::sleep_until((start + Duration::from_nanos(sequence * period_ns)).into()).await;
            }
        }
        anyhow::Ok((late_sends, start.elapsed(), writer))
    });

    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?;
    let mut replies_by_code = BTreeMap::new();
    let mut answered = 0u64;
    let mut drain_deadline: Option<Instant> = None;
    let mut sender = Some(sender);
    let mut outcome = None;
    while answered < scheduled {
        if let Some(handle) = sender.as_mut().filter(|h| h.is_finished()) {
            outcome = Some(handle.await.context("sender task")??);
            sender = None;
            drain_deadline = Some(Instant::now() + config.drain_timeout);
        }
        let wait = drain_deadline.map_or(Duration::from_millis(50), |d| d.saturating_duration_since(Instant::now()));
        if drain_deadline.is_some() && wait.is_zero() {
            break;
        }
        // Every reply one read brought in, under one timer.
        let mut bad = None;
        let batch = reader.read_batch(|message| {
            if matches!(message, MessageRef::SignOffRequest(_)) {
                bad.get_or_insert_with(|| signed_off(answered, scheduled));
            }
            let Some((sequence, code)) = reply_of(message) else { return };
            let Some(sequence) = sequence.filter(|&s| s < scheduled) else {
                bad.get_or_insert_with(|| anyhow::anyhow!("a reply names a transaction this run never sent"));
                return;
            };
            let due_ns = intended[sequence as usize].swap(SLOT_EMPTY, Ordering::Acquire);
            if due_ns == SLOT_EMPTY {
                bad.get_or_insert_with(|| {
                    anyhow::anyhow!("transaction {sequence} was answered twice or before it was sent")
                });
                return;
            }
            let elapsed_us = (start.elapsed().as_nanos() as u64).saturating_sub(due_ns) / 1_000;
            latency_us.saturating_record(elapsed_us.max(1));
            *replies_by_code.entry(code).or_insert(0) += 1;
            answered += 1;
        });
        if let Ok(result) = tokio::time::timeout(wait.min(Duration::from_millis(50)), batch).await {
            result?;
        }
        if let Some(error) = bad {
            // The sender stops with this task's end; its connection closes.
            if let Some(sender) = sender {
                sender.abort();
            }
            return Err(error);
        }
    }
    let (late_sends, send_elapsed, writer) = match outcome {
        Some(outcome) => outcome,
        None => sender.context("sender state")?.await.context("sender task")??,
    };
    writer.close().await?;
    Ok(RunReport {
        scheduled,
        sent: scheduled,
        late_sends,
        send_elapsed,
        replies_by_code,
        missing: scheduled - answered,
        latency_us,
    })
}

#[derive(Debug)]
pub struct ClosedLoopReport {
    pub in_flight: usize,
    pub sent: u64,
    pub answered: u64,
    pub elapsed: Duration,
    pub replies_by_code: BTreeMap<u16, u64>,
    /// Latency from send to reply, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl ClosedLoopReport {
    pub fn throughput(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    pub fn render(&self) -> String {
        let h = &self.latency_us;
        let mut text = format!(
            "closed loop, {} in flight: {} answered of {} sent in {:.2} s: {:.0}/s\n",
            self.in_flight,
            self.answered,
            self.sent,
            self.elapsed.as_secs_f64(),
            self.throughput()
        );
        text.push_str("replies:");
        for (&code, &count) in &self.replies_by_code {
            match ReplyCode::try_from(code) {
                Ok(code) => text.push_str(&format!(" {code:?} ({}) {count};", code.value())),
                Err(code) => text.push_str(&format!(" unknown ({code}) {count};")),
            }
        }
        text.push_str(&format!(
            "\nlatency from send, us: p50 {} p90 {} p99 {} p99.9 {} max {}\n",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        ));
        text
    }
}

/// A closed-loop run: keeps `in_flight` requests outstanding for `duration`, sending one
/// for each reply (in batches: everything one read brought in is answered in one write),
/// then waits up to `drain_timeout` for the rest. Measures throughput, not a schedule.
pub async fn run_closed_loop(
    client: Client,
    in_flight: usize,
    duration: Duration,
    drain_timeout: Duration,
) -> anyhow::Result<ClosedLoopReport> {
    ensure!(in_flight > 0, "at least one request in flight");
    let Client { participant, session_id, mut reader, mut writer } = client;
    let mut requests = Requests::new(participant, session_id);
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?;
    let mut replies_by_code = BTreeMap::new();
    // Send times of the outstanding requests, by sequence: at most `in_flight` entries.
    let mut outstanding: std::collections::HashMap<u64, Instant> = std::collections::HashMap::with_capacity(in_flight);
    let start = Instant::now();
    let mut sent = 0u64;
    for _ in 0..in_flight {
        writer.queue(&requests.make(sent)?)?;
        outstanding.insert(sent, Instant::now());
        sent += 1;
    }
    writer.flush().await?;
    let (mut answered, mut to_send) = (0u64, 0usize);
    let mut bad: Option<anyhow::Error> = None;
    let send_until = start + duration;
    while !outstanding.is_empty() {
        let now = Instant::now();
        let wait = if now < send_until { send_until - now + drain_timeout } else { drain_timeout };
        let mut signing_off = false;
        let batch = reader.read_batch(|message| {
            signing_off |= matches!(message, MessageRef::SignOffRequest(_));
            let Some((sequence, code)) = reply_of(message) else { return };
            let Some(sent_at) = sequence.and_then(|s| outstanding.remove(&s)) else {
                bad.get_or_insert_with(|| anyhow::anyhow!("a reply names a request not outstanding"));
                return;
            };
            latency_us.saturating_record((sent_at.elapsed().as_micros() as u64).max(1));
            *replies_by_code.entry(code).or_insert(0) += 1;
            answered += 1;
            to_send += 1;
        });
        match tokio::time::timeout(wait, batch).await {
            Ok(result) => {
                result?;
            }
            Err(_) => break,
        }
        if let Some(error) = bad.take() {
            return Err(error);
        }
        if signing_off {
            writer.send(&Message::SignOffReply(codec::SignOff { code: 0, reserved: [0; 6] })).await?;
            return Err(signed_off(answered, sent));
        }
        if Instant::now() < send_until {
            let now = Instant::now();
            for _ in 0..std::mem::take(&mut to_send) {
                writer.queue(&requests.make(sent)?)?;
                outstanding.insert(sent, now);
                sent += 1;
            }
            writer.flush().await?;
        }
    }
    let elapsed = start.elapsed();
    writer.close().await?;
    Ok(ClosedLoopReport { in_flight, sent, answered, elapsed, replies_by_code, latency_us })
}
