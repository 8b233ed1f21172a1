//! A window's files, written from its entries in memory independent of the window's size.
//!
//! Entries come in any order (shard after shard, each in journal order). They are kept in
//! a run of at most `run_entries`; a full run is sorted and spilled to a scratch file. At
//! the end the runs are merged in entry order (`Entry::order`) and each entry is written,
//! as it comes, to the files of the participants it concerns and added to the positions.
//! Memory: one run, one read buffer per spilled run, one write buffer per participant.
//!
//! ```text
//! WINDOW_DIR/.build/run-N        sorted runs (fixed-size entries), removed at the end
//! WINDOW_DIR/NAME.csv.partial    files being written; renamed once the window balances
//! WINDOW_DIR/fee_schedule.json   the schedule the files were built with
//! WINDOW_DIR/NAME.csv, NAME.json every participant with a position
//! WINDOW_DIR/summary.json        written last: the window's files are complete
//! ```
//!
//! The bytes are those of `model::Window::files` for the same entries (tested below), and
//! nothing takes its final name before the positions are known to balance.

use std::collections::{BTreeMap, BinaryHeap};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use codec::field::FieldText;
use codec::{Conversion, InstitutionId, TransactionId};

use super::{CSV_HEADER, ClearingError, Entry, EntryKind, FeeSchedule, Positions, concerns, csv_row};
use crate::durability::journal;

/// Entries held in memory before a run is spilled (about 20 MiB of entries).
pub const RUN_ENTRIES: usize = 1 << 17;
/// Read and write buffers of the run files and the participants' files.
const BUFFER: usize = 64 * 1024;
/// The name of the file written last, which marks a window's files complete.
pub const SUMMARY: &str = "summary.json";

/// A window's files being built (see the module).
pub struct Builder {
    window: u64,
    fees: FeeSchedule,
    dir: PathBuf,
    /// This build made `dir` (removed again if the build fails).
    created: bool,
    scratch: PathBuf,
    run: Vec<Entry>,
    run_entries: usize,
    runs: Vec<PathBuf>,
}

/// What a build wrote.
#[derive(Debug)]
pub struct Built {
    pub window: u64,
    pub entries: u64,
    /// Every file, in the order written (the summary last).
    pub files: Vec<PathBuf>,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ClearingError + '_ {
    move |source| ClearingError::Io { path: path.to_path_buf(), source }
}

