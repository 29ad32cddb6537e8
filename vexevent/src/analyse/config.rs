//! `[analyse]`: which keys the analyse stage aggregates, how long its windows are, how many keys
//! it holds, what it emits and when it calls a change an anomaly.

use serde::Deserialize;

/// A dimension events are aggregated by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// The file's path.
    Path,
    /// The directory holding the file.
    Dir,
    Pid,
    /// The task name.
    Comm,
    Uid,
    /// The operation: the syscall's name, or `FUSE_<OPCODE>` for a FUSE request on its own.
    Operation,
    /// The `VexFS` event type (`FilesystemWrite`, ...).
    EventType,
    /// The task's cgroup (containers, services), shown as its path in the cgroup file system.
    Cgroup,
}

impl Dimension {
    pub const ALL: [Dimension; 8] = [
        Dimension::Path,
        Dimension::Dir,
        Dimension::Pid,
        Dimension::Comm,
        Dimension::Uid,
        Dimension::Operation,
        Dimension::EventType,
        Dimension::Cgroup,
    ];

    /// Its place in [`Dimension::ALL`].
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The name used in config, events and the dashboard.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Dimension::Path => "path",
            Dimension::Dir => "dir",
            Dimension::Pid => "pid",
            Dimension::Comm => "comm",
            Dimension::Uid => "uid",
            Dimension::Operation => "operation",
            Dimension::EventType => "event_type",
            Dimension::Cgroup => "cgroup",
        }
    }
}

/// `[analyse]` (see README, "Analytics and dashboard").
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyseConfig {
    /// Run the analyse stage (off: it is not in the pipeline and costs nothing).
    pub enabled: bool,
    /// Length of the windows, in seconds of event time.
    pub window_secs: u64,
    /// Distance between window starts, in seconds (a divisor of `window_secs`): unset, the
    /// windows are tumbling (back to back); less than `window_secs`, they slide (a window of
    /// `window_secs` closes every `slide_secs`).
    pub slide_secs: Option<u64>,
    /// Dimensions aggregated per window.
    pub dimensions: Vec<Dimension>,
    /// Keys one window holds per run (all dimensions together); events of further keys are
    /// counted (`evicted`) and bound the error of that window's top lists.
    pub max_keys: usize,
    /// Entries in each top list (files, directories, processes) per window.
    pub top: usize,
    /// Keys the long-horizon top lists (Space-Saving) monitor; their counts are exact to within
    /// the reported error.
    pub top_capacity: usize,
    /// Slowest operations listed per window (a `fileslower`).
    pub slowest: usize,
    /// Dimensions whose closed windows are emitted as `ObservabilityMetricCollected` events
    /// (one per key and window: keep it to low-cardinality dimensions); empty: none.
    pub emit: Vec<Dimension>,
    /// Seconds of per-window summaries kept for a dashboard that opens.
    pub history_secs: u64,
    pub anomaly: AnomalyConfig,
}

impl Default for AnalyseConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            window_secs: 1,
            slide_secs: None,
            dimensions: Dimension::ALL.to_vec(),
            max_keys: 100_000,
            top: 10,
            top_capacity: 1_000,
            slowest: 10,
            emit: Vec::new(),
            history_secs: 300,
            anomaly: AnomalyConfig::default(),
        }
    }
}

/// `[analyse.anomaly]`: per key, a window's rate or mean latency compared with the key's own
/// exponentially weighted mean and variance.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    pub enabled: bool,
    /// Dimensions watched for anomalies.
    pub dimensions: Vec<Dimension>,
    /// Weight of the newest window in the moving mean and variance (0 < alpha <= 1).
    pub alpha: f64,
    /// Distance from the mean, in standard deviations, that makes an anomaly.
    pub z_threshold: f64,
    /// Also needed: the observed value is at least this many times the baseline (or at most
    /// its inverse), so that a tiny absolute change on a quiet key is no anomaly.
    pub min_ratio: f64,
    /// Windows a key must have been seen in before it can raise an anomaly.
    pub warmup_windows: u32,
    /// Events in a window (observed or baseline) below which a key is too quiet to judge.
    pub min_events: u64,
    /// Keys with a baseline, at most (the least recently seen go first).
    pub max_keys: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dimensions: vec![Dimension::Path, Dimension::Comm, Dimension::Operation],
            alpha: 0.1,
            z_threshold: 6.0,
            min_ratio: 3.0,
            warmup_windows: 10,
            min_events: 20,
            max_keys: 10_000,
        }
    }
}

