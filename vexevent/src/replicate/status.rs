//! What `vexevent cluster status` and `vexevent log --from INDEX` read: a member's view of the
//! cluster (from its raft metrics; every member's lag from the leader's) and the committed log.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use openraft::{EntryPayload, ServerState};
use serde::{Deserialize, Serialize};

use super::{
    LogStore, RaftId,
    disk::DiskGuard,
    machine::{NotApplied, decode_events},
    members::{Change, ChangeRefused, Removal, change_here},
    net::Peers,
    net::Raft,
    totals::SharedTotals,
};
use crate::{
    pipeline::write_event,
    telemetry::{
        AppliedFuture, ChangeFuture, ClusterView, LogEntry, LogPage, MemberChange, MemberChangeError,
        StatusFuture,
    },
};

/// How long a follower waits for the leader's view of the lags.
const LEADER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a member waits for the leader to make a membership change it forwarded.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(super::members::CATCH_UP_TIMEOUT.as_secs() + 30);

/// One member, as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: RaftId,
    pub addr: String,
    /// A voter (else a learner: it gets the log, does not vote, and is not counted in a majority).
    #[serde(default)]
    pub voter: bool,
    /// The last log index the leader knows it holds.
    pub matched: Option<u64>,
    /// Entries it is behind the leader's log.
    pub lag: Option<u64>,
}

/// A member's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The member answering.
    pub node_id: RaftId,
    /// Leader, Follower, Candidate, Learner or Shutdown.
    pub state: String,
    pub term: u64,
    pub leader: Option<RaftId>,
    /// The last index committed and applied here.
    pub commit_index: Option<u64>,
    pub last_log_index: Option<u64>,
    /// The first index still in the log here (`vexevent log --from` starts there at the earliest).
    pub first_index: u64,
    pub snapshot_index: Option<u64>,
    /// Every member (voters and learners, from the membership in the log); `matched` and `lag`
    /// from the leader's view (absent when no leader answered).
    pub members: Vec<MemberStatus>,
    /// A membership change is under way (the log holds a joint configuration: the old and the
    /// new voters must both agree).
    #[serde(default)]
    pub joint: bool,
    /// The cluster's counters (every member's runs summed, as merged here).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// Why this member cannot commit strong writes now (`None`: it can): its raft log failed a
    /// write, its data directory is under its reserve, no leader is known, or it leads without
    /// having heard from a majority for longer than an election timeout (a minority side of a
    /// partition). Its captured events wait in its buffer meanwhile.
    pub writes_refused: Option<String>,
}

/// Why `metrics`' member cannot commit strong writes now.
fn writes_refused(
    metrics: &openraft::RaftMetrics<RaftId, openraft::BasicNode>,
    election_ms: u64,
    removal: &Removal,
) -> Option<String> {
    if let Some(why) = removal.why() {
        return Some(format!("this member was {why}; it takes no more part in the cluster"));
    }
    let membership = metrics.membership_config.membership();
    if membership.get_node(&metrics.id).is_none() {
        return Some(if membership.nodes().next().is_none() {
            "this member is in no cluster yet: add it on a member with `vexevent cluster add ID ADDR`"
                .to_owned()
        } else {
            "this member is not in the cluster's membership (it was removed)".to_owned()
        });
    }
    match (metrics.current_leader, metrics.millis_since_quorum_ack) {
        (None, _) => Some(format!(
            "no leader is known in term {} (an election is under way, or this member cannot reach a majority)",
            metrics.current_term
        )),
        (Some(leader), Some(ms)) if leader == metrics.id && ms > election_ms => Some(format!(
            "this member leads term {} but has not heard from a majority for {ms} ms (it is cut off from it)",
            metrics.current_term
        )),
        (Some(leader), None) if leader == metrics.id => Some(format!(
            "this member leads term {} but no majority has acknowledged it yet",
            metrics.current_term
        )),
        _ => None,
    }
}

/// Why this member cannot write: its log failed, or its data directory is under its reserve.
fn storage_refused(log: &LogStore, disk: &DiskGuard) -> Option<String> {
    log.failed()
        .map(|first| {
            format!("the raft log failed a write or fsync ({first}); the raft node stopped: restart this member once the cause is fixed")
        })
        .or_else(|| {
            disk.low().map(|low| {
                format!("{low}: this member stops proposing, takes no new entries and does not lead until space is freed")
            })
        })
}

/// This member's view, from its metrics (lags only when it is the leader).
pub fn local_status(raft: &Raft, log: &LogStore, disk: &DiskGuard, removal: &Removal) -> ClusterStatus {
    let metrics = raft.metrics().borrow().clone();
    let leading = metrics.state == ServerState::Leader;
    let last = metrics.last_log_index;
    let membership = metrics.membership_config.membership();
    let members = membership
        .nodes()
        .map(|(&id, node)| {
            let matched = if leading {
                metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|l| l.index)
                    .or(if id == metrics.id { last } else { None })
            } else {
                None
            };
            let lag = matched.zip(last).map(|(matched, last)| last.saturating_sub(matched));
            MemberStatus {
                id,
                addr: node.addr.clone(),
                voter: membership.voter_ids().any(|voter| voter == id),
                matched,
                lag: if leading { lag.or(last) } else { None },
            }
        })
        .collect();
    ClusterStatus {
        node_id: metrics.id,
        state: format!("{:?}", metrics.state),
        term: metrics.current_term,
        leader: metrics.current_leader,
        commit_index: metrics.last_applied.map(|l| l.index),
        last_log_index: last,
        first_index: log.bounds().0,
        snapshot_index: metrics.snapshot.map(|l| l.index),
        members,
        joint: membership.get_joint_config().len() > 1,
        counters: BTreeMap::new(),
        writes_refused: storage_refused(log, disk)
            .or_else(|| writes_refused(&metrics, raft.config().election_timeout_max, removal)),
    }
}

