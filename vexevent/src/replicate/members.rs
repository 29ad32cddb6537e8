//! Adding and removing members at runtime (openraft's joint consensus): the leader checks the
//! change against the membership, adds a new member as a learner, waits until it caught up (by
//! snapshot when the log it needs is compacted) and then makes it a voter; it removes a voter
//! through a joint configuration and tells the removed member, which stops taking part and
//! refuses to start again with the same data. Every member follows the membership in the log
//! (the addresses it dials, whom it gossips with, whose events it takes).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use openraft::{BasicNode, ChangeMembers, Membership, ServerState, error::ClientWriteError};
use serde::{Deserialize, Serialize};

use super::{
    RaftId,
    net::{Peers, Raft, locked},
};

/// How long a new member may take to catch up before it becomes a voter (else it is not added).
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_mins(1);
/// How long the address of a member to add may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the removed member is given to take the news.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(2);
/// The file in `data_dir` that says this member was removed.
const REMOVED_FILE: &str = "removed";

/// A change of the membership, as the control API asks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Add member `id`, listening at `addr`, as a voter.
    Add { id: RaftId, addr: SocketAddr },
    /// Remove member `id` (a voter or a learner).
    Remove { id: RaftId },
}

/// Why a change was not made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ChangeRefused {
    /// The change makes no sense against the membership, or the member to add is not fit.
    #[error("{0}")]
    Refused(String),
    /// Nothing is wrong with it, but it cannot be made now (no leader, a change under way).
    #[error("{0}")]
    Unavailable(String),
}

use ChangeRefused::{Refused, Unavailable};

/// What the leader does for a change.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Add as a learner, wait for it to catch up, make it a voter.
    Add { id: RaftId, addr: SocketAddr },
    /// It is a learner at that address already: make it a voter.
    Promote { id: RaftId },
    /// Take it out (a voter through a joint configuration).
    Remove { id: RaftId, voter: bool },
}

fn listed(ids: impl Iterator<Item = RaftId>) -> String {
    ids.map(|id| id.to_string()).collect::<Vec<_>>().join(", ")
}

/// Checks `change` against `membership`.
///
/// # Errors
/// A member added twice or at another member's address, an unknown member, the last voter.
pub fn plan(membership: &Membership<RaftId, BasicNode>, change: &Change) -> Result<Plan, ChangeRefused> {
    if membership.get_joint_config().len() > 1 {
        return Err(Unavailable("a membership change is under way; try again once it is done".into()));
    }
    let is_voter = |id: RaftId| membership.voter_ids().any(|voter| voter == id);
    match *change {
        Change::Add { id: 0, .. } => Err(Refused("a raft id is 1 or more".into())),
        Change::Add { id, addr } => {
            let addr_text = addr.to_string();
            if let Some((other, _)) =
                membership.nodes().find(|(other, node)| **other != id && node.addr == addr_text)
            {
                return Err(Refused(format!("{addr} is the address of member {other}")));
            }
            match membership.get_node(&id) {
                None => Ok(Plan::Add { id, addr }),
                Some(node) if node.addr != addr_text => Err(Refused(format!(
                    "member {id} is in the cluster at {}; remove it first to add it at {addr}",
                    node.addr
                ))),
                Some(_) if is_voter(id) => {
                    Err(Refused(format!("member {id} is a voter already (at {addr})")))
                }
                Some(_) => Ok(Plan::Promote { id }),
            }
        }
        Change::Remove { id } => {
            if membership.get_node(&id).is_none() {
                return Err(Refused(format!(
                    "no member {id} in the cluster (members: {})",
                    listed(membership.nodes().map(|(id, _)| *id))
                )));
            }
            let voter = is_voter(id);
            if voter && membership.voter_ids().count() == 1 {
                return Err(Refused(format!("member {id} is the last voter: a cluster needs one")));
            }
            Ok(Plan::Remove { id, voter })
        }
    }
}

/// The members of `membership` with the addresses they listen at (an address that does not
/// parse is left out, and logged).
#[must_use]
pub fn addresses(membership: &Membership<RaftId, BasicNode>) -> BTreeMap<RaftId, SocketAddr> {
    membership.nodes().filter_map(|(&id, node)| Some((id, address(id, node)?))).collect()
}

/// Where member `id` listens, as its node says (an address that does not parse is logged).
#[must_use]
pub fn address(id: RaftId, node: &BasicNode) -> Option<SocketAddr> {
    node.addr
        .parse()
        .inspect_err(|error| tracing::warn!(id, addr = node.addr, %error, "cluster: a member's address does not parse"))
        .ok()
}

/// An openraft write error as a refusal.
fn write_refused(
    error: &openraft::error::RaftError<RaftId, ClientWriteError<RaftId, BasicNode>>,
) -> ChangeRefused {
    match error {
        openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            Unavailable(format!(
                "this member is no longer the leader (leader: {})",
                forward.leader_id.map_or_else(|| "unknown".into(), |l| l.to_string())
            ))
        }
        openraft::error::RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
            Unavailable(error.to_string())
        }
        error => Unavailable(error.to_string()),
    }
}

