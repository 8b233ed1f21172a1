//! The fleet: each node publishes its journal's records to one NATS JetStream stream, and
//! `switch clearing close --source nats` builds the whole fleet's clearing from it.
//!
//! ```text
//! shard journal ──durable sequence──▶ publisher (own thread) ──▶ JetStream stream
//!   (the acknowledgement point)        reads the journal files     subject PREFIX.NODE.SHARD
//!                                      from where the stream ends  one message: up to
//!                                                                  PUBLISH_BATCH records
//! ```
//!
//! Invariants:
//! - Nothing on the per-message path waits for NATS: the journal is the acknowledgement
//!   point, and the publisher reads the journal's files behind it. A NATS outage costs only
//!   lag (`switch_fleet_lag_records`), never a reply.
//! - Only durable records are published (at or below the sequence the journal thread
//!   reported synced under the policy), so a published record is never lost by the node.
//! - Exactly once, in order, per node and shard. On every (re)connection the publisher asks
//!   the stream for the last message of its subject and resumes from the journal record
//!   after it; each publish expects that last message
//!   (`Nats-Expected-Last-Subject-Sequence`), so a retry after a lost acknowledgement, or a
//!   second writer on the subject, is refused by the server instead of doubling records.
//!   `Nats-Msg-Id` (node, shard, first sequence) lets the server drop a resend as well.
//! - Bounded memory: one batch per shard and the journal reader's chunk; the backlog stays
//!   in the journal, however long NATS is away.
//! - Published copies withhold payment codes (`Record::encode_published`).
//! - The reader refuses to build a window unless, for every node named, every shard's
//!   records are contiguous from sequence 1, come from one data directory (its instance id),
//!   and include that shard's cut of the window. A missing node, a gap, a node still
//!   catching up, or a stream trimmed by retention is an error, never a smaller file.
//!
//! Windows are numbered per node: the nodes of a fleet cut together (the same daily
//! cut-off, or `POST /clearing/close` on each), so window N is the same span everywhere. A
//! window's entries on each node are those the node's own close would give (the
//! `clearing` rules), so the fleet's files are those one switch would write for all the
//! nodes' transactions together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::core::record::{CodeKey, Record, RecordError};
use crate::durability::journal::{self, JournalError, Tail};
use crate::settlement::clearing::files::{Builder, Built};
use crate::settlement::clearing::{ClearingError, CloseInputs, ShardEntries};

/// Records in one published message (at most 160 bytes each: a message stays under
/// 160 KiB, well inside NATS's default 1 MiB payload limit).
pub const PUBLISH_BATCH: usize = 1_024;
/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle publisher looks for new durable records.
const POLL: Duration = Duration::from_millis(10);
/// At shutdown, how long the publisher may go on publishing what is durable.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// The reader gives up when the stream sends nothing for this long.
const READ_IDLE: Duration = Duration::from_secs(15);

const HEADER_INSTANCE: &str = "Switch-Instance";
const HEADER_SHARDS: &str = "Switch-Shards";
const HEADER_LAST: &str = "Switch-Last-Sequence";

/// Where a fleet publishes: `[fleet]` in the configuration, or `--nats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// The NATS server (`nats://host:port`; several, comma-separated, for a cluster).
    pub nats_url: String,
    /// The JetStream stream every node publishes to (created if missing).
    pub stream: String,
    /// Subjects are `PREFIX.NODE.SHARD`; the stream holds `PREFIX.>`.
    pub subject_prefix: String,
    /// The stream's replicas when a node creates it (1 for one server; 3 for a cluster).
    pub replicas: usize,
    /// The NATS server's authorization token, if it asks for one.
    pub token: Option<NatsToken>,
}

/// A NATS authorization token: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsToken(pub String);

impl std::fmt::Debug for NatsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsToken(..)")
    }
}

impl NatsToken {
    /// Reads a token from a file (surrounding white space ignored; empty is an error).
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|error| format!("{}: cannot read: {error}", path.display()))?;
        match text.trim() {
            "" => Err(format!("{}: empty (expected the NATS authorization token)", path.display())),
            token => Ok(Self(token.to_string())),
        }
    }
}

