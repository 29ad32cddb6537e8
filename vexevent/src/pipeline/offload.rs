//! A stage whose work is asynchronous (a network client, a consensus log) runs on its own tokio
//! runtime, on a thread of its own, fed a copy of each batch through a bounded channel: the
//! pipeline thread never waits on the network unless the channel's policy says to (`block`);
//! with `drop-newest` a full channel drops the batch's events and counts them under the stage's
//! name (`dropped`).

use std::{future::Future, sync::Arc, thread::JoinHandle};

use tokio::sync::mpsc;

use super::{EventBatch, Stage, StageCounters, WhenFull};
use crate::{
    event::SemanticEvent,
    telemetry::{Counters, add},
};

/// Why an asynchronous stage could not start.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error(
        "stage {stage}: when_full = \"drop-oldest\" is not available for an asynchronous stage; use block or drop-newest"
    )]
    DropOldest { stage: &'static str },
    #[error("stage {stage}: cannot start its runtime thread: {source}")]
    Start {
        stage: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// An asynchronous consumer of events behind a bounded channel.
pub struct Offload {
    name: &'static str,
    sender: mpsc::Sender<Vec<SemanticEvent>>,
    when_full: WhenFull,
    counters: Arc<StageCounters>,
    thread: JoinHandle<()>,
}

impl Offload {
    /// Starts `consume` on a runtime of its own; it is called with each batch (in order) and
    /// awaited before the next. `capacity` batches may wait in the channel.
    ///
    /// # Errors
    /// `drop-oldest` (a channel cannot drop what it already holds), or a thread that cannot start.
    pub fn spawn<F, Fut>(
        name: &'static str,
        capacity: usize,
        when_full: WhenFull,
        counters: &Counters,
        mut consume: F,
    ) -> Result<Self, OffloadError>
    where
        F: FnMut(Vec<SemanticEvent>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        if when_full == WhenFull::DropOldest {
            return Err(OffloadError::DropOldest { stage: name });
        }
        let (sender, mut receiver) = mpsc::channel::<Vec<SemanticEvent>>(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name(format!("stage-{name}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(stage = name, %error, "cannot build the stage's runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    while let Some(events) = receiver.recv().await {
                        consume(events).await;
                    }
                });
            })
            .map_err(|source| OffloadError::Start { stage: name, source })?;
        Ok(Self { name, sender, when_full, counters: counters.stages.register(name), thread })
    }
}

impl Stage for Offload {
    fn name(&self) -> &'static str {
        self.name
    }

    fn process(&mut self, batch: &mut EventBatch) {
        if batch.is_empty() {
            return;
        }
        let events = batch.events.clone();
        let count = events.len() as u64;
        let sent = match self.when_full {
            WhenFull::Block => self.sender.blocking_send(events).is_ok(),
            WhenFull::DropNewest | WhenFull::DropOldest => self.sender.try_send(events).is_ok(),
        };
        if !sent {
            add(&self.counters.dropped, count);
        }
    }

    fn finish(self: Box<Self>) {
        let Self { name, sender, thread, .. } = *self;
        drop(sender);
        if thread.join().is_err() {
            tracing::error!(stage = name, "the stage's runtime thread panicked");
        }
    }
}
