//! The journal: one append-only log per shard, in segments, of the exchange's decisions
//! (`core::record`). It is the ground truth: at start every segment is read and checked,
//! and the shard's exchange is rebuilt from it.
//!
//! ```text
//! DATA_DIR/journal/shards                       the shard count the journal was written with
//! DATA_DIR/journal/shard-N/00000000000000000001.journal   segments, named by first sequence
//! DATA_DIR/journal/shard-N/retained             the first sequence kept, once retention
//!                                               removed older segments (`remove_before`)
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
//! - Recovery never drops a committed record silently: a damaged record followed by a
//!   valid later one is corruption and stops start-up, naming segment and offset. Only a
//!   torn tail (nothing valid after the damage, in the last segment) is cut off, and that is
//!   reported.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::record::{CodeKey, HEADER_SIZE, Record, RecordError};

/// A segment is closed and a new one started past this size (the default;
/// `[journal] segment_mib`).
pub const SEGMENT_SIZE_MAX: u64 = 64 * 1024 * 1024;
/// Exit code of a switch stopped by a failed journal write or sync: it does not answer
/// what it cannot make durable.
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
    /// renamed `*.damaged`, not deleted) and start from what precedes it.
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
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
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
    /// A torn tail cut off: (segment, offset, bytes dropped).
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// Damage the operator accepted: (segment, offset, problem).
    pub accepted_damage: Option<(PathBuf, u64, RecordError)>,
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
fn first_kept(dir: &Path, segments: &[PathBuf]) -> Result<u64, JournalError> {
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

/// Reads every record of a shard's journal, checking it, without changing anything, and
/// hands each to `on_record` (streamed: the journal need not fit in memory). Returns where
/// a torn tail starts, if anywhere (recovery would cut it). For `switch journal verify`,
/// `inspect` and clearing.
pub fn read_with(
    dir: &Path,
    key: Option<&CodeKey>,
    mut on_record: impl FnMut(u64, Record),
) -> Result<Option<(PathBuf, u64)>, JournalError> {
    let segments = segments(dir)?;
    let mut expected = first_kept(dir, &segments)?;
    for (index, path) in segments.iter().enumerate() {
        let bytes = fs::read(path).map_err(io_error(path))?;
        let last = index + 1 == segments.len();
        if let Some((offset, problem)) = scan(path, &bytes, key, &mut expected, &mut on_record)? {
            if last && !valid_after(&bytes, offset as usize, expected, key) {
                return Ok(Some((path.clone(), offset)));
            }
            return Err(JournalError::Corrupt { path: path.clone(), offset, problem });
        }
    }
    Ok(None)
}

/// Hands the records of `bytes` to `on_record` until the end or the first damaged record
/// (returned with its offset). Sequence gaps, and encrypted codes without the key, are
/// errors (never damage: nothing may be cut for want of a key).
fn scan(
    path: &Path,
    bytes: &[u8],
    key: Option<&CodeKey>,
    expected: &mut u64,
    on_record: &mut impl FnMut(u64, Record),
) -> Result<Option<(u64, RecordError)>, JournalError> {
    let mut offset = 0usize;
    while offset < bytes.len() {
        match Record::decode(&bytes[offset..], key) {
            Err(RecordError::Sealed) => {
                return Err(JournalError::Sealed { path: path.to_path_buf(), offset: offset as u64 });
            }
            Ok((record, sequence, size)) => {
                if sequence != *expected {
                    return Err(JournalError::Sequence {
                        path: path.to_path_buf(),
                        offset: offset as u64,
                        expected: *expected,
                        found: sequence,
                    });
                }
                on_record(sequence, record);
                *expected += 1;
                offset += size;
            }
            Err(problem) => return Ok(Some((offset as u64, problem))),
        }
    }
    Ok(None)
}

/// Whether a valid record with a sequence at or past `expected` starts anywhere after
/// `offset` (records are 8-aligned): if so, the damage is not a torn tail.
fn valid_after(bytes: &[u8], offset: usize, expected: u64, key: Option<&CodeKey>) -> bool {
    (offset + 8..bytes.len().saturating_sub(HEADER_SIZE - 1)).step_by(8).any(|at| {
        match Record::decode(&bytes[at..], key) {
            Ok((_, sequence, _)) => sequence >= expected,
            // A whole record whose code needs the key is a record all the same.
            Err(problem) => problem == RecordError::Sealed,
        }
    })
}

impl Journal {
    /// Opens shard `dir`'s journal: reads and checks every segment, handing each record to
    /// `on_record` in order (streamed: a journal need not fit in memory), cuts a torn tail
    /// (and, if the operator said so, accepted damage), and opens the last segment for
    /// appending.
    /// With `key`, payment codes are written encrypted, and encrypted ones can be read.
    pub fn open(
        dir: &Path,
        policy: SyncPolicy,
        damage: Damage,
        key: Option<CodeKey>,
        mut on_record: impl FnMut(u64, Record),
    ) -> Result<(Self, Recovery), JournalError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let segments = segments(dir)?;
        let mut recovery = Recovery::default();
        let mut expected = first_kept(dir, &segments)?;
        recovery.first_sequence = expected;
        let mut keep = segments.len();
        for (index, path) in segments.iter().enumerate() {
            let bytes = fs::read(path).map_err(io_error(path))?;
            let Some((offset, problem)) = scan(path, &bytes, key.as_ref(), &mut expected, &mut on_record)? else {
                continue;
            };
            let last = index + 1 == segments.len();
            if last && !valid_after(&bytes, offset as usize, expected, key.as_ref()) {
                recovery.torn_tail = Some((path.clone(), offset, bytes.len() as u64 - offset));
            } else if damage == Damage::Truncate {
                recovery.accepted_damage = Some((path.clone(), offset, problem));
            } else {
                return Err(JournalError::Corrupt { path: path.clone(), offset, problem });
            }
            truncate(path, offset)?;
            keep = index + 1;
            break;
        }
        for later in &segments[keep..] {
            let renamed = later.with_extension("damaged");
            fs::rename(later, &renamed).map_err(io_error(later))?;
        }
        let path = match segments[..keep].last() {
            Some(path) => path.clone(),
            None => dir.join(segment_name(expected)),
        };
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_error(&path))?;
        let segment_size = file.metadata().map_err(io_error(&path))?.len();
        recovery.records = expected - recovery.first_sequence;
        let journal = Self {
            dir: dir.to_path_buf(),
            file,
            path,
            segment_size,
            segment_size_max: SEGMENT_SIZE_MAX,
            next_sequence: expected,
            buffer: Vec::with_capacity(1 << 20),
            policy,
            unsynced: false,
            ring: None,
            key,
        };
        Ok((journal, recovery))
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
            if let Record::Checkpoint { sequence: named, .. } = *record
                && named != sequence
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a checkpoint names sequence {named} but would be written at {sequence}"),
                ));
            }
        }
        if !records.is_empty() {
            if self.segment_size >= self.segment_size_max {
                self.rotate()?;
            }
            self.buffer.clear();
            for record in records {
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
        } else if sync {
            self.sync()?;
        }
        Ok(())
    }

    /// Syncs written records to stable storage.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let path = self.dir.join(segment_name(self.next_sequence));
        self.file = OpenOptions::new().create(true).append(true).open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.path = path;
        self.segment_size = 0;
        Ok(())
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

