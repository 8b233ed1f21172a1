//! The close of a clearing window: durable and resumable, the same for a running switch
//! (`Shared::close_window`), an offline close and a rebuild.
//!
//! A close of window W goes through these steps, each durable before the next:
//!
//! 1. **Inputs.** What W's files need besides the journal, the fee schedule in force and how
//!    many completed transactions a reader must remember (`CloseInputs`), is written to
//!    `DATA_DIR/journal/close/window-W.json` (synced, with its directory). FX rates need no
//!    record: every conversion's rate is in its `Converted` record.
//! 2. **Cuts.** Every shard journals W's cut (synced).
//! 3. **Files.** W's files are built from the journal with the recorded inputs
//!    (`files::Builder`), `summary.json` last.
//! 4. Retention (a running switch) removes what no kept window needs.
//!
//! Invariants:
//! - A cut of W in any shard's journal implies W's inputs are recorded (step 1 precedes 2),
//!   so every build of W (at the close, resumed, rebuilt) uses the same inputs and gives the
//!   same bytes.
//! - W's files are complete exactly when `summary.json` exists (step 3 writes it last).
//! - **No window is skipped.** At start, and before a window is closed, what an interrupted
//!   close left is finished (`resume`, loudly): a cut some shards journaled and others did
//!   not is journaled in the others, and a cut window without its summary is built. A
//!   close that cannot finish its predecessor is refused.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{Builder, Built, SUMMARY};
use super::{ClearingError, FeeSchedule, ShardEntries, shard_dirs, window_dir};
use crate::core::record::{CodeKey, Record};
use crate::durability::journal;

/// What a window's files are built with besides the journal (step 1 of a close).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseInputs {
    pub fees: FeeSchedule,
    /// Completed transactions a shard's reader remembers (`ShardEntries`): the exchange's
    /// `completed_max` when the window closed.
    pub remember: usize,
}

impl CloseInputs {
    pub fn new(fees: FeeSchedule, completed_max: usize) -> Self {
        Self { fees, remember: completed_max.max(1) }
    }

    /// What one of `shards` shards' readers remembers: the exchange's share of
    /// `completed_max` (`ExchangeConfig::for_shard`).
    pub fn remember_per_shard(&self, shards: usize) -> usize {
        self.remember.div_ceil(shards.max(1))
    }
}

/// Where window `window`'s inputs are recorded.
pub fn inputs_path(data_dir: &Path, window: u64) -> PathBuf {
    data_dir.join("journal").join("close").join(format!("window-{window:06}.json"))
}

/// Step 1: records `inputs` for `window`, durably.
pub fn record_inputs(data_dir: &Path, window: u64, inputs: &CloseInputs) -> Result<(), ClearingError> {
    let path = inputs_path(data_dir, window);
    let dir = path.parent().unwrap_or(data_dir);
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|source| ClearingError::Io { path: dir.to_path_buf(), source })?;
        let journal = data_dir.join("journal");
        std::fs::File::open(&journal)
            .and_then(|d| d.sync_all())
            .map_err(|source| ClearingError::Io { path: journal, source })?;
    }
    let text = format!("{}\n", serde_json::to_string_pretty(inputs).unwrap_or_default());
    super::files::write_file(&path, text.as_bytes())?;
    Ok(())
}

/// The inputs recorded for `window`, if any (windows closed before inputs were recorded
/// have none).
pub fn recorded_inputs(data_dir: &Path, window: u64) -> Result<Option<CloseInputs>, ClearingError> {
    let path = inputs_path(data_dir, window);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| ClearingError::Io { path, source: std::io::Error::other(error) }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ClearingError::Io { path, source }),
    }
}

/// The inputs a build of `window` uses: those recorded at its close; for a window closed
/// before inputs were recorded, the schedule written beside its files with `fallback`'s
/// `remember`; else `fallback`.
pub fn inputs_for(data_dir: &Path, window: u64, fallback: &CloseInputs) -> Result<CloseInputs, ClearingError> {
    if let Some(inputs) = recorded_inputs(data_dir, window)? {
        return Ok(inputs);
    }
    let path = window_dir(data_dir, window).join("fee_schedule.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let fees = serde_json::from_slice(&bytes)
                .map_err(|error| ClearingError::Io { path, source: std::io::Error::other(error) })?;
            Ok(CloseInputs { fees, remember: fallback.remember })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(fallback.clone()),
        Err(source) => Err(ClearingError::Io { path, source }),
    }
}

/// Whether window `window`'s files are complete (its summary, written last, exists).
pub fn complete(data_dir: &Path, window: u64) -> bool {
    window_dir(data_dir, window).join(SUMMARY).exists()
}

/// The windows up to `last` (the last cut) whose close recorded its inputs but did not
/// finish its files, oldest first.
pub fn incomplete(data_dir: &Path, last: u64) -> Vec<u64> {
    let mut windows: Vec<u64> = (1..=last)
        .rev()
        .take_while(|&window| !complete(data_dir, window) && inputs_path(data_dir, window).exists())
        .collect();
    windows.reverse();
    windows
}

