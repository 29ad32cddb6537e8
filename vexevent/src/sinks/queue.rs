//! A sink's bounded queue: two lanes (urgent for Critical/High events, bulk for the rest) so that
//! urgent events never wait behind, or get dropped for, bulk traffic: when more is queued than
//! one batch takes, urgent events go first; when the whole backlog fits in the batch, events
//! keep their output order. A full lane follows the sink's policy (block the pipeline, drop the
//! newest event, drop the oldest).

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use crate::pipeline::WhenFull;

/// One serialized event waiting for a sink.
#[derive(Clone, Debug)]
pub struct Queued {
    /// The event as one JSON line (shared by every sink it goes to).
    pub line: Arc<str>,
    /// Critical or High priority: taken before bulk events.
    pub urgent: bool,
    /// Position in the output stream (events that fit in one batch keep this order).
    pub sequence: u64,
    /// Kernel timestamp, for the kernel-to-sink latency.
    pub monotonic_ns: u64,
}

/// What happened to an offered event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the oldest event of its lane was dropped for it.
    DroppedOldest,
    /// Not queued: the lane was full.
    DroppedNewest,
    /// Not queued: the sink has given up (shutdown with the sink down).
    Abandoned,
}

#[derive(Default)]
struct Lanes {
    urgent: VecDeque<Queued>,
    bulk: VecDeque<Queued>,
    /// No more events will be offered: the worker drains what is left and stops.
    closed: bool,
    /// The worker stopped taking events; offers are refused.
    abandoned: bool,
}

impl Lanes {
    fn len(&self) -> usize {
        self.urgent.len() + self.bulk.len()
    }
}

/// The queue between the pipeline and one sink's worker.
pub struct SinkQueue {
    lanes: Mutex<Lanes>,
    readable: Condvar,
    writable: Condvar,
    /// Events each lane holds.
    capacity: usize,
    when_full: WhenFull,
}