fn segment_name(first_sequence: u64) -> String {
    format!("{first_sequence:020}.journal")
}

/// The first sequence a segment holds, from its name.
fn first_sequence(segment: &Path) -> Option<u64> {
    segment.file_stem()?.to_str()?.parse().ok()
}

/// Bytes read from a segment at a time by a [`Tail`].
const TAIL_CHUNK: usize = 1 << 20;

/// Reads one shard's journal while the switch appends to it, from any sequence on: the
/// fleet publisher's view. Reads only records the caller says are written (at or below a
/// durable sequence), so it never meets a record being written; it follows segment
/// rotation. Memory: one chunk and a partial record, never the journal.
#[derive(Debug)]
pub struct Tail {
    dir: PathBuf,
    key: Option<CodeKey>,
    /// The segment being read and its path.
    file: Option<(File, PathBuf)>,
    /// Bytes read from the segment and not yet decoded start at `buffer[start]`, which is
    /// at segment offset `offset`.
    buffer: Vec<u8>,
    start: usize,
    offset: u64,
    /// The sequence of the next record to hand out.
    next: u64,
}

impl Tail {
    /// A tail of shard `dir`'s journal, positioned at its first record.
    pub fn new(dir: &Path, key: Option<CodeKey>) -> Self {
        Self { dir: dir.to_path_buf(), key, file: None, buffer: Vec::new(), start: 0, offset: 0, next: 1 }
    }