impl FleetSettings {
    pub const STREAM_DEFAULT: &str = "SWITCH_CLEARING";
    pub const SUBJECT_PREFIX_DEFAULT: &str = "switch.clearing";

    pub fn new(nats_url: &str) -> Self {
        Self {
            nats_url: nats_url.to_string(),
            stream: Self::STREAM_DEFAULT.to_string(),
            subject_prefix: Self::SUBJECT_PREFIX_DEFAULT.to_string(),
            replicas: 1,
            token: None,
        }
    }

    /// How to connect: this client's name, and the token if there is one.
    fn connect_options(&self, name: String) -> async_nats::ConnectOptions {
        let options = match &self.token {
            Some(token) => async_nats::ConnectOptions::with_token(token.0.clone()),
            None => async_nats::ConnectOptions::new(),
        };
        options.name(name)
    }

    fn subject(&self, node: u8, shard: usize) -> String {
        format!("{}.{node}.{shard}", self.subject_prefix)
    }

    /// The node and shard a subject names (`PREFIX.NODE.SHARD`).
    fn parse_subject(&self, subject: &str) -> Option<(u8, usize)> {
        let rest = subject.strip_prefix(&self.subject_prefix)?.strip_prefix('.')?;
        let (node, shard) = rest.split_once('.')?;
        Some((node.parse().ok()?, shard.parse().ok()?))
    }
}

/// How far publication has come: the journal's durable sequence and the published one, per
/// shard. Written by the journal threads and the publisher, read by `/metrics`.
#[derive(Debug)]
pub struct Progress {
    durable: Box<[AtomicU64]>,
    published: Box<[AtomicU64]>,
    connected: AtomicBool,
    records: AtomicU64,
    messages: AtomicU64,
    failures: AtomicU64,
    /// Unix milliseconds when every shard was last fully published (at first: the start).
    caught_up_ms: AtomicI64,
}

impl Progress {
    pub fn new(shards: usize) -> Self {
        let zeros = || (0..shards).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        Self {
            durable: zeros(),
            published: zeros(),
            connected: AtomicBool::new(false),
            records: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            caught_up_ms: AtomicI64::new(unix_ms()),
        }
    }

    /// Shard `shard`'s journal is durable up to `sequence`.
    pub fn set_durable(&self, shard: usize, sequence: u64) {
        self.durable[shard].fetch_max(sequence, Ordering::Release);
    }

    /// Each shard's last record known to be in the stream (0: none yet, or not known
    /// since the start).
    pub fn published(&self) -> Vec<u64> {
        self.published.iter().map(|published| published.load(Ordering::Acquire)).collect()
    }

    fn durable(&self, shard: usize) -> u64 {
        self.durable[shard].load(Ordering::Acquire)
    }

    /// Durable records not yet in the stream, over every shard.
    pub fn lag_records(&self) -> u64 {
        self.durable
            .iter()
            .zip(self.published.iter())
            .map(|(durable, published)| {
                durable.load(Ordering::Relaxed).saturating_sub(published.load(Ordering::Relaxed))
            })
            .sum()
    }

