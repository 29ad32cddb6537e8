//! Counters of the routing and output side: events each route matched, and per sink what was
//! delivered, dropped (and why) and whether the sink is currently down.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};

/// Counters of one sink, shared by the pipeline (which queues) and the sink's worker.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Events delivered.
    pub delivered: AtomicU64,
    /// Batches delivered.
    pub batches: AtomicU64,
    /// Events dropped because the queue was full (`drop-newest`/`drop-oldest`).
    pub dropped_full: AtomicU64,
    /// Events given up at shutdown because the sink was down past the grace period.
    pub dropped_shutdown: AtomicU64,
    /// Events dropped after `max_retries` failed attempts.
    pub dropped_failed: AtomicU64,
    /// Delivery attempts that failed (each is retried or counted as dropped).
    pub failed_attempts: AtomicU64,
    /// Events waiting in the queue.
    pub queued: AtomicU64,
    /// The last delivery attempt failed.
    pub down: AtomicBool,
}

/// One sink's counters at an instant.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SinkSummary {
    pub delivered: u64,
    pub batches: u64,
    pub dropped_full: u64,
    pub dropped_shutdown: u64,
    pub dropped_failed: u64,
    pub failed_attempts: u64,
    pub queued: u64,
    pub down: bool,
}

impl SinkCounters {
    #[must_use]
    pub fn summary(&self) -> SinkSummary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SinkSummary {
            delivered: get(&self.delivered),
            batches: get(&self.batches),
            dropped_full: get(&self.dropped_full),
            dropped_shutdown: get(&self.dropped_shutdown),
            dropped_failed: get(&self.dropped_failed),
            failed_attempts: get(&self.failed_attempts),
            queued: get(&self.queued),
            down: self.down.load(Ordering::Relaxed),
        }
    }
}

/// The sinks' and routes' counters of a run.
#[derive(Debug, Default)]
pub struct OutputCounters {
    sinks: std::sync::Mutex<Vec<(String, Arc<SinkCounters>)>>,
    routes: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl OutputCounters {
    /// Counters for a new sink, listed under `name`.
    pub fn register_sink(&self, name: &str) -> Arc<SinkCounters> {
        let counters = Arc::new(SinkCounters::default());
        super::lock(&self.sinks).push((name.to_owned(), Arc::clone(&counters)));
        counters
    }

    /// Adds events matched by routes (by name; kept across reloads).
    pub fn add_route_matches<'a>(&self, matched: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut routes = super::lock(&self.routes);
        for (name, n) in matched {
            *routes.entry(name.to_owned()).or_default() += n;
        }
    }

    #[must_use]
    pub fn sinks(&self) -> BTreeMap<String, SinkSummary> {
        super::lock(&self.sinks).iter().map(|(name, c)| (name.clone(), c.summary())).collect()
    }

    #[must_use]
    pub fn routes(&self) -> BTreeMap<String, u64> {
        super::lock(&self.routes).clone()
    }
}
