//! The exchange's timers: one FIFO per timeout length. A deadline is `now + length` with a
//! monotonic `now`, so each FIFO is sorted by construction: adding, peeking and popping
//! are O(1) and walk memory in order. (A binary heap over the million timers a busy shard
//! holds cost about twenty cache misses per pop.)
//!
//! Timers are never cancelled: a fired timer whose transaction has moved on is ignored by
//! its owner, so the queues hold every timer set in the last `length` of each queue.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct Timers<T> {
    /// (length in ms, its timers as (deadline, timer) in deadline order).
    queues: Vec<(u64, VecDeque<(u64, T)>)>,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Self { queues: Vec::new() }
    }
}

impl<T: Copy> Timers<T> {
    /// Sets `timer` to fire at `now_ms + length_ms`.
    pub fn add(&mut self, now_ms: u64, length_ms: u64, timer: T) {
        let deadline = now_ms.saturating_add(length_ms);
        let queue = match self.queues.iter().position(|(length, _)| *length == length_ms) {
            Some(index) => &mut self.queues[index].1,
            None => {
                self.queues.push((length_ms, VecDeque::new()));
                &mut self.queues.last_mut().expect("just pushed").1
            }
        };
        // A clock read out of order (never, from a monotonic clock; tests may) still keeps
        // the queue sorted: the slot is found from the back.
        let at = queue.iter().rposition(|(d, _)| *d <= deadline).map_or(0, |i| i + 1);
        queue.insert(at, (deadline, timer));
    }

    /// The earliest deadline, if any timer is set.
    pub fn next_deadline(&self) -> Option<u64> {
        self.queues.iter().filter_map(|(_, queue)| queue.front().map(|(deadline, _)| *deadline)).min()
    }

    /// Removes and returns the earliest timer due at `now_ms`, with its deadline.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, T)> {
        let (_, queue) = self
            .queues
            .iter_mut()
            .filter(|(_, queue)| queue.front().is_some_and(|(deadline, _)| *deadline <= now_ms))
            .min_by_key(|(_, queue)| queue.front().map(|(deadline, _)| *deadline))?;
        queue.pop_front()
    }

    pub fn len(&self) -> usize {
        self.queues.iter().map(|(_, queue)| queue.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_across_lengths() {
        let mut timers = Timers::default();
        timers.add(0, 1_000, 'a');
        timers.add(10, 100, 'b');
        timers.add(20, 1_000, 'c');
        timers.add(30, 5, 'd');
        assert_eq!(timers.next_deadline(), Some(35));
        assert_eq!(timers.pop_due(34), None);
        let fired: Vec<_> = std::iter::from_fn(|| timers.pop_due(2_000)).collect();
        assert_eq!(fired, [(35, 'd'), (110, 'b'), (1_000, 'a'), (1_020, 'c')]);
        assert!(timers.is_empty());
    }

    #[test]
    fn an_out_of_order_clock_keeps_queues_sorted() {
        let mut timers = Timers::default();
        timers.add(500, 100, 1);
        timers.add(0, 100, 2);
        timers.add(300, 100, 3);
        let fired: Vec<_> = std::iter::from_fn(|| timers.pop_due(u64::MAX)).collect();
        assert_eq!(fired, [(100, 2), (400, 3), (600, 1)]);
    }
}