    /// Appends this node's publication metrics (Prometheus text).
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let now_ms = unix_ms();
        let lag_records = self.lag_records();
        let caught_up = self.caught_up_ms.load(Ordering::Relaxed);
        // Seconds since everything durable was last in the stream (0 while it is).
        let lag_seconds = if lag_records == 0 { 0.0 } else { (now_ms - caught_up).max(0) as f64 / 1e3 };
        let lines = [
            ("switch_fleet_nats_connected", "gauge", "1 while the publisher is connected to NATS JetStream.", {
                u64::from(self.connected.load(Ordering::Relaxed)).to_string()
            }),
            (
                "switch_fleet_lag_records",
                "gauge",
                "Durable journal records not yet published to the fleet stream.",
                lag_records.to_string(),
            ),
            (
                "switch_fleet_lag_seconds",
                "gauge",
                "Seconds since every durable record was last published (0: caught up).",
                format!("{lag_seconds:.3}"),
            ),
            (
                "switch_fleet_published_records_total",
                "counter",
                "Journal records published to the fleet stream.",
                self.records.load(Ordering::Relaxed).to_string(),
            ),
            (
                "switch_fleet_published_messages_total",
                "counter",
                "Messages (batches of records) the fleet stream acknowledged.",
                self.messages.load(Ordering::Relaxed).to_string(),
            ),
            (
                "switch_fleet_publish_failures_total",
                "counter",
                "Publication interruptions (NATS away, a refused publish): each is followed by a catch-up.",
                self.failures.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, kind, help, value) in lines {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Why publication stopped for now (it starts again from the stream's end).
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "subject {subject} holds records of another data directory (instance {found}, this one is {ours}): \
         two nodes share node id {node}; give this node its own id"
    )]
    Foreign { subject: String, found: String, ours: String, node: u8 },
    #[error(
        "subject {subject} holds records up to {published}, but this journal ends at {durable} (cut after \
         damage?): its history and the stream's part here; give this node a new id"
    )]
    Ahead { subject: String, published: u64, durable: u64 },
    #[error(
        "subject {subject} holds record {sequence} with other content than this journal's record {sequence}: the \
         journal lost records and wrote others under the same numbers (a lost or restored segment?); nothing more \
         is published from it: give this node a new id, or restore the journal"
    )]
    Diverged { subject: String, sequence: u64 },
    #[error(
        "subject {subject} holds records up to {published}, but this journal was cut at record {rewound} (an \
         accepted loss, --accept-journal-damage) and numbers another history from there; nothing more is \
         published from it: give this node a new id (a new subject) and clear the stream's old records"
    )]
    Rewound { subject: String, published: u64, rewound: u64 },
}

fn nats(error: impl std::fmt::Display) -> PublishError {
    PublishError::Nats(error.to_string())
}

/// One node's publisher: reads each shard's journal behind the durable mark and publishes.
pub struct Publisher {
    pub settings: FleetSettings,
    pub node: u8,
    pub instance: String,
    pub data_dir: std::path::PathBuf,
    pub key: Option<CodeKey>,
    pub progress: Arc<Progress>,
}

