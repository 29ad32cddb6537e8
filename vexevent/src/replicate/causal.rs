//! `causal` mode: the hybrid logical clock each member stamps its events with, and the order in
//! which a member delivers the committed events (clock order, within a bounded hold).
//!
//! The clock (Kulkarni et al., "Logical Physical Clocks") packs the wall milliseconds in its high
//! 48 bits and a counter in its low 16: a stamp is the larger of the event's own wall time
//! (from the kernel timestamp) and the last stamp plus one, and every committed event a member
//! receives raises its clock to at least that event's stamp. So an event stamped after a member
//! received another's is stamped higher, whatever the wall clocks say, and a member's stamps
//! increase in capture order.

use std::{
    cmp::{Ordering, Reverse},
    collections::{BTreeMap, BinaryHeap},
    time::{Duration, Instant},
};

use crate::event::SemanticEvent;

/// Bits of the counter below the wall milliseconds.
pub const LOGICAL_BITS: u32 = 16;
/// A received stamp more than this ahead of this member's wall clock means a member's clock is
/// off (counted: the clocks of every member follow the one furthest ahead).
pub const AHEAD_MAX_MS: u64 = 1_000;

/// A member's hybrid logical clock.
#[derive(Debug, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// The stamp of an event captured at `wall_ns` (Unix nanoseconds), after everything stamped
    /// or received so far.
    pub fn stamp(&mut self, wall_ns: u64) -> u64 {
        let physical = (wall_ns / 1_000_000) << LOGICAL_BITS;
        self.last = physical.max(self.last + 1);
        self.last
    }

    /// Receives `stamp` (a committed event of any member) at wall time `wall_ns`: later stamps
    /// are higher. Returns whether the stamp is more than [`AHEAD_MAX_MS`] ahead of `wall_ns`.
    pub fn observe(&mut self, stamp: u64, wall_ns: u64) -> bool {
        self.last = self.last.max(stamp);
        stamp >> LOGICAL_BITS > wall_ns / 1_000_000 + AHEAD_MAX_MS
    }
}

/// The stamp an event is ordered by: its clock, or (an event from a member in another mode) its
/// wall time in the clock's form.
#[must_use]
pub fn stamp_of(event: &SemanticEvent) -> u64 {
    event.timestamp.hlc.unwrap_or((event.timestamp.wall_ns / 1_000_000) << LOGICAL_BITS)
}

/// One held event: ordered by stamp, then by arrival (so equal stamps keep commit order).
struct Held {
    stamp: u64,
    arrival: u64,
    index: u64,
    at: Instant,
    event: SemanticEvent,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.stamp, self.arrival) == (other.stamp, other.arrival)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.stamp, self.arrival).cmp(&(other.stamp, other.arrival))
    }
}

/// Committed events held to be delivered in clock order: the lowest stamp is released once it
/// was held `delay` (or when more than `limit` events are held). Two events applied here less
/// than `delay` apart come out in clock order; one that arrives later than that behind a higher
/// stamp already released comes out late (counted by the caller).
pub struct CausalOrder {
    held: BinaryHeap<Reverse<Held>>,
    /// Events held per log index (the delivered mark stays below the lowest).
    entries: BTreeMap<u64, usize>,
    delay: Duration,
    limit: usize,
    arrivals: u64,
    /// The highest stamp released.
    released: u64,
}

impl CausalOrder {
    #[must_use]
    pub fn new(delay: Duration, limit: usize) -> Self {
        Self {
            held: BinaryHeap::new(),
            entries: BTreeMap::new(),
            delay,
            limit: limit.max(1),
            arrivals: 0,
            released: 0,
        }
    }

    /// Holds `event` of log entry `index`, applied here at `now`.
    pub fn hold(&mut self, index: u64, event: SemanticEvent, now: Instant) {
        self.arrivals += 1;
        *self.entries.entry(index).or_default() += 1;
        self.held.push(Reverse(Held {
            stamp: stamp_of(&event),
            arrival: self.arrivals,
            index,
            at: now,
            event,
        }));
    }

    /// Moves the events due at `now` (every one when `all`) into `out`, lowest stamp first, up
    /// to `room` of them. Returns how many came out below a stamp already released (late).
    pub fn release(&mut self, now: Instant, all: bool, room: usize, out: &mut Vec<SemanticEvent>) -> u64 {
        let mut late = 0;
        let mut moved = 0;
        while moved < room {
            let due = self.held.peek().is_some_and(|Reverse(top)| {
                all || self.held.len() > self.limit || now.saturating_duration_since(top.at) >= self.delay
            });
            if !due {
                break;
            }
            let Some(Reverse(held)) = self.held.pop() else { break };
            if held.stamp < self.released {
                late += 1;
            }
            self.released = self.released.max(held.stamp);
            if let Some(count) = self.entries.get_mut(&held.index) {
                *count -= 1;
                if *count == 0 {
                    self.entries.remove(&held.index);
                }
            }
            out.push(held.event);
            moved += 1;
        }
        late
    }