/// The running member, as the control API reads it.
#[derive(Clone)]
pub struct ClusterHandle {
    pub raft: Raft,
    pub log: LogStore,
    pub disk: DiskGuard,
    pub peers: Peers,
    pub removal: Removal,
    /// Entries the state machine did not apply (repeats, refused batches): not replayed.
    pub not_applied: NotApplied,
    /// The cluster-wide counters, as merged here.
    pub totals: Arc<SharedTotals>,
    /// The replicate stage's runtime (a follower asks the leader from there).
    pub runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle").field("me", &self.peers.me).finish_non_exhaustive()
    }
}

impl ClusterView for ClusterHandle {
    fn status(&self) -> StatusFuture {
        let mut status = local_status(&self.raft, &self.log, &self.disk, &self.removal);
        status.counters = self.totals.totals();
        let handle = self.clone();
        Box::pin(async move {
            if let Some(leader) = status.leader.filter(|&leader| leader != status.node_id) {
                let asked = handle
                    .runtime
                    .spawn(async move { handle.peers.status(leader, LEADER_STATUS_TIMEOUT).await });
                if let Ok(Ok(leaders)) = asked.await {
                    status.members = leaders.members;
                }
            }
            serde_json::to_value(status).unwrap_or_default()
        })
    }

    fn log(&self, from: u64, max_entries: usize) -> Result<LogPage, String> {
        let committed = self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let to = committed.min(from.saturating_add(max_entries.max(1) as u64 - 1));
        // Past the commit index this is empty (still refused when `from` is compacted).
        let entries = self.log.read(from, to).map_err(|error| error.to_string())?;
        let not_applied = self.not_applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut page = Vec::new();
        let mut next = from;
        for entry in entries {
            let index = entry.log_id.index;
            next = index + 1;
            if not_applied.contains(&index) {
                continue;
            }
            if let EntryPayload::Normal(proposal) = entry.payload {
                let (events, error) = decode_events(&proposal);
                if let Some(error) = error {
                    return Err(format!("log index {index}: {error}"));
                }
                let mut lines = Vec::with_capacity(events.len());
                for event in &events {
                    let mut line = Vec::new();
                    write_event(event, &mut line).map_err(|error| error.to_string())?;
                    lines.push(String::from_utf8(line).map_err(|error| error.to_string())?);
                }
                page.push(LogEntry { index, events: lines });
            }
        }
        Ok(LogPage { entries: page, next, committed })
    }

    fn applied_at_least(&self, index: u64, timeout: Duration) -> AppliedFuture {
        let raft = self.raft.clone();
        let runtime = self.runtime.clone();
        Box::pin(async move {
            if index == 0 {
                return Ok(());
            }
            let waiting = raft.clone();
            let waited = runtime
                .spawn(async move {
                    waiting
                        .wait(Some(timeout))
                        .applied_index_at_least(Some(index), "a reader's session")
                        .await
                })
                .await;
            match waited {
                Ok(Ok(_)) => Ok(()),
                _ => Err(raft.metrics().borrow().last_applied.map_or(0, |l| l.index)),
            }
        })
    }

    fn totals(&self) -> BTreeMap<String, u64> {
        self.totals.totals()
    }

    /// Makes the change here when this member leads, else asks the leader to.
    fn change(&self, change: MemberChange) -> ChangeFuture {
        let change = match change {
            MemberChange::Add { id, addr } => Change::Add { id, addr },
            MemberChange::Remove { id } => Change::Remove { id },
        };
        let handle = self.clone();
        Box::pin(async move {
            let runtime = handle.runtime.clone();
            let made = runtime
                .spawn(async move {
                    let leader = handle.raft.metrics().borrow().current_leader;
                    match leader {
                        _ if handle.removal.why().is_some() => Err(ChangeRefused::Refused(
                            "this member was removed from the cluster; ask a member".into(),
                        )),
                        None => Err(ChangeRefused::Unavailable(
                            "no leader is known (an election, or no majority reachable); try again".into(),
                        )),
                        Some(leader) if leader == handle.peers.me => {
                            change_here(&handle.raft, &handle.peers, &handle.removal, change).await
                        }
                        Some(leader) => handle.peers.change(leader, change, CHANGE_TIMEOUT).await,
                    }
                })
                .await;
            match made {
                Ok(Ok(done)) => Ok(done),
                Ok(Err(ChangeRefused::Refused(why))) => Err(MemberChangeError::Refused(why)),
                Ok(Err(ChangeRefused::Unavailable(why))) => Err(MemberChangeError::Unavailable(why)),
                Err(error) => Err(MemberChangeError::Unavailable(error.to_string())),
            }
        })
    }
}
