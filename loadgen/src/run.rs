//! A closed-loop run: a fixed number of requests outstanding from one acquirer, a new
//! one sent for each reply. It measures throughput, not a schedule (the open-loop engine
//! in [`crate::engine`] measures latency against one).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use codec::field::FieldText;
use codec::{InstitutionId, Message, MessageRef, ReplyCode};
use hdrhistogram::Histogram;

use crate::client::Client;
use crate::profile::Profile;
use crate::rng::Rng;
use crate::traffic::{Approved, Flow, Origination, QR_GUID_DEFAULT, Traffic, parse_id};

/// The closed loop's requests: consumer-presented payment codes of the weekday mix's
/// wallets, made and numbered as the open-loop engine makes them.
struct Requests {
    traffic: Traffic,
    /// Always empty: a closed loop sends payments only.
    none_approved: VecDeque<Approved>,
    started_unix_ms: i64,
}

impl Requests {
    fn new(participant: InstitutionId) -> anyhow::Result<Self> {
        let profile = Profile::load("weekday").map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut run = [0u8; 4];
        getrandom::fill(&mut run).context("drawing a run id")?;
        let run = u32::from_le_bytes(run) & 0x00FF_FFFF;
        let origination = Origination { participant, flows: vec![(Flow::ConsumerPresented, 1.0)] };
        let traffic = Traffic::new(run, 0, &origination, Arc::new(profile.mix), QR_GUID_DEFAULT, Rng::new(run.into()))?;
        Ok(Self { traffic, none_approved: VecDeque::new(), started_unix_ms: crate::peer::unix_ms() })
    }

    /// The next request, sent `elapsed_us` after the start; it carries the wall-clock time
    /// (the switch refuses requests outside its replay window).
    fn make(&mut self, elapsed_us: u64) -> anyhow::Result<Message> {
        let now_ms = self.started_unix_ms + (elapsed_us / 1000) as i64;
        Ok(self.traffic.make(elapsed_us, now_ms, &mut self.none_approved)?.message)
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
    parse_id(id).map(|parts| parts.sequence)
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
    let Client { participant, mut reader, mut writer, .. } = client;
    let mut requests = Requests::new(participant)?;
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?;
    let mut replies_by_code = BTreeMap::new();
    // Send times of the outstanding requests, by sequence: at most `in_flight` entries.
    let mut outstanding: std::collections::HashMap<u64, Instant> = std::collections::HashMap::with_capacity(in_flight);
    let start = Instant::now();
    let mut sent = 0u64;
    for _ in 0..in_flight {
        writer.queue(&requests.make(start.elapsed().as_micros() as u64)?)?;
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
                writer.queue(&requests.make(start.elapsed().as_micros() as u64)?)?;
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
