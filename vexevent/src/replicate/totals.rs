//! Cluster-wide counters without consensus: the stats counters of every member's every run, as
//! a delta-state CRDT (a grow-only counter per run: merging takes each counter's largest value,
//! so merges commute, repeat and reorder freely). Each member sets its own run's entry from its
//! counters and sends every peer, every [`GOSSIP_PERIOD`], the entries that changed since that
//! peer last acknowledged (the delta), over the authenticated peer connection; the cluster
//! total of a counter is the sum over the runs. A run's entry stays after the run ends (a
//! restarted member counts on in a new entry), so totals never go back.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{RaftId, net::Peers};
use crate::telemetry::{Counters, add, userspace_values};

/// How often a member sends its peers what changed.
pub const GOSSIP_PERIOD: Duration = Duration::from_millis(200);
/// A peer that does not acknowledge in this time gets the delta again next round.
const GOSSIP_TIMEOUT: Duration = Duration::from_millis(500);
/// Most runs held (members times restarts); entries of more runs are refused and counted.
pub const RUNS_MAX: usize = 1_024;
/// Most counters of one run, and the longest counter name.
pub const COUNTERS_MAX: usize = 512;
pub const NAME_MAX: usize = 64;
/// Gauges, not counts: not summed across members.
const GAUGES: [&str; 3] = ["cluster_term", "cluster_applied_index", "cluster_disk_low"];

/// A run: its node and run id (an event origin's `node` and `run`).
pub type RunKey = (String, u64);

/// Entries of runs, as one member sends them to another.
pub type Delta = Vec<(RunKey, BTreeMap<String, u64>)>;

#[derive(Debug, Default)]
struct Entry {
    values: BTreeMap<String, u64>,
    /// The local version at which a value of this entry last rose.
    version: u64,
}

/// Every run's counters, as merged here.
#[derive(Debug, Default)]
pub struct Totals {
    entries: BTreeMap<RunKey, Entry>,
    /// Raised at every change; a delta is what changed after a version.
    version: u64,
}

impl Totals {
    /// Merges `values` into `key`'s entry (each counter's largest value). Returns the counters
    /// refused (a run or counter over the bounds, a name too long).
    pub fn merge(&mut self, key: RunKey, values: BTreeMap<String, u64>) -> u64 {
        if !self.entries.contains_key(&key) && self.entries.len() >= RUNS_MAX {
            return values.len() as u64;
        }
        let entry = self.entries.entry(key).or_default();
        let mut refused = 0;
        let mut rose = false;
        for (name, value) in values {
            if name.len() > NAME_MAX
                || (!entry.values.contains_key(&name) && entry.values.len() >= COUNTERS_MAX)
            {
                refused += 1;
                continue;
            }
            let held = entry.values.entry(name).or_default();
            if value > *held {
                *held = value;
                rose = true;
            }
        }
        if rose {
            self.version += 1;
            entry.version = self.version;
        }
        refused
    }

    /// Merges what a peer sent.
    pub fn merge_delta(&mut self, delta: Delta) -> u64 {
        delta.into_iter().map(|(key, values)| self.merge(key, values)).sum()
    }

    /// The entries that changed after `version`, and the version now.
    #[must_use]
    pub fn delta_since(&self, version: u64) -> (Delta, u64) {
        let delta = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.version > version)
            .map(|(key, entry)| (key.clone(), entry.values.clone()))
            .collect();
        (delta, self.version)
    }

    /// Each counter summed over every run.
    #[must_use]
    pub fn totals(&self) -> BTreeMap<String, u64> {
        let mut totals = BTreeMap::new();
        for entry in self.entries.values() {
            for (name, value) in &entry.values {
                let total: &mut u64 = totals.entry(name.clone()).or_default();
                *total = total.saturating_add(*value);
            }
        }
        totals
    }
}

/// A peer's answer to a delta.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Ack {
    /// Counters it refused (over its bounds).
    pub refused: u64,
    /// Its run: another run than before is a restart, which lost what it was sent.
    pub run: u64,
}

/// The counters as merged here, shared between the gossip task, the peer server and the control
/// API.
#[derive(Debug)]
pub struct SharedTotals {
    totals: Mutex<Totals>,
    /// This member's run.
    run: u64,
}

