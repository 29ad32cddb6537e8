//! Records the kernel lost, by time span (the gap events' spans), so that a window knows how many
//! fell within it: each gap counted once however many panes or windows it spans, and in a window
//! with no events at all. Bounded: past `max` gaps, a new gap widens the newest one (a window
//! that then overlaps only the widened span counts its records too: a bound, never short).

use std::collections::VecDeque;

/// One gap: records lost between two kernel times.
#[derive(Clone, Copy, Debug)]
struct Gap {
    from_ns: u64,
    to_ns: u64,
    count: u64,
}

/// Gaps, oldest first (see the module documentation).
#[derive(Debug)]
pub struct Losses {
    gaps: VecDeque<Gap>,
    max: usize,
}

impl Losses {
    /// At most `max` gaps kept apart.
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self { gaps: VecDeque::new(), max: max.max(1) }
    }

    /// Records `count` records lost between `from_ns` and `to_ns`.
    pub fn record(&mut self, from_ns: u64, to_ns: u64, count: u64) {
        let (from_ns, to_ns) = (from_ns.min(to_ns), from_ns.max(to_ns));
        if self.gaps.len() >= self.max {
            if let Some(newest) = self.gaps.back_mut() {
                newest.from_ns = newest.from_ns.min(from_ns);
                newest.to_ns = newest.to_ns.max(to_ns);
                newest.count += count;
                return;
            }
        }
        self.gaps.push_back(Gap { from_ns, to_ns, count });
    }

    /// Records lost by the gaps that overlap `[start_ns, end_ns)`.
    #[must_use]
    pub fn within(&self, start_ns: u64, end_ns: u64) -> u64 {
        self.gaps.iter().filter(|g| g.from_ns < end_ns && g.to_ns >= start_ns).map(|g| g.count).sum()
    }

    /// Forgets the gaps that end before `ns` (no window still to close reaches back that far).
    pub fn forget_before(&mut self, ns: u64) {
        self.gaps.retain(|g| g.to_ns >= ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_counts_once_in_any_window_it_overlaps_and_the_list_is_bounded() {
        let mut losses = Losses::new(2);
        losses.record(12, 18, 4);
        assert_eq!((losses.within(0, 10), losses.within(10, 20), losses.within(18, 30)), (0, 4, 4));
        assert_eq!(losses.within(0, 30), 4, "a window over several panes counts it once");
        losses.record(25, 35, 1);
        assert_eq!(losses.within(0, 30), 5);
        losses.record(50, 55, 2);
        assert_eq!(losses.gaps.len(), 2, "the third gap widened the newest");
        assert_eq!((losses.within(40, 45), losses.within(0, 20)), (3, 4), "a bound after that, never short");
        losses.forget_before(20);
        assert_eq!(losses.within(0, 100), 3, "the gap ending at 18 is forgotten");
    }
}
