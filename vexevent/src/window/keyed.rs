//! Keyed windows laid out key first, for aggregates nobody reads when a window closes (rules'
//! counts, which act as soon as a window reaches a threshold): each key holds its open windows
//! together, so an event updates all the sliding windows it is in with one hash lookup, where
//! [`Windows`](super::Windows) (one key map per window) takes one per window. A window closes
//! when the watermark passes its end, whether or not it was opened; an event of a closed window is
//! late. Keys whose windows have all closed are freed once per slide. Each key may also keep a
//! state of its own across its windows (`S`: a rule's most recent events, kept once rather than
//! in every window).
//!
//! ```
//! use vexevent::window::{KeyedWindows, WindowSpec};
//! let mut windows: KeyedWindows<&str, u64> = KeyedWindows::new(WindowSpec::sliding(1_000, 250), 100);
//! let mut counts = Vec::new();
//! windows.add(&"a", 1_100, |count| { *count += 1; counts.push(*count) }, |()| ());
//! assert_eq!(counts, [1, 1, 1, 1], "an event is in 4 sliding windows");
//! windows.close(2_000);
//! windows.add(&"a", 900, |_| {}, |()| ());
//! assert_eq!(windows.late, 4);
//! ```

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

use foldhash::fast::RandomState;

use super::WindowSpec;

/// One key's open windows, by start, oldest first.
type Open<A> = VecDeque<(u64, A)>;

/// One key's open windows and its own state.
struct Held<A, S> {
    open: Open<A>,
    state: S,
}

/// Open windows by key, each holding an aggregate `A`; each key also holds a state `S`.
pub struct KeyedWindows<K, A, S = ()> {
    spec: WindowSpec,
    keys: HashMap<K, Held<A, S>, RandomState>,
    /// Keys held at once; events of further keys are counted in `evicted`.
    max_keys: usize,
    /// Windows starting before this have closed.
    closed_up_to: u64,
    /// When keys whose windows all closed are next freed.
    next_sweep: u64,
    /// Window updates of keys beyond `max_keys` (not aggregated).
    pub evicted: u64,
    /// Window updates of windows already closed (not aggregated).
    pub late: u64,
}

impl<K: Hash + Eq + Clone, A: Default, S: Default> KeyedWindows<K, A, S> {
    #[must_use]
    pub fn new(spec: WindowSpec, max_keys: usize) -> Self {
        Self {
            spec,
            keys: HashMap::with_hasher(RandomState::default()),
            max_keys,
            closed_up_to: 0,
            next_sweep: 0,
            evicted: 0,
            late: 0,
        }
    }

    /// Updates `key`'s aggregate in every open window containing `time_ns` with `update`, then
    /// the key's own state with `then`, whose result it gives (`None` when the key is beyond
    /// `max_keys`). One hash lookup for a key already held.
    pub fn add<R>(
        &mut self,
        key: &K,
        time_ns: u64,
        update: impl FnMut(&mut A),
        then: impl FnOnce(&mut S) -> R,
    ) -> Option<R> {
        if let Some(held) = self.keys.get_mut(key) {
            self.late += update_windows(&mut held.open, self.spec, self.closed_up_to, time_ns, update);
            return Some(then(&mut held.state));
        }
        if self.keys.len() >= self.max_keys {
            for start in self.spec.starts(time_ns) {
                if start < self.closed_up_to {
                    self.late += 1;
                } else {
                    self.evicted += 1;
                }
            }
            return None;
        }
        let windows = usize::try_from(self.spec.size_ns.div_ceil(self.spec.slide_ns.max(1))).unwrap_or(1);
        let mut held = Held { open: VecDeque::with_capacity(windows.min(16)), state: S::default() };
        self.late += update_windows(&mut held.open, self.spec, self.closed_up_to, time_ns, update);
        let result = then(&mut held.state);
        self.keys.insert(key.clone(), held);
        Some(result)
    }

    /// Closes every window that ends at or before `watermark_ns`; once per slide, frees the keys
    /// whose windows have all closed.
    pub fn close(&mut self, watermark_ns: u64) {
        let slide = self.spec.slide_ns.max(1);
        let Some(past_size) = watermark_ns.checked_sub(self.spec.size_ns) else { return };
        let open_from = (past_size / slide + 1) * slide;
        if open_from <= self.closed_up_to {
            return;
        }
        self.closed_up_to = open_from;
        if open_from >= self.next_sweep {
            self.keys.retain(|_, held| {
                drop_closed(&mut held.open, open_from);
                !held.open.is_empty()
            });
            self.next_sweep = open_from + slide;
        }
    }

    /// Key windows held (for memory accounting).
    #[must_use]
    pub fn open_keys(&self) -> usize {
        self.keys.values().map(|held| held.open.len()).sum()
    }
}

fn drop_closed<A>(open: &mut Open<A>, closed_up_to: u64) {
    while open.front().is_some_and(|(start, _)| *start < closed_up_to) {
        open.pop_front();
    }
}

/// Updates the windows of one key containing `time_ns` (opening them in start order); the
/// number of windows that had closed.
fn update_windows<A: Default>(
    open: &mut Open<A>,
    spec: WindowSpec,
    closed_up_to: u64,
    time_ns: u64,
    mut update: impl FnMut(&mut A),
) -> u64 {
    drop_closed(open, closed_up_to);
    let mut late = 0;
    let mut at = 0;
    for start in spec.starts(time_ns) {
        if start < closed_up_to {
            late += 1;
            continue;
        }
        while at < open.len() && open[at].0 < start {
            at += 1;
        }
        if open.get(at).is_none_or(|(open_start, _)| *open_start != start) {
            open.insert(at, (start, A::default()));
        }
        update(&mut open[at].1);
        at += 1;
    }
    late
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_keeps_the_sliding_windows_its_events_are_in() {
        let mut windows: KeyedWindows<u8, Vec<u64>> = KeyedWindows::new(WindowSpec::sliding(10, 5), 2);
        windows.add(&1, 7, |w| w.push(7), |()| ());
        windows.add(&1, 12, |w| w.push(12), |()| ());
        // Windows [0, 10), [5, 15), [10, 20).
        assert_eq!(windows.keys[&1].open, [(0, vec![7]), (5, vec![7, 12]), (10, vec![12])]);
        windows.add(&2, 3, |w| w.push(3), |()| ());
        windows.add(&3, 3, |w| w.push(3), |()| ());
        assert_eq!(windows.evicted, 1, "a third key is beyond the bound");
        windows.close(10);
        assert_eq!(windows.open_keys(), 2, "key 2's only window closed; 1 keeps [5, 15) and [10, 20)");
        windows.add(&3, 12, |w| w.push(12), |()| ());
        assert_eq!(windows.evicted, 1, "room again for a key");
        windows.add(&1, 9, |w| w.push(9), |()| ());
        assert_eq!((windows.late, windows.keys[&1].open[0].1.clone()), (1, vec![7, 12, 9]), "[0, 10) closed");
        windows.close(100);
        assert_eq!(windows.open_keys(), 0, "every window closed, every key freed");
    }
}
