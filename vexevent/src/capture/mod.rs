//! The only code that reads the ring buffers: drains them in batches on a timer (with an early
//! wakeup from the kernel when they fill), validates each record and hands batches on.

mod decode;
mod sequence;

pub use decode::{DecodeError, RawRecord, decode, encode};
pub use sequence::SequenceTracker;

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use crossbeam_channel::Sender;

use crate::telemetry::{Counters, add};

/// A batch of records drained together.
pub type Batch = Vec<RawRecord>;

/// Drains one ring buffer.
pub struct RingDrainer {
    ring: RingBuf<MapData>,
    sequences: SequenceTracker,
    counters: Arc<Counters>,
}

impl RingDrainer {
    #[must_use]
    pub fn new(ring: RingBuf<MapData>, counters: Arc<Counters>) -> Self {
        Self { ring, sequences: SequenceTracker::default(), counters }
    }

    /// Reads every record available now into `batch`.
    pub fn drain_into(&mut self, batch: &mut Batch) {
        let mut received = 0;
        while let Some(item) = self.ring.next() {
            received += 1;
            match decode(&item) {
                Ok(record) => {
                    self.sequences.observe(record.header.cpu, record.header.seq, &self.counters);
                    batch.push(record);
                }
                Err(error) => {
                    tracing::debug!(%error, "rejected a ring record");
                    self.counters.record_decode_error(error.reason());
                }
            }
        }
        add(&self.counters.records_received, received);
    }

    /// Waits until the kernel signals data or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        let mut poll_fd = libc::pollfd { fd: self.ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&raw mut poll_fd, 1, millis) };
    }

    /// Drains every `interval` (or earlier when the kernel wakes us) and sends non-empty batches,
    /// blocking when the channel is full (backpressure: records wait in the ring). Once `stop`
    /// is set (after the probes are detached) it drains what is left and returns.
    pub fn run(mut self, interval: Duration, stop: &AtomicBool, out: &Sender<Batch>) {
        loop {
            let stopping = stop.load(Ordering::Acquire);
            let mut batch = Vec::new();
            self.drain_into(&mut batch);
            if !batch.is_empty() && out.send(batch).is_err() {
                tracing::warn!("the pipeline stopped before capture; leaving the ring");
                return;
            }
            if stopping {
                return;
            }
            self.wait(interval);
        }
    }
}
