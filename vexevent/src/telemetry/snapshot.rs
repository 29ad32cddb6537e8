//! [`StatsSnapshot`]: every counter at one instant, as JSON (stats file, `vexevent stats --json`)
//! or as a human-readable block (stderr, `vexevent stats`).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use super::{Counters, Gap};

/// Every counter of a running (or finished) instance.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Pid of the vexevent instance.
    pub pid: u32,
    /// Wall-clock time of the snapshot, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Seconds since capture started.
    pub uptime_secs: f64,
    /// Whether this is the final snapshot of a finished run.
    pub final_snapshot: bool,
    /// Kernel counters summed over CPUs (see `KernelStat`).
    pub kernel: BTreeMap<String, u64>,
    /// Userspace counters (see `Counters`).
    pub userspace: BTreeMap<String, u64>,
    pub loss: LossSummary,
    /// Most recent sequence gaps.
    pub recent_gaps: Vec<GapReport>,
}

/// One sequence gap, as reported.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GapReport {
    pub cpu: u32,
    pub first: u64,
    pub count: u64,
}

/// Where the events went, in one place.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LossSummary {
    /// Records the probes produced or tried to (sum of the shards' sequence counters).
    pub records_sequenced: u64,
    /// Records that reached userspace.
    pub records_received: u64,
    /// Lost in the kernel because the ring buffer was full.
    pub lost_ring_full: u64,
    /// Missing from the sequences, whatever the reason (equals `lost_ring_full` when every loss
    /// is explained; records still in the ring count here until drained).
    pub missing_by_sequence: u64,
    /// Rejected by the decoder.
    pub decode_errors: u64,
    /// Events the sink could not write.
    pub sink_errors: u64,
}

impl StatsSnapshot {
    /// Builds a snapshot from the kernel counters and the userspace ones.
    #[must_use]
    pub fn new(
        kernel: BTreeMap<String, u64>,
        records_sequenced: u64,
        counters: &Counters,
        uptime_secs: f64,
    ) -> Self {
        let userspace: BTreeMap<String, u64> =
            counters.values().into_iter().map(|(name, value)| (name.to_owned(), value)).collect();
        let get = |map: &BTreeMap<String, u64>, key: &str| map.get(key).copied().unwrap_or(0);
        let loss = LossSummary {
            records_sequenced,
            records_received: get(&userspace, "records_received"),
            lost_ring_full: get(&kernel, "lost_ring_full"),
            missing_by_sequence: records_sequenced.saturating_sub(get(&userspace, "records_received")),
            decode_errors: get(&userspace, "decode_errors"),
            sink_errors: get(&userspace, "sink_errors"),
        };
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            pid: std::process::id(),
            at_unix_ms,
            uptime_secs,
            final_snapshot: false,
            kernel,
            userspace,
            loss,
            recent_gaps: counters
                .recent_gaps()
                .into_iter()
                .map(|Gap { cpu, first, count }| GapReport { cpu, first, count })
                .collect(),
        }
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.final_snapshot { "final stats" } else { "stats" };
        writeln!(f, "vexevent {kind} (pid {}, {:.1}s):", self.pid, self.uptime_secs)?;
        let k = |key: &str| self.kernel.get(key).copied().unwrap_or(0);
        let u = |key: &str| self.userspace.get(key).copied().unwrap_or(0);
        let filtered: u64 =
            self.kernel.iter().filter(|(name, _)| name.starts_with("filtered_")).map(|(_, v)| v).sum();
        writeln!(
            f,
            "  kernel:    seen {}  filtered {}  emitted {}  lost(ring full) {}",
            k("seen"),
            filtered,
            k("emitted"),
            k("lost_ring_full")
        )?;
        writeln!(
            f,
            "  userspace: received {}  delivered {}  bookkeeping {}  suppressed {}  out-of-scope {}",
            u("records_received"),
            u("events_delivered"),
            u("bookkeeping_records"),
            u("suppressed_op"),
            u("filtered_scope_userspace")
        )?;
        writeln!(
            f,
            "  loss:      missing by sequence {}  decode errors {}  sink errors {}",
            self.loss.missing_by_sequence, self.loss.decode_errors, self.loss.sink_errors
        )?;
        let details: Vec<String> = self
            .kernel
            .iter()
            .filter(|(name, value)| **value > 0 && name.starts_with("filtered_"))
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if !details.is_empty() {
            writeln!(f, "  filtered in kernel by reason: {}", details.join(" "))?;
        }
        for gap in &self.recent_gaps {
            writeln!(
                f,
                "  gap: cpu {} seq {}..{} ({} records)",
                gap.cpu,
                gap.first,
                gap.first + gap.count - 1,
                gap.count
            )?;
        }
        Ok(())
    }
}
