//! The only code that reads the ring buffers: drains every shard on a short timer while records
//! come (waits for the kernel's wakeup once nothing came for a while, see `pace`), validates each
//! record, merges the shards by timestamp and hands ordered batches on.

mod decode;
mod fill;
mod merge;
mod pace;
mod sequence;

pub use decode::{
    Body, Captured, DecodeError, GapRecord, IoctlCall, RawRecord, SyscallArgs, decode, encode, encode_gap,
    encode_kernel, syscall_body,
};
pub use merge::Merger;
pub use sequence::SequenceTracker;

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use crossbeam_channel::Sender;
use vexevent_common::{OpKind, PendingLoss};

use self::pace::Pace;
use crate::telemetry::{Counters, add, monotonic_ns};

/// Records drained and merged together, in timestamp order.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Captured>,
    /// Kernel time (`CLOCK_MONOTONIC`, ns) below which every record has been released: no
    /// record stamped earlier can follow (late records excepted, which are counted).
    pub watermark_ns: u64,
}

/// Longest sleep when nothing arrives (a safety net: the kernel wakes us when data lands).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Timer slack of the capture thread, in nanoseconds.
const TIMER_SLACK_NS: libc::c_ulong = 1_000;

/// How the drainer batches and orders.
#[derive(Clone, Copy, Debug)]
pub struct DrainSettings {
    /// Time to let records accumulate after a wakeup before draining.
    pub batch_window: Duration,
    /// Bound on how late a record may arrive relative to another shard's (see `merge`).
    pub reorder_window: Duration,
    /// Batches that may wait for the pipeline before capture blocks (records then wait in the
    /// rings).
    pub channel_batches: usize,
}

/// Drains the shards' ring buffers.
pub struct RingDrainer {
    rings: Vec<RingBuf<MapData>>,
    /// Each ring's positions, for the fill gauge (None where they cannot be mapped).
    fills: Vec<Option<fill::RingFill>>,
    pending_loss: PerCpuArray<MapData, PendingLoss>,
    sequences: SequenceTracker,
    merger: Merger,
    pace: Pace,
    counters: Arc<Counters>,
}

impl RingDrainer {
    /// A drainer of `rings`; `one_cpu_per_shard` when each ring is a single CPU's (its records
    /// then arrive in timestamp order); `polling` is the probes' flag of whether the drainer
    /// polls (see `pace`).
    #[must_use]
    pub fn new(
        rings: Vec<RingBuf<MapData>>,
        pending_loss: PerCpuArray<MapData, PendingLoss>,
        polling: Array<MapData, u32>,
        settings: &DrainSettings,
        one_cpu_per_shard: bool,
        counters: Arc<Counters>,
    ) -> Self {
        let window_ns = u64::try_from(settings.reorder_window.as_nanos()).unwrap_or(u64::MAX);
        let merger = Merger::new(rings.len(), one_cpu_per_shard, window_ns);
        let fills = rings
            .iter()
            .map(|ring| {
                fill::RingFill::new(ring.as_raw_fd())
                    .inspect_err(|error| tracing::warn!(%error, "cannot map a ring's positions; its fill gauge stays 0"))
                    .ok()
            })
            .collect();
        let pace = Pace::new(polling, settings.batch_window);
        Self { rings, fills, pending_loss, sequences: SequenceTracker::default(), merger, pace, counters }
    }

    /// After the probes are detached and the rings drained: reports, as gap records, the losses
    /// no later record of their CPU could report.
    fn report_pending_losses(&mut self) {
        let Ok(per_cpu) = self.pending_loss.get(&0, 0) else {
            tracing::warn!("cannot read the pending-loss map; unreported losses stay unaccounted");
            return;
        };
        let now = monotonic_ns();
        for (cpu, pending) in per_cpu.iter().enumerate() {
            if pending.total == 0 {
                continue;
            }
            let by_kind = pending
                .by_kind
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .filter_map(|(kind, n)| {
                    OpKind::try_from(u32::try_from(kind).ok()?).ok().map(|op| (op, u64::from(*n)))
                })
                .collect();
            let cpu = u32::try_from(cpu).unwrap_or(u32::MAX);
            let gap = GapRecord {
                cpu,
                first_seq: pending.first_seq,
                count: pending.total,
                by_kind,
                reported_ns: now,
                lost_from_ns: pending.first_ns,
                lost_to_ns: pending.last_ns,
            };
            self.sequences.observe_reported_gap(cpu, gap.first_seq, gap.count, &self.counters);
            self.merger.push(0, Captured::Gap(gap));
        }
    }

