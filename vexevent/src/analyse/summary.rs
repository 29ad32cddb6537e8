//! Closing windows: each closed window becomes a summary (totals, top keys, top keys since
//! start, latency per operation, mount, FUSE stage and FUSE daemon function, the slowest operations, anomalies, health,
//! sinks), published to the dashboard and `/metrics`, and the events derived from it (anomalies,
//! health alerts, and the windows asked for in `analyse.emit`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Instant, SystemTime},
};

use foldhash::fast::FixedState;
use serde::Serialize;

use super::{
    ALL, AnalyseStage, KeyAgg, Series, SlowOp,
    anomaly::{Anomaly, Observed},
    config::Dimension,
};
use crate::{
    event::{EventType, FilesystemContext, ObservabilityContext, PathBytes, Priority, SemanticEvent},
    telemetry::{HealthReport, LatencySummary, add},
};

/// One closed window, as the dashboard and `vexevent top` read it.
#[derive(Debug, Serialize)]
pub struct Frame {
    pub start_ns: u64,
    pub end_ns: u64,
    /// Wall-clock time of the window's end, milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Wall-clock time (the system clock) the stage closed the window, microseconds since the
    /// Unix epoch: `closed_wall_us - 1000 * wall_ms` is how long after its end it closed (the
    /// watermark's delay), and a viewer's clock at receipt minus `1000 * wall_ms` how long after
    /// its end the window reached it.
    pub closed_wall_us: u64,
    pub window_secs: u64,
    /// Seconds between window starts (`window_secs` when the windows are tumbling).
    pub slide_secs: u64,
    pub events: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Records the kernel lost while the window was open (its counts may be short by as much).
    pub lost: u64,
    /// Events that came after their window had closed (not in any window) since the last one.
    pub late: u64,
    /// Events not aggregated per key for lack of room (`max_keys`): the error bound of `top`.
    pub evicted: u64,
    pub by_type: BTreeMap<String, u64>,
    pub operations: Vec<LatencyRow>,
    pub mounts: Vec<LatencyRow>,
    pub fuse_stages: Vec<LatencyRow>,
    /// The FUSE daemons' time per mount and handler (`CONNECTION:OPCODE`), busiest first.
    pub daemon_functions: Vec<LatencyRow>,
    /// The window's top keys per dimension, by events.
    pub top: BTreeMap<&'static str, Vec<TopRow>>,
    /// Top keys since start per dimension (Space-Saving: `count - error <= true count <= count`).
    pub top_total: BTreeMap<&'static str, Vec<TotalRow>>,
    pub slowest: Vec<SlowOp>,
    pub anomalies: Vec<AnomalyRow>,
    pub kernel_to_sink: LatencySummary,
    pub sinks: BTreeMap<String, SinkRow>,
    pub health: HealthReport,
}

/// Latency of one series in one window, in microseconds.
#[derive(Debug, Serialize)]
pub struct LatencyRow {
    pub name: String,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Serialize)]
pub struct TopRow {
    pub key: String,
    pub count: u64,
    pub bytes: u64,
    pub errors: u64,
    pub time_us: u64,
    /// Upper bound of the log bucket holding the 99th percentile.
    pub p99_us: u64,
}

#[derive(Debug, Serialize)]
pub struct TotalRow {
    pub key: String,
    pub count: u64,
    pub error: u64,
}

#[derive(Debug, Serialize)]
pub struct AnomalyRow {
    pub name: String,
    pub dimension: &'static str,
    pub key: String,
    pub baseline: f64,
    pub observed: f64,
    pub z: f64,
}

#[derive(Debug, Serialize)]
pub struct SinkRow {
    pub delivered: u64,
    pub queued: u64,
    pub dropped: u64,
    pub down: bool,
}

/// When the stage closed windows: for the time to a viewer (`at`) and in their frames (`wall_us`).
#[derive(Clone, Copy)]
pub(super) struct Closed {
    at: Instant,
    wall_us: u64,
}

impl Closed {
    fn now() -> Self {
        let wall_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
        Self { at: Instant::now(), wall_us }
    }
}

/// What closed for one pane (events aggregated over `slide_secs`), or the panes of a window
/// merged.
#[derive(Default)]
pub(super) struct Parts {
    keys: Vec<(u64, KeyAgg)>,
    series: Vec<(Series, super::Hdr)>,
    slowest: Vec<SlowOp>,
}

