//! The pipeline thread: translate, correlate, filter, route, and hand each event to its sinks'
//! queues and to the live stream, in output order; reloaded filters and routes take over between
//! two batches.

use std::{sync::Arc, time::Duration};

use crossbeam_channel::Receiver;

use super::{Routing, Switch};
use crate::{
    capture::Batch,
    correlate::Correlator,
    event::{Priority, SemanticEvent},
    http::Broadcaster,
    sinks::{Queued, Sinks, to_json_lines},
    telemetry::{Counters, add, monotonic_ns},
    translate::Translator,
};

/// What the pipeline thread owns.
pub(super) struct Stages {
    pub(super) translator: Translator,
    pub(super) correlator: Correlator,
    pub(super) routing: Routing,
    pub(super) sinks: Sinks,
    /// Events of the current batch for each sink (kept to reuse the allocations).
    pub(super) per_sink: Vec<Vec<Queued>>,
}

impl Stages {
    /// Filters the events ready for output, numbers them in output order, serializes each once
    /// and hands it to the outputs its routes name, and to the live stream.
    fn output(
        &mut self,
        ready: &mut Vec<SemanticEvent>,
        next_sequence: &mut u64,
        stream: Option<&Broadcaster>,
        counters: &Counters,
    ) {
        let filter = &self.routing.filter;
        if !filter.is_empty() {
            let before = ready.len();
            ready.retain(|event| filter.check(event).is_some());
            add(&counters.filtered_expression, (before - ready.len()) as u64);
        }
        if ready.is_empty() {
            return;
        }
        for event in ready.iter_mut() {
            event.global_sequence = *next_sequence;
            *next_sequence += 1;
        }
        let lines = to_json_lines(ready, counters);
        let sinks = &self.sinks;
        let up = |index: usize| sinks.is_up(index);
        let mut targets = Vec::new();
        self.per_sink.resize_with(sinks.len(), Vec::new);
        for (event, line) in ready.iter().zip(&lines) {
            self.routing.router.route(event, &up, &mut targets);
            if targets.is_empty() {
                continue;
            }
            let queued = Queued {
                line: Arc::clone(line),
                urgent: event.priority <= Priority::High,
                sequence: event.global_sequence,
                monotonic_ns: event.timestamp.monotonic_ns,
            };
            for &target in &targets {
                self.per_sink[target].push(queued.clone());
            }
        }
        for (index, queued) in self.per_sink.iter_mut().enumerate() {
            if !queued.is_empty() {
                sinks.offer(index, queued.drain(..), counters);
            }
        }
        add(&counters.events_unrouted, self.routing.router.take_unrouted());
        counters.outputs.add_route_matches(self.routing.router.take_matched());
        if let Some(stream) = stream {
            stream.publish(ready, &lines, counters);
        }
        ready.clear();
    }
}

/// The pipeline thread: translate each batch, join the boundaries of each operation, then
/// filter, route and hand the events to the outputs, until capture ends; switches to reloaded
/// filters and routes between batches. Returns the outputs, to be flushed.
pub(super) fn run_pipeline(
    batches: &Receiver<Batch>,
    reloads: &Receiver<Switch>,
    mut stages: Stages,
    stream: Option<&Broadcaster>,
    counters: &Counters,
) -> Sinks {
    let mut translated = Vec::new();
    let mut ready = Vec::new();
    let mut next_sequence = 0u64;
    loop {
        if let Ok(Switch { routing, switched }) = reloads.try_recv() {
            stages.translator.set_ops(routing.ops.clone());
            stages.routing = routing;
            let _ = switched.send(());
        }
        // Wake up at least every join window, so that pending FUSE requests are released.
        match batches.recv_timeout(correlator_tick()) {
            Ok(batch) => {
                translated.clear();
                for captured in &batch {
                    stages.translator.translate_captured(captured, &mut translated, counters);
                }
                let arrived = monotonic_ns();
                for event in translated.drain(..) {
                    stages.correlator.push(event, arrived, counters);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        stages.correlator.drain(monotonic_ns(), &mut ready, counters);
        stages.output(&mut ready, &mut next_sequence, stream, counters);
    }
    stages.correlator.flush(&mut ready, counters);
    stages.output(&mut ready, &mut next_sequence, stream, counters);
    stages.sinks
}

/// How often the pipeline checks for FUSE requests whose join window has passed.
const fn correlator_tick() -> Duration {
    Duration::from_millis(5)
}
