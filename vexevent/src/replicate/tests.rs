//! Members in one process on loopback: a member without a quorum buffers what it captured (and
//! counts what does not fit), then proposes it once the others start; every member delivers it.
//! `eventual`: a member delivers its own events at once, without a quorum, and not again once
//! committed. `causal`: an event stamped after its member received another's comes after it on
//! every member, even from a member whose wall clock is behind. Following the log: a reader gets
//! every committed event with its position, resumes from one, and is woken by what commits next.
//! The leader removed through a follower steps down and the two left commit without it.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use super::{ClusterConfig, Consistency, ReplicateStage};
use crate::{
    event::{EventType, NodeId, Run, SemanticEvent},
    pipeline::{EventBatch, Stage},
    telemetry::Counters,
};

const DEADLINE: Duration = Duration::from_mins(1);

fn config(
    base: &Path,
    id: u64,
    peers: &BTreeMap<String, std::net::SocketAddr>,
    consistency: Consistency,
) -> ClusterConfig {
    let secret = base.join("secret");
    std::fs::write(&secret, "a secret the members share, 32 b").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    ClusterConfig {
        node_id: id,
        listen: peers[&id.to_string()],
        peers: peers.clone(),
        join: false,
        data_dir: base.join(format!("node{id}")),
        consistency,
        secret_file: secret,
        buffer_events: 10,
        entry_events: 4,
        snapshot_bytes: 1 << 20,
        keep_entries: 16,
        heartbeat_ms: 50,
        election_timeout_ms: [150, 300],
        causal_delay_ms: 100,
        tls: None,
        plaintext_off_loopback: false,
        min_free_bytes: 1 << 20,
    }
}

struct Member {
    stage: Box<ReplicateStage>,
    counters: Arc<Counters>,
    delivered: Vec<SemanticEvent>,
}

fn start(
    base: &Path,
    id: u64,
    peers: &BTreeMap<String, std::net::SocketAddr>,
    consistency: Consistency,
) -> Member {
    let settings = config(base, id, peers, consistency).settings().unwrap();
    let counters = Arc::new(Counters::default());
    let run = Run::new(NodeId::new(&format!("m{id}")).unwrap());
    let stage = Box::new(ReplicateStage::start(&settings, &run, &counters).unwrap());
    Member { stage, counters, delivered: Vec::new() }
}