impl Parts {
    /// The panes of one window merged (`capacity`: the slowest operations kept).
    fn merge<'a>(panes: impl Iterator<Item = &'a Parts>, capacity: usize) -> Parts {
        let mut keys: HashMap<u64, KeyAgg, FixedState> = HashMap::with_hasher(FixedState::default());
        let mut series: HashMap<Series, super::Hdr> = HashMap::new();
        let mut merged = Parts::default();
        for pane in panes {
            for (key, agg) in &pane.keys {
                keys.entry(*key).or_default().merge(agg);
            }
            for (name, hdr) in &pane.series {
                series.entry(*name).or_default().merge(hdr);
            }
            merged.slowest.extend(pane.slowest.iter().cloned());
        }
        merged.slowest.sort_by_key(|op| std::cmp::Reverse(op.duration_us));
        merged.slowest.truncate(capacity);
        merged.keys = keys.into_iter().collect();
        merged.series = series.into_iter().collect();
        merged
    }
}

impl AnalyseStage {
    /// Closes every pane that ends at or before `watermark_ns`, then reports each window that
    /// ends by then, empty windows included, up to the last one with events (`u64::MAX`: all,
    /// at the end; the last windows are then partial).
    pub(super) fn close(&mut self, watermark_ns: u64, out: &mut Vec<SemanticEvent>) {
        self.rename_cgroups();
        let Some(mut start) = self.next_start else { return };
        if start.saturating_add(self.window_ns) > watermark_ns {
            return;
        }
        let closed = Closed::now();
        self.close_panes(watermark_ns);
        let slide = self.slide_ns;
        // Windows are reported up to the watermark (empty ones at most a history's worth), or,
        // at the end, up to the last one starting with a pane that had events.
        let end = if watermark_ns == u64::MAX {
            self.panes.keys().next_back().map_or(start, |s| s + slide)
        } else {
            (watermark_ns - watermark_ns % slide + slide).saturating_sub(self.window_ns)
        };
        let history = self.config.history_secs / self.config.slide_secs() + 1;
        start = start
            .max(end.saturating_sub(history * slide))
            .min(self.panes.keys().next().copied().unwrap_or(u64::MAX));
        while start < end {
            let window_end = start + self.window_ns;
            let parts = if self.window_ns == slide {
                self.panes.remove(&start).unwrap_or_default()
            } else {
                Parts::merge(self.panes.range(start..window_end).map(|(_, p)| p), self.config.slowest)
            };
            self.report(start, parts, closed, out);
            start += slide;
        }
        self.next_start = Some(start);
        // No later window needs the panes before its start, nor the losses that ended before.
        self.panes = self.panes.split_off(&start);
        self.losses.forget_before(start);
        // Names of keys no open window, top list or baseline holds any more.
        let Self { names, totals, detector, .. } = self;
        names.retain(|key, name| {
            name.last_window >= start
                || totals.iter().any(|(_, summary)| summary.contains(*key))
                || detector.knows(*key)
        });
    }

    /// Closes every pane that ends at or before `watermark_ns` into `self.panes`, and feeds the
    /// top keys since start (each pane once).
    fn close_panes(&mut self, watermark_ns: u64) {
        let mut keyed = Vec::new();
        self.keyed.close(watermark_ns, &mut keyed);
        for closed in keyed {
            let pane = self.panes.entry(closed.start_ns).or_default();
            if let Some(dimension) = super::dimension_of(closed.key) {
                if let Some((_, summary)) = self.totals.iter_mut().find(|(d, _)| *d == dimension) {
                    summary.add(closed.key, closed.value.count);
                }
            }
            pane.keys.push((closed.key, closed.value));
        }
        let mut series = Vec::new();
        self.series.close(watermark_ns, &mut series);
        for closed in series {
            // The exported histograms take each pane once.
            if let Some(histogram) = &closed.value.0 {
                let (family, name) = self.series_name(closed.key);
                self.counters.analytics.merge_latency(family, &name, histogram);
            }
            self.panes.entry(closed.start_ns).or_default().series.push((closed.key, closed.value));
        }
        let mut slowest = Vec::new();
        self.slowest.close(watermark_ns, &mut slowest);
        for closed in slowest {
            self.panes.entry(closed.start_ns).or_default().slowest = closed.value.ops;
        }
    }

