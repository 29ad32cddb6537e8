//! Joins the boundaries of one operation: the FUSE requests a syscall caused (same thread, queued
//! between the syscall's enter and exit) are folded into the syscall's event, with a timeline of
//! where the time went, and not reported again on their own (unless raw boundary events are asked
//! for). A request no syscall claims (writeback, readahead, an asynchronous release, a caller
//! outside the watch) becomes an event of its own, once its thread has moved on or `window` has
//! passed since the request reached userspace (not since the kernel stamped it: a pipeline that
//! lags behind must not give up on callers whose records are right behind). Events leave in the
//! order they came in; a pending request holds back the events behind it for at most `window`.
//!
//! Tracepoint and kernel-function events that ran inside a traced syscall are listed in that
//! syscall's event too (`context.kernel_calls`, with their times), when the syscall's event
//! comes after them (it does: a call returns before its syscall exits, and the thread's records
//! come in order); they are not held back, and leave as events of their own.

mod config;

pub use config::{FuseConfig, FuseConfigError};

use std::{collections::HashMap, collections::VecDeque, sync::Arc, time::Duration};

use crate::{
    event::{KernelCall, Priority, SemanticEvent, Timeline},
    pipeline::{EventBatch, Stage},
    telemetry::{Counters, add, monotonic_ns},
};

/// Most calls kept per thread for the syscall they ran in (the oldest make room).
const CALLS_PER_THREAD: usize = 64;
/// Most threads with calls kept (a new thread's calls are not kept beyond it).
const CALL_THREADS: usize = 4096;
/// How long a call waits for its syscall's event after reaching this stage: far longer than
/// the consumer lags, so that a join does not depend on how records are batched (nothing is
/// held back meanwhile). A thread's next syscall event ends the wait either way.
const CALL_WAIT: Duration = Duration::from_secs(10);

/// Settings of the correlate stage.
#[derive(Clone, Copy, Debug)]
pub struct CorrelateOptions {
    /// Longest a FUSE request waits for the syscall that caused it.
    pub window: Duration,
    /// Report metadata requests (lookups, attribute reads, flushes) that no syscall claims.
    pub include_metadata: bool,
    /// Also report every FUSE request as an event of its own, joined or not.
    pub raw_boundaries: bool,
}

enum Slot {
    Ready(SemanticEvent),
    /// A FUSE request waiting for its caller, and when it reached this stage
    /// (`CLOCK_MONOTONIC`, ns).
    Pending(SemanticEvent, u64),
    /// A request that was folded into its caller's event.
    Joined,
}

/// The correlate stage.
pub struct Correlator {
    options: CorrelateOptions,
    queue: VecDeque<Slot>,
    /// Absolute position of `queue[0]`.
    base: u64,
    /// Requester thread -> absolute positions of its pending requests.
    pending: HashMap<u32, Vec<u64>>,
    /// Thread -> calls that ran inside a syscall whose event has not come yet: that syscall's
    /// enter time, the call, when it reached this stage.
    calls: HashMap<u32, VecDeque<(u64, KernelCall, u64)>>,
}

/// Whether the correlator has work with `event`: a FUSE request, or a call inside a syscall.
fn joins(event: &SemanticEvent) -> bool {
    is_fuse_request(event) || event.context.kernel.as_ref().is_some_and(|k| k.syscall_enter_ns.is_some())
}

/// A tracepoint or kernel-function event that ran inside a syscall: its thread, the syscall's
/// enter time, and the call as the syscall's event lists it.
fn kernel_call(event: &SemanticEvent) -> Option<(u32, u64, KernelCall)> {
    let kernel = event.context.kernel.as_ref()?;
    let syscall_enter = kernel.syscall_enter_ns?;
    let tid = event.process.as_ref()?.tid;
    let exit_ns = event.timestamp.monotonic_ns;
    let call = KernelCall {
        hook: kernel.hook.clone(),
        name: kernel.name.clone(),
        event_type: event.event_type,
        enter_ns: exit_ns.saturating_sub(event.duration_ns),
        exit_ns,
        ret: event.result.as_ref().map(|r| r.ret),
    };
    Some((tid, syscall_enter, call))
}

/// A FUSE request event, carrying its one request.
fn is_fuse_request(event: &SemanticEvent) -> bool {
    event.is_fuse_request() && event.context.fuse.len() == 1
}

impl Correlator {
    #[must_use]
    pub fn new(options: CorrelateOptions) -> Self {
        Self { options, queue: VecDeque::new(), base: 0, pending: HashMap::new(), calls: HashMap::new() }
    }

