//! Reading a shard's journal: the checked walk over its segments that recovery, `switch
//! journal verify|inspect` and clearing share (`walk`, `read_with`), and the `Tail` the fleet
//! publisher follows the journal with.
//!
//! A walk reads each segment in chunks (memory: one chunk, never a segment), checks every
//! record, and holds the journal to its head (`head`): the newest segment the head names
//! must exist, and the journal must reach the sequence the head says was synced. Damage in
//! a record the head says was synced is corruption, wherever it is; only damage past it, in
//! the last segment with nothing valid after it, is a torn tail (the last write, partly on
//! disk).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::head;
use super::{JournalError, first_kept, first_sequence, io_error, segment_name, segments};
use crate::core::record::{CodeKey, HEADER_SIZE, RECORD_SIZE_MAX, Record, RecordError};

/// Bytes read from a segment at a time by a walk.
const READ_CHUNK: usize = 4 << 20;

/// The first damaged record a walk met.
#[derive(Debug, Clone)]
pub(crate) struct Damaged {
    pub path: PathBuf,
    /// Its index among the journal's segments.
    pub segment: usize,
    pub offset: u64,
    pub problem: RecordError,
    /// A torn tail: in the last segment, nothing valid after it, and past what the head
    /// says was synced.
    pub torn: bool,
}

/// What a walk found.
#[derive(Debug)]
pub(crate) struct Walked {
    pub segments: Vec<PathBuf>,
    /// The sequence the journal starts at (1, or what retention left).
    pub first: u64,
    /// One past the last valid record.
    pub next: u64,
    pub damage: Option<Damaged>,
    /// The journal is shorter than its head says (`JournalError::Lost`): refused unless
    /// the operator accepts the loss.
    pub lost: Option<JournalError>,
}

/// Walks shard `dir`'s journal, handing every valid record from sequence `from` on (the
/// journal's first when earlier) to `on_record`, in order, until its end or its first damage.
/// A head naming a segment that is gone, or a sequence the journal does not reach, is
/// `lost` (`JournalError::Lost`).
pub(crate) fn walk(
    dir: &Path,
    key: Option<&CodeKey>,
    from: u64,
    mut on_record: impl FnMut(u64, Record),
) -> Result<Walked, JournalError> {
    let segments = segments(dir)?;
    let first = first_kept(dir, &segments)?;
    let head = head::read(dir).map_err(io_error(&head::path(dir)))?;
    let mut lost = None;
    if let Some(head) = head
        && head.segment >= first
        && !segments.iter().any(|path| first_sequence(path) == Some(head.segment))
    {
        let last = segments.last().and_then(|path| first_sequence(path)).unwrap_or(0);
        lost = Some(format!(
            "its newest segment, {}, is gone (the last one left starts at record {last})",
            segment_name(head.segment)
        ));
    }
    let durable = head.map_or(0, |head| head.durable);
    // Start in the last segment that begins at or before `from`.
    let start = segments
        .iter()
        .rposition(|path| first_sequence(path).is_some_and(|first_in| first_in <= from.max(first)))
        .unwrap_or(0);
    let mut expected = segments.get(start).and_then(|path| first_sequence(path)).unwrap_or(first);
    let mut on_wanted = |sequence: u64, record: Record| {
        if sequence >= from {
            on_record(sequence, record);
        }
    };
    for (index, path) in segments.iter().enumerate().skip(start) {
        let Some((offset, problem)) = scan_file(path, key, &mut expected, &mut on_wanted)? else { continue };
        let last = index + 1 == segments.len();
        let torn = last && expected > durable && {
            let bytes = fs::read(path).map_err(io_error(path))?;
            !valid_after(&bytes, offset as usize, expected, key)
        };
        let damage = Damaged { path: path.clone(), segment: index, offset, problem, torn };
        let lost = lost.map(|detail| JournalError::Lost { path: dir.to_path_buf(), durable, detail });
        return Ok(Walked { segments, first, next: expected, damage: Some(damage), lost });
    }
    if lost.is_none() && expected <= durable {
        lost = Some(format!(
            "it ends at record {}: records were lost, or an older copy of a segment was put back",
            expected - 1
        ));
    }
    let lost = lost.map(|detail| JournalError::Lost { path: dir.to_path_buf(), durable, detail });
    Ok(Walked { segments, first, next: expected, damage: None, lost })
}

/// Hands the records of segment `path` to `on_record`, read a chunk at a time, until its
/// end or its first damaged record (returned with its offset). Sequence gaps, and encrypted
/// codes without the key, are errors (never damage: nothing may be cut for want of a key).
fn scan_file(
    path: &Path,
    key: Option<&CodeKey>,
    expected: &mut u64,
    on_record: &mut impl FnMut(u64, Record),
) -> Result<Option<(u64, RecordError)>, JournalError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK + RECORD_SIZE_MAX);
    // `buffer[start..]` is not yet decoded; `buffer[0]` is at segment offset `base`.
    let (mut start, mut base, mut end) = (0usize, 0u64, false);
    loop {
        if !end && buffer.len() - start < RECORD_SIZE_MAX {
            buffer.drain(..start);
            base += start as u64;
            start = 0;
            let read = Read::take(&mut file, READ_CHUNK as u64).read_to_end(&mut buffer);
            end = read.map_err(io_error(path))? == 0;
            continue;
        }
        if start == buffer.len() {
            return Ok(None);
        }
        let offset = base + start as u64;
        match Record::decode(&buffer[start..], key) {
            Err(RecordError::Sealed) => return Err(JournalError::Sealed { path: path.to_path_buf(), offset }),
            Ok((record, sequence, size)) => {
                if sequence != *expected {
                    return Err(JournalError::Sequence {
                        path: path.to_path_buf(),
                        offset,
                        expected: *expected,
                        found: sequence,
                    });
                }
                on_record(sequence, record);
                *expected += 1;
                start += size;
            }
            Err(problem) => return Ok(Some((offset, problem))),
        }
    }
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

/// Reads every record of a shard's journal, checking it, without changing anything, and
/// hands each to `on_record` (streamed: the journal need not fit in memory). Returns where
/// a torn tail starts, if anywhere (recovery would cut it). For `switch journal verify`,
/// `inspect` and clearing.
pub fn read_with(
    dir: &Path,
    key: Option<&CodeKey>,
    on_record: impl FnMut(u64, Record),
) -> Result<Option<(PathBuf, u64)>, JournalError> {
    let walked = walk(dir, key, 1, on_record)?;
    if let Some(lost) = walked.lost {
        return Err(lost);
    }
    match walked.damage {
        None => Ok(None),
        Some(damage) if damage.torn => Ok(Some((damage.path, damage.offset))),
        Some(damage) => {
            Err(JournalError::Corrupt { path: damage.path, offset: damage.offset, problem: damage.problem })
        }
    }
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
