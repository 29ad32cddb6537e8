//! Merges the shards' records into one order by kernel timestamp, with a bounded reorder window.
//!
//! Each CPU writes its records in timestamp order (the probes run with preemption disabled between
//! reading the clock and committing the record), so when every shard is one CPU, a shard that
//! delivered a record stamped `t` will never deliver an older one. A shard with nothing new may
//! still have a record in flight, stamped before the drain began; that window is bounded by
//! `window` (the reorder window). The watermark is the lowest bound over all shards; records below
//! it are released in order. A record that arrives below an already passed watermark (the window
//! was too short, e.g. a vCPU stalled mid-probe) is released at once and counted.

use std::{cmp::Reverse, collections::BinaryHeap};

use super::Captured;

/// An item waiting for the watermark: its order, (timestamp, cpu, arrival), and its slot in
/// [`Merger::slots`] (the heap moves these 32 bytes, never the records themselves).
type Waiting = Reverse<((u64, u32, u64), usize)>;

/// The reorder buffer.
pub struct Merger {
    waiting: BinaryHeap<Waiting>,
    /// The waiting items, by slot; `free` lists the empty slots.
    slots: Vec<Option<Captured>>,
    free: Vec<usize>,
    /// Newest timestamp seen per shard.
    newest: Vec<u64>,
    /// Whether each shard is a single CPU (its records arrive in timestamp order).
    ordered_shards: bool,
    /// Shards whose last drain stopped before their ring was empty (ordered shards only): what
    /// is left there is newer than their newest, and may be older than the in-flight bound.
    backlogged: Vec<bool>,
    window_ns: u64,
    released_up_to: u64,
    /// The highest watermark released under.
    watermark: u64,
    arrivals: u64,
    /// Items released after the watermark had passed them.
    pub late: u64,
}

impl Merger {
    #[must_use]
    pub fn new(shards: usize, ordered_shards: bool, window_ns: u64) -> Self {
        Self {
            waiting: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            newest: vec![0; shards],
            backlogged: vec![false; shards],
            ordered_shards,
            window_ns,
            released_up_to: 0,
            watermark: 0,
            arrivals: 0,
            late: 0,
        }
    }

    /// Adds an item drained from `shard`.
    pub fn push(&mut self, shard: usize, item: Captured) {
        let timestamp = item.timestamp_ns();
        if let Some(newest) = self.newest.get_mut(shard) {
            *newest = (*newest).max(timestamp);
        }
        self.arrivals += 1;
        let key = (timestamp, item.cpu(), self.arrivals);
        let slot = if let Some(slot) = self.free.pop() {
            self.slots[slot] = Some(item);
            slot
        } else {
            self.slots.push(Some(item));
            self.slots.len() - 1
        };
        self.waiting.push(Reverse((key, slot)));
    }

    /// Says whether the last drain of `shard` left records in its ring (it stopped at its
    /// per-drain limit); only for ordered shards, whose records are in timestamp order.
    pub fn set_backlogged(&mut self, shard: usize, backlogged: bool) {
        if let Some(flag) = self.backlogged.get_mut(shard) {
            *flag = backlogged && self.ordered_shards;
        }
    }

    /// Releases, in order, every item older than the watermark of a drain that began at
    /// `drain_started_ns` (`CLOCK_MONOTONIC`).
    pub fn release(&mut self, drain_started_ns: u64, out: &mut Vec<Captured>) {
        let in_flight_bound = drain_started_ns.saturating_sub(self.window_ns);
        let watermark = self
            .newest
            .iter()
            .zip(&self.backlogged)
            .map(|(&newest, &backlogged)| match (self.ordered_shards, backlogged) {
                // Its ring holds records newer than `newest`, possibly older than the bound.
                (true, true) => newest,
                (true, false) => newest.max(in_flight_bound),
                (false, _) => in_flight_bound,
            })
            .min()
            .unwrap_or(in_flight_bound);
        self.watermark = self.watermark.max(watermark);
        self.release_below(watermark, out);
    }

    /// Kernel time below which everything has been released (after a flush: the newest
    /// released).
    #[must_use]
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Whether nothing is held back.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Releases everything (at shutdown, after the final drain).
    pub fn flush(&mut self, out: &mut Vec<Captured>) {
        self.release_below(u64::MAX, out);
        self.watermark = self.watermark.max(self.released_up_to);
    }

    fn release_below(&mut self, watermark: u64, out: &mut Vec<Captured>) {
        while self.waiting.peek().is_some_and(|Reverse((key, _))| key.0 < watermark || watermark == u64::MAX)
        {
            let Some(Reverse(((timestamp, _, _), slot))) = self.waiting.pop() else { break };
            if timestamp < self.released_up_to {
                self.late += 1;
            }
            self.released_up_to = self.released_up_to.max(timestamp);
            self.free.push(slot);
            if let Some(item) = self.slots[slot].take() {
                out.push(item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::GapRecord;

    fn item(cpu: u32, ts: u64) -> Captured {
        Captured::Gap(GapRecord {
            cpu,
            first_seq: ts,
            count: 1,
            by_kind: Vec::new(),
            reported_ns: ts,
            lost_from_ns: ts,
            lost_to_ns: ts,
        })
    }

    fn stamps(items: &[Captured]) -> Vec<u64> {
        items.iter().map(Captured::timestamp_ns).collect()
    }

    #[test]
    fn merges_shards_in_timestamp_order_up_to_the_watermark() {
        let mut merger = Merger::new(2, true, 100);
        for ts in [10, 30, 50] {
            merger.push(0, item(0, ts));
        }
        for ts in [20, 40] {
            merger.push(1, item(1, ts));
        }
        let mut out = Vec::new();
        // Drain began at 45: shard 1 has shown up to 40 and nothing older can come from it.
        merger.release(45, &mut out);
        assert_eq!(stamps(&out), vec![10, 20, 30]);
        assert_eq!(merger.watermark(), 40, "the idle shard's newest bounds what may still come");
        out.clear();
        merger.flush(&mut out);
        assert_eq!(stamps(&out), vec![40, 50]);
        assert_eq!(merger.late, 0);
    }

    #[test]
    fn a_backlogged_shard_holds_back_what_is_newer_than_its_newest() {
        let mut merger = Merger::new(2, true, 100);
        merger.push(0, item(0, 500));
        merger.push(1, item(1, 300));
        merger.push(1, item(1, 350));
        merger.set_backlogged(1, true);
        let mut out = Vec::new();
        // Long after the window: shard 1's ring still holds records from 350 on (400, say).
        merger.release(10_000, &mut out);
        assert_eq!(stamps(&out), vec![300]);
        merger.push(1, item(1, 400));
        merger.set_backlogged(1, false);
        merger.release(10_000, &mut out);
        assert_eq!(stamps(&out), vec![300, 350, 400, 500]);
        assert_eq!(merger.late, 0);
    }

    #[test]
    fn an_idle_shard_holds_records_back_only_for_the_window() {
        let mut merger = Merger::new(2, true, 100);
        merger.push(0, item(0, 500));
        let mut out = Vec::new();
        merger.release(550, &mut out);
        assert!(out.is_empty(), "shard 1 may still have a record stamped before 450..550");
        merger.release(601, &mut out);
        assert_eq!(stamps(&out), vec![500]);
        // A record older than what was released is late: released at once, counted.
        merger.push(1, item(1, 450));
        merger.release(601, &mut out);
        assert_eq!(merger.late, 1);
    }
}
