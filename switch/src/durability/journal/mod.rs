//! The journal: one append-only log per shard, in segments, of the exchange's decisions
//! (`core::record`). It is the ground truth: at start it is read and checked, and the
//! shard's exchange is rebuilt from it (from its latest restart point on, `head`).
//!
//! ```text
//! DATA_DIR/journal/shards                       the shard count the journal was written with
//! DATA_DIR/journal/shard-N/00000000000000000001.journal   segments, named by first sequence
//! DATA_DIR/journal/shard-N/head                 how far it was synced, its newest segment,
//!                                               its latest restart point (`head`)
//! DATA_DIR/journal/shard-N/retained             the first sequence kept, once retention
//!                                               removed older segments (`remove_before`)
//! DATA_DIR/journal/shard-N/rewound              where a history the operator cut begins
//!                                               again (`rewound`)
//! ```
//!
//! Invariants:
//! - Sequences run without gaps across a shard's segments, from 1 or from the sequence
//!   `retained` names; every record carries a CRC32C; a segment holds whole records only,
//!   except a torn tail. A journal that starts later than `retained` says is missing
//!   segments, and is refused like damage, never read as if whole.
//! - Retention writes `retained` (synced) before it removes anything, and never removes the
//!   segment being written: what remains always starts at a segment boundary.
//! - Nothing the exchange sent leaves the switch before the records of the batch that
//!   produced it are written, and, under `fsync = always`, synced (`SyncPolicy`).
//! - Recovery never drops a committed record silently: a damaged record the head says was
//!   synced, or one followed by a valid later one, is corruption and stops start-up, naming
//!   segment and offset. Only a torn tail (past what was synced, nothing valid after it, in
//!   the last segment) is cut off, and that is reported.
//! - The journal knows how long it is: its head (written after each sync at most once a
//!   second, at every rotation and checkpoint, and at a clean stop) names the last record
//!   synced and the newest segment; a journal that ends before it, or lacks that segment,
//!   is refused (`JournalError::Lost`), never read as a shorter one. A segment's creation
//!   and removal are synced in its directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::record::{CodeKey, Record, RecordError};

pub mod head;
mod read;

use head::{Head, HeadFile};
pub use read::{Tail, read_with};

/// Records a shard writes between restart points (`Record::Restart`; the default of
/// `[journal] restart_point_records`): a restart replays at most about this many records
/// past what the exchange remembers.
pub const RESTART_EVERY_DEFAULT: u64 = 2_000_000;
/// A segment is closed and a new one started past this size (the default;
/// `[journal] segment_mib`).
pub const SEGMENT_SIZE_MAX: u64 = 64 * 1024 * 1024;
/// Exit code of a switch stopped by a failed journal write or sync (it does not answer
/// what it cannot make durable), or refusing to start on a journal an operator must see
/// to (`JournalError::needs_operator`).
pub const EXIT_JOURNAL_FAILED: i32 = 3;

/// When the journal is synced to stable storage, and so what a crash can cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every batch of records is synced (`fdatasync`) before any message it produced leaves
    /// the switch. A power cut loses nothing any participant was told. Group commit: one
    /// sync covers every record of the batch.
    Always,
    /// Records are written at once, synced at most this often; the batches' messages wait
    /// for the sync that covers them. Same guarantee as `Always`, fewer syncs, more latency.
    Interval(Duration),
    /// Records are written (to the kernel) before messages leave, never synced. A killed
    /// switch loses nothing; a power cut or kernel crash loses what the kernel had not yet
    /// written back, including outcomes participants were told.
    Never,
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => match text.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(micros)) if (1..=1_000_000).contains(&micros) => {
                    Ok(Self::Interval(Duration::from_micros(micros)))
                }
                _ => Err(format!("{text:?}: expected always, never or interval:MICROSECONDS (1 to 1000000)")),
            },
        }
    }
}

