//! What one window holds per key: counts, bytes, errors, time spent and a log-bucketed latency
//! histogram (32 counters: cheap enough for 100,000 keys); a full HDR histogram for the few
//! series that deserve one (operations, FUSE mounts and stages); the slowest operations.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::telemetry::latency_histogram;

/// Latency buckets per key: bucket 0 holds under 1 us, bucket `b` holds `[2^(b-1), 2^b)` us,
/// the last everything from 2^30 us (18 minutes) up.
pub const BUCKETS: usize = 32;

/// One key's aggregate over one window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyAgg {
    pub count: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Time spent in the key's operations, in nanoseconds.
    pub time_ns: u64,
    pub buckets: [u32; BUCKETS],
}

impl KeyAgg {
    /// Adds one event.
    pub fn record(&mut self, bytes: u64, error: bool, duration_ns: u64) {
        self.count += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        self.errors += u64::from(error);
        self.time_ns = self.time_ns.saturating_add(duration_ns);
        let us = duration_ns / 1_000;
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.buckets[bucket.min(BUCKETS - 1)] += 1;
    }

    /// Adds another aggregate of the same key.
    pub fn merge(&mut self, other: &KeyAgg) {
        self.count += other.count;
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.errors += other.errors;
        self.time_ns = self.time_ns.saturating_add(other.time_ns);
        for (bucket, n) in self.buckets.iter_mut().zip(other.buckets) {
            *bucket = bucket.saturating_add(n);
        }
    }

    /// The latency at quantile `q` (0..=1) as its bucket's upper bound, in microseconds.
    #[must_use]
    pub fn quantile_us(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().map(|&n| u64::from(n)).sum();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank"
        )]
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return 1 << bucket;
            }
        }
        0
    }

    /// Mean latency, in nanoseconds.
    #[must_use]
    pub fn mean_ns(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "a mean")]
        let mean = self.time_ns as f64 / self.count.max(1) as f64;
        mean
    }
}

/// A full HDR histogram, made on the first value.
#[derive(Default)]
pub struct Hdr(pub Option<Histogram<u64>>);

impl Hdr {
    pub fn record(&mut self, ns: u64) {
        self.0.get_or_insert_with(latency_histogram).saturating_record(ns.max(1));
    }

    /// Adds another window's histogram.
    pub fn merge(&mut self, other: &Hdr) {
        if let Some(theirs) = &other.0 {
            // Same bounds: adding cannot fail.
            let _ = self.0.get_or_insert_with(latency_histogram).add(theirs);
        }
    }
}

/// One slow operation (`fileslower`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SlowOp {
    pub duration_us: u64,
    pub operation: String,
    pub path: String,
    pub comm: String,
    pub pid: u32,
    /// Kernel time of the operation's end (`CLOCK_MONOTONIC`, ns).
    pub at_ns: u64,
}

/// The slowest operations of a window, slowest first once sorted.
#[derive(Default)]
pub struct Slowest {
    pub ops: Vec<SlowOp>,
    /// Once `ops` is full: the fastest of them, in microseconds (anything not slower is refused
    /// without a look at the list).
    floor_us: u64,
}

impl Slowest {
    /// Keeps the operation if it is among the `capacity` slowest (`make` builds it only then).
    pub fn offer(&mut self, capacity: usize, duration_ns: u64, make: impl FnOnce() -> SlowOp) {
        if self.ops.len() < capacity {
            self.ops.push(make());
        } else if duration_ns / 1_000 <= self.floor_us {
            return;
        } else if let Some(fastest) = self.ops.iter_mut().min_by_key(|op| op.duration_us) {
            *fastest = make();
        }
        if self.ops.len() >= capacity {
            self.floor_us = self.ops.iter().map(|op| op.duration_us).min().unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_log_buckets_and_quantiles_read_their_bounds() {
        let mut agg = KeyAgg::default();
        for ns in [500, 1_500, 3_000, 3_500, 1_000_000] {
            agg.record(10, ns == 500, ns);
        }
        assert_eq!((agg.count, agg.bytes, agg.errors), (5, 50, 1));
        assert_eq!(agg.buckets[..3], [1, 1, 2], "<1us, [1,2)us, [2,4)us");
        assert_eq!(agg.quantile_us(0.5), 4);
        assert_eq!(agg.quantile_us(1.0), 1 << 10, "1 ms is in [512, 1024) us");
        agg.record(0, false, u64::MAX);
        assert_eq!(agg.buckets[BUCKETS - 1], 1, "huge values stay in the last bucket");
    }

    #[test]
    fn slowest_keeps_the_slowest() {
        let mut slowest = Slowest::default();
        for (i, us) in [5u64, 1, 9, 3, 7].into_iter().enumerate() {
            slowest.offer(3, us * 1_000, || SlowOp {
                duration_us: us,
                operation: "read".into(),
                path: format!("/f{i}"),
                comm: "c".into(),
                pid: 1,
                at_ns: 0,
            });
        }
        let mut kept: Vec<u64> = slowest.ops.iter().map(|op| op.duration_us).collect();
        kept.sort_unstable();
        assert_eq!(kept, [5, 7, 9]);
    }
}