/// Makes `change` on this member, which must be the leader; what it did, as text.
///
/// # Errors
/// Not the leader, a change that does not fit the membership, a member to add that does not
/// answer or does not catch up in time.
pub async fn change_here(
    raft: &Raft,
    peers: &Peers,
    removal: &Removal,
    change: Change,
) -> Result<String, ChangeRefused> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.state != ServerState::Leader {
        return Err(Unavailable(format!(
            "member {} is not the leader (leader: {})",
            metrics.id,
            metrics.current_leader.map_or_else(|| "unknown".into(), |l| l.to_string())
        )));
    }
    let membership = metrics.membership_config.membership().clone();
    let done = |what: String, raft: &Raft| {
        let members = raft.metrics().borrow().membership_config.membership().clone();
        format!(
            "{what}; voters: {}; learners: {}",
            listed(members.voter_ids()),
            match listed(members.learner_ids()) {
                none if none.is_empty() => "none".to_owned(),
                some => some,
            }
        )
    };
    match plan(&membership, &change)? {
        Plan::Add { id, addr } => {
            probe(peers, id, addr).await?;
            let added = raft
                .add_learner(id, BasicNode { addr: addr.to_string() }, false)
                .await
                .map_err(|e| write_refused(&e))?;
            caught_up(raft, id, added.log_id.index).await.inspect_err(|_| {
                let raft = raft.clone();
                // Leave the cluster as it was: the learner goes again.
                tokio::spawn(async move {
                    let gone = ChangeMembers::RemoveNodes([id].into());
                    if let Err(error) = raft.change_membership(gone, false).await {
                        tracing::warn!(id, %error, "cluster: a learner that did not catch up stays a learner");
                    }
                });
            })?;
            promote(raft, id).await.map(|index| {
                done(format!("member {id} ({addr}) added as a voter at log index {index}"), raft)
            })
        }
        Plan::Promote { id } => promote(raft, id)
            .await
            .map(|index| done(format!("learner {id} made a voter at log index {index}"), raft)),
        Plan::Remove { id, voter } => {
            let changes = if voter {
                ChangeMembers::RemoveVoters([id].into())
            } else {
                ChangeMembers::RemoveNodes([id].into())
            };
            let removed = raft.change_membership(changes, false).await.map_err(|e| write_refused(&e))?;
            let index = removed.log_id.index;
            let why = format!("removed from the cluster by member {} at log index {index}", metrics.id);
            if id == peers.me {
                removal.retire(why).await;
            } else if let Err(error) = peers.removed(id, why, NOTICE_TIMEOUT).await {
                tracing::warn!(id, %error, "cluster: the removed member was not told (it is down?); it refuses to start with its data once told, and is refused by the others anyway");
            }
            Ok(done(format!("member {id} removed at log index {index}"), raft))
        }
    }
}

/// Checks that the instance at `addr` answers the peer protocol with the secret, is raft id
/// `id` and is in no cluster yet.
async fn probe(peers: &Peers, id: RaftId, addr: SocketAddr) -> Result<(), ChangeRefused> {
    let status = peers.status_at(addr, PROBE_TIMEOUT).await.map_err(|error| {
        Refused(format!(
            "{addr} does not answer as a cluster member ({error}): start it first, with node_id = {id}, listen = \"{addr}\", join = true and the cluster's secret"
        ))
    })?;
    if status.node_id != id {
        return Err(Refused(format!("the instance at {addr} is member {}, not {id}", status.node_id)));
    }
    if !status.members.is_empty() {
        return Err(Refused(format!(
            "the instance at {addr} is in a cluster already (members: {}): start it with an empty data_dir and join = true",
            listed(status.members.iter().map(|m| m.id))
        )));
    }
    Ok(())
}

/// Waits until the leader replicated to learner `id` up to `index` (its own addition).
async fn caught_up(raft: &Raft, id: RaftId, index: u64) -> Result<(), ChangeRefused> {
    let waited = raft
        .wait(Some(CATCH_UP_TIMEOUT))
        .metrics(
            |m| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .is_some_and(|matched| matched.index >= index)
            },
            "the new member to catch up",
        )
        .await;
    waited.map(|_| ()).map_err(|_| {
        Refused(format!(
            "member {id} did not catch up within {} s; it was not added (see its log)",
            CATCH_UP_TIMEOUT.as_secs()
        ))
    })
}

/// Makes learner `id` a voter; the log index of the membership that does.
async fn promote(raft: &Raft, id: RaftId) -> Result<u64, ChangeRefused> {
    raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false)
        .await
        .map(|written| written.log_id.index)
        .map_err(|e| write_refused(&e))
}

