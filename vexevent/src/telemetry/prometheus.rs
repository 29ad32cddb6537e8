//! The stats snapshot as Prometheus (`OpenMetrics`) text (`GET /metrics` on the control API):
//! every kernel and userspace counter, loss accounting, per-sink and per-route counts and the
//! kernel-to-sink latency, encoded by `prometheus-client` from one snapshot per scrape.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::{LatencyHistogram, RingSummary, RuleSummary, StatsSnapshot};

/// A histogram already counted (cumulative buckets in seconds), encoded as Prometheus expects.
struct SecondsHistogram<'a>(&'a LatencyHistogram);

impl EncodeMetric for SecondsHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder sums the buckets it is given: hand it each bucket's own count.
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .map(|&(bound, cumulative)| {
                let own = cumulative.saturating_sub(below);
                below = cumulative.max(below);
                (bound, own)
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum_seconds, self.0.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Encodes `snapshot` in the `OpenMetrics` text format.
///
/// # Errors
/// Only if formatting fails (it does not for in-memory text).
pub fn prometheus_text(snapshot: StatsSnapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("vexevent");
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct SnapshotCollector(StatsSnapshot);

/// No labels (an unlabelled histogram in a family).
#[derive(Debug)]
struct NoLabels;

impl EncodeLabelSet for NoLabels {
    fn encode(
        &self,
        _encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

/// One metric family: a name, help, and its labelled values.
fn family<'a, L: EncodeLabelSet + 'a, M: EncodeMetric + 'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut values = values.into_iter().peekable();
    let Some((_, first)) = values.peek() else { return Ok(()) };
    let mut metric_encoder = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, metric) in values {
        metric.encode(metric_encoder.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let counter = |v: u64| ConstCounter::new(v);
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        family(
            &mut encoder,
            "kernel",
            "Kernel-side counters summed over CPUs (seen, filtered_* by reason, emitted, lost_*, fuse_*)",
            s.kernel.iter().map(|(name, v)| ([("counter", name.as_str())], counter(*v))),
        )?;
        family(
            &mut encoder,
            "userspace",
            "Userspace counters (records, decode errors by reason, filtered, delivered, sink errors, ...)",
            s.userspace.iter().map(|(name, v)| ([("counter", name.as_str())], counter(*v))),
        )?;
        family(
            &mut encoder,
            "cluster",
            "Cluster members: the userspace counters summed over every member (merged as CRDTs)",
            s.cluster_totals.iter().map(|(name, v)| ([("counter", name.as_str())], counter(*v))),
        )?;
        let unaccounted = gauge(s.loss.unaccounted);
        unaccounted.encode(encoder.encode_descriptor(
            "records_unaccounted",
            "Sequenced records neither received nor reported lost yet (still in the rings)",
            None,
            unaccounted.metric_type(),
        )?)?;
        family(
            &mut encoder,
            "records_lost",
            "Records lost in the kernel (ring full), by operation type",
            s.loss.lost_by_kind.iter().map(|(kind, v)| ([("operation", kind.as_str())], counter(*v))),
        )?;
        family(
            &mut encoder,
            "sink_delivered",
            "Events delivered, per sink",
            s.sinks.iter().map(|(name, sink)| ([("sink", name.as_str())], counter(sink.delivered))),
        )?;
        family(
            &mut encoder,
            "sink_dropped",
            "Events a sink dropped, per sink and reason (full queue, down at shutdown, retries exhausted)",
            s.sinks.iter().flat_map(|(name, sink)| {
                [
                    ("full", sink.dropped_full),
                    ("shutdown", sink.dropped_shutdown),
                    ("failed", sink.dropped_failed),
                ]
                .map(|(reason, v)| ([("sink", name.as_str()), ("reason", reason)], counter(v)))
            }),
        )?;
        family(
            &mut encoder,
            "sink_failed_attempts",
            "Delivery attempts that failed (each retried or counted as dropped), per sink",
            s.sinks.iter().map(|(name, sink)| ([("sink", name.as_str())], counter(sink.failed_attempts))),
        )?;
        family(
            &mut encoder,
            "sink_queued",
            "Events waiting in a sink's queue",
            s.sinks.iter().map(|(name, sink)| ([("sink", name.as_str())], gauge(sink.queued))),
        )?;
        family(
            &mut encoder,
            "sink_down",
            "1 when a sink's last delivery attempt failed",
            s.sinks.iter().map(|(name, sink)| ([("sink", name.as_str())], gauge(u64::from(sink.down)))),
        )?;
        family(
            &mut encoder,
            "route_matched",
            "Events each route matched",
            s.routes.iter().map(|(name, v)| ([("route", name.as_str())], counter(*v))),
        )?;
        family(
            &mut encoder,
            "stage_events_in",
            "Events each pipeline stage was given",
            s.stages.iter().map(|(name, stage)| ([("stage", name.as_str())], counter(stage.events_in))),
        )?;
        family(
            &mut encoder,
            "stage_events_out",
            "Events each pipeline stage passed on",
            s.stages.iter().map(|(name, stage)| ([("stage", name.as_str())], counter(stage.events_out))),
        )?;
        family(
            &mut encoder,
            "stage_busy_nanoseconds",
            "Time each pipeline stage spent processing",
            s.stages.iter().map(|(name, stage)| ([("stage", name.as_str())], counter(stage.busy_ns))),
        )?;
        encode_rules(s, &mut encoder)?;
        encode_rings(&mut encoder, &s.rings)?;
        encode_histograms(s, &mut encoder)?;
        encode_analyse(s, &mut encoder)
    }
}

/// The latency histograms, in seconds.
fn encode_histograms(s: &StatsSnapshot, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    for (family, name, label, help) in [
        ("delivery", "delivery_latency", "", "Kernel-to-sink latency of delivered events"),
        (
            "operation",
            "operation_latency",
            "operation",
            "Latency of operations (syscall enter to exit), per operation (analyse stage)",
        ),
        (
            "mount",
            "fuse_mount_latency",
            "connection",
            "Latency of operations on FUSE mounts, per connection (analyse stage)",
        ),
        (
            "fuse_stage",
            "fuse_stage_latency",
            "stage",
            "Time in each stage of FUSE operations (before request, kernel queue, daemon, reply, after reply; analyse stage)",
        ),
        (
            "daemon_function",
            "fuse_daemon_function_latency",
            "connection,function",
            "Time FUSE daemons took to serve requests (read to reply), per connection and handler (the opcode it serves; analyse stage)",
        ),
    ] {
        let mut values = s.histograms.iter().filter(|h| h.family == family).peekable();
        if values.peek().is_none() {
            continue;
        }
        let mut metric_encoder =
            encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for histogram in values {
            let metric = SecondsHistogram(histogram);
            // Two labels: their names and values joined by a comma and a colon.
            if let (Some((first, second)), Some((value, other))) =
                (label.split_once(','), histogram.label.split_once(':'))
            {
                metric.encode(metric_encoder.encode_family(&[(first, value), (second, other)])?)?;
            } else if label.is_empty() {
                metric.encode(metric_encoder.encode_family(&NoLabels)?)?;
            } else {
                metric.encode(metric_encoder.encode_family(&[(label, histogram.label.as_str())])?)?;
            }
        }
    }
    Ok(())
}

/// The analyse stage's counts and the health checks.
fn encode_analyse(s: &StatsSnapshot, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let counter = |v: u64| ConstCounter::new(v);
    let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    family(
        encoder,
        "analyse",
        "Analyse stage counts (windows_closed, events_late, events_evicted, anomalies, health_alerts, windows_emitted, histograms_dropped)",
        s.analytics.iter().map(|(name, v)| ([("counter", name.as_str())], counter(*v))),
    )?;
    if let Some(health) = &s.health {
        family(
            encoder,
            "health_check",
            "1 when a health check passes (probes, loss, sinks, latency), 0 when it fails",
            health.checks.iter().map(|c| ([("check", c.name.as_str())], gauge(u64::from(c.ok)))),
        )?;
        let ready = gauge(u64::from(health.ready));
        ready.encode(encoder.encode_descriptor(
            "ready",
            "1 when every health check passes",
            None,
            ready.metric_type(),
        )?)?;
    }
    Ok(())
}

/// Reads one figure of a ring's fill.
type RingField = fn(&RingSummary) -> u64;

/// The ring fill gauges, labelled by ring (shard).
fn encode_rings(encoder: &mut DescriptorEncoder, rings: &[RingSummary]) -> Result<(), std::fmt::Error> {
    let gauges: [(&str, &str, RingField); 3] = [
        ("ring_used_bytes", "Bytes waiting in each kernel ring when the last drain began", |r| r.used_bytes),
        ("ring_peak_used_bytes", "Most bytes waiting in each kernel ring at the start of a drain", |r| {
            r.peak_bytes
        }),
        ("ring_size_bytes", "Size of each kernel ring", |r| r.size_bytes),
    ];
    let shards: Vec<String> = (0..rings.len()).map(|shard| shard.to_string()).collect();
    for (name, help, value) in gauges {
        let gauge = |r: &RingSummary| ConstGauge::new(i64::try_from(value(r)).unwrap_or(i64::MAX));
        family(
            encoder,
            name,
            help,
            shards.iter().zip(rings).map(|(shard, r)| ([("ring", shard.as_str())], gauge(r))),
        )?;
    }
    Ok(())
}

/// The `react` stage's per-rule counters.
fn encode_rules(s: &StatsSnapshot, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let counter = |v: u64| ConstCounter::new(v);
    for (name, help, get) in [
        (
            "rule_matches",
            "Events that matched a rule's condition",
            (|r| r.matches) as fn(&RuleSummary) -> u64,
        ),
        ("rule_detections", "Detections each rule made", |r| r.detections),
        ("rule_detections_gapped", "Detections made while records were lost in the rule's window", |r| {
            r.gapped
        }),
        ("rule_evictions", "State a rule dropped at its bound (keys, windows, partial matches)", |r| {
            r.evictions
        }),
    ] {
        family(
            encoder,
            name,
            help,
            s.rules.iter().map(|(rule, summary)| ([("rule", rule.as_str())], counter(get(summary)))),
        )?;
    }
    family(
        encoder,
        "rule_actions",
        "Actions each rule ran, by outcome",
        s.rules.iter().flat_map(|(rule, summary)| {
            summary.actions.iter().map(move |(outcome, v)| {
                ([("rule", rule.as_str()), ("outcome", outcome.as_str())], counter(*v))
            })
        }),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::SinkSummary;

    #[test]
    fn every_counter_sink_and_route_is_exported() {
        let mut snapshot = StatsSnapshot::default();
        snapshot.kernel.insert("lost_ring_full".into(), 3);
        snapshot.userspace.insert("events_delivered".into(), 42);
        snapshot.sinks.insert(
            "hook".into(),
            SinkSummary { delivered: 40, dropped_full: 2, down: true, ..SinkSummary::default() },
        );
        snapshot.routes.insert("writes".into(), 7);
        let counters = crate::telemetry::Counters::default();
        counters.record_latencies([3, 700]);
        snapshot.histograms.push(counters.latency_histogram_seconds());
        let mut daemon = counters.latency_histogram_seconds();
        (daemon.family, daemon.label) = ("daemon_function", "57:WRITE".into());
        snapshot.histograms.push(daemon);
        snapshot.rings =
            vec![RingSummary::default(), RingSummary { used_bytes: 5, peak_bytes: 9, size_bytes: 16 }];
        let text = prometheus_text(snapshot).unwrap();
        for line in [
            r#"vexevent_kernel_total{counter="lost_ring_full"} 3"#,
            r#"vexevent_userspace_total{counter="events_delivered"} 42"#,
            r#"vexevent_sink_delivered_total{sink="hook"} 40"#,
            r#"vexevent_sink_dropped_total{sink="hook",reason="full"} 2"#,
            r#"vexevent_sink_down{sink="hook"} 1"#,
            r#"vexevent_route_matched_total{route="writes"} 7"#,
            "# TYPE vexevent_delivery_latency_seconds histogram",
            r#"vexevent_delivery_latency_seconds_bucket{le="0.000005"} 1"#,
            r#"vexevent_delivery_latency_seconds_bucket{le="0.0005"} 1"#,
            r#"vexevent_delivery_latency_seconds_bucket{le="0.001"} 2"#,
            r#"vexevent_delivery_latency_seconds_bucket{le="+Inf"} 2"#,
            "vexevent_delivery_latency_seconds_count 2",
            r#"vexevent_fuse_daemon_function_latency_seconds_count{connection="57",function="WRITE"} 2"#,
            "vexevent_records_unaccounted 0",
            r#"vexevent_ring_used_bytes{ring="1"} 5"#,
            r#"vexevent_ring_peak_used_bytes{ring="1"} 9"#,
            r#"vexevent_ring_size_bytes{ring="1"} 16"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