impl Publisher {
    /// Starts publishing on a thread of its own; it ends once `stop` is set and what is
    /// durable is published, or [`STOP_GRACE`] after it (the rest is published at the
    /// next start).
    pub fn start(self, stop: watch::Receiver<bool>) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("fleet-publisher".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "fleet: cannot start the publisher's runtime; nothing is published");
                    return;
                }
            };
            runtime.block_on(self.run(stop));
        })
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let shards = self.progress.durable.len();
        let mut tails: Vec<Tail> =
            (0..shards).map(|shard| Tail::new(&journal::shard_dir(&self.data_dir, shard), self.key.clone())).collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut grace = stop.clone();
            let grace = async move {
                let _ = grace.wait_for(|stopping| *stopping).await;
                tokio::time::sleep(STOP_GRACE).await;
            };
            let ended = tokio::select! {
                ended = self.session(&mut tails, stop.clone()) => ended,
                () = grace => Ok(()),
            };
            self.progress.connected.store(false, Ordering::Relaxed);
            match ended {
                Ok(()) => break,
                Err(error) => {
                    self.progress.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, lag = self.progress.lag_records(), "fleet: publication interrupted; it resumes from the journal");
                }
            }
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        let lag = self.progress.lag_records();
        if lag > 0 {
            tracing::warn!(lag, "fleet: stopping with records unpublished; they are published at the next start");
        } else {
            tracing::info!("fleet: every durable record is published");
        }
    }

    /// One connection: find where each shard's subject ends, then publish until an error,
    /// or until stopped and caught up.
    async fn session(&self, tails: &mut [Tail], mut stop: watch::Receiver<bool>) -> Result<(), PublishError> {
        let progress = Arc::clone(&self.progress);
        let client = self
            .settings
            .connect_options(format!("switch-node-{}", self.node))
            .connection_timeout(Duration::from_secs(2))
            // The client reconnects on its own; the gauge follows it.
            .event_callback(move |event| {
                match event {
                    async_nats::Event::Connected => progress.connected.store(true, Ordering::Relaxed),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        progress.connected.store(false, Ordering::Relaxed);
                    }
                    _ => {}
                }
                std::future::ready(())
            })
            .connect(self.settings.nats_url.as_str())
            .await
            .map_err(nats)?;
        let mut context = jetstream::new(client);
        context.set_timeout(Duration::from_secs(5));
        let stream = context
            .get_or_create_stream(stream::Config {
                name: self.settings.stream.clone(),
                subjects: vec![format!("{}.>", self.settings.subject_prefix)],
                storage: stream::StorageType::File,
                num_replicas: self.settings.replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let shards = tails.len();
        // Per shard: the stream sequence of its subject's last message (0: none).
        let mut expected = vec![0u64; shards];
        for (shard, tail) in tails.iter_mut().enumerate() {
            let subject = self.settings.subject(self.node, shard);
            let (published, payload) = match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(last) => {
                    let found = header(&last.headers, HEADER_INSTANCE).unwrap_or_default();
                    if found != self.instance {
                        return Err(PublishError::Foreign {
                            subject,
                            found: found.to_string(),
                            ours: self.instance.clone(),
                            node: self.node,
                        });
                    }
                    expected[shard] = last.sequence;
                    let published = header(&last.headers, HEADER_LAST).and_then(|text| text.parse().ok()).unwrap_or(0);
                    (published, last.payload)
                }
                Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                    (0, Default::default())
                }
                Err(error) => return Err(nats(error)),
            };
            let durable = self.progress.durable(shard);
            if published > durable {
                return Err(PublishError::Ahead { subject, published, durable });
            }
            let dir = journal::shard_dir(&self.data_dir, shard);
            if let Some(rewound) = journal::rewound(&dir)?
                && published >= rewound
            {
                return Err(PublishError::Rewound { subject, published, rewound });
            }
            if published > 0 && !same_as_journal(tail, published, durable, &payload, &subject)? {
                return Err(PublishError::Diverged { subject, sequence: published });
            }
            tail.seek(published + 1, self.progress.durable(shard))?;
            self.progress.published[shard].store(published, Ordering::Relaxed);
        }
        self.progress.connected.store(true, Ordering::Relaxed);
        tracing::info!(lag = self.progress.lag_records(), stream = %self.settings.stream, "fleet: publishing");
        let mut records = Vec::with_capacity(PUBLISH_BATCH);
        let mut payload = Vec::with_capacity(PUBLISH_BATCH * crate::core::record::RECORD_SIZE_MAX);
        loop {
            let mut sent = false;
            for (shard, tail) in tails.iter_mut().enumerate() {
                let durable = self.progress.durable(shard);
                let first = tail.next_sequence();
                if first > durable {
                    continue;
                }
                records.clear();
                if tail.read(durable, PUBLISH_BATCH, &mut records)? == 0 {
                    continue;
                }
                payload.clear();
                for (offset, record) in records.iter().enumerate() {
                    record.encode_published(first + offset as u64, &mut payload);
                }
                let last = first + records.len() as u64 - 1;
                let mut headers = HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("{}.{shard}.{first}", self.node).as_str());
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    expected[shard].to_string().as_str(),
                );
                headers.insert(HEADER_INSTANCE, self.instance.as_str());
                headers.insert(HEADER_SHARDS, shards.to_string().as_str());
                headers.insert(HEADER_LAST, last.to_string().as_str());
                let subject = self.settings.subject(self.node, shard);
                let ack = context
                    .publish_with_headers(subject, headers, payload.clone().into())
                    .await
                    .map_err(nats)?
                    .await
                    .map_err(nats)?;
                if ack.duplicate {
                    // The server had this message already: its place is unknown here, so
                    // find the subject's end again rather than guess.
                    return Err(PublishError::Nats(format!("shard {shard}: records {first}..{last} were a duplicate")));
                }
                expected[shard] = ack.sequence;
                self.progress.published[shard].store(last, Ordering::Relaxed);
                self.progress.records.fetch_add(records.len() as u64, Ordering::Relaxed);
                self.progress.messages.fetch_add(1, Ordering::Relaxed);
                sent = true;
            }
            let caught_up = self.progress.lag_records() == 0;
            if caught_up {
                self.progress.caught_up_ms.store(unix_ms(), Ordering::Relaxed);
            }
            if caught_up && *stop.borrow() {
                return Ok(());
            }
            if !sent {
                let stopping = *stop.borrow();
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    _ = stop.changed(), if !stopping => {}
                }
            }
        }
    }
}

