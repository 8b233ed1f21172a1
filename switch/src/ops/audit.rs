//! The admin API's audit log, `DATA_DIR/audit.log`: one JSON line per state-changing call
//! and per refused call (time, peer, who, action, outcome).
//!
//! It cannot be used to fill the disk the journal needs:
//! - Calls made with a known token (actions, and refusals of a role too low) are written
//!   and synced one by one, before their answer leaves: they are rare and attributable.
//! - Calls with no known token are aggregated per source address and action: the first in
//!   an interval is written at once, the rest counted and written as one line with their
//!   `count` when the interval ends (`flush_refusals`). They are not synced. At most
//!   `SOURCES_MAX` keys are counted apart; the rest share one.
//! - The file is rotated past `max_bytes` (`audit.log` → `audit.log.1` → … →
//!   `audit.log.{ROTATED_KEPT}`, the oldest removed): the log never takes more than
//!   `(ROTATED_KEPT + 1) × max_bytes` (80 MiB by default).
//!
//! Invariant: a token is never written; a refusal's action text is cut to
//! `ACTION_CHARS_MAX` characters (it comes from the request line).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Rotated files kept besides the current one.
pub const ROTATED_KEPT: usize = 4;
/// The current file's size before it is rotated, by default.
pub const MAX_BYTES_DEFAULT: u64 = 16 << 20;
/// Unauthenticated refusals of one source and action are written at most once per
/// interval (plus the first), by default.
pub const REFUSAL_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);
/// Source-and-action pairs counted apart between two flushes.
const SOURCES_MAX: usize = 1_024;
/// Characters of a refused request's action kept.
const ACTION_CHARS_MAX: usize = 80;

/// Refusals of one source and action since its first in this interval.
#[derive(Debug)]
struct Refusals {
    first: jiff::Timestamp,
    /// Counted after the first (which was written at once).
    more: u64,
}

/// The audit log file, rotated by size, with unauthenticated refusals aggregated.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: std::fs::File,
    /// Bytes in the current file.
    size: u64,
    max_bytes: u64,
    refusal_interval: Duration,
    refusals: HashMap<(String, String), Refusals>,
    last_flush: Instant,
}