/// What is wrong with `[analyse]`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AnalyseConfigError {
    #[error("analyse.{field} must be at least {min}")]
    TooSmall { field: &'static str, min: u64 },
    #[error("analyse.{field} must be at most {max}")]
    TooLarge { field: &'static str, max: u64 },
    #[error("analyse.anomaly.{field} must be {rule}, not {value}")]
    Anomaly { field: &'static str, rule: &'static str, value: f64 },
    #[error("analyse.slide_secs ({slide}) must divide analyse.window_secs ({window})")]
    SlideNotDivisor { slide: u64, window: u64 },
    #[error("analyse.{field} names {dimension:?}, which is not in analyse.dimensions")]
    NotAggregated { field: &'static str, dimension: &'static str },
}

/// Largest window: an hour (longer ones belong in a database).
const MAX_WINDOW_SECS: u64 = 3_600;
/// Largest history a dashboard opens with: a day of one-second windows.
const MAX_HISTORY_SECS: u64 = 86_400;
/// Keys per window, at most (about 150 bytes each).
const MAX_KEYS: u64 = 10_000_000;

impl AnalyseConfig {
    /// Seconds between window starts (`window_secs` for tumbling windows).
    #[must_use]
    pub fn slide_secs(&self) -> u64 {
        self.slide_secs.unwrap_or(self.window_secs)
    }

    /// Every problem, in field order.
    #[must_use]
    pub fn problems(&self) -> Vec<AnalyseConfigError> {
        let mut problems = Vec::new();
        let mut range = |field, value: u64, min, max| {
            if value < min {
                problems.push(AnalyseConfigError::TooSmall { field, min });
            } else if value > max {
                problems.push(AnalyseConfigError::TooLarge { field, max });
            }
        };
        range("window_secs", self.window_secs, 1, MAX_WINDOW_SECS);
        let (slide, window) = (self.slide_secs(), self.window_secs);
        range("slide_secs", slide, 1, window.max(1));
        range("max_keys", self.max_keys as u64, 1, MAX_KEYS);
        range("top", self.top as u64, 1, 1_000);
        range("top_capacity", self.top_capacity as u64, 1, 1_000_000);
        range("slowest", self.slowest as u64, 0, 1_000);
        range("history_secs", self.history_secs, 0, MAX_HISTORY_SECS);
        range("anomaly.max_keys", self.anomaly.max_keys as u64, 1, MAX_KEYS);
        if (1..=window).contains(&slide) && window % slide != 0 {
            problems.push(AnalyseConfigError::SlideNotDivisor { slide, window });
        }
        let anomaly = &self.anomaly;
        for (field, value, ok, rule) in [
            ("alpha", anomaly.alpha, anomaly.alpha > 0.0 && anomaly.alpha <= 1.0, "in (0, 1]"),
            ("z_threshold", anomaly.z_threshold, anomaly.z_threshold > 0.0, "positive"),
            ("min_ratio", anomaly.min_ratio, anomaly.min_ratio >= 1.0, "at least 1"),
        ] {
            if !ok || !value.is_finite() {
                problems.push(AnalyseConfigError::Anomaly { field, rule, value });
            }
        }
        let named = self.emit.iter().map(|d| ("emit", d));
        for (field, dimension) in
            named.chain(self.anomaly.dimensions.iter().map(|d| ("anomaly.dimensions", d)))
        {
            if !self.dimensions.contains(dimension) {
                problems.push(AnalyseConfigError::NotAggregated { field, dimension: dimension.name() });
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_off() {
        let config = AnalyseConfig::default();
        assert!(config.problems().is_empty());
        assert!(!config.enabled);
    }

    #[test]
    fn bad_values_are_named() {
        let config: AnalyseConfig = toml::from_str(
            "window_secs = 0\nslide_secs = 0\nemit = [\"pid\"]\ndimensions = [\"path\"]\n[anomaly]\nalpha = 2.0\ndimensions = [\"comm\"]\n",
        )
        .unwrap();
        let problems: Vec<String> = config.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "analyse.window_secs must be at least 1",
                "analyse.slide_secs must be at least 1",
                "analyse.anomaly.alpha must be in (0, 1], not 2",
                "analyse.emit names \"pid\", which is not in analyse.dimensions",
                "analyse.anomaly.dimensions names \"comm\", which is not in analyse.dimensions",
            ]
        );
        assert!(toml::from_str::<AnalyseConfig>("windows = 1").is_err(), "unknown keys are refused");
        let sliding: AnalyseConfig = toml::from_str("window_secs = 10\nslide_secs = 4").unwrap();
        let problems: Vec<String> = sliding.problems().iter().map(ToString::to_string).collect();
        assert_eq!(problems, ["analyse.slide_secs (4) must divide analyse.window_secs (10)"]);
        let sliding: AnalyseConfig = toml::from_str("window_secs = 10\nslide_secs = 20").unwrap();
        assert_eq!(sliding.problems()[0].to_string(), "analyse.slide_secs must be at most 10");
    }
}
