//! The `sequence` stage: numbers the events that pass the filters in output order
//! (`global_sequence`, contiguous from 0), so every output and subscriber sees the same numbers.

use super::{EventBatch, Stage};

/// Numbers events in output order.
#[derive(Default)]
pub struct Sequencer {
    next: u64,
}

impl Stage for Sequencer {
    fn name(&self) -> &'static str {
        "sequence"
    }

    fn process(&mut self, batch: &mut EventBatch) {
        for event in &mut batch.events {
            event.global_sequence = self.next;
            self.next += 1;
        }
    }
}
