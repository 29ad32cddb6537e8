//! [`StatsSnapshot`]: every counter at one instant, as JSON (stats file, `vexevent stats --json`)
//! or as a human-readable block (stderr, `vexevent stats`).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use super::{
    AuditHead, Counters, Gap, HealthReport, LatencyHistogram, RingSummary, RuleSummary, SinkSummary,
    StageSummary,
};

/// What the kernel side reports, summed over CPUs (filled by the loader).
#[derive(Clone, Debug, Default)]
pub struct KernelCounters {
    /// Counters by name (see `KernelStat`).
    pub stats: BTreeMap<String, u64>,
    /// Sequence numbers taken by all CPUs: every record written or lost.
    pub records_sequenced: u64,
    /// Records lost (ring full) by operation kind.
    pub lost_by_kind: BTreeMap<String, u64>,
}

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
    /// Kernel-to-sink latency of delivered events.
    pub latency: LatencySummary,
    /// Most recent sequence gaps.
    pub recent_gaps: Vec<GapReport>,
    /// Per sink: delivered, dropped by reason, queued, down.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSummary>,
    /// Events each route matched.
    #[serde(default)]
    pub routes: BTreeMap<String, u64>,
    /// Per pipeline stage: batches, events in and out, time spent.
    #[serde(default)]
    pub stages: BTreeMap<String, StageSummary>,
    /// The analyse stage's counts (windows, late, evicted, anomalies, health alerts, emitted).
    #[serde(default)]
    pub analytics: BTreeMap<String, u64>,
    /// The analyse stage's window close to its frame handed to a live dashboard viewer's stream
    /// (`GET /dashboard/events`), in microseconds; `events`: frames sent, one per viewer.
    #[serde(default)]
    pub dashboard_close_to_send: LatencySummary,
    /// The health checks at the snapshot.
    #[serde(default)]
    pub health: Option<HealthReport>,
    /// Latency histograms in seconds (kernel-to-sink, and per operation, mount and FUSE stage
    /// from the analyse stage), for Prometheus only.
    #[serde(skip)]
    pub histograms: Vec<LatencyHistogram>,
    /// Per rule: matches, detections, evictions, actions by outcome.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, RuleSummary>,
    /// The audit log's last line (sequence and hash), when rules act.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<AuditHead>,
    /// Per kernel ring (shard), in order: bytes waiting when the last drain began, the peak, the
    /// size.
    #[serde(default)]
    pub rings: Vec<RingSummary>,
    /// Cluster members only: the userspace counters summed over every member (README, "Cluster").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cluster_totals: BTreeMap<String, u64>,
}

/// The userspace counters by name, with `events_delivered` (deliveries to sinks, summed: an event
/// routed to two sinks counts twice).
#[must_use]
pub fn userspace_values(counters: &Counters) -> BTreeMap<String, u64> {
    let mut userspace: BTreeMap<String, u64> =
        counters.values().into_iter().map(|(name, value)| (name.to_owned(), value)).collect();
    userspace.insert(
        "events_delivered".to_owned(),
        counters.outputs.sinks().values().map(|sink| sink.delivered).sum(),
    );
    userspace
}

/// One sequence gap, as reported.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GapReport {
    pub cpu: u32,
    pub first: u64,
    pub count: u64,
    /// Reported by the probe in a gap record (else only seen missing).
    pub reported: bool,
}

/// Where every record went: `records_sequenced = records_received + lost_reported +
/// unaccounted`. While running, `unaccounted` covers records still in the rings and losses not yet
/// reported (a CPU reports a loss with its next record, or at shutdown); in a final snapshot it
/// must be 0.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LossSummary {
    pub records_sequenced: u64,
    /// Data records that reached userspace.
    pub records_received: u64,
    /// Lost (ring full) and reported in the stream by gap events.
    pub lost_reported: u64,
    /// Neither received nor reported lost (yet).
    pub unaccounted: u64,
    /// Records lost, by operation kind (from the probes' counters).
    pub lost_by_kind: BTreeMap<String, u64>,
    /// Rejected by the decoder.
    pub decode_errors: u64,
    /// Events the sink could not write.
    pub sink_errors: u64,
}

/// Kernel-to-sink latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LatencySummary {
    pub events: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// The count, median, 99th percentile and maximum of `histogram` (values in microseconds).
    #[must_use]
    pub fn of(histogram: &hdrhistogram::Histogram<u64>) -> Self {
        Self {
            events: histogram.len(),
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
        }
    }
}