    /// Takes the next event of the stream, which reached userspace at `arrived_ns`
    /// (`CLOCK_MONOTONIC`).
    pub fn push(&mut self, mut event: SemanticEvent, arrived_ns: u64, counters: &Counters) {
        if is_fuse_request(&event) {
            if self.options.raw_boundaries {
                self.queue.push_back(Slot::Ready(event.clone()));
            }
            let tid = event.context.fuse[0].requester_tid;
            self.pending.entry(tid).or_default().push(self.base + self.queue.len() as u64);
            self.queue.push_back(Slot::Pending(event, arrived_ns));
            return;
        }
        if let Some((tid, syscall_enter, call)) = kernel_call(&event) {
            if self.calls.len() < CALL_THREADS || self.calls.contains_key(&tid) {
                let calls = self.calls.entry(tid).or_default();
                if calls.len() == CALLS_PER_THREAD {
                    calls.pop_front();
                }
                calls.push_back((syscall_enter, call, arrived_ns));
            }
        }
        // A syscall's event (a call inside it must not take its FUSE requests).
        if let (Some(tid), None) = (event.process.as_ref().map(|p| p.tid), &event.context.kernel) {
            if let Some(positions) = self.pending.remove(&tid) {
                self.claim(&mut event, positions, counters);
            }
            if let Some(calls) = self.calls.remove(&tid) {
                let exit = event.timestamp.monotonic_ns;
                let enter = exit.saturating_sub(event.duration_ns);
                // The thread's calls inside this syscall; older ones ran in a syscall whose event
                // did not come (out of the watch, filtered in the kernel) and are let go.
                event.context.kernel_calls.extend(
                    calls
                        .into_iter()
                        .filter(|(at, _, _)| (enter..=exit).contains(at))
                        .map(|(_, call, _)| call),
                );
                add(&counters.kernel_calls_joined, event.context.kernel_calls.len() as u64);
            }
        }
        self.queue.push_back(Slot::Ready(event));
    }

    /// Folds the pending requests of the event's thread that fall within its syscall into it;
    /// the thread's older requests had no caller and stand alone.
    fn claim(&mut self, event: &mut SemanticEvent, positions: Vec<u64>, counters: &Counters) {
        let exit = event.timestamp.monotonic_ns;
        let enter = exit.saturating_sub(event.duration_ns);
        for position in positions {
            let index = usize::try_from(position - self.base).unwrap_or(usize::MAX);
            let Some(slot) = self.queue.get_mut(index) else { continue };
            let Slot::Pending(mut request, _) = std::mem::replace(slot, Slot::Joined) else { continue };
            if (enter..=exit).contains(&request.context.fuse[0].queued_ns) {
                event.context.fuse.append(&mut request.context.fuse);
                add(&counters.fuse_joined, 1);
            } else {
                let resolved = self.standalone(request, counters);
                if let Some(slot) = self.queue.get_mut(index) {
                    *slot = resolved;
                }
            }
        }
        if let (Some(first), Some(last)) = (event.context.fuse.first(), event.context.fuse.last()) {
            let queued = first.queued_ns.max(enter);
            let ended = last.ended_ns.clamp(queued, exit);
            // The daemon's share, when its side of every request was seen.
            let requests = &event.context.fuse;
            let daemon_side: Option<Vec<(u64, u64, u64, u64)>> = requests
                .iter()
                .map(|r| Some((r.queued_ns, r.daemon_received_ns?, r.daemon_replied_ns?, r.ended_ns)))
                .collect();
            let sum = |part: fn(&(u64, u64, u64, u64)) -> u64| {
                daemon_side.as_ref().map(|sides| sides.iter().map(part).sum::<u64>())
            };
            event.timeline = Some(Timeline {
                syscall_enter_ns: enter,
                request_queued_ns: queued,
                request_ended_ns: ended,
                syscall_exit_ns: exit,
                before_fuse_ns: queued - enter,
                fuse_ns: ended - queued,
                after_fuse_ns: exit - ended,
                kernel_queue_ns: sum(|&(q, received, _, _)| received.saturating_sub(q)),
                daemon_ns: sum(|&(_, received, replied, _)| replied.saturating_sub(received)),
                reply_ns: sum(|&(_, _, replied, e)| e.saturating_sub(replied)),
                daemon_functions_ns: requests
                    .iter()
                    .filter_map(|r| r.daemon_functions_ns)
                    .reduce(|a, b| a + b),
            });
        }
    }