    /// Keys of cgroups shown by number take the names a walk found for them.
    fn rename_cgroups(&mut self) {
        for (id, text) in self.cgroups.poll().into_iter().flatten() {
            if let Some(name) = self.names.get_mut(&super::hash(Dimension::Cgroup, &id.to_le_bytes())) {
                name.text = text.into();
            }
        }
    }

    fn name(&self, key: u64) -> String {
        self.names.get(&key).map_or_else(|| format!("#{key:016x}"), |name| name.text.to_string())
    }

    /// Reports one closed window.
    fn report(&mut self, start: u64, window: Parts, closed: Closed, out: &mut Vec<SemanticEvent>) {
        let end = start + self.window_ns;
        let counters = Arc::clone(&self.counters);
        let analytics = &counters.analytics;
        add(&analytics.windows_closed, 1);
        let evicted = self.evicted_events - self.evicted_before;
        self.evicted_before = self.evicted_events;
        let late = self.late_events - self.late_before;
        self.late_before = self.late_events;
        add(&analytics.events_evicted, evicted);
        add(&analytics.events_late, late);
        let totals =
            window.keys.iter().find(|(key, _)| *key == ALL).map(|(_, agg)| agg.clone()).unwrap_or_default();
        let mut by_dimension: HashMap<Dimension, Vec<(u64, &KeyAgg)>> = HashMap::new();
        for (key, agg) in &window.keys {
            if let Some(dimension) = super::dimension_of(*key) {
                by_dimension.entry(dimension).or_default().push((*key, agg));
            }
        }
        for (dimension, rows) in &mut by_dimension {
            rank(rows, if self.config.emit.contains(dimension) { usize::MAX } else { self.config.top });
        }
        let top = by_dimension
            .iter()
            .filter(|(dimension, _)| **dimension != Dimension::EventType)
            .map(|(dimension, rows)| {
                let rows = rows
                    .iter()
                    .take(self.config.top)
                    .map(|(key, agg)| TopRow {
                        key: self.name(*key),
                        count: agg.count,
                        bytes: agg.bytes,
                        errors: agg.errors,
                        time_us: agg.time_ns / 1_000,
                        p99_us: agg.quantile_us(0.99),
                    })
                    .collect();
                (dimension.name(), rows)
            })
            .collect();
        let by_type = by_dimension
            .get(&Dimension::EventType)
            .map(|rows| rows.iter().map(|(key, agg)| (self.name(*key), agg.count)).collect())
            .unwrap_or_default();
        let top_total = self
            .totals
            .iter()
            .map(|(dimension, summary)| {
                let rows = summary
                    .top(self.config.top)
                    .into_iter()
                    .map(|c| TotalRow { key: self.name(c.key), count: c.count, error: c.error })
                    .collect();
                (dimension.name(), rows)
            })
            .collect();
        let anomalies = self.anomalies(&by_dimension);
        let [operations, mounts, fuse_stages, daemon_functions] = self.latency_rows(window.series);
        let mut slowest = window.slowest;
        slowest.sort_by_key(|op| std::cmp::Reverse(op.duration_us));
        let health = self.counters.health.check(&self.counters);
        let sinks = sink_rows(&counters);
        let wall_ns = u64::try_from(i128::from(end) + self.wall_offset_ns).unwrap_or(0);
        let frame = Frame {
            start_ns: start,
            end_ns: end,
            wall_ms: wall_ns / 1_000_000,
            closed_wall_us: closed.wall_us,
            window_secs: self.config.window_secs,
            slide_secs: self.config.slide_secs(),
            events: totals.count,
            bytes: totals.bytes,
            errors: totals.errors,
            lost: self.losses.within(start, end),
            late,
            evicted,
            by_type,
            operations,
            mounts,
            fuse_stages,
            daemon_functions,
            top,
            top_total,
            slowest,
            anomalies,
            kernel_to_sink: self.counters.latency_summary(),
            sinks,
            health,
        };
        self.derive(&frame, &by_dimension, out);
        match serde_json::to_string(&frame) {
            Ok(json) => {
                let keep = usize::try_from(self.config.history_secs / self.config.slide_secs())
                    .unwrap_or(usize::MAX);
                analytics.publish(Arc::from(json), keep, closed.at);
            }
            Err(error) => tracing::error!(%error, "cannot serialize a window summary"),
        }
    }

