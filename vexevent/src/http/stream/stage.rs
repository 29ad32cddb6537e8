//! The live stream as a pipeline stage: offers each batch (with the JSON lines the outputs
//! share) to the stream's subscribers; never blocks.

use std::sync::Arc;

use super::Broadcaster;
use crate::{
    pipeline::{EventBatch, Stage},
    telemetry::Counters,
};

/// Publishes events to the live stream's subscribers.
pub struct StreamStage {
    broadcaster: Arc<Broadcaster>,
    counters: Arc<Counters>,
}

impl StreamStage {
    #[must_use]
    pub fn new(broadcaster: Arc<Broadcaster>, counters: Arc<Counters>) -> Self {
        Self { broadcaster, counters }
    }
}

impl Stage for StreamStage {
    fn name(&self) -> &'static str {
        "stream"
    }

    fn process(&mut self, batch: &mut EventBatch) {
        if batch.is_empty() {
            return;
        }
        let (events, lines) = batch.json_lines(&self.counters);
        self.broadcaster.publish(events, lines, &self.counters);
    }
}