/// Whether the last record of `subject`'s last message (`payload`, ending at record
/// `published`) is the journal's record of that number, byte for byte as published. A
/// journal whose record is gone (retention removed its segment) cannot say: taken as the
/// same.
fn same_as_journal(
    tail: &mut Tail,
    published: u64,
    durable: u64,
    payload: &[u8],
    subject: &str,
) -> Result<bool, PublishError> {
    let mut bytes = payload;
    let mut stored = None;
    while !bytes.is_empty() {
        let (_, sequence, size) = Record::decode_published(bytes)
            .map_err(|problem| PublishError::Nats(format!("{subject}: its last message does not decode: {problem}")))?;
        stored = Some((sequence, &bytes[..size]));
        bytes = &bytes[size..];
    }
    let Some((sequence, stored)) = stored.filter(|(sequence, _)| *sequence == published) else {
        return Err(PublishError::Nats(format!("{subject}: its last message does not end at record {published}")));
    };
    if tail.seek(sequence, durable).is_err() {
        tracing::warn!(
            subject,
            sequence,
            "fleet: the last published record is no longer in the journal; its content is not checked"
        );
        return Ok(true);
    }
    let mut records = Vec::with_capacity(1);
    tail.read(sequence, 1, &mut records)?;
    let mut ours = Vec::new();
    if let Some(record) = records.first() {
        record.encode_published(sequence, &mut ours);
    }
    Ok(ours == stored)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.as_str())
}

/// Why a fleet window could not be built: nothing is written.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("NATS ({url}): {detail}")]
    Nats { url: String, detail: String },
    #[error("stream {stream} holds no records: no node has published")]
    Empty { stream: String },
    #[error("message {stream_sequence} on {subject}: {problem}")]
    Message { subject: String, stream_sequence: u64, problem: String },
    #[error(
        "node {node} has published nothing (is it running with --nats, and caught up? see switch_fleet_lag_records)"
    )]
    MissingNode { node: u8 },
    #[error("node {node} publishes to the stream but is not in --nodes (list every node of the fleet)")]
    UnexpectedNode { node: u8 },
    #[error("node {node} shard {shard}: {problem}")]
    Shard { node: u8, shard: usize, problem: String },
    #[error(transparent)]
    Clearing(#[from] ClearingError),
}

/// One node's shard as read from the stream.
struct Published<'a> {
    instance: Option<String>,
    shards: usize,
    /// The next journal sequence expected.
    next: u64,
    entries: ShardEntries<'a>,
}

