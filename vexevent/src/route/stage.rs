//! The route stage on the pipeline: each event's JSON line goes to the queues of the outputs
//! its routes name (serialized once, shared), in output order. A reload sends a new [`Router`];
//! the outputs stay. At the end, the outputs deliver what they hold and stop.

use std::sync::Arc;

use super::Router;
use crate::{
    event::Priority,
    pipeline::{EventBatch, Stage, Update, settings_for},
    sinks::{Queued, Sinks},
    telemetry::{Counters, add},
};

/// Routes events to the running outputs.
pub struct RouteStage {
    router: Router,
    sinks: Sinks,
    /// Events of the current batch for each output (kept to reuse the allocations).
    per_sink: Vec<Vec<Queued>>,
    targets: Vec<usize>,
    counters: Arc<Counters>,
}

impl RouteStage {
    #[must_use]
    pub fn new(router: Router, sinks: Sinks, counters: Arc<Counters>) -> Self {
        let per_sink = vec![Vec::new(); sinks.len()];
        Self { router, sinks, per_sink, targets: Vec::new(), counters }
    }
}

impl Stage for RouteStage {
    fn name(&self) -> &'static str {
        "route"
    }

    fn process(&mut self, batch: &mut EventBatch) {
        if batch.is_empty() {
            return;
        }
        let (events, lines) = batch.json_lines(&self.counters);
        let sinks = &self.sinks;
        let up = |index: usize| sinks.is_up(index);
        for (event, line) in events.iter().zip(lines) {
            self.router.route(event, &up, &mut self.targets);
            if self.targets.is_empty() {
                continue;
            }
            let queued = Queued {
                line: Arc::clone(line),
                urgent: event.priority <= Priority::High,
                sequence: event.global_sequence,
                monotonic_ns: event.timestamp.monotonic_ns,
            };
            // Targets are indices of the outputs the router was built for (these).
            for &target in &self.targets {
                if let Some(queue) = self.per_sink.get_mut(target) {
                    queue.push(queued.clone());
                }
            }
        }
        for (index, queued) in self.per_sink.iter_mut().enumerate() {
            if !queued.is_empty() {
                sinks.offer(index, queued.drain(..), &self.counters);
            }
        }
        add(&self.counters.events_unrouted, self.router.take_unrouted());
        self.counters.outputs.add_route_matches(self.router.take_matched());
    }

    fn reconfigure(&mut self, update: Update) {
        if let Some(router) = settings_for::<Router>("route", update) {
            self.router = router;
        }
    }

    fn finish(self: Box<Self>) {
        self.sinks.finish();
    }
}
