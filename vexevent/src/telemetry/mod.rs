//! Userspace counters and drop accounting, and the stats snapshot that joins them with the
//! kernel's counters for `vexevent stats`, periodic stderr reports and the stats file.

mod analytics;
mod cluster;
mod health;
mod outputs;
mod prometheus;
mod rings;
mod rules;
mod snapshot;
mod stages;

pub use analytics::{
    Analytics, LATENCY_BOUNDS_SECONDS, LATENCY_MAX_NS, LatencyHistogram, latency_histogram, seconds_buckets,
};
pub use cluster::{
    AppliedFuture, ChangeFuture, ClusterSlot, ClusterView, LogEntry, LogPage, MemberChange,
    MemberChangeError, StatusFuture,
};
pub use health::{Check, Health, HealthConfig, HealthConfigError, HealthReport};
pub use outputs::{OutputCounters, SinkCounters, SinkSummary};
pub use prometheus::prometheus_text;
pub use rings::{RingGauges, RingSummary};
pub use rules::{AuditHead, RuleCounters, RuleSummary, RuleTable};
pub use snapshot::{KernelCounters, LatencySummary, LossSummary, StatsSnapshot, userspace_values};
pub use stages::{StageCounters, StageSummary, StageTable};

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency the histogram tracks exactly (one minute); larger values count as this.
const LATENCY_MAX_US: u64 = 60_000_000;
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
            /// Kernel-to-sink latency of delivered events, in microseconds.
            latency_us: Mutex<Option<Histogram<u64>>>,
            /// Routes and sinks.
            pub outputs: OutputCounters,
            /// Every pipeline stage, by name.
            pub stages: StageTable,
            /// What the analyse stage publishes (window summaries, latency histograms).
            pub analytics: Analytics,
            /// Readiness checks (`/readyz`, health alerts).
            pub health: Health,
            /// Every rule of the `react` stage, by name, and the audit chain's head.
            pub rules: RuleTable,
            /// How full each kernel ring is.
            pub rings: RingGauges,
            /// The replicated cluster, when this instance is a member.
            pub cluster: ClusterSlot,
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
    /// Data records read from the ring buffers.
    records_received,
    /// Gap records read from the ring buffers.
    gap_records,
    /// Records rejected by the decoder (by reason: the `decode_*` counters).
    decode_errors,
    /// Records whose shard sequence number was lower than expected (should stay 0).
    records_out_of_order,
    /// Records missing from the shard sequences without a gap record explaining them (must stay
    /// 0: the probes report every loss).
    records_missing,
    /// Records the probes reported lost in gap records (ring full).
    lost_reported,
    /// Records released by the merge after its watermark had passed them (reorder window too
    /// short).
    records_late,
    /// Drains that began with a kernel wakeup: the drainer had found nothing for a while and
    /// slept (while records keep coming it drains on its own timer and the probes do not wake
    /// it).
    drainer_wakeups,
    /// Records that only keep path state right (chdir, dup, fork): no event by design.
    bookkeeping_records,
    /// Records of operation types the op filter left out (opens and closes are always captured
    /// because reads and writes need their paths).
    suppressed_op,
    /// Records whose normalized path is outside the watched directories (the kernel's prefix
    /// check is lexical; `..` can leave the tree).
    filtered_scope_userspace,
    /// FUSE requests folded into the event of the syscall that caused them.
    fuse_joined,
    /// Tracepoint and kernel-function calls listed in the event of the syscall they ran in.
    kernel_calls_joined,
    /// FUSE requests no syscall claimed, reported on their own.
    fuse_standalone,
    /// Metadata FUSE requests (lookups, attribute reads, flushes) no syscall claimed, left out.
    fuse_metadata_suppressed,
    /// Semantic events produced.
    events_translated,
    /// Events the filter expressions left out.
    filtered_expression,
    /// Events no route matched, with no `unmatched` output configured.
    events_unrouted,
    /// Events a slow stream subscriber missed (each reported to it in a gap notice).
    stream_dropped,
    /// Stream subscribers disconnected for being slow (`slow=disconnect`).
    stream_disconnected,
    /// HTTP requests served (stream subscriptions, control API calls, metrics scrapes).
    http_accepted,
    /// HTTP requests refused for want of a valid token (401).
    http_unauthorized,
    /// Cross-site browser requests refused (403: an `Origin` other than the server's own).
    http_forbidden,
    /// HTTP requests refused for what they ask (400: an invalid query or filter, or one over a
    /// limit; 413: a body; 414: a query too long; 404, 405).
    http_bad_request,
    /// Connections and subscriptions refused because the server holds its limit (429).
    http_over_capacity,
    /// TLS handshakes that failed (a client that does not trust the certificate, plain HTTP to
    /// a TLS server, a handshake left to stall past the idle timeout).
    http_tls_failed,
    /// Events that could not be serialized, or that a sink dropped (per sink and reason in
    /// `sinks`).
    sink_errors,
    /// Cluster: events committed (every node's) and applied here.
    cluster_events_committed,
    /// Cluster: batches the log committed twice (a retry after a failover), dropped as repeats.
    cluster_repeats_dropped,
    /// Cluster: events captured here and dropped because the buffer of events waiting for a
    /// leader (`cluster.buffer_events`) was full.
    cluster_dropped_buffer_full,
    /// Cluster: events captured here and not committed when vexevent stopped.
    cluster_dropped_shutdown,
    /// Cluster: committed events this node skipped because it caught up by snapshot (the log
    /// that held them was compacted).
    cluster_snapshot_skipped,
    /// Cluster: committed events that did not decode (skipped).
    cluster_decode_errors,
    /// Cluster: peer connections refused, by this member's server or its client (no or wrong
    /// shared secret, another protocol version, a TLS certificate not from the cluster CA or
    /// none, plain TCP to a TLS member).
    cluster_peers_refused,
    /// Cluster: peer handshakes that broke off or timed out (the network, a stopped or cut-off
    /// peer, or a peer with another secret, which hangs up on this member's proof).
    cluster_handshakes_failed,
    /// Cluster: proposals and counters refused because the member that sent them is not in the
    /// membership (it was removed, or is not added yet).
    cluster_not_member_refused,
    /// Cluster: the raft term (a gauge).
    cluster_term,
    /// Cluster: times the leader changed, as seen here.
    cluster_leader_changes,
    /// Cluster: the last log index applied here (a gauge).
    cluster_applied_index,
    /// Cluster, `causal` mode: committed events delivered after an event with a higher clock
    /// (they were applied here more than `causal_delay_ms` after it).
    cluster_causal_late,
    /// Cluster, `causal` mode: committed events whose clock was more than 1 s ahead of this
    /// member's wall clock (a member's clock is off; every member's clock follows it).
    cluster_causal_clock_ahead,
    /// Cluster: counters of a peer's runs refused by the cluster-wide counters' bounds (too many
    /// runs or counters, a name too long).
    cluster_gossip_refused,
    /// Cluster: 1 while the data directory has less than `cluster.min_free_bytes` free (a gauge):
    /// the member stops proposing, takes no new entries and does not lead.
    cluster_disk_low,
    /// Cluster: entries from the leader and proposals refused because the data directory had
    /// less than `cluster.min_free_bytes` free.
    cluster_writes_refused_disk,
    /// Cluster: 1 once a write or fsync of the raft log failed: the log takes no more writes
    /// (nothing is fsync'd again as if it were safe) and the raft node stops; restart the member
    /// once the cause is fixed.
    cluster_log_failed,
}