/// What recovery does with damage inside committed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Stop start-up, naming segment and offset (the default).
    Refuse,
    /// The operator accepts the loss: cut the journal at the damage (later segments are
    /// renamed `*.damaged`, not deleted), or go on from a journal shorter than its head
    /// said, and start from what is left.
    Truncate,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path}: damaged record at offset {offset} ({problem}) with valid records after it; \
         refusing to start (run with --accept-journal-damage to cut the journal there)"
    )]
    Corrupt { path: PathBuf, offset: u64, problem: RecordError },
    #[error("{path}: record at offset {offset} has sequence {found}, expected {expected}")]
    Sequence { path: PathBuf, offset: u64, expected: u64, found: u64 },
    #[error("{path}: written with {written} shards; run with --shards {written} or use another data directory")]
    Shards { path: PathBuf, written: usize },
    #[error(
        "{path}: written by node {written}; a data directory belongs to one node (its switch references carry \
         the node id): run as node {written} or use another data directory"
    )]
    Node { path: PathBuf, written: usize },
    #[error(
        "{path}: record at offset {offset} holds an encrypted payment code; give the journal's code key \
         ([journal] code_key_file, or --code-key-file)"
    )]
    Sealed { path: PathBuf, offset: u64 },
    #[error(
        "{path}: the journal is kept from record {retained} on, but {}; segments were removed by hand or lost: \
         restore them from a backup (the switch will not start on a journal with a hole at its head)",
        match first { Some(first) => format!("its first segment starts at {first}"), None => "no segment is left".to_string() }
    )]
    Missing { path: PathBuf, retained: u64, first: Option<u64> },
    #[error(
        "{path}: the journal's head says every record up to {durable} was synced, but {detail}; restore the \
         journal from a backup (the switch will not start on a journal shorter than it was)"
    )]
    Lost { path: PathBuf, durable: u64, detail: String },
}

impl JournalError {
    /// Whether an operator must act before the switch can run on this journal: it cannot
    /// be read as whole (damage, a lost segment, a missing key, another node's or shard
    /// count's), or the disk refuses writes (full, over quota, read-only, failing).
    /// The switch exits [`EXIT_JOURNAL_FAILED`] then, and its unit does not restart it.
    pub fn needs_operator(&self) -> bool {
        match self {
            Self::Io { source, .. } => storage_failed(source),
            Self::Corrupt { .. }
            | Self::Sequence { .. }
            | Self::Shards { .. }
            | Self::Node { .. }
            | Self::Sealed { .. }
            | Self::Missing { .. }
            | Self::Lost { .. } => true,
        }
    }
}

/// Whether `error` says the storage refused a write: full, over quota, read-only, or an I/O
/// error of the device.
pub fn storage_failed(error: &io::Error) -> bool {
    const EIO: i32 = 5;
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::ReadOnlyFilesystem
    ) || error.raw_os_error() == Some(EIO)
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

/// Where and how the switch keeps its journal.
#[derive(Debug, Clone)]
pub struct JournalSettings {
    pub data_dir: PathBuf,
    /// A segment is closed and a new one started past this many bytes.
    pub segment_size: u64,
    /// Retention: the last this many closed windows stay rebuildable from the journal;
    /// older segments are removed after each close (0: keep every segment).
    pub retain_windows: u64,
    /// Records between a shard's restart points.
    pub restart_every: u64,
    pub policy: SyncPolicy,
    pub damage: Damage,
    /// Write through io_uring (falling back, with a warning, where the kernel refuses).
    pub io_uring: bool,
    /// Encrypts payment codes at rest (and is needed to read them back).
    pub code_key: Option<CodeKey>,
}

/// What recovery found in one shard's journal.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Records read (and handed to the caller, in order).
    pub records: u64,
    /// The sequence of the first record kept (1 unless retention removed older segments).
    pub first_sequence: u64,
    /// The sequence replay began at: the first kept, or the latest restart point's low
    /// water (`Journal::recover`).
    pub replayed_from: u64,
    /// A torn tail cut off: (segment, offset, bytes dropped).
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// Damage the operator accepted: (segment, offset, problem).
    pub accepted_damage: Option<(PathBuf, u64, RecordError)>,
    /// A loss the operator accepted (the journal ended before its head said).
    pub accepted_loss: Option<String>,
}

