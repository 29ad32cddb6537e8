//! How full each kernel ring is (a gauge): the bytes waiting in it when the pipeline thread last
//! began a drain, the most seen since the start, and its size, so a backlog shows before it
//! becomes loss.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};

/// One ring's gauge, written by the thread that drains the rings.
#[derive(Debug, Default)]
struct RingGauge {
    used: AtomicU64,
    peak: AtomicU64,
    size: AtomicU64,
}

/// Every ring's gauge, by shard.
#[derive(Debug, Default)]
pub struct RingGauges {
    rings: Mutex<Vec<std::sync::Arc<RingGauge>>>,
}

/// One ring's fill at an instant.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RingSummary {
    /// Bytes waiting to be drained when the last drain began.
    pub used_bytes: u64,
    /// The most bytes ever waiting at the start of a drain.
    pub peak_bytes: u64,
    pub size_bytes: u64,
}

impl std::fmt::Display for RingSummary {
    /// `used/peak/size` in KiB.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.used_bytes / 1024, self.peak_bytes / 1024, self.size_bytes / 1024)
    }
}

impl RingGauges {
    /// Records that ring `shard` (of `size` bytes) held `used` bytes.
    pub fn set(&self, shard: usize, used: u64, size: u64) {
        let gauge = {
            let mut rings = super::lock(&self.rings);
            if rings.len() <= shard {
                rings.resize_with(shard + 1, Default::default);
            }
            std::sync::Arc::clone(&rings[shard])
        };
        gauge.used.store(used, Ordering::Relaxed);
        gauge.peak.fetch_max(used, Ordering::Relaxed);
        gauge.size.store(size, Ordering::Relaxed);
    }

    /// Every ring's fill, by shard.
    #[must_use]
    pub fn summaries(&self) -> Vec<RingSummary> {
        super::lock(&self.rings)
            .iter()
            .map(|g| RingSummary {
                used_bytes: g.used.load(Ordering::Relaxed),
                peak_bytes: g.peak.load(Ordering::Relaxed),
                size_bytes: g.size.load(Ordering::Relaxed),
            })
            .collect()
    }
}
