//! What the run measured, per connection, gathered by the engine once per interval.
//!
//! Writers count sends in atomics; a reader records each reply under its connection's
//! mutex (uncontended but for the once-per-interval collection).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::traffic::Kind;

/// Latencies above this (a minute) are recorded as this.
pub const LATENCY_MAX_US: u64 = 60_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("static histogram bounds are valid")
}

/// One connection's counters.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Requests due (sent, late or not, plus dropped).
    pub scheduled: AtomicU64,
    pub sent: AtomicU64,
    /// Sent, but later than the late threshold after their intended time.
    pub late: AtomicU64,
    /// Never sent: the generator was further behind than it may catch up.
    pub dropped: AtomicU64,
    /// Never sent: due while an injected disconnect fault had the connection down.
    pub fault_dropped: AtomicU64,
    /// Sent, then lost with the connection an injected disconnect closed (the switch
    /// answers the session that asked; that session is gone).
    pub fault_lost: AtomicU64,
    pub replies: Mutex<Replies>,
    pub responder: Mutex<Responded>,
}

/// Replies to this connection's requests.
#[derive(Debug)]
pub struct Replies {
    pub interval: Histogram<u64>,
    pub total: Histogram<u64>,
    /// Count per (kind, reply code).
    pub codes: BTreeMap<(Kind, u16), u64>,
    pub answered: u64,
    /// Switch answers (codes 100 and up), rejects, and replies we cannot place.
    pub errors: u64,
    pub rejects: u64,
    /// Replies naming a transaction this run did not send, or answered twice.
    pub unexpected: u64,
    seen: Vec<u64>,
}

impl Default for Replies {
    fn default() -> Self {
        Self {
            interval: histogram(),
            total: histogram(),
            codes: BTreeMap::new(),
            answered: 0,
            errors: 0,
            rejects: 0,
            unexpected: 0,
            seen: Vec::new(),
        }
    }
}

impl Replies {
    /// Marks `sequence` answered; false if it already was.
    pub fn first_answer(&mut self, sequence: u64) -> bool {
        let (word, bit) = ((sequence / 64) as usize, sequence % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1 + word / 4, 0);
        }
        let fresh = self.seen[word] & (1 << bit) == 0;
        self.seen[word] |= 1 << bit;
        fresh
    }

    pub fn record(&mut self, kind: Kind, code: u16, latency_us: u64) {
        let latency = latency_us.clamp(1, LATENCY_MAX_US);
        self.interval.saturating_record(latency);
        self.total.saturating_record(latency);
        *self.codes.entry((kind, code)).or_insert(0) += 1;
        self.answered += 1;
        if code >= 100 {
            self.errors += 1;
        }
    }
}

/// What this connection's participant answered as a receiver.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Responded {
    pub requests: u64,
    pub approved: u64,
    pub declined: u64,
    pub ignored: u64,
    pub reversals: u64,
    pub refunds: u64,
    pub disconnects: u64,
}

impl Responded {
    pub fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.approved += other.approved;
        self.declined += other.declined;
        self.ignored += other.ignored;
        self.reversals += other.reversals;
        self.refunds += other.refunds;
        self.disconnects += other.disconnects;
    }
}

/// Counters summed over connections at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub scheduled: u64,
    pub sent: u64,
    pub late: u64,
    pub dropped: u64,
    pub fault_dropped: u64,
    pub fault_lost: u64,
    pub answered: u64,
    pub errors: u64,
    pub unexpected: u64,
}

impl Counters {
    pub fn delta(&self, before: &Self) -> Self {
        Self {
            scheduled: self.scheduled - before.scheduled,
            sent: self.sent - before.sent,
            late: self.late - before.late,
            dropped: self.dropped - before.dropped,
            fault_dropped: self.fault_dropped - before.fault_dropped,
            fault_lost: self.fault_lost - before.fault_lost,
            answered: self.answered - before.answered,
            errors: self.errors - before.errors,
            unexpected: self.unexpected - before.unexpected,
        }
    }

    /// Sent and neither answered nor lost to an injected disconnect.
    pub fn in_flight(&self) -> u64 {
        self.sent.saturating_sub(self.answered + self.fault_lost)
    }
}

/// Sums the counters of `connections`, and takes (resets) their interval histograms into
/// `interval`.
pub fn collect(connections: &[std::sync::Arc<ConnStats>], interval: &mut Histogram<u64>) -> Counters {
    let mut c = Counters::default();
    for conn in connections {
        c.scheduled += conn.scheduled.load(Ordering::Relaxed);
        c.sent += conn.sent.load(Ordering::Relaxed);
        c.late += conn.late.load(Ordering::Relaxed);
        c.dropped += conn.dropped.load(Ordering::Relaxed);
        c.fault_dropped += conn.fault_dropped.load(Ordering::Relaxed);
        c.fault_lost += conn.fault_lost.load(Ordering::Relaxed);
        let mut replies = conn.replies.lock().unwrap_or_else(|e| e.into_inner());
        c.answered += replies.answered;
        c.errors += replies.errors;
        c.unexpected += replies.unexpected;
        let _ = interval.add(&replies.interval);
        replies.interval.reset();
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_once_and_errors_are_switch_answers() {
        let mut replies = Replies::default();
        assert!(replies.first_answer(5));
        assert!(!replies.first_answer(5));
        assert!(replies.first_answer(100_000));
        replies.record(Kind::Payment, 0, 1500);
        replies.record(Kind::Payment, 2, 1500);
        replies.record(Kind::Payment, 100, 10_000_000);
        assert_eq!((replies.answered, replies.errors), (3, 1));
        let stats = std::sync::Arc::new(ConnStats::default());
        *stats.replies.lock().unwrap() = replies;
        stats.sent.store(4, Ordering::Relaxed);
        let mut interval = histogram();
        let counters = collect(std::slice::from_ref(&stats), &mut interval);
        assert_eq!((counters.answered, counters.in_flight()), (3, 1));
        assert_eq!(interval.len(), 3);
        assert_eq!(stats.replies.lock().unwrap().interval.len(), 0);
    }
}