/// One shard's journal, open for appending.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    segment_size: u64,
    segment_size_max: u64,
    next_sequence: u64,
    buffer: Vec<u8>,
    policy: SyncPolicy,
    unsynced: bool,
    /// Writes and syncs through io_uring when set (Linux; see `use_io_uring`).
    ring: Option<Ring>,
    /// Encrypts payment codes at rest when set.
    key: Option<CodeKey>,
    /// The head, and what the next head write will say of restart points.
    head: HeadFile,
    /// Every record up to this one is synced.
    synced: u64,
    /// The latest checkpoint or restart point written: (sequence, low water, window).
    restart: (u64, u64, u64),
}

/// An io_uring instance for the journal's writes.
struct Ring(io_uring::IoUring);

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ring")
    }
}

/// Checks (or, for a new directory, records) the shard count a journal was written with:
/// records of one transaction live in the shard its hash names, so the count cannot change.
pub fn check_shards(data_dir: &Path, shards: usize) -> Result<(), JournalError> {
    pinned(data_dir, "shards", shards, |path, written| JournalError::Shards { path, written })
}

/// Checks (or records) the node id a journal was written by: its switch references carry
/// the node, so two nodes must never share a directory, nor one directory change node.
pub fn check_node(data_dir: &Path, node: u8) -> Result<(), JournalError> {
    pinned(data_dir, "node", usize::from(node), |path, written| JournalError::Node { path, written })
}

/// This data directory's instance id: 16 hex digits drawn when its journal was started
/// (`DATA_DIR/journal/instance`). A fleet tells one node's published records from another's
/// by it, so a directory that is lost and started afresh under the same node id is noticed
/// instead of mixing two histories.
pub fn instance(data_dir: &Path) -> Result<String, JournalError> {
    let dir = data_dir.join("journal");
    fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let path = dir.join("instance");
    match fs::read_to_string(&path) {
        Ok(text) if text.trim().len() == 16 && text.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(text.trim().to_string())
        }
        Ok(_) => Err(JournalError::Io { path, source: io::Error::other("not an instance id (16 hex digits)") }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes)
                .map_err(|error| JournalError::Io { path: path.clone(), source: error.into() })?;
            let id = format!("{:016x}", u64::from_le_bytes(bytes));
            write_atomically(&path, format!("{id}\n").as_bytes()).map_err(io_error(&path))?;
            Ok(id)
        }
        Err(source) => Err(JournalError::Io { path, source }),
    }
}

/// `DATA_DIR/journal/NAME` holds `value`, written now if the file is new; another value is
/// the error `other` makes.
fn pinned(
    data_dir: &Path,
    name: &str,
    value: usize,
    other: impl FnOnce(PathBuf, usize) -> JournalError,
) -> Result<(), JournalError> {
    let dir = data_dir.join("journal");
    fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(written) if written == value => Ok(()),
            Ok(written) => Err(other(path, written)),
            Err(_) => Err(JournalError::Io { path, source: io::Error::other(format!("not a {name} value")) }),
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            write_atomically(&path, format!("{value}\n").as_bytes()).map_err(io_error(&path))
        }
        Err(source) => Err(JournalError::Io { path, source }),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, synced: a reader sees
/// the old file or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Creates `dir` (and its parents) if missing, syncing each parent a directory was made
/// in, so the new directory survives a power cut with what is written in it.
fn create_dir_synced(dir: &Path) -> Result<(), JournalError> {
    if dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_synced(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(source) => return Err(JournalError::Io { path: dir.to_path_buf(), source }),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Syncs directory `dir` (a file created, renamed or removed in it is durable after).
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// A shard's journal directory.
pub fn shard_dir(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join("journal").join(format!("shard-{shard}"))
}

/// The segments in `dir`, in sequence order.
pub fn segments(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let mut segments: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "journal"))
            .collect(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(JournalError::Io { path: dir.to_path_buf(), source }),
    };
    // Names are zero-padded first sequences: text order is sequence order.
    segments.sort();
    Ok(segments)
}

