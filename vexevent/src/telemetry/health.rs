//! Whether the instance is healthy: the probes are attached, no ring was fuller than
//! `ring_fill_max_percent` when last drained, no record was lost in the last `loss_quiet_secs`,
//! every sink is up, and (when a bound is set) the kernel-to-sink latency is within it. Read by `GET /readyz` and `/healthz` and by the analyse stage, which raises a
//! `health:NAME` event when a check fails.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{Counters, lock};

/// `[health]`: what `/readyz` and the health alerts require.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Seconds without a lost record before the loss check passes again.
    pub loss_quiet_secs: u64,
    /// Fill of a ring, in percent of its size, at the start of the last drain, above which the
    /// rings check fails (the consumer falls behind; loss comes next).
    pub ring_fill_max_percent: u64,
    /// Largest kernel-to-sink p99 latency, in milliseconds, before the latency check fails;
    /// absent: not checked.
    pub latency_p99_max_ms: Option<u64>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { loss_quiet_secs: 60, ring_fill_max_percent: 80, latency_p99_max_ms: None }
    }
}

/// What is wrong with `[health]`.
#[derive(Debug, thiserror::Error)]
pub enum HealthConfigError {
    #[error("health.ring_fill_max_percent {value} must be between 1 and 100")]
    RingFill { value: u64 },
}

impl HealthConfig {
    /// What is wrong with the section, if anything.
    #[must_use]
    pub fn problem(&self) -> Option<HealthConfigError> {
        (!(1..=100).contains(&self.ring_fill_max_percent))
            .then_some(HealthConfigError::RingFill { value: self.ring_fill_max_percent })
    }
}

/// One check: its name (`probes`, `rings`, `loss`, `sinks`, `latency`), whether it passes, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub reason: String,
}

/// Every check, and whether all pass.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthReport {
    pub ready: bool,
    pub checks: Vec<Check>,
}

/// The last time the loss counters moved.
#[derive(Default)]
struct LossSeen {
    total: u64,
    at: Option<Instant>,
}

/// The instance's health, shared by the control API and the analyse stage.
#[derive(Default)]
pub struct Health {
    config: Mutex<HealthConfig>,
    /// Probes attached plus one (0: not loaded yet).
    probes: AtomicU64,
    loss: Mutex<LossSeen>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("config", &*lock(&self.config)).finish_non_exhaustive()
    }
}

impl Health {
    pub fn configure(&self, config: HealthConfig) {
        *lock(&self.config) = config;
    }

    /// The probes are loaded, `attached` of them attached.
    pub fn set_probes_attached(&self, attached: usize) {
        self.probes.store(attached as u64 + 1, Ordering::Relaxed);
    }

    /// Runs every check on `counters` now.
    pub fn check(&self, counters: &Counters) -> HealthReport {
        self.check_at(counters, Instant::now())
    }

    fn check_at(&self, counters: &Counters, now: Instant) -> HealthReport {
        let config = lock(&self.config).clone();
        let mut checks = Vec::new();
        let mut check = |name: &str, ok: bool, reason: String| {
            checks.push(Check { name: name.to_owned(), ok, reason });
        };
        match self.probes.load(Ordering::Relaxed) {
            0 => check("probes", false, "the probes are not loaded yet".to_owned()),
            1 => check("probes", false, "no probe is attached".to_owned()),
            n => check("probes", true, format!("{} probes attached", n - 1)),
        }
        let full: Vec<String> = counters
            .rings
            .summaries()
            .iter()
            .enumerate()
            .filter(|(_, ring)| ring.used_bytes * 100 > ring.size_bytes * config.ring_fill_max_percent)
            .map(|(shard, ring)| {
                format!("ring {shard} {}% full", ring.used_bytes * 100 / ring.size_bytes.max(1))
            })
            .collect();
        if full.is_empty() {
            check(
                "rings",
                true,
                format!("every ring under {}% full when last drained", config.ring_fill_max_percent),
            );
        } else {
            check(
                "rings",
                false,
                format!("{} when last drained (bound {}%)", full.join(", "), config.ring_fill_max_percent),
            );
        }
        let lost =
            counters.lost_reported.load(Ordering::Relaxed) + counters.records_missing.load(Ordering::Relaxed);
        let since = {
            let mut seen = lock(&self.loss);
            if lost != seen.total {
                seen.total = lost;
                seen.at = Some(now);
            }
            seen.at.map(|at| now.duration_since(at))
        };
        let quiet = Duration::from_secs(config.loss_quiet_secs);
        match since {
            Some(since) if since < quiet => check(
                "loss",
                false,
                format!(
                    "records were lost {}s ago ({lost} in all); passes after {}s without loss",
                    since.as_secs(),
                    quiet.as_secs()
                ),
            ),
            Some(_) => {
                check("loss", true, format!("no loss in the last {}s ({lost} before)", quiet.as_secs()));
            }
            None => check("loss", true, "no record lost".to_owned()),
        }
        let down: Vec<String> = counters
            .outputs
            .sinks()
            .into_iter()
            .filter(|(_, sink)| sink.down)
            .map(|(name, _)| name)
            .collect();
        if down.is_empty() {
            check("sinks", true, "every sink is up".to_owned());
        } else {
            check("sinks", false, format!("down: {}", down.join(", ")));
        }
        if let Some(max_ms) = config.latency_p99_max_ms {
            let p99_us = counters.latency_summary().p99_us;
            let ok = p99_us <= max_ms * 1_000;
            check("latency", ok, format!("kernel-to-sink p99 {p99_us} us (bound {max_ms} ms)"));
        }
        HealthReport { ready: checks.iter().all(|c| c.ok), checks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Gap;

    #[test]
    fn readiness_follows_probes_loss_and_its_quiet_period() {
        let counters = Counters::default();
        let health = Health::default();
        let start = Instant::now();
        let failing = |report: &HealthReport| -> Vec<String> {
            report.checks.iter().filter(|c| !c.ok).map(|c| c.name.clone()).collect()
        };
        assert_eq!(failing(&health.check_at(&counters, start)), ["probes"]);
        health.set_probes_attached(12);
        assert!(health.check_at(&counters, start).ready);
        counters.record_gap(Gap { cpu: 0, first: 5, count: 3, reported: true });
        let report = health.check_at(&counters, start + Duration::from_secs(1));
        assert_eq!(failing(&report), ["loss"]);
        assert!(!report.ready);
        assert_eq!(failing(&health.check_at(&counters, start + Duration::from_mins(1))), ["loss"]);
        assert!(health.check_at(&counters, start + Duration::from_secs(62)).ready, "quiet for 61 s");
    }

    #[test]
    fn a_ring_fuller_than_the_bound_fails_readiness_until_drained() {
        let counters = Counters::default();
        let health = Health::default();
        health.set_probes_attached(1);
        counters.rings.set(0, 100, 1000);
        counters.rings.set(1, 810, 1000);
        let report = health.check(&counters);
        let rings = report.checks.iter().find(|c| c.name == "rings").unwrap();
        assert!(!report.ready && !rings.ok);
        assert_eq!(rings.reason, "ring 1 81% full when last drained (bound 80%)");
        counters.rings.set(1, 0, 1000);
        assert!(health.check(&counters).ready);
        assert!(HealthConfig { ring_fill_max_percent: 0, ..HealthConfig::default() }.problem().is_some());
        assert!(HealthConfig::default().problem().is_none());
    }
}
