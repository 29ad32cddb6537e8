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
use crossbeam_channel::{Receiver, RecvTimeoutError};
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

/// Most records taken from one ring per drain when its shard is one CPU (bounds a batch, and so
/// the memory and the time of one pass through the stages, when the consumer is behind; the
/// rest waits in the ring for the next drain, which follows at once).
const DRAIN_MAX_PER_SHARD: usize = 4096;
/// Timer slack of the thread draining the rings, in nanoseconds.
const TIMER_SLACK_NS: libc::c_ulong = 1_000;

/// How the drainer batches and orders.
#[derive(Clone, Copy, Debug)]
pub struct DrainSettings {
    /// Time to let records accumulate after a wakeup before draining.
    pub batch_window: Duration,
    /// Bound on how late a record may arrive relative to another shard's (see `merge`).
    pub reorder_window: Duration,
    /// The draining (pipeline) thread runs at nice minus this (0: not changed).
    pub priority_boost: u8,
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
    batch_window: Duration,
    reorder_window: Duration,
    /// Each shard is one CPU (its records arrive in timestamp order).
    ordered_shards: bool,
    /// The last drain left records in a ring: the next one follows at once.
    backlog: bool,
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
        Self {
            rings,
            fills,
            pending_loss,
            sequences: SequenceTracker::default(),
            merger,
            pace: Pace::new(polling, settings.batch_window),
            counters,
            batch_window: settings.batch_window,
            reorder_window: settings.reorder_window,
            ordered_shards: one_cpu_per_shard,
            backlog: false,
        }
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

    /// Reads the records available now from every shard into the merge (up to
    /// [`DRAIN_MAX_PER_SHARD`] of each ordered shard); how many, and whether a shard has more.
    fn drain(&mut self) -> (u64, bool) {
        let mut received = 0;
        let mut backlog = false;
        let limit = if self.ordered_shards { DRAIN_MAX_PER_SHARD } else { usize::MAX };
        for (shard, ring) in self.rings.iter_mut().enumerate() {
            let mut taken = 0;
            let full = loop {
                if taken == limit {
                    break true;
                }
                let Some(item) = ring.next() else { break false };
                taken += 1;
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
            };
            self.merger.set_backlogged(shard, full);
            backlog |= full;
        }
        add(&self.counters.records_received, received);
        (received, backlog)
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

    /// One drain into `batch` (emptied first): waits up to `idle` for the kernel's wakeup (less
    /// while records are held for ordering), lets the batch window pass once records are there,
    /// drains every shard and releases what the watermark allows; after a drain that left
    /// records in a ring, drains again at once. Once `stopping` (the probes are detached),
    /// drains everything left, reports the losses still pending and releases everything held.
    fn step(&mut self, idle: Duration, stopping: bool, batch: &mut Batch) {
        batch.records.clear();
        if stopping {
            self.gauge_fill();
            while self.drain().1 {}
            self.report_pending_losses();
            self.merger.flush(&mut batch.records);
            self.finish_step(batch);
            return;
        }
        if !self.backlog {
            self.wait_for_drain(idle);
        }
        let drain_started = monotonic_ns();
        self.gauge_fill();
        let (received, backlog) = self.drain();
        self.backlog = backlog;
        self.pace.drained(received, drain_started);
        self.merger.release(drain_started, &mut batch.records);
        self.finish_step(batch);
    }

    /// Waits for the next drain: the timer period while polling (at most `idle`); else the
    /// kernel's wakeup (at most `idle`, less while records are held for ordering: they are due
    /// within the reorder window), then the batch window.
    fn wait_for_drain(&mut self, idle: Duration) {
        if self.pace.polling() {
            std::thread::sleep(self.pace.period().min(idle));
            return;
        }
        let timeout = if self.merger.is_empty() { idle } else { self.reorder_window.min(idle) };
        if self.wait(timeout) {
            add(&self.counters.drainer_wakeups, 1);
            // From now on the probes let the timer drain their records.
            self.pace.busy();
            if !self.batch_window.is_zero() {
                std::thread::sleep(self.batch_window);
            }
        }
    }

    fn finish_step(&mut self, batch: &mut Batch) {
        add(&self.counters.records_late, std::mem::take(&mut self.merger.late));
        batch.watermark_ns = self.merger.watermark();
    }
}

/// What the next batch of captured records is.
pub enum Next {
    /// A batch (possibly without records, with an advanced watermark).
    Ready,
    /// Nothing came before the timeout.
    Idle,
    /// Capture has ended: nothing more will come.
    Ended,
}

/// Where the kernel source takes its captured batches from: the rings themselves
/// ([`LiveCapture`], on the pipeline thread) or batches recorded earlier (a channel: the replay
/// test, the stages benchmark).
pub trait Batches: Send {
    /// Waits up to `timeout` for the next batch and puts it in `batch` (whose allocation is
    /// reused).
    fn next_batch(&mut self, timeout: Duration, batch: &mut Batch) -> Next;
}

impl Batches for Receiver<Batch> {
    fn next_batch(&mut self, timeout: Duration, batch: &mut Batch) -> Next {
        match self.recv_timeout(timeout) {
            Ok(received) => {
                *batch = received;
                Next::Ready
            }
            Err(RecvTimeoutError::Timeout) => Next::Idle,
            Err(RecvTimeoutError::Disconnected) => Next::Ended,
        }
    }
}

/// The rings drained on the thread that translates them (the pipeline's), so that a batch
/// costs no hand-off between threads: the rings are the queue, and while the pipeline is busy
/// records wait there (backpressure; a full ring is counted and reported as a gap). Ends after
/// the drain that follows `stop` (set once the probes are detached).
pub struct LiveCapture {
    drainer: RingDrainer,
    stop: Arc<AtomicBool>,
    ended: bool,
    timer_slack_set: bool,
}

impl LiveCapture {
    #[must_use]
    pub fn new(drainer: RingDrainer, stop: Arc<AtomicBool>) -> Self {
        Self { drainer, stop, ended: false, timer_slack_set: false }
    }
}

impl Batches for LiveCapture {
    fn next_batch(&mut self, timeout: Duration, batch: &mut Batch) -> Next {
        if self.ended {
            return Next::Ended;
        }
        if !std::mem::replace(&mut self.timer_slack_set, true) {
            // Sleeps of a few hundred microseconds should not be stretched by the default 50 us
            // timer slack.
            // SAFETY: prctl(PR_SET_TIMERSLACK) only affects the calling thread.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS) };
        }
        let stopping = self.stop.load(Ordering::Acquire);
        self.drainer.step(timeout, stopping, batch);
        self.ended = stopping;
        if batch.records.is_empty() && !stopping { Next::Idle } else { Next::Ready }
    }
}