/// Step 3: builds window `window`'s files from every shard's journal in `data_dir`, with
/// `inputs`. `on_checkpoint` sees every checkpoint read (shard, window, low water), for
/// retention. Memory: one shard's reader and the builder's run (see `files`).
pub fn build(
    data_dir: &Path,
    window: u64,
    inputs: &CloseInputs,
    key: Option<&CodeKey>,
    mut on_checkpoint: impl FnMut(usize, u64, u64),
) -> Result<Built, ClearingError> {
    let mut builder = Builder::new(&window_dir(data_dir, window), window, &inputs.fees)?;
    let dirs = shard_dirs(data_dir)?;
    let remember = inputs.remember_per_shard(dirs.len());
    for (index, dir) in dirs {
        let mut shard = ShardEntries::new(window, &inputs.fees, remember);
        let mut failed = None;
        journal::read_with(&dir, key, |sequence, record| {
            if let Record::Checkpoint { window, low_water, .. } = record {
                on_checkpoint(index, window, low_water);
            }
            if failed.is_none()
                && let Some(entry) = shard.add(sequence, record)
                && let Err(error) = builder.push(entry)
            {
                failed = Some(error);
            }
        })?;
        if let Some(error) = failed {
            return Err(error);
        }
        if !shard.closed() {
            return Err(ClearingError::NotClosed(window));
        }
        shard.finish(dir)?;
    }
    builder.finish()
}

/// Rebuilds window `window`'s files from the journal with the inputs its close recorded
/// (`inputs_for`, with `fallback` for a window closed before they were).
pub fn rebuild(
    data_dir: &Path,
    window: u64,
    fallback: &CloseInputs,
    key: Option<&CodeKey>,
) -> Result<Built, ClearingError> {
    build(data_dir, window, &inputs_for(data_dir, window, fallback)?, key, |_, _, _| {})
}

/// Finishes every window up to `last` (the last cut in every shard) that an interrupted
/// close left without its files, oldest first, loudly. Returns what was built.
pub fn resume(data_dir: &Path, last: u64, key: Option<&CodeKey>) -> Result<Vec<Built>, ClearingError> {
    let mut built = Vec::new();
    for window in incomplete(data_dir, last) {
        tracing::warn!(
            window,
            "clearing: window {window} was cut but its close was interrupted; writing its files now"
        );
        let inputs = recorded_inputs(data_dir, window)?.ok_or(ClearingError::NotClosed(window))?;
        let done = build(data_dir, window, &inputs, key, |_, _, _| {})?;
        tracing::warn!(
            window,
            entries = done.entries,
            files = done.files.len(),
            "clearing: interrupted close completed"
        );
        built.push(done);
    }
    Ok(built)
}

/// Closes the open window of a stopped switch's data directory: takes the directory's lock
/// (refused while a switch runs on it), finishes what an interrupted close left, records
/// the inputs, cuts every shard's journal and writes the files.
pub fn close_offline(data_dir: &Path, inputs: &CloseInputs, key: Option<&CodeKey>) -> Result<Built, ClearingError> {
    let _lock = super::lock(data_dir)?;
    let mut journals = Vec::new();
    for (_, dir) in shard_dirs(data_dir)? {
        let mut last = 0;
        let (journal, _) = journal::Journal::open(
            &dir,
            journal::SyncPolicy::Always,
            journal::Damage::Refuse,
            key.cloned(),
            |_, record| {
                if let Record::WindowCut { window, .. } = record {
                    last = last.max(window);
                }
            },
        )?;
        journals.push((dir, journal, last));
    }
    let cut_everywhere = journals.iter().map(|(_, _, last)| *last).max().unwrap_or(0);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let cut = |dir: &PathBuf, journal: &mut journal::Journal, window: u64| {
        journal
            .commit(&[Record::WindowCut { window, time_ms: now_ms }], true)
            .map_err(|source| ClearingError::Io { path: dir.clone(), source })
    };
    // A cut some shards journaled before an interruption: the others journal it now.
    for (dir, journal, last) in &mut journals {
        for window in *last + 1..=cut_everywhere {
            tracing::warn!(window, shard = %dir.display(), "clearing: completing an interrupted cut");
            cut(dir, journal, window)?;
        }
    }
    resume(data_dir, cut_everywhere, key)?;
    let window = cut_everywhere + 1;
    record_inputs(data_dir, window, inputs)?;
    fault_point("close-after-inputs");
    for (index, (dir, journal, _)) in journals.iter_mut().enumerate() {
        cut(dir, journal, window)?;
        if index == 0 {
            fault_point("close-after-first-cut");
        }
    }
    drop(journals);
    fault_point("close-after-cuts");
    build(data_dir, window, inputs, key, |_, _, _| {})
}

/// A test hook: with `SWITCH_FAULT` set to `point`, the process aborts there, as a kill
/// would stop it (the close's steps are tested for every such point). Unset, nothing.
pub fn fault_point(point: &str) {
    if std::env::var_os("SWITCH_FAULT").is_some_and(|wanted| wanted == point) {
        eprintln!("switch: SWITCH_FAULT={point}: stopping here");
        std::process::abort();
    }
}
