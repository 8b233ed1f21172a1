//! Group commit: each shard's journal is written and synced by a thread of its own, while
//! the shard goes on deciding. A batch's messages are held until the journal thread reports
//! that batch durable; the thread takes every batch waiting when it starts a write, so one
//! sync covers as many batches as arrived during the previous one.
//!
//! ```text
//! shard loop ──(batch id, records)──▶ journal thread: write all waiting, sync (policy)
//!     ▲                                   │
//!     └──── durable id (atomic) + wake ───┘     held messages of batches <= durable leave
//! ```
//!
//! Invariants:
//! - Messages leave in the order they were produced, and none before the records of its
//!   batch and of every earlier batch are durable under the policy.
//! - At most [`HELD_BATCHES_MAX`] batches wait for the journal; beyond, the shard stops
//!   taking events until the journal catches up, so a slow disk slows the switch down
//!   instead of growing its memory.
//! - A failed write or sync stops the process ([`EXIT_JOURNAL_FAILED`]): nothing is
//!   answered that is not durable.
//! - The journal's head (`journal::head`) is at most [`HEAD_INTERVAL`] behind what is
//!   synced while the switch runs, and current after a clean stop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use crate::core::exchange::{Exchange, Outbound};
use crate::core::record::Record;
use crate::durability::journal::{EXIT_JOURNAL_FAILED, Journal, SyncPolicy};

/// Batches whose messages may wait for the journal at once.
pub const HELD_BATCHES_MAX: usize = 64;
/// How often, at most, the journal's head is written while records come (after the
/// group commit's messages are released, so no reply waits for it); and at a stop.
pub const HEAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A batch's messages, and who waits to hear it is durable (a window cut's closer).
#[derive(Debug)]
struct Held {
    id: u64,
    messages: Vec<Outbound>,
    waiters: Vec<Durable>,
}

/// Told once the batch holding it is durable.
pub type Durable = tokio::sync::oneshot::Sender<()>;

struct Batch {
    id: u64,
    records: Vec<Record>,
}

/// What one group commit did.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommit {
    /// The journal's last durable sequence.
    pub durable: u64,
    pub records: usize,
    /// The write and, under the policy, the sync (an interval policy's wait included).
    pub took: std::time::Duration,
}

/// A shard's side of group commit.
#[derive(Debug)]
pub struct Commit {
    /// To the journal's thread (taken when dropped, which ends the thread).
    batches: Option<mpsc::Sender<Batch>>,
    /// Joined when dropped: the thread writes the head before it ends.
    thread: Option<std::thread::JoinHandle<()>>,
    durable: Arc<AtomicU64>,
    next_id: u64,
    held: VecDeque<Held>,
    records: Vec<Record>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Batch {{ id: {}, records: {} }}", self.id, self.records.len())
    }
}

impl Commit {
    /// Starts shard `shard`'s journal thread; `wake` tells the shard a batch became durable,
    /// with what the group commit did.
    pub fn start(
        shard: usize,
        mut journal: Journal,
        wake: impl Fn(GroupCommit) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (batches, receiver) = mpsc::channel::<Batch>();
        let durable = Arc::new(AtomicU64::new(0));
        let reported = Arc::clone(&durable);
        let thread = std::thread::Builder::new().name(format!("journal-{shard}")).spawn(move || {
            let mut records = Vec::new();
            let mut last_sync = Instant::now();
            let mut last_head = Instant::now();
            let head = |journal: &mut Journal, last_head: &mut Instant| {
                if journal.head_behind()
                    && let Err(error) = journal.sync_head()
                {
                    tracing::error!(%error, shard, "journal head write failed: stopping");
                    std::process::exit(EXIT_JOURNAL_FAILED);
                }
                *last_head = Instant::now();
            };
            loop {
                // Ends when the shard loop drops its sender (the head is written then).
                let first = match receiver.recv_timeout(HEAD_INTERVAL) {
                    Ok(batch) => batch,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        head(&mut journal, &mut last_head);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        head(&mut journal, &mut last_head);
                        break;
                    }
                };
                let mut last = first.id;
                records.extend(first.records);
                while let Ok(batch) = receiver.try_recv() {
                    last = batch.id;
                    records.extend(batch.records);
                }
                let started = Instant::now();
                let written = match journal.policy() {
                    SyncPolicy::Always => journal.commit(&records, true),
                    SyncPolicy::Interval(interval) => {
                        // Wait out the interval (more batches gather meanwhile, taken next).
                        std::thread::sleep((last_sync + interval).saturating_duration_since(Instant::now()));
                        last_sync = Instant::now();
                        journal.commit(&records, true)
                    }
                    SyncPolicy::Never => journal.commit(&records, false),
                };
                let done = GroupCommit {
                    durable: journal.last_sequence(),
                    records: records.len(),
                    took: started.elapsed(),
                };
                records.clear();
                if let Err(error) = written {
                    tracing::error!(%error, shard, "journal write failed: stopping rather than answer what is not durable");
                    std::process::exit(EXIT_JOURNAL_FAILED);
                }
                reported.store(last, Ordering::Release);
                wake(done);
                if last_head.elapsed() >= HEAD_INTERVAL {
                    head(&mut journal, &mut last_head);
                }
            }
        })?;
        Ok(Self {
            batches: Some(batches),
            thread: Some(thread),
            durable,
            next_id: 0,
            held: VecDeque::new(),
            records: Vec::new(),
        })
    }

    /// Whether nothing is waiting to become durable.
    pub fn is_idle(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether the shard may take more events (the journal is not too far behind).
    pub fn accepting(&self) -> bool {
        self.held.len() < HELD_BATCHES_MAX
    }

    /// After a batch: hands its records to the journal thread and holds `out` (and
    /// `waiters`) behind them; puts back into `out` every held message whose batch is
    /// durable, oldest first, and tells its waiters.
    pub fn pass(&mut self, exchange: &mut Exchange, out: &mut Vec<Outbound>, waiters: &mut Vec<Durable>) {
        exchange.take_records(&mut self.records);
        if !self.records.is_empty() {
            self.next_id += 1;
            let batch = Batch { id: self.next_id, records: std::mem::take(&mut self.records) };
            if self.batches.as_ref().is_none_or(|batches| batches.send(batch).is_err()) {
                // The thread only ends when this side is dropped, or by stopping the process.
                tracing::error!("journal thread gone: stopping rather than answer what is not durable");
                std::process::exit(EXIT_JOURNAL_FAILED);
            }
            self.held.push_back(Held {
                id: self.next_id,
                messages: std::mem::take(out),
                waiters: std::mem::take(waiters),
            });
        } else if let Some(last) = self.held.back_mut() {
            // No records of its own, but produced after some not yet durable: waits behind them.
            last.messages.append(out);
            last.waiters.append(waiters);
        } else {
            for waiter in waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        let durable = self.durable.load(Ordering::Acquire);
        while self.held.front().is_some_and(|held| held.id <= durable) {
            let mut held = self.held.pop_front().expect("checked");
            out.append(&mut held.messages);
            for waiter in held.waiters {
                // The closer may have given up waiting; the cut is durable all the same.
                let _ = waiter.send(());
            }
        }
    }
}

impl Drop for Commit {
    /// Ends the journal's thread and waits for it: what was handed to it is written, and
    /// its head says so, before the shard is gone.
    fn drop(&mut self) {
        self.batches.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