    /// A request no syscall claimed: reported on its own (with its error companion), or left out
    /// when it is metadata traffic nobody asked for.
    fn standalone(&self, request: SemanticEvent, counters: &Counters) -> Slot {
        if self.options.raw_boundaries {
            // Already reported as a raw boundary event.
            return Slot::Joined;
        }
        if request.priority == Priority::Background && !self.options.include_metadata {
            add(&counters.fuse_metadata_suppressed, 1);
            return Slot::Joined;
        }
        add(&counters.fuse_standalone, 1);
        Slot::Ready(request)
    }

    /// Moves the events that are ready, in order, to `out`. A request still pending at the front
    /// waits until `now_ns` (`CLOCK_MONOTONIC`) is `window` past its reply and past its arrival.
    pub fn drain(&mut self, now_ns: u64, out: &mut Vec<SemanticEvent>, counters: &Counters) {
        let window = u64::try_from(self.options.window.as_nanos()).unwrap_or(u64::MAX);
        // Calls whose syscall's event did not come are let go.
        let wait = u64::try_from(CALL_WAIT.as_nanos()).unwrap_or(u64::MAX);
        self.calls.retain(|_, calls| {
            calls.retain(|(_, _, arrived)| arrived.saturating_add(wait) > now_ns);
            !calls.is_empty()
        });
        while let Some(front) = self.queue.front() {
            if let Slot::Pending(request, arrived_ns) = front {
                if request.timestamp.monotonic_ns.max(*arrived_ns).saturating_add(window) > now_ns {
                    return;
                }
            }
            self.pop_front(out, counters);
        }
    }

    /// Whether nothing is held back (no event queued, no request pending) and no call awaits
    /// its syscall's event.
    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.calls.is_empty()
    }

    /// Kernel time of the oldest event held back (events leave in order: the front).
    fn oldest_held_ns(&self) -> Option<u64> {
        self.queue.iter().find_map(|slot| match slot {
            Slot::Ready(event) | Slot::Pending(event, _) => Some(event.timestamp.monotonic_ns),
            Slot::Joined => None,
        })
    }

    /// Releases everything (at shutdown).
    pub fn flush(&mut self, out: &mut Vec<SemanticEvent>, counters: &Counters) {
        while !self.queue.is_empty() {
            self.pop_front(out, counters);
        }
    }

    fn pop_front(&mut self, out: &mut Vec<SemanticEvent>, counters: &Counters) {
        let Some(slot) = self.queue.pop_front() else { return };
        let position = self.base;
        self.base += 1;
        let slot = match slot {
            Slot::Pending(request, _) => {
                let tid = request.context.fuse[0].requester_tid;
                if let Some(positions) = self.pending.get_mut(&tid) {
                    positions.retain(|p| *p != position);
                    if positions.is_empty() {
                        self.pending.remove(&tid);
                    }
                }
                self.standalone(request, counters)
            }
            other => other,
        };
        if let Slot::Ready(event) = slot {
            let companion = if is_fuse_request(&event) { event.error_companion() } else { None };
            out.push(event);
            out.extend(companion);
        }
    }
}

/// The correlate stage on the pipeline: joins each batch's events as they arrive, releases
/// what is ready (on batches and ticks), and holds the rest back, lowering the batch's watermark
/// to the oldest event it holds.
pub struct CorrelateStage {
    correlator: Correlator,
    counters: Arc<Counters>,
}

impl CorrelateStage {
    #[must_use]
    pub fn new(options: CorrelateOptions, counters: Arc<Counters>) -> Self {
        Self { correlator: Correlator::new(options), counters }
    }

    fn release(&mut self, now_ns: u64, batch: &mut EventBatch) {
        self.correlator.drain(now_ns, &mut batch.events, &self.counters);
        if let Some(oldest) = self.correlator.oldest_held_ns() {
            batch.watermark_ns = batch.watermark_ns.min(oldest);
        }
    }
}

impl Stage for CorrelateStage {
    fn name(&self) -> &'static str {
        "correlate"
    }

    fn process(&mut self, batch: &mut EventBatch) {
        let arrived = monotonic_ns();
        // With nothing held, the events before the first FUSE request or call inside a syscall
        // are ready as they are: they stay in the batch (in order, ahead of whatever the queue
        // releases after them).
        let first_held = if self.correlator.is_idle() {
            batch.events.iter().position(joins).unwrap_or(batch.events.len())
        } else {
            0
        };
        for event in batch.events.drain(first_held..) {
            self.correlator.push(event, arrived, &self.counters);
        }
        self.release(monotonic_ns(), batch);
    }

    fn tick(&mut self, now_ns: u64, batch: &mut EventBatch) {
        self.release(now_ns, batch);
    }

    fn flush(&mut self, batch: &mut EventBatch) {
        self.correlator.flush(&mut batch.events, &self.counters);
    }
}

#[cfg(test)]
mod tests;