impl StatsSnapshot {
    /// Builds a snapshot from the kernel counters and the userspace ones.
    #[must_use]
    pub fn new(kernel: KernelCounters, counters: &Counters, uptime_secs: f64) -> Self {
        let sinks = counters.outputs.sinks();
        let userspace = userspace_values(counters);
        let get = |key: &str| userspace.get(key).copied().unwrap_or(0);
        let records_received = get("records_received");
        let lost_reported = get("lost_reported");
        let loss = LossSummary {
            records_sequenced: kernel.records_sequenced,
            records_received,
            lost_reported,
            unaccounted: kernel.records_sequenced.saturating_sub(records_received + lost_reported),
            lost_by_kind: kernel.lost_by_kind,
            decode_errors: get("decode_errors"),
            sink_errors: get("sink_errors"),
        };
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let latency = counters.latency_summary();
        Self {
            pid: std::process::id(),
            at_unix_ms,
            uptime_secs,
            final_snapshot: false,
            kernel: kernel.stats,
            userspace,
            loss,
            latency,
            recent_gaps: counters
                .recent_gaps()
                .into_iter()
                .map(|Gap { cpu, first, count, reported }| GapReport { cpu, first, count, reported })
                .collect(),
            sinks,
            routes: counters.outputs.routes(),
            stages: counters.stages.summaries(),
            analytics: counters.analytics.values().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            dashboard_close_to_send: counters.analytics.close_to_send(),
            health: Some(counters.health.check(counters)),
            histograms: std::iter::once(counters.latency_histogram_seconds())
                .chain(counters.analytics.latency_histograms())
                .collect(),
            rules: counters.rules.summaries(),
            audit_head: counters.rules.audit_head(),
            rings: counters.rings.summaries(),
            cluster_totals: counters.cluster.get().map(|cluster| cluster.totals()).unwrap_or_default(),
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
        let loss = &self.loss;
        writeln!(
            f,
            "  loss:      reported {}  unaccounted {}  decode errors {}  sink errors {}",
            loss.lost_reported, loss.unaccounted, loss.decode_errors, loss.sink_errors
        )?;
        if !loss.lost_by_kind.is_empty() {
            let kinds: Vec<String> = loss.lost_by_kind.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "  lost by operation: {}", kinds.join(" "))?;
        }
        let latency = &self.latency;
        if latency.events > 0 {
            writeln!(
                f,
                "  latency:   kernel to sink p50 {} us  p99 {} us  max {} us ({} events)",
                latency.p50_us, latency.p99_us, latency.max_us, latency.events
            )?;
        }
        for (name, sink) in &self.sinks {
            writeln!(
                f,
                "  sink {name}: delivered {}  queued {}  dropped: full {} shutdown {} failed {}  failed attempts {}{}",
                sink.delivered,
                sink.queued,
                sink.dropped_full,
                sink.dropped_shutdown,
                sink.dropped_failed,
                sink.failed_attempts,
                if sink.down { "  DOWN" } else { "" }
            )?;
        }
        if !self.routes.is_empty() || u("events_unrouted") > 0 {
            let routes: Vec<String> = self.routes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "  routes matched: {}  unrouted {}", routes.join(" "), u("events_unrouted"))?;
        }
        let mut stages: Vec<(&String, &StageSummary)> = self.stages.iter().collect();
        stages.sort_by_key(|(_, stage)| stage.position);
        for (name, stage) in stages {
            // A source takes nothing in: its time is per event it made.
            let events = if stage.events_in == 0 { stage.events_out } else { stage.events_in };
            #[expect(clippy::cast_precision_loss, reason = "a ratio for display")]
            let per_event = stage.busy_ns as f64 / events.max(1) as f64;
            writeln!(
                f,
                "  stage {name}: in {}  out {}  busy {} ms  {per_event:.0} ns/event",
                stage.events_in,
                stage.events_out,
                stage.busy_ns / 1_000_000
            )?;
        }
        self.fmt_rules(f)?;
        if !self.rings.is_empty() {
            let rings: Vec<String> = self.rings.iter().map(ToString::to_string).collect();
            writeln!(f, "  rings (KiB waiting/peak/size): {}", rings.join("  "))?;
        }
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
            let how = if gap.reported { "reported lost" } else { "missing" };
            writeln!(
                f,
                "  gap: cpu {} seq {}..{} ({} records, {how})",
                gap.cpu,
                gap.first,
                gap.first + gap.count - 1,
                gap.count
            )?;
        }
        Ok(())
    }
}

impl StatsSnapshot {
    /// The `react` stage's rules and the audit chain's head.
    fn fmt_rules(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, rule) in &self.rules {
            let actions: Vec<String> = rule.actions.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                f,
                "  rule {name}: matches {}  detections {} (gapped {})  evictions {}  actions: {}",
                rule.matches,
                rule.detections,
                rule.gapped,
                rule.evictions,
                if actions.is_empty() { "none".to_owned() } else { actions.join(" ") }
            )?;
        }
        if let Some(head) = &self.audit_head {
            writeln!(f, "  audit log {}: {} lines, head {}", head.file, head.seq, head.hash)?;
        }
        Ok(())
    }
}