/// The sequence a shard's journal must start at: 1, or what `retained` names once
/// retention removed segments. The first segment may start earlier (a removal interrupted
/// by a crash), never later.
pub(crate) fn first_kept(dir: &Path, segments: &[PathBuf]) -> Result<u64, JournalError> {
    let retained = retained(dir)?;
    let Some(first) = segments.first() else {
        return if retained == 1 {
            Ok(1)
        } else {
            Err(JournalError::Missing { path: dir.to_path_buf(), retained, first: None })
        };
    };
    let first_sequence = first_sequence(first).ok_or_else(|| JournalError::Io {
        path: first.clone(),
        source: io::Error::other("not a segment name (its first sequence, 20 digits)"),
    })?;
    if first_sequence > retained {
        return Err(JournalError::Missing { path: dir.to_path_buf(), retained, first: Some(first_sequence) });
    }
    Ok(first_sequence)
}

/// The first sequence a shard's journal wrote again after an operator accepted a loss
/// (`Damage::Truncate`): records from it on are not the ones a fleet stream may hold under
/// the same numbers (`DATA_DIR/journal/shard-N/rewound`; none: never rewound).
pub fn rewound(dir: &Path) -> Result<Option<u64>, JournalError> {
    let path = dir.join("rewound");
    match fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(sequence) => Ok(Some(sequence)),
            Err(_) => Err(JournalError::Io { path, source: io::Error::other("not a sequence number") }),
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JournalError::Io { path, source }),
    }
}

/// What `DATA_DIR/journal/shard-N/retained` names (1 without the file).
fn retained(dir: &Path) -> Result<u64, JournalError> {
    let path = dir.join("retained");
    match fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(sequence) if sequence >= 1 => Ok(sequence),
            _ => Err(JournalError::Io { path, source: io::Error::other("not a sequence number") }),
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(1),
        Err(source) => Err(JournalError::Io { path, source }),
    }
}

/// What [`remove_before`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub segments: u64,
    pub bytes: u64,
    /// The first sequence kept.
    pub first_sequence: u64,
}

/// Retention: removes the segments of shard `dir` that hold only records before
/// `sequence`. The segment holding `sequence` stays, so what remains starts at a segment
/// boundary; the segment being written is never removed (the caller passes a sequence
/// already written). `retained` is written and synced first, then the segments removed
/// and the directory synced: a crash in between leaves extra segments, never a hole.
pub fn remove_before(dir: &Path, sequence: u64) -> Result<Removed, JournalError> {
    let segments = segments(dir)?;
    let keep = segments.iter().rposition(|path| first_sequence(path).is_some_and(|first| first <= sequence));
    let Some(keep) = keep else {
        return Ok(Removed { first_sequence: first_kept(dir, &segments)?, ..Removed::default() });
    };
    let first_sequence = first_sequence(&segments[keep]).unwrap_or(1);
    if keep == 0 {
        return Ok(Removed { first_sequence, ..Removed::default() });
    }
    if retained(dir)? < first_sequence {
        let path = dir.join("retained");
        write_atomically(&path, format!("{first_sequence}\n").as_bytes()).map_err(io_error(&path))?;
    }
    let mut removed = Removed { first_sequence, ..Removed::default() };
    for path in &segments[..keep] {
        // Two closes at once may both remove a segment: gone is what was asked.
        let bytes = match fs::metadata(path).and_then(|m| fs::remove_file(path).map(|()| m.len())) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(JournalError::Io { path: path.clone(), source }),
        };
        removed.bytes += bytes;
        removed.segments += 1;
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;
    Ok(removed)
}

