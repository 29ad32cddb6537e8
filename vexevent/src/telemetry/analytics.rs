//! What the analyse stage publishes for the rest of the instance: one summary (a JSON frame) per
//! closed window, kept for the last minutes and sent live to dashboards; latency histograms per
//! operation, FUSE mount, FUSE stage and FUSE daemon function, merged at each window's close, for
//! Prometheus; the stage's own counts (windows, late and evicted events, anomalies); and the time
//! from a window's close to its frame handed to each live viewer's stream.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Instant,
};

use hdrhistogram::Histogram;
use tokio::sync::broadcast;

use super::{LatencySummary, lock};

/// Frames a slow live viewer may fall behind by before it skips (it is told it lagged).
const LIVE_FRAMES: usize = 64;
/// Longest latency the histograms track: an hour, in nanoseconds (more counts as this).
pub const LATENCY_MAX_NS: u64 = 3_600_000_000_000;
/// Histogram families (`operation`, `mount`, `fuse_stage`, `daemon_function`) times their labels,
/// at most: a label beyond it is not exported (counted in `histograms_dropped`).
const MAX_HISTOGRAMS: usize = 1_024;

/// A latency histogram for nanosecond values with 2 significant digits (a few KiB).
///
/// # Panics
/// Never: the bounds are constant and valid.
#[must_use]
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 2).expect("valid histogram bounds")
}

/// A window's frame for live viewers, with when the stage closed the window.
#[derive(Clone, Debug)]
pub struct LiveFrame {
    pub frame: Arc<str>,
    pub closed: Instant,
}

/// The analyse stage's output for the instance.
pub struct Analytics {
    frames: Mutex<VecDeque<Arc<str>>>,
    live: broadcast::Sender<LiveFrame>,
    /// Microseconds from a window's close to its frame handed to a live viewer's stream (one
    /// value per viewer and frame).
    close_to_send_us: Mutex<Histogram<u64>>,
    latency: Mutex<BTreeMap<(&'static str, String), Histogram<u64>>>,
    /// Windows closed.
    pub windows_closed: AtomicU64,
    /// Events older than a window already closed (not aggregated).
    pub events_late: AtomicU64,
    /// Events of keys beyond `analyse.max_keys` in their window (not aggregated per key).
    pub events_evicted: AtomicU64,
    /// Anomalies raised.
    pub anomalies: AtomicU64,
    /// Health alerts raised (`health:NAME` events).
    pub health_alerts: AtomicU64,
    /// Closed windows emitted as events.
    pub windows_emitted: AtomicU64,
    /// Histogram labels not exported for being beyond `MAX_HISTOGRAMS`.
    pub histograms_dropped: AtomicU64,
}

impl Default for Analytics {
    fn default() -> Self {
        Self {
            frames: Mutex::new(VecDeque::new()),
            live: broadcast::Sender::new(LIVE_FRAMES),
            latency: Mutex::new(BTreeMap::new()),
            close_to_send_us: Mutex::new(latency_histogram()),
            windows_closed: AtomicU64::new(0),
            events_late: AtomicU64::new(0),
            events_evicted: AtomicU64::new(0),
            anomalies: AtomicU64::new(0),
            health_alerts: AtomicU64::new(0),
            windows_emitted: AtomicU64::new(0),
            histograms_dropped: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Analytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analytics").field("frames", &lock(&self.frames).len()).finish_non_exhaustive()
    }
}

/// One exported latency histogram: cumulative counts at each bound, in seconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    /// `operation`, `mount`, `fuse_stage`, `daemon_function` (its label `CONNECTION:OPCODE`).
    pub family: &'static str,
    pub label: String,
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound in seconds, events at or below it), ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

/// Bucket bounds of the exported histograms, in seconds (1 us to 10 s).
pub const LATENCY_BOUNDS_SECONDS: [f64; 15] =
    [1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.1, 1.0, 10.0];

/// Cumulative buckets of `histogram` (values in `unit_ns` nanoseconds) at the exported bounds.
#[must_use]
pub fn seconds_buckets(histogram: &Histogram<u64>, unit_ns: f64) -> (f64, Vec<(f64, u64)>) {
    let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_SECONDS
        .iter()
        .map(|&bound| {
            #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a positive bound")]
            let limit = (bound * 1e9 / unit_ns) as u64;
            (bound, histogram.count_between(0, limit))
        })
        .collect();
    buckets.push((f64::INFINITY, histogram.len()));
    #[expect(clippy::cast_precision_loss, reason = "a sum of latencies in seconds")]
    let sum = histogram.mean() * histogram.len() as f64 * unit_ns / 1e9;
    (sum, buckets)
}

impl Analytics {
    /// Publishes the summary of a window closed at `closed`: to live viewers, and into the
    /// history (at most `keep`).
    pub fn publish(&self, frame: Arc<str>, keep: usize, closed: Instant) {
        let mut frames = lock(&self.frames);
        while frames.len() >= keep.max(1) {
            frames.pop_front();
        }
        frames.push_back(Arc::clone(&frame));
        // No viewer is not an error.
        let _ = self.live.send(LiveFrame { frame, closed });
    }