impl Builder {
    /// A build of window `window` into `window_dir`, with `fees`. What an interrupted
    /// build left there (runs, partial files) is removed first.
    pub fn new(window_dir: &Path, window: u64, fees: &FeeSchedule) -> Result<Self, ClearingError> {
        let scratch = window_dir.join(".build");
        match fs::remove_dir_all(&scratch) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ClearingError::Io { path: scratch, source }),
        }
        match fs::read_dir(window_dir) {
            Ok(entries) => {
                for entry in entries {
                    let path = entry.map_err(io_error(window_dir))?.path();
                    if path.extension().is_some_and(|e| e == "partial") {
                        fs::remove_file(&path).map_err(io_error(&path))?;
                    }
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ClearingError::Io { path: window_dir.to_path_buf(), source }),
        }
        Ok(Self {
            window,
            fees: fees.clone(),
            dir: window_dir.to_path_buf(),
            created: false,
            scratch,
            run: Vec::new(),
            run_entries: RUN_ENTRIES,
            runs: Vec::new(),
        })
    }

    /// The window's directory, made on first use (a build refused before it writes
    /// anything leaves nothing behind).
    fn make_dir(&mut self) -> Result<(), ClearingError> {
        if !self.dir.exists() {
            fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
            self.created = true;
        }
        Ok(())
    }

    /// Spills a run past `entries` (at least 1): tests force many runs with a small one.
    pub fn with_run_entries(mut self, entries: usize) -> Self {
        self.run_entries = entries.max(1);
        self
    }

    /// Adds one of the window's entries.
    pub fn push(&mut self, entry: Entry) -> Result<(), ClearingError> {
        if self.run.capacity() == 0 {
            self.run.reserve_exact(self.run_entries);
        }
        self.run.push(entry);
        if self.run.len() >= self.run_entries {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<(), ClearingError> {
        self.make_dir()?;
        fs::create_dir_all(&self.scratch).map_err(io_error(&self.scratch))?;
        let path = self.scratch.join(format!("run-{}", self.runs.len()));
        self.run.sort_unstable_by_key(Entry::order);
        let file = File::create(&path).map_err(io_error(&path))?;
        let mut out = BufWriter::with_capacity(BUFFER, file);
        for entry in &self.run {
            out.write_all(&encode(entry)).map_err(io_error(&path))?;
        }
        out.flush().map_err(io_error(&path))?;
        self.run.clear();
        self.runs.push(path);
        Ok(())
    }

    /// Merges the runs and writes every file; on an error nothing of this build keeps a
    /// final name it did not have before, and its scratch files are removed.
    pub fn finish(mut self) -> Result<Built, ClearingError> {
        let result = self.write_files();
        let _ = fs::remove_dir_all(&self.scratch);
        if result.is_err()
            && let Ok(entries) = fs::read_dir(&self.dir)
        {
            for path in entries.filter_map(|entry| entry.ok().map(|e| e.path())) {
                if path.extension().is_some_and(|e| e == "partial") {
                    let _ = fs::remove_file(path);
                }
            }
            if self.created {
                let _ = fs::remove_dir(&self.dir);
            }
        }
        result
    }

    fn write_files(&mut self) -> Result<Built, ClearingError> {
        let mut merged = if self.runs.is_empty() {
            self.run.sort_unstable_by_key(Entry::order);
            Merge::Memory(std::mem::take(&mut self.run).into_iter())
        } else {
            if !self.run.is_empty() {
                self.spill()?;
            }
            self.run = Vec::new();
            Merge::runs(&self.runs)?
        };
        self.make_dir()?;
        let mut positions = Positions::new(self.window, &self.fees);
        let operator = positions.operator;
        let mut writers: BTreeMap<InstitutionId, Partial> = BTreeMap::new();
        let mut row = String::new();
        while let Some(entry) = merged.next()? {
            positions.add(&entry)?;
            let mut parties = [Some(entry.payer), Some(entry.payee), operator];
            if parties[1] == parties[0] {
                parties[1] = None;
            }
            if parties[2] == parties[0] || parties[2] == parties[1] {
                parties[2] = None;
            }
            for participant in parties.into_iter().flatten().filter(|&p| concerns(&entry, p, operator)) {
                row.clear();
                csv_row(&entry, participant, &mut row);
                let writer = match writers.entry(participant) {
                    std::collections::btree_map::Entry::Occupied(writer) => writer.into_mut(),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(Partial::create(&self.dir, participant)?)
                    }
                };
                writer.write(row.as_bytes())?;
            }
        }
        positions.check_balanced()?;
        // Every participant with a position has a file, if only its header.
        for &participant in positions.totals.keys() {
            if let std::collections::btree_map::Entry::Vacant(slot) = writers.entry(participant) {
                slot.insert(Partial::create(&self.dir, participant)?);
            }
        }
        let mut files = vec![write_file(&self.dir.join("fee_schedule.json"), self.fees.to_json().as_bytes())?];
        for (participant, writer) in writers {
            files.push(writer.finish()?);
            super::close::fault_point("close-mid-files");
            let json = self.dir.join(format!("{}.json", participant.as_str()));
            files.push(write_file(&json, positions.participant_json(participant).as_bytes())?);
        }
        files.push(write_file(&self.dir.join(SUMMARY), positions.summary_json().as_bytes())?);
        Ok(Built { window: self.window, entries: positions.entries, files })
    }
}

/// Writes `bytes` to `path` atomically and durably (`journal::write_atomically`).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<PathBuf, ClearingError> {
    journal::write_atomically(path, bytes).map_err(io_error(path))?;
    Ok(path.to_path_buf())
}

/// A participant's reconciliation file being written under a temporary name.
struct Partial {
    out: BufWriter<File>,
    partial: PathBuf,
    path: PathBuf,
}

