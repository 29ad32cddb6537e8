//! Windows on synthetic times: assignment, closing on the watermark, bounds.

use super::*;

fn closed<K: Hash + Eq + Clone + Ord, A: Default + Clone>(
    windows: &mut Windows<K, A>,
    watermark: u64,
) -> Vec<(u64, K, A)> {
    let mut out = Vec::new();
    windows.close(watermark, &mut out);
    let mut rows: Vec<_> = out.into_iter().map(|c| (c.start_ns, c.key, c.value)).collect();
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    rows
}

#[test]
fn tumbling_windows_close_when_the_watermark_passes_their_end() {
    let mut windows: Windows<&str, u64> = Windows::new(WindowSpec::tumbling(10), 100);
    for (key, time) in [("a", 1), ("b", 3), ("a", 9), ("a", 10), ("b", 25)] {
        windows.add(&key, time, |n| *n += 1);
    }
    assert!(closed(&mut windows, 9).is_empty(), "the first window ends at 10");
    assert_eq!(closed(&mut windows, 10), [(0, "a", 2), (0, "b", 1)]);
    assert_eq!(closed(&mut windows, 30), [(10, "a", 1), (20, "b", 1)]);
    windows.add(&"a", 5, |n| *n += 1);
    assert_eq!(windows.late, 1, "an event in a closed window is late, not lost silently");
}

#[test]
fn sliding_windows_hold_each_event_in_size_over_slide_windows() {
    let mut windows: Windows<u8, u64> = Windows::new(WindowSpec::sliding(10, 5), 100);
    windows.add(&1, 7, |n| *n += 1);
    assert_eq!(closed(&mut windows, 100), [(0, 1, 1), (5, 1, 1)]);
    assert_eq!(WindowSpec::sliding(10, 5).starts(4).collect::<Vec<_>>(), [0]);
    assert_eq!(WindowSpec::sliding(10, 5).starts(10).collect::<Vec<_>>(), [5, 10]);
}

#[test]
fn keys_beyond_the_bound_are_counted_not_kept() {
    let mut windows: Windows<u32, u64> = Windows::new(WindowSpec::tumbling(10), 2);
    for key in 0..5 {
        windows.add(&key, 1, |n| *n += 1);
    }
    windows.add(&0, 2, |n| *n += 1);
    assert_eq!(windows.open_keys(), 2);
    assert_eq!(windows.evicted, 3);
    let mut all = Vec::new();
    windows.close_all(&mut all);
    assert_eq!(all.iter().map(|c| c.value).sum::<u64>(), 3);
}

#[test]
fn a_closed_windows_map_is_reused_empty() {
    let mut windows: Windows<u32, u64> = Windows::new(WindowSpec::tumbling(10), 100);
    for key in 0..50 {
        windows.add(&key, 1, |n| *n += 1);
    }
    assert_eq!(closed(&mut windows, 10).len(), 50);
    assert_eq!(windows.spare.len(), 1, "the emptied map is kept");
    windows.add(&7, 12, |n| *n += 1);
    assert!(windows.spare.is_empty(), "and taken by the next window");
    assert_eq!(closed(&mut windows, 20), [(10, 7, 1)], "holding none of the old keys");
}

#[test]
fn prefetching_a_key_changes_nothing() {
    let mut windows: Windows<u32, u64> = Windows::new(WindowSpec::tumbling(10), 100);
    windows.add(&1, 3, |n| *n += 1);
    for (key, time) in [(1, 3), (2, 3), (1, 50)] {
        let hash = windows.hash(&key);
        windows.prefetch_place(hash, time);
        windows.prefetch_value(hash, time);
        windows.add_hashed(&key, hash, time, |n| *n += 1);
    }
    assert_eq!(closed(&mut windows, 100), [(0, 1, 2), (0, 2, 1), (50, 1, 1)]);
}
