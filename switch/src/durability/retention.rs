//! Journal retention: which segments may go once a window has closed.
//!
//! A record may be removed only when nothing needs it any more:
//! - **the exchange**, which a restart rebuilds by replaying the journal. Each window cut
//!   is followed by a checkpoint (`Record::Checkpoint`) naming the oldest record the
//!   exchange still needed then: the `Admitted` of the oldest transaction it had in flight
//!   or remembered (duplicates, refunds, pending reversals, used payment codes). A replay
//!   from there rebuilds every one of them; the checkpoint carries the last switch
//!   reference drawn, and the onboarding changes in force are journaled again after it.
//! - **clearing**: the last `retain_windows` closed windows stay rebuildable
//!   (`switch clearing rebuild`). Window V's entries name only transactions the exchange
//!   held at V's opening cut or admitted after it, so V needs the records from the
//!   `low_water` of the checkpoint before it on. Older windows keep the files written when
//!   they closed; rebuilding one is refused (`ClearingError::Removed`), never wrong.
//! - **the fleet**: records not yet published to the fleet stream stay, however old.
//!
//! So after window W closes, shard S may drop every segment wholly before
//! `min(low_water of S's checkpoint of window W - retain_windows, first unpublished)`
//! (`journal::remove_before`, which keeps the segment holding that record).
//!
//! Invariant: `horizon` never passes a checkpoint's `low_water` for a window retention keeps,
//! nor a record not yet published; a shard with no usable checkpoint loses nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use crate::durability::journal::{self, JournalError, Removed};

/// Per shard, the checkpoints retention may still use: window to `low_water`.
#[derive(Debug)]
pub struct Retention {
    /// Closed windows kept rebuildable (at least 1).
    keep_windows: u64,
    checkpoints: Mutex<Vec<BTreeMap<u64, u64>>>,
}

impl Retention {
    pub fn new(keep_windows: u64, shards: usize) -> Self {
        Self { keep_windows: keep_windows.max(1), checkpoints: Mutex::new(vec![BTreeMap::new(); shards]) }
    }

    /// Shard `shard` cut window `window` with a checkpoint naming `low_water` (at recovery:
    /// every checkpoint replayed; then each cut).
    pub fn checkpoint(&self, shard: usize, window: u64, low_water: u64) {
        let mut checkpoints = self.checkpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(shard) = checkpoints.get_mut(shard) {
            shard.insert(window, low_water);
        }
    }

    /// The first record shard `shard` must keep once window `closed` has closed: the
    /// `low_water` of its latest checkpoint of a window at most `closed - keep_windows`
    /// (`None`: there is none, keep everything). Forgets the checkpoints older than it.
    fn horizon(&self, shard: usize, closed: u64) -> Option<u64> {
        let oldest_kept = closed.checked_sub(self.keep_windows).filter(|&window| window >= 1)?;
        let mut checkpoints = self.checkpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let shard = checkpoints.get_mut(shard)?;
        let (&window, &low_water) = shard.range(..=oldest_kept).next_back()?;
        // Later closes only need this checkpoint or newer ones.
        *shard = shard.split_off(&window);
        Some(low_water)
    }

    /// After window `closed` closed: removes each shard's segments that nothing needs.
    /// `published`, when the node publishes to a fleet, is each shard's last published
    /// sequence (nothing after it is removed). Returns what each shard removed.
    pub fn apply(&self, data_dir: &Path, closed: u64, published: Option<&[u64]>) -> Result<Vec<Removed>, JournalError> {
        let shards = self.checkpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
        let mut removed = Vec::with_capacity(shards);
        for shard in 0..shards {
            let Some(mut horizon) = self.horizon(shard, closed) else {
                removed.push(Removed::default());
                continue;
            };
            if let Some(published) = published {
                horizon = horizon.min(published.get(shard).map_or(1, |last| last + 1));
            }
            removed.push(journal::remove_before(&journal::shard_dir(data_dir, shard), horizon)?);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_is_the_checkpoint_of_the_oldest_window_kept() {
        let retention = Retention::new(2, 1);
        assert_eq!(retention.horizon(0, 5), None, "no checkpoint yet: keep everything");
        for (window, low_water) in [(1, 10), (2, 40), (3, 35), (4, 90)] {
            retention.checkpoint(0, window, low_water);
        }
        assert_eq!(retention.horizon(0, 2), None, "two windows closed, both kept");
        assert_eq!(retention.horizon(0, 3), Some(10), "window 1 may go: from its checkpoint on");
        assert_eq!(retention.horizon(0, 5), Some(35));
        // Window 4's checkpoint is still there for the next close; older ones are not.
        assert_eq!(retention.checkpoints.lock().expect("lock")[0].keys().copied().collect::<Vec<_>>(), [3, 4]);
        assert_eq!(retention.horizon(0, 6), Some(90));
        assert_eq!(retention.horizon(0, 7), Some(90), "no newer checkpoint: the last one still holds");
        assert_eq!(retention.horizon(1, 7), None, "an unknown shard keeps everything");
    }

    /// A data directory whose shard 0 has four segments of 10 records each.
    fn data_dir(name: &str) -> std::path::PathBuf {
        use crate::core::record::Record;
        use crate::durability::journal::{Damage, Journal, SyncPolicy};
        let data = std::env::temp_dir().join(format!("switch-retention-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let (mut journal, _) =
            Journal::open(&journal::shard_dir(&data, 0), SyncPolicy::Never, Damage::Refuse, None, |_, _| {})
                .expect("open");
        journal.set_segment_size(1);
        for segment in 0..4u64 {
            let records: Vec<_> = (0..10).map(|n| Record::WindowCut { window: segment * 10 + n, time_ms: 0 }).collect();
            journal.append(&records).expect("append");
        }
        data
    }

    #[test]
    fn nothing_the_fleet_has_not_published_is_removed() {
        let data = data_dir("fleet");
        let retention = Retention::new(1, 1);
        retention.checkpoint(0, 1, 35);
        // Published up to record 12 only: the segment holding record 13 stays.
        let removed = retention.apply(&data, 2, Some(&[12])).expect("applies");
        assert_eq!((removed[0].segments, removed[0].first_sequence), (1, 11));
        // Caught up: up to the checkpoint's low water.
        retention.checkpoint(0, 2, 35);
        let removed = retention.apply(&data, 3, Some(&[40])).expect("applies");
        assert_eq!((removed[0].segments, removed[0].first_sequence), (2, 31));
        // Without a fleet, only the checkpoints count; and nothing is left to remove.
        assert_eq!(retention.apply(&data, 3, None).expect("applies")[0].segments, 0);
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn a_missing_checkpoint_falls_back_to_an_older_one() {
        // An offline close cuts without a checkpoint; the one before it is older, so
        // keeping from it keeps more, never less.
        let retention = Retention::new(1, 1);
        retention.checkpoint(0, 1, 7);
        assert_eq!(retention.horizon(0, 3), Some(7));
    }
}
