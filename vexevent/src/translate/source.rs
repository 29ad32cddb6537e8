//! The kernel as a pipeline source: batches the capture thread drained and merged, translated
//! into semantic events, with the merge's watermark. A reload sends the operation types to
//! report (`HashSet<OpKind>`).

use std::{collections::HashSet, sync::Arc, time::Duration};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use vexevent_common::OpKind;

use super::Translator;
use crate::{
    capture::Batch,
    pipeline::{EventBatch, Poll, Source, Update, settings_for},
    telemetry::Counters,
};

/// Captured batches in, semantic events out.
pub struct KernelSource {
    batches: Receiver<Batch>,
    translator: Translator,
    counters: Arc<Counters>,
}

impl KernelSource {
    #[must_use]
    pub fn new(batches: Receiver<Batch>, translator: Translator, counters: Arc<Counters>) -> Self {
        Self { batches, translator, counters }
    }
}

impl Source for KernelSource {
    fn name(&self) -> &'static str {
        "kernel"
    }

    fn next(&mut self, timeout: Duration, batch: &mut EventBatch) -> Poll {
        match self.batches.recv_timeout(timeout) {
            Ok(captured) => {
                for record in &captured.records {
                    self.translator.translate_captured(record, &mut batch.events, &self.counters);
                }
                batch.watermark_ns = captured.watermark_ns;
                Poll::Ready
            }
            Err(RecvTimeoutError::Timeout) => Poll::Idle,
            Err(RecvTimeoutError::Disconnected) => Poll::Ended,
        }
    }

    fn reconfigure(&mut self, update: Update) {
        if let Some(ops) = settings_for::<HashSet<OpKind>>("kernel", update) {
            self.translator.set_ops(ops);
        }
    }
}
