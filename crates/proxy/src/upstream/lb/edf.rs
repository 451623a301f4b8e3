//! Earliest-deadline-first scheduling, as Envoy's `EdfScheduler` does it:
//! weighted round robin where an entry of weight w comes up every 1/w. An
//! entry's next deadline is the current time plus 1/weight, its weight taken
//! as it is scheduled again; equal deadlines go to the entry scheduled first.
//! Used for hosts of different weights and for localities.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

pub struct Edf {
    heap: BinaryHeap<Entry>,
    now: f64,
    /// How many entries there are: the order of a rescheduled entry moves
    /// past every other entry's.
    len: usize,
}

struct Entry {
    deadline: f64,
    order: usize,
    index: usize,
}

impl Edf {
    /// A schedule over entries 0, 1, ... with these weights.
    pub fn new(weights: impl Iterator<Item = f64>) -> Self {
        let heap: BinaryHeap<Entry> =
            weights.enumerate().map(|(i, w)| Entry { deadline: 1.0 / w, order: i, index: i }).collect();
        let len = heap.len();
        Self { heap, now: 0.0, len }
    }

    /// The entry whose turn it is; it is scheduled again with `weight(entry)`.
    pub fn pick(&mut self, weight: impl FnOnce(usize) -> f64) -> Option<usize> {
        let mut top = self.heap.pop()?;
        self.now = top.deadline;
        let index = top.index;
        top.deadline = self.now + 1.0 / weight(index);
        top.order += self.len;
        self.heap.push(top);
        Some(index)
    }
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.deadline == o.deadline && self.order == o.order
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline.
    fn cmp(&self, o: &Self) -> Ordering {
        o.deadline.total_cmp(&self.deadline).then(o.order.cmp(&self.order))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_follow_weights_and_ties_go_in_order() {
        let weights = [1.0, 2.0, 1.0];
        let mut edf = Edf::new(weights.iter().copied());
        let picks: Vec<usize> = (0..8).filter_map(|_| edf.pick(|i| weights[i])).collect();
        // Entry 1 (every 0.5) first; at 1.0 all three are due and go in the
        // order they were scheduled: 0, 2, then 1 again.
        assert_eq!(picks, vec![1, 0, 2, 1, 1, 0, 2, 1]);
    }
}
