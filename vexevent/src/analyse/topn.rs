//! Top keys over a long horizon with a bounded key set: weighted Space-Saving (Metwally et al.).
//! At most `capacity` keys are monitored; a new key replaces the one with the smallest count and
//! inherits that count as its error, so each reported count is at most `error` above the truth,
//! and every key whose true count exceeds the smallest monitored count is monitored.

use std::collections::{BTreeSet, HashMap};

/// A monitored key's count and the most it may overstate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    pub key: u64,
    pub count: u64,
    pub error: u64,
}

/// The Space-Saving summary of one dimension.
pub struct SpaceSaving {
    capacity: usize,
    counts: HashMap<u64, (u64, u64), foldhash::fast::FixedState>,
    /// (count, key), smallest first.
    order: BTreeSet<(u64, u64)>,
}

impl SpaceSaving {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            counts: HashMap::with_hasher(foldhash::fast::FixedState::default()),
            order: BTreeSet::new(),
        }
    }

    /// Adds `weight` to `key`.
    pub fn add(&mut self, key: u64, weight: u64) {
        if let Some((count, _)) = self.counts.get_mut(&key) {
            self.order.remove(&(*count, key));
            *count += weight;
            self.order.insert((*count, key));
        } else if self.counts.len() < self.capacity {
            self.counts.insert(key, (weight, 0));
            self.order.insert((weight, key));
        } else if let Some((smallest, victim)) = self.order.pop_first() {
            self.counts.remove(&victim);
            self.counts.insert(key, (smallest + weight, smallest));
            self.order.insert((smallest + weight, key));
        }
    }

    /// The `n` largest counts, largest first.
    #[must_use]
    pub fn top(&self, n: usize) -> Vec<Counted> {
        self.order
            .iter()
            .rev()
            .take(n)
            .map(|&(count, key)| Counted { key, count, error: self.counts[&key].1 })
            .collect()
    }

    /// Whether `key` is monitored.
    #[must_use]
    pub fn contains(&self, key: u64) -> bool {
        self.counts.contains_key(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_keys_are_found_within_their_error_bound() {
        let mut summary = SpaceSaving::new(10);
        let mut truth = HashMap::new();
        // 3 heavy keys among 1,000 light ones, interleaved.
        for round in 0..100u64 {
            for heavy in 0..3 {
                summary.add(heavy, 5);
                *truth.entry(heavy).or_insert(0) += 5;
            }
            for light in 0..10 {
                let key = 100 + round * 10 + light;
                summary.add(key, 1);
                *truth.entry(key).or_insert(0) += 1;
            }
        }
        let top = summary.top(3);
        let keys: BTreeSet<u64> = top.iter().map(|c| c.key).collect();
        assert_eq!(keys, BTreeSet::from([0, 1, 2]));
        for counted in top {
            let real = truth[&counted.key];
            assert!(counted.count >= real && counted.count - counted.error <= real, "{counted:?} vs {real}");
        }
        assert_eq!(summary.counts.len(), 10, "bounded");
    }
}