impl SinkQueue {
    #[must_use]
    pub fn new(capacity: usize, when_full: WhenFull) -> Self {
        Self {
            lanes: Mutex::default(),
            readable: Condvar::new(),
            writable: Condvar::new(),
            capacity: capacity.max(1),
            when_full,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers events in order under one lock (a batch costs one lock, not one per event);
    /// `outcome` learns what happened to each.
    pub fn push_all(&self, items: impl IntoIterator<Item = Queued>, mut outcome: impl FnMut(Pushed)) {
        let full = |lanes: &Lanes, urgent: bool| {
            let lane = if urgent { &lanes.urgent } else { &lanes.bulk };
            lane.len() >= self.capacity
        };
        let mut lanes = self.lock();
        for item in items {
            let mut pushed = Pushed::Queued;
            if full(&lanes, item.urgent) {
                match self.when_full {
                    WhenFull::Block => {
                        while full(&lanes, item.urgent) && !lanes.abandoned {
                            // What is queued so far must reach the worker before we wait for it.
                            self.readable.notify_one();
                            lanes = self.writable.wait(lanes).unwrap_or_else(PoisonError::into_inner);
                        }
                    }
                    WhenFull::DropNewest => {
                        outcome(Pushed::DroppedNewest);
                        continue;
                    }
                    WhenFull::DropOldest => {
                        let lane = if item.urgent { &mut lanes.urgent } else { &mut lanes.bulk };
                        lane.pop_front();
                        pushed = Pushed::DroppedOldest;
                    }
                }
            }
            if lanes.abandoned {
                outcome(Pushed::Abandoned);
                continue;
            }
            if item.urgent {
                lanes.urgent.push_back(item);
            } else {
                lanes.bulk.push_back(item);
            }
            outcome(pushed);
        }
        drop(lanes);
        self.readable.notify_one();
    }

    /// Moves up to `max` events into `out`: in output order when all that is queued fits, else
    /// urgent ones first. Waits for the first event; then,
    /// while fewer than `max` are there, up to `linger` for more (batching sinks). Returns false
    /// once the queue is closed and empty.
    pub fn take(&self, max: usize, linger: Duration, out: &mut Vec<Queued>) -> bool {
        let mut lanes = self.lock();
        while lanes.len() == 0 {
            if lanes.closed {
                return false;
            }
            lanes = self.readable.wait(lanes).unwrap_or_else(PoisonError::into_inner);
        }
        let deadline = Instant::now() + linger;
        while lanes.len() < max && !lanes.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            lanes = self.readable.wait_timeout(lanes, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        let in_order = lanes.len() <= max;
        for _ in 0..max {
            let Lanes { urgent, bulk, .. } = &mut *lanes;
            let bulk_first = in_order
                && bulk.front().is_some_and(|b| urgent.front().is_none_or(|u| b.sequence < u.sequence));
            let item =
                if bulk_first { bulk.pop_front() } else { urgent.pop_front().or_else(|| bulk.pop_front()) };
            let Some(item) = item else { break };
            out.push(item);
        }
        drop(lanes);
        self.writable.notify_all();
        true
    }

    /// No more events will come: the worker delivers what is queued and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_all();
    }

    /// The worker gives up (shutdown with the sink down): refuses further events and returns how
    /// many were still queued (the caller counts them).
    pub fn abandon(&self) -> usize {
        let mut lanes = self.lock();
        lanes.abandoned = true;
        let left = lanes.len();
        lanes.urgent.clear();
        lanes.bulk.clear();
        drop(lanes);
        self.writable.notify_all();
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers one event; what happened to it.
    fn push(queue: &SinkQueue, item: Queued) -> Pushed {
        let mut pushed = Pushed::Queued;
        queue.push_all([item], |outcome| pushed = outcome);
        pushed
    }

    fn item(n: u64, urgent: bool) -> Queued {
        Queued { line: n.to_string().into(), urgent, sequence: n, monotonic_ns: n }
    }

    fn take(queue: &SinkQueue, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        queue.take(max, Duration::ZERO, &mut out);
        out.iter().map(|q| q.line.to_string()).collect()
    }

    fn take_all(queue: &SinkQueue) -> Vec<String> {
        take(queue, usize::MAX)
    }

    #[test]
    fn with_a_backlog_urgent_events_are_taken_before_bulk_ones() {
        let queue = SinkQueue::new(10, WhenFull::Block);
        for (n, urgent) in [(1, false), (2, false), (3, true), (4, false), (5, true)] {
            push(&queue, item(n, urgent));
        }
        assert_eq!(take(&queue, 3), ["3", "5", "1"]);
        assert_eq!(take(&queue, 3), ["2", "4"]);
    }

    #[test]
    fn what_fits_in_one_batch_keeps_its_output_order() {
        let queue = SinkQueue::new(10, WhenFull::Block);
        for (n, urgent) in [(1, false), (2, true), (3, false), (4, true)] {
            push(&queue, item(n, urgent));
        }
        assert_eq!(take(&queue, 4), ["1", "2", "3", "4"]);
    }

    #[test]
    fn a_full_bulk_lane_neither_blocks_nor_drops_urgent_events() {
        let queue = SinkQueue::new(2, WhenFull::DropNewest);
        assert_eq!(push(&queue, item(1, false)), Pushed::Queued);
        assert_eq!(push(&queue, item(2, false)), Pushed::Queued);
        assert_eq!(push(&queue, item(3, false)), Pushed::DroppedNewest);
        assert_eq!(push(&queue, item(4, true)), Pushed::Queued);
        assert_eq!(take_all(&queue), ["1", "2", "4"]);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_events() {
        let queue = SinkQueue::new(2, WhenFull::DropOldest);
        for n in 1..=4 {
            push(&queue, item(n, false));
        }
        assert_eq!(take_all(&queue), ["3", "4"]);
    }

    #[test]
    fn block_waits_for_the_worker_to_make_room() {
        /// How long the test watches a push into a full queue, which must not return meanwhile
        /// (a correct queue never lets it: this bounds the look, it is not a timing).
        const WATCH: Duration = Duration::from_millis(50);
        let queue = Arc::new(SinkQueue::new(1, WhenFull::Block));
        push(&queue, item(1, false));
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let pusher = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || {
                started_tx.send(()).unwrap();
                let pushed = push(&queue, item(2, false));
                done_tx.send(()).unwrap();
                pushed
            })
        };
        started_rx.recv().unwrap();
        assert!(
            done_rx.recv_timeout(WATCH).is_err(),
            "a push into a full queue returned before room was made"
        );
        let mut taken = Vec::new();
        while taken.len() < 2 {
            queue.take(1, Duration::ZERO, &mut taken);
        }
        assert_eq!(pusher.join().unwrap(), Pushed::Queued);
        assert_eq!(taken.iter().map(|q| q.line.to_string()).collect::<Vec<_>>(), ["1", "2"]);
    }

    #[test]
    fn abandoning_releases_a_blocked_pipeline_and_counts_what_was_queued() {
        let queue = Arc::new(SinkQueue::new(1, WhenFull::Block));
        push(&queue, item(1, false));
        let pusher = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || push(&queue, item(2, false)))
        };
        // Whether the pusher is already waiting or not, it is refused once the queue is abandoned.
        assert_eq!(queue.abandon(), 1);
        assert_eq!(pusher.join().unwrap(), Pushed::Abandoned);
    }

    #[test]
    fn a_closed_queue_hands_out_what_is_left_then_ends() {
        let queue = SinkQueue::new(4, WhenFull::Block);
        push(&queue, item(1, false));
        queue.close();
        let mut out = Vec::new();
        assert!(queue.take(8, Duration::from_secs(5), &mut out));
        assert_eq!(out.len(), 1);
        assert!(!queue.take(8, Duration::from_secs(5), &mut out));
    }
}
