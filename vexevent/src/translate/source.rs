//! The kernel as a pipeline source: batches drained from the rings and merged (on the pipeline
//! thread itself, see [`LiveCapture`](crate::capture::LiveCapture)), translated into semantic
//! events, with the merge's watermark. A reload sends the operation types to
//! report (`HashSet<OpKind>`).

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use vexevent_common::OpKind;

use super::Translator;
use crate::{
    capture::{Batch, Batches, Next},
    pipeline::{EventBatch, Poll, Source, Update, settings_for},
    telemetry::{Counters, StageCounters},
};

/// Captured batches in, semantic events out.
pub struct KernelSource {
    batches: Box<dyn Batches>,
    /// The batch being translated (its allocation reused).
    captured: Batch,
    translator: Translator,
    counters: Arc<Counters>,
    /// This source's counters (translation time).
    stage: Arc<StageCounters>,
}

/// The source's name in the stage graph.
const NAME: &str = "kernel";

impl KernelSource {
    #[must_use]
    pub fn new(batches: impl Batches + 'static, translator: Translator, counters: Arc<Counters>) -> Self {
        let stage = counters.stages.register(NAME);
        Self { batches: Box::new(batches), captured: Batch::default(), translator, counters, stage }
    }
}

impl Source for KernelSource {
    fn name(&self) -> &'static str {
        NAME
    }

    fn next(&mut self, timeout: Duration, batch: &mut EventBatch) -> Poll {
        match self.batches.next_batch(timeout, &mut self.captured) {
            Next::Ready => {
                let started = Instant::now();
                for record in &self.captured.records {
                    self.translator.translate_captured(record, &mut batch.events, &self.counters);
                }
                batch.watermark_ns = self.captured.watermark_ns;
                self.stage.busy_since(started);
                Poll::Ready
            }
            Next::Idle => Poll::Idle,
            Next::Ended => Poll::Ended,
        }
    }

    fn reconfigure(&mut self, update: Update) {
        if let Some(ops) = settings_for::<HashSet<OpKind>>("kernel", update) {
            self.translator.set_ops(ops);
        }
    }
}