    /// Records that a live viewer's stream was handed the frame of a window closed at `closed`.
    pub fn record_sent(&self, closed: Instant) {
        let micros = u64::try_from(closed.elapsed().as_micros()).unwrap_or(u64::MAX);
        lock(&self.close_to_send_us).saturating_record(micros);
    }

    /// Window close to frame handed to a live viewer's stream, in microseconds (`events`: frames
    /// sent, counted per viewer).
    #[must_use]
    pub fn close_to_send(&self) -> LatencySummary {
        LatencySummary::of(&lock(&self.close_to_send_us))
    }

    /// The stage's counts by name.
    #[must_use]
    pub fn values(&self) -> [(&'static str, u64); 7] {
        let get = |counter: &AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
        [
            ("windows_closed", get(&self.windows_closed)),
            ("events_late", get(&self.events_late)),
            ("events_evicted", get(&self.events_evicted)),
            ("anomalies", get(&self.anomalies)),
            ("health_alerts", get(&self.health_alerts)),
            ("windows_emitted", get(&self.windows_emitted)),
            ("histograms_dropped", get(&self.histograms_dropped)),
        ]
    }

    /// The kept summaries, oldest first.
    #[must_use]
    pub fn history(&self) -> Vec<Arc<str>> {
        lock(&self.frames).iter().cloned().collect()
    }

    /// Summaries from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<LiveFrame> {
        self.live.subscribe()
    }

    /// Adds a window's latencies (ns) for `family`/`label` to the exported histograms.
    pub fn merge_latency(&self, family: &'static str, label: &str, window: &Histogram<u64>) {
        let mut latency = lock(&self.latency);
        let key = (family, label.to_owned());
        if !latency.contains_key(&key) && latency.len() >= MAX_HISTOGRAMS {
            super::add(&self.histograms_dropped, 1);
            return;
        }
        // Same bounds: adding cannot fail.
        let _ = latency.entry(key).or_insert_with(latency_histogram).add(window);
    }

    /// The exported histograms, in seconds.
    #[must_use]
    pub fn latency_histograms(&self) -> Vec<LatencyHistogram> {
        lock(&self.latency)
            .iter()
            .map(|((family, label), histogram)| {
                let (sum_seconds, buckets) = seconds_buckets(histogram, 1.0);
                LatencyHistogram {
                    family,
                    label: label.clone(),
                    sum_seconds,
                    count: histogram.len(),
                    buckets,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_newest_and_viewers_get_what_follows() {
        let analytics = Analytics::default();
        let mut viewer = analytics.subscribe();
        for i in 0..5 {
            analytics.publish(Arc::from(i.to_string()), 3, Instant::now());
        }
        let history: Vec<String> = analytics.history().iter().map(ToString::to_string).collect();
        assert_eq!(history, ["2", "3", "4"]);
        assert_eq!(&*viewer.try_recv().unwrap().frame, "0");
    }

    #[test]
    fn frames_sent_are_summarised_from_their_close() {
        let analytics = Analytics::default();
        assert_eq!(analytics.close_to_send(), LatencySummary::default());
        let closed = Instant::now();
        analytics.publish(Arc::from("{}"), 1, closed);
        let mut viewers = [analytics.subscribe(), analytics.subscribe()];
        analytics.publish(Arc::from("{}"), 1, closed);
        for viewer in &mut viewers {
            analytics.record_sent(viewer.try_recv().unwrap().closed);
        }
        let summary = analytics.close_to_send();
        assert_eq!(summary.events, 2, "one per viewer and frame");
        assert!(summary.p50_us <= summary.p99_us && summary.p99_us <= summary.max_us);
    }

    #[test]
    fn latencies_export_as_cumulative_buckets_in_seconds() {
        let analytics = Analytics::default();
        let mut window = latency_histogram();
        window.record(2_000).unwrap(); // 2 us
        window.record(3_000_000).unwrap(); // 3 ms
        analytics.merge_latency("operation", "openat", &window);
        analytics.merge_latency("operation", "openat", &window);
        let [exported] = analytics.latency_histograms().try_into().unwrap();
        assert_eq!((exported.family, exported.label.as_str(), exported.count), ("operation", "openat", 4));
        let at = |bound: f64| {
            exported
                .buckets
                .iter()
                .find(|(b, _)| (*b - bound).abs() < 1e-12 || (b.is_infinite() && bound.is_infinite()))
                .unwrap()
                .1
        };
        assert_eq!((at(1e-6), at(5e-6), at(2.5e-3), at(5e-3), at(f64::INFINITY)), (0, 2, 2, 4, 4));
        assert!((exported.sum_seconds - 0.006_004).abs() < 1e-4, "{}", exported.sum_seconds);
    }
}
