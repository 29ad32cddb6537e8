//! The proposer: turns the events this node captured into numbered batches and has the leader
//! commit them, at most two in flight. Batches adapt to the load: a batch takes what waited
//! while the previous ones were in flight, up to `entry_events` (so one event per entry at low
//! load, full entries under load). A batch that fails (no leader, the leader died, a batch
//! before it failed) is sent again, in order, from the first unacknowledged one, after a
//! backoff; the state machine drops what was in fact committed already. When another member
//! becomes leader, what is unacknowledged goes to it at once (no timeout, no backoff). While
//! the data directory is under its reserve (`disk`) nothing is sent: the events wait in the
//! stage's bounded buffer.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinSet, time::Instant};

use super::{
    Committed, Outcome, Proposal, RaftId,
    codec::Encoder,
    disk::DiskGuard,
    net::{Peers, Raft, Refused, propose_here},
};
use crate::{
    event::SemanticEvent,
    telemetry::{Counters, add},
};

/// Proposals in flight at once (the probe here: 2 keeps the log busy without piling up).
const IN_FLIGHT: usize = 2;
/// Largest batch, in bytes of encoded events (whatever `entry_events` says).
const ENTRY_BYTES_MAX: usize = 16 << 20;
/// A proposal not answered in this time is treated as failed (and sent again).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long, once the pipeline stops, events already captured may take to commit.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the proposer needs.
pub struct Proposer {
    pub raft: Raft,
    pub peers: Peers,
    pub me: RaftId,
    /// The node and run the events come from.
    pub node: String,
    pub run: u64,
    pub entry_events: usize,
    /// Events handed over by the stage and not yet committed (the stage bounds it).
    pub buffered: Arc<AtomicU64>,
    pub counters: Arc<Counters>,
    pub disk: DiskGuard,
}

/// Commits `proposal` through the leader this member knows.
async fn propose(
    raft: Raft,
    peers: Peers,
    me: RaftId,
    disk: DiskGuard,
    proposal: Proposal,
) -> Result<Committed, Refused> {
    let leader = raft.metrics().borrow().current_leader;
    match leader {
        None => Err(Refused::NoLeader),
        Some(leader) if leader == me => {
            tokio::time::timeout(PROPOSE_TIMEOUT, propose_here(&raft, me, &disk, proposal))
                .await
                .unwrap_or_else(|_| Err(Refused::Failed("the commit timed out".into())))
        }
        Some(leader) => peers.propose(leader, proposal, PROPOSE_TIMEOUT).await,
    }
}

impl Proposer {
    /// The next batch: up to `entry_events` events (and [`ENTRY_BYTES_MAX`] bytes) from `pending`.
    fn cut(&self, batch: u64, pending: &mut VecDeque<SemanticEvent>) -> Proposal {
        let mut encoder = Encoder::default();
        while (encoder.count as usize) < self.entry_events && encoder.encoded_len() < ENTRY_BYTES_MAX {
            let Some(event) = pending.pop_front() else { break };
            if encoder.push(&event).is_err() {
                add(&self.counters.sink_errors, 1);
            }
        }
        let count = encoder.count;
        Proposal { node: self.node.clone(), run: self.run, batch, count, events: encoder.finish().into() }
    }

    /// Runs until `incoming` closes and what it delivered is committed (or the grace passed:
    /// the rest is counted as dropped). Returns the highest log index committed.
    pub async fn run(self, mut incoming: mpsc::UnboundedReceiver<Vec<SemanticEvent>>) -> u64 {
        let mut pending: VecDeque<SemanticEvent> = VecDeque::new();
        let mut unacked: BTreeMap<u64, Proposal> = BTreeMap::new();
        let mut resend: VecDeque<u64> = VecDeque::new();
        let mut in_flight: JoinSet<(u64, Result<Committed, Refused>)> = JoinSet::new();
        let mut next_batch = 1u64;
        let mut failing = false;
        let mut retry_at: Option<Instant> = None;
        let mut backoff = BACKOFF_MIN;
        let mut closed_at: Option<Instant> = None;
        let mut last_index = 0u64;
        let mut server = self.raft.server_metrics();
        let mut leader = server.borrow_and_update().current_leader;
        let mut disk = self.disk.watch();
        loop {
            let room = disk.borrow_and_update().is_none();
            if room && !failing && retry_at.is_none_or(|at| at <= Instant::now()) {
                retry_at = None;
                while in_flight.len() < IN_FLIGHT {
                    let batch = if let Some(batch) = resend.pop_front() {
                        batch
                    } else if pending.is_empty() {
                        break;
                    } else {
                        let proposal = self.cut(next_batch, &mut pending);
                        unacked.insert(next_batch, proposal);
                        next_batch += 1;
                        next_batch - 1
                    };
                    let Some(proposal) = unacked.get(&batch).cloned() else { continue };
                    let (raft, peers, me, guard) =
                        (self.raft.clone(), self.peers.clone(), self.me, self.disk.clone());
                    in_flight.spawn(async move { (batch, propose(raft, peers, me, guard, proposal).await) });
                }
            }
            if closed_at.is_some() && pending.is_empty() && unacked.is_empty() {
                break;
            }
            let deadline = closed_at.map(|closed| closed + SHUTDOWN_GRACE);
            if deadline.is_some_and(|deadline| deadline <= Instant::now()) {
                let lost = pending.len() as u64 + unacked.values().map(|p| u64::from(p.count)).sum::<u64>();
                add(&self.counters.cluster_dropped_shutdown, lost);
                tracing::warn!(events = lost, "cluster: events not committed when vexevent stopped");
                break;
            }
            tokio::select! {
                received = incoming.recv(), if closed_at.is_none() => match received {
                    Some(events) => pending.extend(events),
                    None => closed_at = Some(Instant::now()),
                },
                Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                    match joined {
                        Ok((batch, Ok(Committed { index, outcome: Outcome::Applied | Outcome::Repeat }))) => {
                            if let Some(proposal) = unacked.remove(&batch) {
                                self.buffered.fetch_sub(u64::from(proposal.count), Ordering::Relaxed);
                            }
                            last_index = last_index.max(index);
                            backoff = BACKOFF_MIN;
                        }
                        Ok((batch, outcome)) => {
                            tracing::debug!(batch, ?outcome, "cluster: proposal not committed; sending again");
                            failing = true;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cluster: a proposal task failed; sending again");
                            failing = true;
                        }
                    }
                    if failing && in_flight.is_empty() {
                        failing = false;
                        resend = unacked.keys().copied().collect();
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                Ok(()) = server.changed() => {
                    let now = server.borrow_and_update().current_leader;
                    if now.is_some() && now != leader && !unacked.is_empty() {
                        // A leader again, or another one: proposals sent to the old leader would
                        // wait for their timeout (a stopped or cut-off leader never answers) or
                        // for the backoff; send them again now, in order (what the old one did
                        // commit is dropped as a repeat).
                        tracing::debug!(?leader, ?now, "cluster: new leader; sending the unacknowledged batches to it");
                        in_flight.shutdown().await;
                        failing = false;
                        resend = unacked.keys().copied().collect();
                        retry_at = None;
                        backoff = BACKOFF_MIN;
                    }
                    leader = now;
                }
                // Under the reserve and back: looked at again at the top.
                Ok(()) = disk.changed() => {}
                () = sleep_until(retry_at), if retry_at.is_some() => {}
                () = sleep_until(deadline), if deadline.is_some() => {}
            }
        }
        self.buffered.store(0, Ordering::Relaxed);
        last_index
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