/// Reads the fleet stream and builds window `window` over `nodes` into
/// `OUT/clearing/window-N/`, with `inputs`. Refuses (see the module's invariants) rather
/// than build an incomplete window. One subject (node and shard) is read at a time, its
/// entries handed to the window's builder as they come: memory does not grow with the
/// window.
pub async fn read_window(
    settings: &FleetSettings,
    window: u64,
    nodes: &[u8],
    inputs: &CloseInputs,
    out: &std::path::Path,
) -> Result<Built, FleetError> {
    let failed = |detail: String| FleetError::Nats { url: settings.nats_url.clone(), detail };
    let client = settings
        .connect_options("switch-clearing-close".into())
        .connection_timeout(Duration::from_secs(5))
        .connect(settings.nats_url.as_str())
        .await
        .map_err(|error| failed(error.to_string()))?;
    let context = jetstream::new(client);
    let stream = context
        .get_stream(&settings.stream)
        .await
        .map_err(|error| failed(format!("stream {}: {error}", settings.stream)))?;
    // Every subject and its message count, as the read begins (nodes may go on publishing).
    let mut subjects: BTreeMap<(u8, usize), usize> = BTreeMap::new();
    let mut listed = stream
        .info_with_subjects(format!("{}.>", settings.subject_prefix))
        .await
        .map_err(|error| failed(error.to_string()))?;
    while let Some(item) = listed.next().await {
        let (subject, count) = item.map_err(|error| failed(error.to_string()))?;
        let key = settings.parse_subject(&subject).ok_or_else(|| FleetError::Message {
            subject: subject.clone(),
            stream_sequence: 0,
            problem: format!("not a {}.NODE.SHARD subject", settings.subject_prefix),
        })?;
        subjects.insert(key, count);
    }
    if subjects.is_empty() {
        return Err(FleetError::Empty { stream: settings.stream.clone() });
    }
    if let Some(&(node, _)) = subjects.keys().find(|(node, _)| !nodes.contains(node)) {
        return Err(FleetError::UnexpectedNode { node });
    }
    let mut builder = Builder::new(&crate::settlement::clearing::window_dir(out, window), window, &inputs.fees)?;
    for &node in nodes {
        if !subjects.contains_key(&(node, 0)) {
            return Err(match subjects.range((node, 0)..=(node, usize::MAX)).next() {
                Some(_) => FleetError::Shard { node, shard: 0, problem: "published nothing".into() },
                None => FleetError::MissingNode { node },
            });
        }
        let mut shards = 1;
        let mut shard = 0;
        // Each shard's reader remembers that shard's share of completed_max; a node's
        // subjects are its shards (one too few is refused below).
        let remember = inputs.remember_per_shard(subjects.range((node, 0)..=(node, usize::MAX)).count());
        while shard < shards {
            let Some(&count) = subjects.get(&(node, shard)) else {
                let problem = format!("published nothing (the node has {shards} shards)");
                return Err(FleetError::Shard { node, shard, problem });
            };
            let mut published = Published {
                instance: None,
                shards,
                next: 1,
                entries: ShardEntries::new(window, &inputs.fees, remember),
            };
            let subject = settings.subject(node, shard);
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: subject.clone(),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|error| failed(error.to_string()))?;
            let mut messages = consumer.messages().await.map_err(|error| failed(error.to_string()))?;
            let mut read = 0usize;
            while read < count {
                let next = tokio::time::timeout(READ_IDLE, messages.next()).await;
                let message = match next {
                    Err(_) => {
                        return Err(failed(format!(
                            "{subject}: the stream sent nothing for {} s",
                            READ_IDLE.as_secs()
                        )));
                    }
                    Ok(None) => return Err(failed(format!("{subject}: the stream ended early"))),
                    Ok(Some(Err(error))) => return Err(failed(error.to_string())),
                    Ok(Some(Ok(message))) => message,
                };
                let info = message.info().map_err(|error| failed(error.to_string()))?;
                let (stream_sequence, pending) = (info.stream_sequence, info.pending);
                add_message(settings, &message, stream_sequence, &mut published, &mut builder)?;
                read += 1;
                if pending == 0 {
                    break;
                }
            }
            if !published.entries.closed() {
                let problem = format!(
                    "window {window} is not cut in what it published (up to record {}): cut it on the node, or wait \
                     for it to catch up",
                    published.next - 1
                );
                return Err(FleetError::Shard { node, shard, problem });
            }
            published.entries.finish(format!("node {node} shard {shard}").into())?;
            shards = published.shards;
            shard += 1;
        }
    }
    Ok(builder.finish()?)
}