/// Locks a counter mutex; a panic elsewhere does not make counts unreadable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock the probes stamp records with.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
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
    /// Whether the probe reported it in a gap record (else it was only seen missing).
    pub reported: bool,
}

impl Counters {
    /// Records a gap in a shard's sequence.
    pub fn record_gap(&self, gap: Gap) {
        add(if gap.reported { &self.lost_reported } else { &self.records_missing }, gap.count);
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

    /// Records the kernel-to-sink latency of delivered events (one lock per batch).
    pub fn record_latencies(&self, latencies_us: impl IntoIterator<Item = u64>) {
        let mut histogram = lock(&self.latency_us);
        let histogram = histogram.get_or_insert_with(|| {
            #[expect(clippy::missing_panics_doc, reason = "constant, valid bounds")]
            Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
        });
        for latency in latencies_us {
            histogram.saturating_record(latency.max(1));
        }
    }

    /// Latency percentiles so far.
    #[must_use]
    pub fn latency_summary(&self) -> LatencySummary {
        lock(&self.latency_us).as_ref().map_or_else(LatencySummary::default, LatencySummary::of)
    }

    /// The kernel-to-sink latency as a histogram in seconds (for Prometheus).
    #[must_use]
    pub fn latency_histogram_seconds(&self) -> LatencyHistogram {
        let (sum_seconds, buckets, count) = lock(&self.latency_us).as_ref().map_or_else(
            || (0.0, LATENCY_BOUNDS_SECONDS.iter().map(|&b| (b, 0)).chain([(f64::INFINITY, 0)]).collect(), 0),
            |h| {
                let (sum, buckets) = seconds_buckets(h, 1_000.0);
                (sum, buckets, h.len())
            },
        );
        LatencyHistogram { family: "delivery", label: String::new(), sum_seconds, count, buckets }
    }

    /// Counts a decode rejection under its reason.
    pub fn record_decode_error(&self, reason: &'static str) {
        add(&self.decode_errors, 1);
        *lock(&self.decode_errors_by_reason).entry(reason).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejections_are_counted_by_reason_and_listed() {
        let counters = Counters::default();
        counters.record_decode_error("decode_truncated");
        counters.record_decode_error("decode_truncated");
        counters.record_decode_error("decode_gap_mismatch");
        let values: BTreeMap<_, _> = counters.values().into_iter().collect();
        assert_eq!(values["decode_errors"], 3);
        assert_eq!(values["decode_truncated"], 2);
        assert_eq!(values["decode_gap_mismatch"], 1);
    }

    #[test]
    fn latency_percentiles_come_from_recorded_values() {
        let counters = Counters::default();
        counters.record_latencies((1..=100).map(|us| us * 10));
        let summary = counters.latency_summary();
        assert_eq!(summary.events, 100);
        assert!((495..=505).contains(&summary.p50_us), "{summary:?}");
        assert!((985..=995).contains(&summary.p99_us), "{summary:?}");
        assert_eq!(summary.max_us, 1000);
    }
}
