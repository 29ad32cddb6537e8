//! Anomalies: per key, each window's event count and mean latency are compared with the key's
//! own exponentially weighted mean and variance. A value is anomalous when it is `z_threshold`
//! deviations away, `min_ratio` times off the mean, the key is past its warm-up, and the key is
//! busy enough to judge. The deviation never goes below the Poisson noise of a count (the square
//! root of its mean) nor a quarter of a mean latency, so a steady key whose variance is near
//! zero does not alert on noise. An anomaly is reported once; the key re-arms when it is back
//! to normal. Every window updates the baseline, so a lasting change becomes the new normal.

use std::collections::HashMap;

use super::config::{AnomalyConfig, Dimension};

/// Which value departed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Events per window.
    Rate,
    /// Mean latency in the window.
    Latency,
}

impl Metric {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Metric::Rate => "rate",
            Metric::Latency => "latency",
        }
    }
}

/// An anomaly found in a window.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub key: u64,
    pub dimension: Dimension,
    pub metric: Metric,
    pub baseline: f64,
    pub observed: f64,
    pub z: f64,
}

/// A moving mean and variance, and whether the value is alerting.
#[derive(Clone, Copy, Debug, Default)]
struct Moving {
    mean: f64,
    variance: f64,
    seen: u32,
    alerting: bool,
}

impl Moving {
    /// Judges `observed` against the baseline, then folds it in.
    fn observe(
        &mut self,
        config: &AnomalyConfig,
        observed: f64,
        floor: f64,
        busy: bool,
    ) -> Option<(f64, f64)> {
        let baseline = self.mean;
        let deviation = self.variance.sqrt().max(floor).max(f64::EPSILON);
        let z = (observed - baseline) / deviation;
        let far = z.abs() >= config.z_threshold
            && (observed >= baseline * config.min_ratio || observed * config.min_ratio <= baseline);
        let anomalous = busy && self.seen >= config.warmup_windows && far;
        let report = (anomalous && !self.alerting).then_some((baseline, z));
        self.alerting = anomalous;
        if self.seen == 0 {
            self.mean = observed;
        } else {
            let difference = observed - self.mean;
            let increment = config.alpha * difference;
            self.mean += increment;
            self.variance = (1.0 - config.alpha) * (self.variance + difference * increment);
        }
        self.seen = self.seen.saturating_add(1);
        report
    }
}

struct Baseline {
    dimension: Dimension,
    rate: Moving,
    latency: Moving,
    /// The last window the key had events in.
    last_active: u64,
}

/// Baselines of the watched keys.
pub struct Detector {
    config: AnomalyConfig,
    baselines: HashMap<u64, Baseline, foldhash::fast::FixedState>,
    window: u64,
    /// Keys not watched because the table was full.
    pub keys_refused: u64,
}

/// A key's numbers in one window.
pub struct Observed {
    pub key: u64,
    pub dimension: Dimension,
    pub count: u64,
    pub mean_latency_ns: f64,
}

impl Detector {
    #[must_use]
    pub fn new(config: AnomalyConfig) -> Self {
        Self {
            config,
            baselines: HashMap::with_hasher(foldhash::fast::FixedState::default()),
            window: 0,
            keys_refused: 0,
        }
    }

    /// Whether `dimension` is watched.
    #[must_use]
    pub fn watches(&self, dimension: Dimension) -> bool {
        self.config.enabled && self.config.dimensions.contains(&dimension)
    }

    /// Whether `key` has a baseline.
    #[must_use]
    pub fn knows(&self, key: u64) -> bool {
        self.baselines.contains_key(&key)
    }