impl Journal {
    /// Opens shard `dir`'s journal: reads and checks every segment, handing each record to
    /// `on_record` in order (streamed: a journal need not fit in memory), cuts a torn tail
    /// (and, if the operator said so, accepted damage), and opens the last segment for
    /// appending. With `key`, payment codes are written encrypted, and encrypted ones can
    /// be read.
    pub fn open(
        dir: &Path,
        policy: SyncPolicy,
        damage: Damage,
        key: Option<CodeKey>,
        on_record: impl FnMut(u64, Record),
    ) -> Result<(Self, Recovery), JournalError> {
        Self::open_from(dir, policy, damage, key, false, on_record)
    }

    /// Opens shard `dir`'s journal as `open` does, but hands `on_record` only the records
    /// from its latest durable restart point's low water on (`head`): what a restart must
    /// replay to rebuild the exchange, however long the journal. Every segment from there
    /// is still checked.
    pub fn recover(
        dir: &Path,
        policy: SyncPolicy,
        damage: Damage,
        key: Option<CodeKey>,
        on_record: impl FnMut(u64, Record),
    ) -> Result<(Self, Recovery), JournalError> {
        Self::open_from(dir, policy, damage, key, true, on_record)
    }

    fn open_from(
        dir: &Path,
        policy: SyncPolicy,
        damage: Damage,
        key: Option<CodeKey>,
        from_restart: bool,
        mut on_record: impl FnMut(u64, Record),
    ) -> Result<(Self, Recovery), JournalError> {
        create_dir_synced(dir)?;
        let known = head::read(dir).map_err(io_error(&head::path(dir)))?;
        // Only a journal held to its head may start at its restart point: one whose loss
        // the operator accepts may have lost the restart point too, and is read whole.
        let from = match known {
            Some(head) if from_restart && damage == Damage::Refuse && head.restart > 0 => head.low_water,
            _ => 1,
        };
        // The latest checkpoint or restart point read (the head's is among them).
        let mut restart = (0, 0, 0);
        let walked = read::walk(dir, key.as_ref(), from, |sequence, record| {
            if let Record::Checkpoint { window, low_water, .. } | Record::Restart { window, low_water, .. } = record {
                restart = restart.max((sequence, low_water, window));
            }
            on_record(sequence, record);
        })?;
        let mut recovery =
            Recovery { first_sequence: walked.first, replayed_from: from.max(walked.first), ..Recovery::default() };
        if let Some(lost) = walked.lost {
            if damage == Damage::Refuse {
                return Err(lost);
            }
            tracing::error!(%lost, "journal: the operator accepts the loss; going on from what is left");
            recovery.accepted_loss = Some(lost.to_string());
        }
        let segments = walked.segments;
        let mut keep = segments.len();
        if let Some(found) = walked.damage {
            let size = fs::metadata(&found.path).map_err(io_error(&found.path))?.len();
            if found.torn {
                recovery.torn_tail = Some((found.path.clone(), found.offset, size - found.offset));
            } else if damage == Damage::Truncate {
                recovery.accepted_damage = Some((found.path.clone(), found.offset, found.problem));
            } else {
                return Err(JournalError::Corrupt { path: found.path, offset: found.offset, problem: found.problem });
            }
            truncate(&found.path, found.offset)?;
            keep = found.segment + 1;
        }
        for later in &segments[keep..] {
            let renamed = later.with_extension("damaged");
            fs::rename(later, &renamed).map_err(io_error(later))?;
        }
        let next = walked.next;
        if recovery.accepted_damage.is_some() || recovery.accepted_loss.is_some() {
            // From here on the journal holds a history other than the one before the loss:
            // the fleet publisher must not take it for a continuation (`rewound`).
            let marker = dir.join("rewound");
            let at = rewound(dir)?.map_or(next, |earlier| earlier.min(next));
            write_atomically(&marker, format!("{at}\n").as_bytes()).map_err(io_error(&marker))?;
        }
        let path = match segments[..keep].last() {
            Some(path) => path.clone(),
            None => dir.join(segment_name(next)),
        };
        let created = !path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_error(&path))?;
        if created {
            sync_dir(dir)?;
        }
        // What an earlier run wrote and never synced (`SyncPolicy::Never`) is synced now,
        // before the head says it is.
        file.sync_data().map_err(io_error(&path))?;
        let segment_size = file.metadata().map_err(io_error(&path))?.len();
        recovery.records = next.saturating_sub(recovery.replayed_from);
        if known.is_none() && next > 1 {
            tracing::warn!(dir = %dir.display(), "journal: no head (written before heads were kept); written now");
        }
        let head = HeadFile::open(dir, known).map_err(io_error(&head::path(dir)))?;
        let mut journal = Self {
            dir: dir.to_path_buf(),
            file,
            path,
            segment_size,
            segment_size_max: SEGMENT_SIZE_MAX,
            next_sequence: next,
            buffer: Vec::with_capacity(1 << 20),
            policy,
            unsynced: false,
            ring: None,
            key,
            head,
            synced: next - 1,
            restart,
        };
        journal.write_head().map_err(io_error(&head::path(dir)))?;
        Ok((journal, recovery))
    }

    /// Writes the head: everything up to `synced` is durable, the newest segment, and the
    /// latest restart point among the synced records.
    fn write_head(&mut self) -> io::Result<()> {
        let previous = self.head.current().restart_point();
        let (restart, low_water, window) = if self.restart.0 <= self.synced {
            self.restart
        } else if previous.0 <= self.synced {
            previous
        } else {
            (0, 0, 0)
        };
        let segment = first_sequence(&self.path).unwrap_or(1);
        self.head.write(Head { durable: self.synced, segment, restart, low_water, window, ..Head::default() })
    }

    /// Whether the head is behind what is written (`sync_head` would change it).
    pub fn head_behind(&self) -> bool {
        self.head.current().durable < self.next_sequence - 1
    }

    /// Syncs what is written and writes the head saying so: called at most about once a
    /// second by the journal's thread while records come, and at a clean stop.
    pub fn sync_head(&mut self) -> io::Result<()> {
        self.sync()?;
        self.write_head()
    }

    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// Starts a new segment past `bytes` from now on (at least one record per segment).
    pub fn set_segment_size(&mut self, bytes: u64) {
        self.segment_size_max = bytes;
    }

    /// The sequence of the last record written (0: none yet).
    pub fn last_sequence(&self) -> u64 {
        self.next_sequence - 1
    }

    /// Writes (and syncs) through io_uring from now on, if this kernel allows a ring: one
    /// submission for the write and the `fdatasync` linked behind it. Returns whether it does.
    pub fn use_io_uring(&mut self) -> bool {
        match io_uring::IoUring::new(8) {
            Ok(ring) => self.ring = Some(Ring(ring)),
            Err(error) => tracing::warn!(%error, "io_uring refused for the journal: writing through the portable path"),
        }
        self.ring.is_some()
    }

    /// Writes `records` (one write; a new segment first if this one is full).
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        self.commit(records, false)
    }

    /// Writes `records` and, if `sync`, syncs everything written to stable storage.
    /// A checkpoint must land at the sequence it names (the exchange's count of its
    /// records); one that would not is refused before anything is written, since retention
    /// would trust it (`Record::Checkpoint`).
    pub fn commit(&mut self, records: &[Record], sync: bool) -> io::Result<()> {
        for (sequence, record) in (self.next_sequence..).zip(records) {
            if let Record::Checkpoint { sequence: named, .. } | Record::Restart { sequence: named, .. } = *record
                && named != sequence
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a checkpoint names sequence {named} but would be written at {sequence}"),
                ));
            }
        }
        let mut restart_point = false;
        if !records.is_empty() {
            if self.segment_size >= self.segment_size_max {
                self.rotate()?;
            }
            self.buffer.clear();
            for record in records {
                if let Record::Checkpoint { window, low_water, .. } | Record::Restart { window, low_water, .. } =
                    *record
                {
                    self.restart = (self.next_sequence, low_water, window);
                    restart_point = true;
                }
                record.encode(self.next_sequence, self.key.as_ref(), &mut self.buffer);
                self.next_sequence += 1;
            }
            self.unsynced = true;
        }
        let synced = match (&mut self.ring, records.is_empty()) {
            (Some(ring), false) => write_uring(&mut ring.0, &self.file, &self.buffer, sync)?,
            (_, false) => {
                self.file.write_all(&self.buffer)?;
                false
            }
            (_, true) => false,
        };
        if !records.is_empty() {
            self.segment_size += self.buffer.len() as u64;
        }
        if synced {
            self.unsynced = false;
            self.synced = self.next_sequence - 1;
        } else if sync {
            self.sync()?;
        }
        if restart_point && sync {
            // A restart point bounds the next start's replay once the head names it.
            self.write_head()?;
        }
        Ok(())
    }

    /// Syncs written records to stable storage.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        self.synced = self.next_sequence - 1;
        Ok(())
    }

    /// Starts the next segment: the current one synced, the new one created and its
    /// directory synced, then the head names it (so its loss is noticed).
    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        let path = self.dir.join(segment_name(self.next_sequence));
        self.file = OpenOptions::new().create(true).append(true).open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.path = path;
        self.segment_size = 0;
        self.write_head()
    }
}

