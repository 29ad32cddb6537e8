//! The component model every stage plugs into: a [`Source`] produces batches of
//! [`SemanticEvent`](crate::event::SemanticEvent)s, [`Stage`]s process them in one order on the pipeline thread (filtering,
//! joining, deriving, delivering), and one shutdown path drains what each stage holds, in order.
//!
//! A stage is a folder with a type implementing [`Stage`]; `app` registers it with one line. An
//! asynchronous stage (a network client, a consensus log) runs on its own runtime behind
//! [`Offload`], joined to the pipeline thread by a bounded channel whose full-channel policy is
//! configured ([`WhenFull`]). The pipeline counts, per stage and under the stage's name, the
//! events in and out and the time spent ([`StageCounters`]).

mod batch;
mod json;
mod offload;
mod runner;
mod sequence;

pub use batch::{EventBatch, to_json_lines};
pub use json::write_event;
pub use offload::{Offload, OffloadError};
pub use runner::{Pipeline, Reconfigure};
pub use sequence::Sequencer;

use serde::Deserialize;

pub use crate::telemetry::StageCounters;

/// What a source has for the pipeline.
pub enum Poll {
    /// Events, in order, with the watermark they were released under.
    Ready,
    /// Nothing arrived before the timeout (stages get a tick).
    Idle,
    /// The source has ended: nothing more will come.
    Ended,
}

/// Where events come from: the kernel's records (capture + translate), a recorded JSON Lines log,
/// and next the replicated log.
pub trait Source: Send {
    /// The source's name in the stage graph.
    fn name(&self) -> &'static str;

    /// Waits up to `timeout` for the next batch and appends its events to `batch` (setting its
    /// watermark). The time spent making the events (not waiting) goes to the source's
    /// `busy_ns` (`StageCounters::busy_since`).
    fn next(&mut self, timeout: std::time::Duration, batch: &mut EventBatch) -> Poll;

    /// Takes reloaded settings (the type the source's reload sends); the default ignores them.
    fn reconfigure(&mut self, _update: Update) {}
}

/// Reloaded settings for one stage, of the type that stage documents (it downcasts them).
pub type Update = Box<dyn std::any::Any + Send>;

/// The settings in `update` when they are of the type `stage` takes; others are logged and
/// ignored (a wiring mistake, not a user's).
#[must_use]
pub fn settings_for<T: 'static>(stage: &'static str, update: Update) -> Option<T> {
    if let Ok(settings) = update.downcast::<T>() {
        Some(*settings)
    } else {
        tracing::error!(stage, "a reload sent this stage settings of another type; ignored");
        None
    }
}

/// One step of the pipeline. Stages meet only at
/// [`SemanticEvent`](crate::event::SemanticEvent): a stage never knows which
/// stage comes before or after it.
pub trait Stage: Send {
    /// The stage's name: in the stage graph (`check-config`) and on its counters.
    fn name(&self) -> &'static str;

    /// Processes one batch in place: keeps, changes or drops events (counting why it drops),
    /// holds some back for later (and lowers `batch.watermark_ns` to the oldest it holds), or adds
    /// derived events (detections, anomalies), which then flow through the stages after it.
    fn process(&mut self, batch: &mut EventBatch);

    /// Called when the source was idle for a tick: releases held events whose time has come.
    fn tick(&mut self, _now_ns: u64, _batch: &mut EventBatch) {}

    /// At shutdown: releases everything still held into `batch` (it flows through the stages
    /// after this one).
    fn flush(&mut self, _batch: &mut EventBatch) {}

    /// Takes reloaded settings (the type the stage's reload sends) between two batches; the
    /// default ignores them (the stage is not reloadable).
    fn reconfigure(&mut self, _update: Update) {}

    /// After the last batch: delivers what is queued and stops what the stage started (workers,
    /// runtimes).
    fn finish(self: Box<Self>) {}
}

/// What a bounded queue between two parts does when it is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Wait for room (backpressure: upstream slows down, records wait in the kernel's rings).
    #[default]
    Block,
    /// Drop the newest event (the one being offered) and count it.
    DropNewest,
    /// Drop the oldest queued event to make room and count it.
    DropOldest,
}

#[cfg(test)]
mod tests;
