//! The switch's metrics, exposed at the admin port's `/metrics` in the Prometheus text
//! format: one `switch_` prefix, base units (seconds), `_total` counters.
//!
//! Invariants: every label value comes from a closed table (reply codes, reject reasons,
//! close reasons), never from input, so the series count is bounded; counting is relaxed
//! atomics on the connection tasks, with no lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use codec::{Message, RejectReason, ReplyCode};

use crate::core::session::CloseReason;

/// Every close reason, for a fixed label set.
const CLOSE_REASONS: [CloseReason; 10] = [
    CloseReason::SignOnRefused,
    CloseReason::SignOnTimeout,
    CloseReason::NotSignedOn,
    CloseReason::IdleTimeout,
    CloseReason::SignedOff,
    CloseReason::FramingError,
    CloseReason::Shutdown,
    CloseReason::DrainDeadline,
    CloseReason::Backlogged,
    CloseReason::Evicted,
];

/// What became of an ISO 8583 message the switch could not take as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsoRefusal {
    /// Answered DE39 30: it could not be unpacked or translated, or broke the field rules.
    Malformed,
    /// Answered DE39 12: an MTI or DE3 processing code the switch does not carry.
    Unsupported,
    /// Not answered: its MTI or DE11 could not be read, so its host could not match an
    /// answer (or it was an answer that broke the rules, dropped).
    Unanswerable,
}

impl IsoRefusal {
    const ALL: [Self; 3] = [Self::Malformed, Self::Unsupported, Self::Unanswerable];

    fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unsupported => "unsupported",
            Self::Unanswerable => "unanswerable",
        }
    }
}

/// Why a participant connection was refused or cut before it signed on (`edge::gate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// Its source holds as many connections not signed on as it may.
    PerSource,
    /// No descriptor left for it within the budget, and nobody to evict.
    FdBudget,
    /// It had not signed on and was the oldest such when room was needed.
    Evicted,
    /// Its participant holds as many sessions as it may (a refused sign-on).
    SessionsPerParticipant,
}

impl ConnectionRefusal {
    const ALL: [Self; 4] = [Self::PerSource, Self::FdBudget, Self::Evicted, Self::SessionsPerParticipant];

    fn label(self) -> &'static str {
        match self {
            Self::PerSource => "per_source",
            Self::FdBudget => "fd_budget",
            Self::Evicted => "evicted",
            Self::SessionsPerParticipant => "sessions_per_participant",
        }
    }
}

/// Buckets per latency histogram.
const BUCKETS: usize = 10;
/// Upper bounds of the batch-processing histogram, in seconds.
const BATCH_BUCKETS_S: [f64; BUCKETS] =
    [0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01];
/// Upper bounds of the journal group-commit histogram (write and sync), in seconds.
const COMMIT_BUCKETS_S: [f64; BUCKETS] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1];

/// A latency histogram in the Prometheus layout: relaxed atomic buckets, count and sum.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn observe(&self, bounds: &[f64; BUCKETS], elapsed: std::time::Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(index) = bounds.iter().position(|&bound| seconds <= bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines of family `name`.
    fn lines(&self, name: &str, bounds: &[f64; BUCKETS]) -> Vec<String> {
        let mut cumulative = 0;
        let mut lines: Vec<String> = bounds
            .iter()
            .zip(&self.buckets)
            .map(|(bound, bucket)| {
                cumulative += bucket.load(Ordering::Relaxed);
                format!("{name}_bucket{{le=\"{bound}\"}} {cumulative}")
            })
            .collect();
        let count = self.count.load(Ordering::Relaxed);
        lines.push(format!("{name}_bucket{{le=\"+Inf\"}} {count}"));
        lines.push(format!("{name}_sum {}", self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9));
        lines.push(format!("{name}_count {count}"));
        lines
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    connections_open: AtomicI64,
    sessions_signed_on: AtomicI64,
    sign_on_approved: AtomicU64,
    sign_on_refused: AtomicU64,
    tls_accepted: AtomicU64,
    tls_refused: AtomicU64,
    frames_received: AtomicU64,
    /// Indexed by `RejectReason` value (1..=13).
    frames_rejected: [AtomicU64; 16],
    /// Indexed by position in `ReplyCode::ALL`.
    replies: [AtomicU64; 32],
    /// Indexed by position in `CLOSE_REASONS`.
    closes: [AtomicU64; CLOSE_REASONS.len()],
    batches: Histogram,
    journal_commits: Histogram,
    journal_records: AtomicU64,
    journal_segments_removed: AtomicU64,
    journal_bytes_removed: AtomicU64,
    /// Windows cut whose files an interrupted close has not yet finished.
    clearing_incomplete: AtomicU64,
    draining: AtomicBool,
    /// Set once the shards are up (tables touched, journal recovered).
    serving: AtomicBool,
    /// Admitted events waiting in each shard's inbox, as its loop last saw it.
    admitted_backlog: std::sync::OnceLock<Box<[AtomicU64]>>,
    /// Indexed by position in `IsoRefusal::ALL`.
    iso8583_refused: [AtomicU64; 3],
    /// Indexed by position in `ConnectionRefusal::ALL`.
    connections_refused: [AtomicU64; 4],
    sign_on_throttled: AtomicU64,
    shard_stalls: AtomicU64,
    shard_stalled_ms: AtomicU64,
    shards: AtomicU64,
    /// Fleet publication, when this node publishes (`crate::settlement::fleet`).
    fleet: std::sync::OnceLock<std::sync::Arc<crate::settlement::fleet::Progress>>,
}