    /// The window's anomalies among the watched dimensions.
    fn anomalies(&mut self, by_dimension: &HashMap<Dimension, Vec<(u64, &KeyAgg)>>) -> Vec<AnomalyRow> {
        let mut anomalies = Vec::new();
        let watched = by_dimension.iter().filter(|(dimension, _)| self.detector.watches(**dimension));
        let observed: Vec<Observed> = watched
            .flat_map(|(dimension, rows)| {
                rows.iter().map(|(key, agg)| Observed {
                    key: *key,
                    dimension: *dimension,
                    count: agg.count,
                    mean_latency_ns: agg.mean_ns(),
                })
            })
            .collect();
        if self.config.anomaly.enabled {
            self.detector.window(observed, &mut anomalies);
        }
        anomalies
            .into_iter()
            .map(|Anomaly { key, dimension, metric, baseline, observed, z }| AnomalyRow {
                name: metric.name().to_owned(),
                dimension: dimension.name(),
                key: self.name(key),
                baseline,
                observed,
                z,
            })
            .collect()
    }

    /// A series' family and label (in summaries and `/metrics`).
    fn series_name(&self, series: Series) -> (&'static str, String) {
        match series {
            Series::Operation(key) => ("operation", self.name(key)),
            Series::Mount(connection) => ("mount", connection.to_string()),
            Series::FuseStage(stage) => ("fuse_stage", stage.name().to_owned()),
            Series::DaemonFunction { connection, opcode } => {
                ("daemon_function", format!("{connection}:{}", crate::translate::opcode_name(opcode)))
            }
        }
    }

    /// Latency rows of the operations, mounts, FUSE stages and FUSE daemon functions.
    fn latency_rows(&self, series: Vec<(Series, super::Hdr)>) -> [Vec<LatencyRow>; 4] {
        let mut rows: [Vec<LatencyRow>; 4] = Default::default();
        for (key, hdr) in series {
            let Some(histogram) = hdr.0 else { continue };
            let (_, name) = self.series_name(key);
            let family = match key {
                Series::Operation(_) => 0,
                Series::Mount(_) => 1,
                Series::FuseStage(_) => 2,
                Series::DaemonFunction { .. } => 3,
            };
            rows[family].push(LatencyRow {
                name,
                count: histogram.len(),
                p50_us: histogram.value_at_quantile(0.5) / 1_000,
                p99_us: histogram.value_at_quantile(0.99) / 1_000,
                max_us: histogram.max() / 1_000,
            });
        }
        rows[0].sort_by_key(|row| std::cmp::Reverse(row.count));
        rows[3].sort_by_key(|row| std::cmp::Reverse(row.count));
        rows
    }

