//! How the control API reads the cluster without knowing the `replicate` stage: the stage puts a
//! [`ClusterView`] in [`ClusterSlot`] when it starts; `vexevent cluster status` and `vexevent log`
//! read through it.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

/// The cluster's status as JSON (members, leader, term, commit index, lags).
pub type StatusFuture = Pin<Box<dyn Future<Output = serde_json::Value> + Send>>;

/// Whether this member applied a log index in time; else the index it applied.
pub type AppliedFuture = Pin<Box<dyn Future<Output = Result<(), u64>> + Send>>;

/// The events of one committed log entry.
#[derive(Debug)]
pub struct LogEntry {
    /// Its log index.
    pub index: u64,
    /// Its events' JSON (no newline), in their order in the entry (the same on every member).
    pub events: Vec<String>,
}

impl LogEntry {
    /// Its events at and after a reader's position (`from`, `skip`: the reader has the first
    /// `skip` events of entry `from`), with their offsets in the entry.
    pub fn after(&self, (from, skip): (u64, u64)) -> impl Iterator<Item = (usize, &str)> {
        let skip = if self.index == from { usize::try_from(skip).unwrap_or(usize::MAX) } else { 0 };
        self.events.iter().map(String::as_str).enumerate().skip(skip)
    }
}

/// A change of the cluster's membership (`vexevent cluster add` / `remove`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Add member `id` listening at `addr` (started with `join = true`) as a voter.
    Add {
        id: u64,
        addr: std::net::SocketAddr,
    },
    Remove {
        id: u64,
    },
}

/// Why a membership change was not made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemberChangeError {
    /// It does not fit the membership (an unknown member, the last voter, a member to add that
    /// does not answer): asking again does not help.
    #[error("{0}")]
    Refused(String),
    /// It cannot be made now (no leader, another change under way): ask again.
    #[error("{0}")]
    Unavailable(String),
}

/// What a membership change did, as text.
pub type ChangeFuture = Pin<Box<dyn Future<Output = Result<String, MemberChangeError>> + Send>>;

/// Committed events read back from the replicated log.
#[derive(Debug)]
pub struct LogPage {
    /// The entries that hold events, in commit order (blank, membership and repeated entries
    /// hold none and are left out).
    pub entries: Vec<LogEntry>,
    /// The index to ask for next.
    pub next: u64,
    /// The last index committed and applied here.
    pub committed: u64,
}

/// What the cluster answers.
pub trait ClusterView: Send + Sync + std::fmt::Debug {
    /// This member's view, with every member's lag as the leader sees it.
    fn status(&self) -> StatusFuture;

    /// Up to `max_entries` committed entries from log index `from`.
    ///
    /// # Errors
    /// An index already compacted (the message names the first retained one) or an unreadable log.
    fn log(&self, from: u64, max_entries: usize) -> Result<LogPage, String>;

    /// Waits up to `timeout` until this member applied log index `index` (a reader's session).
    fn applied_at_least(&self, index: u64, timeout: Duration) -> AppliedFuture;

    /// The cluster's counters: every member's (every run's) summed, as merged here.
    fn totals(&self) -> BTreeMap<String, u64>;

    /// Adds or removes a member (through the leader).
    fn change(&self, change: MemberChange) -> ChangeFuture;
}

/// Where the running cluster member is, once the `replicate` stage started.
#[derive(Debug, Default)]
pub struct ClusterSlot(OnceLock<Arc<dyn ClusterView>>);

impl ClusterSlot {
    /// Puts the view in (once).
    pub fn set(&self, view: Arc<dyn ClusterView>) {
        let _ = self.0.set(view);
    }

    #[must_use]
    pub fn get(&self) -> Option<&Arc<dyn ClusterView>> {
        self.0.get()
    }
}