const _: () = assert!(codec::ReplyCode::ALL.len() <= 32);

impl Metrics {
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, signed_on: bool, reason: Option<CloseReason>) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
        if signed_on {
            self.sessions_signed_on.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(index) = reason.and_then(|r| CLOSE_REASONS.iter().position(|&c| c == r)) {
            self.closes[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A TLS handshake on a participant link finished (`accepted`) or was refused (unknown
    /// CA, expired or revoked certificate, no certificate, timeout).
    pub fn tls_handshake(&self, accepted: bool) {
        let counter = if accepted { &self.tls_accepted } else { &self.tls_refused };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn frames_received(&self, count: u64) {
        self.frames_received.fetch_add(count, Ordering::Relaxed);
    }

    /// Counts what the switch sends: sign-on outcomes, replies by code, rejects by reason.
    pub fn sent(&self, message: &Message) {
        match message {
            Message::SignOnResult(result) if result.code == ReplyCode::Approved.value() => {
                self.sign_on_approved.fetch_add(1, Ordering::Relaxed);
                self.sessions_signed_on.fetch_add(1, Ordering::Relaxed);
            }
            Message::SignOnResult(_) => {
                self.sign_on_refused.fetch_add(1, Ordering::Relaxed);
            }
            Message::PaymentReply(reply) | Message::ReversalReply(reply) | Message::RefundReply(reply) => {
                if let Some(index) = ReplyCode::ALL.iter().position(|c| c.value() == reply.code) {
                    self.replies[index].fetch_add(1, Ordering::Relaxed);
                }
            }
            Message::Reject(reject) => {
                if let Some(slot) = self.frames_rejected.get(usize::from(reject.reason)) {
                    slot.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    /// Time from a read's arrival to its replies being encoded.
    pub fn batch_processed(&self, elapsed: std::time::Duration) {
        self.batches.observe(&BATCH_BUCKETS_S, elapsed);
    }

    /// A shard's journal wrote (and, under its policy, synced) `records` in one group
    /// commit taking `elapsed`.
    pub fn journal_committed(&self, records: usize, elapsed: std::time::Duration) {
        self.journal_commits.observe(&COMMIT_BUCKETS_S, elapsed);
        self.journal_records.fetch_add(records as u64, Ordering::Relaxed);
    }

    /// Journal retention removed `segments` segments of `bytes` bytes.
    pub fn journal_removed(&self, segments: u64, bytes: u64) {
        self.journal_segments_removed.fetch_add(segments, Ordering::Relaxed);
        self.journal_bytes_removed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `windows` cut windows wait for their files (an interrupted close not yet finished).
    pub fn set_clearing_incomplete(&self, windows: u64) {
        self.clearing_incomplete.store(windows, Ordering::Relaxed);
    }

    /// Shard `shard` has `events` admitted events waiting (answers, deliveries, ...).
    pub fn set_admitted_backlog(&self, shard: usize, events: usize) {
        let shards = self
            .admitted_backlog
            .get_or_init(|| (0..crate::core::shard::SHARDS_MAX).map(|_| AtomicU64::new(0)).collect());
        shards[shard].store(events as u64, Ordering::Relaxed);
    }

    /// A connection refused or evicted at the gate (`edge::gate`).
    pub fn connection_refused(&self, refusal: ConnectionRefusal) {
        if let Some(index) = ConnectionRefusal::ALL.iter().position(|&r| r == refusal) {
            self.connections_refused[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A shard loop noticed it had been stalled `stall_ms` (kept out of the exchange's clock).
    pub fn shard_stalled(&self, stall_ms: u64) {
        self.shard_stalls.fetch_add(1, Ordering::Relaxed);
        self.shard_stalled_ms.fetch_add(stall_ms, Ordering::Relaxed);
    }

    /// A sign-on made to wait for its turn after failures from its source or participant.
    pub fn sign_on_throttled(&self) {
        self.sign_on_throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// An ISO 8583 message refused at the edge (`edge::iso`).
    pub fn iso8583_refused(&self, refusal: IsoRefusal) {
        if let Some(index) = IsoRefusal::ALL.iter().position(|&r| r == refusal) {
            self.iso8583_refused[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This node publishes to a fleet: its progress is exported (`switch_fleet_*`).
    pub fn set_fleet(&self, progress: std::sync::Arc<crate::settlement::fleet::Progress>) {
        let _ = self.fleet.set(progress);
    }

    pub fn set_shards(&self, shards: usize) {
        self.shards.store(shards as u64, Ordering::Relaxed);
    }

    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        // Writing to a String cannot fail.
        let mut section = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
        };
        section(
            "switch_build_info",
            "gauge",
            "Build of the running switch.",
            vec![format!("switch_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))],
        );
        section(
            "switch_connections_open",
            "gauge",
            "Participant TCP connections open.",
            vec![format!("switch_connections_open {}", self.connections_open.load(Ordering::Relaxed))],
        );
        section(
            "switch_sessions_signed_on",
            "gauge",
            "Sessions signed on.",
            vec![format!("switch_sessions_signed_on {}", self.sessions_signed_on.load(Ordering::Relaxed))],
        );
        section(
            "switch_sign_on_total",
            "counter",
            "Sign-on attempts by result.",
            vec![
                format!("switch_sign_on_total{{result=\"approved\"}} {}", load(&self.sign_on_approved)),
                format!("switch_sign_on_total{{result=\"refused\"}} {}", load(&self.sign_on_refused)),
            ],
        );
        section(
            "switch_sign_on_throttled_total",
            "counter",
            "Sign-ons made to wait before evaluation after failed sign-ons from their source or for their participant.",
            vec![format!("switch_sign_on_throttled_total {}", load(&self.sign_on_throttled))],
        );
        section(
            "switch_connections_refused_total",
            "counter",
            "Participant connections closed by the connection limits, by reason.",
            ConnectionRefusal::ALL
                .iter()
                .enumerate()
                .map(|(index, refusal)| {
                    let count = load(&self.connections_refused[index]);
                    format!("switch_connections_refused_total{{reason=\"{}\"}} {count}", refusal.label())
                })
                .collect(),
        );
        section(
            "switch_tls_handshakes_total",
            "counter",
            "TLS handshakes on participant links by result (refused: unknown CA, expired, revoked, none).",
            vec![
                format!("switch_tls_handshakes_total{{result=\"accepted\"}} {}", load(&self.tls_accepted)),
                format!("switch_tls_handshakes_total{{result=\"refused\"}} {}", load(&self.tls_refused)),
            ],
        );
        section(
            "switch_frames_received_total",
            "counter",
            "Native frames received (valid or not).",
            vec![format!("switch_frames_received_total {}", load(&self.frames_received))],
        );
        section(
            "switch_frames_rejected_total",
            "counter",
            "Frames refused, by reject reason.",
            RejectReason::ALL
                .iter()
                .map(|reason| {
                    let count = load(&self.frames_rejected[usize::from(reason.value())]);
                    format!("switch_frames_rejected_total{{reason=\"{reason:?}\"}} {count}")
                })
                .collect(),
        );
        section(
            "switch_replies_total",
            "counter",
            "Replies sent to participants, by reply code.",
            ReplyCode::ALL
                .iter()
                .enumerate()
                .map(|(index, code)| {
                    format!("switch_replies_total{{code=\"{code:?}\"}} {}", load(&self.replies[index]))
                })
                .collect(),
        );
        section(
            "switch_sessions_closed_total",
            "counter",
            "Connections closed by the switch, by reason.",
            CLOSE_REASONS
                .iter()
                .enumerate()
                .map(|(index, reason)| {
                    format!("switch_sessions_closed_total{{reason=\"{reason:?}\"}} {}", load(&self.closes[index]))
                })
                .collect(),
        );
        section(
            "switch_batch_processing_seconds",
            "histogram",
            "Time from a read's arrival to its replies being encoded.",
            self.batches.lines("switch_batch_processing_seconds", &BATCH_BUCKETS_S),
        );
        section(
            "switch_journal_commit_seconds",
            "histogram",
            "Time of one journal group commit: the write and, under the fsync policy, the sync. Replies wait for it.",
            self.journal_commits.lines("switch_journal_commit_seconds", &COMMIT_BUCKETS_S),
        );
        section(
            "switch_journal_records_total",
            "counter",
            "Journal records written (divide by switch_journal_commit_seconds_count: records per group commit).",
            vec![format!("switch_journal_records_total {}", load(&self.journal_records))],
        );
        section(
            "switch_journal_segments_removed_total",
            "counter",
            "Journal segments removed by retention ([journal] retain_windows) after a window closed.",
            vec![format!("switch_journal_segments_removed_total {}", load(&self.journal_segments_removed))],
        );
        section(
            "switch_journal_removed_bytes_total",
            "counter",
            "Bytes of journal segments removed by retention.",
            vec![format!("switch_journal_removed_bytes_total {}", load(&self.journal_bytes_removed))],
        );
        section(
            "switch_clearing_incomplete_windows",
            "gauge",
            "Clearing windows cut whose files are not written (an interrupted close not yet finished); while above 0 no later window closes.",
            vec![format!("switch_clearing_incomplete_windows {}", load(&self.clearing_incomplete))],
        );
        if let Some(seconds) = process_cpu_seconds() {
            section(
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time of the switch process.",
                vec![format!("process_cpu_seconds_total {seconds}")],
            );
        }
        section(
            "switch_shards",
            "gauge",
            "Shards (event-loop threads) running.",
            vec![format!("switch_shards {}", load(&self.shards))],
        );
        section(
            "switch_shard_stalls_total",
            "counter",
            "Stalls of a shard loop (over 1 s without a turn: the process stopped or starved); reply deadlines are extended by them.",
            vec![format!("switch_shard_stalls_total {}", load(&self.shard_stalls))],
        );
        section(
            "switch_shard_stalled_seconds_total",
            "counter",
            "Time shard loops were stalled, kept out of the exchanges' clocks.",
            vec![format!("switch_shard_stalled_seconds_total {}", load(&self.shard_stalled_ms) as f64 / 1e3)],
        );
        section(
            "switch_shard_admitted_backlog",
            "gauge",
            "Admitted events (answers, deliveries, session events) waiting in the shards' inboxes; never dropped. Past 65,536 in one shard, connections pause reading.",
            vec![format!(
                "switch_shard_admitted_backlog {}",
                self.admitted_backlog
                    .get()
                    .map_or(0, |shards| shards.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>())
            )],
        );
        section(
            "switch_iso8583_refused_total",
            "counter",
            "ISO 8583 messages refused at the edge: answered DE39 30 (malformed), 12 (unsupported), or not answerable.",
            IsoRefusal::ALL
                .iter()
                .enumerate()
                .map(|(index, refusal)| {
                    let count = load(&self.iso8583_refused[index]);
                    format!("switch_iso8583_refused_total{{outcome=\"{}\"}} {count}", refusal.label())
                })
                .collect(),
        );
        section(
            "switch_draining",
            "gauge",
            "1 while the switch drains for shutdown.",
            vec![format!("switch_draining {}", u8::from(self.is_draining()))],
        );
        if let Some(fleet) = self.fleet.get() {
            fleet.render(&mut out);
        }
        out
    }
}

/// This process's user plus system CPU time, from `/proc/self/stat` (Linux; `None`
/// elsewhere). Its tick is `USER_HZ`, which Linux fixes at 100 for user space.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let user: u64 = fields.nth(11)?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_well_formed_and_bounded() {
        let metrics = Metrics::default();
        metrics.connection_opened();
        metrics
            .sent(&Message::PaymentReply(codec::Reply { code: ReplyCode::NoRoute.value(), ..codec::Reply::default() }));
        metrics.batch_processed(std::time::Duration::from_micros(30));
        metrics.journal_committed(40, std::time::Duration::from_micros(700));
        metrics.journal_committed(2, std::time::Duration::from_millis(30));
        let text = metrics.render();
        assert!(text.contains("switch_journal_commit_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("switch_journal_commit_seconds_bucket{le=\"0.1\"} 2\n"), "{text}");
        assert!(text.contains("switch_journal_commit_seconds_count 2\n"), "{text}");
        assert!(text.contains("switch_journal_records_total 42\n"), "{text}");
        assert!(text.contains("switch_replies_total{code=\"NoRoute\"} 1"), "{text}");
        assert!(text.contains("switch_connections_open 1"));
        assert!(text.contains("switch_batch_processing_seconds_bucket{le=\"0.00005\"} 1"), "{text}");
        assert!(text.contains("switch_batch_processing_seconds_count 1"));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().expect("name");
            let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {family} ")), "{name} has no TYPE line");
        }
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        assert!(series < 100, "{series} series");
    }
}
