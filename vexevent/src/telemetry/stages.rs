//! Counters the pipeline keeps for every stage, under the stage's name: batches and events in and
//! out, and the time the stage spent (the stage table of `vexevent stats`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};

/// One stage's counters, written by the pipeline thread.
#[derive(Debug, Default)]
pub struct StageCounters {
    /// Batches processed (idle ticks included).
    pub batches: AtomicU64,
    /// Events the stage was given.
    pub events_in: AtomicU64,
    /// Events the stage passed on (fewer: filtered or held; more: derived or released).
    pub events_out: AtomicU64,
    /// Time spent in the stage, in nanoseconds.
    pub busy_ns: AtomicU64,
    /// Events the stage dropped because its own queue was full (asynchronous stages).
    pub dropped: AtomicU64,
}

impl StageCounters {
    /// Adds the time since `started` to `busy_ns`.
    pub fn busy_since(&self, started: std::time::Instant) {
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(elapsed, Ordering::Relaxed);
    }
}

/// One stage's counters at an instant.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StageSummary {
    /// Position in the pipeline (the source is 0).
    pub position: usize,
    pub batches: u64,
    pub events_in: u64,
    pub events_out: u64,
    pub busy_ns: u64,
    pub dropped: u64,
}

/// Every stage's counters, by name.
#[derive(Debug, Default)]
pub struct StageTable {
    stages: std::sync::Mutex<Vec<(String, Arc<StageCounters>)>>,
}

impl StageTable {
    /// Counters for the next stage of the pipeline, listed under `name` (a stage registered
    /// again, e.g. replaced on reload, keeps its counters).
    pub fn register(&self, name: &str) -> Arc<StageCounters> {
        let mut stages = super::lock(&self.stages);
        if let Some((_, counters)) = stages.iter().find(|(n, _)| n == name) {
            return Arc::clone(counters);
        }
        let counters = Arc::new(StageCounters::default());
        stages.push((name.to_owned(), Arc::clone(&counters)));
        counters
    }

    /// Every stage's counters, by name.
    #[must_use]
    pub fn summaries(&self) -> BTreeMap<String, StageSummary> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        super::lock(&self.stages)
            .iter()
            .enumerate()
            .map(|(position, (name, c))| {
                let summary = StageSummary {
                    position,
                    batches: get(&c.batches),
                    events_in: get(&c.events_in),
                    events_out: get(&c.events_out),
                    busy_ns: get(&c.busy_ns),
                    dropped: get(&c.dropped),
                };
                (name.clone(), summary)
            })
            .collect()
    }
}