impl SharedTotals {
    #[must_use]
    pub fn new(run: u64) -> Arc<Self> {
        Arc::new(Self { totals: Mutex::default(), run })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Merges a peer's delta.
    pub fn receive(&self, delta: Delta) -> Ack {
        Ack { refused: self.lock().merge_delta(delta), run: self.run }
    }

    /// Each counter summed over every run.
    #[must_use]
    pub fn totals(&self) -> BTreeMap<String, u64> {
        self.lock().totals()
    }
}

/// This run's counters as an entry (gauges left out).
fn own_values(counters: &Counters) -> BTreeMap<String, u64> {
    let mut values = userspace_values(counters);
    values.retain(|name, _| !GAUGES.contains(&name.as_str()));
    values
}

/// Sets this run's entry from its counters and sends each peer what it has not acknowledged,
/// every [`GOSSIP_PERIOD`], until the runtime stops.
pub async fn gossip(shared: Arc<SharedTotals>, node: String, peers: Peers, counters: Arc<Counters>) {
    let own = (node, shared.run);
    // Per peer: the version it acknowledged, and its run then.
    let mut acked: HashMap<RaftId, (u64, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(GOSSIP_PERIOD);
    loop {
        tick.tick().await;
        // The members as the membership says now: a new one gets everything, a removed one
        // nothing more.
        let members = peers.others();
        acked.retain(|id, _| members.contains(id));
        for id in members {
            acked.entry(id).or_default();
        }
        let sends: Vec<(RaftId, Delta, u64)> = {
            let mut totals = shared.lock();
            let refused = totals.merge(own.clone(), own_values(&counters));
            add(&counters.cluster_gossip_refused, refused);
            acked
                .iter()
                .filter_map(|(&peer, &(version, _))| {
                    let (delta, now) = totals.delta_since(version);
                    (!delta.is_empty()).then_some((peer, delta, now))
                })
                .collect()
        };
        let mut calls = JoinSet::new();
        for (peer, delta, version) in sends {
            let peers = peers.clone();
            calls.spawn(async move { (peer, version, peers.gossip(peer, delta, GOSSIP_TIMEOUT).await) });
        }
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((peer, version, Ok(ack))) => {
                    add(&counters.cluster_gossip_refused, ack.refused);
                    if let Some((acked, run)) = acked.get_mut(&peer) {
                        // A peer that restarted lost what it had: it gets everything again.
                        *acked = if *run == ack.run { (*acked).max(version) } else { 0 };
                        *run = ack.run;
                    }
                }
                Ok((peer, _, Err(error))) => tracing::debug!(peer, %error, "cluster: counters not sent"),
                Err(error) => tracing::warn!(%error, "cluster: a counter gossip task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|&(name, value)| (name.to_owned(), value)).collect()
    }

    fn key(node: &str, run: u64) -> RunKey {
        (node.to_owned(), run)
    }

    #[test]
    fn merges_commute_repeat_and_keep_the_largest_value() {
        let deltas = [
            (key("a", 1), values(&[("events", 5), ("drops", 1)])),
            (key("b", 2), values(&[("events", 7)])),
            (key("a", 1), values(&[("events", 3), ("drops", 2)])),
            (key("a", 3), values(&[("events", 4)])),
        ];
        let mut forward = Totals::default();
        for (key, values) in deltas.clone() {
            forward.merge(key, values);
        }
        let mut backward = Totals::default();
        for (key, values) in deltas.iter().rev().cloned() {
            backward.merge(key, values);
        }
        // Again, as a peer resending a delta it was not sure arrived.
        backward.merge_delta(deltas.to_vec());
        let expected = values(&[("events", 5 + 7 + 4), ("drops", 2)]);
        assert_eq!(forward.totals(), expected, "per run the largest value, summed over runs");
        assert_eq!(backward.totals(), expected, "in any order, any number of times");
    }

    #[test]
    fn a_delta_holds_what_changed_since_a_version_and_converges_a_peer() {
        let mut here = Totals::default();
        here.merge(key("a", 1), values(&[("events", 1)]));
        here.merge(key("b", 1), values(&[("events", 2)]));
        let (first, version) = here.delta_since(0);
        assert_eq!(first.len(), 2, "a new peer gets every entry");
        here.merge(key("a", 1), values(&[("events", 1)]));
        assert!(here.delta_since(version).0.is_empty(), "nothing rose: nothing to send");
        here.merge(key("b", 1), values(&[("events", 9)]));
        let (second, _) = here.delta_since(version);
        assert_eq!(second, vec![(key("b", 1), values(&[("events", 9)]))], "only what rose");
        let mut peer = Totals::default();
        peer.merge_delta(second);
        peer.merge_delta(first);
        assert_eq!(peer.totals(), here.totals(), "deltas in any order give the same totals");
    }

    #[test]
    fn entries_over_the_bounds_are_refused_and_counted() {
        let mut totals = Totals::default();
        for run in 0..RUNS_MAX as u64 {
            assert_eq!(totals.merge(key("a", run), values(&[("events", 1)])), 0);
        }
        assert_eq!(totals.merge(key("b", 0), values(&[("events", 1), ("drops", 1)])), 2, "one run too many");
        assert_eq!(totals.merge(key("a", 0), values(&[("events", 2)])), 0, "a known run still merges");
        let long = "x".repeat(NAME_MAX + 1);
        assert_eq!(totals.merge(key("a", 0), values(&[(long.as_str(), 1)])), 1, "a name too long");
        assert_eq!(totals.totals()["events"], RUNS_MAX as u64 + 1);
    }
}
