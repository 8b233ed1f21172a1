//! Logs that stay readable under overload and attack: a line that a flood can repeat
//! thousands of times a second is written at most once per interval from its call site,
//! saying how many like it were left out since (`suppressed`). The metrics carry the
//! totals; the log carries one example and a count.
//!
//! ```ignore
//! static REFUSED: LogLimit = LogLimit::per_second();
//! if let Some(suppressed) = REFUSED.allow(now_ms) {
//!     tracing::info!(suppressed, %peer, "frame refused");
//! }
//! ```
//!
//! `now_ms` is the caller's monotonic clock (the core reads none of its own).

use std::sync::atomic::{AtomicU64, Ordering};

/// One call site's allowance.
#[derive(Debug)]
pub struct LogLimit {
    interval_ms: u64,
    /// When the site may log next (monotonic ms; 0: at once).
    next_ms: AtomicU64,
    /// Lines left out since the last one written.
    suppressed: AtomicU64,
}

impl LogLimit {
    /// At most one line per `interval_ms`.
    pub const fn new(interval_ms: u64) -> Self {
        Self { interval_ms, next_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// At most one line a second.
    pub const fn per_second() -> Self {
        Self::new(1_000)
    }

    /// `Some(lines left out since the last)` when the site may write a line now; `None`
    /// (counted) when it must not.
    pub fn allow(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        // Relaxed, and a lost race costs one line too many or too few: these are logs.
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(next, now_ms + self.interval_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let limit = LogLimit::new(1_000);
        assert_eq!(limit.allow(5), Some(0));
        for now in 6..1_005 {
            assert_eq!(limit.allow(now), None);
        }
        assert_eq!(limit.allow(1_005), Some(999));
        assert_eq!(limit.allow(1_006), None);
        assert_eq!(limit.allow(5_000), Some(1));
    }
}
