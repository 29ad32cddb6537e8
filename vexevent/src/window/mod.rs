//! Keyed event-time windows, shared by the stages that aggregate over time (rules, analytics):
//! tumbling or sliding windows on the kernel timestamp, per key, with a bounded number of keys,
//! closed when the pipeline's watermark passes their end. [`Losses`] keeps the records the
//! kernel lost by time span (the gap events'), so that a count or an absence over a window is
//! known to be complete or not (each gap counted once per window, however many panes the window
//! was built from). Keys hash with foldhash, seeded per process (keys such as
//! paths come from outside). A window's index holds only each key's hash and slot (its own open
//! addressing, so that a caller can prefetch a key's place a few events ahead: `prefetch`); the
//! aggregates live in a vector beside it (a window closes by draining the vector in order). A
//! closed window's emptied index and vector are kept for a later window, so a window does not
//! grow them from empty again.
//!
//! ```
//! use vexevent::window::{WindowSpec, Windows};
//! let mut windows: Windows<&str, u64> = Windows::new(WindowSpec::tumbling(1_000), 100);
//! windows.add(&"a", 1_500, |count| *count += 1);
//! windows.add(&"a", 1_700, |count| *count += 1);
//! let mut closed = Vec::new();
//! windows.close(2_000, &mut closed);
//! assert_eq!((closed[0].start_ns, closed[0].value), (1_000, 2));
//! ```

use std::{
    collections::BTreeMap,
    hash::{BuildHasher as _, Hash},
};

use foldhash::fast::RandomState;

mod index;
mod keyed;
mod losses;
use index::KeyIndex;
pub use keyed::KeyedWindows;
pub use losses::Losses;

/// A window's keys and its aggregates (a closed window's, emptied, kept for the next one).
type Storage<K, A> = (KeyIndex, Vec<(K, A)>);

/// Window length and step, in nanoseconds of kernel time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    pub size_ns: u64,
    /// Distance between window starts: `size_ns` for tumbling windows, less for sliding ones.
    pub slide_ns: u64,
}

impl WindowSpec {
    /// Back-to-back windows of `size_ns`.
    #[must_use]
    pub const fn tumbling(size_ns: u64) -> Self {
        Self { size_ns, slide_ns: size_ns }
    }

    /// Windows of `size_ns` starting every `slide_ns` (each event is in `size / slide` of them).
    #[must_use]
    pub const fn sliding(size_ns: u64, slide_ns: u64) -> Self {
        Self { size_ns, slide_ns }
    }

    /// Starts of the windows that contain `time_ns`, oldest first.
    fn starts(self, time_ns: u64) -> impl Iterator<Item = u64> {
        let slide = self.slide_ns.max(1);
        let last = time_ns - time_ns % slide;
        let first = (time_ns + 1).saturating_sub(self.size_ns).div_ceil(slide) * slide;
        (first..=last).step_by(usize::try_from(slide).unwrap_or(usize::MAX))
    }
}

/// A window that has closed: its key and its aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct Closed<K, A> {
    pub key: K,
    pub start_ns: u64,
    pub end_ns: u64,
    pub value: A,
}

/// One window's keys and their aggregates.
struct Open<K, A> {
    keys: KeyIndex,
    slots: Vec<(K, A)>,
}

/// Open windows by start, each holding an aggregate `A` per key.
pub struct Windows<K, A> {
    spec: WindowSpec,
    /// Hashes keys for every window (seeded per process).
    hasher: RandomState,
    open: BTreeMap<u64, Open<K, A>>,
    /// Emptied maps and vectors of closed windows (at most one per window an event is in), reused.
    spare: Vec<Storage<K, A>>,
    /// Keys one window may hold; events of further keys are counted in `evicted`.
    max_keys: usize,
    /// Everything before this has been closed.
    closed_up_to: u64,
    /// Events for keys beyond `max_keys` (not aggregated).
    pub evicted: u64,
    /// Events older than a window already closed (not aggregated).
    pub late: u64,
}

impl<K: Hash + Eq + Clone, A: Default> Windows<K, A> {
    /// Windows of `spec`, each holding at most `max_keys` keys (and at most 2^32).
    #[must_use]
    pub fn new(spec: WindowSpec, max_keys: usize) -> Self {
        Self {
            spec,
            hasher: RandomState::default(),
            open: BTreeMap::new(),
            spare: Vec::new(),
            max_keys: max_keys.min(u32::MAX as usize),
            closed_up_to: 0,
            evicted: 0,
            late: 0,
        }
    }