    /// Judges one window: the keys seen in it, and every known key not seen (a count of 0).
    pub fn window(&mut self, seen: impl IntoIterator<Item = Observed>, out: &mut Vec<Anomaly>) {
        self.window += 1;
        let config = &self.config;
        #[expect(clippy::cast_precision_loss, reason = "counts compared as rates")]
        let min_events = config.min_events as f64;
        for observed in seen {
            let window = self.window;
            if !self.baselines.contains_key(&observed.key) && self.baselines.len() >= config.max_keys {
                self.keys_refused += 1;
                continue;
            }
            let baseline = self.baselines.entry(observed.key).or_insert_with(|| Baseline {
                dimension: observed.dimension,
                rate: Moving::default(),
                latency: Moving::default(),
                last_active: window,
            });
            baseline.last_active = window;
            #[expect(clippy::cast_precision_loss, reason = "counts compared as rates")]
            let count = observed.count as f64;
            let busy = count.max(baseline.rate.mean) >= min_events;
            let found = baseline
                .rate
                .observe(config, count, baseline.rate.mean.sqrt(), busy)
                .map(|r| (Metric::Rate, r));
            let mean = observed.mean_latency_ns;
            let latency = baseline
                .latency
                .observe(config, mean, baseline.latency.mean / 4.0, count >= min_events)
                .map(|r| (Metric::Latency, r));
            let observed_value = |metric| if metric == Metric::Rate { count } else { mean };
            out.extend(found.into_iter().chain(latency).map(|(metric, (baseline_value, z))| Anomaly {
                key: observed.key,
                dimension: baseline.dimension,
                metric,
                baseline: baseline_value,
                observed: observed_value(metric),
                z,
            }));
        }
        // Keys without events this window: a count of 0 (a drop is judged too); keys quiet for
        // longer than the warm-up are forgotten.
        let window = self.window;
        let warmup = u64::from(config.warmup_windows.max(1));
        self.baselines.retain(|&key, baseline| {
            if baseline.last_active == window {
                return true;
            }
            let busy = baseline.rate.mean >= min_events;
            if let Some((baseline_value, z)) =
                baseline.rate.observe(config, 0.0, baseline.rate.mean.sqrt(), busy)
            {
                out.push(Anomaly {
                    key,
                    dimension: baseline.dimension,
                    metric: Metric::Rate,
                    baseline: baseline_value,
                    observed: 0.0,
                    z,
                });
            }
            window - baseline.last_active <= warmup
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(detector: &mut Detector, counts: impl IntoIterator<Item = u64>) -> Vec<(usize, Anomaly)> {
        let mut found = Vec::new();
        for (i, count) in counts.into_iter().enumerate() {
            let mut out = Vec::new();
            let seen = Observed { key: 7, dimension: Dimension::Path, count, mean_latency_ns: 1_000.0 };
            detector.window([seen], &mut out);
            found.extend(out.into_iter().map(|a| (i, a)));
        }
        found
    }

    #[test]
    fn a_tenfold_rate_is_flagged_once_after_warmup_and_noise_is_not() {
        let mut detector = Detector::new(AnomalyConfig::default());
        // Poisson-like noise around 100 per window, then 10x.
        let noisy = (0..60).map(|i| [90, 110, 100, 95, 105, 120, 80][i % 7]);
        assert!(run(&mut detector, noisy).is_empty(), "steady noise raises nothing");
        let found = run(&mut detector, [1_000, 1_000, 1_000]);
        assert_eq!(found.len(), 1, "{found:?}");
        let (index, anomaly) = &found[0];
        assert_eq!((*index, anomaly.metric), (0, Metric::Rate), "flagged in the first window");
        assert!(
            (95.0..=105.0).contains(&anomaly.baseline) && (anomaly.observed - 1_000.0).abs() < 1e-9,
            "{anomaly:?}"
        );
    }

    #[test]
    fn nothing_is_flagged_during_warmup_or_on_quiet_keys() {
        let mut detector = Detector::new(AnomalyConfig::default());
        assert!(run(&mut detector, [100, 100, 1_000]).is_empty(), "warming up");
        let mut quiet = Detector::new(AnomalyConfig::default());
        assert!(run(&mut quiet, (0..30).map(|i| if i < 20 { 1 } else { 10 })).is_empty(), "under min_events");
    }
}