/// Ticks every member until `done` holds for them (deadline; no fixed wait).
fn wait(members: &mut [&mut Member], what: &str, done: impl Fn(&Member) -> bool) {
    let end = Instant::now() + DEADLINE;
    let mut batch = EventBatch::default();
    while !members.iter().all(|m| done(m)) {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        for member in members.iter_mut() {
            member.stage.tick(0, &mut batch);
            member.delivered.append(&mut batch.events);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn loopback_peers() -> BTreeMap<String, std::net::SocketAddr> {
    (1..=3)
        .map(|id| {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            (id.to_string(), format!("127.0.0.1:{port}").parse().unwrap())
        })
        .collect()
}

/// Events of node `node`, sequence numbers `sequences`, captured at wall time `wall_ns`.
fn captured(node: &str, sequences: std::ops::Range<u64>, wall_ns: u64) -> EventBatch {
    let run = Run::new(NodeId::new(node).unwrap());
    let mut batch = EventBatch::default();
    batch.events = sequences
        .map(|i| {
            let mut event = SemanticEvent::own(&run, EventType::FilesystemWrite, "write".into(), i, wall_ns);
            event.origin = run.origin(0, i);
            event
        })
        .collect();
    batch
}

#[test]
fn without_a_quorum_events_wait_in_a_bounded_buffer_and_commit_when_the_others_come() {
    let base = tempfile::tempdir().unwrap();
    let peers = loopback_peers();
    let mut alone = start(base.path(), 1, &peers, Consistency::Strong);
    let mut batch = captured("m1", 0..25, 0);
    alone.stage.process(&mut batch);
    assert!(batch.is_empty(), "nothing is delivered before it is committed");
    assert_eq!(
        alone.counters.cluster_dropped_buffer_full.load(Ordering::Relaxed),
        15,
        "what does not fit in the buffer is dropped and counted"
    );
    let mut second = start(base.path(), 2, &peers, Consistency::Strong);
    let mut third = start(base.path(), 3, &peers, Consistency::Strong);
    wait(&mut [&mut alone, &mut second, &mut third], "the buffered events on every member", |m| {
        m.delivered.len() == 10
    });
    for member in [&alone, &second, &third] {
        let sequences: Vec<u64> = member.delivered.iter().map(|e| e.origin.sequence).collect();
        assert_eq!(
            sequences,
            (0..10).collect::<Vec<_>>(),
            "every member delivers them once, in capture order"
        );
        assert_eq!(member.counters.cluster_events_committed.load(Ordering::Relaxed), 10);
    }
    let replicated = |m: &Member| m.delivered.iter().all(|e| e.flags & crate::event::flags::REPLICATED != 0);
    assert!(!replicated(&alone) && replicated(&second), "events of another node are marked replicated");
    for member in [alone, second, third] {
        member.stage.finish();
    }
}

#[test]
fn eventual_delivers_own_events_at_once_and_the_others_once_committed() {
    let base = tempfile::tempdir().unwrap();
    let peers = loopback_peers();
    let mut alone = start(base.path(), 1, &peers, Consistency::Eventual);
    let mut batch = captured("m1", 0..25, 0);
    alone.stage.process(&mut batch);
    let sequences = |events: &[SemanticEvent]| events.iter().map(|e| e.origin.sequence).collect::<Vec<_>>();
    assert_eq!(sequences(&batch.events), (0..25).collect::<Vec<_>>(), "delivered here without a quorum");
    assert_eq!(
        alone.counters.cluster_dropped_buffer_full.load(Ordering::Relaxed),
        15,
        "what does not fit the buffer is not replicated, and counted"
    );
    let mut second = start(base.path(), 2, &peers, Consistency::Eventual);
    let mut third = start(base.path(), 3, &peers, Consistency::Eventual);
    wait(&mut [&mut alone, &mut second, &mut third], "the replicated events on the others", |m| {
        m.counters.cluster_events_committed.load(Ordering::Relaxed) == 10
    });
    // Once committed, the first member's events reach the others, and not the first again.
    // (The first member, the one that dropped, is ticked along: what it was sent it takes.)
    wait(&mut [&mut alone, &mut second, &mut third], "the others to deliver them", |m| {
        m.delivered.len() >= 10 || m.counters.cluster_dropped_buffer_full.load(Ordering::Relaxed) > 0
    });
    assert!(alone.delivered.is_empty(), "its own committed events are not delivered twice");
    for member in [&second, &third] {
        assert_eq!(sequences(&member.delivered), (0..10).collect::<Vec<_>>());
    }
    for member in [alone, second, third] {
        member.stage.finish();
    }
}

#[test]
fn causal_an_event_stamped_after_another_was_received_comes_after_it_everywhere() {
    let base = tempfile::tempdir().unwrap();
    let peers = loopback_peers();
    let mut members: Vec<Member> =
        (1..=3).map(|id| start(base.path(), id, &peers, Consistency::Causal)).collect();
    let now = crate::telemetry::monotonic_ns() + 1_700_000_000_000_000_000;
    // Member 1 captures A; member 2 receives it, then captures B with a wall clock 10 s behind.
    let mut first = captured("m1", 0..1, now);
    members[0].stage.process(&mut first);
    let [one, two, three] = &mut members[..] else { unreachable!() };
    wait(&mut [one, two, three], "A on every member", |m| m.delivered.len() == 1);
    let mut second = captured("m2", 0..1, now - 10_000_000_000);
    two.stage.process(&mut second);
    wait(&mut [one, two, three], "B on every member", |m| m.delivered.len() == 2);
    for member in &members {
        let order: Vec<&str> = member.delivered.iter().map(|e| e.origin.run.node().as_str()).collect();
        assert_eq!(order, ["m1", "m2"], "A, then B");
        let stamps: Vec<u64> = member.delivered.iter().map(|e| e.timestamp.hlc.unwrap()).collect();
        assert!(stamps[0] < stamps[1], "B is stamped after A although its wall clock is behind: {stamps:?}");
        assert_eq!(member.counters.cluster_causal_late.load(Ordering::Relaxed), 0);
    }
    for member in members {
        member.stage.finish();
    }
}

/// Reads `follow` until it has `count` events: their (entry, offset, origin sequence).
fn followed(
    runtime: &tokio::runtime::Runtime,
    follow: &mut crate::http::follow::Follow,
    count: usize,
) -> Vec<(u64, u64, u64)> {
    let mut events = Vec::new();
    while events.len() < count {
        let lines = runtime.block_on(follow.next()).expect("the stream goes on");
        for line in lines.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(index) = value["index"].as_u64() {
                // The origin id ends in `:sequence:part`.
                let sequence = value["event"]["origin"]["id"].as_str().unwrap().rsplit(':').nth(1).unwrap();
                events.push((index, value["offset"].as_u64().unwrap(), sequence.parse().unwrap()));
            }
        }
    }
    events
}

#[test]
fn a_follower_gets_every_event_with_its_position_resumes_from_one_and_is_woken_by_new_commits() {
    use crate::http::follow::Follow;
    let base = tempfile::tempdir().unwrap();
    let peers: BTreeMap<_, _> = loopback_peers().into_iter().take(1).collect();
    let mut member = start(base.path(), 1, &peers, Consistency::Strong);
    member.stage.process(&mut captured("m1", 0..10, 0));
    wait(&mut [&mut member], "the events committed", |m| m.delivered.len() == 10);
    let view = Arc::clone(member.counters.cluster.get().unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let all = followed(&runtime, &mut Follow::new(Arc::clone(&view), 0, 0), 10);
    assert_eq!(all.iter().map(|e| e.2).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert!(
        all.windows(2)
            .all(|w| (w[1].0 == w[0].0 && w[1].1 == w[0].1 + 1) || (w[1].0 > w[0].0 && w[1].1 == 0))
    );
    assert!(all.iter().any(|e| e.1 > 0), "entries of several events (entry_events = 4)");
    // Resumed after the 6th event (mid-entry or not): the 4 after it, nothing else.
    let (index, offset, _) = all[5];
    let mut resumed = Follow::new(Arc::clone(&view), index, offset + 1);
    assert_eq!(followed(&runtime, &mut resumed, 4), all[6..]);
    // Waiting at the end of the log: woken by the next commit.
    let waiting = std::thread::spawn(move || followed(&runtime, &mut resumed, 3));
    member.stage.process(&mut captured("m1", 10..13, 0));
    wait(&mut [&mut member], "the new events committed", |m| m.delivered.len() == 13);
    let woken = waiting.join().unwrap();
    assert_eq!(woken.iter().map(|e| e.2).collect::<Vec<_>>(), vec![10, 11, 12]);
    member.stage.finish();
}

/// Waits for `future` on a runtime of the test's own (the member's view answers on its runtime).
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

fn view(member: &Member) -> serde_json::Value {
    block_on(member.counters.cluster.get().expect("a cluster member").status())
}

#[test]
fn the_leader_removed_through_a_follower_steps_down_and_the_others_commit_without_it() {
    use crate::telemetry::{MemberChange, MemberChangeError};
    let base = tempfile::tempdir().unwrap();
    let peers = loopback_peers();
    let mut members: Vec<Member> =
        (1..=3).map(|id| start(base.path(), id, &peers, Consistency::Strong)).collect();
    let leader_seen = |m: &Member| view(m)["leader"].as_u64();
    {
        let [one, two, three] = &mut members[..] else { unreachable!() };
        wait(&mut [one, two, three], "a leader", |m| leader_seen(m).is_some());
    }
    let leader = leader_seen(&members[0]).unwrap();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let ask = |id: u64, change| {
        block_on(members[usize::try_from(id).unwrap() - 1].counters.cluster.get().unwrap().change(change))
    };
    assert_eq!(
        ask(follower, MemberChange::Remove { id: 9 }),
        Err(MemberChangeError::Refused("no member 9 in the cluster (members: 1, 2, 3)".into()))
    );
    let done = ask(follower, MemberChange::Remove { id: leader }).unwrap();
    assert!(done.contains(&format!("member {leader} removed")), "{done}");
    let removed = members.remove(usize::try_from(leader).unwrap() - 1);
    let why = view(&removed)["writes_refused"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("was removed from the cluster"), "{why}");
    assert!(base.path().join(format!("node{leader}/removed")).exists(), "its data_dir says so");
    let [a, b] = &mut members[..] else { unreachable!() };
    wait(&mut [a, b], "a new leader among the two left", |m| leader_seen(m).is_some_and(|l| l != leader));
    let mut batch = captured("m0", 0..3, 0);
    a.stage.process(&mut batch);
    wait(&mut [a, b], "the two left to commit", |m| m.delivered.len() >= 3);
    for member in [a, b] {
        let ids: Vec<u64> =
            view(member)["members"].as_array().unwrap().iter().filter_map(|m| m["id"].as_u64()).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(!ids.contains(&leader), "{ids:?}");
    }
    for member in members.into_iter().chain([removed]) {
        member.stage.finish();
    }
}
