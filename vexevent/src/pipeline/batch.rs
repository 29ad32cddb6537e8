//! The unit stages exchange: events in output order, the watermark below which no older event
//! can still come, and each event's JSON line, made once for every output that needs it.

use std::sync::Arc;

use crate::{
    event::SemanticEvent,
    telemetry::{Counters, add},
};

/// A batch of events on its way through the stages.
#[derive(Default)]
pub struct EventBatch {
    pub events: Vec<SemanticEvent>,
    /// Kernel time (`CLOCK_MONOTONIC`, ns) below which every event has been released: a window
    /// ending before it can close. Sources set it; a stage that holds events back lowers it.
    pub watermark_ns: u64,
    /// The JSON line of each event, once an output asked for them (cleared with the events).
    lines: Vec<Arc<str>>,
}

impl EventBatch {
    /// The events as JSON lines, serialized on the first call and shared by every output after
    /// it. Stages that change events come before the outputs.
    pub fn json_lines(&mut self, counters: &Counters) -> (&[SemanticEvent], &[Arc<str>]) {
        if self.lines.len() != self.events.len() {
            self.lines = to_json_lines(&self.events, counters);
        }
        (&self.events, &self.lines)
    }

    /// Empties the batch for reuse (keeps the allocations).
    pub fn clear(&mut self) {
        self.events.clear();
        self.lines.clear();
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.events.len()
    }
}

/// Serializes events once, for every sink and the stream: each line is written into one reused
/// buffer and then shared (one allocation per event). An event that cannot be serialized (none
/// can today) becomes a line saying so, counted in `sink_errors`, so it is never lost silently.
pub fn to_json_lines(events: &[SemanticEvent], counters: &Counters) -> Vec<Arc<str>> {
    let mut buffer = Vec::with_capacity(1024);
    events
        .iter()
        .map(|event| {
            buffer.clear();
            match super::json::write_event(event, &mut buffer) {
                // SAFETY: the writer writes valid UTF-8 (JSON of UTF-8 text) when it succeeds.
                Ok(()) => Arc::from(unsafe { std::str::from_utf8_unchecked(&buffer) }),
                Err(error) => {
                    add(&counters.sink_errors, 1);
                    let message =
                        serde_json::json!({ "event_id": event.event_id, "serialization_error": error.to_string() });
                    Arc::from(message.to_string())
                }
            }
        })
        .collect()
}