/// Keeps `peers` on the membership the log holds (the addresses to dial, the members whose
/// events and counters are taken), until the runtime stops.
pub async fn follow(raft: Raft, peers: Peers) {
    let mut metrics = raft.metrics();
    loop {
        let members = addresses(metrics.borrow_and_update().membership_config.membership());
        // Before the cluster is formed (or this member added) the configured members stand.
        if !members.is_empty() {
            peers.set_members(members);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// This member's removal: once removed it stops its raft node, says why in its status and
/// leaves a mark in its `data_dir` so that it does not start again as a member with that data.
#[derive(Clone)]
pub struct Removal {
    dir: PathBuf,
    raft: Arc<Mutex<Option<Raft>>>,
    why: Arc<Mutex<Option<String>>>,
}

impl Removal {
    /// The removal of the member whose data is in `dir`; the reason if it was removed before.
    #[must_use]
    pub fn new(dir: &Path) -> (Self, Option<String>) {
        let before = std::fs::read_to_string(dir.join(REMOVED_FILE)).ok().map(|why| why.trim().to_owned());
        (Self { dir: dir.to_owned(), raft: Arc::default(), why: Arc::default() }, before)
    }

    /// The raft node to stop once removed.
    pub fn attach(&self, raft: Raft) {
        *locked(&self.raft) = Some(raft);
    }

    /// Why this member is no longer one (`None`: it is).
    #[must_use]
    pub fn why(&self) -> Option<String> {
        locked(&self.why).clone()
    }

    /// Marks this member removed, on disk and here, and stops its raft node.
    pub async fn retire(&self, why: String) {
        tracing::warn!(
            why,
            "cluster: this member was removed; it takes no more part (its captured events are dropped and counted)"
        );
        if let Err(error) = std::fs::write(self.dir.join(REMOVED_FILE), format!("{why}\n")) {
            tracing::warn!(%error, "cluster: cannot mark the data_dir as removed");
        }
        *locked(&self.why) = Some(why);
        let raft = locked(&self.raft).take();
        if let Some(raft) = raft {
            if let Err(error) = raft.shutdown().await {
                tracing::warn!(%error, "cluster: the removed member's raft node did not stop cleanly");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn membership(voters: &[RaftId], learners: &[RaftId]) -> Membership<RaftId, BasicNode> {
        let nodes: BTreeMap<RaftId, BasicNode> = voters
            .iter()
            .chain(learners)
            .map(|&id| (id, BasicNode { addr: format!("127.0.0.1:{}", 7400 + id) }))
            .collect();
        Membership::new(vec![voters.iter().copied().collect::<BTreeSet<_>>()], nodes)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn an_addition_is_checked_against_the_membership() {
        let three = membership(&[1, 2, 3], &[4]);
        assert_eq!(
            plan(&three, &Change::Add { id: 5, addr: addr(7405) }),
            Ok(Plan::Add { id: 5, addr: addr(7405) })
        );
        assert_eq!(plan(&three, &Change::Add { id: 4, addr: addr(7404) }), Ok(Plan::Promote { id: 4 }));
        let refused = |change| match plan(&three, &change) {
            Err(Refused(message)) => message,
            other => panic!("{change:?}: {other:?}"),
        };
        assert_eq!(
            refused(Change::Add { id: 2, addr: addr(7402) }),
            "member 2 is a voter already (at 127.0.0.1:7402)"
        );
        assert!(refused(Change::Add { id: 2, addr: addr(9) }).contains("remove it first"));
        assert_eq!(
            refused(Change::Add { id: 6, addr: addr(7401) }),
            "127.0.0.1:7401 is the address of member 1"
        );
        assert!(refused(Change::Add { id: 0, addr: addr(9) }).contains("1 or more"));
    }

    #[test]
    fn a_removal_names_an_unknown_member_and_keeps_the_last_voter() {
        let three = membership(&[1, 2, 3], &[4]);
        assert_eq!(plan(&three, &Change::Remove { id: 2 }), Ok(Plan::Remove { id: 2, voter: true }));
        assert_eq!(plan(&three, &Change::Remove { id: 4 }), Ok(Plan::Remove { id: 4, voter: false }));
        assert_eq!(
            plan(&three, &Change::Remove { id: 7 }),
            Err(Refused("no member 7 in the cluster (members: 1, 2, 3, 4)".into()))
        );
        assert_eq!(
            plan(&membership(&[1], &[]), &Change::Remove { id: 1 }),
            Err(Refused("member 1 is the last voter: a cluster needs one".into()))
        );
        let joint = Membership::new(
            vec![[1, 2, 3].into(), [1, 2].into()],
            membership(&[1, 2, 3], &[])
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect::<BTreeMap<_, _>>(),
        );
        assert!(
            matches!(plan(&joint, &Change::Remove { id: 1 }), Err(Unavailable(_))),
            "one change at a time"
        );
    }
}
