//! A sink's worker thread: takes batches from the sink's queue (urgent events first), delivers
//! them, and while the destination fails retries the same batch with exponential backoff, so a
//! destination that recovers gets every batch once and in order. Every event ends delivered or
//! counted as dropped with its reason.

use std::{
    sync::{Arc, OnceLock, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use super::{
    DeliveryError,
    queue::{Queued, SinkQueue},
};
use crate::telemetry::{Counters, SinkCounters, add, monotonic_ns};

/// Something that delivers batches of serialized events.
pub trait Deliver: Send {
    /// Delivers the batch in order; on error nothing of it counts as delivered and the whole
    /// batch is offered again.
    ///
    /// # Errors
    /// Why the destination did not take the batch.
    fn deliver(&mut self, batch: &[Queued]) -> Result<(), DeliveryError>;
}

/// How a worker batches and retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Most events per batch.
    pub batch_events: usize,
    /// How long to wait for a batch to fill once it has an event.
    pub linger: Duration,
    /// First retry delay; doubles per failed attempt up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Failed attempts after which a batch is dropped (counted); 0 retries until shutdown.
    pub max_retries: u32,
}

/// When a sink that is down stops retrying: set once, when vexevent stops.
pub type GiveUpAt = Arc<OnceLock<Instant>>;

/// Everything one worker thread owns.
pub struct Worker {
    pub name: String,
    pub queue: Arc<SinkQueue>,
    pub destination: Box<dyn Deliver>,
    pub delivery: Delivery,
    pub sink: Arc<SinkCounters>,
    pub counters: Arc<Counters>,
    pub give_up_at: GiveUpAt,
}

impl Worker {
    /// Runs until the queue is closed and empty (or abandoned at shutdown).
    pub fn run(mut self) {
        let mut batch = Vec::with_capacity(self.delivery.batch_events);
        while self.queue.take(self.delivery.batch_events, self.delivery.linger, &mut batch) {
            self.sink.queued.fetch_sub(batch.len() as u64, Ordering::Relaxed);
            if !self.deliver_with_retries(&batch) {
                return;
            }
            batch.clear();
        }
    }

    /// Delivers one batch, retrying; false when the worker gave up for good (shutdown).
    fn deliver_with_retries(&mut self, batch: &[Queued]) -> bool {
        let mut delay = self.delivery.retry_initial;
        let mut attempts = 0u32;
        loop {
            match self.destination.deliver(batch) {
                Ok(()) => {
                    self.delivered(batch);
                    return true;
                }
                Err(error) => {
                    attempts += 1;
                    add(&self.sink.failed_attempts, 1);
                    if !self.sink.down.swap(true, Ordering::Relaxed) {
                        tracing::error!(sink = %self.name, %error, "sink is down; retrying with backoff");
                    }
                    let n = batch.len() as u64;
                    if self.delivery.max_retries > 0 && attempts > self.delivery.max_retries {
                        tracing::warn!(sink = %self.name, events = n, attempts, "dropping a batch after its last retry");
                        add(&self.sink.dropped_failed, n);
                        add(&self.counters.sink_errors, n);
                        return true;
                    }
                    let now = Instant::now();
                    if let Some(&give_up) = self.give_up_at.get() {
                        if now >= give_up {
                            let abandoned = self.queue.abandon() as u64;
                            self.sink.queued.fetch_sub(abandoned, Ordering::Relaxed);
                            let left = n + abandoned;
                            tracing::error!(sink = %self.name, events = left, "sink still down at shutdown; its queued events are dropped");
                            add(&self.sink.dropped_shutdown, left);
                            add(&self.counters.sink_errors, left);
                            return false;
                        }
                        delay = delay.min(give_up - now);
                    }
                    thread::sleep(delay);
                    delay = (delay * 2).clamp(Duration::from_millis(1), self.delivery.retry_max);
                }
            }
        }
    }

    fn delivered(&self, batch: &[Queued]) {
        let n = batch.len() as u64;
        add(&self.sink.delivered, n);
        add(&self.sink.batches, 1);
        if self.sink.down.swap(false, Ordering::Relaxed) {
            tracing::info!(sink = %self.name, "sink recovered");
        }
        let now = monotonic_ns();
        self.counters.record_latencies(batch.iter().map(|q| now.saturating_sub(q.monotonic_ns) / 1_000));
    }
}