/// Writes all of `bytes` at the end of `file` through `ring`, with an `fdatasync` linked
/// behind the write when `sync`; returns whether that sync ran (a short write cuts the
/// link: the rest is written and the caller syncs).
fn write_uring(ring: &mut io_uring::IoUring, file: &File, bytes: &[u8], sync: bool) -> io::Result<bool> {
    use io_uring::{opcode, squeue, types};
    use std::os::fd::AsRawFd;
    const WRITE: u64 = 1;
    const SYNC: u64 = 2;
    let fd = types::Fd(file.as_raw_fd());
    let mut written = 0usize;
    let mut synced = false;
    while written < bytes.len() {
        let rest = &bytes[written..];
        let length = rest.len().min(1 << 30) as u32;
        // Offset -1: at the file's position (the file is opened for appending).
        let write = opcode::Write::new(fd, rest.as_ptr(), length).offset(u64::MAX).build().user_data(WRITE);
        let whole = length as usize == rest.len();
        let entries = if sync && whole { 2 } else { 1 };
        {
            let mut queue = ring.submission();
            // SAFETY: `rest` and the file outlive both operations: this function waits for
            // their completions below before it returns or touches `bytes` again.
            unsafe {
                if entries == 2 {
                    queue.push(&write.flags(squeue::Flags::IO_LINK)).map_err(io::Error::other)?;
                    let fsync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(SYNC);
                    queue.push(&fsync).map_err(io::Error::other)?;
                } else {
                    queue.push(&write).map_err(io::Error::other)?;
                }
            }
        }
        ring.submit_and_wait(entries)?;
        for completion in ring.completion() {
            let result = completion.result();
            match completion.user_data() {
                WRITE if result < 0 => return Err(io::Error::from_raw_os_error(-result)),
                WRITE if result == 0 => return Err(io::ErrorKind::WriteZero.into()),
                WRITE => written += result as usize,
                // Cancelled because the write was short: the caller syncs after the rest.
                SYNC if result == -libc_ecanceled() => {}
                SYNC if result < 0 => return Err(io::Error::from_raw_os_error(-result)),
                _ => synced = true,
            }
        }
    }
    Ok(synced && written == bytes.len())
}

/// `ECANCELED` on Linux.
const fn libc_ecanceled() -> i32 {
    125
}

pub(crate) fn segment_name(first_sequence: u64) -> String {
    format!("{first_sequence:020}.journal")
}

/// The first sequence a segment holds, from its name.
pub(crate) fn first_sequence(segment: &Path) -> Option<u64> {
    segment.file_stem()?.to_str()?.parse().ok()
}

fn truncate(path: &Path, offset: u64) -> Result<(), JournalError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
    file.set_len(offset).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

#[cfg(test)]
mod tests;
