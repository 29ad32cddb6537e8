//! Runs a source and its stages on the pipeline thread: each batch goes through every stage in
//! order; idle ticks let stages release what they hold; reconfigurations (reloads) swap stages
//! between two batches; at the end each stage flushes what it holds through the stages after it,
//! then finishes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam_channel::Receiver;

use super::{EventBatch, Poll, Source, Stage, StageCounters, Update};
use crate::telemetry::{Counters, add, monotonic_ns};

/// How often stages get a tick when the source is idle (pending FUSE requests are released on
/// ticks, so this bounds how late past its window one can be).
const TICK: Duration = Duration::from_millis(5);

/// A reload on its way to the pipeline thread: new settings for the source or stages of the
/// given names (each applies its own, see [`Stage::reconfigure`]), applied together between two
/// batches, and where the pipeline says it has switched (so that "reloaded" means every event
/// from then on uses them).
pub struct Reconfigure {
    pub updates: Vec<(&'static str, Update)>,
    pub switched: tokio::sync::oneshot::Sender<()>,
}

struct Registered {
    stage: Box<dyn Stage>,
    counters: Arc<StageCounters>,
}

/// A source and its stages, in order.
pub struct Pipeline {
    source: Box<dyn Source>,
    stages: Vec<Registered>,
    counters: Arc<Counters>,
}

impl Pipeline {
    /// A pipeline reading from `source`; its counters are listed in `counters.stages`.
    #[must_use]
    pub fn new(source: Box<dyn Source>, counters: Arc<Counters>) -> Self {
        counters.stages.register(source.name());
        Self { source, stages: Vec::new(), counters }
    }

    /// Adds the next stage.
    #[must_use]
    pub fn then(mut self, stage: Box<dyn Stage>) -> Self {
        let counters = self.counters.stages.register(stage.name());
        self.stages.push(Registered { stage, counters });
        self
    }

    /// The stage graph: the source, then each stage, in order.
    #[must_use]
    pub fn graph(&self) -> Vec<&'static str> {
        std::iter::once(self.source.name()).chain(self.stages.iter().map(|s| s.stage.name())).collect()
    }

    /// Runs until the source ends, then flushes and finishes every stage.
    pub fn run(mut self, reconfigure: &Receiver<Reconfigure>) {
        let mut batch = EventBatch::default();
        let source_counters = self.counters.stages.register(self.source.name());
        loop {
            if let Ok(change) = reconfigure.try_recv() {
                self.apply(change);
            }
            let poll = self.source.next(TICK, &mut batch);
            // A source's time is mostly waiting: it counts its own work (`Source::next`).
            add(&source_counters.batches, 1);
            add(&source_counters.events_out, batch.len() as u64);
            match poll {
                Poll::Ready => self.process(0, &mut batch),
                Poll::Idle => self.tick(&mut batch),
                Poll::Ended => break,
            }
            batch.clear();
        }
        for index in 0..self.stages.len() {
            let started = Instant::now();
            let registered = &mut self.stages[index];
            registered.stage.flush(&mut batch);
            record(&registered.counters, 0, batch.len(), started);
            self.process(index + 1, &mut batch);
            batch.clear();
        }
        for registered in self.stages {
            registered.stage.finish();
        }
    }

    /// Runs `batch` through the stages from `first` on.
    fn process(&mut self, first: usize, batch: &mut EventBatch) {
        for registered in &mut self.stages[first..] {
            let events_in = batch.len();
            let started = Instant::now();
            registered.stage.process(batch);
            record(&registered.counters, events_in, batch.len(), started);
        }
    }

    /// Gives every stage a tick; what one releases flows through the stages after it.
    fn tick(&mut self, batch: &mut EventBatch) {
        let now = monotonic_ns();
        for index in 0..self.stages.len() {
            let started = Instant::now();
            let registered = &mut self.stages[index];
            registered.stage.tick(now, batch);
            record(&registered.counters, 0, batch.len(), started);
            if !batch.is_empty() {
                self.process(index + 1, batch);
                batch.clear();
            }
        }
    }

    /// Hands each update to the source or stage it names, then says the pipeline has switched.
    fn apply(&mut self, change: Reconfigure) {
        for (name, update) in change.updates {
            if self.source.name() == name {
                self.source.reconfigure(update);
            } else if let Some(running) = self.stages.iter_mut().find(|s| s.stage.name() == name) {
                running.stage.reconfigure(update);
            } else {
                tracing::warn!(stage = name, "a reload named a stage the pipeline does not run");
            }
        }
        let _ = change.switched.send(());
    }
}

/// Counts one pass of a stage.
fn record(counters: &StageCounters, events_in: usize, events_out: usize, started: Instant) {
    add(&counters.batches, 1);
    add(&counters.events_in, events_in as u64);
    add(&counters.events_out, events_out as u64);
    counters.busy_since(started);
}
