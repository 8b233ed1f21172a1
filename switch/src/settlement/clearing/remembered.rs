//! The transactions a shard's clearing reader knows, as the exchange holds them: those in
//! flight, and the last `remember` completed, oldest forgotten first.
//!
//! Memory is fixed by `remember`, however long the journal: the completed live in a ring
//! in completion order, found by reference through an index reserved at twice `remember`
//! entries. A hash table that churns (every transaction inserted once and removed once)
//! collects tombstones; reserved at half load, hashbrown clears them in place instead of
//! doubling the table, which it does to a table reserved for exactly `remember` once the
//! churn has used up its free slots (with one map of whole transactions so reserved, a
//! close's peak RSS grew with its window: 299 MiB at 11 million payments, 559 MiB at 51
//! million).

use std::collections::{HashMap, VecDeque};

use foldhash::fast::RandomState;

/// Indexes are reserved up front only up to this many entries (a model reader remembers
/// without limit, and grows as it goes).
const RESERVED_MAX: usize = 1 << 23;

/// What a reader keeps of each transaction (`T`), by reference.
#[derive(Debug)]
pub(super) struct Remembered<T> {
    in_flight: HashMap<u64, T, RandomState>,
    completed: VecDeque<(u64, T)>,
    /// Reference -> completion number of each transaction in `completed`.
    index: HashMap<u64, u64, RandomState>,
    /// The completion number of `completed[0]`.
    front: u64,
    remember: usize,
}

impl<T> Remembered<T> {
    pub(super) fn new(remember: usize) -> Self {
        let remember = remember.max(1);
        let reserved = remember.saturating_mul(2);
        let (ring, index) = if reserved <= RESERVED_MAX { (remember + 1, reserved) } else { (0, 0) };
        Self {
            in_flight: HashMap::default(),
            completed: VecDeque::with_capacity(ring),
            index: HashMap::with_capacity_and_hasher(index, RandomState::default()),
            front: 0,
            remember,
        }
    }

    /// A transaction admitted (in flight until `complete`).
    pub(super) fn admit(&mut self, reference: u64, value: T) {
        self.in_flight.insert(reference, value);
    }

    /// Transaction `reference`, and whether it has completed.
    pub(super) fn get_mut(&mut self, reference: u64) -> Option<(&mut T, bool)> {
        if let Some(value) = self.in_flight.get_mut(&reference) {
            return Some((value, false));
        }
        let number = *self.index.get(&reference)?;
        let (_, value) = self.completed.get_mut(usize::try_from(number - self.front).ok()?)?;
        Some((value, true))
    }

    pub(super) fn get(&self, reference: u64) -> Option<&T> {
        if let Some(value) = self.in_flight.get(&reference) {
            return Some(value);
        }
        let number = *self.index.get(&reference)?;
        self.completed.get(usize::try_from(number - self.front).ok()?).map(|(_, value)| value)
    }

    /// In-flight transaction `reference` completed: it moves to the completed, and the
    /// oldest completed beyond `remember` is forgotten.
    pub(super) fn complete(&mut self, reference: u64) {
        let Some(value) = self.in_flight.remove(&reference) else { return };
        let number = self.front + self.completed.len() as u64;
        self.completed.push_back((reference, value));
        self.index.insert(reference, number);
        while self.completed.len() > self.remember {
            let Some((oldest, _)) = self.completed.pop_front() else { break };
            self.index.remove(&oldest);
            self.front += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_transactions_are_forgotten_oldest_first_and_in_flight_ones_never() {
        let mut remembered = Remembered::new(2);
        for reference in 1..=5 {
            remembered.admit(reference, reference * 10);
        }
        for reference in [2, 1, 4, 5] {
            remembered.complete(reference);
        }
        // Completed in the order 2, 1, 4, 5: the last two are remembered.
        assert_eq!(remembered.get(2), None);
        assert_eq!(remembered.get(1), None);
        assert_eq!(remembered.get_mut(4).map(|(v, done)| (*v, done)), Some((40, true)));
        assert_eq!(remembered.get_mut(5).map(|(v, done)| (*v, done)), Some((50, true)));
        assert_eq!(remembered.get_mut(3).map(|(v, done)| (*v, done)), Some((30, false)));
        // A second completion, or one of an unknown transaction, changes nothing.
        remembered.complete(4);
        remembered.complete(9);
        assert_eq!(remembered.get(4), Some(&40));
    }

    #[test]
    fn the_index_does_not_grow_past_its_reservation_however_long_the_churn() {
        let mut remembered = Remembered::new(1_000);
        let capacity = remembered.index.capacity();
        for reference in 1..=200_000u64 {
            remembered.admit(reference, ());
            remembered.complete(reference);
        }
        // `capacity` counts the free slots left, which tombstones take for a while: it
        // moves below the reservation, never past it (a doubling would).
        assert!(remembered.index.capacity() <= capacity, "{} > {capacity}", remembered.index.capacity());
        assert_eq!(remembered.completed.len(), 1_000);
        assert!(remembered.get(199_001).is_some() && remembered.get(199_000).is_none());
        // Why twice: a table reserved for exactly what it holds doubles under the same
        // churn.
        let mut exact: HashMap<u64, (), RandomState> = HashMap::with_capacity_and_hasher(1_000, RandomState::default());
        let reserved = exact.capacity();
        for reference in 1..=200_000u64 {
            exact.insert(reference, ());
            if reference > 1_000 {
                exact.remove(&(reference - 1_000));
            }
        }
        assert!(exact.capacity() > reserved, "{} <= {reserved}", exact.capacity());
    }
}
