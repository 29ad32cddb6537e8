//! Members in one process on loopback: a member without a quorum buffers what it captured (and
//! counts what does not fit), then proposes it once the others start; every member delivers it.

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

fn config(base: &Path, id: u64, peers: &BTreeMap<String, std::net::SocketAddr>) -> ClusterConfig {
    let secret = base.join("secret");
    std::fs::write(&secret, "a secret the members share, 32 b").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    ClusterConfig {
        node_id: id,
        listen: peers[&id.to_string()],
        peers: peers.clone(),
        data_dir: base.join(format!("node{id}")),
        consistency: Consistency::Strong,
        secret_file: secret,
        buffer_events: 10,
        entry_events: 4,
        snapshot_bytes: 1 << 20,
        keep_entries: 16,
        heartbeat_ms: 50,
        election_timeout_ms: [150, 300],
    }
}

struct Member {
    stage: Box<ReplicateStage>,
    counters: Arc<Counters>,
    delivered: Vec<SemanticEvent>,
}

fn start(base: &Path, id: u64, peers: &BTreeMap<String, std::net::SocketAddr>) -> Member {
    let settings = config(base, id, peers).settings().unwrap();
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

#[test]
fn without_a_quorum_events_wait_in_a_bounded_buffer_and_commit_when_the_others_come() {
    let base = tempfile::tempdir().unwrap();
    let peers: BTreeMap<String, std::net::SocketAddr> = (1..=3)
        .map(|id| {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            (id.to_string(), format!("127.0.0.1:{port}").parse().unwrap())
        })
        .collect();
    let mut alone = start(base.path(), 1, &peers);
    let run = Run::new(NodeId::new("m1").unwrap());
    let mut batch = EventBatch::default();
    batch.events = (0..25)
        .map(|i| {
            let mut event = SemanticEvent::own(&run, EventType::FilesystemWrite, "write".into(), i, i);
            event.origin = run.origin(0, i);
            event
        })
        .collect();
    alone.stage.process(&mut batch);
    assert!(batch.is_empty(), "nothing is delivered before it is committed");
    assert_eq!(
        alone.counters.cluster_dropped_buffer_full.load(Ordering::Relaxed),
        15,
        "what does not fit in the buffer is dropped and counted"
    );
    let mut second = start(base.path(), 2, &peers);
    let mut third = start(base.path(), 3, &peers);
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