    /// The open window starting at `start`, opened (with a spare map) if need be.
    fn window(&mut self, start: u64) -> &mut Open<K, A> {
        let spare = &mut self.spare;
        self.open.entry(start).or_insert_with(|| {
            let (keys, slots) = spare.pop().unwrap_or_else(|| (KeyIndex::new(), Vec::new()));
            Open { keys, slots }
        })
    }

    /// Updates `key`'s aggregate in every window containing `time_ns` with `update`.
    pub fn add(&mut self, key: &K, time_ns: u64, update: impl FnMut(&mut A)) {
        let hash = self.hash(key);
        self.add_hashed(key, hash, time_ns, update);
    }

    /// `key`'s hash, as [`add_hashed`](Self::add_hashed) and [`prefetch`](Self::prefetch) take it.
    #[must_use]
    pub fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// [`add`](Self::add) with `key`'s hash already computed (by [`hash`](Self::hash)).
    pub fn add_hashed(&mut self, key: &K, hash: u64, time_ns: u64, mut update: impl FnMut(&mut A)) {
        for start in self.spec.starts(time_ns) {
            if start < self.closed_up_to {
                self.late += 1;
                continue;
            }
            let max_keys = self.max_keys;
            let window = self.window(start);
            let slots = &window.slots;
            if let Some(slot) = window.keys.get(hash, |slot| slots[slot as usize].0 == *key) {
                update(&mut window.slots[slot as usize].1);
            } else if window.slots.len() < max_keys {
                #[expect(clippy::cast_possible_truncation, reason = "below max_keys, at most u32::MAX")]
                window.keys.insert(hash, window.slots.len() as u32);
                let mut value = A::default();
                update(&mut value);
                window.slots.push((key.clone(), value));
            } else {
                self.evicted += 1;
            }
        }
    }

    /// Asks the CPU to fetch where the key of `hash` is looked up when added at `time_ns` (a
    /// hint, a few events ahead, for the first window containing `time_ns`).
    pub fn prefetch_place(&self, hash: u64, time_ns: u64) {
        if let Some(window) = self.first_open(time_ns) {
            window.keys.prefetch(hash);
        }
    }

    /// Asks the CPU to fetch the aggregate (its first two cache lines) of the key of `hash` when
    /// it is in the first window containing `time_ns` (a hint, once
    /// [`prefetch_place`](Self::prefetch_place) has fetched its place; the key itself is not
    /// compared, which would wait for that very line: a 64-bit hash match is taken for it).
    pub fn prefetch_value(&self, hash: u64, time_ns: u64) {
        let Some(window) = self.first_open(time_ns) else { return };
        if let Some(slot) = window.keys.get(hash, |_| true) {
            let value = &raw const window.slots[slot as usize];
            index::prefetch(value);
            if size_of::<(K, A)>() > 64 {
                index::prefetch(value.cast::<u8>().wrapping_add(64));
            }
        }
    }

    fn first_open(&self, time_ns: u64) -> Option<&Open<K, A>> {
        self.open.get(&self.spec.starts(time_ns).next()?)
    }

    /// Closes, in time order, every window that ends at or before `watermark_ns`.
    pub fn close(&mut self, watermark_ns: u64, out: &mut Vec<Closed<K, A>>) {
        while let Some(entry) = self.open.first_entry() {
            let start = *entry.key();
            let end = start.saturating_add(self.spec.size_ns);
            if end > watermark_ns {
                break;
            }
            let Open { mut keys, mut slots } = entry.remove();
            keys.clear();
            out.extend(slots.drain(..).map(|(key, value)| Closed {
                key,
                start_ns: start,
                end_ns: end,
                value,
            }));
            if (self.spare.len() as u64) < self.spec.size_ns.div_ceil(self.spec.slide_ns.max(1)) {
                self.spare.push((keys, slots));
            }
            self.closed_up_to = self.closed_up_to.max(start + self.spec.slide_ns.max(1));
        }
    }

    /// Closes every window (at the end of the stream: as at shutdown, the last ones are partial).
    pub fn close_all(&mut self, out: &mut Vec<Closed<K, A>>) {
        self.close(u64::MAX, out);
    }

    /// Keys held over all open windows (for memory accounting).
    #[must_use]
    pub fn open_keys(&self) -> usize {
        self.open.values().map(|window| window.slots.len()).sum()
    }
}

#[cfg(test)]
mod tests;