    /// The events a window gives: anomalies, health alerts (a check that started failing) and,
    /// for the dimensions in `analyse.emit`, one event per key.
    fn derive(
        &mut self,
        frame: &Frame,
        by_dimension: &HashMap<Dimension, Vec<(u64, &KeyAgg)>>,
        out: &mut Vec<SemanticEvent>,
    ) {
        let counters = Arc::clone(&self.counters);
        let analytics = &counters.analytics;
        let window_params = |params: &mut BTreeMap<String, String>| {
            params.insert("window_start_ns".into(), frame.start_ns.to_string());
            params.insert("window_end_ns".into(), frame.end_ns.to_string());
            params.insert("lost".into(), frame.lost.to_string());
        };
        for anomaly in &frame.anomalies {
            let mut event = self.derived(
                EventType::ObservabilityAlertTriggered,
                format!("anomaly:{}", anomaly.name),
                frame.end_ns,
                (anomaly.dimension == "path").then_some(anomaly.key.as_str()),
            );
            event.priority = Priority::High;
            event.context.observability = Some(observability(
                &format!("{}_{}", anomaly.dimension, anomaly.name),
                anomaly.observed,
                if anomaly.name == "rate" { "events/window" } else { "ns" },
                &anomaly.key,
            ));
            let params = &mut event.context.parameters;
            window_params(params);
            params.insert("dimension".into(), anomaly.dimension.into());
            params.insert("key".into(), anomaly.key.clone());
            params.insert("baseline".into(), format!("{:.3}", anomaly.baseline));
            params.insert("observed".into(), format!("{:.3}", anomaly.observed));
            params.insert("z".into(), format!("{:.2}", anomaly.z));
            add(&analytics.anomalies, 1);
            out.push(event);
        }
        let failing: Vec<String> =
            frame.health.checks.iter().filter(|c| !c.ok).map(|c| c.name.clone()).collect();
        for check in frame.health.checks.iter().filter(|c| !c.ok && !self.failing.contains(&c.name)) {
            let mut event = self.derived(
                EventType::ObservabilityAlertTriggered,
                format!("health:{}", check.name),
                frame.end_ns,
                None,
            );
            event.priority = Priority::Critical;
            event.context.observability =
                Some(observability(&format!("health_{}", check.name), 0.0, "ok", &check.reason));
            window_params(&mut event.context.parameters);
            event.context.parameters.insert("reason".into(), check.reason.clone());
            add(&analytics.health_alerts, 1);
            out.push(event);
        }
        self.failing = failing;
        for dimension in &self.config.emit {
            for (key, agg) in by_dimension.get(dimension).into_iter().flatten() {
                let name = self.name(*key);
                let mut event = self.derived(
                    EventType::ObservabilityMetricCollected,
                    format!("window:{}", dimension.name()),
                    frame.end_ns,
                    (*dimension == Dimension::Path).then_some(name.as_str()),
                );
                #[expect(clippy::cast_precision_loss, reason = "a count as a metric value")]
                let count = agg.count as f64;
                event.context.observability =
                    Some(observability(&format!("{}_events", dimension.name()), count, "events", &name));
                let params = &mut event.context.parameters;
                window_params(params);
                params.insert("dimension".into(), dimension.name().into());
                params.insert("key".into(), name.clone());
                for (field, value) in [
                    ("count", agg.count),
                    ("bytes", agg.bytes),
                    ("errors", agg.errors),
                    ("time_ns", agg.time_ns),
                    ("p50_us", agg.quantile_us(0.5)),
                    ("p99_us", agg.quantile_us(0.99)),
                ] {
                    params.insert(field.into(), value.to_string());
                }
                add(&analytics.windows_emitted, 1);
                out.push(event);
            }
        }
    }

    /// A new event of vexevent's own, stamped at `time_ns` (kernel time) and the matching wall time.
    fn derived(
        &self,
        event_type: EventType,
        subtype: String,
        time_ns: u64,
        path: Option<&str>,
    ) -> SemanticEvent {
        let wall_ns = u64::try_from(i128::from(time_ns) + self.wall_offset_ns).unwrap_or(0);
        let mut event = SemanticEvent::own(&self.run, event_type, subtype, time_ns, wall_ns);
        event.context.filesystem = path.map(|path| FilesystemContext {
            path: Some(PathBytes::from(path)),
            ..FilesystemContext::default()
        });
        event
    }
}

fn observability(metric: &str, value: f64, unit: &str, operation: &str) -> ObservabilityContext {
    ObservabilityContext {
        metric_name: metric.to_owned(),
        metric_value: Some(value),
        metric_unit: Some(unit.to_owned()),
        service_name: "vexevent".to_owned(),
        operation_name: operation.to_owned(),
    }
}

/// Puts the `top` busiest rows first, busiest first, the rest in no order (only the top rows
/// are shown; all of them when the windows become events).
fn rank(rows: &mut [(u64, &KeyAgg)], top: usize) {
    let order = |a: &(u64, &KeyAgg), b: &(u64, &KeyAgg)| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0));
    if rows.len() > top {
        rows.select_nth_unstable_by(top, order);
        rows[..top].sort_unstable_by(order);
    } else {
        rows.sort_unstable_by(order);
    }
}

/// Each sink's deliveries, drops, queue and state.
fn sink_rows(counters: &crate::telemetry::Counters) -> BTreeMap<String, SinkRow> {
    counters
        .outputs
        .sinks()
        .into_iter()
        .map(|(name, s)| {
            let dropped = s.dropped_full + s.dropped_shutdown + s.dropped_failed;
            (name, SinkRow { delivered: s.delivered, queued: s.queued, dropped, down: s.down })
        })
        .collect()
}