    /// The highest log index all of whose events were released, given that entries up to
    /// `taken` were taken in.
    #[must_use]
    pub fn released_through(&self, taken: u64) -> u64 {
        self.entries.keys().next().map_or(taken, |&lowest| lowest.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, NodeId, Run};

    fn event(run: &Run, sequence: u64, hlc: u64) -> SemanticEvent {
        let mut event = SemanticEvent::own(run, EventType::FilesystemWrite, "write".into(), 0, 0);
        event.origin = run.origin(0, sequence);
        event.timestamp.hlc = Some(hlc);
        event
    }

    #[test]
    fn stamps_follow_wall_time_increase_and_pass_what_was_received() {
        let mut clock = Hlc::default();
        let ms = |ms: u64| ms * 1_000_000;
        let first = clock.stamp(ms(1_000));
        assert_eq!(first, 1_000 << LOGICAL_BITS, "the wall milliseconds, counter 0");
        assert_eq!(clock.stamp(ms(1_000)), first + 1, "the same millisecond: the counter rises");
        assert_eq!(clock.stamp(ms(999)), first + 2, "a wall clock that went back does not lower it");
        assert_eq!(clock.stamp(ms(2_000)), 2_000 << LOGICAL_BITS, "later wall time: the counter resets");
        // Another member, its wall clock 5 s ahead: what this member stamps next comes after it.
        let received = (7_000 << LOGICAL_BITS) + 3;
        assert!(clock.observe(received, ms(2_001)), "5 s ahead of this wall clock: a clock is off");
        let after = clock.stamp(ms(2_001));
        assert!(after > received, "stamped after receiving: higher, whatever the wall clock says");
        assert!(!clock.observe(5, ms(2_001)));
        assert_eq!(clock.stamp(ms(0)), after + 1, "an older stamp received changes nothing");
        let mut counted = Hlc::default();
        let stamps: Vec<u64> = (0..70_000).map(|_| counted.stamp(ms(10))).collect();
        assert!(
            stamps.windows(2).all(|w| w[0] < w[1]),
            "more than 65,536 in a millisecond: still increasing"
        );
    }

    #[test]
    fn held_events_come_out_in_clock_order_once_held_long_enough() {
        let run = Run::new(NodeId::new("a").unwrap());
        let delay = Duration::from_millis(100);
        let mut order = CausalOrder::new(delay, 1_000);
        let start = Instant::now();
        // Commit order 1, 2, 3; clock order 2, 3, 1 (entry 1's member stamped later).
        order.hold(1, event(&run, 1, 30), start);
        order.hold(2, event(&run, 2, 10), start + Duration::from_millis(10));
        order.hold(3, event(&run, 3, 20), start + Duration::from_millis(20));
        let mut out = Vec::new();
        assert_eq!(order.release(start + Duration::from_millis(50), false, usize::MAX, &mut out), 0);
        assert!(out.is_empty(), "nothing was held long enough");
        assert_eq!(order.released_through(3), 0, "the delivered mark stays below what is held");
        order.release(start + Duration::from_millis(115), false, usize::MAX, &mut out);
        let sequences = |out: &[SemanticEvent]| out.iter().map(|e| e.origin.sequence).collect::<Vec<_>>();
        assert_eq!(sequences(&out), [2], "the lowest stamp, once held the delay");
        assert_eq!(order.released_through(3), 0, "entry 1 is still held");
        order.release(start + Duration::from_millis(200), false, usize::MAX, &mut out);
        assert_eq!(sequences(&out), [2, 3, 1], "clock order, not commit order");
        assert_eq!(order.released_through(3), 3);
        // An event arriving after a higher stamp went out comes out late, and is counted.
        order.hold(4, event(&run, 4, 5), start + Duration::from_millis(300));
        assert_eq!(order.release(start + Duration::from_millis(300), true, usize::MAX, &mut out), 1);
        assert_eq!(order.released_through(4), 4, "nothing is held");
    }

    #[test]
    fn a_full_hold_releases_the_lowest_at_once_and_room_bounds_a_release() {
        let run = Run::new(NodeId::new("a").unwrap());
        let mut order = CausalOrder::new(Duration::from_hours(1), 2);
        let now = Instant::now();
        for (index, stamp) in [(1, 9), (2, 8), (3, 7)] {
            order.hold(index, event(&run, index, stamp), now);
        }
        let mut out = Vec::new();
        order.release(now, false, usize::MAX, &mut out);
        assert_eq!(out.len(), 1, "one over the limit: the lowest goes out without waiting");
        assert_eq!(out[0].origin.sequence, 3);
        order.release(now, true, 1, &mut out);
        assert_eq!(out.len(), 2, "at most `room` at once");
    }
}