impl Partial {
    fn create(dir: &Path, participant: InstitutionId) -> Result<Self, ClearingError> {
        let path = dir.join(format!("{}.csv", participant.as_str()));
        let partial = dir.join(format!("{}.csv.partial", participant.as_str()));
        let file = File::create(&partial).map_err(io_error(&partial))?;
        let mut writer = Self { out: BufWriter::with_capacity(BUFFER, file), partial, path };
        writer.write(CSV_HEADER.as_bytes())?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ClearingError> {
        self.out.write_all(bytes).map_err(io_error(&self.partial))
    }

    /// Synced, then renamed to its final name (the directory is synced with the summary's
    /// rename, `journal::write_atomically`).
    fn finish(self) -> Result<PathBuf, ClearingError> {
        let Self { out, partial, path } = self;
        let file = out
            .into_inner()
            .map_err(|error| ClearingError::Io { path: partial.clone(), source: error.into_error() })?;
        file.sync_all().map_err(io_error(&partial))?;
        fs::rename(&partial, &path).map_err(io_error(&path))?;
        Ok(path)
    }
}

/// The window's entries in order: from memory, or merged from sorted runs.
enum Merge {
    Memory(std::vec::IntoIter<Entry>),
    Runs { readers: Vec<(BufReader<File>, PathBuf)>, heads: BinaryHeap<std::cmp::Reverse<Head>> },
}

/// The next entry of one run, ordered by the entry order (then the run, for a total order).
struct Head {
    order: (i64, u64, EntryKind),
    run: usize,
    entry: Entry,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        (self.order, self.run) == (other.order, other.run)
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.order, self.run).cmp(&(other.order, other.run))
    }
}

impl Merge {
    fn runs(paths: &[PathBuf]) -> Result<Self, ClearingError> {
        let mut readers = Vec::with_capacity(paths.len());
        let mut heads = BinaryHeap::with_capacity(paths.len());
        for (run, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(io_error(path))?;
            let mut reader = (BufReader::with_capacity(BUFFER, file), path.clone());
            if let Some(entry) = read_entry(&mut reader)? {
                heads.push(std::cmp::Reverse(Head { order: entry.order(), run, entry }));
            }
            readers.push(reader);
        }
        Ok(Self::Runs { readers, heads })
    }

    fn next(&mut self) -> Result<Option<Entry>, ClearingError> {
        match self {
            Self::Memory(entries) => Ok(entries.next()),
            Self::Runs { readers, heads } => {
                let Some(std::cmp::Reverse(head)) = heads.pop() else { return Ok(None) };
                if let Some(next) = read_entry(&mut readers[head.run])? {
                    heads.push(std::cmp::Reverse(Head { order: next.order(), run: head.run, entry: next }));
                }
                Ok(Some(head.entry))
            }
        }
    }
}

/// An entry in a run file.
const ENTRY_SIZE: usize = 156;

fn encode(entry: &Entry) -> [u8; ENTRY_SIZE] {
    let mut bytes = [0u8; ENTRY_SIZE];
    let (party, conversion) = entry.conversion.unwrap_or((InstitutionId::EMPTY, Conversion::NONE));
    let kind = match entry.kind {
        EntryKind::Payment => 0,
        EntryKind::Refund => 1,
        EntryKind::Reversal => 2,
    };
    bytes[0..8].copy_from_slice(&entry.time_ms.to_le_bytes());
    bytes[8..16].copy_from_slice(&entry.reference.to_le_bytes());
    bytes[16] = kind;
    bytes[17] = u8::from(entry.conversion.is_some());
    bytes[18..20].copy_from_slice(&entry.currency.to_le_bytes());
    bytes[20..22].copy_from_slice(&conversion.payer_currency.to_le_bytes());
    bytes[22..24].copy_from_slice(&conversion.margin_basis_points.to_le_bytes());
    bytes[24..28].copy_from_slice(&conversion.rate_version.to_le_bytes());
    bytes[28..36].copy_from_slice(&entry.amount_minor.to_le_bytes());
    bytes[36..44].copy_from_slice(&entry.fee_minor.to_le_bytes());
    bytes[44..52].copy_from_slice(&conversion.payer_amount_minor.to_le_bytes());
    bytes[52..60].copy_from_slice(&conversion.rate.to_le_bytes());
    bytes[60..92].copy_from_slice(entry.originator_transaction_id.as_bytes());
    bytes[92..108].copy_from_slice(entry.payer.as_bytes());
    bytes[108..124].copy_from_slice(entry.payee.as_bytes());
    bytes[124..140].copy_from_slice(entry.fee_payer.as_bytes());
    bytes[140..156].copy_from_slice(party.as_bytes());
    bytes
}

