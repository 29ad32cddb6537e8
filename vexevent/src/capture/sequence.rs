//! Follows each shard's sequence numbers to find exactly which records never arrived.

use crate::telemetry::{Counters, Gap, add};

/// Next expected sequence number per shard (CPU).
#[derive(Debug, Default)]
pub struct SequenceTracker {
    next: Vec<u64>,
}

impl SequenceTracker {
    /// Notes a record; reports a gap when sequence numbers were skipped without a gap record.
    pub fn observe(&mut self, cpu: u32, seq: u64, counters: &Counters) {
        self.advance(cpu, seq, 1, counters);
    }

    /// Notes a gap record: the probe reports `count` records from `first` as lost.
    pub fn observe_reported_gap(&mut self, cpu: u32, first: u64, count: u64, counters: &Counters) {
        if self.advance(cpu, first, count, counters) {
            counters.record_gap(Gap { cpu, first, count, reported: true });
        }
    }

    /// Moves a shard past `first .. first + count`; false when that range was already passed.
    fn advance(&mut self, cpu: u32, first: u64, count: u64, counters: &Counters) -> bool {
        let cpu_index = cpu as usize;
        if cpu_index >= self.next.len() {
            self.next.resize(cpu_index + 1, 0);
        }
        let expected = self.next[cpu_index];
        if first > expected {
            counters.record_gap(Gap { cpu, first: expected, count: first - expected, reported: false });
        } else if first < expected {
            add(&counters.records_out_of_order, 1);
            return false;
        }
        self.next[cpu_index] = first + count;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn reports_the_missing_range_per_shard() {
        let counters = Counters::default();
        let mut tracker = SequenceTracker::default();
        for seq in [0, 1, 2, 6, 7] {
            tracker.observe(0, seq, &counters);
        }
        for seq in [0, 1] {
            tracker.observe(1, seq, &counters);
        }
        assert_eq!(counters.records_missing.load(Ordering::Relaxed), 3);
        assert_eq!(counters.recent_gaps(), vec![Gap { cpu: 0, first: 3, count: 3, reported: false }]);
        tracker.observe(1, 0, &counters);
        assert_eq!(counters.records_out_of_order.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_reported_gap_explains_the_skipped_range() {
        let counters = Counters::default();
        let mut tracker = SequenceTracker::default();
        tracker.observe(0, 0, &counters);
        tracker.observe_reported_gap(0, 1, 4, &counters);
        tracker.observe(0, 5, &counters);
        assert_eq!(counters.records_missing.load(Ordering::Relaxed), 0);
        assert_eq!(counters.lost_reported.load(Ordering::Relaxed), 4);
    }
}
