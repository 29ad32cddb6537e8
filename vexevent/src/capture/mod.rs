//! The only code that reads the ring buffers: waits for the kernel's wakeup (sent when a ring goes
//! from empty to non-empty, or fills past a threshold), lets a short batch window pass, drains
//! every shard, validates each record, merges the shards by timestamp and hands ordered batches on.

mod decode;
mod fill;
mod merge;
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

use aya::maps::{MapData, PerCpuArray, RingBuf};
use crossbeam_channel::Sender;
use vexevent_common::{OpKind, PendingLoss};

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
    counters: Arc<Counters>,
}

impl RingDrainer {
    /// A drainer of `rings`; `one_cpu_per_shard` when each ring is a single CPU's (its records
    /// then arrive in timestamp order).
    #[must_use]
    pub fn new(
        rings: Vec<RingBuf<MapData>>,
        pending_loss: PerCpuArray<MapData, PendingLoss>,
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
        Self { rings, fills, pending_loss, sequences: SequenceTracker::default(), merger, counters }
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

    /// Reads every record available now from every shard into the merge.
    fn drain(&mut self) {
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
    }

    /// Waits until a ring has data or `timeout` passes.
    fn wait(&self, timeout: Duration) {
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
        unsafe { libc::ppoll(fds.as_mut_ptr(), count, &raw const timeout, std::ptr::null()) };
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
                // Records held for ordering are due within the reorder window.
                let timeout = if self.merger.is_empty() { IDLE_POLL } else { settings.reorder_window };
                self.wait(timeout);
                if !settings.batch_window.is_zero() {
                    std::thread::sleep(settings.batch_window);
                }
            }
            let drain_started = monotonic_ns();
            self.gauge_fill();
            self.drain();
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
