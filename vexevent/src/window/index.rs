//! A window's key index: where each key's aggregate is in the window's `slots`, by the key's hash
//! (computed once by the caller with the windows' per-process random seed, so the positions
//! of attacker-chosen keys such as paths cannot be predicted: no crafted set of keys piles up on
//! one position). Open addressing with linear probing over 16-byte `(hash, slot)` entries, at most
//! half full: a lookup reads one cache line, most of the time, and a key's line can be
//! prefetched a few events ahead (hashbrown's probe, its control bytes then its entry, cannot).
//! Keys are compared in `slots` after a hash match. Nothing is removed but all at once.

/// One position: the key's hash with its lowest bit set (0: empty), and its slot.
#[derive(Clone, Copy, Default)]
struct Entry {
    hash: u64,
    slot: u32,
}

/// Smallest table (entries).
const MIN_ENTRIES: usize = 16;

/// Keys' slots by hash (see the module documentation).
pub(super) struct KeyIndex {
    entries: Vec<Entry>,
    len: usize,
}

impl KeyIndex {
    pub(super) fn new() -> Self {
        Self { entries: vec![Entry::default(); MIN_ENTRIES], len: 0 }
    }

    /// Where probing for `hash` starts.
    fn home(&self, hash: u64) -> usize {
        // The lowest bit is set in every stored hash: the position comes from the others.
        let bits = (hash >> 1) as usize;
        bits & (self.entries.len() - 1)
    }

    /// The slot of the key whose hash is `hash` and for which `is_key` holds on a slot.
    pub(super) fn get(&self, hash: u64, is_key: impl Fn(u32) -> bool) -> Option<u32> {
        let stored = hash | 1;
        let mask = self.entries.len() - 1;
        let mut at = self.home(hash);
        loop {
            let entry = self.entries[at];
            if entry.hash == 0 {
                return None;
            }
            if entry.hash == stored && is_key(entry.slot) {
                return Some(entry.slot);
            }
            at = (at + 1) & mask;
        }
    }

    /// Records `slot` for a key not in the index whose hash is `hash`.
    pub(super) fn insert(&mut self, hash: u64, slot: u32) {
        if (self.len + 1) * 2 > self.entries.len() {
            self.grow();
        }
        self.place(Entry { hash: hash | 1, slot });
        self.len += 1;
    }

    fn place(&mut self, entry: Entry) {
        let mask = self.entries.len() - 1;
        let mut at = self.home(entry.hash);
        while self.entries[at].hash != 0 {
            at = (at + 1) & mask;
        }
        self.entries[at] = entry;
    }

    /// Twice the positions, the entries placed again (from their stored hashes).
    fn grow(&mut self) {
        let size = self.entries.len() * 2;
        let old = std::mem::replace(&mut self.entries, vec![Entry::default(); size]);
        for entry in old.into_iter().filter(|e| e.hash != 0) {
            self.place(entry);
        }
    }

    /// Empties the index, keeping its size.
    pub(super) fn clear(&mut self) {
        self.entries.fill(Entry::default());
        self.len = 0;
    }

    /// Asks the CPU to fetch the cache line where `hash` is looked up.
    pub(super) fn prefetch(&self, hash: u64) {
        prefetch(&raw const self.entries[self.home(hash)]);
    }
}

/// Asks the CPU to bring the line at `address` into its caches (a hint: nothing on other CPUs).
pub(super) fn prefetch<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it does not fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_hash_and_key_through_collisions_and_growth() {
        let mut index = KeyIndex::new();
        let keys: Vec<u64> = (0..1_000).collect();
        // Hashes that collide on purpose: 10 distinct values for 1,000 keys.
        let hash = |key: u64| (key % 10) << 8;
        for (slot, &key) in keys.iter().enumerate() {
            assert_eq!(index.get(hash(key), |s| keys[s as usize] == key), None);
            index.insert(hash(key), u32::try_from(slot).unwrap());
        }
        for (slot, &key) in keys.iter().enumerate() {
            assert_eq!(index.get(hash(key), |s| keys[s as usize] == key), Some(u32::try_from(slot).unwrap()));
        }
        assert!(index.entries.len() >= 2_000, "at most half full");
        index.prefetch(hash(3));
        index.clear();
        assert_eq!(index.get(hash(3), |_| true), None);
    }
}