    /// Records how many bytes wait in each ring (before a drain).
    fn gauge_fill(&self) {
        for (shard, ring) in self.fills.iter().enumerate() {
            if let Some(ring) = ring {
                self.counters.rings.set(shard, ring.used(), ring.size());
            }
        }
    }

    /// Reads every record available now from every shard into the merge; how many.
    fn drain(&mut self) -> u64 {
        let mut received = 0;
        for (shard, ring) in self.rings.iter_mut().enumerate() {
            while let Some(item) = ring.next() {
                received += 1;
                match decode(&item) {
                    Ok(captured) => {
                        match &captured {
                            Captured::Record(record) => {
                                self.sequences.observe(record.header.cpu, record.header.seq, &self.counters);
                            }
                            Captured::Gap(gap) => self.sequences.observe_reported_gap(
                                gap.cpu,
                                gap.first_seq,
                                gap.count,
                                &self.counters,
                            ),
                        }
                        self.merger.push(shard, captured);
                    }
                    Err(error) => {
                        tracing::debug!(%error, "rejected a ring record");
                        self.counters.record_decode_error(error.reason());
                    }
                }
            }
        }
        add(&self.counters.records_received, received);
        received
    }

    /// Waits until a ring has data or `timeout` passes; whether one has.
    fn wait(&self, timeout: Duration) -> bool {
        let mut fds: Vec<libc::pollfd> = self
            .rings
            .iter()
            .map(|ring| libc::pollfd { fd: ring.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // ppoll: microsecond timeouts (poll's are whole milliseconds, too coarse for the windows).
        let timeout = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        };
        let count = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `fds` is a valid array of `count` pollfds and `timeout` a valid timespec for the
        // duration of the call; no signal mask change.
        unsafe { libc::ppoll(fds.as_mut_ptr(), count, &raw const timeout, std::ptr::null()) > 0 }
    }

    /// Waits for the next drain: the timer period while polling; else the kernel's wakeup (or
    /// the reorder window while records are held for ordering, or [`IDLE_POLL`]), then the batch
    /// window.
    fn wait_for_drain(&mut self, batch_window: Duration, reorder_window: Duration) {
        if self.pace.polling() {
            std::thread::sleep(self.pace.period());
            return;
        }
        let timeout = if self.merger.is_empty() { IDLE_POLL } else { reorder_window };
        if self.wait(timeout) {
            add(&self.counters.drainer_wakeups, 1);
            // From now on the probes let the timer drain their records.
            self.pace.busy();
            if !batch_window.is_zero() {
                std::thread::sleep(batch_window);
            }
        }
    }

    /// Drains until `stop` is set (after the probes are detached), then drains what is left,
    /// releases everything held for ordering and returns. Sending blocks when the channel is full
    /// (backpressure: records wait in the rings).
    pub fn run(mut self, settings: &DrainSettings, stop: &AtomicBool, out: &Sender<Batch>) {
        // Sleeps of a few hundred microseconds should not be stretched by the default 50 us
        // timer slack.
        // SAFETY: prctl(PR_SET_TIMERSLACK) only affects this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS) };
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if !stopping {
                self.wait_for_drain(settings.batch_window, settings.reorder_window);
            }
            let drain_started = monotonic_ns();
            self.gauge_fill();
            let received = self.drain();
            self.pace.drained(received, drain_started);
            let mut records = Vec::new();
            if stopping {
                self.report_pending_losses();
                self.merger.flush(&mut records);
            } else {
                self.merger.release(drain_started, &mut records);
            }
            add(&self.counters.records_late, std::mem::take(&mut self.merger.late));
            let batch = Batch { records, watermark_ns: self.merger.watermark() };
            if !batch.records.is_empty() && out.send(batch).is_err() {
                tracing::warn!("the pipeline stopped before capture; leaving the rings");
                return;
            }
            if stopping {
                return;
            }
        }
    }
}