    /// The sequence of the next record [`Tail::read`] hands out.
    pub fn next_sequence(&self) -> u64 {
        self.next
    }

    /// Positions the tail at record `sequence` (at most one past the last written), reading
    /// its segment from the start.
    pub fn seek(&mut self, sequence: u64, written: u64) -> Result<(), JournalError> {
        let segments = segments(&self.dir)?;
        let segment = segments.iter().rev().find(|path| first_sequence(path).is_some_and(|first| first <= sequence));
        self.buffer.clear();
        (self.start, self.offset) = (0, 0);
        self.file = None;
        self.next = match (segment, segments.first()) {
            (Some(path), _) => {
                self.open(path)?;
                first_sequence(path).unwrap_or(1)
            }
            (None, Some(first)) => {
                return Err(JournalError::Io {
                    path: first.clone(),
                    source: io::Error::other(format!("record {sequence} is older than the journal's first segment")),
                });
            }
            (None, None) => 1,
        };
        let mut skipped = Vec::new();
        while self.next < sequence {
            skipped.clear();
            let wanted = usize::try_from(sequence - self.next).unwrap_or(usize::MAX).min(4096);
            if self.read(written.min(sequence - 1), wanted, &mut skipped)? == 0 {
                return Err(JournalError::Io {
                    path: self.dir.clone(),
                    source: io::Error::other(format!("the journal ends before sequence {sequence}")),
                });
            }
        }
        Ok(())
    }

    fn open(&mut self, path: &Path) -> Result<(), JournalError> {
        let file = File::open(path).map_err(io_error(path))?;
        self.file = Some((file, path.to_path_buf()));
        self.buffer.clear();
        (self.start, self.offset) = (0, 0);
        Ok(())
    }

    /// Appends to `out` the records from the next one on, up to sequence `upto` (which the
    /// caller knows to be written) and at most `max`; returns how many. Damage in a written
    /// record is an error naming segment and offset.
    pub fn read(&mut self, upto: u64, max: usize, out: &mut Vec<Record>) -> Result<usize, JournalError> {
        let mut count = 0;
        while count < max && self.next <= upto {
            let decoded = Record::decode(&self.buffer[self.start..], self.key.as_ref());
            match decoded {
                Ok((record, sequence, size)) => {
                    if sequence != self.next {
                        let path = self.file.as_ref().map_or_else(|| self.dir.clone(), |(_, path)| path.clone());
                        return Err(JournalError::Sequence {
                            path,
                            offset: self.offset,
                            expected: self.next,
                            found: sequence,
                        });
                    }
                    out.push(record);
                    self.start += size;
                    self.offset += size as u64;
                    self.next += 1;
                    count += 1;
                }
                Err(problem) => {
                    if self.fill()? {
                        continue;
                    }
                    let at_boundary = self.start == self.buffer.len();
                    let following = self.dir.join(segment_name(self.next));
                    if at_boundary && following.exists() {
                        self.open(&following)?;
                        continue;
                    }
                    let path = self.file.as_ref().map_or_else(|| self.dir.clone(), |(_, path)| path.clone());
                    return Err(match problem {
                        RecordError::Sealed => JournalError::Sealed { path, offset: self.offset },
                        _ if at_boundary => JournalError::Io {
                            path,
                            source: io::Error::other(format!("record {} is written but not in the journal", self.next)),
                        },
                        problem => JournalError::Corrupt { path, offset: self.offset, problem },
                    });
                }
            }
        }
        Ok(count)
    }

    /// Reads the next chunk of the segment behind what is buffered; whether any came.
    fn fill(&mut self) -> Result<bool, JournalError> {
        use std::io::Read;
        if self.file.is_none() {
            let first = self.dir.join(segment_name(self.next));
            if !first.exists() {
                return Ok(false);
            }
            self.open(&first)?;
        }
        let Some((file, path)) = &mut self.file else { return Ok(false) };
        self.buffer.drain(..self.start);
        self.start = 0;
        // Appends at most a chunk, into spare capacity (nothing zeroed first).
        let read = Read::take(&mut *file, TAIL_CHUNK as u64).read_to_end(&mut self.buffer);
        let read = read.map_err(|source| JournalError::Io { path: path.clone(), source })?;
        Ok(read > 0)
    }
}

