//! Userspace counters and drop accounting, and the stats snapshot that joins them with the
//! kernel's counters for `vexevent stats`, periodic stderr reports and the stats file.

mod snapshot;

pub use snapshot::{LossSummary, StatsSnapshot};

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;

/// How many recent sequence gaps are kept for reports.
const RECENT_GAPS: usize = 32;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters of userspace stages; every event that does not reach a sink is in one.
        #[derive(Default, Debug)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
            recent_gaps: Mutex<VecDeque<Gap>>,
            /// Decoder rejections by reason (rare: a mutex is cheap enough).
            decode_errors_by_reason: Mutex<BTreeMap<&'static str, u64>>,
        }

        impl Counters {
            /// Every counter with its name: the fixed ones in declaration order, then the decode
            /// rejections by reason.
            #[must_use]
            pub fn values(&self) -> Vec<(&'static str, u64)> {
                let mut values = vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*];
                values.extend(lock(&self.decode_errors_by_reason).iter().map(|(k, v)| (*k, *v)));
                values
            }
        }
    };
}

counters! {
    /// Records read from the ring buffers.
    records_received,
    /// Records rejected by the decoder (by reason: the `decode_*` counters).
    decode_errors,
    /// Records whose shard sequence number was lower than expected (should stay 0).
    records_out_of_order,
    /// Records missing from the shard sequences (lost before reaching userspace).
    records_missing,
    /// Records that only keep path state right (chdir, dup, fork): no event by design.
    bookkeeping_records,
    /// Records of operation types the op filter left out (opens and closes are always captured
    /// because reads and writes need their paths).
    suppressed_op,
    /// Records whose normalized path is outside the watched directories (the kernel's prefix
    /// check is lexical; `..` can leave the tree).
    filtered_scope_userspace,
    /// Semantic events produced.
    events_translated,
    /// Semantic events written by the sink.
    events_delivered,
    /// Semantic events the sink failed to write.
    sink_errors,
}

/// Locks a counter mutex; a panic elsewhere does not make counts unreadable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A run of sequence numbers missing from one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub cpu: u32,
    /// First missing sequence number.
    pub first: u64,
    /// Number of missing records.
    pub count: u64,
}

impl Counters {
    /// Records a gap in a shard's sequence.
    pub fn record_gap(&self, gap: Gap) {
        add(&self.records_missing, gap.count);
        let mut gaps = lock(&self.recent_gaps);
        if gaps.len() == RECENT_GAPS {
            gaps.pop_front();
        }
        gaps.push_back(gap);
    }

    /// The most recent gaps, oldest first.
    #[must_use]
    pub fn recent_gaps(&self) -> Vec<Gap> {
        lock(&self.recent_gaps).iter().copied().collect()
    }

    /// Counts a decode rejection under its reason.
    pub fn record_decode_error(&self, reason: &'static str) {
        add(&self.decode_errors, 1);
        *lock(&self.decode_errors_by_reason).entry(reason).or_default() += 1;
    }
}
