//! Follows each shard's sequence numbers to find exactly which records never arrived.

use crate::telemetry::{Counters, Gap, add};

/// Next expected sequence number per shard (CPU).
#[derive(Debug, Default)]
pub struct SequenceTracker {
    next: Vec<u64>,
}

impl SequenceTracker {
    /// Notes a record; reports a gap when sequence numbers were skipped.
    pub fn observe(&mut self, cpu: u32, seq: u64, counters: &Counters) {
        let cpu_index = cpu as usize;
        if cpu_index >= self.next.len() {
            self.next.resize(cpu_index + 1, 0);
        }
        let expected = self.next[cpu_index];
        if seq > expected {
            counters.record_gap(Gap { cpu, first: expected, count: seq - expected });
        } else if seq < expected {
            add(&counters.records_out_of_order, 1);
            return;
        }
        self.next[cpu_index] = seq + 1;
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
        assert_eq!(counters.recent_gaps(), vec![Gap { cpu: 0, first: 3, count: 3 }]);
        tracker.observe(1, 0, &counters);
        assert_eq!(counters.records_out_of_order.load(Ordering::Relaxed), 1);
    }
}