fn truncate(path: &Path, offset: u64) -> Result<(), JournalError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
    file.set_len(offset).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::{InstitutionId, TransactionId};

    fn record(n: u64) -> Record {
        Record::Admitted {
            reference: n,
            time_ms: n as i64,
            originator: InstitutionId::new("ACQ0001").expect("valid"),
            receiver: InstitutionId::new("WECHATPAY").expect("valid"),
            id: TransactionId::new(&format!("T{n}")).expect("valid"),
            amount_minor: n,
            currency: 156,
            refund_of: 0,
            payment_code: None,
        }
    }

    /// Every record, and where a torn tail starts.
    struct Contents {
        records: Vec<Record>,
        torn_tail: Option<(PathBuf, u64)>,
    }

    fn read(dir: &Path) -> Result<Contents, JournalError> {
        let mut records = Vec::new();
        let torn_tail = read_with(dir, None, |_, record| records.push(record))?;
        Ok(Contents { records, torn_tail })
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switch-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn write(dir: &Path, count: u64) -> PathBuf {
        let (mut journal, recovery) =
            Journal::open(dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("open");
        assert_eq!(recovery.records, 0);
        let records: Vec<_> = (1..=count).map(record).collect();
        journal.append(&records).expect("append");
        journal.sync().expect("sync");
        journal.path.clone()
    }

    #[test]
    fn records_come_back_in_order_and_appending_continues_the_sequence() {
        let dir = temp_dir("order");
        write(&dir, 10);
        let mut records = Vec::new();
        let (mut journal, recovery) =
            Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, r| records.push(r)).expect("reopen");
        assert_eq!(records, (1..=10).map(record).collect::<Vec<_>>());
        assert!(recovery.torn_tail.is_none());
        journal.append(&[record(11)]).expect("append");
        drop(journal);
        let contents = read(&dir).expect("read");
        assert_eq!((contents.records.len(), contents.torn_tail), (11, None));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tail_follows_appends_and_rotation_from_any_sequence() {
        let dir = temp_dir("tail");
        write(&dir, 10);
        let (mut journal, _) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("open");
        let mut tail = Tail::new(&dir, None);
        let mut out = Vec::new();
        // Never past what the caller says is written, nor past `max`.
        assert_eq!(tail.read(4, 100, &mut out).expect("read"), 4);
        assert_eq!(tail.read(10, 3, &mut out).expect("read"), 3);
        assert_eq!(tail.read(10, 100, &mut out).expect("read"), 3);
        assert_eq!(tail.read(10, 100, &mut out).expect("read"), 0);
        // The next segment starts at 11 (forced rotation); the tail follows it.
        journal.segment_size = SEGMENT_SIZE_MAX;
        journal.append(&(11..=25).map(record).collect::<Vec<_>>()).expect("append");
        assert_eq!(segments(&dir).expect("segments").len(), 2);
        assert_eq!(tail.read(25, 100, &mut out).expect("read"), 15);
        assert_eq!(out, (1..=25).map(record).collect::<Vec<_>>());
        assert_eq!(tail.next_sequence(), 26);
        // Seeking lands on the record asked for, in either segment, or just past the end.
        for at in [1, 5, 10, 11, 17, 25, 26] {
            let mut tail = Tail::new(&dir, None);
            tail.seek(at, 25).expect("seek");
            out.clear();
            tail.read(25, 100, &mut out).expect("read");
            assert_eq!(out, (at..=25).map(record).collect::<Vec<_>>(), "seek to {at}");
        }
        assert!(Tail::new(&dir, None).seek(30, 25).is_err(), "past the end");
        // Damage in a written record is named, never skipped.
        let first = segments(&dir).expect("segments")[0].clone();
        let mut bytes = fs::read(&first).expect("read");
        let size = bytes.len() / 10;
        bytes[2 * size + 30] ^= 1;
        fs::write(&first, &bytes).expect("write");
        let mut tail = Tail::new(&dir, None);
        out.clear();
        match tail.read(25, 100, &mut out) {
            Err(JournalError::Corrupt { offset, .. }) => assert_eq!(offset, 2 * size as u64),
            other => panic!("expected damage at record 3: {other:?}"),
        }
        assert_eq!(out.len(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_data_directory_keeps_its_instance_id() {
        let dir = temp_dir("instance");
        let id = instance(&dir).expect("drawn");
        assert_eq!(id.len(), 16);
        assert_eq!(instance(&dir).expect("kept"), id);
        assert_ne!(instance(&temp_dir("instance-other")).expect("drawn"), id);
        let _ = fs::remove_dir_all(temp_dir("instance-other"));
        fs::write(dir.join("journal/instance"), "nonsense\n").expect("write");
        assert!(instance(&dir).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_tail_is_cut_and_reported_at_every_length() {
        let dir = temp_dir("torn");
        let path = write(&dir, 3);
        let whole = fs::read(&path).expect("read");
        let record_size = whole.len() / 3;
        for cut in (2 * record_size + 1)..whole.len() {
            fs::write(&path, &whole[..cut]).expect("tear");
            let (_, recovery) =
                Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("recovers");
            assert_eq!(recovery.records, 2, "cut at {cut}");
            let (_, offset, dropped) = recovery.torn_tail.clone().expect("reported");
            assert_eq!((offset, dropped), ((2 * record_size) as u64, (cut - 2 * record_size) as u64));
            assert_eq!(fs::metadata(&path).expect("metadata").len(), (2 * record_size) as u64);
        }
        // Zeros where the last record should be (the file grew, the data never landed).
        let mut zeroed = whole.clone();
        zeroed[2 * record_size..].fill(0);
        fs::write(&path, &zeroed).expect("write");
        let (_, recovery) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("recovers");
        assert_eq!(recovery.records, 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn damage_before_valid_records_stops_start_up_unless_accepted() {
        let dir = temp_dir("corrupt");
        let path = write(&dir, 5);
        let mut bytes = fs::read(&path).expect("read");
        let record_size = bytes.len() / 5;
        bytes[record_size + 40] ^= 0x01;
        fs::write(&path, &bytes).expect("write");
        match Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}) {
            Err(JournalError::Corrupt { offset, .. }) => assert_eq!(offset, record_size as u64),
            other => panic!("expected corruption at record 2: {other:?}"),
        }
        assert!(matches!(read(&dir), Err(JournalError::Corrupt { .. })));
        // The operator accepts the loss: the journal is cut there and goes on.
        let mut records = Vec::new();
        let (mut journal, recovery) =
            Journal::open(&dir, SyncPolicy::Always, Damage::Truncate, None, |_, r| records.push(r)).expect("accepted");
        assert_eq!(records, vec![record(1)]);
        assert!(recovery.accepted_damage.is_some());
        journal.append(&[record(2)]).expect("append");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn segments_rotate_and_a_gap_in_sequences_is_refused() {
        let dir = temp_dir("rotate");
        let (mut journal, _) = Journal::open(&dir, SyncPolicy::Never, Damage::Refuse, None, |_, _| {}).expect("open");
        journal.append(&[record(1)]).expect("append");
        journal.segment_size = SEGMENT_SIZE_MAX;
        journal.append(&[record(2), record(3)]).expect("append");
        drop(journal);
        let names: Vec<_> =
            segments(&dir).expect("segments").iter().map(|p| p.file_name().map(|n| n.to_owned())).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(read(&dir).expect("read").records.len(), 3);
        // Losing the head of the log is never read as a shorter log.
        fs::remove_file(&segments(&dir).expect("segments")[0]).expect("remove");
        assert!(matches!(read(&dir), Err(JournalError::Missing { retained: 1, first: Some(2), .. })));
        assert!(matches!(
            Journal::open(&dir, SyncPolicy::Never, Damage::Truncate, None, |_, _| {}),
            Err(JournalError::Missing { retained: 1, first: Some(2), .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    /// A journal of `segments` segments of `per_segment` records each.
    fn segmented(name: &str, segments: u64, per_segment: u64) -> PathBuf {
        let dir = temp_dir(name);
        let (mut journal, _) = Journal::open(&dir, SyncPolicy::Never, Damage::Refuse, None, |_, _| {}).expect("open");
        journal.set_segment_size(1);
        for segment in 0..segments {
            let first = segment * per_segment + 1;
            journal.append(&(first..first + per_segment).map(record).collect::<Vec<_>>()).expect("append");
        }
        dir
    }

    #[test]
    fn retention_removes_whole_segments_before_a_sequence_and_recovery_starts_after_them() {
        let dir = segmented("retention", 4, 10);
        assert_eq!(segments(&dir).expect("segments").len(), 4);
        // Record 25 is in the third segment (21..=30): the two before it go.
        let removed = remove_before(&dir, 25).expect("removes");
        assert_eq!((removed.segments, removed.first_sequence), (2, 21));
        assert!(removed.bytes > 0);
        assert_eq!(fs::read_to_string(dir.join("retained")).expect("marker").trim(), "21");
        let mut sequences = Vec::new();
        let (mut journal, recovery) =
            Journal::open(&dir, SyncPolicy::Never, Damage::Refuse, None, |sequence, _| sequences.push(sequence))
                .expect("recovers");
        assert_eq!(sequences, (21..=40).collect::<Vec<_>>());
        assert_eq!((recovery.first_sequence, recovery.records), (21, 20));
        journal.append(&[record(41)]).expect("appends after");
        drop(journal);
        assert_eq!(read(&dir).expect("reads").records.len(), 21);
        // Nothing at or after the segment being written is ever removed, and asking again
        // for less removes nothing.
        assert_eq!(remove_before(&dir, 41).expect("removes").segments, 1);
        assert_eq!(remove_before(&dir, 5).expect("nothing").segments, 0);
        assert!(!segments(&dir).expect("segments").is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_journal_shorter_than_retention_left_it_is_refused() {
        let dir = segmented("retention-missing", 3, 10);
        remove_before(&dir, 15).expect("removes");
        // Someone removes one more segment by hand: a hole at the head, never a shorter log.
        fs::remove_file(&segments(&dir).expect("segments")[0]).expect("remove");
        let error = read(&dir).err().expect("refused");
        assert!(matches!(error, JournalError::Missing { retained: 11, first: Some(21), .. }), "{error}");
        assert!(error.to_string().contains("kept from record 11 on, but its first segment starts at 21"), "{error}");
        for damage in [Damage::Refuse, Damage::Truncate] {
            assert!(matches!(
                Journal::open(&dir, SyncPolicy::Never, damage, None, |_, _| {}),
                Err(JournalError::Missing { .. })
            ));
        }
        // A crash between the marker and the removals leaves more than the marker says: fine.
        let dir = segmented("retention-interrupted", 3, 10);
        write_atomically(&dir.join("retained"), b"21\n").expect("marker");
        assert_eq!(read(&dir).expect("reads").records.len(), 30);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_checkpoint_that_names_another_sequence_is_not_written() {
        let dir = temp_dir("checkpoint");
        let (mut journal, _) = Journal::open(&dir, SyncPolicy::Never, Damage::Refuse, None, |_, _| {}).expect("open");
        let checkpoint = |sequence| Record::Checkpoint { window: 1, sequence, low_water: 1, reference_sequence: 0 };
        let error = journal.commit(&[record(1), checkpoint(3)], false).expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(journal.last_sequence(), 0, "nothing of the batch was written");
        journal.commit(&[record(1), checkpoint(2)], false).expect("at its sequence");
        drop(journal);
        assert_eq!(read(&dir).expect("reads").records[1], checkpoint(2));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn io_uring_writes_and_syncs_the_same_bytes() {
        let dir = temp_dir("uring");
        let (mut journal, _) = Journal::open(&dir, SyncPolicy::Always, Damage::Refuse, None, |_, _| {}).expect("open");
        assert!(journal.use_io_uring(), "this machine allows io_uring; the test needs it");
        let records: Vec<_> = (1..=1_000).map(record).collect();
        for chunk in records.chunks(100) {
            journal.commit(chunk, true).expect("commit");
            assert!(!journal.unsynced);
        }
        journal.commit(&[record(1_001)], false).expect("commit");
        drop(journal);
        let contents = read(&dir).expect("read");
        assert_eq!(contents.records.len(), 1_001);
        assert_eq!(contents.records[..1_000], records[..]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn policies_parse_and_the_shard_count_is_pinned() {
        assert_eq!("always".parse(), Ok(SyncPolicy::Always));
        assert_eq!("interval:500".parse(), Ok(SyncPolicy::Interval(Duration::from_micros(500))));
        assert!("interval:0".parse::<SyncPolicy>().is_err());
        assert!("sometimes".parse::<SyncPolicy>().is_err());
        let dir = temp_dir("shards");
        check_shards(&dir, 2).expect("recorded");
        check_shards(&dir, 2).expect("same");
        assert!(matches!(check_shards(&dir, 3), Err(JournalError::Shards { written: 2, .. })));
        check_node(&dir, 7).expect("recorded");
        check_node(&dir, 7).expect("same");
        assert!(matches!(check_node(&dir, 0), Err(JournalError::Node { written: 7, .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}