/// Checks one message of a subject against what came before on it and hands its records'
/// entries to `builder`.
fn add_message(
    settings: &FleetSettings,
    message: &async_nats::Message,
    stream_sequence: u64,
    published: &mut Published<'_>,
    builder: &mut Builder,
) -> Result<(), FleetError> {
    let subject = message.subject.to_string();
    let bad = |problem: String| FleetError::Message { subject: subject.clone(), stream_sequence, problem };
    let (node, shard) = settings
        .parse_subject(&subject)
        .ok_or_else(|| bad(format!("not a {}.NODE.SHARD subject", settings.subject_prefix)))?;
    let headers = message.headers.as_ref().ok_or_else(|| bad("no headers".into()))?;
    let instance = header(headers, HEADER_INSTANCE).ok_or_else(|| bad(format!("no {HEADER_INSTANCE}")))?;
    let count: usize = header(headers, HEADER_SHARDS)
        .and_then(|text| text.parse().ok())
        .filter(|&count| shard < count)
        .ok_or_else(|| bad(format!("no valid {HEADER_SHARDS}")))?;
    match &published.instance {
        None => published.instance = Some(instance.to_string()),
        Some(first) if first != instance => {
            return Err(bad(format!(
                "records of data directory {instance} after records of {first}: two nodes published as node {node}"
            )));
        }
        Some(_) => {}
    }
    published.shards = count;
    let mut bytes = &message.payload[..];
    while !bytes.is_empty() {
        let (record, sequence, size) =
            Record::decode_published(bytes).map_err(|problem: RecordError| bad(format!("record: {problem}")))?;
        if sequence != published.next {
            return Err(bad(if published.next == 1 {
                format!(
                    "the subject starts at record {sequence}: its earlier messages were removed from the stream (its \
                     limits, max_msgs, max_bytes or max_age, or a purge); the node's journal never drops \
                     unpublished records"
                )
            } else {
                format!(
                    "holds record {sequence} where record {} was due: the subject holds two histories (a node whose \
                     journal lost records published again; see its log)",
                    published.next
                )
            }));
        }
        if let Some(entry) = published.entries.add(sequence, record) {
            builder.push(entry)?;
        }
        published.next += 1;
        bytes = &bytes[size..];
    }
    Ok(())
}

/// Parses `--nodes`: `0,1,2` or a range `0-2`, or both (`0-2,5`).
pub fn parse_nodes(text: &str) -> Result<Vec<u8>, String> {
    let mut nodes = Vec::new();
    for part in text.split(',').map(str::trim) {
        let parse = |t: &str| t.trim().parse::<u8>().map_err(|_| format!("{t:?}: a node is 0 to 255"));
        match part.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (parse(low)?, parse(high)?);
                if low > high {
                    return Err(format!("{part:?}: an empty range"));
                }
                nodes.extend(low..=high);
            }
            None => nodes.push(parse(part)?),
        }
    }
    nodes.sort_unstable();
    nodes.dedup();
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_node_and_shard() {
        let settings = FleetSettings::new("nats://127.0.0.1:4222");
        assert_eq!(settings.subject(3, 1), "switch.clearing.3.1");
        assert_eq!(settings.parse_subject("switch.clearing.3.1"), Some((3, 1)));
        for bad in
            ["switch.clearing.3", "switch.clearing.300.1", "switch.clearingx.3.1", "other.3.1", "switch.clearing.a.1"]
        {
            assert_eq!(settings.parse_subject(bad), None, "{bad}");
        }
    }

    #[test]
    fn node_lists_take_numbers_and_ranges() {
        assert_eq!(parse_nodes("0-2"), Ok(vec![0, 1, 2]));
        assert_eq!(parse_nodes("5, 1,1,0-1"), Ok(vec![0, 1, 5]));
        assert!(parse_nodes("2-1").is_err());
        assert!(parse_nodes("256").is_err());
        assert!(parse_nodes("").is_err());
    }

    #[test]
    fn lag_is_durable_minus_published() {
        let progress = Progress::new(2);
        progress.set_durable(0, 10);
        progress.set_durable(1, 4);
        progress.published[0].store(7, Ordering::Relaxed);
        assert_eq!(progress.lag_records(), 3 + 4);
        // The durable mark never goes back.
        progress.set_durable(0, 2);
        assert_eq!(progress.lag_records(), 7);
        let mut text = String::new();
        progress.render(&mut text);
        assert!(text.contains("switch_fleet_lag_records 7\n"), "{text}");
        assert!(text.contains("switch_fleet_nats_connected 0\n"), "{text}");
    }
}
