//! The `replicate` stage: instances share one replicated, ordered, durable event log (openraft
//! 0.9.25); each proposes the events it captured, in batches, and every member delivers the whole
//! cluster's committed events, in commit order, to the stages after it.
//!
//! A log entry is one [`Proposal`]: a batch of events of one run of one node, numbered by that
//! run (`batch`, from 1). The state machine applies a run's batches in their order, each once: a
//! retry after a failover that was in fact committed is dropped as a repeat, a batch that would
//! skip one is refused (the proposer sends again from the missing one). So per origin the order
//! is kept and nothing is applied twice.

mod causal;
mod codec;
mod config;
mod disk;
mod log;
mod machine;
mod members;
mod net;
mod proposer;
mod stage;
mod status;
#[cfg(test)]
mod tests;
mod tls;
mod totals;

pub use config::{ClusterConfig, ClusterConfigError, ClusterSettings, Consistency, Secret};
pub use log::{LogError, LogStore};
pub use stage::{ReplicateError, ReplicateStage};
pub use status::{ClusterStatus, MemberStatus};
pub use tls::{PeerTls, PeerTlsError, PeerTlsFiles};

use std::fmt;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The openraft types of the event log: raft ids are numbers, members are addresses, an
    /// entry's data is a [`Proposal`], applying it answers an [`Outcome`].
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// A raft id.
pub type RaftId = u64;

/// A batch of events one node captured, as a log entry holds it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The node that captured them (`[node] id`, the events' `origin.node`).
    pub node: String,
    /// The run of vexevent there (`origin.run`).
    pub run: u64,
    /// The run's batch number, from 1, contiguous.
    pub batch: u64,
    /// How many events `events` holds.
    pub count: u32,
    /// The events in the log's binary encoding ([`codec`]).
    pub events: bytes::Bytes,
}

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Proposal({}:{:016x} batch {}, {} events, {} bytes)",
            self.node,
            self.run,
            self.batch,
            self.count,
            self.events.len()
        )
    }
}

/// What applying an entry did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The batch was the next of its run: its events are delivered.
    Applied,
    /// The batch was applied before (a retry): dropped.
    Repeat,
    /// The batch would skip `expected`, which is not applied yet: refused; the proposer sends
    /// again from `expected`.
    Skips { expected: u64 },
    /// Not a batch (a leader's blank entry, a membership change).
    Other,
}

/// A proposal's entry, committed and applied on the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Its log index.
    pub index: u64,
    pub outcome: Outcome,
}