impl AuditLog {
    /// Appends to `path` (created if missing), rotating past `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(1024),
            refusal_interval: REFUSAL_INTERVAL_DEFAULT,
            refusals: HashMap::new(),
            last_flush: Instant::now(),
        })
    }

    /// Writes unauthenticated refusals aggregated per `interval` (instead of 10 s).
    pub fn with_refusal_interval(mut self, interval: Duration) -> Self {
        self.refusal_interval = interval;
        self
    }

    pub fn refusal_interval(&self) -> Duration {
        self.refusal_interval
    }

    /// One attributable record, written and synced before it returns.
    pub fn record(&mut self, peer: &str, who: Option<&str>, action: &str, outcome: &str) -> std::io::Result<()> {
        let line = serde_json::json!({
            "time": jiff::Timestamp::now().to_string(),
            "peer": peer,
            "who": who,
            "action": action,
            "outcome": outcome,
        });
        self.append(&line.to_string())?;
        self.file.sync_data().map_err(|error| {
            std::io::Error::new(error.kind(), format!("syncing the audit log {}: {error}", self.path.display()))
        })
    }

    /// A call with no known token from `peer` (address and port) for `action`: written at
    /// once if it is the first of its source and action in this interval, else counted.
    pub fn refused_unauthenticated(&mut self, peer: &str, action: &str, outcome: &str) {
        let source = peer.rsplit_once(':').map_or(peer, |(host, _)| host).to_string();
        let action: String = action.chars().take(ACTION_CHARS_MAX).collect();
        let key = if self.refusals.len() < SOURCES_MAX || self.refusals.contains_key(&(source.clone(), action.clone()))
        {
            (source, action)
        } else {
            ("others".to_string(), "others".to_string())
        };
        match self.refusals.get_mut(&key) {
            Some(refusals) => refusals.more += 1,
            None => {
                let line = serde_json::json!({
                    "time": jiff::Timestamp::now().to_string(),
                    "peer": peer,
                    "who": null,
                    "action": key.1,
                    "outcome": outcome,
                });
                self.append_or_log(&line.to_string());
                self.refusals.insert(key, Refusals { first: jiff::Timestamp::now(), more: 0 });
            }
        }
        if self.last_flush.elapsed() >= self.refusal_interval {
            self.flush_refusals();
        }
    }

    /// Writes what was counted since the last flush, one line per source and action, and
    /// starts a new interval.
    pub fn flush_refusals(&mut self) {
        self.last_flush = Instant::now();
        let mut counted: Vec<_> = self.refusals.drain().filter(|(_, refusals)| refusals.more > 0).collect();
        counted.sort_by(|a, b| a.0.cmp(&b.0));
        for ((source, action), refusals) in counted {
            let line = serde_json::json!({
                "time": jiff::Timestamp::now().to_string(),
                "peer": source,
                "who": null,
                "action": action,
                "outcome": "refused: no known token (aggregated)",
                "count": refusals.more,
                "since": refusals.first.to_string(),
            });
            self.append_or_log(&line.to_string());
        }
    }

    /// Unattributed lines are worth less than the disk: one that cannot be written is
    /// logged and dropped.
    fn append_or_log(&mut self, line: &str) {
        if let Err(error) = self.append(line) {
            tracing::warn!(%error, path = %self.path.display(), "audit log: a refusal was not recorded");
        }
    }

    fn append(&mut self, line: &str) -> std::io::Result<()> {
        let bytes = line.len() as u64 + 1;
        if self.size > 0 && self.size + bytes > self.max_bytes {
            self.rotate()?;
        }
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.file.write_all(&bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// `audit.log.{n}` → `.{n+1}` (the oldest removed), `audit.log` → `.1`, a new file.
    fn rotate(&mut self) -> std::io::Result<()> {
        let rotated = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        match std::fs::remove_file(rotated(ROTATED_KEPT)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        for n in (1..ROTATED_KEPT).rev() {
            match std::fs::rename(rotated(n), rotated(n + 1)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
        self.file.sync_data()?;
        std::fs::rename(&self.path, rotated(1))?;
        self.file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        tracing::info!(path = %self.path.display(), "audit log rotated");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switch-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_log_is_rotated_and_bounded() {
        let dir = dir("rotate");
        let path = dir.join("audit.log");
        let mut log = AuditLog::open(&path, 4096).expect("opens");
        for n in 0..2_000 {
            log.record("127.0.0.1:1", Some("oncall"), &format!("POST /clearing/close {n}"), "200").expect("written");
        }
        let mut total = 0;
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let entry = entry.expect("entry");
            let size = entry.metadata().expect("metadata").len();
            assert!(size <= 4096, "{}: {size}", entry.path().display());
            total += size;
        }
        assert!(total <= (ROTATED_KEPT as u64 + 1) * 4096, "{total}");
        assert!(std::fs::read_to_string(&path).expect("current").contains("1999"), "the newest is in the current file");
        assert!(std::fs::read_to_string(dir.join("audit.log.4")).is_ok(), "rotated files are kept");
        assert!(std::fs::read_to_string(dir.join("audit.log.5")).is_err(), "and only so many");
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[test]
    fn unauthenticated_refusals_are_aggregated_per_source_and_action() {
        let dir = dir("aggregate");
        let path = dir.join("audit.log");
        let mut log = AuditLog::open(&path, MAX_BYTES_DEFAULT).expect("opens");
        for n in 0..1_000 {
            log.refused_unauthenticated(
                &format!("10.0.0.1:{}", 1000 + n),
                "GET /participants",
                "refused: no known token",
            );
        }
        log.refused_unauthenticated("10.0.0.2:5", "POST /clearing/close", "refused: no known token");
        log.flush_refusals();
        let text = std::fs::read_to_string(&path).expect("log");
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[2]["count"], 999, "{text}");
        assert_eq!(lines[2]["peer"], "10.0.0.1");
        assert!(lines.iter().all(|l| l["who"].is_null()));
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}
