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

use anyhow::{Context, bail, ensure};
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
/// Waits longer than this sleep on the timer (about 1 ms granular); shorter ones yield
/// until due, so sends leave on time rather than up to a timer tick late.
const SLEEP_THRESHOLD: Duration = Duration::from_millis(2);
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

/// The consumer-presented request number `sequence` of this run. Codes rotate over WeChat
/// Pay (13, 18 digits), Alipay (28, 18 digits) and UnionPay (62, 19 digits), and are unique
/// per session (codes are single use).
fn request(participant: InstitutionId, session_id: u64, sequence: u64) -> anyhow::Result<Message> {
    let mut request = codec::sample::payment_code_request();
    request.details.originator = participant;
    request.details.originator_transaction_id =
        TransactionId::new(&format!("LG{session_id}-{sequence}")).map_err(|e| anyhow::anyhow!("transaction id {e}"))?;
    let unique = format!("{:04}{:012}", session_id % 10_000, sequence % 1_000_000_000_000);
    let code = match sequence % 3 {
        0 => format!("13{unique}"),
        1 => format!("28{unique}"),
        _ => format!("62{unique}0"),
    };
    request.payment_code = PaymentCode::new(&code).map_err(|e| anyhow::anyhow!("payment code {e}"))?;
    Ok(Message::PaymentCodeRequest(request))
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
    let sender = tokio::spawn(async move {
        let mut late_sends = 0u64;
        for sequence in 0..scheduled {
            let due_ns = sequence * period_ns;
            let due = start + Duration::from_nanos(due_ns);
            let mut now = Instant::now();
            while now < due {
                // Never early: a reply before the intended send time would flatter.
                writer.flush().await?;
                if due - now > SLEEP_THRESHOLD {
                    tokio::time::sleep_until((due - SLEEP_THRESHOLD / 2).into()).await;
                } else {
                    tokio::task::yield_now().await;
                }
                now = Instant::now();
            }
            if now - due > LATE_SEND_THRESHOLD {
                late_sends += 1;
            }
            // Release: the reader must see the slot before it can see the reply.
            sender_intended[sequence as usize].store(due_ns, Ordering::Release);
            writer.queue(&request(participant, session_id, sequence)?)?;
        }
        writer.flush().await?;
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
        let next = reader.next(|message| match message {
            MessageRef::PaymentReply(reply) => {
                Some((sequence_of(reply.originator_transaction_id.as_str()), reply.code.to_native()))
            }
            _ => None,
        });
        let Ok(result) = tokio::time::timeout(wait.min(Duration::from_millis(50)), next).await else {
            continue;
        };
        let Some((sequence, code)) = result? else {
            continue;
        };
        let Some(sequence) = sequence.filter(|&s| s < scheduled) else {
            bail!("a reply names a transaction this run never sent");
        };
        let due_ns = intended[sequence as usize].swap(SLOT_EMPTY, Ordering::Acquire);
        if due_ns == SLOT_EMPTY {
            bail!("transaction {sequence} was answered twice or before it was sent");
        }
        let elapsed_us = (start.elapsed().as_nanos() as u64).saturating_sub(due_ns) / 1_000;
        latency_us.saturating_record(elapsed_us.max(1));
        *replies_by_code.entry(code).or_insert(0) += 1;
        answered += 1;
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