/// The next entry of a run file (`None` at its end). The file is this build's own; an
/// entry that does not decode is an I/O error, never skipped.
fn read_entry((reader, path): &mut (BufReader<File>, PathBuf)) -> Result<Option<Entry>, ClearingError> {
    let mut bytes = [0u8; ENTRY_SIZE];
    match reader.read_exact(&mut bytes) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(source) => return Err(ClearingError::Io { path: path.clone(), source }),
    }
    decode(&bytes).map(Some).ok_or_else(|| ClearingError::Io {
        path: path.clone(),
        source: io::Error::new(io::ErrorKind::InvalidData, "a run file holds an entry that does not decode"),
    })
}

fn decode(bytes: &[u8; ENTRY_SIZE]) -> Option<Entry> {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let id_at = |at: usize| InstitutionId::from_bytes(bytes[at..at + 16].try_into().ok()?).ok();
    let kind = match bytes[16] {
        0 => EntryKind::Payment,
        1 => EntryKind::Refund,
        2 => EntryKind::Reversal,
        _ => return None,
    };
    let conversion = match bytes[17] {
        0 => None,
        1 => Some((
            id_at(140)?,
            Conversion {
                payer_amount_minor: u64_at(44),
                rate: u64_at(52),
                rate_version: u32::from_le_bytes(bytes[24..28].try_into().ok()?),
                payer_currency: u16_at(20),
                margin_basis_points: u16_at(22),
            },
        )),
        _ => return None,
    };
    Some(Entry {
        time_ms: u64_at(0) as i64,
        reference: u64_at(8),
        kind,
        originator_transaction_id: TransactionId::from_bytes(bytes[60..92].try_into().ok()?).ok()?,
        payer: id_at(92)?,
        payee: id_at(108)?,
        amount_minor: u64_at(28),
        currency: u16_at(18),
        fee_minor: u64_at(36) as i64,
        fee_payer: id_at(124)?,
        conversion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settlement::clearing::Window;
    use proptest::prelude::*;

    fn id(text: &str) -> InstitutionId {
        InstitutionId::new(text).expect("valid")
    }

    const PARTICIPANTS: [&str; 5] = ["ACQ0001", "WECHATPAY", "WALTH01", "UNIONPAY", "CSWITCH"];

    fn entry() -> impl Strategy<Value = Entry> {
        (
            0i64..50,
            1u64..40,
            0usize..3,
            0usize..4,
            0usize..4,
            1u64..100_000,
            proptest::option::of((any::<bool>(), 1u64..500_000)),
            -50i64..50,
        )
            .prop_map(|(time_ms, reference, kind, payer, payee, amount, conversion, fee)| {
                let kind = [EntryKind::Payment, EntryKind::Refund, EntryKind::Reversal][kind];
                let (payer, payee) = (id(PARTICIPANTS[payer]), id(PARTICIPANTS[payee]));
                Entry {
                    time_ms,
                    reference,
                    kind,
                    originator_transaction_id: TransactionId::new(&format!("T\"{reference}")).expect("valid"),
                    payer,
                    payee,
                    amount_minor: amount,
                    currency: 156,
                    fee_minor: fee,
                    fee_payer: payee,
                    conversion: conversion.map(|(payer_side, payer_amount_minor)| {
                        let party = if payer_side { payer } else { payee };
                        let conversion = Conversion {
                            payer_amount_minor,
                            rate: 49_123_000_000,
                            rate_version: 3,
                            payer_currency: 764,
                            margin_basis_points: 50,
                        };
                        (party, conversion)
                    }),
                }
            })
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switch-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Spilled to runs of any size and merged, the files are byte for byte those of
        /// the whole window sorted in memory.
        #[test]
        fn streamed_files_are_the_in_memory_files(
            entries in prop::collection::vec(entry(), 0..60),
            run in 1usize..8,
        ) {
            // Keys are unique in a real window: one entry per reference and kind.
            let mut seen = std::collections::HashSet::new();
            let entries: Vec<Entry> = entries.into_iter().filter(|e| seen.insert((e.reference, e.kind as u8))).collect();
            let fees = FeeSchedule { operator: "CSWITCH".into(), ..FeeSchedule::default() };
            let model = Window::from_entries(7, entries.clone(), &fees);
            let dir = temp_dir(&format!("prop-{run}"));
            let mut builder = Builder::new(&dir, 7, &fees).expect("new").with_run_entries(run);
            for entry in entries {
                builder.push(entry).expect("push");
            }
            let built = builder.finish();
            match model {
                Ok(model) => {
                    let built = built.expect("the model balanced");
                    let expected = model.files(&fees);
                    let names: Vec<String> = built.files.iter()
                        .map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string())
                        .collect();
                    prop_assert_eq!(names, expected.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
                    for (name, text) in expected {
                        prop_assert_eq!(fs::read_to_string(dir.join(&name)).expect("written"), text, "{}", name);
                    }
                    prop_assert!(!dir.join(".build").exists());
                }
                Err(_) => {
                    prop_assert!(built.is_err());
                    prop_assert!(!dir.exists(), "nothing written");
                }
            }
            let _ = fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn an_unbalanced_or_operatorless_window_writes_nothing_and_leftovers_go() {
        let dir = temp_dir("refused");
        fs::create_dir_all(dir.join(".build")).expect("dir");
        fs::write(dir.join("ACQ0001.csv.partial"), "left by a crash").expect("write");
        let conversion = Conversion {
            payer_amount_minor: 10,
            rate: 1,
            rate_version: 1,
            payer_currency: 764,
            margin_basis_points: 0,
        };
        let entry = Entry {
            time_ms: 1,
            reference: 1,
            kind: EntryKind::Payment,
            originator_transaction_id: TransactionId::new("T1").expect("valid"),
            payer: id("WALTH01"),
            payee: id("UNIONPAY"),
            amount_minor: 5,
            currency: 156,
            fee_minor: 0,
            fee_payer: id("UNIONPAY"),
            conversion: Some((id("WALTH01"), conversion)),
        };
        let mut builder = Builder::new(&dir, 1, &FeeSchedule::default()).expect("new");
        assert!(!dir.join("ACQ0001.csv.partial").exists() && !dir.join(".build").exists());
        builder.push(entry).expect("push");
        assert!(matches!(builder.finish(), Err(ClearingError::NoOperator(1))));
        assert_eq!(fs::read_dir(&dir).expect("the directory was there before").count(), 0);
        fs::remove_dir(&dir).expect("empty");
        let mut builder = Builder::new(&dir, 1, &FeeSchedule::default()).expect("new");
        builder.push(entry).expect("push");
        assert!(matches!(builder.finish(), Err(ClearingError::NoOperator(1))));
        assert!(!dir.exists(), "a refused build leaves nothing");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn entries_survive_a_run_file() {
        let entry = Entry {
            time_ms: -5,
            reference: u64::MAX,
            kind: EntryKind::Reversal,
            originator_transaction_id: TransactionId::new("X".repeat(32).as_str()).expect("valid"),
            payer: id("A"),
            payee: id("B".repeat(16).as_str()),
            amount_minor: u64::MAX,
            currency: 999,
            fee_minor: i64::MIN,
            fee_payer: id("A"),
            conversion: None,
        };
        assert_eq!(decode(&encode(&entry)), Some(entry));
        let mut bytes = encode(&entry);
        bytes[16] = 9;
        assert_eq!(decode(&bytes), None);
    }
}
